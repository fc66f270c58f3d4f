"""Files the watcher has seen but not taken yet: the stable-size fallback (see :mod:`localvault.watch`).

A file is noted when an event says it changed but it is not whole yet (or no
close event will come); it is taken once its size and mtime have not changed
for ``stable_seconds`` and it is whole by its bytes, or once it has not
changed for ``give_up_seconds`` (then its import refuses it, with the reason).
A file a writer still holds open (written to, and no close event since, where
close events come) waits ``open_seconds`` instead: a fragmented MP4 whose
encoder pauses between fragments looks whole after each one.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator

from . import media


class UnsettledFiles:
    """Paths waiting to be taken, with the size and mtime last seen (thread-safe)."""

    def __init__(self, stable_seconds: float, give_up_seconds: float, open_seconds: float | None = None) -> None:
        self.stable_seconds = stable_seconds
        self.give_up_seconds = give_up_seconds
        self.open_seconds = give_up_seconds if open_seconds is None else open_seconds
        # path -> (size, mtime_ns, unchanged since, open for writing)
        self._files: dict[str, tuple[int, int, float, bool]] = {}
        self._lock = threading.Lock()

    def note(self, path: str, *, writing: bool = False) -> None:
        """An event said ``path`` changed and it is not whole yet: watch it. ``writing``: it was written to and
        its writer has not closed it yet (an event said so, where close events come)."""
        with self._lock:
            size, mtime, since, was_writing = self._files.get(path, (-1, -1, time.monotonic(), False))
            self._files[path] = (size, mtime, since, writing or was_writing)

    def closed(self, path: str) -> None:
        """Its writer closed ``path``: if it waits here (not whole), it no longer waits for a close."""
        with self._lock:
            if path in self._files:
                self._files[path] = (*self._files[path][:3], False)

    def note_as_is(self, path: str) -> None:
        """An event said ``path`` is complete (closed, or renamed in): taken once nothing has changed it for
        ``stable_seconds`` (a later event about it notes it again, from then)."""
        try:
            st = os.stat(path)
        except OSError:  # gone already (renamed away): nothing to take
            self.discard(path)
            return
        with self._lock:
            self._files[path] = (st.st_size, st.st_mtime_ns, time.monotonic(), False)

    def discard(self, path: str) -> None:
        with self._lock:
            self._files.pop(path, None)

    def seconds_to_next(self) -> float | None:
        """How long until the earliest file may be taken (None: none waits)."""
        with self._lock:
            if not self._files:
                return None
            return max(0.0, min(since + self._wait(writing) for _size, _mtime, since, writing
                                in self._files.values()) - time.monotonic())

    def take_all(self) -> list[str]:
        """Every path waiting, now forgotten here (the watch is stopping: what was complete is taken)."""
        with self._lock:
            paths = list(self._files)
            self._files.clear()
        return paths

    def wait_for(self, paths: Iterable[str], seconds: float = 0.0, *, writing: bool = False) -> None:
        """Watch ``paths`` again, to be taken once whole (after ``seconds`` at the earliest); ``writing``: as files
        whose writer may hold them open."""
        later = time.monotonic() + seconds
        with self._lock:
            for path in paths:
                self._files[path] = (-1, -1, later, writing or (path in self._files and self._files[path][3]))

    def settled(self) -> list[str]:
        """Paths unchanged for ``stable_seconds`` and whole (or unchanged for ``give_up_seconds``), now
        forgotten here; paths gone, or no longer regular files, are dropped."""
        now = time.monotonic()
        ready: list[str] = []
        with self._lock:
            for path, (size, mtime, since, writing) in list(self._files.items()):
                try:
                    st = os.stat(path)
                except OSError:
                    del self._files[path]
                    continue
                if not stat.S_ISREG(st.st_mode):  # a named pipe or a folder with an image's name: never taken
                    del self._files[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._files[path] = (st.st_size, st.st_mtime_ns, max(now, since), writing)
                elif now - since >= self._wait(writing) and (now - since >= self.give_up_seconds
                                                             or media.looks_finished(path)):
                    del self._files[path]
                    ready.append(path)
        return ready

    def _wait(self, writing: bool) -> float:
        """How long a file must stay unchanged to be taken."""
        return max(self.stable_seconds, self.open_seconds) if writing else self.stable_seconds

    def clear(self) -> None:
        with self._lock:
            self._files.clear()

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._files))
