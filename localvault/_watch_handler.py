"""The watchdog handler of :class:`~localvault.watch.Watcher`: which events offer a file, and as how ready."""

from __future__ import annotations

import logging
import os
import weakref
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


#: Watchers whose observers run: each is told when the kernel's queue of inotify events overflows.
_WATCHERS: weakref.WeakSet[Watcher] = weakref.WeakSet()
#: What watchdog (7.x) logs when inotify's queue overflowed; it tells its handlers nothing else.
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


class _OverflowFilter(logging.Filter):
    """Passes every record; one saying the queue overflowed tells each watcher to catch up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_OVERFLOW_MESSAGE):
            for watcher in list(_WATCHERS):
                watcher._overflow()
        return True


_FILTER = _OverflowFilter()


def watch_overflows(watcher: Watcher) -> None:
    """Have ``watcher`` told of an overflow of the kernel's event queue (events were lost: it must catch up).

    Watchdog only logs it (a WARNING), so a filter on its logger listens;
    an app that silences that logger below WARNING silences this too.
    """
    _WATCHERS.add(watcher)
    logger = logging.getLogger(_OVERFLOW_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
