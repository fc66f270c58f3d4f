"""Examining processes for big imports: the per-file Python work, off the caller's GIL.

An import of thousands of small files spends most of its time in Python
(checking, parsing metadata, building rows). Threads share one GIL, so on
several cores that work runs as if on one. A big import therefore hands each
chunk of files to one of a few worker processes, which examines and stages
them exactly as the importer's threads would (:func:`examine_and_stage`) and
sends the results back; the importer then groups and commits them as usual.

The workers are plain subprocesses (``python -m localvault._examiners``)
exchanging pickles over their stdin and stdout, not :mod:`multiprocessing`:
its ``spawn`` and ``forkserver`` start methods re-import the caller's
``__main__`` (every script embedding the vault would need an ``if __name__ ==
"__main__"`` guard), and ``fork`` is unsafe in a process with threads. A
worker runs in a session of its own and ignores SIGINT, so a Ctrl-C reaches
only its parent, which decides what stops; it exits when its stdin closes, so
it never outlives the import that started it (even a killed one).

A worker learns which hashes the user already has from the vault's database
(read-only, one indexed lookup per file) rather than from a copy of the set.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import sqlite3
import struct
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._examine import Examined, examine, stage
from ._intake import Candidate
from .errors import LocalVaultError, StorageError
from .files import FileStore

#: Frame header: the pickle's length.
_HEADER = struct.Struct("<Q")
_READY = "ready"


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs, sent once when it starts."""

    root: str  # the vault's bucket root (local disk only)
    database: str  # the vault's SQLite file, read for the hashes the user has
    user_id: str
    mode: str
    in_memory_bytes: int
    prompt: str | None
    model: str | None


class WorkerStartError(StorageError):
    """The worker processes could not be started (e.g. a frozen app without a Python to run them)."""


class ExaminerProcesses:
    """A few worker processes that examine and stage chunks of files.

    :meth:`submit` returns a future of one result per file: an
    :class:`Examined` (staged under a temporary name in the user's folder
    when it is new) or the exception that refused it. The future raises
    :class:`WorkerStartError` when a worker could not start, and
    :class:`StorageError` when one died on that chunk (a new worker takes
    its place for the next chunks).
    """

    def __init__(self, count: int, setup: WorkerSetup) -> None:
        if getattr(sys, "frozen", False) or not sys.executable:
            # A frozen app's executable is the app itself, not a Python that can run "-m".
            raise WorkerStartError("this program cannot start Python worker processes")
        self._setup = setup
        self._procs: list[subprocess.Popen[bytes]] = []
        self._idle: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self._ready: set[int] = set()
        self._threads = ThreadPoolExecutor(count, thread_name_prefix="localvault-examiner")
        try:
            for _ in range(count):
                self._idle.put(self._start())
        except WorkerStartError:
            self.close()
            raise

    def _start(self) -> subprocess.Popen[bytes]:
        """A new worker, given its setup; it reports ready once its imports are done (read by its first chunk)."""
        env = dict(os.environ)
        # The worker must import this very localvault, wherever the caller found it.
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env=env, start_new_session=True)
            self._procs.append(proc)
            _send(proc.stdin, self._setup)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            raise WorkerStartError(f"could not start the import's worker processes ({exc})") from None
        return proc

    def submit(self, files: list[Candidate]) -> Future[list[Examined | Exception]]:
        """Examine and stage ``files`` in the next free worker."""
        return self._threads.submit(self._run, [_slim(c) for c in files])

    def _run(self, files: list[Candidate]) -> list[Examined | Exception]:
        proc = self._idle.get()
        try:
            if proc.pid not in self._ready:
                if _receive(proc.stdout) != _READY:  # type: ignore[arg-type]
                    raise EOFError
                self._ready.add(proc.pid)
            _send(proc.stdin, files)  # type: ignore[arg-type]
            results: list[Examined | Exception] = _receive(proc.stdout)  # type: ignore[arg-type]
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            if proc.poll() is None:  # alive but talking nonsense: it cannot be trusted with more files
                proc.kill()
            code = proc.wait()
            if proc.pid not in self._ready:
                self._idle.put(proc)  # so that every chunk after this one fails the same way, at once
                raise WorkerStartError(f"an import worker process did not start (exit code {code})") from None
            self._idle.put(self._start())
            raise StorageError(f"the import worker process examining these files stopped (exit code {code}, "
                               f"{type(exc).__name__}); import them again") from None
        self._idle.put(proc)
        return results

    def close(self) -> None:
        """Let chunks under way finish, then stop the workers (they exit when their stdin closes)."""
        self._threads.shutdown(wait=True, cancel_futures=True)
        for proc in self._procs:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()

    def __enter__(self) -> ExaminerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def examine_and_stage(candidate: Candidate, known: Any, store: FileStore, setup: WorkerSetup) -> Examined:
    """What a worker does with one file: examine it and, when it is new, stage it in the user's folder."""
    examined = examine(candidate, known, in_memory_bytes=setup.in_memory_bytes, prompt=setup.prompt,
                       model=setup.model)
    if examined.values is not None:
        examined.staged = stage(store, examined, setup.mode, setup.user_id)
    examined.data = None
    return examined


def examine_chunk(files: list[Candidate], known: Any, store: FileStore,
                  setup: WorkerSetup) -> list[Examined | Exception]:
    """:func:`examine_and_stage` for each file; a file's failure is its result (one that pickles)."""
    results: list[Examined | Exception] = []
    for candidate in files:
        try:
            results.append(examine_and_stage(candidate, known, store, setup))
        except (LocalVaultError, OSError) as exc:
            results.append(exc)
        except Exception as exc:  # an unexpected bug refuses the file, as in the threads
            results.append(LocalVaultError(f"{type(exc).__name__}: {exc}"))
    return results


class _KnownHashes:
    """``sha256 in known``: does the user already have these bytes (an unexpired asset, or a library item)?"""

    def __init__(self, database: str, user_id: str) -> None:
        self._conn = sqlite3.connect(f"{Path(database).as_uri()}?mode=ro", uri=True, timeout=30)
        self._user_id = user_id

    def __contains__(self, sha256: object) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM workspace_assets WHERE user_id = ? AND sha256 = ?"
            " AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now') UNION ALL "
            "SELECT 1 FROM user_library WHERE user_id = ? AND sha256 = ? LIMIT 1",
            (self._user_id, sha256, self._user_id, sha256)).fetchone() is not None


def _slim(candidate: Candidate) -> Candidate:
    """The candidate with only the sidecar names that can be its own (a folder's list would be sent per file)."""
    if not candidate.sidecars:
        return candidate
    from .metadata.sidecar import candidate_names

    mine = frozenset(n for n in candidate_names(os.path.basename(candidate.path)) if n in candidate.sidecars)
    return Candidate(candidate.path, candidate.size, candidate.mtime, mine)


def _send(stream: IO[bytes], value: Any) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return pickle.loads(payload)


def _serve() -> None:
    """A worker's life: setup, then one reply per chunk until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    # Anything else that writes to stdout must not corrupt the replies.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        setup: WorkerSetup = _receive(requests)
    except EOFError:
        return
    store = FileStore(setup.root)
    known = _KnownHashes(setup.database, setup.user_id)
    _send(replies, _READY)
    while True:
        try:
            files: list[Candidate] = _receive(requests)
        except EOFError:
            return
        _send(replies, examine_chunk(files, known, store, setup))


if __name__ == "__main__":
    _serve()
