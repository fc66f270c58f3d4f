"""Examining processes for big imports: the per-file Python work, off the caller's GIL.

An import of thousands of small files spends most of its time in Python
(checking, parsing metadata, building rows). Threads share one GIL, so on
several cores that work runs as if on one. A big import therefore hands each
chunk of files to one of a few worker processes, which examines and stages
them exactly as the importer's threads would (:func:`examine_and_stage`) and
sends the results back; the importer then groups and commits them as usual.

The workers are plain subprocesses, not :mod:`multiprocessing`: its
``spawn`` and ``forkserver`` start methods re-import the caller's
``__main__`` (every script embedding the vault would need an ``if __name__ ==
"__main__"`` guard), and ``fork`` is unsafe in a process with threads.

- A worker is ``python -I -c BOOT`` with the caller's ``sys.path`` in its
  arguments: isolated (no current folder on its path, no ``PYTHON*``
  variables), it imports the very localvault its caller uses.
- Requests (pickles) go down its stdin; replies come back on a pipe of their
  own, so that nothing a module prints can garble them.
- It runs in a session of its own and ignores SIGINT: a Ctrl-C reaches only
  the import, which decides what stops. It exits when its stdin closes, and
  stops at its next file once its import is dead (a killed one: it is given
  another parent), so it never stages a chunk's files for nobody.
- It names each staged file after its chunk (``.tmp-<chunk token>-<i>``): if
  it dies, the caller knows which files to remove.
- It learns which hashes the user already has from the vault's database
  (read-only, one indexed lookup per file), not from a copy of the set.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import queue
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._disk import TEMP_PREFIX
from ._examine import Examined, examine, stage
from ._intake import Candidate
from .errors import LocalVaultError, StorageError
from .files import WORKSPACE_BUCKET, FileStore
from .models import GenerationInfo

#: Frame header: the pickle's length.
_HEADER = struct.Struct("<Q")
#: No reply is this big (16 files' metadata); a bigger length means a garbled stream.
_MAX_FRAME = 256 * 1024 * 1024
_READY = "ready"
#: Settings JSON longer than this is not sent back a second time as the parsed dict (see examine_and_stage).
SLIM_SETTINGS_CHARS = 16 * 1024
#: Seconds a new worker may take to import localvault and say so.
START_TIMEOUT = 60.0
_BOOT = "import sys; sys.path[:] = sys.argv[2:]; from localvault._examiners import _serve; _serve(int(sys.argv[1]))"


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


class _Worker:
    """One worker process and the ends of its two pipes."""

    def __init__(self, proc: subprocess.Popen[bytes], replies: IO[bytes]) -> None:
        self.proc = proc
        self.requests: IO[bytes] = proc.stdin  # type: ignore[assignment]
        self.replies = replies
        self.ready = False
        self.broken: str | None = None  # why chunks cannot be sent to it (nor to a replacement)

    def stop(self, *, kill: bool = False) -> int:
        """Close its stdin (it then exits) or kill it; its exit code."""
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.requests.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.replies.close()
        return code


class ExaminerProcesses:
    """A few worker processes that examine and stage chunks of files.

    :meth:`submit` returns a future of one result per file: an
    :class:`Examined` (staged under a temporary name in the user's folder
    when it is new) or the exception that refused it. The future raises
    :class:`WorkerStartError` when no worker can run (the caller should use
    threads), and :class:`StorageError` when the worker died on that chunk
    (its staged files are removed, and a new worker takes its place).
    """

    def __init__(self, count: int, setup: WorkerSetup) -> None:
        if not _can_start_python():
            raise WorkerStartError(f"{sys.executable or 'this program'} cannot run Python worker processes")
        self._setup = setup
        self._store = FileStore(setup.root)
        self._workers: list[_Worker] = []
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._threads = ThreadPoolExecutor(count, thread_name_prefix="localvault-examiner")
        try:
            for _ in range(count):
                self._idle.put(self._start())
        except WorkerStartError:
            self.close()
            raise

    def _start(self) -> _Worker:
        """A new worker, given its setup; it says it is ready once its imports are done (read by its first chunk)."""
        read_end, write_end = os.pipe()
        path = [entry or os.getcwd() for entry in sys.path]
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, str(write_end), *path], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_end,),
                                    start_new_session=True, env=_worker_environment())
        except (OSError, ValueError) as exc:
            os.close(read_end)
            raise WorkerStartError(f"could not start the import's worker processes ({exc})") from None
        finally:
            os.close(write_end)
        worker = _Worker(proc, os.fdopen(read_end, "rb"))
        self._workers.append(worker)
        try:
            _send(worker.requests, self._setup)
        except OSError as exc:
            worker.stop(kill=True)
            raise WorkerStartError(f"an import worker process did not start ({exc})") from None
        return worker

    def submit(self, files: list[Candidate]) -> Future[list[Examined | Exception]]:
        """Examine and stage ``files`` in the next free worker."""
        return self._threads.submit(self._run, [_slim(c) for c in files])

    def _run(self, files: list[Candidate]) -> list[Examined | Exception]:
        worker = self._idle.get()
        token = uuid.uuid4().hex
        try:
            if worker.broken is not None:
                raise WorkerStartError(worker.broken)
            if not worker.ready:
                if not select.select([worker.replies], [], [], START_TIMEOUT)[0] or _receive(worker.replies) != _READY:
                    raise EOFError("no ready message")
                worker.ready = True
            _send(worker.requests, (token, files))
            results: list[Examined | Exception] = _receive(worker.replies)
            if len(results) != len(files):
                raise EOFError(f"{len(results)} results for {len(files)} files")
        except WorkerStartError:
            self._idle.put(worker)  # so that every later chunk fails as fast
            raise
        except Exception as exc:  # a dead worker, or one whose replies cannot be trusted
            code = worker.stop(kill=True)
            self._remove_staged(token, len(files))
            if not worker.ready:
                worker.broken = f"an import worker process did not start (exit code {code})"
                self._idle.put(worker)
                raise WorkerStartError(worker.broken) from None
            try:
                self._idle.put(self._start())
            except WorkerStartError as start_error:
                worker.broken = str(start_error)
                self._idle.put(worker)
            raise StorageError(f"the import worker process examining these files stopped (exit code {code}, "
                               f"{type(exc).__name__}); import them again") from None
        self._idle.put(worker)
        return results

    def _remove_staged(self, token: str, count: int) -> None:
        """Remove what a dead worker may have staged for a chunk (its names are known: the chunk's token)."""
        for index in range(count):
            try:
                self._store.remove(WORKSPACE_BUCKET, f"{self._setup.user_id}/{TEMP_PREFIX}{token}-{index}", prune=False)
            except LocalVaultError:  # left for verify --repair
                pass

    def close(self) -> None:
        """Let chunks under way finish, then stop the workers (they exit when their stdin closes)."""
        self._threads.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            if worker.proc.returncode is None:
                worker.stop()
        self._workers.clear()

    def __enter__(self) -> ExaminerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def examine_and_stage(candidate: Candidate, known: Any, store: FileStore, setup: WorkerSetup,
                      name: str | None = None) -> Examined:
    """What a worker does with one file: examine it and, when it is new, stage it in the user's folder."""
    examined = examine(candidate, known, in_memory_bytes=setup.in_memory_bytes, prompt=setup.prompt,
                       model=setup.model)
    if examined.values is not None:
        examined.staged = stage(store, examined, setup.mode, setup.user_id, name)
    examined.data = None
    # The importer reads only what grouping needs; big settings (a ComfyUI graph can be 100s of KB) already
    # travel as JSON in ``values``: not pickled, sent and unpickled a second time. (Small ones go as they
    # are: a slimmer copy costs the worker more than it saves.)
    if examined.values is not None and len(examined.values[3]) > SLIM_SETTINGS_CHARS:
        info = examined.info
        examined.info = GenerationInfo.model_construct(prompt=info.prompt, model=info.model, source=info.source,
                                                       run_id=info.run_id)
    return examined


def examine_chunk(token: str, files: list[Candidate], known: Any, store: FileStore, setup: WorkerSetup,
                  orphaned: Callable[[], bool] = lambda: False) -> list[Examined | Exception]:
    """:func:`examine_and_stage` for each file, staged as ``<token>-<i>``; a failure is that file's result. Stops
    early once ``orphaned()``: its import is dead, and the rest of a chunk (16 files, up to 16 GiB) would be
    staged for nobody."""
    results: list[Examined | Exception] = []
    for index, candidate in enumerate(files):
        if orphaned():
            break
        try:
            results.append(examine_and_stage(candidate, known, store, setup, f"{token}-{index}"))
        except (LocalVaultError, OSError) as exc:
            results.append(exc)
        except Exception as exc:  # an unexpected bug refuses the file, as in the threads (and this one pickles)
            results.append(LocalVaultError(f"{type(exc).__name__}: {exc}"))
    return results


#: The bytes a user already has: an unexpired workspace asset's (an expired one is replaced, even before
#: cleanup removes it) or a library item's. ``{hash}`` narrows it to one hash (an indexed lookup).
_KNOWN_SQL = ("SELECT sha256 FROM workspace_assets WHERE user_id = :user{hash}"
              " AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
              " UNION ALL SELECT sha256 FROM user_library WHERE user_id = :user{hash}")
_HAS_HASH_SQL = _KNOWN_SQL.format(hash=" AND sha256 = :sha") + " LIMIT 1"


def known_hashes(conn: sqlite3.Connection, user_id: str) -> set[str]:
    """Every hash the user already has (see :data:`_KNOWN_SQL`)."""
    return {row[0] for row in conn.execute(_KNOWN_SQL.format(hash=""), {"user": user_id})}


class _KnownHashes:
    """``sha256 in known``, one lookup at a time: the worker's view of :func:`known_hashes`."""

    def __init__(self, database: str, user_id: str) -> None:
        self._conn = sqlite3.connect(f"{Path(database).as_uri()}?mode=ro", uri=True, timeout=30)
        self._user_id = user_id

    def __contains__(self, sha256: object) -> bool:
        return self._conn.execute(_HAS_HASH_SQL, {"user": self._user_id, "sha": sha256}).fetchone() is not None


def _can_start_python() -> bool:
    """Whether ``sys.executable`` is a Python we may start (not a frozen app, nor a host such as uWSGI)."""
    if getattr(sys, "frozen", False) or not sys.executable or os.name != "posix":
        return False
    name = os.path.basename(sys.executable).lower()
    return name.startswith(("python", "pypy"))


def _slim(candidate: Candidate) -> Candidate:
    """The candidate with only the sidecar names that can be its own (a folder's list would be sent per file)."""
    if not candidate.sidecars:
        return candidate
    from .metadata.sidecar import candidate_names

    mine = frozenset(n for n in candidate_names(os.path.basename(candidate.path)) if n in candidate.sidecars)
    return dataclasses.replace(candidate, sidecars=mine)


def _send(stream: IO[bytes], value: Any) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


_MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(16 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 * 1024)}


def _worker_environment() -> dict[str, str]:
    """The caller's environment, plus glibc malloc settings that keep a worker's freed file buffers for reuse.

    A worker reads each file into a new bytes object and frees it after
    staging it. glibc returns such memory to the kernel (the heap's top past
    128 KiB, and any block of 128 KiB or more), so every file faulted in fresh
    pages: about 160 µs of a 100 KB file's 260 µs read, measured on the 2-core VM.
    Settings the caller made win; other C libraries ignore these variables.
    """
    return {**_MALLOC_TUNING, **os.environ}


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    if size > _MAX_FRAME:
        raise EOFError(f"a frame of {size} bytes")
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return pickle.loads(payload)


def _serve(reply_fd: int) -> None:
    """A worker's life: setup, then one reply per chunk until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = sys.stdin.buffer
    replies = os.fdopen(reply_fd, "wb")
    try:
        setup: WorkerSetup = _receive(requests)
    except EOFError:
        return
    store = FileStore(setup.root)
    known = _KnownHashes(setup.database, setup.user_id)
    parent = os.getppid()  # (a killed import's workers are given to another parent: they stop at the next file)
    _send(replies, _READY)
    while True:
        try:
            token, files = _receive(requests)
        except EOFError:
            return
        _send(replies, examine_chunk(token, files, known, store, setup, lambda: os.getppid() != parent))
