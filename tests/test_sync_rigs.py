"""Rigs of one user, each a copy of the same library, edit, move and delete entries and sync in any order, while
the web app edits and deletes on the server (rows and objects). Once every rig has synced, the server holds for
each entry the latest change made anywhere (last writer wins, deletions included), every row has its object,
no object is left without a row, and the collection's count is exact. Real PostgreSQL, real moto, real vaults;
the orders come from fixed seeds, so a failure replays.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_sync import USER_A, _fill, _objects, _server_rows

from localvault import Vault
from localvault.sync import Remote

OPERATIONS = 40


def _as_the_web_app(dsn: str, statement: str, args: tuple[Any, ...]) -> int:
    """A statement run as the user through row-level security, as the web app's are; the rows it touched."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                     (f'{{"sub": "{USER_A}", "role": "authenticated"}}',))
        conn.execute("SET LOCAL ROLE authenticated")
        return conn.execute(statement, args).rowcount


@pytest.mark.parametrize("seed", range(12))
def test_rigs_and_the_web_app_converge_on_the_latest_change(seed: int, tmp_path: Path, remote: Remote,
                                                            s3_bucket: Any) -> None:
    rng = random.Random(seed)
    first = Vault.create(tmp_path / "rig0", user_id=USER_A)
    foxes = first.collections.create("Foxes").id
    ids = _fill(first, tmp_path, 4)
    first.sync(remote)
    first.close()
    for n in (1, 2):
        shutil.copytree(tmp_path / "rig0", tmp_path / f"rig{n}")
    rigs = [Vault.open(tmp_path / f"rig{n}") for n in range(3)]
    keys = {asset_id: rigs[0].library.get(asset_id).storage_path for asset_id in ids}
    # The latest change of each entry anywhere: (title, collection id), or None once deleted.
    latest: dict[str, tuple[str | None, str | None] | None] = {
        asset_id: (rigs[0].library.get(asset_id).title, None) for asset_id in ids}
    dsn = remote.database_url
    done: list[str] = []
    for step in range(OPERATIONS):
        time.sleep(0.005)  # each change strictly later than the one before, on every clock
        rig_no, asset_id = rng.randrange(len(rigs)), rng.choice(ids)
        rig = rigs[rig_no]
        has = _holds(rig, asset_id)
        action = rng.choice(["edit", "edit", "move", "delete", "sync", "sync", "web edit", "web delete"])
        if action == "edit" and has:
            asset = rig.library.update(asset_id, title=f"rig {rig_no}, step {step}")
            latest[asset_id] = (asset.title, asset.collection_id)
        elif action == "move" and has:
            here = rig.library.get(asset_id).collection_id
            asset = rig.library.update(asset_id, collection=None if here else foxes)
            latest[asset_id] = (asset.title, asset.collection_id)
        elif action == "delete" and has:
            rig.library.delete(asset_id)
            latest[asset_id] = None
        elif action == "sync":
            report = rig.sync(remote)
            assert report.rejected == 0, report
        elif action == "web edit":
            title = f"web, step {step}"
            if _as_the_web_app(dsn, "UPDATE public.user_library SET title = %s WHERE id = %s", (title, asset_id)):
                row = _server_rows(dsn, "user_library")[asset_id]
                latest[asset_id] = (title, str(row["collection_id"]) if row["collection_id"] else None)
        elif action == "web delete":
            if _as_the_web_app(dsn, "DELETE FROM public.user_library WHERE id = %s", (asset_id,)):
                s3 = s3_bucket.storage_options
                _delete_object(s3, s3_bucket.name, keys[asset_id])  # the web app removes its object too
                latest[asset_id] = None
        else:
            continue
        done.append(f"{action} {ids.index(asset_id)} on rig {rig_no}")
    for n in rng.sample(range(len(rigs)), len(rigs)):
        report = rigs[n].sync(remote)
        assert report.rejected == 0, report
    rows = _server_rows(dsn, "user_library")
    expected = {asset_id: change for asset_id, change in latest.items() if change is not None}
    got = {asset_id: (row["title"], str(row["collection_id"]) if row["collection_id"] else None)
           for asset_id, row in rows.items()}
    assert got == expected, done
    objects = _objects(s3_bucket.storage_options, s3_bucket.name)
    assert objects == {keys[asset_id]: rows[asset_id]["file_size_bytes"] for asset_id in expected}, done
    (collection,) = _server_rows(dsn, "user_collections").values()
    assert collection["asset_count"] == sum(1 for change in expected.values() if change[1] == foxes), done
    for rig in rigs:
        rig.close()


def _holds(vault: Vault, asset_id: str) -> bool:
    return vault.db.conn.execute("SELECT 1 FROM user_library WHERE id = ?", (asset_id,)).fetchone() is not None


def _delete_object(storage_options: dict[str, Any], bucket: str, key: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=storage_options["client_kwargs"]["endpoint_url"],
                 aws_access_key_id=storage_options["key"], aws_secret_access_key=storage_options["secret"],
                 region_name="us-east-1").delete_object(Bucket=bucket, Key=key)
