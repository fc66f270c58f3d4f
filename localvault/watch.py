"""Live import of a rig's output folder (``localvault watch``), on watchdog.

A file is taken when it is complete: on close-after-write (inotify's
``IN_CLOSE_WRITE``, watchdog's FileClosedEvent), on a move or rename into the
folder, or — the fallback for rigs and platforms without close events — when
its size and mtime have not changed for ``stable_seconds`` (1 s by default,
polled every ``poll_seconds``). Hidden and temporary names are ignored until
they are renamed. On start the watcher first imports what is already there
(catch-up), then imports as files arrive, in small batches through the same
:class:`~localvault.importer.Importer` as ``localvault import`` (so jobs,
duplicates and ``--move`` behave the same). If the folder is deleted, the
watcher waits for it to come back, watches it again and catches up. Errors on
one file are reported (``on_event`` and ``logging``) and the watch goes on.

>>> with Watcher(vault, "~/ComfyUI/output", on_event=print):   # doctest: +SKIP
...     time.sleep(60)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .errors import InvalidInputError
from .importer import Importer, ImportReport, Mode, is_candidate_name, scan
from .vault import Vault

log = logging.getLogger(__name__)

STABLE_SECONDS = 1.0
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class WatchEvent:
    """What the watcher did: ``kind`` is imported, duplicate, refused, error, folder_gone or folder_back."""

    kind: str
    path: str
    at: float
    asset_id: str | None = None
    job_id: str | None = None
    message: str | None = None


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher._offer(os.fsdecode(event.src_path), ready=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher._offer(os.fsdecode(event.dest_path), ready=True)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher._offer(os.fsdecode(event.src_path), ready=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher._offer(os.fsdecode(event.src_path), ready=False)


class Watcher:
    """Watches ``folder`` and imports complete files into ``vault``'s workspace until stopped.

    ``on_event`` (optional) is called from the watcher's thread with a
    :class:`WatchEvent` for each file handled. The watcher writes through its
    own connection to the vault, so the caller's ``vault`` stays usable.
    """

    def __init__(self, vault: Vault, folder: str | os.PathLike[str], *, mode: Mode = "copy", recursive: bool = False,
                 model: str | None = None, prompt: str | None = None,
                 on_event: Callable[[WatchEvent], None] | None = None,
                 stable_seconds: float = STABLE_SECONDS, poll_seconds: float = POLL_SECONDS,
                 workers: int | None = None) -> None:
        self.folder = Path(folder).expanduser().absolute()
        if not self.folder.is_dir():
            raise InvalidInputError(f"{self.folder} is not a folder; give the rig's output folder")
        self._vault_args = (vault.root, vault.user_id, vault.files.fs)
        self._options = dict(mode=mode, model=model, prompt=prompt, workers=workers)
        self.recursive = recursive
        self.on_event = on_event
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds
        #: Everything done so far (all batches, catch-ups included).
        self.report = ImportReport()
        self._queue: queue.Queue[str] = queue.Queue()
        self._unsettled: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        self._done: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) when handled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._error: BaseException | None = None

    # ------------------------------------------------------------- control

    def start(self) -> Watcher:
        """Start watching in a background thread; returns once the catch-up import is done."""
        if self._thread is not None:
            raise RuntimeError("this watcher was already started")
        self._thread = threading.Thread(target=self._run, name="localvault-watch", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> ImportReport:
        """Stop watching (files already taken are finished), and return the report."""
        self._stop.set()
        self.join()
        return self.report

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the watcher to end (after :meth:`stop`); True once it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------- event intake

    def _offer(self, path: str, *, ready: bool) -> None:
        """Called from the observer's thread for each interesting event."""
        if not is_candidate_name(os.path.basename(path)):
            return
        if not self.recursive and os.path.dirname(path) != str(self.folder):
            return
        if ready:
            self._queue.put(path)
        else:
            with self._lock:
                self._unsettled.setdefault(path, (-1, -1, time.monotonic()))

    def _settled(self) -> list[str]:
        """Paths whose size and mtime have not changed for ``stable_seconds`` (the fallback)."""
        now = time.monotonic()
        ready: list[str] = []
        with self._lock:
            for path, (size, mtime, since) in list(self._unsettled.items()):
                try:
                    st = os.stat(path)
                except OSError:
                    del self._unsettled[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._unsettled[path] = (st.st_size, st.st_mtime_ns, now)
                elif now - since >= self.stable_seconds:
                    del self._unsettled[path]
                    ready.append(path)
        return ready

    # ---------------------------------------------------------- the thread

    def _run(self) -> None:
        root, user_id, fs = self._vault_args
        try:
            vault = Vault.open(root, user_id=user_id, fs=fs)
            importer = Importer(vault.db, vault.files, vault.user_id, **self._options)  # type: ignore[arg-type]
        except BaseException as exc:  # handed to start()
            self._error = exc
            self._started.set()
            return
        try:
            self._watch_folder(importer)
            self._started.set()
            while not self._stop.is_set():
                if not self.folder.is_dir():
                    self._wait_for_folder(importer)
                    continue
                paths = self._next_paths()
                if paths:
                    self._import(importer, paths)
            self._import(importer, self._drain())  # what arrived while stopping
        except BaseException as exc:  # never die silently
            log.exception("the watcher of %s stopped on an unexpected error", self.folder)
            self._error = exc
        finally:
            self._started.set()
            self._unschedule()
            importer.close()
            vault.close()

    def _next_paths(self) -> list[str]:
        try:
            first = self._queue.get(timeout=self.poll_seconds)
        except queue.Empty:
            return self._settled()
        return [first, *self._drain(), *self._settled()]

    def _drain(self) -> list[str]:
        paths: list[str] = []
        while True:
            try:
                paths.append(self._queue.get_nowait())
            except queue.Empty:
                return paths

    def _watch_folder(self, importer: Importer) -> None:
        """Schedule a fresh observer on the folder, then catch up with what is already there."""
        observer = Observer()
        observer.schedule(_Handler(self), str(self.folder), recursive=self.recursive)
        observer.start()
        self._observer = observer
        candidates, refused, _ignored = scan(self.folder, self.recursive)
        self._import(importer, [c.path for c in candidates])
        for path, reason in refused.items():
            self._emit(WatchEvent("refused", path, time.time(), message=reason))

    def _unschedule(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5)
            except Exception:  # a vanished folder may upset the emitter
                log.debug("observer stop failed", exc_info=True)

    def _wait_for_folder(self, importer: Importer) -> None:
        log.warning("%s was removed; waiting for it to come back", self.folder)
        self._emit(WatchEvent("folder_gone", str(self.folder), time.time()))
        self._unschedule()
        self._drain()
        with self._lock:
            self._unsettled.clear()
        self._done.clear()
        while not self._stop.is_set() and not self.folder.is_dir():
            self._stop.wait(self.poll_seconds)
        if self._stop.is_set():
            return
        log.info("%s is back; watching it again", self.folder)
        self._emit(WatchEvent("folder_back", str(self.folder), time.time()))
        self._watch_folder(importer)

    def _import(self, importer: Importer, paths: list[str]) -> None:
        fresh: list[str] = []
        for path in dict.fromkeys(paths):
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone already (a temp file renamed away, or moved by us)
            if self._done.get(path) != (st.st_size, st.st_mtime_ns):
                self._done[path] = (st.st_size, st.st_mtime_ns)
                fresh.append(path)
        if not fresh:
            return
        if len(self._done) > 50_000:  # forget files that are gone (moved, deleted) so memory stays flat
            self._done = {p: v for p, v in self._done.items() if p in fresh or os.path.exists(p)}
        try:
            result = importer.import_paths(fresh, self.folder)
        except Exception as exc:  # the watch goes on
            log.error("importing %d file(s) from %s failed: %s", len(fresh), self.folder, exc)
            for path in fresh:
                self._done.pop(path, None)
                self._emit(WatchEvent("error", path, time.time(), message=str(exc)))
            return
        self.report.merge(result)
        now = time.time()
        for item in result.imported:
            self._emit(WatchEvent("imported", item.source, now, asset_id=item.asset_id, job_id=item.job_id))
        for path in result.duplicates:
            self._emit(WatchEvent("duplicate", path, now))
        for path, reason in result.refused.items():
            log.warning("refused %s: %s", path, reason)
            self._emit(WatchEvent("refused", path, now, message=reason))

    def _emit(self, event: WatchEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a faulty callback must not stop the watch
            log.exception("the watcher's on_event callback failed")


__all__ = ["Watcher", "WatchEvent", "STABLE_SECONDS", "POLL_SECONDS"]
