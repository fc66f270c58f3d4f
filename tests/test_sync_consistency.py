"""Sync keeps going, and stays right, when rows depend on each other or a change is refused at commit.

Real PostgreSQL and S3 (moto), as in test_sync.py. Each test here was a bug
found in review: a refusal the server makes only at COMMIT (a unique name or
hash, checked deferred) blocked the queue for good; a batch cut at its entry
limit sent rows resting on changes left for a later batch; a delete lost
against the vault's own earlier edits; a refusal stayed listed after the row
was fixed and pushed.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from test_sync import _image, _objects, _server_rows, assert_mirrors

from localvault import SyncError, Vault
from localvault.sync import Remote, bucket, multipart, outbox, status
from localvault.sync.bucket import Bucket


def server_sql(remote: Remote, sql: str, params: tuple[Any, ...] = ()) -> None:
    """An edit made on the server by someone else (the web app), stamped by the server's clock."""
    with psycopg.connect(remote.database_url, autocommit=True) as conn:
        conn.execute(sql, params)


def lose_on_server(remote: Remote, table: str, row_id: str) -> None:
    """Remove a row as a server restored from an older backup lacks it: without the record a delete leaves (a
    collection deleted on the web instead stays deleted, and its entries arrive outside it: no refusal)."""
    server_sql(remote, f"DELETE FROM public.{table} WHERE id = %s", (row_id,))
    server_sql(remote, "DELETE FROM localvault.deleted_rows WHERE id = %s", (row_id,))


def rejected(vault: Vault) -> list[tuple[str, str, str]]:
    return vault.db.conn.execute("SELECT table_name, row_id, sqlstate FROM sync_rejected ORDER BY seq").fetchall()


def test_a_name_taken_at_commit_is_refused_alone(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path) -> None:
    holiday = vault.collections.create("Holiday")
    vault.sync(remote)
    vault.collections.rename(holiday.id, "Holiday 2025")
    newcomer = vault.collections.create("Holiday")  # takes the name the rename frees
    time.sleep(0.01)
    # The web app edits the old collection after the local rename: the rename loses, so the name stays taken.
    server_sql(remote, "UPDATE public.user_collections SET description = 'web' WHERE id = %s", (holiday.id,))
    unrelated = vault.library.add(_image(tmp_path, 3), title="unrelated")

    report = vault.sync(remote)

    assert report.rejected == 1 and report.conflicts == 1
    assert rejected(vault) == [("user_collections", newcomer.id, "23505")]
    assert unrelated.id in _server_rows(remote.database_url, "user_library")  # the rest of the batch went through
    assert status(vault, remote).pending_changes == 0
    assert vault.sync(remote).rejected == 0  # the queue is not blocked


def test_a_hash_taken_at_commit_is_refused_alone(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path) -> None:
    source = _image(tmp_path, 5)
    old = vault.library.add(source, title="first")
    vault.sync(remote)
    vault.library.delete(old.id)
    new = vault.library.add(source, title="again")  # same bytes, new id
    time.sleep(0.01)
    server_sql(remote, "UPDATE public.user_library SET title = 'web edit' WHERE id = %s", (old.id,))
    other = vault.library.add(_image(tmp_path, 6), title="unrelated")

    report = vault.sync(remote)

    rows = _server_rows(remote.database_url, "user_library")
    assert report.rejected == 1 and rejected(vault) == [("user_library", new.id, "23505")]
    assert other.id in rows and old.id in rows and rows[old.id]["title"] == "web edit" and new.id not in rows


def test_a_hash_freed_by_a_delete_later_in_the_batch_is_not_refused(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                      tmp_path: Path) -> None:
    """Rows are isolated after an unrelated refusal; a row is tried again once the batch's deletes are done."""
    source = _image(tmp_path, 7)
    old = vault.library.add(source, title="first")
    gone = vault.collections.create("Lost by the server")
    vault.sync(remote)
    lose_on_server(remote, "user_collections", gone.id)
    moved = vault.library.add(_image(tmp_path, 8), title="moved", collection=gone.id)  # refused: 23503
    vault.library.delete(old.id)
    new = vault.library.add(source, title="again")

    report = vault.sync(remote)

    rows = _server_rows(remote.database_url, "user_library")
    assert rejected(vault) == [("user_library", moved.id, "23503")] and report.rejected == 1
    assert new.id in rows and old.id not in rows


def test_the_cli_reports_a_refusal_made_at_commit_without_a_traceback(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                      tmp_path: Path) -> None:
    holiday = vault.collections.create("Holiday")
    vault.sync(remote)
    vault.collections.rename(holiday.id, "Holiday 2025")
    vault.collections.create("Holiday")
    time.sleep(0.01)
    server_sql(remote, "UPDATE public.user_collections SET description = 'web' WHERE id = %s", (holiday.id,))
    vault.set_remote(remote.database_url, remote.bucket_url, remote.storage_options)
    root = vault.root
    vault.close()
    done = subprocess.run([sys.executable, "-m", "localvault.cli", "--vault", str(root), "sync"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "refused" in (done.stdout + done.stderr)


def test_batches_never_send_a_row_resting_on_a_later_batch(vault: Vault, remote: Remote, s3_bucket: Any,
                                                            tmp_path: Path) -> None:
    holiday = vault.collections.create("Holiday")
    vault.sync(remote)
    inbox = vault.collections.create("Inbox")  # first entry of the next sync
    first = vault.library.add(_image(tmp_path, 100), title="first")
    for n in range(12):  # more entries than one batch takes
        vault.library.add(_image(tmp_path, n), title=f"t{n}", collection="Inbox")
    later = vault.collections.create("Later")
    vault.library.move(first.id, later.id)  # the row of batch 1 now rests on a collection queued after it
    vault.collections.rename(holiday.id, "Holiday 2024")  # a name freed after the batch limit...
    vault.collections.rename(inbox.id, "Holiday")  # ...taken by a collection of batch 1

    report = vault.sync(remote, batch_rows=5)

    assert report.rejected == 0 and rejected(vault) == [] and report.batches >= 3
    assert_mirrors(vault, remote, s3_bucket)


def test_library_rows_are_batched_by_bytes_too(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                               monkeypatch: Any) -> None:
    monkeypatch.setattr(outbox, "BATCH_BYTES", 3000)  # about two rows' JSON
    for n in range(7):
        vault.library.add(_image(tmp_path, n), title=f"t{n}", settings={"workflow": "x" * 1000})
    report = vault.sync(remote)
    assert report.batches >= 4 and report.rows_written == 7
    assert_mirrors(vault, remote, s3_bucket)


def test_batches_stop_at_the_bytes_of_the_files_they_send(vault: Vault, remote: Remote, s3_bucket: Any,
                                                         tmp_path: Path, monkeypatch: Any) -> None:
    """Rows reach the server as their files do: a batch stops once its files reach BATCH_FILE_BYTES (and
    BATCH_MIN_FILES files); a row whose file went in an earlier sync (an edit) does not count."""
    edited = vault.library.add(_image(tmp_path, 100), title="synced before")
    vault.sync(remote)
    monkeypatch.setattr(outbox, "BATCH_FILE_BYTES", 1)
    monkeypatch.setattr(outbox, "BATCH_MIN_FILES", 2)
    vault.library.update(edited.id, title="edited")
    added = [vault.library.add(_image(tmp_path, n), title=f"t{n}") for n in range(7)]
    first = outbox.read_batch(vault, 5000, 0)
    assert first is not None
    assert {r["id"] for r in first.changes.library} == {edited.id, added[0].id, added[1].id}
    dry = vault.sync(remote, dry_run=True)
    assert (dry.rows_written, dry.files_uploaded) == (8, 7)
    report = vault.sync(remote)
    assert report.batches == 4 and report.rows_written == 8 and report.files_uploaded == 7
    assert_mirrors(vault, remote, s3_bucket)


def test_a_full_sync_counts_the_files_the_bucket_lacks_in_its_batches(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                     tmp_path: Path, monkeypatch: Any) -> None:
    """A full sync to a bucket that lost its objects sends every row's file again, though no row is an insert:
    its batches stop at the bytes of the files they send too. Files the bucket holds do not count."""
    assets = [vault.library.add(_image(tmp_path, n), title=f"t{n}") for n in range(7)]
    vault.sync(remote)
    for asset in assets[:6]:
        _s3(s3_bucket).delete_object(Bucket=s3_bucket.name, Key=asset.storage_path)
    monkeypatch.setattr(outbox, "BATCH_FILE_BYTES", 1)
    monkeypatch.setattr(outbox, "BATCH_MIN_FILES", 2)
    dry = vault.sync(remote, full=True, dry_run=True)
    assert (dry.rows_written, dry.files_uploaded, dry.files_skipped) == (7, 6, 1)
    report = vault.sync(remote, full=True)
    assert (report.files_uploaded, report.files_skipped) == (6, 1)
    assert report.batches == 3  # two files each; the row whose file the bucket holds rides along
    assert_mirrors(vault, remote, s3_bucket)


def test_an_interrupted_sync_keeps_the_batches_it_committed(vault: Vault, remote: Remote, s3_bucket: Any,
                                                            tmp_path: Path, monkeypatch: Any) -> None:
    """Ctrl-C during the third batch's uploads: the first two batches' rows are on the server and acknowledged,
    and the next sync sends only the rest."""
    monkeypatch.setattr(outbox, "BATCH_FILE_BYTES", 1)
    monkeypatch.setattr(outbox, "BATCH_MIN_FILES", 2)
    assets = [vault.library.add(_image(tmp_path, n), title=f"t{n}") for n in range(6)]
    real_upload = Bucket.upload

    def interrupted(self: Bucket, local: Path, key: str, *args: Any, **kwargs: Any) -> Any:
        if key == assets[4].storage_path:
            raise KeyboardInterrupt
        return real_upload(self, local, key, *args, **kwargs)

    monkeypatch.setattr(Bucket, "upload", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vault.sync(remote)
    assert set(_server_rows(remote.database_url, "user_library")) == {a.id for a in assets[:4]}
    assert status(vault, remote).pending_changes == 2

    monkeypatch.setattr(Bucket, "upload", real_upload)
    report = vault.sync(remote)
    assert report.rows_written == 2 and report.files_uploaded <= 2
    assert_mirrors(vault, remote, s3_bucket)


def test_the_same_image_kept_by_two_rigs_is_refused_with_what_to_do(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                    tmp_path: Path) -> None:
    """Two vaults of one user keep the same image under two ids: the second's row is refused (the server holds one
    row per image) with what to do; deleting that copy there removes the object its sync sent."""
    first = vault.library.add(_image(tmp_path, 5), title="from rig 1")
    vault.sync(remote)
    rig2 = Vault.create(tmp_path / "rig2", user_id=vault.user_id)
    try:
        copy = rig2.library.add(_image(tmp_path, 5), title="from rig 2")
        assert rig2.sync(remote).rejected == 1
        (refused,) = status(rig2, remote).rejected
        assert refused.row_id == copy.id and refused.sqlstate == "23505"
        assert "already holds this very image" in refused.message and "localvault rm" in refused.message
        assert set(_objects(s3_bucket.storage_options, s3_bucket.name)) == {first.storage_path, copy.storage_path}
        # (its last line said "fix them, then run 'localvault sync --retry-rejected'", which cannot help here)
        from click.testing import CliRunner

        from localvault.cli import main

        rig2.set_remote(remote.database_url, remote.bucket_url, remote.storage_options)
        shown = CliRunner().invoke(main, ["--vault", str(rig2.root), "status"]).output
        assert "localvault rm" in shown and "an entry deleted here needs nothing more" in shown, shown

        rig2.library.delete(copy.id)
        rig2.sync(remote)
        assert status(rig2, remote).rejected == [] and status(rig2, remote).pending_changes == 0
    finally:
        rig2.close()
    assert set(_objects(s3_bucket.storage_options, s3_bucket.name)) == {first.storage_path}
    assert_mirrors(vault, remote, s3_bucket)


def test_a_collection_name_taken_on_the_server_is_refused_with_what_to_do(vault: Vault, remote: Remote,
                                                                          tmp_path: Path) -> None:
    rig2 = Vault.create(tmp_path / "rig2", user_id=vault.user_id)
    try:
        rig2.collections.create("Foxes")
        rig2.sync(remote)
        vault.collections.create("Foxes")
        vault.sync(remote)
    finally:
        rig2.close()
    (refused,) = status(vault, remote).rejected
    assert "already has a collection of this name" in refused.message
    assert "collections rename" in refused.message


def test_dry_run_counts_every_change_once(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path) -> None:
    for n in range(6):
        vault.collections.create(f"c{n}")
        vault.library.add(_image(tmp_path, n), title=f"t{n}")
    vault.library.delete(vault.library.list().items[0].id)
    report = vault.sync(remote, dry_run=True, batch_rows=2)
    assert (report.rows_written, report.rows_deleted) == (11, 1)
    assert _server_rows(remote.database_url, "user_library") == {}


def test_a_delete_wins_over_this_vaults_own_edits_stamped_ahead_of_the_clock(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path) -> None:
    """updated_at runs ahead of the clock after a burst of edits (1 ms per edit at least) or a clock set back."""
    asset = vault.library.add(_image(tmp_path, 1), title="start")
    collection = vault.collections.create("Busy")
    ahead = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    with vault.db.write() as conn:  # edits made while the clock was an hour ahead
        conn.execute("UPDATE user_library SET title = 'edited', updated_at = ? WHERE id = ?", (ahead, asset.id))
        conn.execute("UPDATE user_collections SET name = 'Busier', updated_at = ? WHERE id = ?", (ahead, collection.id))
    vault.sync(remote)
    vault.library.delete(asset.id)
    vault.collections.delete(collection.id)

    report = vault.sync(remote)

    assert report.rows_deleted == 2 and report.conflicts == 0
    assert _server_rows(remote.database_url, "user_library") == {}
    assert _server_rows(remote.database_url, "user_collections") == {}
    assert _objects(s3_bucket.storage_options, s3_bucket.name) == {}


def _entries_refused_with_their_collection(vault: Vault, remote: Remote, tmp_path: Path) -> list[str]:
    """Two entries of a collection "Birds" that another rig of the user made first on the server: the sync
    refuses the collection (its name taken) and both entries with it (23503)."""
    from test_sync import USER_A

    other_rig = Vault.create(tmp_path / "other rig", user_id=USER_A)
    other_rig.collections.create("Birds")
    other_rig.sync(remote)
    other_rig.close()
    vault.collections.create("Birds")
    entries = [vault.library.add(_image(tmp_path, n), collection="Birds").id for n in (1, 2)]
    assert vault.sync(remote).rejected == 3
    return entries


def test_entries_refused_with_their_collection_go_with_the_sync_that_sends_it(vault: Vault, remote: Remote,
                                                                             s3_bucket: Any, tmp_path: Path) -> None:
    """A collection refused for a name taken on the server (another rig's) takes its entries down with it
    (23503). After the rename, a plain sync sent the collection alone: its entries stayed refused, listed as to
    fix, until --retry-rejected."""
    entries = _entries_refused_with_their_collection(vault, remote, tmp_path)
    refusals = {r.row_id: r.message for r in status(vault, remote).rejected}
    assert all("goes with the sync that sends the collection" in refusals[e] for e in entries), refusals

    vault.collections.rename("Birds", "Birds (rig 2)")
    report = vault.sync(remote)

    assert report.rejected == 0 and rejected(vault) == [] and status(vault, remote).rejected == []
    rows = _server_rows(remote.database_url, "user_library")
    assert {str(rows[e]["collection_id"]) for e in entries} == {vault.collections.get("Birds (rig 2)").id}
    counts = {r["name"]: r["asset_count"] for r in _server_rows(remote.database_url, "user_collections").values()}
    assert counts == {"Birds": 0, "Birds (rig 2)": 2}
    objects = _objects(s3_bucket.storage_options, s3_bucket.name)
    assert all(vault.library.get(e).storage_path in objects for e in entries)


def test_entries_refused_with_their_collection_go_once_it_is_deleted_here(vault: Vault, remote: Remote,
                                                                         s3_bucket: Any, tmp_path: Path) -> None:
    """The other way out of a collection refused for a name taken on the server: deleting it here. Its entries,
    released, are queued again (they were not, since a release is no longer an edit to send), and go outside any
    collection."""
    entries = _entries_refused_with_their_collection(vault, remote, tmp_path)

    vault.collections.delete("Birds")
    report = vault.sync(remote)

    assert report.rejected == 0 and report.rows_written == 2 and rejected(vault) == []
    rows = _server_rows(remote.database_url, "user_library")
    assert all(rows[e]["collection_id"] is None for e in entries)
    objects = _objects(s3_bucket.storage_options, s3_bucket.name)
    assert all(vault.library.get(e).storage_path in objects for e in entries)


def test_a_refusal_is_dropped_once_a_later_edit_of_its_row_goes_through(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                         tmp_path: Path) -> None:
    asset = vault.library.add(_image(tmp_path, 1), title="a")
    gone = vault.collections.create("Lost by the server")
    vault.sync(remote)
    lose_on_server(remote, "user_collections", gone.id)
    vault.library.move(asset.id, gone.id)
    assert vault.sync(remote).rejected == 1 and len(status(vault, remote).rejected) == 1

    vault.library.update(asset.id, collection=None, title="fixed")
    vault.sync(remote)

    assert status(vault, remote).rejected == [] and rejected(vault) == []
    assert _server_rows(remote.database_url, "user_library")[asset.id]["title"] == "fixed"


def test_a_refusal_refused_again_is_listed_once(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path) -> None:
    asset = vault.library.add(_image(tmp_path, 1), title="a")
    gone = vault.collections.create("Lost by the server")
    vault.sync(remote)
    lose_on_server(remote, "user_collections", gone.id)
    vault.library.move(asset.id, gone.id)
    vault.sync(remote)
    vault.library.update(asset.id, title="still in the deleted collection")
    assert vault.sync(remote).rejected == 1
    assert rejected(vault) == [("user_library", asset.id, "23503")]


def _s3(s3_bucket: Any) -> Any:
    options = s3_bucket.storage_options
    return boto3.client("s3", endpoint_url=options["client_kwargs"]["endpoint_url"], aws_access_key_id=options["key"],
                        aws_secret_access_key=options["secret"], region_name="us-east-1")


@pytest.mark.parametrize("way", ["s3 put", "s3 stream", "file"])
def test_a_damaged_file_is_never_stored_under_its_rows_checksum(vault: Vault, remote: Remote, s3_bucket: Any,
                                                               tmp_path: Path, monkeypatch: Any, way: str) -> None:
    if way == "s3 stream":
        monkeypatch.setattr(bucket, "SINGLE_PUT_BYTES", 0)  # files larger than this stream in parts
    elif way == "file":
        remote = Remote(remote.database_url, (tmp_path / "bucket").as_uri())
    asset = vault.library.add(_image(tmp_path, 1), title="x")
    path = Path(vault.library.file_path(asset))
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF  # bit rot: same size, other bytes
    path.write_bytes(bytes(damaged))

    with pytest.raises(SyncError, match="no longer matches the sha256"):
        vault.sync(remote)

    store = Bucket(remote.bucket_url, remote.storage_options)
    assert store.listing(vault.user_id) == {}
    assert status(vault, remote).pending_changes == 1  # nothing acknowledged: the row waits for its file
    path.write_bytes(good)  # restored from a backup
    vault.sync(remote)
    with store.fs.open(store.path(asset.storage_path), "rb") as stored:
        assert stored.read() == good


@pytest.mark.parametrize("way", ["s3 put", "s3 stream", "file"])
def test_a_local_file_the_disk_cannot_read_is_not_called_offline(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                tmp_path: Path, monkeypatch: Any, way: str) -> None:
    """A read error of the vault's own disk (here EISDIR: the file's path is now a folder) used to be retried as a
    lost connection and then reported as "offline" (exit 10): the user was told to wait for a network."""
    monkeypatch.setattr("localvault.sync.retry.RETRY_DELAYS", (0.01,))
    if way == "s3 stream":
        monkeypatch.setattr(bucket, "SINGLE_PUT_BYTES", 0)
    elif way == "file":
        remote = Remote(remote.database_url, (tmp_path / "bucket").as_uri())
    asset = vault.library.add(_image(tmp_path, 1), title="x")
    path = Path(vault.library.file_path(asset))
    path.unlink()
    path.mkdir()

    with pytest.raises(SyncError, match=f"cannot read {path} .*disk may be failing") as caught:
        vault.sync(remote)

    assert caught.value.exit_code == 11  # not OfflineError's 10
    assert Bucket(remote.bucket_url, remote.storage_options).listing(vault.user_id) == {}
    assert status(vault, remote).pending_changes == 1
    if way == "s3 stream":
        assert "Uploads" not in _s3(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name)


def test_a_big_file_unreadable_halfway_leaves_no_object_and_no_upload(vault: Vault, remote: Remote,
                                                                      s3_bucket: Any, tmp_path: Path,
                                                                      monkeypatch: Any) -> None:
    """A read error after the first part was sent: the multipart upload is aborted, never completed with
    the part that was read. (EIO halfway through a file cannot be caused on a healthy disk: injected.)"""
    monkeypatch.setattr(bucket, "SINGLE_PUT_BYTES", 0)
    monkeypatch.setattr(multipart, "STREAM_BLOCK", 100)
    asset = vault.library.add(_image(tmp_path, 1), title="x")
    path = Path(vault.library.file_path(asset))

    class FailingHalfway:
        def __init__(self) -> None:
            self._file = path.open("rb")
            self._reads = 0

        def read(self, size: int) -> bytes:
            self._reads += 1
            if self._reads == 2:
                raise OSError(5, "Input/output error")
            return self._file.read(size)

        def __enter__(self) -> FailingHalfway:
            return self

        def __exit__(self, *exc: object) -> None:
            self._file.close()

    monkeypatch.setattr(multipart, "open", lambda *args: FailingHalfway(), raising=False)
    with pytest.raises(SyncError, match="cannot read .*Input/output error"):
        vault.sync(remote)

    assert "Contents" not in _s3(s3_bucket).list_objects_v2(Bucket=s3_bucket.name)
    assert "Uploads" not in _s3(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name)
    assert status(vault, remote).pending_changes == 1
    monkeypatch.undo()
    vault.sync(remote)
    body = _s3(s3_bucket).get_object(Bucket=s3_bucket.name, Key=asset.storage_path)["Body"].read()
    assert body == path.read_bytes()


def test_a_big_file_goes_up_to_a_store_whose_part_etags_are_not_md5s(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                       tmp_path: Path, monkeypatch: Any) -> None:
    """SSE-KMS and SSE-C buckets answer a part with an ETag that is not its MD5 (moto does not encrypt, so its
    answers are rewritten here): every file over 8 MiB was refused as 'damaged', on every sync. Each part now
    carries its Content-MD5, for the store to check."""
    import base64
    import hashlib
    import uuid

    import s3fs

    monkeypatch.setattr(bucket, "SINGLE_PUT_BYTES", 0)
    real_call = s3fs.S3FileSystem.call_s3
    real_etags: dict[str, str] = {}
    sent_md5s: list[bool] = []

    def kms_like(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "complete_multipart_upload":
            for part in kwargs["MultipartUpload"]["Parts"]:
                part["ETag"] = real_etags[part["ETag"]]
        if method == "upload_part":
            expected = base64.b64encode(hashlib.md5(kwargs["Body"]).digest()).decode()
            sent_md5s.append(kwargs.get("ContentMD5") == expected)
        answer = real_call(self, method, *args, **kwargs)
        if method == "upload_part":
            fake = f'"{uuid.uuid4().hex}"'
            real_etags[fake] = answer["ETag"]
            answer = {**answer, "ETag": fake}
        return answer

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", kms_like)
    asset = vault.library.add(_image(tmp_path, 1), title="big")
    vault.sync(remote)
    monkeypatch.undo()
    assert sent_md5s == [True]
    body = _s3(s3_bucket).get_object(Bucket=s3_bucket.name, Key=asset.storage_path)["Body"].read()
    assert body == Path(vault.library.file_path(asset)).read_bytes()


def test_big_files_go_up_a_few_at_a_time(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                         monkeypatch: Any) -> None:
    """Each multipart upload holds a 16 MiB part in memory: 16 upload threads must not all hold one."""
    monkeypatch.setattr(bucket, "SINGLE_PUT_BYTES", 0)
    monkeypatch.setattr(bucket, "BIG_UPLOADS", 3)
    real_chunks = multipart._chunks
    under_way: list[int] = [0, 0]  # now, most
    lock = threading.Lock()

    def counted(local: Path) -> Any:
        with lock:
            under_way[0] += 1
            under_way[1] = max(under_way)
        try:
            time.sleep(0.05)
            yield from real_chunks(local)
        finally:
            with lock:
                under_way[0] -= 1

    monkeypatch.setattr(multipart, "_chunks", counted)
    for n in range(10):
        vault.library.add(_image(tmp_path, n), title=f"t{n}")
    assert vault.sync(remote).files_uploaded == 10
    assert under_way[1] == 3
    assert len(_s3(s3_bucket).list_objects_v2(Bucket=s3_bucket.name)["Contents"]) == 10


@pytest.mark.parametrize("pending", [2, 60], ids=["head", "listing"])
def test_an_object_of_the_right_size_but_other_bytes_is_replaced(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                 tmp_path: Path, pending: int) -> None:
    """More than 50 files to check are looked up in one listing; fewer, by HEAD: both compare bytes, not just sizes."""
    assets = [vault.library.add(_image(tmp_path, n), title=f"t{n}") for n in range(pending)]
    target = assets[0]
    good = Path(vault.library.file_path(target)).read_bytes()
    _s3(s3_bucket).put_object(Bucket=s3_bucket.name, Key=target.storage_path, Body=b"\0" * len(good),
                              Metadata={"sha256": "0" * 64})
    _s3(s3_bucket).put_object(Bucket=s3_bucket.name, Key=assets[-1].storage_path,
                              Body=Path(vault.library.file_path(assets[-1])).read_bytes(),
                              Metadata={"sha256": assets[-1].sha256})  # already there, right bytes

    report = vault.sync(remote)

    body = _s3(s3_bucket).get_object(Bucket=s3_bucket.name, Key=target.storage_path)["Body"].read()
    assert body == good
    assert report.files_uploaded == pending - 1 and report.files_skipped == 1


def test_a_bucket_deleted_during_the_sync_is_named_as_the_cause(vault: Vault, remote: Remote, s3_bucket: Any,
                                                               tmp_path: Path, monkeypatch: Any) -> None:
    vault.library.add(_image(tmp_path, 1), title="x")
    reachable = Bucket.check_reachable

    def then_deleted(self: Bucket, **options: Any) -> None:
        reachable(self, **options)
        _s3(s3_bucket).delete_bucket(Bucket=s3_bucket.name)  # gone between the check and the uploads

    monkeypatch.setattr(Bucket, "check_reachable", then_deleted)
    try:
        with pytest.raises(SyncError, match="no longer exists"):
            vault.sync(remote)
    finally:
        _s3(s3_bucket).create_bucket(Bucket=s3_bucket.name)
    assert status(vault, remote).pending_changes == 1


def test_an_asset_deleted_while_the_sync_compares_its_file_with_the_bucket(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More than LISTING_THRESHOLD changes whose objects the bucket already holds (a sync cut short after its
    uploads): the sync hashes each local file to compare it with the listed ETag. Another process deleting an
    asset at that moment ended the sync with a bare FileNotFoundError; its delete is pushed instead."""
    from localvault.sync import objects

    ids = [vault.library.save(vault.workspace.add(_image(tmp_path, n), prompt=f"p{n}").id).id
           for n in range(objects.LISTING_THRESHOLD + 5)]
    vault.sync(remote)
    for asset_id in ids:  # pending again, as after a sync killed before it cleared the outbox
        vault.library.update(asset_id, title="again")
    victim = vault.library.get(ids[5])
    victim_path = str(vault.library.file_path(victim))
    real_digest = objects.file_digest
    other = Vault.open(vault.root)

    def digest_while_deleted(path: Any, algorithm: str = "sha256") -> str:
        if str(path) == victim_path:  # the timing is forced: another process deletes it right now
            other.library.delete(ids[5])
        return real_digest(path, algorithm)

    monkeypatch.setattr(objects, "file_digest", digest_while_deleted)
    try:
        report = vault.sync(remote)
    finally:
        other.close()
    assert report.rows_written == len(ids) - 1 and report.rows_deleted == 1
    monkeypatch.setattr(objects, "file_digest", real_digest)
    assert vault.sync(remote).rows_written == 0
    assert_mirrors(vault, remote, s3_bucket)


def test_a_dry_run_of_full_reads_each_page_as_a_range_of_an_index(tmp_path: Path) -> None:
    """`sync --full --dry-run` reads every row a page at a time: each page must be a range of an index, not a
    scan and sort of the whole library (that took minutes on a million rows: a sort per page)."""
    with Vault.create(tmp_path / "v", user_id="0a0a0a0a-0000-4000-8000-00000000000a") as vault:
        for arm in outbox._arms(with_rejected=True, with_everything=True):
            plan = vault.db.conn.execute(f"EXPLAIN QUERY PLAN {arm.select} AND {arm.key} > ? ORDER BY {arm.key}"
                                         " LIMIT ?", (vault.user_id, 0, 10)).fetchall()
            steps = " / ".join(str(row[-1]) for row in plan)
            assert "TEMP B-TREE" not in steps and ("PRIMARY KEY" in steps or "INTEGER PRIMARY KEY" in steps
                                                   or "USING INDEX" in steps), (arm.select, steps)


def test_a_row_whose_id_is_no_uuid_is_refused_alone(vault: Vault, remote: Remote, s3_bucket: Any,
                                                    tmp_path: Path) -> None:
    """A vault.db edited by hand holds a library row whose id is not a UUID: that change is set aside as refused
    (status says why), sends nothing, and the rest of the library goes up; a dry run counts it as refused."""
    good, bad = (vault.library.save(vault.workspace.add(_image(tmp_path, n), prompt="p", seed=n, model="m").id).id
                 for n in range(2))
    not_a_uuid = "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"
    with vault.db.write() as conn:
        conn.execute("UPDATE user_library SET id = ? WHERE id = ?", (not_a_uuid, bad))
        conn.execute("UPDATE sync_outbox SET row_id = ? WHERE row_id = ?", (not_a_uuid, bad))
    assert vault.sync(remote, dry_run=True).rejected == 1
    report = vault.sync(remote)
    assert (report.rows_written, report.rejected, report.files_uploaded) == (1, 1, 1)
    assert set(_server_rows(remote.database_url, "user_library")) == {good}
    (refused,) = status(vault, remote).rejected
    assert (refused.row_id, refused.sqlstate) == (not_a_uuid, "invalid id") and "not a UUID" in refused.message
    assert status(vault, remote).pending_changes == 0


def test_a_sync_to_another_remote_sends_everything(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                                   postgres_server: Any, pg_template: str) -> None:
    """'remote set' to a new database and bucket: the outbox held only changes since the last sync to the old
    one, so the new one got nothing ('pushed 0 rows', exit 0). A sync to another remote is a full one."""
    vault.collections.create("Holiday")
    assets = [vault.library.add(_image(tmp_path, n), title=f"t{n}", collection="Holiday") for n in range(3)]
    vault.set_remote(remote.database_url, remote.bucket_url, remote.storage_options)
    vault.sync()
    with vault.db.write() as conn:  # as a vault synced before it kept where to: that counts as another remote
        conn.execute("DELETE FROM vault_meta WHERE key LIKE 'synced_to:%'")
    with _another_remote(vault, postgres_server, pg_template, s3_bucket) as (dsn, bucket):
        vault.set_remote(dsn, f"s3://{bucket}", s3_bucket.storage_options)
        before = status(vault)
        assert before.remote_changed and before.pending_changes == 4
        report = vault.sync()
        assert report.remote_changed and (report.rows_written, report.files_uploaded) == (4, 3)
        assert set(_server_rows(dsn, "user_library")) == {a.id for a in assets}
        assert set(_objects(s3_bucket.storage_options, bucket)) == {a.storage_path for a in assets}
        after = status(vault)
        assert not after.remote_changed and after.pending_changes == 0
        # The same remote reached with another password is not another remote.
        vault.set_remote(dsn.replace(f":{postgres_server.password}@", ":a-new-password@", 1), f"s3://{bucket}/",
                         s3_bucket.storage_options)
        assert vault.config.remote is not None and "a-new-password" in vault.config.remote.database_url
        assert not status(vault, check_online=False).remote_changed


@contextlib.contextmanager
def _another_remote(vault: Vault, postgres_server: Any, pg_template: str, s3_bucket: Any) -> Iterator[tuple[str, str]]:
    """(database URL, bucket name) of a second server and bucket, which know the vault's user; gone after."""
    from servers import _create_database, _drop_database

    name, bucket = f"lv_test_{uuid.uuid4().hex[:12]}", f"lv-test-{uuid.uuid4().hex[:16]}"
    _create_database(postgres_server, name, template=pg_template)
    _s3(s3_bucket).create_bucket(Bucket=bucket)
    try:
        dsn = postgres_server.dsn(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, 'a@example.com')", (vault.user_id,))
        yield dsn, bucket
    finally:
        _drop_database(postgres_server, name)
        client = _s3(s3_bucket)
        for key in _objects(s3_bucket.storage_options, bucket):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)


def test_a_remote_named_by_libpq_s_environment_is_told_from_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database URL that leaves the host or database to PGHOST, PGPORT, PGDATABASE or PGUSER (as libpq does):
    the remote's identity ignored them, so pointing PGHOST at another server was not another remote, and the
    new server got only what changed since the last sync. What the URL says still wins."""
    from types import SimpleNamespace

    from localvault.config import remote_identity

    for variable in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(variable, raising=False)
    bare = SimpleNamespace(database_url="postgresql://", bucket_url="s3://photos", storage_options={})
    monkeypatch.setenv("PGHOST", "db-one.example")
    monkeypatch.setenv("PGUSER", "alice")
    one = remote_identity(bare)
    assert one == "db-one.example:5432/alice s3://photos"
    monkeypatch.setenv("PGHOST", "db-two.example")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGDATABASE", "gallery")
    assert remote_identity(bare) == "db-two.example:6543/gallery s3://photos"
    explicit = SimpleNamespace(database_url="postgresql://bob:pw@db.example:5433/main", bucket_url="s3://photos",
                               storage_options={})
    assert remote_identity(explicit) == "db.example:5433/main s3://photos"


def test_a_sync_whose_remote_an_older_localvault_switched_sends_everything(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, postgres_server: Any, pg_template: str) -> None:
    """A localvault older than `synced_to` recorded only when it last synced; its own 'remote set' to a new
    server recorded nothing. The first sync after the upgrade trusted the queue, and the new server got only the
    rows edited since (refused for lack of their collection) and none of the rest. It is a full one now."""
    vault.collections.create("Holiday")
    assets = [vault.library.add(_image(tmp_path, n), title=f"t{n}", collection="Holiday") for n in range(3)]
    vault.sync(remote)
    with _another_remote(vault, postgres_server, pg_template, s3_bucket) as (dsn, bucket):
        vault.set_remote(dsn, f"s3://{bucket}", s3_bucket.storage_options)
        vault.library.update(assets[0].id, title="edited since")
        with vault.db.write() as conn:  # what the older version left: a last sync, and no word of where to
            conn.execute("DELETE FROM vault_meta WHERE key LIKE 'synced_to:%'")
        assert status(vault, check_online=False).remote_changed
        # 'remote set' again (a new password, say) took the configured remote for the last sync's: it is not
        vault.set_remote(dsn, f"s3://{bucket}", s3_bucket.storage_options)
        assert status(vault, check_online=False).remote_changed
        report = vault.sync()
        assert report.remote_changed and (report.rows_written, report.files_uploaded, report.rejected) == (4, 3, 0)
        assert set(_server_rows(dsn, "user_library")) == {a.id for a in assets}
        assert set(_objects(s3_bucket.storage_options, bucket)) == {a.storage_path for a in assets}
        assert not status(vault).remote_changed and vault.sync().rows_written == 0


def test_a_sync_gives_freed_parts_back_to_the_system() -> None:
    """Parts (and small files sent whole) are read into memory and freed by the hundred. glibc maps a block of
    that size, but once one is freed its threshold moves up, later ones come from the heap, and the heap keeps
    what is freed: a sync of four 0.5-1 GiB files peaked at 361 MiB of RSS with 161 MiB in use (a large-file
    journey; 161 MiB with this). Measured in a process of its own: RSS after blocks are freed."""
    import subprocess
    import sys

    script = """
import os, sys
from localvault.sync import multipart
if sys.argv[1] == "given back":
    multipart.give_big_blocks_back()
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
first = os.urandom(multipart.STREAM_BLOCK)
del first  # (a mapped block freed: glibc's threshold moves up to its size)
parts = [bytearray(os.urandom(multipart.STREAM_BLOCK - 2**20)) for _ in range(30)]
last = parts.pop()  # (still in use, above the others on the heap)
before = rss()
del parts
print(before, rss())
"""
    rss: dict[str, tuple[int, int]] = {}
    for how in ("kept", "given back"):
        done = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rss[how] = tuple(map(int, done.stdout.split()))  # type: ignore[assignment]
    assert rss["kept"][1] > rss["kept"][0] - 50  # (what this test stands on: glibc keeps them otherwise)
    assert rss["given back"][1] < rss["given back"][0] - 150
