"""What the watcher has heard of and not taken yet, and when each file is ready (see :mod:`localvault.watch`).

Events come in from the observer's thread (:meth:`Intake.offer`); the
watcher's thread takes what is ready (:meth:`Intake.next_paths`): a complete
file once no event has touched it for ``quiet_seconds``, a file without a
close event once it stays unchanged for ``stable_seconds`` (``open_seconds`` while its writer holds it open;
both
:class:`~localvault._watch_settle.UnsettledFiles`), a file held for its
sidecar once that comes or its wait ends
(:class:`~localvault._watch_sidecars.SidecarWait`); one still not whole after
``give_up_seconds`` is taken anyway (its import refuses it, with the reason).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from . import media
from ._intake import Candidate
from ._watch_settle import UnsettledFiles
from ._watch_sidecars import SidecarWait, is_sidecar_name
from .importer import is_candidate_name, is_ignored_name


def written_lately(candidates: list[Candidate], seconds: float) -> tuple[list[Candidate], int]:
    """The files written (their mtime) within the last ``seconds``, and how many others there were."""
    cutoff = time.time() - seconds
    young = [c for c in candidates if c.mtime >= cutoff]
    return young, len(candidates) - len(young)


class Intake:
    """The files heard of in the folder watched (``watched``, its real path; ``recursive``: its sub-folders too),
    thread-safe."""

    def __init__(self, watched: Path, recursive: bool, *, stable_seconds: float, quiet_seconds: float,
                 give_up_seconds: float, open_seconds: float, sidecar_wait_seconds: float,
                 vault_root: str | None = None) -> None:
        self.watched = watched
        self.recursive = recursive
        # The vault's own folder (its real path), should it be kept in the one watched: not the rig's files.
        self.vault_inside = None if vault_root is None else vault_root.rstrip(os.sep) + os.sep
        #: Whether the observer tells of closes (inotify): then a file written to and not closed is still open.
        self.hears_closes = False
        self._queue: queue.Queue[str] = queue.Queue()  # ready now (a sidecar came for a file held)
        self.unsettled = UnsettledFiles(stable_seconds, give_up_seconds, open_seconds)
        self._quieting = UnsettledFiles(quiet_seconds, give_up_seconds)  # complete, waiting for a quiet moment
        self.sidecars = SidecarWait(sidecar_wait_seconds)
        #: Set when the kernel dropped events (its queue overflowed): the watcher's thread catches up.
        self.overflowed = threading.Event()
        self._new_folders: queue.Queue[str] = queue.Queue()  # sub-folders made or moved in

    def offer(self, path: str, *, ready: bool, created: bool = False, written: bool = False) -> None:
        """Called from the observer's thread for each interesting event; ``ready``: a close, move or create;
        ``written``: a write (not a change of its mode or times)."""
        name = os.path.basename(path)
        if ready and is_sidecar_name(name) and self.in_scope(path):
            for waiting in self.sidecars.saw_sidecar(path, complete=not created):
                self._queue.put(waiting)
        if not is_candidate_name(name) or not self.in_scope(path):
            return
        if ready:
            self.unsettled.closed(path)
        if ready and media.looks_finished(path):
            self._quieting.note_as_is(path)
        else:
            self._quieting.discard(path)  # written to again: taken when complete again
            self.unsettled.note(path, writing=written and self.hears_closes)

    def folder_appeared(self, path: str) -> None:
        """Called from the observer's thread for a folder made or moved in: one a scan would enter (recursive),
        or one right in the folder watched (not recursive: the watcher says it is not looked in)."""
        if is_ignored_name(os.path.basename(path)):
            return
        if self.in_scope(os.path.join(path, "x")) or os.path.dirname(path) == str(self.watched):
            self._new_folders.put(path)

    def new_folders(self) -> list[str]:
        """The sub-folders that appeared since the last call."""
        return _emptied(self._new_folders)

    def in_scope(self, path: str) -> bool:
        """Directly in the folder, or (recursive) in a sub-folder that is neither hidden nor temporary, as a scan."""
        folder = os.path.dirname(path)
        if folder == str(self.watched):
            return True
        if not self.recursive or (self.vault_inside is not None and path.startswith(self.vault_inside)
                                  and self.vault_inside.startswith(str(self.watched) + os.sep)):
            return False
        relative = os.path.relpath(folder, self.watched)
        return not relative.startswith("..") and not any(is_ignored_name(part) for part in Path(relative).parts)

    def wait_for(self, paths: Iterable[str], seconds: float = 0.0, *, writing: bool = False) -> None:
        """Take ``paths`` again once whole (after ``seconds`` at the earliest): files still being written, or
        whose import is to be tried again; ``writing``: as files a writer may hold open (see UnsettledFiles)."""
        self.unsettled.wait_for(paths, seconds, writing=writing and self.hears_closes)

    def whole_of(self, candidates: Iterable[Candidate]) -> list[str]:
        """The paths a catch-up takes now: the others, not whole yet, are waited for like new files, and so is a
        video written in the last ``open_seconds``, as one its writer may hold open (an encoder paused between
        fragments: whole by its bytes at each pause)."""
        whole: list[str] = []
        growing: list[str] = []
        maybe_open: list[str] = []
        recent = time.time() - self.unsettled.open_seconds
        for candidate in candidates:
            if candidate.path.lower().endswith(".mp4") and candidate.mtime > recent:
                maybe_open.append(candidate.path)
            else:
                (whole if media.looks_finished(candidate.path) else growing).append(candidate.path)
        self.wait_for(growing)
        self.wait_for(maybe_open, writing=True)
        return whole

    def next_paths(self, poll_seconds: float) -> list[str]:
        """The files ready now, waiting up to ``poll_seconds`` for one (less when a complete file's quiet
        moment ends sooner)."""
        wait = poll_seconds
        quiet_in = self._quieting.seconds_to_next()
        if quiet_in is not None:  # woken when the first complete file may be taken, not at the next poll
            wait = min(wait, quiet_in + 0.001)
        try:
            first = [self._queue.get(timeout=wait)]
        except queue.Empty:
            first = []
        return [*first, *self._drain(), *self._settled(), *self.sidecars.due()]

    def take_all(self) -> list[str]:
        """Every file ready or waiting for its sidecar or a quiet moment (the watch is stopping)."""
        return [*self._drain(), *self._quieting.take_all(), *self.sidecars.release_all()]

    def clear(self) -> None:
        """Forget everything (the folder went away: the catch-up on its return finds its files)."""
        self._drain()
        self.unsettled.clear()
        self._quieting.clear()
        self.sidecars.release_all(forget_folders=True)

    def _settled(self) -> list[str]:
        """Complete files left alone for a quiet moment, and files taken by the stable-size fallback (unless held
        for their sidecar)."""
        return [path for path in (*self._quieting.settled(), *self.unsettled.settled())
                if not self.sidecars.hold(path)]

    def _drain(self) -> list[str]:
        return _emptied(self._queue)


def _emptied(waiting: queue.Queue[str]) -> list[str]:
    """What ``waiting`` holds, taken out."""
    taken: list[str] = []
    while True:
        try:
            taken.append(waiting.get_nowait())
        except queue.Empty:
            return taken


__all__ = ["Intake"]
