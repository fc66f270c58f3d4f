"""Files the watcher holds back for a moment, waiting for their sidecar (see :mod:`localvault.watch`).

Rigs that write a sidecar do so *after* the image: A1111/Forge's "save text
file" saves the image, then ``NAME.txt``. Taken at once, such an image gets
placeholders, and importing it again later only finds a duplicate: its prompt,
seed and model would be lost. So once a folder has shown a sidecar (a
``.json`` or ``.txt`` file appearing in it, or beside a file found by the
catch-up), a file there with no metadata of its own and no sidecar yet waits
up to :data:`SIDECAR_WAIT_SECONDS` for one, and is taken as soon as it comes.
A folder new to the watch takes the mark of its parent and of its sibling
folders: a rig writing into a folder per day (A1111's
``txt2img-images/2026-11-27/``) writes sidecars into the new day's too, and
its first image there would otherwise be taken before its sidecar came.
Files that carry their metadata, and folders where no sidecar was ever seen
(nor beside them), are taken at once, as before.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from . import metadata
from ._intake import SIDECAR_SUFFIXES, is_ignored_name
from .metadata import sidecar

#: How long a file with no metadata waits for its sidecar, in a folder where sidecars were seen.
SIDECAR_WAIT_SECONDS = 3.0
#: How long after a file with no metadata was taken its sidecar still fills the row's placeholders.
LATE_SIDECAR_SECONDS = 10.0


def is_sidecar_name(name: str) -> bool:
    """A name a sidecar file may have (``.json`` or ``.txt``, neither hidden nor temporary)."""
    return name.lower().endswith(SIDECAR_SUFFIXES) and not is_ignored_name(name)


class SidecarWait:
    """The folders whose rig writes sidecars, and the files held back waiting for theirs (thread-safe)."""

    def __init__(self, wait_seconds: float = SIDECAR_WAIT_SECONDS) -> None:
        self.wait_seconds = wait_seconds
        self._folders: set[str] = set()
        self._held: dict[str, float] = {}  # path -> when it is taken anyway
        self._taken_bare: dict[str, tuple[str, float]] = {}  # path -> (its asset's id, until when a sidecar counts)
        self._late: list[tuple[str, str]] = []  # (path, asset id) whose sidecar came after it was taken
        self._lock = threading.Lock()

    def saw_folder(self, folder: str, names: Iterable[str]) -> None:
        """The catch-up listed ``folder``: a sidecar among its ``names`` marks it."""
        if any(is_sidecar_name(name) for name in names):
            with self._lock:
                self._folders.add(folder)

    def saw_sidecar(self, path: str, *, complete: bool) -> list[str]:
        """A sidecar file appeared: marks its folder. Once ``complete`` (closed after writing, or renamed in),
        the held files it belongs to, to be taken now; a file just created may have no text yet."""
        folder, name = os.path.split(path)
        with self._lock:
            self._folders.add(folder)
            if not complete:
                return []
            released = [held for held in self._held if _is_its_sidecar(path, held)]
            for held in released:
                del self._held[held]
            now = time.monotonic()
            for taken, (asset_id, until) in list(self._taken_bare.items()):
                if until > now and _is_its_sidecar(path, taken):
                    del self._taken_bare[taken]
                    self._late.append((taken, asset_id))
        return released

    def taken_without_metadata(self, path: str, asset_id: str) -> None:
        """``path`` became ``asset_id`` with placeholders: a sidecar of its that comes within
        :data:`LATE_SIDECAR_SECONDS` is handed out by :meth:`late_sidecars` (the first file of a watch is
        taken before any sidecar was seen, and a slow rig may miss the wait)."""
        now = time.monotonic()
        # One there already came while the file was imported (its reading found none): its event may be past.
        arrived = _has_sidecar(*os.path.split(path), written=float("-inf"))
        with self._lock:
            for old in [p for p, (_a, until) in self._taken_bare.items() if until <= now]:
                del self._taken_bare[old]
            if arrived:  # read now; and again at its close, should it still have been written to
                self._late.append((path, asset_id))
            self._taken_bare[path] = (asset_id, now + LATE_SIDECAR_SECONDS)

    def late_sidecars(self) -> list[tuple[str, str]]:
        """(path, asset id) of files taken with placeholders whose sidecar has come since."""
        with self._lock:
            late, self._late = self._late, []
        return late

    def hold(self, path: str) -> bool:
        """Hold ``path`` back if its folder has shown sidecars and it has neither metadata nor a sidecar yet."""
        folder, name = os.path.split(path)
        with self._lock:
            if path in self._held:
                return True
            if not self._marked(folder):
                return False
        try:
            written = os.stat(path).st_mtime
        except OSError:  # gone: the import will say nothing, or why
            return False
        if _has_sidecar(folder, name, written):
            return False
        try:
            if metadata.read(path, siblings=()).source != "none":
                return False
        except Exception:  # unreadable now: the import will say why
            return False
        with self._lock:
            self._held[path] = time.monotonic() + self.wait_seconds
        if _has_sidecar(folder, name, written):
            with self._lock:  # it came meanwhile, perhaps before we held the file: no need to wait
                return self._held.pop(path, None) is None
        return True

    def _marked(self, folder: str) -> bool:
        """Whether ``folder``, its parent or a sibling has shown sidecars (the lock is held)."""
        if folder in self._folders:
            return True
        parent = os.path.dirname(folder)
        return any(marked == parent or os.path.dirname(marked) == parent for marked in self._folders)

    def due(self) -> list[str]:
        """Held files whose wait is over: taken without a sidecar."""
        now = time.monotonic()
        with self._lock:
            due = [path for path, deadline in self._held.items() if deadline <= now]
            for path in due:
                del self._held[path]
        return due

    def release_all(self, *, forget_folders: bool = False) -> list[str]:
        """Every held file, to be taken now (the watch is stopping, or its folder went away: then, with
        ``forget_folders``, what its folders showed is forgotten too; the catch-up of the new one tells)."""
        with self._lock:
            held = list(self._held)
            self._held.clear()
            if forget_folders:
                self._folders.clear()
                self._taken_bare.clear()
        return held


def _is_its_sidecar(sidecar_path: str, path: str) -> bool:
    """Whether ``sidecar_path`` is a sidecar name of the file ``path`` (beside it)."""
    folder, name = os.path.split(sidecar_path)
    return os.path.dirname(path) == folder and name in sidecar.candidate_names(os.path.basename(path))


#: A sidecar written this much before its file still counts as its own (clocks of network disks differ a little).
SIDECAR_SKEW_SECONDS = 1.0


def _has_sidecar(folder: str, name: str, written: float) -> bool:
    """Whether a sidecar of ``name`` with some text (an empty one is still being written) is there, written no
    earlier than the file (at ``written``): an older one is a previous render's of the same name (A1111 naming
    files by seed, with --move taking the images and leaving their text files), and the new one is to come."""
    for candidate in sidecar.candidate_names(name):
        try:
            st = os.stat(os.path.join(folder, candidate))
        except OSError:
            continue
        if st.st_size > 0 and st.st_mtime >= written - SIDECAR_SKEW_SECONDS:
            return True
    return False
