"""Live import of a rig's output folder (``localvault watch``), on watchdog.

A file is taken when it is complete: on close-after-write (inotify's ``IN_CLOSE_WRITE``, watchdog's
FileClosedEvent) or a move or rename into the folder, once no other event has touched it for ``quiet_seconds`` (0.2
s by default: rigs and scripts often touch a file right after closing it — a copy setting its times, an EXIF block
inserted, a rename to its final name), or — the fallback for rigs and platforms without close events — when its
size and mtime have not changed for ``stable_seconds`` (1 s by default, polled every ``poll_seconds``; where close
events come, a file written to and not closed yet waits ``OPEN_SECONDS`` instead). Whichever signal comes, a file
must also be whole by its bytes (a PNG's IEND, a JPEG's end marker, a WebP's or MP4's declared sizes) — a file
written in two opens, or whose writer pauses, waits — unless it has not changed for ``GIVE_UP_SECONDS``: then it is
taken, and refused with the reason. In a folder where sidecar files were seen, a file with no metadata of its own
waits up to ``SIDECAR_WAIT_SECONDS`` for its sidecar (:mod:`localvault._watch_sidecars`). Hidden and temporary
names, and files in hidden or temporary sub-folders, are ignored until renamed. On start the watcher first imports
what is already there (catch-up; files not whole yet wait like new ones), then imports as files arrive, in small
batches through the same :class:`~localvault.importer.Importer` as ``localvault import`` (so jobs, duplicates and
``--move`` behave the same). A folder deleted, renamed away or replaced is waited for, watched again and caught up
with, as after an overflow of the kernel's event queue (a burst of thousands of files). Errors on one file are
reported (``on_event``, ``logging``) and the watch goes on; a batch that could not be committed (database busy,
disk error) is tried again after ``RETRY_SECONDS``. Sub-folders inotify could not watch (its watch limit reached, a
folder not readable) are listed now and then instead (:mod:`localvault._watch_coverage`).

>>> with Watcher(vault, "~/ComfyUI/output", on_event=print):   # doctest: +SKIP
...     time.sleep(60)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import _watch_coverage, models
from ._import_pipeline import to_the_end
from ._intake import check_folder
from ._late_sidecars import LateFills
from ._watch_coverage import UnwatchedFolders
from ._watch_intake import Intake, written_lately
from ._watch_observer import FolderObserver
from ._watch_sidecars import SIDECAR_WAIT_SECONDS
from ._watch_state import HandledFiles, WatchEvent, WatchReport
from .errors import InvalidInputError, LocalVaultError, StorageError, VaultCorruptError
from .import_report import ImportReport
from .importer import Importer, Mode, checked_options, scan
from .vault import Vault
from .workspace import LIFETIME

log = logging.getLogger(__name__)
#: Warnings that no event carries (the CLI shows them; the per-file ones it shows as events).
notices = logging.getLogger(f"{__name__}.notices")

STABLE_SECONDS = 1.0
#: A complete file (closed, or renamed in) is taken once no event has touched it for this long.
QUIET_SECONDS = 0.2
POLL_SECONDS = 0.25
#: A file unchanged this long but still not whole is taken anyway (and refused, with the reason).
GIVE_UP_SECONDS = 10.0
#: A file written to and not closed since (where the observer hears closes: inotify) is taken only once unchanged
#: this long, whole or not: its writer may be pausing (an encoder between an MP4's fragments, each of which
#: leaves the file whole by its bytes).
OPEN_SECONDS = 60.0
#: A file whose batch could not be committed is tried again after this long.
RETRY_SECONDS = 5.0
#: How often the watcher asks whether the vault's cleanup is due (hourly, or unfinished: 2,000 assets a run).
HOUSEKEEPING_SECONDS = 60.0
#: Files of a catch-up imported together (the watcher checks for a stop between them).
CATCH_UP_BATCH = 500


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
                 workers: int | None = None, sidecar_wait_seconds: float = SIDECAR_WAIT_SECONDS,
                 quiet_seconds: float = QUIET_SECONDS) -> None:
        vault.db.refuse_if_readonly("watch a folder")  # (the watcher writes through a connection of its own)
        # "../out" as /x/out: paths under it are checked
        self.folder = Path(os.path.abspath(check_folder(folder, "the folder to watch", (vault.root, vault.files))))
        self._vault_args = (vault.root, vault.user_id, vault.files.fs)
        # Checked here, not first in the watcher's thread: a bad option is the caller's InvalidInputError.
        self._options = checked_options(mode=mode, model=model, prompt=prompt, workers=workers)
        self.recursive = models.check_flag(recursive, "recursive")
        self.on_event = models.check_callback(on_event, "on_event")
        self.poll_seconds = models.check_seconds(poll_seconds, "poll_seconds", above_zero=True)
        stable_seconds = models.check_seconds(stable_seconds, "stable_seconds")
        quiet_seconds = models.check_seconds(quiet_seconds, "quiet_seconds")
        sidecar_wait_seconds = models.check_seconds(sidecar_wait_seconds, "sidecar_wait_seconds")
        #: Everything done so far (all batches, catch-ups included): counts of all, the most recent files listed.
        self.report = WatchReport()
        # The folder as watched, its real path, is the intake's (FolderObserver.start resolves it anew).
        self._intake = Intake(Path(os.path.realpath(self.folder)), recursive, stable_seconds=stable_seconds,
                              quiet_seconds=quiet_seconds, give_up_seconds=GIVE_UP_SECONDS, open_seconds=OPEN_SECONDS,
                              sidecar_wait_seconds=sidecar_wait_seconds, vault_root=os.path.realpath(vault.root))
        self._handled = HandledFiles()
        self._unwatched = UnwatchedFolders()  # (recursive) sub-folders inotify does not watch, listed instead
        # asset id -> the values a sidecar filled in (None: its import read the sidecar; what the row holds)
        self._late_fills = LateFills()
        self._stop = threading.Event()
        self._started = threading.Event()
        # Set as the thread's very last step. Waited on instead of Thread.join(): a Ctrl-C inside join() on
        # Python 3.11 marks the thread stopped while it still runs, and a second stop() would not wait for it.
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._observer = FolderObserver(self.folder, self._intake, self.recursive)
        self._error: BaseException | None = None

    # ------------------------------------------------------------- control

    def start(self) -> Watcher:
        """Start watching in a background thread; returns once the catch-up import is done."""
        with self._start_lock:  # two threads starting one watcher: one of them is told
            if self._thread is not None:
                raise InvalidInputError("this watcher was started already; make a new Watcher to watch again")
            if self._stop.is_set():  # (before, it started, saw the stop and ended a moment later, silently)
                raise InvalidInputError("this watcher was stopped before it started; make a new Watcher to watch")
            self._thread = threading.Thread(target=self._run, name="localvault-watch", daemon=True)
            thread = self._thread
        try:
            thread.start()
            self._started.wait()
            if self._error is not None:
                raise _as_vault_error(self._error, self.folder)
        except BaseException:  # a Ctrl-C during the catch-up: stop as stop() does (files under way finished or removed)
            self._stop.set()
            if thread.ident is not None:  # (a thread that never ran sees the stop at its first check)
                to_the_end(self._ended.wait)
            raise
        return self

    def stop(self) -> WatchReport:
        """Stop watching (files already taken are finished), and return the report.

        If the watcher had stopped on its own, on an error, raises it (a
        LocalVaultError as it was, any other as StorageError; ``report``
        still holds what it did). From ``on_event`` it only asks the watcher
        to stop. Before :meth:`start`, it stops the watcher for good: a later
        ``start()`` (another thread's, racing this stop) refuses to run it.
        """
        with self._start_lock:  # a start() under way has either seen this stop or made its thread
            self._stop.set()
        if threading.current_thread() is self._thread:
            return self.report
        self.join()
        if self._error is not None and self._started.is_set():
            raise _as_vault_error(self._error, self.folder)
        return self.report

    @property
    def error(self) -> BaseException | None:
        """What stopped the watcher, if it stopped on an error."""
        return self._error

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the watcher to end (after :meth:`stop`); True once it has."""
        if self._thread is not None:
            return self._ended.wait(timeout)
        return True

    @property
    def stable_seconds(self) -> float:
        """How long a file without a close event must stay unchanged (and whole) to be taken."""
        return self._intake.unsettled.stable_seconds

    @stable_seconds.setter
    def stable_seconds(self, seconds: float) -> None:
        self._intake.unsettled.stable_seconds = models.check_seconds(seconds, "stable_seconds")

    @property
    def running(self) -> bool:
        """Whether the watcher is started and has not ended (stopped, or on an error)."""
        return self._thread is not None and not self._ended.is_set()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------- the thread

    def _run(self) -> None:
        root, user_id, fs = self._vault_args
        vault: Vault | None = None
        try:
            vault = Vault.open(root, user_id=user_id, fs=fs)
            importer = Importer(vault.db, vault.files, vault.user_id, **self._options)
        except BaseException as exc:  # handed to start()
            if vault is not None:
                vault.close()
            self._error = exc
            self._started.set()
            self._ended.set()
            return
        try:
            try:
                self._watch_folder(importer)
            except OSError as exc:  # removed before start: handed to start()
                self._error = InvalidInputError(f"cannot watch {self.folder}: {exc.strerror or exc}")
                return
            self._started.set()
            tidied = time.monotonic()
            while not self._stop.is_set():
                if time.monotonic() - tidied >= HOUSEKEEPING_SECONDS:
                    self._housekeeping(vault)
                    tidied = time.monotonic()
                if self._observer.lost():
                    self._wait_for_folder(importer)
                    continue
                if self._intake.overflowed.is_set():
                    self._intake.overflowed.clear()
                    notices.warning("events about files in %s were lost (the kernel's queue overflowed); catching up",
                                self.folder)
                    self._catch_up(importer, at_start=False)  # old files moved in meanwhile are new to it
                    if self.recursive:
                        self._unwatched.check_soon()  # (a new folder's event may be among those lost)
                    continue
                self._look_at_new_folders()
                paths = self._intake.next_paths(self.poll_seconds)
                if paths:
                    self._import(importer, paths)
                self._read_late_sidecars(vault, importer)
            self._import(importer, self._intake.take_all())  # what arrived while stopping, complete files included
        except BaseException as exc:  # never die silently
            log.exception("the watcher of %s stopped on an unexpected error", self.folder)
            self._error = exc
        finally:
            try:
                self._started.set()
                self._observer.stop()
                importer.close()
                vault.close()
            finally:
                self._ended.set()

    def _read_late_sidecars(self, vault: Vault, importer: Importer) -> None:
        """Sidecars that came after their file was taken with placeholders: read into its row."""
        late = self._intake.sidecars.late_sidecars()
        for path, asset_id in self._late_fills.read(vault, late, importer.prompt, importer.model):
            self._emit(WatchEvent("sidecar_read", path, time.time(), asset_id=asset_id))

    def _housekeeping(self, vault: Vault) -> None:
        """The vault's hourly cleanup of expired assets, and its queued deletions: a rig that only ever runs
        the watcher opens its vault once, so they would otherwise never happen. Only when a cleanup is due
        (a backlog of expired assets then goes 2,000 a minute; a queued deletion that cannot be done is
        retried, and warned about, hourly, not every minute)."""
        try:
            if vault.cleanup_due():
                vault.housekeeping()
        except VaultCorruptError:  # (every import would fail too: the watcher stops, saying why)
            raise
        except LocalVaultError as exc:  # the watch goes on; tried again next time
            notices.warning("the workspace's cleanup did not run: %s", exc)

    def _watch_folder(self, importer: Importer) -> None:
        """Schedule a fresh observer on the folder, then catch up with what is already there."""
        self._observer.start()
        self._unwatched.clear()
        if self.recursive:  # (listed before the catch-up's scan: what comes meanwhile is new to the listing)
            self._check_watches(caught_up=True)
        self._catch_up(importer)

    def _look_at_new_folders(self) -> None:
        """Sub-folders that appeared (not recursive: said to be not looked in), and those without a watch: checked
        for, and listed now and then (:mod:`localvault._watch_coverage`)."""
        for folder in self._intake.new_folders():
            if self.recursive:
                self._unwatched.check_soon()
            elif self.report.not_entered(folder):
                log.warning("%s is a new sub-folder, not watched (watch with recursive=True to take its files)", folder)
                self._emit(WatchEvent("folder_not_entered", folder, time.time()))
        if self._unwatched.check_due():
            self._check_watches(caught_up=False)
        for path in self._unwatched.changed_files():
            self._intake.offer(path, ready=False)  # (as a write: taken once unchanged and whole)

    def _check_watches(self, *, caught_up: bool) -> None:
        if new := self._unwatched.check(str(self._intake.watched), caught_up=caught_up):
            notices.warning("%d sub-folder%s of %s could not be watched (%s first): the inotify watch limit "
                            "reached (fs.inotify.max_user_watches), or a folder not readable; its files are looked "
                            "for every %.0f s instead", len(new), "" if len(new) == 1 else "s", self.folder, new[0],
                            _watch_coverage.LIST_SECONDS)

    def _catch_up(self, importer: Importer, at_start: bool = True) -> None:
        """Import what is in the folder (what is not whole yet is waited for, as new files are); ``at_start``
        (the watch's, or the folder's come back), only what was written within the workspace's lifetime."""
        candidates, refused, _ignored, not_entered = scan(self._intake.watched, self.recursive)
        for folder in not_entered:
            self.report.not_entered(folder)
        self.report.merge(ImportReport(refused=dict(refused)))  # (a link leading outside, a folder not listable)
        for path, reason in refused.items():
            log.warning("refused %s: %s", path, reason)
            self._emit(WatchEvent("refused", path, time.time(), message=reason))
        for candidate in candidates:  # (one listing per folder: the same names for each of its files)
            self._intake.sidecars.saw_folder(os.path.dirname(candidate.path), candidate.sidecars or ())
        if at_start:  # one older would have expired: taken, it would come back at every restart
            candidates, old = written_lately(candidates, LIFETIME.total_seconds())
            if old:
                self.report.too_old += old
                notices.warning("%d file%s in %s written more than %d days ago not taken (they would have expired "
                                "already); take them with 'localvault import'", old, "" if old == 1 else "s",
                                self.folder, LIFETIME.days)
        whole = self._intake.whole_of(candidates)  # (the others are waited for like new files)
        for start in range(0, len(whole), CATCH_UP_BATCH):
            if self._stop.is_set():  # what is left is taken by the next watch
                return
            self._import(importer, whole[start:start + CATCH_UP_BATCH])

    def _wait_for_folder(self, importer: Importer) -> None:
        log.warning("%s was removed; waiting for it to come back", self.folder)
        self._emit(WatchEvent("folder_gone", str(self.folder), time.time()))
        self._observer.stop()
        self._intake.clear()  # the catch-up on the folder's return finds its files
        self._handled.clear()
        while not self._stop.is_set():
            if self.folder.is_dir():
                try:
                    log.info("%s is back; watching it again", self.folder)
                    self._emit(WatchEvent("folder_back", str(self.folder), time.time()))
                    self._watch_folder(importer)
                    return
                except OSError:  # gone again while it was being watched: wait on
                    notices.warning("%s went away again; waiting for it to come back", self.folder)
                    self._observer.stop()
            self._stop.wait(self.poll_seconds)

    def _import(self, importer: Importer, paths: list[str]) -> None:
        fresh = self._handled.take_new(paths)
        if not fresh:
            return
        try:
            result = importer.import_paths(fresh, self._intake.watched)
        except Exception as exc:  # the watch goes on
            log.error("importing %d file(s) from %s failed: %s; trying again in %.0f s", len(fresh), self.folder, exc,
                      RETRY_SECONDS)
            self._handled.forget(fresh)
            for path in fresh:
                self._emit(WatchEvent("error", path, time.time(), message=str(exc)))
            self._intake.wait_for(fresh, RETRY_SECONDS)
            return
        gone = [path for path in result.refused if not os.path.exists(path)]
        for path in gone:  # deleted or renamed away before it could be read: nothing to refuse
            del result.refused[path]
        retry = [path for path in result.retryable if path not in gone]
        self._handled.forget([*gone, *retry])
        self._handled.mark_refused(path for path in result.refused if path not in retry)
        self._intake.wait_for(retry, RETRY_SECONDS)
        self.report.merge(result)
        now = time.time()
        for item in result.imported:
            # Its sidecar may still come, or, read already, still be written: read again now (it may have been
            # closed while the file was imported) and at its close.
            if item.metadata_source in ("none", "sidecar"):
                self._intake.sidecars.taken_without_metadata(item.source, item.asset_id)
            if item.metadata_source == "sidecar":
                self._late_fills.remember(item.asset_id, None)
            self._emit(WatchEvent("imported", item.source, now, asset_id=item.asset_id, job_id=item.job_id))
        for path in result.duplicates:
            self._emit(WatchEvent("duplicate", path, now))
        for path, asset_id in result.filled.items():  # its sidecar came while no watch ran
            self._emit(WatchEvent("sidecar_read", path, now, asset_id=asset_id))
        for path, reason in result.refused.items():
            if path in retry:  # the vault could not take it now (disk full, database locked): not a refusal yet
                log.warning("could not import %s now: %s; trying again in %.0f s", path, reason, RETRY_SECONDS)
                self._emit(WatchEvent("error", path, now, message=f"{reason}; trying again in {RETRY_SECONDS:.0f} s"))
                continue
            log.warning("refused %s: %s", path, reason)
            self._emit(WatchEvent("refused", path, now, message=reason))

    def _emit(self, event: WatchEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a faulty callback must not stop the watch
            log.exception("the watcher's on_event callback failed")


def _as_vault_error(exc: BaseException, folder: Path) -> LocalVaultError:
    if isinstance(exc, LocalVaultError):
        return exc
    return StorageError(f"the watcher of {folder} stopped on an error: {type(exc).__name__}: {exc}")


__all__ = ["Watcher", "WatchEvent", "WatchReport", "STABLE_SECONDS", "QUIET_SECONDS", "POLL_SECONDS", "GIVE_UP_SECONDS", "RETRY_SECONDS",
           "SIDECAR_WAIT_SECONDS"]
