"""The live importer: `localvault.watch.Watcher` on a real folder with real files."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from localvault import Vault
from localvault.files import TEMP_PREFIX, WORKSPACE_BUCKET
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


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


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


def test_stable_size_fallback(vault: Vault, out: Path, tmp_path: Path) -> None:
    """A file that produced no close event (created by a hard link here) is taken once its size is stable."""
    seen = Recorder()
    source = make_png(tmp_path / "linked-source.png", color=8)
    with Watcher(vault, out, on_event=seen, stable_seconds=0.3, poll_seconds=0.05):
        os.link(source, out / "linked.png")
        assert wait_for(lambda: "linked.png" in seen.names("imported"))


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


def test_stop_is_clean_and_idempotent(vault: Vault, out: Path) -> None:
    watcher = Watcher(vault, out).start()
    assert watcher.running
    report = watcher.stop()
    assert not watcher.running and report.summary().startswith("0 imported")
    watcher.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("localvault-")]
    assert vault.workspace.count() == 0  # the caller's vault stays usable


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_watch_stops_cleanly_with_a_summary(tmp_path: Path, out: Path, stop: signal.Signals) -> None:
    """`localvault watch` as a user runs it: catch up, take a new file, then Ctrl-C (or a service
    manager's SIGTERM) ends it with exit code 0, a summary, every file committed and no temporary file."""
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER).close()
    make_png(out / "before.png", color=1)
    env = {**os.environ, "COLUMNS": "200", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "localvault.cli", "--vault", str(root), "watch", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        with Vault.open(root, readonly=True) as reader:
            assert wait_for(lambda: reader.workspace.count() == 1, timeout=30), "the catch-up import did not happen"
            (tmp_path / "during.png").write_bytes(png_bytes(tmp_path, 2))
            os.rename(tmp_path / "during.png", out / "during.png")  # a rig's atomic write
            assert wait_for(lambda: reader.workspace.count() == 2, timeout=30), "the new file was not taken"
        proc.send_signal(stop)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "watching" in stderr
    assert "watch: 2 imported, 0 skipped as duplicates, 0 refused" in stdout
    with Vault.open(root) as vault:
        assert vault.workspace.count() == 2 and vault.verify().clean
    leftovers = [n for _d, _s, names in os.walk(root / WORKSPACE_BUCKET) for n in names if n.startswith(TEMP_PREFIX)]
    assert not leftovers
