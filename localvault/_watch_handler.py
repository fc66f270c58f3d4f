"""The watchdog handler of :class:`~localvault.watch.Watcher`: which events offer a file, and as how ready."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler

if TYPE_CHECKING:
    from .watch import Watcher

log = logging.getLogger("localvault.watch")


class EventHandler(FileSystemEventHandler):
    """Hands watchdog's events for files to the watcher (``Watcher._offer``), from the observer's thread."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            super().dispatch(event)
        except Exception:  # the observer's thread must live on: it hears every later file
            log.exception("the watcher of %s could not handle the event %s", self.watcher.folder, event)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher._offer(os.fsdecode(event.src_path), ready=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher._offer(os.fsdecode(event.dest_path), ready=True)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:  # a file renamed in from another folder comes as "created", already whole
            self.watcher._offer(os.fsdecode(event.src_path), ready=True, created=True)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher._offer(os.fsdecode(event.src_path), ready=False)

    def on_attrib(self, event: FileSystemEvent) -> None:
        """A mode change (watchdog >= 5; older ones report it as modified): a file refused as unreadable may pass."""
        self.on_modified(event)
