"""The watchdog handler of :class:`~localvault.watch.Watcher`: which events offer a file, and as how ready."""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from ._watch_intake import Intake

log = logging.getLogger("localvault.watch")


class EventHandler(FileSystemEventHandler):
    """Hands watchdog's events for files to the watcher's :class:`Intake`, from the observer's thread."""

    def __init__(self, intake: Intake, folder: Path) -> None:
        self.intake = intake
        self.folder = folder

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            super().dispatch(event)
        except Exception:  # the observer's thread must live on: it hears every later file
            log.exception("the watcher of %s could not handle the event %s", self.folder, event)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.intake.offer(os.fsdecode(event.src_path), ready=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self.intake.folder_appeared(os.fsdecode(event.dest_path))
        else:
            self.intake.offer(os.fsdecode(event.dest_path), ready=True)

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self.intake.folder_appeared(os.fsdecode(event.src_path))
        else:  # a file renamed in from another folder comes as "created", already whole
            self.intake.offer(os.fsdecode(event.src_path), ready=True, created=True)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.intake.offer(os.fsdecode(event.src_path), ready=False, written=True)

    def on_attrib(self, event: FileSystemEvent) -> None:
        """A change of mode or times: a file refused as unreadable may pass; not a write (a copy setting its times
        after its close leaves no writer holding it)."""
        if not event.is_directory:
            self.intake.offer(os.fsdecode(event.src_path), ready=False)


#: The intakes of watchers whose observers run: each is told when the kernel's queue of inotify events overflows.
_INTAKES: weakref.WeakSet[Intake] = weakref.WeakSet()
#: What watchdog (7.x) logs when inotify's queue overflowed; it tells its handlers nothing else.
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


class _OverflowFilter(logging.Filter):
    """Passes every record; one saying the queue overflowed tells each watcher to catch up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_OVERFLOW_MESSAGE):
            for intake in list(_INTAKES):
                intake.overflowed.set()
        return True


_FILTER = _OverflowFilter()


def watch_overflows(intake: Intake) -> None:
    """Have ``intake`` told of an overflow of the kernel's event queue (events were lost: its watcher must
    catch up).

    Watchdog only logs it (a WARNING), so a filter on its logger listens;
    an app that silences that logger below WARNING silences this too.
    """
    _INTAKES.add(intake)
    logger = logging.getLogger(_OVERFLOW_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
