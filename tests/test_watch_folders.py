"""The watcher against what a rig's output folder meets besides new files (a watch edge-case journey): folders
moved out and back, sub-folders appearing, writers that append in separate opens."""

from __future__ import annotations

import os
import struct
import time
import warnings
from pathlib import Path

import pytest
from conftest import mp4_bytes, without_dac_override
from test_watch import USER, Recorder, png_bytes, wait_for

from localvault import Vault, media
from localvault import watch as watch_module
from localvault.watch import Watcher


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


def test_a_folder_moved_out_and_back_is_watched_again_without_warnings(vault: Vault, out: Path,
                                                                       tmp_path: Path) -> None:
    """watchdog warned each time such a folder was watched again, with the repr of every watch in the text: the
    CLI kept them all until the watch ended (290 MiB after three moves of a 300-folder tree, 137 MB printed)."""
    (out / "day" / "a").mkdir(parents=True)
    seen = Recorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Watcher(vault, out, recursive=True, on_event=seen):
            for _ in range(2):
                os.rename(out / "day", tmp_path / "away")
                time.sleep(0.3)
                os.rename(tmp_path / "away", out / "day")
                time.sleep(0.3)
            (out / "day" / "a" / "x.png").write_bytes(png_bytes(tmp_path, 3))
            assert wait_for(lambda: seen.names("imported") == ["x.png"])
    assert [str(w.message)[:60] for w in caught if "watch" in str(w.message)] == []


def _open_ended_mp4() -> bytes:
    """A movie whose last box, its media data, is of size 0: "to the end of the file", however long it grows."""
    movie, offset, boxes = mp4_bytes(5), 0, []
    while offset < len(movie):
        size = struct.unpack(">I", movie[offset:offset + 4])[0]
        boxes.append(movie[offset:offset + size])
        offset += size
    return b"".join(box for box in boxes if box[4:8] != b"mdat") + struct.pack(">I4s", 0, b"mdat")


def test_an_mp4_appended_to_in_separate_opens_is_taken_once_whole(vault: Vault, out: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each close left a whole file by its bytes (its media data runs to the end), so each was taken after the
    quiet wait: 50 chunks made 50 assets, 49 of them cut short. It now waits for the file to stop changing."""
    monkeypatch.setattr(watch_module, "GIVE_UP_SECONDS", 1.5)
    seen = Recorder()
    path = out / "clip.mp4"
    path.write_bytes(_open_ended_mp4())
    with Watcher(vault, out, on_event=seen, poll_seconds=0.05):
        for chunk in range(5):
            time.sleep(0.4)
            with open(path, "ab") as handle:
                handle.write(bytes([chunk]) * 20_000)
        assert wait_for(lambda: seen.names("imported") == ["clip.mp4"])
        time.sleep(0.5)
    (asset,) = vault.workspace.list().items
    assert asset.file_size_bytes == path.stat().st_size and seen.names("imported") == ["clip.mp4"]


def test_an_open_ended_mp4_is_not_whole_to_the_watcher_but_imports(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(_open_ended_mp4() + bytes(1000))
    assert not media.looks_finished(path)
    assert media.check_source(path)[0] is media.MediaType.mp4


def test_a_sub_folder_made_during_a_watch_that_is_not_recursive_is_said_to_be_not_watched(vault: Vault, out: Path,
                                                                                          tmp_path: Path) -> None:
    """A1111's folder of the day, made after the watch started, without --recursive: its files were never taken
    and nothing said so (a folder there at the start was counted, and named in a warning)."""
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, poll_seconds=0.05) as watcher:
        (out / "2026-11-28").mkdir()
        (out / "2026-11-28" / "a.png").write_bytes(png_bytes(tmp_path, 4))
        (out / ".partial").mkdir()  # (hidden: never a rig's folder)
        assert wait_for(lambda: seen.names("folder_not_entered") == ["2026-11-28"])
        time.sleep(0.3)
    assert watcher.report.folders_not_entered == 1 and seen.names("imported") == []
    assert seen.names("folder_not_entered") == ["2026-11-28"]


def test_a_sub_folder_inotify_could_not_watch_is_listed_instead(vault: Vault, out: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A folder another user made 0700 when it appeared in a recursive watch got no inotify watch, and watchdog
    said nothing (as when the per-user watch limit is reached): its files were never taken, even once the folder
    was opened up. It is named in a warning, then listed now and then: its files are taken."""
    from localvault import _watch_coverage

    monkeypatch.setattr(_watch_coverage, "LIST_SECONDS", 0.2)
    batch = tmp_path / "elsewhere" / "batch"
    batch.mkdir(parents=True)
    (batch / "a.png").write_bytes(png_bytes(tmp_path, 5))
    os.chown(batch, 65534, 65534)  # (nobody's)
    os.chmod(batch, 0o700)
    seen = Recorder()
    with without_dac_override():  # (the watcher's threads, started here, obey file modes; this one not after)
        watcher = Watcher(vault, out, recursive=True, on_event=seen, poll_seconds=0.05).start()
    try:
        os.rename(batch, out / "batch")
        assert wait_for(lambda: "could not be watched" in caplog.text)
        os.chmod(out / "batch", 0o755)
        assert wait_for(lambda: seen.names("imported") == ["a.png"])
    finally:
        watcher.stop()
    assert str(out / "batch") in caplog.text
