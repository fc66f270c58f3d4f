"""Two rigs of one user: one deletes an entry, the other brings it back with a newer edit, at the same time.

The rig that deleted removes the entry's object after the server's commit; the
other found that object in the bucket before its upload, so it sent none. Its
row must never end up on the server without its object (real PostgreSQL and
moto, two real vaults).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_sync import USER_A, USER_B, _fill, _objects, _server_rows, as_the_web_app

from localvault import Vault
from localvault.sync import Remote
from localvault.sync.batch import Changes
from localvault.sync.bucket import Bucket


def _two_rigs(tmp_path: Path, remote: Remote) -> tuple[Vault, Vault, str]:
    """Rig 1 syncs an entry; rig 2 is a copy of it (the same library, synced)."""
    rig1 = Vault.create(tmp_path / "rig1", user_id=USER_A)
    (asset_id,) = _fill(rig1, tmp_path, 1)
    rig1.sync(remote)
    rig1.close()
    shutil.copytree(tmp_path / "rig1", tmp_path / "rig2")
    return Vault.open(tmp_path / "rig1"), Vault.open(tmp_path / "rig2"), asset_id


def _sync_elsewhere(rig: Vault, remote: Remote) -> Any:
    """Sync ``rig`` through a connection of its own (another machine's)."""
    own = Remote(remote.database_url, remote.bucket_url, remote.storage_options)
    try:
        return rig.sync(own)
    finally:
        own.close()


def test_the_object_of_a_deleted_entry_brought_back_before_its_removal_stays(
        tmp_path: Path, remote: Remote, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rig 2's newer edit reaches the server between rig 1's delete and the removal of its object: the entry is
    live again, so its object stays."""
    rig1, rig2, asset_id = _two_rigs(tmp_path, remote)
    key = rig1.library.get(asset_id).storage_path
    rig1.library.delete(asset_id)
    rig2.library.update(asset_id, title="kept on rig 2")  # after rig 1's delete: it wins
    applied = Remote.apply

    def then_rig_2_syncs(self: Remote, user_id: str, changes: Changes) -> Any:
        outcome = applied(self, user_id, changes)
        if changes.library_deletes:
            report = _sync_elsewhere(rig2, remote)
            assert (report.rows_written, report.files_uploaded) == (1, 0)  # the object was there
        return outcome

    monkeypatch.setattr(Remote, "apply", then_rig_2_syncs)
    report = rig1.sync(remote)
    assert (report.rows_deleted, report.objects_deleted) == (1, 0)
    assert _server_rows(remote.database_url, "user_library")[asset_id]["title"] == "kept on rig 2"
    assert key in _objects(s3_bucket.storage_options, s3_bucket.name)
    rig1.close()
    rig2.close()


def test_an_entry_brought_back_while_its_object_is_removed_gets_its_object_again(
        tmp_path: Path, remote: Remote, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rig 2 finds the object, writes its row while rig 1 removes that object: the server makes rig 2 wait until
    the removal is done (migration 7), and rig 2, checking after its commit, sends the object again."""
    rig1, rig2, asset_id = _two_rigs(tmp_path, remote)
    key = rig1.library.get(asset_id).storage_path
    rig1.library.delete(asset_id)
    rig2.library.update(asset_id, title="kept on rig 2")
    removing = Bucket.delete
    rig2_reports: list[Any] = []
    waited: list[bool] = []

    def rig_2_syncs_meanwhile(self: Bucket, keys: list[str]) -> dict[str, str]:
        if key in keys and not waited:
            def sync_rig_2() -> None:
                rig2_reports.append(_sync_elsewhere(rig2, remote))

            rig2_thread = threading.Thread(target=sync_rig_2)
            rig2_thread.start()
            rig2_thread.join(2.0)  # rig 2 checked the bucket (the object is there) and writes its row ...
            waited.append(rig2_thread.is_alive())  # ... which waits for this removal to be over
            removed = removing(self, keys)
            threads.append(rig2_thread)
            return removed
        return removing(self, keys)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(Bucket, "delete", rig_2_syncs_meanwhile)
    report = rig1.sync(remote)
    threads[0].join(30)
    assert waited == [True] and report.rows_deleted == 1
    (rig2_report,) = rig2_reports
    assert (rig2_report.rows_written, rig2_report.files_uploaded) == (1, 1)  # sent again after its commit
    row = _server_rows(remote.database_url, "user_library")[asset_id]
    assert row["title"] == "kept on rig 2"
    assert _objects(s3_bucket.storage_options, s3_bucket.name) == {key: row["file_size_bytes"]}
    rig1.close()
    rig2.close()


def test_a_row_inserted_again_waits_while_its_deletion_is_held(server: str) -> None:
    """The server's side (migration 7): an insert of a row whose deletion record another transaction holds
    (as a sync removing the row's object does) commits only once that transaction ends."""
    row_id = "0a0a0a0a-0000-4000-8000-0000000000ff"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("INSERT INTO localvault.deleted_rows (user_id, row_table, id) VALUES (%s, 'user_library', %s)",
                     (USER_A, row_id))
    holder = psycopg.connect(server)
    holder.execute("SELECT 1 FROM localvault.deleted_rows WHERE id = %s FOR UPDATE", (row_id,))
    done = threading.Event()

    def insert_again() -> None:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO public.user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,"
                " original_prompt, model_used, generation_seed, sha256) VALUES (%s, %s, 'image', %s, 1, 'image/png',"
                " 'p', 'm', 1, repeat('a', 64))", (row_id, USER_A, f"{USER_A}/{row_id}.png"))
        done.set()

    inserter = threading.Thread(target=insert_again)
    inserter.start()
    try:
        assert not done.wait(1.0)
    finally:
        holder.rollback()
        holder.close()
    assert done.wait(10.0)
    inserter.join()
    with psycopg.connect(server) as conn:
        assert conn.execute("SELECT count(*) FROM public.user_library WHERE id = %s", (row_id,)).fetchone() == (1,)


def test_another_user_taking_a_deleted_entry_s_id_does_not_keep_its_object(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """User B, who could read the id of A's public entry, makes a row of their own with it right after A's delete
    commits: A's object (under A's folder) still goes; B's row is not A's entry brought back."""
    (asset_id,) = _fill(vault, tmp_path, 1)
    vault.library.update(asset_id, visibility="public")
    vault.sync(remote)
    key = vault.library.get(asset_id).storage_path
    vault.library.delete(asset_id)
    applied = Remote.apply

    def then_user_b_takes_the_id(self: Remote, user_id: str, changes: Changes) -> Any:
        outcome = applied(self, user_id, changes)
        as_the_web_app(
            remote.database_url,
            "INSERT INTO public.user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,"
            " original_prompt, model_used, generation_seed, sha256, visibility) VALUES (%s, %s, 'image', %s, 1,"
            " 'image/png', 'p', 'm', 1, repeat('b', 64), 'public')", (asset_id, USER_B, f"{USER_B}/{asset_id}.png"),
            USER_B)
        return outcome

    monkeypatch.setattr(Remote, "apply", then_user_b_takes_the_id)
    report = vault.sync(remote)
    assert (report.rows_deleted, report.objects_deleted) == (1, 1)
    assert key not in _objects(s3_bucket.storage_options, s3_bucket.name)


def test_a_server_s_idle_timeout_does_not_end_the_hold_while_objects_are_removed(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that ends sessions idle in a transaction for 0.5 s, a bucket that takes 1.5 s to delete: the hold
    lasts the whole removal (the sync sets no limit for it), and the sync completes."""
    (asset_id,) = _fill(vault, tmp_path, 1)
    vault.sync(remote)
    remote.close()
    with psycopg.connect(remote.database_url, autocommit=True) as conn:
        database = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = 500')
    key = vault.library.get(asset_id).storage_path
    vault.library.delete(asset_id)
    removing = Bucket.delete

    def slowly(self: Bucket, keys: list[str]) -> dict[str, str]:
        if keys:
            time.sleep(1.5)
        return removing(self, keys)

    monkeypatch.setattr(Bucket, "delete", slowly)
    report = vault.sync(remote)
    assert (report.rows_deleted, report.objects_deleted) == (1, 1)
    assert key not in _objects(s3_bucket.storage_options, s3_bucket.name)


def test_an_older_edit_that_waited_on_a_concurrent_delete_leaves_the_row_deleted(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path) -> None:
    """Another rig deletes the entry (a newer delete) while this vault's older edit is on its way: the upsert waits
    for that delete; once it commits, the server's re-check (migration 7) makes the batch try again, and the row
    stays deleted (a conflict) instead of coming back as it was before the delete."""
    (asset_id,) = _fill(vault, tmp_path, 1)
    vault.sync(remote)
    vault.library.update(asset_id, title="edited on this rig, before the other's delete")
    deleter = psycopg.connect(remote.database_url)  # the other rig's push, its transaction still open
    deleter.execute("DELETE FROM public.user_library WHERE id = %s", (asset_id,))
    deleter.execute("UPDATE localvault.deleted_rows SET deleted_at = now() + interval '1 minute' WHERE id = %s",
                    (asset_id,))
    reports: list[Any] = []
    pushing = threading.Thread(target=lambda: reports.append(_sync_elsewhere(vault, remote)))
    pushing.start()
    try:
        pushing.join(2.0)
        assert pushing.is_alive()  # the upsert waits for the delete
    finally:
        deleter.commit()
        deleter.close()
    pushing.join(60)
    (report,) = reports
    assert (report.rows_written, report.conflicts) == (0, 1)
    assert asset_id not in _server_rows(remote.database_url, "user_library")


def test_a_collection_deleted_on_one_rig_brings_back_nothing_deleted_and_undoes_no_edit_made_on_the_other(
        tmp_path: Path, remote: Remote, s3_bucket: Any) -> None:
    """Rig 2 deletes a collection after rig 1 deleted one of its assets and renamed another: the server releases
    the rest itself. Sent again with a new updated_at, the released rows brought back the deleted one (its file
    uploaded again) and undid the rename."""
    rig1 = Vault.create(tmp_path / "rig1", user_id=USER_A)
    rig1.collections.create("Birds")
    gone, renamed, untouched = _fill(rig1, tmp_path, 3, collection="Birds")
    rig1.sync(remote)
    rig1.close()
    shutil.copytree(tmp_path / "rig1", tmp_path / "rig2")
    rig1, rig2 = Vault.open(tmp_path / "rig1"), Vault.open(tmp_path / "rig2")
    gone_key = rig1.library.get(gone).storage_path
    rig1.library.delete(gone)
    rig1.library.update(renamed, title="renamed on rig 1")
    rig1.sync(remote)

    rig2.collections.delete("Birds")
    report = _sync_elsewhere(rig2, remote)

    assert (report.rows_written, report.files_uploaded, report.conflicts) == (0, 0, 0)
    rows = _server_rows(remote.database_url, "user_library")
    assert set(rows) == {renamed, untouched}
    assert rows[renamed]["title"] == "renamed on rig 1" and rows[renamed]["collection_id"] is None
    assert rows[untouched]["collection_id"] is None
    assert _server_rows(remote.database_url, "user_collections") == {}
    assert gone_key not in _objects(s3_bucket.storage_options, s3_bucket.name)
    rig1.close()
    rig2.close()
