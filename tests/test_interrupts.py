"""Ctrl-C at the edges of a transaction.

Python raises a KeyboardInterrupt for a SIGINT only between bytecodes: one
that arrives while SQLite runs COMMIT (its fsync is the slowest step, so the
likeliest moment) is raised just after COMMIT returned, and one that arrives
during BEGIN just after it. The exact moment cannot be hit with a real signal
on demand, so the connection is wrapped to raise it there.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import USER_A, write_media

from localvault import StorageError, Vault


class Hooked:
    """The vault's connection, with ``before(sql)`` run before each statement and ``after(sql)`` after it
    (a hook may raise: the fault being simulated)."""

    def __init__(self, conn: sqlite3.Connection, before: Callable[[str], None] | None,
                 after: Callable[[str], None] | None) -> None:
        self._conn = conn
        self._before = before
        self._after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if self._before is not None:
            self._before(sql)
        result = self._conn.execute(sql, *args)
        if self._after is not None:
            self._after(sql)
        return result


@contextmanager
def hooked(vault: Vault, *, before: Callable[[str], None] | None = None,
           after: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hook this vault's connections, in every thread (an import commits in a thread of its own)."""
    db = vault.db
    original = type(db)

    class HookedDatabase(original):  # type: ignore[valid-type,misc]
        @property
        def conn(self) -> Any:
            return Hooked(original.conn.fget(self), before, after)  # type: ignore[attr-defined]

    db.__class__ = HookedDatabase
    try:
        yield
    finally:
        db.__class__ = original


class Once:
    """A hook that runs ``action`` the first time ``statement`` comes."""

    def __init__(self, statement: str, action: Callable[[], object]) -> None:
        self.statement = statement
        self.action = action
        self.fired = False
        self.rows_written = False  # in the transaction under way: more than a write's note (_write_intents)

    def __call__(self, sql: str) -> None:
        # A COMMIT is the one of a transaction that writes rows, not of the note taken before it.
        if sql == self.statement and not self.fired and (sql != "COMMIT" or self.rows_written):
            self.fired = True
            self.action()
        elif sql.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.rows_written = False
        elif not sql.startswith("INSERT INTO write_intents"):
            self.rows_written = True


def _raise(error: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise error
    return action


def interrupted(vault: Vault, statement: str, action: Callable[[], object]) -> None:
    """Run ``action`` with a Ctrl-C landing right after ``statement``."""
    ctrl_c = Once(statement, _raise(KeyboardInterrupt()))
    with hooked(vault, after=ctrl_c), pytest.raises(KeyboardInterrupt):
        action()
    assert ctrl_c.fired


def failing_commit(vault: Vault, after_rollback: Callable[[], object]) -> Any:
    """The vault's next COMMIT fails (a full disk); ``after_rollback`` runs once the transaction is rolled
    back: what another process may do in that moment."""
    return hooked(vault, before=Once("COMMIT", _raise(sqlite3.OperationalError("database or disk is full"))),
                  after=Once("ROLLBACK", after_rollback))


def rows_and_files(vault: Vault) -> list[tuple[str, bool]]:
    """(table, whether its file exists) of every row of both tables."""
    found = [("workspace_assets", Path(vault.workspace.file_path(a)).is_file()) for a in vault.workspace.list().items]
    found += [("user_library", Path(vault.library.file_path(a)).is_file()) for a in vault.library.list().items]
    return found


def test_a_ctrl_c_during_commit_keeps_the_committed_rows_file(vault: Vault, make_image: Callable[..., Path]) -> None:
    """Before: the add's error path removed the file of the row COMMIT had just made durable."""
    interrupted(vault, "COMMIT", lambda: vault.workspace.add(make_image(seed=1), seed=1, model="m"))
    assert rows_and_files(vault) == [("workspace_assets", True)]

    kept = vault.workspace.list().items[0]
    interrupted(vault, "COMMIT", lambda: vault.library.save(kept.id, title="kept"))
    interrupted(vault, "COMMIT", lambda: vault.library.add(make_image(seed=2), title="added"))
    assert sorted(rows_and_files(vault)) == [("user_library", True), ("user_library", True),
                                             ("workspace_assets", True)]
    assert vault.verify(check_hashes=True).clean


def test_a_ctrl_c_during_an_import_batchs_commit_keeps_its_files(vault: Vault, tmp_path: Path) -> None:
    folder = tmp_path / "rig"
    for seed in range(3):
        write_media(folder, seed=seed)
    interrupted(vault, "COMMIT", lambda: vault.workspace.import_folder(folder, workers=1))
    assert rows_and_files(vault) == [("workspace_assets", True)] * 3
    assert vault.verify(check_hashes=True).clean


def test_a_ctrl_c_just_before_commit_rolls_back(vault: Vault, make_image: Callable[..., Path]) -> None:
    """Before: the transaction stayed open, holding the write lock, and the add kept its file for a row that
    the next write of this vault then rolled back."""
    with hooked(vault, before=Once("COMMIT", _raise(KeyboardInterrupt()))), pytest.raises(KeyboardInterrupt):
        vault.workspace.add(make_image(seed=1))
    assert not vault.db.conn.in_transaction
    assert rows_and_files(vault) == [] and vault.verify().clean


def test_a_ctrl_c_during_begin_leaves_no_transaction_open(vault: Vault, tmp_path: Path) -> None:
    """Before: the transaction stayed open, every later write of this vault failed and other processes
    waited for its lock until their busy timeout."""
    interrupted(vault, "BEGIN IMMEDIATE", lambda: vault.collections.create("first"))
    assert not vault.db.conn.in_transaction
    vault.collections.create("second")  # this vault writes on
    with Vault.open(vault.root, user_id=USER_A) as other:  # and the lock is free for another connection
        other.db.conn.execute("PRAGMA busy_timeout = 0")
        other.collections.create("third")
    assert [c.name for c in vault.collections.list()] == ["second", "third"]


def test_a_failed_add_never_removes_the_file_another_process_committed_on_its_path(
        vault: Vault, make_image: Callable[..., Path]) -> None:
    """B renames its file to job J's index 0, its COMMIT fails and rolls back; C adds to job J at once, gets
    index 0 too and commits. B's clean-up used to unlink C's committed file."""
    job = "5a5a5a5a-0000-4000-8000-00000000005a"
    theirs: list[str] = []
    with Vault.open(vault.root, user_id=USER_A) as other, failing_commit(vault, lambda: theirs.append(
            other.workspace.add(make_image(seed=2), job_id=job).temp_storage_path)):
        with pytest.raises(StorageError, match="full"):
            vault.workspace.add(make_image(seed=1), job_id=job)
    assert theirs == [f"{USER_A}/{job}/0.png"]
    assert rows_and_files(vault) == [("workspace_assets", True)]
    assert vault.verify(check_hashes=True).clean


def test_verify_does_not_call_a_file_committed_meanwhile_an_orphan(vault: Vault,
                                                                   make_image: Callable[..., Path]) -> None:
    """A writer renamed its file in, verify listed it, and the row committed only after verify's re-check:
    'orphan', and a vault reported damaged (a second verify was clean). The writer starts once verify has
    begun (its first progress event: after its own start-up write, before it lists the files)."""
    committing = threading.Event()

    def slow_commit() -> None:
        committing.set()
        time.sleep(1.0)

    with Vault.open(vault.root, user_id=USER_A) as writer, hooked(writer, before=Once("COMMIT", slow_commit)):
        adding = threading.Thread(target=lambda: writer.workspace.add(make_image(seed=1)))

        def start_the_writer(_event: object) -> None:
            if not adding.is_alive() and not committing.is_set():
                adding.start()
                assert committing.wait(30)

        try:
            report = vault.verify(progress=start_the_writer)
        finally:
            if adding.is_alive():
                adding.join(30)
    assert committing.is_set()
    assert report.orphans == [] and report.clean and vault.workspace.count() == 1


def add_while_another_takes_the_lock(vault: Vault, source: Path, faults: Callable[[Callable[[], object]], Any],
                                     seconds: float) -> tuple[bool, BaseException | None]:
    """Add ``source`` in a thread under ``faults(take_lock)``, where ``take_lock`` makes another connection
    take the write lock (and hold it); whether the add ended within ``seconds``, and what it raised."""
    holder = sqlite3.connect(vault.root / "vault.db", isolation_level=None, check_same_thread=False)
    outcome: list[BaseException] = []

    def add() -> None:
        try:
            vault.workspace.add(source)
        except BaseException as exc:
            outcome.append(exc)

    with faults(lambda: holder.execute("BEGIN IMMEDIATE")):
        adding = threading.Thread(target=add)
        adding.start()
        adding.join(seconds)
        finished = not adding.is_alive()
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        adding.join()
    holder.close()
    return finished, outcome[0] if outcome else None


def test_undoing_a_failed_add_waits_for_the_lock_only_briefly(vault: Vault, make_image: Callable[..., Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The undo takes the write lock (to see whether a row took the path); another process holding it must not
    keep the failed call waiting the full 60 s again. The file then stays, noted: verify (as the next opening
    of the vault for writing) removes it."""
    from localvault import _write_intents, workspace

    monkeypatch.setattr(workspace, "UNDO_LOCK_WAIT_MS", 200)
    monkeypatch.setattr(_write_intents, "DROP_WAIT_MS", 200)
    finished, outcome = add_while_another_takes_the_lock(
        vault, make_image(seed=1), lambda take_lock: failing_commit(vault, take_lock), seconds=20)
    assert finished, "the failed add waited for the lock as long as a write would"
    assert isinstance(outcome, StorageError)
    with Vault.open(vault.root, readonly=True) as reader:  # (read-only: it cannot remove it)
        assert len(reader.verify().unsettled) == 1
    report = vault.verify()
    assert report.orphans == [] and report.clean and vault.workspace.count() == 0
    assert [p for p in (vault.root / "workspace-temp").rglob("*") if p.is_file()] == []


def test_a_failure_before_commit_removes_the_file_at_once(vault: Vault, make_image: Callable[..., Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while the row is inserted: the renamed file goes while the transaction still holds the lock, so
    another process that takes the lock right after the rollback neither delays the Ctrl-C nor keeps an orphan."""
    from localvault import workspace

    monkeypatch.setattr(workspace, "UNDO_LOCK_WAIT_MS", 30_000)

    def ctrl_c_at_insert(sql: str) -> None:
        if sql.startswith("INSERT INTO workspace_assets"):
            raise KeyboardInterrupt

    finished, outcome = add_while_another_takes_the_lock(
        vault, make_image(seed=1), lambda take_lock: hooked(vault, before=ctrl_c_at_insert,
                                                            after=Once("ROLLBACK", take_lock)), seconds=10)
    assert finished and isinstance(outcome, KeyboardInterrupt)
    report = vault.verify()
    assert report.clean and report.orphans == [] and vault.workspace.count() == 0


def test_a_failed_insert_after_sqlite_rolled_back_keeps_another_process_file(
        vault: Vault, make_image: Callable[..., Path]) -> None:
    """On a full disk SQLite rolls the transaction back by itself, releasing the lock before the error reaches
    us: another process may commit its own file on the path in between, which must then stay."""
    job = "6b6b6b6b-0000-4000-8000-00000000006b"
    real = vault.db.conn
    theirs: list[str] = []

    with Vault.open(vault.root, user_id=USER_A) as other:
        def full_disk_at_insert(sql: str) -> None:
            if sql.startswith("INSERT INTO workspace_assets") and not theirs:
                real.execute("ROLLBACK")  # what SQLite does on its own for SQLITE_FULL
                theirs.append(other.workspace.add(make_image(seed=2), job_id=job).temp_storage_path)
                raise sqlite3.OperationalError("database or disk is full")

        with hooked(vault, before=full_disk_at_insert), pytest.raises(StorageError, match="full"):
            vault.workspace.add(make_image(seed=1), job_id=job)
    assert theirs == [f"{USER_A}/{job}/0.png"]
    assert rows_and_files(vault) == [("workspace_assets", True)] and vault.verify(check_hashes=True).clean


@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("call", ["workspace.add", "library.add", "library.save"])
def test_a_fault_in_the_folder_fsync_after_the_rename_leaves_no_file(vault: Vault, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     fault: type[BaseException], call: str) -> None:
    """The file is in place, its folder's fsync fails (a disk error) or is cut by Ctrl-C, so the call fails
    and writes no row. Before: the renamed file stayed, an orphan (the caller only knew of its temp name)."""
    import os

    from conftest import bucket_files

    import localvault.files

    kept_ws = vault.workspace.add(write_media(tmp_path, "png", 1))
    before = bucket_files(vault.root)
    real = localvault.files.fsync_path

    def failing(path: Any) -> None:
        if os.path.isdir(path):  # the folder's fsync, after the rename
            raise fault(5, "Input/output error") if fault is OSError else fault()
        real(path)

    monkeypatch.setattr(localvault.files, "fsync_path", failing)
    action = {"workspace.add": lambda: vault.workspace.add(write_media(tmp_path, "png", 2)),
              "library.add": lambda: vault.library.add(write_media(tmp_path, "png", 3)),
              "library.save": lambda: vault.library.save(kept_ws.id)}[call]
    with pytest.raises(KeyboardInterrupt if fault is KeyboardInterrupt else StorageError):
        action()
    monkeypatch.undo()
    assert bucket_files(vault.root) == before
    assert vault.workspace.count() == 1 and vault.library.list().items == []
    assert vault.verify().clean


def test_a_single_add_makes_the_folders_it_may_have_made_durable(vault: Vault, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A new job's folder has its entry in the user's folder, and a new user's folder in the bucket's: each is
    fsynced before the row is committed (once only the job's folder was, so a power cut could keep the row
    and lose the folder)."""
    import localvault.files

    real, synced = localvault.files.fsync_path, []

    def recording(path: Any) -> None:
        synced.append(str(path).rstrip("/"))
        real(path)

    monkeypatch.setattr(localvault.files, "fsync_path", recording)
    asset = vault.workspace.add(write_media(tmp_path, "png", 4))
    kept = vault.library.add(write_media(tmp_path, "png", 5))
    workspace, library = vault.root / "workspace-temp", vault.root / "user-library"
    job = workspace / asset.temp_storage_path.rsplit("/", 1)[0]
    assert {str(job), str(job.parent), str(workspace)} <= set(synced)
    assert {str(library / kept.storage_path.split("/")[0]), str(library)} <= set(synced)


def test_a_ctrl_c_while_the_command_loads_ends_it_with_one_line() -> None:
    """A Ctrl-C in the command's first ~0.3 s (Python still importing it) printed a traceback. The entry point
    loads the command itself, and the package's own import holds nothing heavy (pydantic, the database)."""
    import json
    import subprocess
    import sys

    interrupted_while_loading = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'localvault.cli.app':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['localvault', 'ls', '--json']\n"
        "from localvault.cli import run\n"
        "run()\n")
    result = subprocess.run([sys.executable, "-c", interrupted_while_loading], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 130 and result.stderr == "error: interrupted\n", result.stderr
    assert json.loads(result.stdout) == {"error": {"message": "interrupted", "exit_code": 130, "kind": "Interrupted"}}
    light = subprocess.run([sys.executable, "-c", "import sys, localvault.cli; print(sorted(m for m in "
                            "('pydantic', 'sqlite3', 'click', 'localvault.models') if m in sys.modules))"],
                           capture_output=True, text=True, timeout=60)
    assert light.stdout.strip() == "[]", light.stdout + light.stderr
