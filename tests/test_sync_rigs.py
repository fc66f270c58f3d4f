"""Rigs of one user, each a copy of the same library, edit, move and delete entries and sync in any order, while
the web app edits and deletes on the server (rows and objects). Once every rig has synced, the server holds for
each entry the latest change made anywhere (last writer wins, deletions included), every row has its object,
no object is left without a row, and the collection's count is exact. Real PostgreSQL, real moto, real vaults;
the orders come from fixed seeds, so a failure replays.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_sync import USER_A, _fill, _objects, _s3_of, _server_rows, as_the_web_app
from test_sync_revival import _sync_elsewhere

from localvault import Vault
from localvault.sync import Remote

OPERATIONS = 40
ENTRY_ACTIONS = ["edit", "edit", "move", "delete", "sync", "sync", "web edit", "web delete"]
COLLECTION_ACTIONS = ["rename", "drop", "web rename", "web drop"]

#: An entry's latest change anywhere: (title, collection id), or None once deleted.
Change = tuple[str | None, str | None] | None


def _holds(vault: Vault, table: str, row_id: str) -> bool:
    return vault.db.conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone() is not None


class _World:
    """Three rigs, the server, and what the latest change of each entry and of the collection was."""

    def __init__(self, tmp_path: Path, remote: Remote, s3_bucket: Any) -> None:
        self.remote, self.dsn, self.s3_bucket = remote, remote.database_url, s3_bucket
        first = Vault.create(tmp_path / "rig0", user_id=USER_A)
        self.foxes = first.collections.create("Foxes").id
        self.ids = _fill(first, tmp_path, 4)
        first.sync(remote)
        first.close()
        for n in (1, 2):
            shutil.copytree(tmp_path / "rig0", tmp_path / f"rig{n}")
        self.rigs = [Vault.open(tmp_path / f"rig{n}") for n in range(3)]
        self.keys = {i: self.rigs[0].library.get(i).storage_path for i in self.ids}
        self.latest: dict[str, Change] = {i: (self.rigs[0].library.get(i).title, None) for i in self.ids}
        self.collection: str | None = "Foxes"  # its latest name anywhere; None once deleted
        self.collection_ever_deleted = False
        self.log: list[str] = []

    def entry_action(self, action: str, rig_no: int, asset_id: str, step: int) -> bool:
        rig = self.rigs[rig_no]
        has = _holds(rig, "user_library", asset_id)
        if action == "edit" and has:
            asset = rig.library.update(asset_id, title=f"rig {rig_no}, step {step}")
        elif action == "move" and has:
            here = rig.library.get(asset_id).collection_id
            if here is None and not _holds(rig, "user_collections", self.foxes):
                return False
            asset = rig.library.update(asset_id, collection=None if here else self.foxes)
        elif action == "delete" and has:
            rig.library.delete(asset_id)
            self.latest[asset_id] = None
            return True
        elif action == "sync":
            report = rig.sync(self.remote)
            assert report.rejected == 0, (report, self.log)
            return True
        elif action == "web edit":
            title = f"web, step {step}"
            if not as_the_web_app(self.dsn, "UPDATE public.user_library SET title = %s WHERE id = %s",
                                   (title, asset_id)):
                return False
            row = _server_rows(self.dsn, "user_library")[asset_id]
            self.latest[asset_id] = (title, str(row["collection_id"]) if row["collection_id"] else None)
            return True
        elif action == "web delete":
            if not as_the_web_app(self.dsn, "DELETE FROM public.user_library WHERE id = %s", (asset_id,)):
                return False
            # the web app removes its object too
            _s3_of(self.s3_bucket).delete_object(Bucket=self.s3_bucket.name, Key=self.keys[asset_id])
            self.latest[asset_id] = None
            return True
        else:
            return False
        self.latest[asset_id] = (asset.title, asset.collection_id)
        return True

    def collection_action(self, action: str, rig_no: int, step: int) -> bool:
        rig = self.rigs[rig_no]
        if action in ("rename", "drop") and not _holds(rig, "user_collections", self.foxes):
            return False
        if action == "rename":
            self.collection = rig.collections.rename(self.foxes, f"Foxes {step}").name
        elif action == "drop":
            # Its entries are released, not edited: the server releases its own when the deletion reaches it
            # (an entry's latest change stays what it was; check() accepts it outside the collection).
            rig.collections.delete(self.foxes)
            self.collection, self.collection_ever_deleted = None, True
        elif action == "web rename":
            if not as_the_web_app(self.dsn, "UPDATE public.user_collections SET name = %s WHERE id = %s",
                                   (f"Foxes {step}", self.foxes)):
                return False
            self.collection = f"Foxes {step}"
        elif action == "web drop":
            if not as_the_web_app(self.dsn, "DELETE FROM public.user_collections WHERE id = %s", (self.foxes,)):
                return False
            self.collection, self.collection_ever_deleted = None, True
        return True

    def check(self) -> None:
        """After a last sync of every rig, in any order: the server against the latest changes."""
        rows = _server_rows(self.dsn, "user_library")
        expected = {i: change for i, change in self.latest.items() if change is not None}
        assert set(rows) == set(expected), self.log
        for asset_id, (title, collection) in expected.items():
            row = rows[asset_id]
            got = str(row["collection_id"]) if row["collection_id"] else None
            assert row["title"] == title, (asset_id, self.log)
            # A collection deleted somewhere releases its entries (the server's ON DELETE SET NULL keeps their
            # time): an entry last put in it is in it, or outside any collection once it was ever deleted.
            if collection is None or not self.collection_ever_deleted:
                assert got == collection, (asset_id, self.log)
            else:
                assert got in (collection, None), (asset_id, self.log)
        collections = _server_rows(self.dsn, "user_collections")
        assert {c["name"] for c in collections.values()} == ({self.collection} if self.collection else set()), \
            self.log
        for collection_id, c in collections.items():
            assert c["asset_count"] == sum(1 for r in rows.values() if str(r["collection_id"]) == collection_id)
        objects = _objects(self.s3_bucket.storage_options, self.s3_bucket.name)
        assert objects == {self.keys[i]: rows[i]["file_size_bytes"] for i in expected}, self.log

    def sync_all_at_once(self) -> None:
        """Every rig syncs at the same time, each through a connection of its own (three machines)."""
        failures: list[BaseException] = []

        def sync(rig: Vault) -> None:
            try:
                report = _sync_elsewhere(rig, self.remote)
                if report.rejected:
                    failures.append(AssertionError(f"rejected: {report}"))
            except BaseException as exc:  # reported below, with the steps that led to it
                failures.append(exc)

        threads = [threading.Thread(target=sync, args=(rig,)) for rig in self.rigs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads), ("a sync hung", self.log)
        assert not failures, (failures, self.log)
        self.log.append("all rigs synced at once")

    def close(self) -> None:
        for rig in self.rigs:
            rig.close()


def _run(seed: int, world: _World, actions: list[str], *, at_once_every: int = 0) -> None:
    rng = random.Random(seed)
    for step in range(OPERATIONS):
        if at_once_every and step % at_once_every == at_once_every - 1:
            # Every rig pushes a change of the same entry at once: one deletes it, the others edit it (a delete
            # racing revivals, upserts waiting on a delete, a removal holding its deletion record).
            contested = rng.choice(world.ids)
            for rig_no in range(len(world.rigs)):
                time.sleep(0.005)
                if world.entry_action("delete" if rig_no == step % len(world.rigs) else "edit", rig_no, contested,
                                      step):
                    world.log.append(f"{'delete' if rig_no == step % len(world.rigs) else 'edit'} "
                                     f"{world.ids.index(contested)} on rig {rig_no}")
            world.sync_all_at_once()
            continue
        time.sleep(0.005)  # each change strictly later than the one before, on every clock
        action, rig_no, asset_id = rng.choice(actions), rng.randrange(len(world.rigs)), rng.choice(world.ids)
        if action in COLLECTION_ACTIONS:
            done = world.collection_action(action, rig_no, step)
        else:
            done = world.entry_action(action, rig_no, asset_id, step)
        if done:
            what = "" if action in ("sync", *COLLECTION_ACTIONS) else f" {world.ids.index(asset_id)}"
            world.log.append(f"{action}{what} on rig {rig_no}")
    for n in rng.sample(range(len(world.rigs)), len(world.rigs)):
        report = world.rigs[n].sync(world.remote)
        assert report.rejected == 0, (report, world.log)
    world.check()


@pytest.mark.parametrize("seed", range(12))
def test_rigs_and_the_web_app_converge_on_the_latest_change(seed: int, tmp_path: Path, remote: Remote,
                                                            s3_bucket: Any) -> None:
    world = _World(tmp_path, remote, s3_bucket)
    _run(seed, world, ENTRY_ACTIONS)
    world.close()


@pytest.mark.parametrize("seed", range(12))
def test_with_the_collection_renamed_and_deleted_too(seed: int, tmp_path: Path, remote: Remote,
                                                     s3_bucket: Any) -> None:
    world = _World(tmp_path, remote, s3_bucket)
    _run(seed, world, ENTRY_ACTIONS + COLLECTION_ACTIONS)
    world.close()


@pytest.mark.parametrize("seed", range(12))
def test_with_the_collection_renamed_but_never_deleted(seed: int, tmp_path: Path, remote: Remote,
                                                      s3_bucket: Any) -> None:
    """Without deletions of the collection, each entry's collection is exactly that of its latest change."""
    world = _World(tmp_path, remote, s3_bucket)
    _run(seed, world, ENTRY_ACTIONS + ["rename", "web rename"])
    assert not world.collection_ever_deleted
    world.close()


@pytest.mark.parametrize("seed", range(6))
def test_with_every_rig_syncing_at_the_same_time_now_and_then(seed: int, tmp_path: Path, remote: Remote,
                                                               s3_bucket: Any) -> None:
    """Deletes racing revivals, upserts waiting on deletes, removals holding deletion records: the same end."""
    world = _World(tmp_path, remote, s3_bucket)
    _run(seed, world, ENTRY_ACTIONS + COLLECTION_ACTIONS, at_once_every=4)
    world.close()
