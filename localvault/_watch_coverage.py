"""Sub-folders of a recursive watch that inotify does not watch, listed now and then instead.

watchdog adds an inotify watch for each sub-folder and says nothing when it cannot: the per-user limit on
watches reached (``fs.inotify.max_user_watches``), or a folder it may not read (made ``0700`` by another user,
opened up later). Their files were never taken, and the watch said nothing. So after each (re)scheduling and
each new sub-folder, the folders of the tree are compared with the watches this process's inotify instances
hold (``/proc/self/fdinfo``); each folder without one is listed every :data:`LIST_SECONDS`, and a file new or
changed since its last listing is offered to the watcher as a write: taken once unchanged and whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ._intake import is_candidate_name, is_ignored_name
from .db import DB_NAME

#: How often a folder without a watch is listed.
LIST_SECONDS = 2.0
#: A check of the tree waits this long after a new sub-folder (watchdog adds its watch meanwhile).
SETTLE_SECONDS = 0.5

#: A file as last listed: (size, mtime in ns).
Listed = tuple[int, int]


#: A folder as inotify names it: (the kernel's device number, ``major << 20 | minor``; the inode number). A device
#: is needed: btrfs subvolumes, or mounts inside the tree, repeat inode numbers.
Identity = tuple[int, int]


def watched_folders() -> set[Identity] | None:
    """The folders this process's inotify instances watch; None where that cannot be read (no ``/proc``, or no
    inotify: then every folder is taken for watched)."""
    inodes: set[Identity] = set()
    found = False
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in descriptors:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
                found = True
                for line in info:
                    if line.startswith("inotify wd:"):
                        fields = dict(field.split(":", 1) for field in line.split()[1:] if ":" in field)
                        inodes.add((int(fields["sdev"], 16), int(fields["ino"], 16)))
        except (OSError, ValueError, KeyError):  # (closed meanwhile)
            continue
    return inodes if found else None


def sub_folders(root: str) -> Iterator[tuple[str, Identity]]:
    """(path, identity) of each sub-folder a recursive scan of ``root`` enters (not hidden or temporary ones,
    nor a vault's own); one that cannot be listed is yielded, and not entered."""
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if is_ignored_name(entry.name) or not entry.is_dir(follow_symlinks=False):
                    continue
                if os.path.exists(os.path.join(entry.path, DB_NAME)):
                    continue
                st = entry.stat(follow_symlinks=False)
                yield entry.path, ((os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino)
            except OSError:
                continue
            stack.append(entry.path)


class UnwatchedFolders:
    """The sub-folders of one watched tree that have no inotify watch, and what each held at its last listing.
    Used from the watcher's thread only."""

    def __init__(self) -> None:
        self._listed: dict[str, dict[str, Listed] | None] = {}  # folder -> its files (None: never listed)
        self._check_at: float | None = None
        self._list_at = 0.0

    def __len__(self) -> int:
        return len(self._listed)

    def check_soon(self) -> None:
        """A sub-folder appeared: check the tree once watchdog has had time to watch it."""
        if self._check_at is None:
            self._check_at = time.monotonic() + SETTLE_SECONDS

    def check_due(self) -> bool:
        return self._check_at is not None and time.monotonic() >= self._check_at

    def check(self, root: str, *, caught_up: bool) -> list[str]:
        """Compare the tree under ``root`` with the watches held; the folders newly found without one.
        ``caught_up``: the catch-up has just taken what these folders hold (else all of it is new)."""
        self._check_at = None
        watched = watched_folders()
        if watched is None:
            return []
        unwatched = {path for path, identity in sub_folders(root) if identity not in watched}
        new = sorted(unwatched - self._listed.keys())
        self._listed = {path: self._listed.get(path) for path in unwatched}
        for path in new:
            self._listed[path] = _files_of(path) if caught_up else None
        return new

    def clear(self) -> None:
        self._listed.clear()
        self._check_at = None

    def changed_files(self) -> list[str]:
        """The files new or changed in the folders without a watch since their last listing (every
        :data:`LIST_SECONDS`); a sub-folder new among them calls for a check of the tree."""
        if not self._listed or time.monotonic() < self._list_at:
            return []
        self._list_at = time.monotonic() + LIST_SECONDS
        changed: list[str] = []
        for folder, before in self._listed.items():
            now = _files_of(folder)
            if now is None:  # (not readable, or gone: listed again next time)
                continue
            fresh = [path for path, listed in now.items() if before is None or before.get(path) != listed]
            if any(path.endswith(os.sep) for path in fresh):  # a sub-folder: no watch can have heard of it
                self.check_soon()
            changed += [path for path in fresh if not path.endswith(os.sep)]
            self._listed[folder] = now
        return changed


def _files_of(folder: str) -> dict[str, Listed] | None:
    """The candidate files of ``folder`` as listed now, and its sub-folders (``path/``, listed as (0, 0))."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    files: dict[str, Listed] = {}
    for entry in entries:
        try:
            if is_candidate_name(entry.name) and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                files[entry.path] = (st.st_size, st.st_mtime_ns)
            elif not is_ignored_name(entry.name) and entry.is_dir(follow_symlinks=False):
                files[entry.path + os.sep] = (0, 0)
        except OSError:
            continue
    return files
