"""The live importer: `localvault.watch.Watcher` on a real folder with real files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import random
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import mp4_bytes, temp_files, without_dac_override

from localvault import InvalidInputError, Vault
from localvault import watch as watch_module
from localvault.timestamps import utc_now
from localvault.watch import Watcher, WatchEvent

try:
    from mediafiles import make_png
except ImportError:  # pragma: no cover - the shared helpers are written by another engineer
    from PIL import Image

    def make_png(path, size=(64, 64), text_chunks=None, color=0, **_):  # type: ignore[no-redef]
        Image.new("RGB", size, (color * 7 % 256, color * 13 % 256, color * 29 % 256)).save(path, "PNG")
        return Path(path)

USER = "0d0d0d0d-0000-4000-8000-00000000000d"
TIMEOUT = 10.0


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def png_bytes(tmp_path: Path, color: int) -> bytes:
    return make_png(tmp_path / f"template-{color}.png", color=color).read_bytes()


class Recorder:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self.lock:
            self.events.append(event)

    def names(self, kind: str) -> list[str]:
        with self.lock:
            return [Path(e.path).name for e in self.events if e.kind == kind]


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault.create(tmp_path / "vault", user_id=USER)
    yield v
    v.close()


def test_catch_up_then_close_after_write_and_rename(vault: Vault, out: Path, tmp_path: Path) -> None:
    make_png(out / "before.png", color=1)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen) as watcher:
        assert seen.names("imported") == ["before.png"]  # start() returns after the catch-up
        with open(out / "direct.png", "wb") as handle:  # close-after-write
            handle.write(png_bytes(tmp_path, 2))
        (out / "renamed.png.part").write_bytes(png_bytes(tmp_path, 3))
        time.sleep(0.3)
        assert "renamed.png.part" not in seen.names("imported") and "renamed.png" not in seen.names("imported")
        os.rename(out / "renamed.png.part", out / "renamed.png")  # rename into place
        assert wait_for(lambda: {"direct.png", "renamed.png"} <= set(seen.names("imported")))
    assert watcher.join(0) and not watcher.running
    assert len(watcher.report.imported) == 3 and vault.workspace.count() == 3
    assert not seen.names("refused") and not seen.names("error")


def test_move_into_folder_and_temp_files_ignored(vault: Vault, out: Path, tmp_path: Path) -> None:
    seen = Recorder()
    outside = make_png(tmp_path / "elsewhere.png", color=4)
    with Watcher(vault, out, on_event=seen, mode="move"):
        (out / ".hidden.png").write_bytes(png_bytes(tmp_path, 5))
        (out / "draft.png.tmp").write_bytes(png_bytes(tmp_path, 6))
        shutil.move(str(outside), out / "moved.png")
        assert wait_for(lambda: "moved.png" in seen.names("imported"))
        assert wait_for(lambda: not (out / "moved.png").exists())  # --move: source gone after the commit
        time.sleep(0.3)
    assert seen.names("imported") == ["moved.png"]
    assert (out / ".hidden.png").exists() and (out / "draft.png.tmp").exists()


def test_bad_file_is_reported_and_the_watch_goes_on(vault: Vault, out: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    seen = Recorder()
    with caplog.at_level(logging.WARNING, logger="localvault.watch"), Watcher(vault, out, on_event=seen):
        (out / "broken.png").write_bytes(b"definitely not a png")
        assert wait_for(lambda: "broken.png" in seen.names("refused"))
        (out / "good.png").write_bytes(png_bytes(tmp_path, 7))
        assert wait_for(lambda: "good.png" in seen.names("imported"))
    assert any("broken.png" in record.getMessage() for record in caplog.records)


def test_a_named_pipe_with_an_image_name_is_ignored_and_blocks_nothing(vault: Vault, out: Path,
                                                                       tmp_path: Path) -> None:
    """Before: opening the pipe to see whether it was finished waited for a writer, on the observer's thread,
    so no later file was ever taken."""
    seen = Recorder()
    pipe = out / "stuck.png"
    watcher = Watcher(vault, out, on_event=seen).start()
    try:
        os.mkfifo(pipe)
        os.symlink(pipe, out / "through-a-link.png")
        time.sleep(0.3)
        (out / "after.png").write_bytes(png_bytes(tmp_path, 8))
        assert wait_for(lambda: "after.png" in seen.names("imported"))
        time.sleep(0.3)
        assert seen.names("imported") == ["after.png"] and not seen.names("refused")
        assert wait_for(lambda: not {str(pipe), str(out / "through-a-link.png")} & set(watcher._intake.unsettled))
    finally:
        try:  # with the bug, a writer must come for the blocked open to return and the watch to stop
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        watcher.stop()


def test_ctrl_c_during_the_catch_up_stops_the_watcher_before_it_reaches_the_caller(vault: Vault, out: Path,
                                                                                   tmp_path: Path) -> None:
    """Before: the KeyboardInterrupt left start() (and ``with Watcher(...)``) while the watch thread went on,
    to be frozen mid-batch when Python exited: temporary files left in the vault."""
    for color in range(700):  # more than one commit's worth: the catch-up is still under way at the first event
        (out / f"{color:04d}.png").write_bytes(png_bytes(tmp_path, color))
    main = threading.main_thread().ident
    assert main is not None
    interrupted: list[WatchEvent] = []

    def ctrl_c_at_the_first_commit(event: WatchEvent) -> None:
        if not interrupted:
            interrupted.append(event)
            signal.pthread_kill(main, signal.SIGINT)

    watcher = Watcher(vault, out, on_event=ctrl_c_at_the_first_commit)
    with pytest.raises(KeyboardInterrupt):
        watcher.start()
    assert interrupted and not watcher.running  # stopped before the Ctrl-C went on
    assert not temp_files(vault.root) and vault.verify().clean
    assert vault.workspace.count() >= 500  # the batch under way was finished, not cut short


A1111_TEXT = "a red fox in snow\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 4242, Size: 64x64, Model: sdxl"


def write_by_rename(out: Path, name: str, data: bytes) -> None:
    (out / f"{name}.tmp").write_bytes(data)
    os.rename(out / f"{name}.tmp", out / name)


def test_a_file_written_before_its_sidecar_waits_for_it(vault: Vault, out: Path, tmp_path: Path) -> None:
    """A1111's "save text file": the image (no metadata of its own), then NAME.txt. Before: the image was taken
    at once with placeholders, and importing it again later found only a duplicate: the prompt was lost."""
    make_png(out / "00000-1.png", color=1)  # a folder where this rig has written sidecars before
    (out / "00000-1.txt").write_text(A1111_TEXT)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, sidecar_wait_seconds=60) as watcher:
        assert seen.names("imported") == ["00000-1.png"]
        write_by_rename(out, "00001-2.png", png_bytes(tmp_path, 2))
        time.sleep(0.5)
        assert seen.names("imported") == ["00000-1.png"]  # held for its sidecar
        (out / "00001-2.txt").write_text(A1111_TEXT.replace("4242", "4243"))
        assert wait_for(lambda: "00001-2.png" in seen.names("imported"))  # at once: not after 60 s
        # A file with metadata of its own is not held; nor is one whose sidecar came first.
        make_png(tmp_path / "embedded.png", text_chunks={"parameters": A1111_TEXT.replace("4242", "7")}, color=3)
        write_by_rename(out, "00002-3.png", (tmp_path / "embedded.png").read_bytes())
        (out / "00003-4.json").write_text(json.dumps({"prompt": "a json fox", "seed": 8}))
        write_by_rename(out, "00003-4.png", png_bytes(tmp_path, 4))
        assert wait_for(lambda: {"00002-3.png", "00003-4.png"} <= set(seen.names("imported")))
        write_by_rename(out, "00004-5.png", png_bytes(tmp_path, 5))  # its sidecar never comes
        time.sleep(0.5)
    assert seen.names("imported")[-1] == "00004-5.png"  # stopping takes what is held, without waiting
    found = {Path(a.generation_settings.get("sidecar", "-")).stem: (a.original_prompt, a.generation_seed)
             for a in vault.workspace.list(limit=10).items}
    assert found["00001-2"] == ("a red fox in snow", 4243) and found["00003-4"] == ("a json fox", 8)
    assert len(watcher.report.imported) == 5


def test_a_sidecar_is_waited_for_until_it_is_written_not_just_created(vault: Vault, out: Path,
                                                                       tmp_path: Path) -> None:
    """Before: the sidecar's create event released the held file, whose import then read an empty sidecar."""
    make_png(out / "00000-1.png", color=1)
    (out / "00000-1.txt").write_text(A1111_TEXT)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, sidecar_wait_seconds=60):
        write_by_rename(out, "00001-2.png", png_bytes(tmp_path, 2))
        with open(out / "00001-2.txt", "w") as sidecar_file:  # created now, its text comes a moment later
            time.sleep(0.5)
            sidecar_file.write(A1111_TEXT.replace("4242", "4243"))
        assert wait_for(lambda: "00001-2.png" in seen.names("imported"))
    asset = vault.workspace.find_sha256(hashlib.sha256(png_bytes(tmp_path, 2)).hexdigest())
    assert asset is not None and (asset.original_prompt, asset.generation_seed) == ("a red fox in snow", 4243)


def test_an_error_handling_one_event_does_not_end_the_watch(vault: Vault, out: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Before: an exception in the observer's thread (a JPEG shortened while its header was walked) ended it,
    and the watcher, still "running", heard no later file. The fault is injected: the race is too narrow."""
    from localvault import media

    real = media.looks_finished

    def fails_once_for_bad(path: str | os.PathLike[str]) -> bool:
        if os.path.basename(path) == "bad.png":
            raise IndexError("index out of range")
        return real(path)

    monkeypatch.setattr(media, "looks_finished", fails_once_for_bad)
    seen = Recorder()
    with caplog.at_level(logging.ERROR, logger="localvault.watch"), Watcher(vault, out, on_event=seen):
        write_by_rename(out, "bad.png", png_bytes(tmp_path, 3))
        time.sleep(0.3)
        write_by_rename(out, "after.png", png_bytes(tmp_path, 4))
        assert wait_for(lambda: "after.png" in seen.names("imported"))
    assert any("could not handle the event" in record.getMessage() for record in caplog.records)


def test_a_held_file_is_taken_without_its_sidecar_once_the_wait_is_over(vault: Vault, out: Path,
                                                                          tmp_path: Path) -> None:
    make_png(out / "old.png", color=7)
    (out / "old.txt").write_text(A1111_TEXT)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, sidecar_wait_seconds=0.5):
        began = time.monotonic()
        write_by_rename(out, "plain.png", png_bytes(tmp_path, 6))
        assert wait_for(lambda: "plain.png" in seen.names("imported"))
        assert time.monotonic() - began >= 0.5
    asset = vault.workspace.find_sha256(hashlib.sha256(png_bytes(tmp_path, 6)).hexdigest())
    assert asset is not None and (asset.original_prompt, asset.generation_seed, asset.model_used) == ("", 0, "unknown")


def test_stable_size_fallback(vault: Vault, out: Path, tmp_path: Path) -> None:
    """A file that gives no close event is taken once its size is stable and it is whole.

    Here it is written through a hard link from another folder: the watched
    folder sees it appear, half written, and never hears of the rest.
    """
    seen = Recorder()
    data = png_bytes(tmp_path, 8)
    outside = tmp_path / "linked-source.png"
    outside.write_bytes(data[: len(data) // 2])
    with Watcher(vault, out, on_event=seen, stable_seconds=0.3, poll_seconds=0.05):
        os.link(outside, out / "linked.png")
        time.sleep(0.8)  # stable, but not whole: waited for
        assert seen.names("imported") == [] and seen.names("refused") == []
        with open(outside, "ab") as rest:
            rest.write(data[len(data) // 2:])
        assert wait_for(lambda: "linked.png" in seen.names("imported"))
    assert seen.names("refused") == []


def test_stable_size_fallback_waits_the_stable_interval(vault: Vault, out: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose writer keeps it open is taken once whole and stable that long, not before; where close events
    come (inotify), it waits OPEN_SECONDS instead (its writer may be pausing)."""
    monkeypatch.setattr(watch_module, "OPEN_SECONDS", 3.0)
    seen = Recorder()
    data = png_bytes(tmp_path, 9)
    with Watcher(vault, out, on_event=seen, stable_seconds=1.5, poll_seconds=0.05) as watcher:
        hears_closes = watcher._intake.hears_closes
        with open(out / "held-open.png", "wb") as writer:
            writer.write(data[: len(data) // 2])  # not whole when it appears (a whole new file is taken at once)
            writer.flush()
            time.sleep(0.5)
            writer.write(data[len(data) // 2:])
            writer.flush()
            written = time.monotonic()
            assert wait_for(lambda: "held-open.png" in seen.names("imported"))
            assert time.monotonic() - written >= (2.8 if hears_closes else 1.3)
    assert seen.names("refused") == []
    assert hears_closes == sys.platform.startswith("linux")


def test_a_fragmented_mp4_is_taken_once_its_encoder_closes_it(tmp_path: Path, out: Path) -> None:
    """An encoder writing a fragmented MP4 (ftyp, moov, then moof+mdat fragments) pauses between fragments, and
    the file is whole by its bytes after each: it is taken when closed, whole, once; with --move too."""
    vault = Vault.create(tmp_path / "vault", user_id=USER)
    base = mp4_bytes(3, duration_seconds=4.0)
    boxes, offset = {}, 0
    while offset < len(base):
        length, kind = struct.unpack(">I4s", base[offset:offset + 8])
        boxes[kind] = base[offset:offset + length]
        offset += length

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    seen = Recorder()
    rnd = random.Random(1)
    try:
        with Watcher(vault, out, mode="move", on_event=seen, stable_seconds=0.3, poll_seconds=0.05):
            whole = boxes[b"ftyp"] + boxes[b"moov"]
            with open(out / "AnimateDiff_00001.mp4", "wb") as encoder:
                encoder.write(whole)
                for n in range(3):
                    fragment = box(b"moof", box(b"mfhd", struct.pack(">II", 0, n + 1))) + box(b"mdat", rnd.randbytes(2000))
                    encoder.write(fragment)
                    encoder.flush()
                    whole += fragment
                    time.sleep(0.8)  # longer than stable_seconds: whole by its bytes, unchanged, still open
                    assert seen.names("imported") == [] and (out / "AnimateDiff_00001.mp4").exists()
            assert wait_for(lambda: seen.names("imported") == ["AnimateDiff_00001.mp4"])
        (asset,) = vault.workspace.list().items
        assert asset.file_size_bytes == len(whole) and asset.sha256 == hashlib.sha256(whole).hexdigest()
        assert not (out / "AnimateDiff_00001.mp4").exists()
    finally:
        vault.close()


def test_folder_deleted_and_recreated(vault: Vault, out: Path, tmp_path: Path) -> None:
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, poll_seconds=0.05) as watcher:
        (out / "one.png").write_bytes(png_bytes(tmp_path, 9))
        assert wait_for(lambda: "one.png" in seen.names("imported"))
        shutil.rmtree(out)
        assert wait_for(lambda: "folder_gone" in [e.kind for e in seen.events])
        out.mkdir()
        (out / "early.png").write_bytes(png_bytes(tmp_path, 10))  # may arrive before the observer is back
        assert wait_for(lambda: "folder_back" in [e.kind for e in seen.events])
        (out / "two.png").write_bytes(png_bytes(tmp_path, 11))
        assert wait_for(lambda: {"early.png", "two.png"} <= set(seen.names("imported")))
        assert watcher.running
    assert vault.workspace.count() == 3


def test_a_long_watch_cleans_up_expired_assets(vault: Vault, out: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A rig that only ever runs the watcher opens its vault once: expired assets stayed for good."""
    from localvault import watch

    monkeypatch.setattr(watch, "HOUSEKEEPING_SECONDS", 0.2)
    source = tmp_path / "old.png"
    source.write_bytes(png_bytes(tmp_path, 30))
    old = vault.workspace.add(source)
    path = Path(vault.workspace.file_path(old))
    with Watcher(vault, out, poll_seconds=0.05):
        time.sleep(0.5)  # opened, its own open's cleanup done: then the asset expires and an hour passes
        vault.workspace.expire(old.id)
        with vault.db.write() as conn:
            vault.db.set_meta(conn, "last_cleanup", "2000-01-01T00:00:00.000Z")
        assert wait_for(lambda: vault.workspace.count() == 0 and not path.exists())


def test_a_watch_whose_hourly_cleanup_meets_a_damaged_database_stops_saying_so(vault: Vault, out: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Damage met by the hourly cleanup was warned about, hourly, while every import failed (a review). (The
    damage is made by a stand-in: pages scribbled behind a running connection stay in its cache.)"""
    from localvault import watch
    from localvault.errors import VaultCorruptError

    monkeypatch.setattr(watch, "HOUSEKEEPING_SECONDS", 0.1)
    watcher = Watcher(vault, out, poll_seconds=0.05).start()
    monkeypatch.setattr(Vault, "cleanup_due", lambda self: True)

    def damaged(self: Vault, *, auto_cleanup: bool = True) -> None:
        raise VaultCorruptError(f"{self.db.path} is not a readable localvault database (database disk image is "
                                "malformed); restore it from a backup")

    monkeypatch.setattr(Vault, "housekeeping", damaged)
    assert wait_for(lambda: not watcher.running)
    with pytest.raises(VaultCorruptError, match="restore it from a backup"):
        watcher.stop()


def test_a_long_watch_tries_a_stuck_deletion_only_when_a_cleanup_is_due(vault: Vault, out: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A queued deletion that cannot be done was tried, and warned about, at every housekeeping tick."""
    from localvault import watch

    monkeypatch.setattr(watch, "HOUSEKEEPING_SECONDS", 0.1)
    stuck = vault.root / "workspace-temp" / vault.user_id / "not-a-file"
    (stuck / "inside").mkdir(parents=True)  # a folder where a file was: unlink fails
    with vault.db.write() as conn:
        conn.execute("INSERT INTO pending_deletes (bucket, path) VALUES ('workspace-temp', ?)",
                     (f"{vault.user_id}/not-a-file",))
        vault.db.set_meta(conn, "last_cleanup", utc_now())
    with caplog.at_level(logging.WARNING, logger="localvault"), Watcher(vault, out, poll_seconds=0.05):
        time.sleep(1.0)
    warnings = [r for r in caplog.records if "could not be removed" in r.getMessage()]
    assert len(warnings) == 1  # the watcher's own open, then not again within the hour


def test_a_long_watch_keeps_its_memory_flat(vault: Vault, out: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The report counts every file but lists only the most recent; handled files are forgotten after a while."""
    from localvault import _watch_state

    monkeypatch.setattr(_watch_state, "REPORT_KEEPS", 3)
    monkeypatch.setattr(_watch_state, "REMEMBER_SECONDS", 2.0)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, poll_seconds=0.05, stable_seconds=0.2) as watcher:
        for n in range(8):
            (out / f"f{n}.png").write_bytes(png_bytes(tmp_path, 100 + n))
            (out / f"copy{n}.png").write_bytes(png_bytes(tmp_path, 100 + n))  # a duplicate of it
            time.sleep(0.1)
        assert wait_for(lambda: len(seen.names("imported")) + len(seen.names("duplicate")) == 16)
        time.sleep(2.3)
        (out / "last.png").write_bytes(png_bytes(tmp_path, 120))
        assert wait_for(lambda: "last.png" in seen.names("imported"))
        remembered = len(watcher._handled)
    report = watcher.report
    assert report.summary() == "9 imported, 8 skipped as duplicates, 0 refused"
    assert len(report.imported) == 3 and Path(report.imported[-1].source).name == "last.png"
    assert len(report.duplicates) == 3
    assert remembered <= 3  # the files of the last two seconds, not all 17


def test_stop_is_clean_and_idempotent(vault: Vault, out: Path) -> None:
    watcher = Watcher(vault, out).start()
    assert watcher.running
    report = watcher.stop()
    assert not watcher.running and report.summary().startswith("0 imported")
    watcher.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("localvault-")]
    assert vault.workspace.count() == 0  # the caller's vault stays usable


@contextmanager
def cli_watch(root: Path, out: Path, *options: str, prefix: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[str]]:
    """`localvault watch` in a process of its own (stdout and stderr piped), run through ``prefix`` (a command
    that runs the rest of its arguments); killed if a test leaves it running."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "localvault.cli", "--vault", str(root), "watch", *options,
                             str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # as from a terminal, even when the suite runs under nohup
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_watch_ends_when_its_reader_goes(tmp_path: Path, out: Path, as_json: bool) -> None:
    """`localvault watch --json | head -1`: before, with --json it went on importing for as long as it lived,
    its output unread; in text it ended with "stopped on an error: SystemExit: 1", exit 8. Now it finishes the
    files under way and ends as click does on a closed pipe: exit 1, nothing on stderr but its start."""
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER).close()
    make_png(out / "before.png", color=1)
    with cli_watch(root, out, *(["--json"] if as_json else [])) as proc, Vault.open(root, readonly=True) as reader:
        assert proc.stdout is not None and proc.stdout.readline()  # the catch-up's event: the reader has read it
        proc.stdout.close()  # `head -1` is done
        for n in range(2, 5):  # the next event's write finds the pipe closed
            (tmp_path / f"{n}.png").write_bytes(png_bytes(tmp_path, n))
            (tmp_path / f"{n}.png").rename(out / f"{n}.png")
            time.sleep(0.3)
        assert proc.wait(timeout=30) == 1
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "error" not in stderr and "Traceback" not in stderr, stderr
        assert reader.verify().clean and reader.workspace.count() >= 2
    assert temp_files(root) == []


def test_cli_watch_stops_its_watcher_when_its_own_line_finds_stdout_closed(tmp_path: Path, out: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`watch out | true` on a folder already in the vault: the command's own line ("already in the vault: …")
    meets the closed pipe, not an event's. Before: the command ended there, its watcher never stopped (its
    thread killed at exit, whatever it was doing). The closed pipe is forced (the one mock here): CliRunner's
    stdout cannot be closed, and a real pipe's closing could not be timed against that line."""
    from click.testing import CliRunner

    from localvault.cli import main, output

    root = tmp_path / "vault"
    make_png(out / "before.png", color=1)
    with Vault.create(root, user_id=USER) as vault:
        vault.workspace.import_folder(out)
    real_print, real_stop, stops = output.console.print, Watcher.stop, []

    def closed_pipe(*args: Any, **kwargs: Any) -> None:
        if args and str(args[0]).startswith("already in the vault"):
            raise BrokenPipeError(32, "Broken pipe")
        real_print(*args, **kwargs)

    def counted_stop(self: Watcher) -> Any:
        stops.append(self)
        return real_stop(self)

    monkeypatch.setattr(output.console, "print", closed_pipe)
    monkeypatch.setattr(Watcher, "stop", counted_stop)
    result = CliRunner().invoke(main, ["--vault", str(root), "watch", str(out)])
    assert result.exit_code == 1 and len(stops) == 1 and not stops[0].running


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_cli_watch_stops_cleanly_with_a_summary(tmp_path: Path, out: Path, stop: signal.Signals) -> None:
    """`localvault watch` as a user runs it: catch up, take a new file, then Ctrl-C (or a service
    manager's SIGTERM, or its terminal closed: SIGHUP) ends it with exit code 0, a summary, every file
    committed and no temporary file."""
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER).close()
    make_png(out / "before.png", color=1)
    with cli_watch(root, out) as proc, Vault.open(root, readonly=True) as reader:
        assert wait_for(lambda: reader.workspace.count() == 1, timeout=30), "the catch-up import did not happen"
        (tmp_path / "during.png").write_bytes(png_bytes(tmp_path, 2))
        os.rename(tmp_path / "during.png", out / "during.png")  # a rig's atomic write
        assert wait_for(lambda: reader.workspace.count() == 2, timeout=30), "the new file was not taken"
        proc.send_signal(stop)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "watching" in stderr
    assert "watch: 2 imported, 0 skipped as duplicates, 0 refused" in stdout
    with Vault.open(root) as vault:
        assert vault.workspace.count() == 2 and vault.verify().clean
    assert temp_files(root) == []


def test_cli_watch_again_sums_up_the_files_it_took_before(tmp_path: Path, out: Path) -> None:
    """Watching a --copy folder again finds every file in the vault already: one line says how many, not a line
    each (thousands, on a rig's output folder); a duplicate written while it watches still gets its line."""
    root = tmp_path / "vault"
    with Vault.create(root, user_id=USER) as vault:
        for n in range(3):
            make_png(out / f"before-{n}.png", color=n)
        vault.workspace.import_folder(out)
    with cli_watch(root, out) as proc:
        time.sleep(2)  # the catch-up
        shutil.copy(out / "before-0.png", tmp_path / "again.png")
        os.rename(tmp_path / "again.png", out / "again.png")
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "already in the vault: 3 files of the folder" in stdout
    assert [line for line in stdout.splitlines() if line.startswith("already in the vault: /")] == [
        f"already in the vault: {out / 'again.png'}"]
    assert "watch: 0 imported, 4 skipped as duplicates, 0 refused" in stdout


def test_cli_watch_json_prints_one_event_per_line_then_the_summary(tmp_path: Path, out: Path) -> None:
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER).close()
    make_png(out / "before.png", color=1)
    os.utime(make_png(out / "last-month.png", color=2), (time.time() - 30 * 86400,) * 2)  # passed over
    (out / "broken.png").write_bytes(b"this is not an image at all")
    (out / "2026-11-27").mkdir()  # not looked in (the summary said nothing of it)
    with cli_watch(root, out, "--json") as proc, Vault.open(root, readonly=True) as reader:
        assert wait_for(lambda: reader.workspace.count() == 1, timeout=30), "the catch-up import did not happen"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]  # every line is one JSON object
    events = {Path(line["path"]).name: line for line in lines if "event" in line}
    assert events["before.png"]["event"] == "imported" and events["before.png"]["asset_id"]
    assert events["broken.png"]["event"] == "refused" and events["broken.png"]["message"]
    # times as the vault's other JSON shows them (ISO 8601, UTC), within the run
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", events["before.png"]["at"])  # (milliseconds)
    at = datetime.strptime(events["before.png"]["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - at).total_seconds()) < 120
    summary = lines[-1]["summary"]
    assert (summary["imported"], summary["duplicates"], summary["refused"], summary["too_old"]) == (1, 0, 1, 1)
    assert summary["folders_not_entered"] == 1
    assert Path(next(iter(summary["refusals"]))).name == "broken.png"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_watch_stopped_twice_still_finishes_the_batch_under_way(tmp_path: Path, out: Path,
                                                                    stop: signal.Signals) -> None:
    """A second Ctrl-C or SIGTERM while the watch finishes a batch must neither kill it nor print an early
    summary (a Ctrl-C inside Thread.join() on Python 3.11 marks the thread stopped while it still runs)."""
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER).close()
    template = png_bytes(tmp_path, 3)
    for n in range(1000):  # two catch-up batches of 500
        text = b"tEXt" + b"n\0" + str(n).encode()  # distinct bytes: a text chunk (with its CRC) before IEND
        chunk = (len(text) - 4).to_bytes(4, "big") + text + zlib.crc32(text).to_bytes(4, "big")
        (out / f"pre-{n:04d}.png").write_bytes(template[:-12] + chunk + template[-12:])
    with cli_watch(root, out, "-q") as proc, Vault.open(root, readonly=True) as reader:
        assert wait_for(lambda: reader.workspace.count() >= 500, timeout=120), "the first batch was not committed"
        # The second batch under way (its files being staged): a stop landing between the two batches would end
        # the watch at once, and a second signal after its end would find the default handler back.
        assert wait_for(lambda: temp_files(root) != [], timeout=60), "the second batch did not start"
        proc.send_signal(stop)
        time.sleep(0.05)
        proc.send_signal(stop)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    with Vault.open(root) as vault:
        count = vault.workspace.count()
        assert count >= 500 and f"watch: {count} imported" in stdout and vault.verify().clean
    assert temp_files(root) == []


def test_a_folder_replaced_faster_than_a_poll_is_watched_again(vault: Vault, out: Path, tmp_path: Path) -> None:
    """`rm -rf out && mkdir out` (a rig's "clear output") or `mv out out.old && mkdir out`, in a few ms."""
    seen = Recorder()
    with Watcher(vault, out, on_event=seen) as watcher:
        (out / "a.png").write_bytes(png_bytes(tmp_path, 1))
        assert wait_for(lambda: "a.png" in seen.names("imported"))
        shutil.rmtree(out)
        out.mkdir()
        assert wait_for(lambda: "folder_back" in [e.kind for e in seen.events])
        (out / "b.png").write_bytes(png_bytes(tmp_path, 2))
        assert wait_for(lambda: "b.png" in seen.names("imported"))
        out.rename(tmp_path / "out.old")
        out.mkdir()
        assert wait_for(lambda: [e.kind for e in seen.events].count("folder_back") == 2)
        (out / "c.png").write_bytes(png_bytes(tmp_path, 3))
        (tmp_path / "out.old" / "stale.png").write_bytes(png_bytes(tmp_path, 4))  # no longer watched
        assert wait_for(lambda: "c.png" in seen.names("imported"))
        assert watcher.running
    assert sorted(seen.names("imported")) == ["a.png", "b.png", "c.png"]


def test_a_folder_given_as_a_symbolic_link_is_watched_live(vault: Vault, out: Path, tmp_path: Path) -> None:
    """~/ComfyUI/output -> /mnt/big/output: inotify on the link itself hears nothing; the folder it leads to is
    watched, and again when the link is turned to another folder."""
    first, second = tmp_path / "disk1", tmp_path / "disk2"
    first.mkdir()
    second.mkdir()
    link = tmp_path / "output-link"
    os.symlink(first, link)
    (first / "before.png").write_bytes(png_bytes(tmp_path, 80))
    seen = Recorder()
    with Watcher(vault, link, on_event=seen, poll_seconds=0.05):
        assert wait_for(lambda: "before.png" in seen.names("imported"))
        (link / "live.png").write_bytes(png_bytes(tmp_path, 81))
        assert wait_for(lambda: "live.png" in seen.names("imported"))
        os.symlink(second, tmp_path / "output-link.new")
        os.replace(tmp_path / "output-link.new", link)  # the rig's output moved to another disk
        assert wait_for(lambda: "folder_back" in [e.kind for e in seen.events])
        (link / "after.png").write_bytes(png_bytes(tmp_path, 82))
        assert wait_for(lambda: "after.png" in seen.names("imported"))
    assert seen.names("imported") == ["before.png", "live.png", "after.png"]


def test_a_folder_that_keeps_vanishing_does_not_end_the_watch(vault: Vault, out: Path, tmp_path: Path) -> None:
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, poll_seconds=0.01) as watcher:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # gone and back, again and again, while the watcher re-watches it
            shutil.rmtree(out)
            out.mkdir()
        (out / "after.png").write_bytes(png_bytes(tmp_path, 5))
        assert wait_for(lambda: "after.png" in seen.names("imported"))
        assert watcher.running and watcher.error is None


def test_a_folder_given_with_dot_dot_is_watched(vault: Vault, out: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (out / "before.png").write_bytes(png_bytes(tmp_path, 1))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    seen = Recorder()
    with Watcher(vault, "../out", on_event=seen):
        (out / "live.png").write_bytes(png_bytes(tmp_path, 2))
        assert wait_for(lambda: "live.png" in seen.names("imported"))
    assert sorted(seen.names("imported")) == ["before.png", "live.png"] and seen.names("refused") == []


def test_a_file_renamed_in_from_another_folder_is_taken_at_once(vault: Vault, out: Path, tmp_path: Path) -> None:
    """watchdog reports it as created, not moved; it is whole, so no size-stable wait (set to 30 s here)."""
    seen = Recorder()
    staged = tmp_path / "staging" / "fresh.png"
    staged.parent.mkdir()
    staged.write_bytes(png_bytes(tmp_path, 3))
    with Watcher(vault, out, on_event=seen, stable_seconds=30):
        os.rename(staged, out / "fresh.png")
        assert wait_for(lambda: "fresh.png" in seen.names("imported"), timeout=5)


def test_files_not_whole_yet_are_waited_for_not_refused(vault: Vault, out: Path, tmp_path: Path) -> None:
    """Written in two opens, or still being written when the watch starts: taken once whole, never refused."""
    data = png_bytes(tmp_path, 4)
    half = len(data) // 2
    (out / "at-start.png").write_bytes(data[:half])  # the catch-up finds it half written
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, stable_seconds=0.2, poll_seconds=0.05):
        (out / "two-opens.png").write_bytes(data[:half])  # closed once half written...
        time.sleep(0.5)
        for name in ("two-opens.png", "at-start.png"):
            with open(out / name, "ab") as rest:  # ...then finished
                rest.write(data[half:])
        assert wait_for(lambda: len(seen.names("imported")) + len(seen.names("duplicate")) == 2)
        time.sleep(0.3)
    assert seen.names("refused") == [] and seen.names("error") == []


def test_a_file_deleted_before_it_is_taken_is_not_refused(vault: Vault, out: Path, tmp_path: Path) -> None:
    """Timing decides whether the watcher reads it before it goes (it went in ~4 % of tries): many tries."""
    from PIL import Image

    rng = random.Random(7)
    noisy = []
    for n in range(4):  # big enough to be read while it is deleted
        Image.frombytes("RGB", (200, 200), rng.randbytes(200 * 200 * 3)).save(tmp_path / f"noisy{n}.png")
        noisy.append((tmp_path / f"noisy{n}.png").read_bytes())
    seen = Recorder()
    with Watcher(vault, out, on_event=seen) as watcher:
        for n in range(80):
            (out / f"brief-{n}.png").write_bytes(noisy[n % 4])
            time.sleep(rng.uniform(0, 0.02))
            (out / f"brief-{n}.png").unlink()
            time.sleep(0.01)
        (out / "kept.png").write_bytes(png_bytes(tmp_path, 50))
        assert wait_for(lambda: "kept.png" in seen.names("imported"))
    assert seen.names("refused") == [] and watcher.report.refused == {}


def test_recursive_catch_up_takes_files_of_sub_folders(vault: Vault, out: Path, tmp_path: Path) -> None:
    (out / "batch" / "inner").mkdir(parents=True)
    (out / "batch" / "inner" / "early.png").write_bytes(png_bytes(tmp_path, 70))
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, recursive=True):
        assert wait_for(lambda: "early.png" in seen.names("imported"))


def test_recursive_watch_skips_hidden_and_temporary_folders(vault: Vault, out: Path, tmp_path: Path) -> None:
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, recursive=True):
        for folder in (".cache", "run.tmp", "batch"):
            (out / folder).mkdir()
        time.sleep(0.3)
        for n, folder in enumerate((".cache", "run.tmp", "batch")):
            (out / folder / f"f{n}.png").write_bytes(png_bytes(tmp_path, 60 + n))
        assert wait_for(lambda: "f2.png" in seen.names("imported"))
        time.sleep(0.5)
    assert seen.names("imported") == ["f2.png"]  # as the catch-up (scan) would take them


def test_a_file_refused_as_unreadable_is_taken_once_its_mode_is_fixed(vault: Vault, out: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A chmod changes neither size nor mtime: the watcher must not take the refused file for done."""
    from localvault import watch

    monkeypatch.setattr(watch, "GIVE_UP_SECONDS", 1.0)
    seen = Recorder()
    data = png_bytes(tmp_path, 90)
    with without_dac_override():
        with Watcher(vault, out, on_event=seen, poll_seconds=0.05):
            fd = os.open(out / "locked.png", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0)  # never readable until fixed
            os.write(fd, data)
            os.close(fd)
            (out / "open.png").write_bytes(png_bytes(tmp_path, 91))
            assert wait_for(lambda: "locked.png" in seen.names("refused"))
            assert "open.png" in seen.names("imported")
            os.chmod(out / "locked.png", 0o644)
            assert wait_for(lambda: "locked.png" in seen.names("imported"))


def test_a_chmod_made_while_the_refusing_import_runs_is_not_missed(vault: Vault, out: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix of a refused file's mode may land while the import that refused it is still running (a batch
    takes seconds): the ctime remembered is the one from before that import, so the chmod still counts."""
    from localvault import importer, watch

    monkeypatch.setattr(watch, "GIVE_UP_SECONDS", 1.0)
    real = importer.Importer.import_paths

    def chmod_before_returning(self: importer.Importer, paths: list[str], *args: object, **kwargs: object) -> object:
        result = real(self, paths, *args, **kwargs)  # type: ignore[arg-type]
        for path in result.refused:
            os.chmod(path, 0o644)  # the user fixes it just as the import ends (the timing is all that is arranged)
        return result

    monkeypatch.setattr(importer.Importer, "import_paths", chmod_before_returning)
    seen = Recorder()
    with without_dac_override(), Watcher(vault, out, on_event=seen, poll_seconds=0.05):
        fd = os.open(out / "locked.png", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0)
        os.write(fd, png_bytes(tmp_path, 92))
        os.close(fd)
        assert wait_for(lambda: "locked.png" in seen.names("refused"))
        assert wait_for(lambda: "locked.png" in seen.names("imported"))


def test_a_file_refused_again_and_again_is_listed_once_to_retry() -> None:
    from localvault.import_report import ImportReport

    report = ImportReport()
    for _ in range(3):  # the watcher retrying a file while the disk stays full
        report.merge(ImportReport(refused={"a.png": "the disk is full"}, retryable=["a.png"]))
    assert report.retryable == ["a.png"] and report.refused == {"a.png": "the disk is full"}


def test_a_batch_that_could_not_be_committed_is_tried_again(vault: Vault, out: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from localvault import db, watch

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)  # the watcher's connection gives up on a lock after 0.2 s
    monkeypatch.setattr(watch, "RETRY_SECONDS", 0.5)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, poll_seconds=0.05) as watcher:
        blocker = sqlite3.connect(vault.root / "vault.db", timeout=5)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        (out / "during-lock.png").write_bytes(png_bytes(tmp_path, 70))
        # An error to try again, not a refusal: one counting refusals in the events was misled
        assert wait_for(lambda: "during-lock.png" in seen.names("error"))
        blocker.rollback()
        blocker.close()
        assert wait_for(lambda: "during-lock.png" in seen.names("imported"))
    assert watcher.report.refused == {} and len(watcher.report.imported) == 1
    assert seen.names("refused") == [] and "trying again" in next(e.message for e in seen.events if e.kind == "error")


def test_files_of_an_import_that_failed_as_a_whole_are_tried_again(vault: Vault, out: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An error of the whole import call (not of one file: a fault the tests cannot cause on demand, hence the
    patch) is reported, and its files are tried again rather than forgotten until they change."""
    from localvault import importer, watch

    monkeypatch.setattr(watch, "RETRY_SECONDS", 0.5)
    real = importer.Importer.import_paths
    failures: list[int] = []

    def fails_once(self: importer.Importer, *args: object, **kwargs: object) -> object:
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importer.Importer, "import_paths", fails_once)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, poll_seconds=0.05):
        (tmp_path / "first-try-fails.png").write_bytes(png_bytes(tmp_path, 75))
        os.rename(tmp_path / "first-try-fails.png", out / "first-try-fails.png")  # whole at once: one event
        assert wait_for(lambda: "first-try-fails.png" in seen.names("imported"))
    assert seen.names("error") == ["first-try-fails.png"]


def test_misuse_raises_vault_errors(vault: Vault, out: Path, tmp_path: Path) -> None:
    watcher = Watcher(vault, out).start()
    with pytest.raises(InvalidInputError, match="started already"):
        watcher.start()
    watcher.stop()
    gone = Watcher(vault, out)
    shutil.rmtree(out)
    with pytest.raises(InvalidInputError, match="cannot watch"):
        gone.start()


def test_stop_from_the_event_callback_stops_the_watch(vault: Vault, out: Path, tmp_path: Path) -> None:
    holder: list[Watcher] = []
    errors: list[BaseException] = []

    def on_event(event: WatchEvent) -> None:
        try:
            holder[0].stop()
        except BaseException as exc:
            errors.append(exc)

    watcher = Watcher(vault, out, on_event=on_event)
    holder.append(watcher)
    watcher.start()
    (out / "a.png").write_bytes(png_bytes(tmp_path, 80))
    assert wait_for(lambda: not watcher.running)
    assert errors == [] and len(watcher.stop().imported) == 1


def test_the_library_prints_nothing_without_logging_configured(tmp_path: Path, out: Path) -> None:
    (out / "broken.png").write_bytes(b"not a png at all, but named like one")
    script = f"""
import sys
from localvault import Vault
from localvault.watch import Watcher
vault = Vault.create({str(tmp_path / "v")!r})
report = vault.workspace.import_folder({str(out)!r})
assert report.refused, report
with Watcher(vault, {str(out)!r}) as watcher:
    pass
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


def test_the_report_counts_what_the_catch_up_refuses(vault: Vault, out: Path, tmp_path: Path) -> None:
    """A link leading outside the folder, found by the catch-up's scan, was an event but not in the report."""
    make_png(out / "before.png", color=1)
    (out / "outside.png").symlink_to(make_png(tmp_path / "elsewhere.png", color=2))
    (out / "bad.png").write_bytes(b"not an image")
    seen = Recorder()
    with Watcher(vault, out, on_event=seen) as watcher:
        pass
    assert sorted(seen.names("refused")) == ["bad.png", "outside.png"]
    assert sorted(Path(p).name for p in watcher.report.refused) == ["bad.png", "outside.png"]
    assert watcher.report.refused_total == 2 and [Path(i.source).name for i in watcher.report.imported] == ["before.png"]


def test_a_file_touched_again_right_after_its_close_is_taken_once_as_it_ends(vault: Vault, out: Path,
                                                                            tmp_path: Path) -> None:
    """Rigs and scripts touch a file right after closing it: an EXIF block inserted (piexif.insert rewrites
    it), a copy setting its times (shutil.copy2, shutil.move from another disk). Taken at its first close, it
    became two assets (the first without its metadata), or a --move kept the source as replaced."""
    seen = Recorder()
    final = make_png(tmp_path / "final.png", text_chunks={"parameters": A1111_TEXT}, color=5).read_bytes()
    with Watcher(vault, out, on_event=seen, mode="move", quiet_seconds=0.5):
        (out / "rewritten.png").write_bytes(png_bytes(tmp_path, 4))  # whole, without its metadata yet
        time.sleep(0.05)
        (out / "rewritten.png").write_bytes(final)  # ... which is written in a moment later
        (out / "copied.png").write_bytes(png_bytes(tmp_path, 6))
        time.sleep(0.05)
        os.utime(out / "copied.png", (1_700_000_000, 1_700_000_000))  # copystat, after the copy's close
        assert wait_for(lambda: len(seen.names("imported")) == 2)
        time.sleep(0.7)
    assert sorted(seen.names("imported")) == ["copied.png", "rewritten.png"] and seen.names("duplicate") == []
    assert vault.workspace.count() == 2 and list(out.iterdir()) == []  # --move took both sources
    asset = vault.workspace.find_sha256(hashlib.sha256(final).hexdigest())
    assert asset is not None and asset.original_prompt == "a red fox in snow"


def test_a_previous_renders_sidecar_is_not_taken_for_the_new_files(vault: Vault, out: Path, tmp_path: Path) -> None:
    """A1111 naming files by seed re-renders 1234.png; with --move the old image went into the vault and its
    1234.txt stayed. The new image must wait for its own text file, not take the old one's prompt."""
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, mode="move", sidecar_wait_seconds=30):
        (out / "1234.txt").write_text(A1111_TEXT.replace("a red fox in snow", "an old prompt"))
        old = time.time() - 120
        os.utime(out / "1234.txt", (old, old))  # written by the previous render
        write_by_rename(out, "1234.png", png_bytes(tmp_path, 7))
        time.sleep(0.6)
        assert seen.names("imported") == []  # held for its own sidecar
        (out / "1234.txt").write_text(A1111_TEXT.replace("a red fox in snow", "a blue whale"))
        assert wait_for(lambda: seen.names("imported") == ["1234.png"], timeout=5)
    asset = vault.workspace.find_sha256(hashlib.sha256(png_bytes(tmp_path, 7)).hexdigest())
    assert asset is not None and asset.original_prompt == "a blue whale"


def test_files_whose_events_the_kernel_dropped_are_caught_up(vault: Vault, out: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """When inotify's queue overflows, the kernel drops events and watchdog only logs it. The drop is
    simulated (the handler hears nothing for a while: no test can overflow the kernel's queue cheaply); the
    signal is watchdog's own log record, on its own logger."""
    import watchdog.observers.inotify_c as inotify_c

    from localvault import _watch_handler

    assert _watch_handler._OVERFLOW_MESSAGE in Path(inotify_c.__file__).read_text()  # what watchdog logs
    assert inotify_c.logger.name == _watch_handler._OVERFLOW_LOGGER
    seen = Recorder()
    deaf = threading.Event()
    real_dispatch = _watch_handler.EventHandler.dispatch
    monkeypatch.setattr(_watch_handler.EventHandler, "dispatch",
                        lambda self, event: None if deaf.is_set() else real_dispatch(self, event))
    with Watcher(vault, out, on_event=seen):
        deaf.set()
        for n in range(2):
            write_by_rename(out, f"lost{n}.png", png_bytes(tmp_path, 10 + n))
        # An old render moved in (a burst of them overflows the queue): new to the folder, whatever its mtime.
        (tmp_path / "lost2.png").write_bytes(png_bytes(tmp_path, 12))
        os.utime(tmp_path / "lost2.png", (time.time() - 30 * 86400,) * 2)
        os.rename(tmp_path / "lost2.png", out / "lost2.png")
        time.sleep(0.5)
        assert seen.names("imported") == []  # their events were lost
        deaf.clear()
        inotify_c.logger.warning("Inotify queue overflowed; filesystem events were lost")
        assert wait_for(lambda: sorted(seen.names("imported")) == ["lost0.png", "lost1.png", "lost2.png"])


def test_a_watcher_started_from_two_threads_at_once_runs_once(vault: Vault, out: Path) -> None:
    """Both calls used to pass the "started already?" check: two watch threads, one left running by stop()."""
    for _attempt in range(20):  # a race: tried often enough to show
        watcher = Watcher(vault, out)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def start(watcher: Watcher = watcher, barrier: threading.Barrier = barrier,
                  outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                watcher.start()
                outcomes.append("started")
            except InvalidInputError:
                outcomes.append("refused")

        threads = [threading.Thread(target=start) for _ in range(2)]
        with _fast_thread_switching():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        watcher.stop()
        assert sorted(outcomes) == ["refused", "started"]
        assert [t for t in threading.enumerate() if t.name == "localvault-watch"] == []


@contextmanager
def _fast_thread_switching() -> Iterator[None]:
    """Switch threads as often as possible: a race between two checks shows at once."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_cli_watch_started_with_sigint_ignored_says_how_to_stop_it(tmp_path: Path, out: Path) -> None:
    """A shell that is not interactive starts "cmd &" with SIGINT ignored, and Python keeps it so: Ctrl-C (or a
    script's SIGINT) would never reach the watch. It says so, and SIGTERM stops it as Ctrl-C would."""
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER).close()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "localvault.cli", "--vault", str(root), "watch", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stderr is not None
        # The warning comes right after that line (waited for: a SIGTERM sent before it would stop the watch
        # before it is printed, as on a loaded machine after a fixed sleep).
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        assert "watching" in lines.get(timeout=30)
        warning = lines.get(timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "watch: 0 imported" in proc.stdout.read()  # type: ignore[union-attr]
        assert "SIGINT" in warning and "SIGTERM" in warning, warning
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_first_file_of_a_new_day_folder_waits_for_its_sidecar(vault: Vault, out: Path, tmp_path: Path) -> None:
    """A1111 writes into a folder per day; its sidecars go there too. The first image of a new day's folder was
    taken at once (no sidecar had been seen in that folder yet) and lost its prompt and seed."""
    (out / "2026-11-26").mkdir()
    make_png(out / "2026-11-26" / "00000-1.png", color=1)  # yesterday's folder: the rig writes sidecars
    (out / "2026-11-26" / "00000-1.txt").write_text(A1111_TEXT)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, recursive=True, sidecar_wait_seconds=60):
        assert wait_for(lambda: seen.names("imported") == ["00000-1.png"])
        (out / "2026-11-27").mkdir()
        write_by_rename(out / "2026-11-27", "00000-9.png", png_bytes(tmp_path, 9))
        time.sleep(0.6)
        assert seen.names("imported") == ["00000-1.png"]  # held for its sidecar
        (out / "2026-11-27" / "00000-9.txt").write_text(A1111_TEXT.replace("4242", "99"))
        assert wait_for(lambda: "00000-9.png" in seen.names("imported"))
    first_of_day = [a for a in vault.workspace.list(limit=10).items if a.generation_seed == 99]
    assert len(first_of_day) == 1 and first_of_day[0].original_prompt == "a red fox in snow"


@pytest.mark.parametrize("mode", ["copy", "move", "copy, buckets on memory://"])
def test_a_sidecar_that_comes_after_its_file_was_taken_fills_its_placeholders(vault: Vault, out: Path, tmp_path: Path,
                                                                             mode: str) -> None:
    """The first image of a watch is taken before any sidecar was seen (nothing says the rig writes them): its
    sidecar, coming a moment later, was never read, and the prompt and seed were lost. (On a vault whose files
    are on another fsspec filesystem, the first version read the vault's copy by a local path: never filled.)"""
    if "memory" in mode:
        from fsspec.implementations.memory import MemoryFileSystem

        vault = Vault.create(tmp_path / "vault-mem", user_id=USER, fs=MemoryFileSystem())
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, mode=mode.split(",")[0]):  # type: ignore[arg-type]
        write_by_rename(out, "00000-7.png", png_bytes(tmp_path, 7))
        assert wait_for(lambda: seen.names("imported") == ["00000-7.png"])
        (out / "00000-7.txt").write_text(A1111_TEXT.replace("4242", "77"))
        assert wait_for(lambda: seen.names("sidecar_read") == ["00000-7.png"])
        # One with metadata of its own keeps it: a sidecar never overwrites.
        make_png(tmp_path / "own.png", text_chunks={"parameters": A1111_TEXT.replace("4242", "8")}, color=8)
        write_by_rename(out, "00001-8.png", (tmp_path / "own.png").read_bytes())
        assert wait_for(lambda: "00001-8.png" in seen.names("imported"))
        (out / "00001-8.txt").write_text("another prompt\\nSteps: 20, Seed: 999, Model: other")
        time.sleep(1.0)
    assert seen.names("sidecar_read") == ["00000-7.png"]
    assets = {a.generation_seed: a for a in vault.workspace.list(limit=10).items}
    assert set(assets) == {77, 8}
    assert assets[77].original_prompt == "a red fox in snow" and assets[77].model_used == "sdxl"
    assert assets[77].generation_settings["steps"] == 20 and assets[77].generation_settings["sidecar"] == "00000-7.txt"
    assert assets[8].original_prompt == "a red fox in snow"


def test_a_sidecar_that_came_while_no_watch_ran_fills_its_placeholders_at_the_next_watch(
        vault: Vault, out: Path, tmp_path: Path) -> None:
    """The late reading of a sidecar lived only in the watch's memory: a watch stopped (killed, a reboot) before
    the sidecar came, and the next one called the file a duplicate and left its placeholders for good."""
    seen = Recorder()
    with Watcher(vault, out, on_event=seen):
        write_by_rename(out, "00000-7.png", png_bytes(tmp_path, 7))
        assert wait_for(lambda: seen.names("imported") == ["00000-7.png"])
    (out / "00000-7.txt").write_text(A1111_TEXT.replace("4242", "77"))
    with Watcher(vault, out, on_event=seen):
        assert wait_for(lambda: seen.names("sidecar_read") == ["00000-7.png"])
    asset = vault.workspace.list(limit=10).items[0]
    assert vault.workspace.count() == 1 and seen.names("duplicate") == ["00000-7.png"]
    assert (asset.generation_seed, asset.original_prompt, asset.model_used) == (77, "a red fox in snow", "sdxl")
    assert [e.asset_id for e in seen.events if e.kind == "sidecar_read"] == [asset.id]


def test_a_watcher_stopped_before_it_started_refuses_to_start(vault: Vault, out: Path) -> None:
    """Before: stop() before start() left the stop set, so the started watcher ended a moment later, silently,
    and files written then were never taken. Now its start says so (an app may start it in a worker thread and
    stop it on quit before that thread got there: the stop must hold)."""
    watcher = Watcher(vault, out)
    assert watcher.stop().summary() == "0 imported, 0 skipped as duplicates, 0 refused"
    with pytest.raises(InvalidInputError, match="stopped before it started; make a new Watcher"):
        watcher.start()
    assert not watcher.running


def test_a_stop_racing_a_start_is_seen_by_it_or_waits_for_its_thread(vault: Vault, out: Path) -> None:
    """Before: a stop() landing while another thread's start() made its thread (after its check of the stop)
    found no thread, returned at once, and that start went on to a watcher ended a moment later, silently."""
    watcher = Watcher(vault, out)
    stopped = threading.Event()
    with watcher._start_lock:  # a start() under way, between its check and its thread
        stopping = threading.Thread(target=lambda: (watcher.stop(), stopped.set()))
        stopping.start()
        assert not stopped.wait(0.3)
    stopping.join(10)
    assert stopped.is_set()
    with pytest.raises(InvalidInputError, match="stopped before it started"):
        watcher.start()


def test_the_catch_up_leaves_files_older_than_the_workspace_to_import(vault: Vault, out: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Before: a file the workspace had let expire was taken again by every watch's catch-up (a rig's output
    folder keeps its files), with a new week to live: every restart copied the folder's whole history again."""
    eight_days_ago = time.time() - 8 * 86400
    (out / "old.png").write_bytes(png_bytes(tmp_path, 1))
    os.utime(out / "old.png", (eight_days_ago, eight_days_ago))
    (out / "young.png").write_bytes(png_bytes(tmp_path, 2))
    seen = Recorder()
    with caplog.at_level(logging.WARNING, logger="localvault.watch.notices"), Watcher(vault, out, on_event=seen) as w:
        assert seen.names("imported") == ["young.png"]
        # Moved in while watching, an old file is new to the folder: taken.
        (tmp_path / "moved.png").write_bytes(png_bytes(tmp_path, 3))
        os.utime(tmp_path / "moved.png", (eight_days_ago, eight_days_ago))
        os.rename(tmp_path / "moved.png", out / "moved.png")
        assert wait_for(lambda: "moved.png" in seen.names("imported"))
    assert w.report.too_old == 1 and vault.workspace.count() == 2
    assert any("1 file in" in r.getMessage() and "more than 7 days ago not taken" in r.getMessage()
               for r in caplog.records)
    assert vault.workspace.import_folder(out).summary() == "1 imported, 2 skipped as duplicates, 0 refused"


def _without_dac_override_after_exec() -> None:  # a child's preexec_fn: root obeys file modes from then on
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: out of the bounding set, lost at exec
        libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_watch_move_says_when_it_keeps_a_source(tmp_path: Path, out: Path) -> None:
    """The watch command hid the library's warnings (each file's problems come as events), among them the one
    saying that --move imported a file but could not delete it: the user saw "1 imported" and a source left."""
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER).close()
    (out / "kept.png").write_bytes(png_bytes(tmp_path, 80))
    out.chmod(0o555)  # the source cannot be deleted
    try:
        proc = subprocess.Popen([sys.executable, "-m", "localvault.cli", "--vault", str(root), "watch", "--move",
                                 str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "300"}, preexec_fn=_without_dac_override_after_exec)
        try:
            def imported() -> bool:
                with Vault.open(root, readonly=True) as reader:
                    return reader.workspace.count() == 1

            assert wait_for(imported, timeout=30)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        out.chmod(0o755)
    assert "watch: 1 imported" in stdout
    assert "could not delete it" in stderr and "kept.png" in stderr, stderr
    assert (out / "kept.png").exists()


def test_a_sidecar_written_while_its_file_was_imported_is_not_missed(tmp_path: Path) -> None:
    """Its event came before the file's import was done (a catch-up, after an overflow or the folder's return,
    takes files at once): the file is looked at again as soon as it is noted as taken with placeholders."""
    from localvault._watch_sidecars import SidecarWait

    wait = SidecarWait()
    (tmp_path / "a.png").write_bytes(b"image")
    (tmp_path / "a.txt").write_text("a fox\nSteps: 20, Seed: 5")
    wait.taken_without_metadata(str(tmp_path / "a.png"), "asset-a")
    wait.taken_without_metadata(str(tmp_path / "b.png"), "asset-b")  # no sidecar yet: waits for its event
    assert wait.late_sidecars() == [(str(tmp_path / "a.png"), "asset-a")]
    (tmp_path / "b.txt").write_text("a heron")
    assert wait.saw_sidecar(str(tmp_path / "b.txt"), complete=True) == []
    assert wait.late_sidecars() == [(str(tmp_path / "b.png"), "asset-b")] and wait.late_sidecars() == []


def test_a_sidecar_read_while_still_written_is_read_again_at_its_close(vault: Vault, out: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Half-written when its file's import ended: read then (a prompt cut short), and, before, never again: the
    row no longer held placeholders when the whole sidecar was closed. The rig's timing is forced: the sidecar's
    first half is written just as the file is noted as taken without metadata."""
    from localvault import _watch_sidecars

    real = _watch_sidecars.SidecarWait.taken_without_metadata
    writer: list[Any] = []

    def half_written_then_noted(self: Any, path: str, asset_id: str) -> None:
        handle = open(os.path.splitext(path)[0] + ".txt", "w")  # noqa: SIM115 - closed below, by the "rig"
        handle.write("a red fox in t")
        handle.flush()
        writer.append(handle)
        real(self, path, asset_id)

    monkeypatch.setattr(_watch_sidecars.SidecarWait, "taken_without_metadata", half_written_then_noted)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen):
        write_by_rename(out, "00000-3.png", png_bytes(tmp_path, 3))
        assert wait_for(lambda: seen.names("sidecar_read") == ["00000-3.png"])  # the half
        writer[0].write("he snow\nSteps: 20, Sampler: Euler a, Seed: 424242, Model: sdxl")
        writer[0].close()
        assert wait_for(lambda: seen.names("sidecar_read") == ["00000-3.png"] * 2)
    (asset,) = vault.workspace.list().items
    assert (asset.original_prompt, asset.generation_seed, asset.model_used) == ("a red fox in the snow", 424242, "sdxl")


def test_a_sidecar_its_files_import_read_half_written_is_read_again_at_its_close(vault: Vault, out: Path,
                                                                                 tmp_path: Path) -> None:
    """The rig has written the sidecar's first line, not yet its settings, when its image is taken: the import
    reads the half (the prompt, seed and model placeholders); its close brings the rest into the row."""
    seen = Recorder()
    with Watcher(vault, out, on_event=seen):
        with open(out / "00001-7.txt", "w") as sidecar:
            sidecar.write("a red fox in the snow\n")
            sidecar.flush()
            write_by_rename(out, "00001-7.png", png_bytes(tmp_path, 7))
            assert wait_for(lambda: seen.names("imported") == ["00001-7.png"])
            (asset,) = vault.workspace.list().items
            assert (asset.original_prompt, asset.generation_seed, asset.model_used) == (
                "a red fox in the snow", 0, "unknown")
            time.sleep(0.3)
            sidecar.write("Steps: 20, Sampler: Euler a, Seed: 424242, Model: sdxl")
        assert wait_for(lambda: seen.names("sidecar_read") == ["00001-7.png"])
    (asset,) = vault.workspace.list().items
    assert (asset.original_prompt, asset.generation_seed, asset.model_used) == ("a red fox in the snow", 424242, "sdxl")


def test_a_recursive_watch_of_a_folder_holding_the_vault_leaves_the_vaults_files_alone(tmp_path: Path) -> None:
    """The vault kept in the rig's output folder: each file the watcher stored came back as a duplicate event
    of the vault's own copy, and the catch-up walked the vault's buckets."""
    out = tmp_path / "out"
    out.mkdir()
    make_png(out / "before.png", color=1)
    seen = Recorder()
    with Vault.create(out / "vault", user_id=USER) as vault:
        with Watcher(vault, out, recursive=True, on_event=seen, poll_seconds=0.05) as watcher:
            for n in range(2, 5):
                write_by_rename(out, f"{n}.png", png_bytes(tmp_path, n))
            assert wait_for(lambda: len(seen.names("imported")) == 4)
            time.sleep(1.5)  # the vault's files, written meanwhile, would have been taken by now
        assert [e.kind for e in seen.events] == ["imported"] * 4
        assert watcher.report.folders_not_entered == 1 and vault.workspace.count() == 4


def test_only_a_vault_kept_inside_the_watched_folder_is_left_out(tmp_path: Path) -> None:
    """The vault's own files are not the rig's when the vault sits in the folder watched; a folder watched inside
    the vault's folder is the rig's all the same (its day folders were all left out)."""
    from localvault._watch_intake import Intake

    def intake(watched: Path, vault_root: Path) -> Intake:
        return Intake(watched, True, stable_seconds=1, quiet_seconds=0.2, give_up_seconds=10, open_seconds=60,
                      sidecar_wait_seconds=3, vault_root=str(vault_root))

    ai = tmp_path / "ai"
    inside = intake(ai, ai / "vault")
    assert not inside.in_scope(str(ai / "vault" / "workspace-temp" / "u" / "j" / "0.png"))
    assert inside.in_scope(str(ai / "2026-11-28" / "00001.png"))
    around = intake(ai / "outputs", ai)
    assert around.in_scope(str(ai / "outputs" / "2026-11-28" / "00001.png"))


def test_a_video_the_catch_up_finds_just_written_waits_for_its_close(vault: Vault, out: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch (re)started while an encoder writes a fragmented MP4: the catch-up found it whole by its bytes at a
    pause and took it (with --move, deleting it under the encoder). A video written in the last OPEN_SECONDS
    waits for its close, or OPEN_SECONDS."""
    if not sys.platform.startswith("linux"):
        pytest.fail("inotify (close events) is what this test is about; run it on Linux")
    monkeypatch.setattr(watch_module, "OPEN_SECONDS", 3.0)
    base = mp4_bytes(5, duration_seconds=2.0)
    seen = Recorder()
    encoder = open(out / "clip.mp4", "wb")  # noqa: SIM115 - closed below, as the encoder ends
    try:
        encoder.write(base)
        encoder.flush()  # whole by its bytes, still open
        with Watcher(vault, out, mode="move", on_event=seen, stable_seconds=0.3, poll_seconds=0.05):
            time.sleep(1.0)
            assert seen.names("imported") == [] and (out / "clip.mp4").exists()
            encoder.close()
            assert wait_for(lambda: seen.names("imported") == ["clip.mp4"])
    finally:
        encoder.close()
    (asset,) = vault.workspace.list().items
    assert asset.sha256 == hashlib.sha256(base).hexdigest() and not (out / "clip.mp4").exists()
