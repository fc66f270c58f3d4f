"""The watchdog observer on the watcher's folder (see :mod:`localvault.watch`): scheduled on the folder's real
path, told apart from a folder that replaced it, and stopped."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)
from watchdog.observers import Observer

from ._watch_handler import EventHandler, watch_overflows
from ._watch_intake import Intake

log = logging.getLogger("localvault.watch")

#: The events asked of inotify: those the handler acts on (and deletions, for watchdog's own bookkeeping). Not
#: opens, nor closes without a write: each listing of a folder (a catch-up's scan, a check of the watches) made
#: four of those a folder, enough in a tree of 6,000 folders to overflow the kernel's queue again and again.
HANDLED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileModifiedEvent, FileAttribEvent,
    FileClosedEvent, FileDeletedEvent, DirDeletedEvent]


class FolderObserver:
    """One observer at a time on ``folder`` (events to ``intake``), from the watcher's thread."""

    def __init__(self, folder: Path, intake: Intake, recursive: bool) -> None:
        self.folder = folder
        self._intake = intake
        self._recursive = recursive
        self._identity: tuple[int, int] | None = None  # (device, inode) of the folder being watched
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        """Schedule a fresh observer on the folder's real path (inotify on a symbolic link would watch the link,
        not the folder, and hear nothing), resolved anew each time the folder comes back, and given to the
        intake as ``watched``. OSError if the folder is gone or cannot be watched."""
        st = os.stat(self.folder)
        self._identity = (st.st_dev, st.st_ino)
        watched = self._intake.watched = Path(os.path.realpath(self.folder))
        observer = Observer()
        self._observer = observer
        self._intake.hears_closes = type(observer).__name__ == "InotifyObserver"  # (only inotify tells of closes)
        # watchdog warns each time a folder moved back in is watched again, with the repr of every watch: noise,
        # thousands of lines a day in a busy tree (first among the filters, each time: a caller's may be before)
        warnings.filterwarnings("ignore", "Callback with id", RuntimeWarning)
        observer.schedule(EventHandler(self._intake, self.folder), str(watched), recursive=self._recursive,
                          event_filter=list(HANDLED_EVENTS))
        observer.start()
        watch_overflows(self._intake)

    def lost(self) -> bool:
        """Whether the folder watched is gone: deleted, renamed away, replaced by a new one, or its watch ended."""
        try:
            st = os.stat(self.folder)
        except OSError:
            return True
        observer = self._observer
        emitters_dead = observer is not None and not all(e.is_alive() for e in observer.emitters)
        return (st.st_dev, st.st_ino) != self._identity or emitters_dead

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5)
            except Exception:  # a vanished folder may upset the emitter
                log.debug("observer stop failed", exc_info=True)
