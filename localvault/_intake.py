"""How an import finds files and groups them into jobs (used by :mod:`localvault.importer` and the watcher).

Files: regular files with a known extension; hidden and temporary names
(``.x``, ``x.tmp``, ``x.part``, ``x.crdownload``, ``x~``) are ignored; a
symbolic link leading outside the folder, or a path with ``..``, is refused.

Jobs: a file carrying a run id joins ``uuid5(JOB_NAMESPACE, "<user>/run/<run id>")``.
Other files with metadata, offered in ``(mtime, path)`` order, stay in the
current job while prompt, negative prompt, model and settings (all but seeds
and raw ComfyUI graphs) are equal and each is written within
``JOB_WINDOW_SECONDS`` (60 s) of the previous one; a new job's id is
``uuid5(JOB_NAMESPACE, "<user>/sha256/<its first file's sha256>")``. A file
without any metadata is a job of its own.
"""

from __future__ import annotations

import json
import os
import stat as _stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from . import models
from ._recovered import RECOVERED_FOLDER
from ._source_file import relative_name, storable_name
from .db import DB_NAME
from .errors import InvalidInputError
from .models import GenerationInfo

if TYPE_CHECKING:
    from .files import FileStore

JOB_WINDOW_SECONDS = 60.0
#: Namespace of job ids derived from run ids or first files (never change it: ids must stay stable).
JOB_NAMESPACE = uuid.UUID("6f0c2a5e-8f7e-5a61-9a43-0c1c6a1d7b21")
TEMP_SUFFIXES = (".tmp", ".part", ".crdownload", "~", ".partial", ".download")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".mp4")
SIDECAR_SUFFIXES = (".json", ".txt")
#: Settings that differ from file to file of one run (raw graphs, the name of the file's own sidecar).
_GROUP_IGNORED = ("comfyui_prompt", "comfyui_workflow", "comfyui_workflow_not_kept_bytes", "sidecar")


@dataclass(frozen=True)
class Candidate:
    """A file found by the scan: its path, size and modification time.

    ``sidecars``: the names in its folder that could be sidecar files
    (``.json``, ``.txt``) when the folder was listed; None when unknown.
    ``target``: for a symbolic link, the file it led to, inside the folder, when it was found: that is what
    is read, not whatever the link leads to by then.
    ``name``: its path relative to the folder imported or watched (``/`` between the parts), when that is not
    its base name (a file in a sub-folder); see :attr:`source_file`.
    """

    path: str
    size: int
    mtime: float
    sidecars: frozenset[str] | None = None
    target: str | None = None
    name: str | None = None

    @property
    def source_file(self) -> str:
        """The name its asset keeps (``source_file``): its path relative to the folder, as storable text."""
        return storable_name(self.name if self.name is not None else os.path.basename(self.path))


def is_ignored_name(name: str) -> bool:
    """Hidden and temporary names (``.x``, ``x.tmp``, ``x.part``, ``x.crdownload``, ``x~``) are never imported."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith(TEMP_SUFFIXES)


def is_candidate_name(name: str) -> bool:
    """A name an import considers: not hidden or temporary, with a known media extension."""
    return not is_ignored_name(name) and os.path.splitext(name)[1].lower() in EXTENSIONS


def check_folder(value: Any, what: str, vault: tuple[Path, FileStore] | None = None) -> Path:
    """The folder ``value`` names (text or a path, ``~`` expanded); InvalidInputError if it is none we can use, or
    the ``vault``'s (its folder, and its files' where they are elsewhere) or inside one."""
    folder = models.check_path(value, what)
    try:
        is_folder = folder.is_dir()
    except OSError as exc:  # a name too long, a parent we may not enter
        raise InvalidInputError(f"cannot use {folder} as {what}: {exc.strerror or exc}") from None
    if not is_folder:
        one_file = " (one file goes in with Workspace.add, or 'localvault add')" if folder.is_file() else ""
        raise InvalidInputError(f"{folder} is not a folder; give the rig's output folder{one_file}")
    if vault is not None:
        _refuse_inside_vault(folder, [str(vault[0]), *([vault[1].root] if vault[1].local else [])], what)
    return folder


def _refuse_inside_vault(folder: Path, vault_folders: Iterable[str], what: str) -> None:
    """InvalidInputError for a folder to take files from that is a vault's (its folder, or its buckets' when
    they are elsewhere), or inside one: its files are the vault's own, another user's too, and ``--move``
    deleted them once taken. Its ``recovered/`` folder, where the vault sets strays aside to be taken again,
    is allowed."""
    real = Path(os.path.realpath(folder))
    for vault_folder in map(Path, map(os.path.realpath, vault_folders)):
        if real.is_relative_to(vault_folder) and not real.is_relative_to(vault_folder / RECOVERED_FOLDER):
            where = "the folder of the vault" if real == vault_folder else "inside the vault"
            raise InvalidInputError(f"{folder} is {where} at {vault_folder}: its files are the vault's own;"
                                    f" give the rig's output folder as {what} (files set aside are in"
                                    f" {vault_folder / RECOVERED_FOLDER})")


def check_path(path: str | os.PathLike[str], root: Path) -> tuple[Candidate | None, str | None]:
    """(candidate, None) for an importable file under ``root``, (None, reason) when refused, (None, None) to ignore."""
    text = os.fspath(path)
    if ".." in Path(text).parts:
        return None, "the path contains '..'; give a path inside the folder"
    return _candidate(text, root, name=_name_under(text, root))


def _name_under(text: str, root: Path) -> str | None:
    """The path of the file ``text`` relative to the folder ``root`` (its real path), when that is not its base
    name; the file itself is not followed (a link keeps its own name)."""
    absolute = os.path.abspath(text)
    relative = relative_name(absolute, str(root))
    if relative is None:  # reached through a link to the folder (or to a folder above it)
        folder, name = os.path.split(absolute)
        relative = relative_name(os.path.join(os.path.realpath(folder), name), str(root))
    return relative if relative is not None and "/" in relative else None


def _candidate(text: str, root: Path, sidecars: frozenset[str] | None = None,
               name: str | None = None) -> tuple[Candidate | None, str | None]:
    """check_path without the '..' check (a scan's own paths may start with '../', from the folder given)."""
    target = None
    try:
        st = os.lstat(text)
        if _stat.S_ISLNK(st.st_mode):
            target = Path(os.path.realpath(text))
            if not target.is_relative_to(root):
                return None, f"symbolic link leads outside the folder (to {target}); not followed"
            if not os.path.exists(text):
                return None, f"symbolic link to {target}, which is not there (a disk not mounted?)"
            st = os.stat(text)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or exc}"
    if not _stat.S_ISREG(st.st_mode):
        return None, None
    return Candidate(text, st.st_size, st.st_mtime, sidecars, None if target is None else str(target), name), None


class Scan(NamedTuple):
    """What a folder holds for an import."""

    candidates: list[Candidate]  # sorted by (mtime, path)
    refused: dict[str, str]  # path -> reason
    ignored: int
    #: Sub-folders not looked in (not recursive; or recursive, a vault's own folder kept among the rig's).
    folders_not_entered: list[str]


def scan(folder: Path, recursive: bool = False) -> Scan:
    """The files of ``folder`` (``recursive``: and of its sub-folders, but a vault's) to import, refuse, ignore."""
    root = folder.resolve()
    found: list[Candidate] = []
    refused: dict[str, str] = {}
    ignored = 0
    not_entered: list[str] = []
    stack = [(str(folder), "")]  # (a folder, its path relative to the one scanned, with "/" after it)
    while stack:
        current, prefix = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            refused[current] = f"cannot list the folder: {exc.strerror or exc}"
            continue
        sidecars = frozenset(e.name for e in entries if e.name.endswith(SIDECAR_SUFFIXES))
        for entry in entries:
            if is_ignored_name(entry.name):
                ignored += 1
                continue
            if entry.is_dir(follow_symlinks=False):
                # A vault kept in the rig's folder holds the vault's files, not new generations.
                if recursive and not os.path.exists(os.path.join(entry.path, DB_NAME)):
                    stack.append((entry.path, f"{prefix}{entry.name}/"))
                else:
                    not_entered.append(entry.path)
                continue
            if not is_candidate_name(entry.name):
                ignored += 1
                continue
            candidate, reason = _candidate(entry.path, root, sidecars, f"{prefix}{entry.name}" if prefix else None)
            if candidate is not None:
                found.append(candidate)
            elif reason is not None:
                refused[entry.path] = reason
            else:
                ignored += 1
    found.sort(key=lambda c: (c.mtime, c.path))
    return Scan(found, refused, ignored, not_entered)


class JobGrouper:
    """Gives each file its job id by the documented rule (module docstring); keeps state across calls."""

    def __init__(self, user_id: str, window: float = JOB_WINDOW_SECONDS) -> None:
        self.user_id = user_id
        self.window = window
        self._last: tuple[str, float, str] | None = None  # (group key, mtime, job id)

    def job_for(self, info: GenerationInfo, sha256: str, mtime: float, key: str | None = None) -> str:
        """The job id of a file, given files are offered in (mtime, path) order.

        ``key``: its :func:`group_key`, when the caller has it already.
        """
        if info.run_id:
            return str(uuid.uuid5(JOB_NAMESPACE, f"{self.user_id}/run/{info.run_id}"))
        if info.source == "none" and not info.prompt and not info.model:
            return str(uuid.uuid5(JOB_NAMESPACE, f"{self.user_id}/sha256/{sha256}"))
        if key is None:
            key = group_key(info)
        if self._last is not None and self._last[0] == key and 0 <= mtime - self._last[1] <= self.window:
            job = self._last[2]
        else:
            job = str(uuid.uuid5(JOB_NAMESPACE, f"{self.user_id}/sha256/{sha256}"))
        self._last = (key, mtime, job)
        return job


def group_key(info: GenerationInfo) -> str:
    """What files of one run share: prompt, negative prompt, model, settings without seeds and raw graphs."""
    settings = {k: v for k, v in info.settings.items() if "seed" not in k.lower() and k not in _GROUP_IGNORED}
    return json.dumps([info.prompt, info.negative_prompt, info.model, settings], sort_keys=True, default=str)
