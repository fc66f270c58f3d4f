"""The import's worker processes (localvault._examiners): same results as threads, and their failures handled.

test_import.py runs every import test both ways; this file checks what is
particular to the processes: that they are used, that a worker dying or
failing to start never loses a file, and that workers ignore Ctrl-C and
exit with their import.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from test_import import USER, a1111, make_png, rig_folder

from localvault import Vault, importer
from localvault._examiners import ExaminerProcesses, WorkerSetup, WorkerStartError
from localvault._intake import Candidate, scan
from localvault.errors import StorageError
from localvault.files import TEMP_PREFIX, WORKSPACE_BUCKET
from localvault.importer import IN_MEMORY_BYTES


def temp_files(vault: Vault) -> list[str]:
    return [n for _d, _s, names in os.walk(vault.root / WORKSPACE_BUCKET) for n in names if n.startswith(TEMP_PREFIX)]


def layout(vault: Vault, result: importer.ImportReport) -> list[tuple[str, ...]]:
    rows = []
    for item in result.imported:
        asset = vault.workspace.get(item.asset_id)
        rows.append((Path(item.source).name, item.job_id, str(item.asset_index), asset.temp_storage_path,
                     str(asset.generation_seed), asset.original_prompt, asset.model_used,
                     json.dumps(asset.generation_settings, sort_keys=True), str(asset.width)))
    return rows


def mixed_folder(folder: Path) -> None:
    """The rig folder, plus a sidecar, a broken PNG, and a copy of a file (a duplicate within the folder)."""
    rig_folder(folder)
    (folder / "photo.json").write_text(json.dumps({"prompt": "from a sidecar", "seed": 77}))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "zcopy.png").write_bytes((folder / "00001.png").read_bytes())
    os.utime(folder / "zcopy.png", (1_800_000_000,) * 2)


def test_processes_give_the_same_vault_as_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mixed_folder(tmp_path / "out")
    started: list[int] = []
    real_init = ExaminerProcesses.__init__

    def counting(self: ExaminerProcesses, count: int, setup: WorkerSetup) -> None:
        started.append(count)
        real_init(self, count, setup)

    monkeypatch.setattr(ExaminerProcesses, "__init__", counting)
    outcomes = {}
    for name, minimum in (("threads", 10**9), ("processes", 1)):
        monkeypatch.setattr(importer, "PROCESS_MIN_FILES", minimum)
        with Vault.create(tmp_path / name, user_id=USER) as vault:
            result = vault.workspace.import_folder(tmp_path / "out", workers=2)
            again = vault.workspace.import_folder(tmp_path / "out", workers=2)
            assert not again.imported and len(again.duplicates) == 8
            assert temp_files(vault) == [] and vault.verify().clean
            outcomes[name] = (layout(vault, result), sorted(Path(p).name for p in result.duplicates),
                              {Path(p).name: reason for p, reason in result.refused.items()})
    assert started == [2, 2]  # both imports of the second vault used two worker processes
    assert outcomes["processes"] == outcomes["threads"]
    rows, duplicates, refused = outcomes["processes"]
    assert len(rows) == 7 and duplicates == ["zcopy.png"] and list(refused) == ["broken.png"]


def test_workers_that_cannot_start_leave_the_import_to_threads(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rig_folder(tmp_path / "out")
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(importer, "CHUNK_FILES", 2)  # several chunks are sent before the failure is known
    # A "Python" that exits at once: the workers start, then never say they are ready.
    fake = tmp_path / "python3-broken"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        result = vault.workspace.import_folder(tmp_path / "out", workers=2)
        assert len(result.imported) == 7 and not result.refused
        assert temp_files(vault) == [] and vault.verify().clean


def test_a_frozen_app_imports_with_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig_folder(tmp_path / "out")
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(WorkerStartError):
        ExaminerProcesses(2, WorkerSetup(str(tmp_path), str(tmp_path / "db"), USER, "copy", 1, None, None))
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        assert len(vault.workspace.import_folder(tmp_path / "out", workers=2).imported) == 7


def setup_for(vault: Vault) -> WorkerSetup:
    return WorkerSetup(vault.files.root, str(vault.db.path), vault.user_id, "copy", IN_MEMORY_BYTES, None, None)


def test_a_dead_worker_fails_its_chunk_only_and_is_replaced(tmp_path: Path) -> None:
    rig_folder(tmp_path / "out")
    candidates = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault, ExaminerProcesses(1, setup_for(vault)) as workers:
        first = workers.submit(candidates[:2]).result()
        assert all(e.staged is not None for e in first)  # type: ignore[union-attr]
        os.kill(workers._workers[0].proc.pid, signal.SIGKILL)  # the fault: a worker dies (a crashing decoder, the OOM killer)
        with pytest.raises(StorageError, match="stopped"):
            workers.submit(candidates[2:4]).result()
        later = workers.submit(candidates[4:]).result()
        assert [e.candidate.path for e in later] == [c.path for c in candidates[4:]]  # type: ignore[union-attr]
        assert all(e.staged is not None for e in later)  # type: ignore[union-attr]
        for examined in [*first, *later]:
            vault.files.discard(examined.staged)  # type: ignore[union-attr,arg-type]


def test_a_workers_reply_carries_the_settings_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ComfyUI graph (often 100s of KB) travels back as the row's JSON only, yet the row keeps all of it."""
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1)
    out = tmp_path / "out"
    out.mkdir()
    graph = {str(i): {"class_type": "Note", "inputs": {"text": f"note {i} " + "x" * 1000}} for i in range(200)}
    graph["1"] = {"class_type": "KSampler", "inputs": {"seed": 5, "positive": ["2", 0], "negative": ["2", 0]}}
    graph["2"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a moth"}}
    make_png(out / "comfy.png", text_chunks={"prompt": json.dumps(graph)})
    candidates = scan(out).candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        with ExaminerProcesses(1, setup_for(vault)) as workers:
            (examined,) = workers.submit(candidates).result()
            assert examined.info.settings == {} and examined.info.prompt == "a moth"  # type: ignore[union-attr]
            assert json.loads(examined.values[3])["comfyui_prompt"] == graph  # type: ignore[union-attr,index]
            vault.files.discard(examined.staged)  # type: ignore[union-attr,arg-type]
        (item,) = vault.workspace.import_folder(out).imported
        asset = vault.workspace.get(item.asset_id)
        assert asset.generation_settings["comfyui_prompt"] == graph and asset.generation_seed == 5


def test_the_importer_refuses_a_dead_workers_files_and_goes_on(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rig_folder(tmp_path / "out")
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(importer, "CHUNK_FILES", 2)
    real_submit = ExaminerProcesses.submit
    calls: list[int] = []

    def dying_once(self: ExaminerProcesses, files: list) -> Future:  # type: ignore[type-arg]
        calls.append(len(files))
        if len(calls) == 2:  # the fault a SIGKILL'd worker causes, at a chosen chunk
            failed: Future = Future()  # type: ignore[type-arg]
            failed.set_exception(StorageError("the import worker process examining these files stopped"))
            return failed
        return real_submit(self, files)

    monkeypatch.setattr(ExaminerProcesses, "submit", dying_once)
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        result = vault.workspace.import_folder(tmp_path / "out", workers=2)
        assert len(result.imported) == 5 and len(result.refused) == 2
        assert all("stopped" in reason for reason in result.refused.values())
        assert temp_files(vault) == []
        again = vault.workspace.import_folder(tmp_path / "out", workers=2)  # importing again takes the two
        assert len(again.imported) == 2 and len(again.duplicates) == 5


def test_workers_ignore_ctrl_c_and_exit_with_their_import(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    make_png(tmp_path / "out" / "a.png", text_chunks=a1111("a fox", 1))
    make_png(tmp_path / "out" / "b.png", text_chunks=a1111("a fox", 2), color=2)
    candidates = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        workers = ExaminerProcesses(1, setup_for(vault))
        (proc,) = [w.proc for w in workers._workers]
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # a terminal's Ctrl-C does not reach it
        first = workers.submit(candidates[:1]).result()
        os.kill(proc.pid, signal.SIGINT)  # nor does one sent to it
        second = workers.submit(candidates[1:]).result()
        for examined in [*first, *second]:
            assert examined.staged is not None  # type: ignore[union-attr]
            vault.files.discard(examined.staged)  # type: ignore[union-attr,arg-type]
        workers.close()
        assert proc.returncode == 0 and temp_files(vault) == []


def user_temp_files(vault: Vault) -> list[str]:
    return [n for n in os.listdir(vault.root / WORKSPACE_BUCKET / USER) if n.startswith(TEMP_PREFIX)]


def slow_to_hash(path: Path, size: int = 512 * 1024 * 1024) -> Path:
    """A PNG holding, after its image data, an ancillary chunk of ``size`` zero bytes (a sparse file: no disk
    space): checking it is quick (an ancillary chunk's CRC is not checked), hashing it keeps a worker busy for a
    second or more."""
    small = make_png(path.with_name("small.png")).read_bytes()
    path.with_name("small.png").unlink()
    with open(path, "wb") as out:
        out.write(small[:-12] + size.to_bytes(4, "big") + b"hoLe")
        out.seek(size, os.SEEK_CUR)  # the chunk's data: a hole
        out.write(bytes(4) + small[-12:])  # its CRC, then the IEND chunk
    return path


def test_a_worker_killed_mid_chunk_leaves_no_staged_file(tmp_path: Path) -> None:
    rig_folder(tmp_path / "out")
    big = slow_to_hash(tmp_path / "out" / "held.png")  # the worker is still hashing it when killed
    candidates = scan(tmp_path / "out").candidates
    candidates = [c for c in candidates if c.path != str(big)]
    chunk = [*candidates[:3], Candidate(str(big), big.stat().st_size, 0.0), *candidates[3:5]]
    with Vault.create(tmp_path / "v", user_id=USER) as vault, ExaminerProcesses(1, setup_for(vault)) as workers:
        future = workers.submit(chunk)
        deadline = time.monotonic() + 30
        while len(user_temp_files(vault) if (vault.root / WORKSPACE_BUCKET / USER).exists() else []) < 3:
            assert time.monotonic() < deadline, "the worker never staged the first files"
            time.sleep(0.05)
        os.kill(workers._workers[0].proc.pid, signal.SIGKILL)
        with pytest.raises(StorageError, match="stopped"):
            future.result(timeout=30)
        assert user_temp_files(vault) == []  # the chunk's staged files are removed with it
        (examined,) = workers.submit(candidates[5:6]).result(timeout=30)  # a new worker took its place
        assert examined.staged is not None  # type: ignore[union-attr]
        vault.files.discard(examined.staged)  # type: ignore[union-attr,arg-type]


def test_a_worker_that_cannot_be_replaced_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localvault import _examiners

    rig_folder(tmp_path / "out")
    candidates = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault, ExaminerProcesses(1, setup_for(vault)) as workers:
        for examined in workers.submit(candidates[:1]).result(timeout=30):
            vault.files.discard(examined.staged)  # type: ignore[union-attr,arg-type]
        os.kill(workers._workers[0].proc.pid, signal.SIGKILL)

        def no_more_processes(*args: object, **kwargs: object) -> None:
            raise OSError(11, "Resource temporarily unavailable")  # the fault: fork fails (EAGAIN)

        monkeypatch.setattr(_examiners.subprocess, "Popen", no_more_processes)
        with pytest.raises(StorageError, match="stopped"):
            workers.submit(candidates[1:2]).result(timeout=30)
        with pytest.raises(WorkerStartError):  # at once, not a wait for a worker that will never come
            workers.submit(candidates[2:3]).result(timeout=30)


def test_ctrl_c_while_the_first_chunks_are_sent_leaves_nothing(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rig_folder(tmp_path / "out")
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(importer, "CHUNK_FILES", 1)
    pools: list[ExaminerProcesses] = []
    real_init = ExaminerProcesses.__init__

    def recording(self: ExaminerProcesses, count: int, setup: WorkerSetup) -> None:
        real_init(self, count, setup)
        pools.append(self)

    monkeypatch.setattr(ExaminerProcesses, "__init__", recording)
    candidates = scan(tmp_path / "out").candidates

    def interrupted():  # type: ignore[no-untyped-def]
        yield from candidates[:4]
        raise KeyboardInterrupt  # a Ctrl-C landing while the import hands out its first chunks

    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        with importer.Importer(vault.db, vault.files, USER, workers=2) as running, pytest.raises(KeyboardInterrupt):
            running.import_candidates(interrupted(), total=len(candidates))
        assert pools and all(w.proc.returncode is not None for pool in pools for w in pool._workers) is True
        assert temp_files(vault) == [] and vault.workspace.count() == 0


def test_a_second_ctrl_c_during_the_cleanup_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleanup waits for the chunks under way; a second Ctrl-C landing then must not skip their files."""
    rig_folder(tmp_path / "out")
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(importer, "CHUNK_FILES", 1)
    first_ctrl_c_given, second_given = [False], [False]
    real_run = ExaminerProcesses._run

    def run_then_ctrl_c(self: ExaminerProcesses, files: list[Candidate]) -> list[object]:
        results = real_run(self, files)
        if first_ctrl_c_given[0] and not second_given[0]:
            second_given[0] = True  # the user presses Ctrl-C again while the import cleans up after the first
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # (the importing thread, waiting for these results, takes it now)
        return results  # type: ignore[return-value]

    monkeypatch.setattr(ExaminerProcesses, "_run", run_then_ctrl_c)
    candidates = scan(tmp_path / "out").candidates

    def interrupted():  # type: ignore[no-untyped-def]
        yield from candidates[:4]
        first_ctrl_c_given[0] = True
        raise KeyboardInterrupt

    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        with importer.Importer(vault.db, vault.files, USER, workers=2) as running, pytest.raises(KeyboardInterrupt):
            running.import_candidates(interrupted(), total=len(candidates))
        assert second_given[0]
        assert temp_files(vault) == [] and vault.workspace.count() == 0


def test_a_module_in_the_current_folder_does_not_shadow_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    rig_folder(tmp_path / "out")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "queue.py").write_text("raise SystemExit(7)\n")  # a user's script folder may hold anything
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1)
    with Vault.create(tmp_path / "v", user_id=USER) as vault, caplog.at_level("WARNING"):
        result = vault.workspace.import_folder(tmp_path / "out", workers=2)
    assert len(result.imported) == 7
    assert "threads instead" not in caplog.text  # the workers ran



def test_commit_makes_a_job_folder_removed_under_it(tmp_path: Path) -> None:
    """Another import's discard prunes empty job folders; a file staged in the user's folder still lands."""
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        staged = vault.files.stage_data(b"bytes", "0" * 64, WORKSPACE_BUCKET, USER, sync=False)
        os.makedirs(vault.root / WORKSPACE_BUCKET / USER / "job")
        os.rmdir(vault.root / WORKSPACE_BUCKET / USER / "job")  # the other import's prune
        vault.files.commit(staged, f"{USER}/job/0.png")
        assert (vault.root / WORKSPACE_BUCKET / USER / "job" / "0.png").read_bytes() == b"bytes"


def test_workers_keep_freed_file_buffers_unless_the_caller_says_otherwise(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")  # the caller's own setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        workers = ExaminerProcesses(1, setup_for(vault))
        try:
            (proc,) = [w.proc for w in workers._workers]
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
                           if b"=" in item)
        finally:
            workers.close()
    assert environ[b"MALLOC_MMAP_THRESHOLD_"] == str(16 * 1024 * 1024).encode()  # above IN_MEMORY_BYTES
    assert int(environ[b"MALLOC_MMAP_THRESHOLD_"]) > IN_MEMORY_BYTES
    assert environ[b"MALLOC_TRIM_THRESHOLD_"] == b"12345"


def test_an_import_stopped_by_sigterm_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    """`timeout`, `kill` or a service manager stop an import with SIGTERM: it must leave no temporary file (it
    died at once, leaving hundreds that nothing but `verify --repair`, an hour later, removed)."""
    import subprocess

    out = tmp_path / "out"
    out.mkdir()
    for i in range(1500):
        make_png(out / f"{i:05d}.png", text_chunks=a1111("a fox", i), color=i)
    vault_path = tmp_path / "v"
    Vault.create(vault_path, user_id=USER).close()
    user_folder = vault_path / WORKSPACE_BUCKET / USER
    proc = subprocess.Popen([sys.executable, "-m", "localvault", "--vault", str(vault_path), "import", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # once files are being staged
        if user_folder.is_dir() and any(e.name.startswith(TEMP_PREFIX) for e in os.scandir(user_folder)):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the import ended before a file was staged; make the folder bigger"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"interrupted" in err
    assert b"run the same import again for the rest" in err  # what the stop kept, and what to do
    told = re.search(rb"interrupted: ([\d,]+) file\(s\) committed before the stop are in the vault", err)
    assert told is not None, err
    with Vault.open(vault_path) as vault:
        assert temp_files(vault) == []
        result = vault.verify()
        assert not result.orphans and not result.missing and vault.workspace.count() < 1500
        assert int(told.group(1).replace(b",", b"")) == vault.workspace.count()  # how many, told right


def test_a_workers_chunk_stops_at_its_next_file_once_its_import_is_dead(tmp_path: Path) -> None:
    """A worker noticed its import's death only when the chunk under way was done: up to 16 files, 1.5 GiB staged
    for nobody after a SIGKILL in a large-file journey. It now asks before each file whether it was given another
    parent (measured with the journey's script: gone 0.2 s after the kill, 102 MiB staged, against 6.9 s and
    1,452 MiB)."""
    from localvault._examiners import _KnownHashes, examine_chunk

    rig_folder(tmp_path / "out")
    candidates = scan(tmp_path / "out").candidates
    asked: list[bool] = []

    def orphaned() -> bool:
        asked.append(True)
        return len(asked) > 1  # (the import dies while the first file is staged)

    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        known = _KnownHashes(str(vault.db.path), USER)
        results = examine_chunk("t", candidates[:4], known, vault.files, setup_for(vault), orphaned)
        assert len(candidates) >= 4 and len(results) == 1 and len(asked) == 2
        vault.files.discard(results[0].staged)  # type: ignore[union-attr,arg-type]
