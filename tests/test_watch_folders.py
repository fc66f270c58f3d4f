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
from test_watch import Recorder, cli_watch, png_bytes, wait_for

from localvault import Vault, media
from localvault import watch as watch_module
from localvault.watch import Watcher


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


def test_a_watch_past_the_inotify_watch_limit_still_takes_every_file(tmp_path: Path, out: Path) -> None:
    """The real limit: `localvault watch --recursive` in a user namespace of its own whose inotify watches are
    capped at 3, over a tree of 8 day folders. watchdog could not watch most of them and said nothing: 99 of 300
    files were taken in a journey's run. Now a warning names them, and every file is taken."""
    import json
    import signal
    import threading

    from conftest import USER_A

    root = tmp_path / "vault"
    Vault.create(root, user_id=USER_A).close()
    days = [out / f"2026-11-{day:02d}" for day in range(20, 28)]
    for day in days:
        day.mkdir()
    cap = 'echo 3 > /proc/sys/user/max_inotify_watches && exec "$@"'
    errors: list[str] = []
    with cli_watch(root, out, "--recursive", "--json",
                   prefix=("unshare", "--user", "--map-root-user", "sh", "-c", cap, "sh")) as proc:
        reader = threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True)
        reader.start()
        assert wait_for(lambda: any("watching" in line for line in errors), timeout=60), \
            f"the watch did not start (is `unshare --user` allowed here?): {errors}"
        for number, day in enumerate(days):
            (day / "image.png").write_bytes(png_bytes(tmp_path, 10 + number))
        (out / "2026-11-28").mkdir()  # a folder new to the watch, past the limit too
        (out / "2026-11-28" / "image.png").write_bytes(png_bytes(tmp_path, 30))
        with Vault.open(root, readonly=True) as reader_vault:
            assert wait_for(lambda: reader_vault.workspace.count() == len(days) + 1, timeout=30)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
        reader.join(10)
    assert proc.returncode == 0, errors
    assert any("could not be watched" in line and "max_user_watches" in line for line in errors), errors
    assert json.loads(stdout.splitlines()[-1])["summary"]["imported"] == len(days) + 1


@pytest.fixture
def no_watch_for_nowatch_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify_add_watch answers ENOSPC (the watch limit) for a folder named nowatch*, which watchdog swallows: the
    limit for chosen folders, in this process (the real limit is the test above's, in a process of its own)."""
    import errno

    from watchdog.observers import inotify_c

    from localvault import _watch_coverage

    real = inotify_c.InotifyFD.add_callback

    def add_callback(self: inotify_c.InotifyFD, path: bytes, *args: object) -> object:
        if os.path.basename(path).startswith(b"nowatch"):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real(self, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(inotify_c.InotifyFD, "add_callback", add_callback)
    monkeypatch.setattr(_watch_coverage, "LIST_SECONDS", 0.2)


def test_a_file_made_in_a_folder_without_a_watch_during_the_catch_up_is_taken(
        vault: Vault, out: Path, tmp_path: Path, no_watch_for_nowatch_folders: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The folders without a watch were first listed after the catch-up's imports: a file the rig wrote there
    meanwhile counted as listed already, and was never taken (a review)."""
    from localvault.importer import Importer

    (out / "nowatch1").mkdir()
    (out / "backlog.png").write_bytes(png_bytes(tmp_path, 2))
    real = Importer.import_paths
    made: list[bool] = []

    def rig_writes_meanwhile(self: Importer, paths: list[str], *args: object) -> object:
        if not made:
            made.append(True)
            (out / "nowatch1" / "during.png").write_bytes(png_bytes(tmp_path, 3))
        return real(self, paths, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Importer, "import_paths", rig_writes_meanwhile)
    seen = Recorder()
    with Watcher(vault, out, recursive=True, on_event=seen, poll_seconds=0.05, stable_seconds=0.2):
        assert wait_for(lambda: "during.png" in seen.names("imported"))
    assert sorted(seen.names("imported")) == ["backlog.png", "during.png"]


def test_the_watches_are_checked_again_after_events_were_lost(vault: Vault, out: Path, tmp_path: Path,
                                                            no_watch_for_nowatch_folders: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder made while the kernel's queue overflowed: its event lost, and no watch for it. The catch-up took
    what it held then, but its later files were never taken (a review)."""
    from localvault._watch_intake import Intake

    seen = Recorder()
    with Watcher(vault, out, recursive=True, on_event=seen, poll_seconds=0.05, stable_seconds=0.2) as watcher:
        with monkeypatch.context() as lost:
            lost.setattr(Intake, "folder_appeared", lambda self, path: None)  # its event lost with the others
            (out / "nowatch2").mkdir()
            (out / "nowatch2" / "first.png").write_bytes(png_bytes(tmp_path, 4))
            time.sleep(0.3)
        watcher._intake.overflowed.set()  # (what the overflow's log record sets)
        assert wait_for(lambda: "first.png" in seen.names("imported"))
        (out / "nowatch2" / "second.png").write_bytes(png_bytes(tmp_path, 5))
        assert wait_for(lambda: "second.png" in seen.names("imported"))


def test_listing_the_folders_watched_is_no_event(vault: Vault, out: Path) -> None:
    """Every event was asked of inotify, opens and closes without a write too: each listing of a folder (a
    catch-up's scan, a check of the watches) queued four in the kernel, and a tree of 6,000 folders overflowed its
    queue again and again, each overflow's catch-up listing it all anew (a review). What each watch asks of
    inotify is in /proc/self/fdinfo."""
    in_open, in_close_nowrite = 0x20, 0x10
    for day in range(5):
        (out / f"day{day}").mkdir()
    folders = {os.stat(folder).st_ino for folder in (out, *out.iterdir())}
    with Watcher(vault, out, recursive=True, poll_seconds=0.05):
        masks = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                        if line.startswith("inotify wd:"):
                            fields = dict(field.split(":", 1) for field in line.split()[1:])
                            masks[int(fields["ino"], 16)] = int(fields["mask"], 16)
            except OSError:
                continue
    assert folders <= masks.keys()
    assert [hex(masks[ino]) for ino in folders if masks[ino] & (in_open | in_close_nowrite)] == []


def test_a_sub_folder_not_entered_is_counted_once_however_often_it_is_met(vault: Vault, out: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each catch-up (after an overflow, or the folder's return) counted every sub-folder of a watch that is not
    recursive again, and one made while the watch started was counted by its event and by the first catch-up:
    the summary's folders_not_entered grew with every overflow."""
    import threading

    from localvault import _watch_handler

    (out / "2026-11-27").mkdir()
    seen = Recorder()
    deaf = threading.Event()
    real_dispatch = _watch_handler.EventHandler.dispatch
    monkeypatch.setattr(_watch_handler.EventHandler, "dispatch",
                        lambda self, event: None if deaf.is_set() else real_dispatch(self, event))
    with Watcher(vault, out, on_event=seen, poll_seconds=0.05) as watcher:
        (out / "2026-11-28").mkdir()
        assert wait_for(lambda: seen.names("folder_not_entered") == ["2026-11-28"])
        for n in range(3):  # three overflows, each caught up: the file whose event was lost shows it is done
            deaf.set()
            (out / f"lost{n}.png").write_bytes(png_bytes(tmp_path, 20 + n))
            time.sleep(0.2)
            deaf.clear()
            watcher._intake.overflowed.set()  # (what the overflow's log record sets)
            assert wait_for(lambda n=n: f"lost{n}.png" in seen.names("imported"))
        assert watcher.report.folders_not_entered == 2
    assert seen.names("folder_not_entered") == ["2026-11-28"]
