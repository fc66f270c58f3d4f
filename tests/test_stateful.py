"""A hypothesis state machine over the vault's writes, checking its invariants after every step."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import USER_A, bucket_files, write_media
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from localvault import DuplicateError, NotFoundError, Vault
from localvault.files import LIBRARY_BUCKET, TEMP_PREFIX, WORKSPACE_BUCKET

# The machine tests the vault's logic, not the disk's durability: a tmpfs (where
# fsync costs nothing) keeps its hundreds of steps fast when one is available.
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_POOL_DIR = Path(tempfile.mkdtemp(prefix="localvault-pool-", dir=FAST_TMP))
atexit.register(shutil.rmtree, _POOL_DIR, True)
POOL = [write_media(_POOL_DIR, kind, seed) for seed, kind in enumerate(["png"] * 6 + ["jpg"] * 3 + ["webp", "mp4", "png"])]
POOL_SHA = [hashlib.sha256(p.read_bytes()).hexdigest() for p in POOL]
COLLECTION_NAMES = ["red", "green", "blue"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class VaultMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="localvault-sm-", dir=FAST_TMP))
        self.vault = Vault.create(self.root / "vault", user_id=USER_A)
        # the model: what the vault should hold
        self.workspace: dict[str, str] = {}  # id -> sha256
        self.library: dict[str, tuple[str, str | None]] = {}  # id -> (sha256, collection id)
        self.collections: dict[str, str] = {}  # name -> id

    def teardown(self) -> None:
        self.vault.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------- rules

    @rule(index=st.integers(0, len(POOL) - 1))
    def add(self, index: int) -> None:
        sha = POOL_SHA[index]
        if sha in self.workspace.values():
            with pytest.raises(DuplicateError):
                self.vault.workspace.add(POOL[index])
            return
        asset = self.vault.workspace.add(POOL[index], prompt=f"pool {index}")
        assert asset.sha256 == sha
        self.workspace[asset.id] = sha

    @rule(index=st.integers(0, len(POOL) - 1), data=st.data())
    def add_to_library(self, index: int, data: st.DataObject) -> None:
        sha = POOL_SHA[index]
        collection = data.draw(st.sampled_from([None, *sorted(self.collections)]))
        if sha in {s for s, _ in self.library.values()}:
            with pytest.raises(DuplicateError):
                self.vault.library.add(POOL[index], collection=collection)
            return
        asset = self.vault.library.add(POOL[index], collection=collection)
        self.library[asset.id] = (sha, self.collections[collection] if collection else None)

    @precondition(lambda self: self.workspace)
    @rule(data=st.data())
    def save(self, data: st.DataObject) -> None:
        ws_id = data.draw(st.sampled_from(list(self.workspace)))
        collection = data.draw(st.sampled_from([None, *sorted(self.collections)]))
        sha = self.workspace[ws_id]
        if sha in {s for s, _ in self.library.values()}:
            with pytest.raises(DuplicateError):
                self.vault.library.save(ws_id, collection=collection)
            return
        kept = self.vault.library.save(ws_id, title="kept", collection=collection)
        assert kept.original_asset_id == ws_id
        self.library[kept.id] = (sha, self.collections[collection] if collection else None)

    @precondition(lambda self: self.library)
    @rule(data=st.data())
    def move(self, data: st.DataObject) -> None:
        asset_id = data.draw(st.sampled_from(list(self.library)))
        # by name, by id or out of any collection
        target = data.draw(st.sampled_from([None, *sorted(self.collections), *self.collections.values()]))
        moved = self.vault.library.move(asset_id, target)
        target_id = self.collections.get(target, target) if target else None
        assert moved.collection_id == target_id
        self.library[asset_id] = (self.library[asset_id][0], target_id)

    @precondition(lambda self: self.library)
    @rule(data=st.data())
    def delete_library(self, data: st.DataObject) -> None:
        asset_id = data.draw(st.sampled_from(list(self.library)))
        self.vault.library.delete(asset_id)
        del self.library[asset_id]
        with pytest.raises(NotFoundError):
            self.vault.library.get(asset_id)

    @precondition(lambda self: self.workspace)
    @rule(data=st.data())
    def delete_workspace(self, data: st.DataObject) -> None:
        asset_id = data.draw(st.sampled_from(list(self.workspace)))
        self.vault.workspace.delete(asset_id)
        del self.workspace[asset_id]

    @rule(name=st.sampled_from(COLLECTION_NAMES))
    def create_collection(self, name: str) -> None:
        if name in self.collections:
            with pytest.raises(DuplicateError):
                self.vault.collections.create(name)
            return
        self.collections[name] = self.vault.collections.create(name).id

    @precondition(lambda self: self.collections)
    @rule(data=st.data(), by_id=st.booleans())
    def delete_collection(self, data: st.DataObject, by_id: bool) -> None:
        name = data.draw(st.sampled_from(sorted(self.collections)))
        collection_id = self.collections.pop(name)
        self.vault.collections.delete(collection_id if by_id else name)
        for asset_id, (sha, cid) in self.library.items():
            if cid == collection_id:
                self.library[asset_id] = (sha, None)

    @precondition(lambda self: self.workspace)
    @rule(data=st.data())
    def expire_and_cleanup(self, data: st.DataObject) -> None:
        doomed = data.draw(st.sets(st.sampled_from(list(self.workspace)), min_size=1))
        for asset_id in doomed:
            self.vault.workspace.expire(asset_id)
        # An asset expires 1 ms after its creation at the earliest (expires_at > created_at): one added within
        # the last millisecond is not yet expired, and this cleanup would leave it (seen once on a fast run).
        time.sleep(0.002)
        report = self.vault.cleanup()
        assert report.assets_removed == len(doomed) and report.complete
        for asset_id in doomed:
            del self.workspace[asset_id]

    # ------------------------------------------------------------ invariants

    @invariant()
    def rows_match_model(self) -> None:
        conn = self.vault.db.conn
        assert dict(conn.execute("SELECT id, sha256 FROM workspace_assets")) == self.workspace
        got = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, sha256, collection_id FROM user_library")}
        assert got == self.library
        assert dict(conn.execute("SELECT name, id FROM user_collections")) == self.collections

    @invariant()
    def counts_are_exact(self) -> None:
        conn = self.vault.db.conn
        for collection_id, asset_count in conn.execute("SELECT id, asset_count FROM user_collections").fetchall():
            real = conn.execute("SELECT count(*) FROM user_library WHERE collection_id = ?", (collection_id,)).fetchone()[0]
            assert asset_count == real
            assert asset_count == sum(1 for _, cid in self.library.values() if cid == collection_id)

    @invariant()
    def files_match_rows(self) -> None:
        conn = self.vault.db.conn
        expected = {(WORKSPACE_BUCKET, path): sha for path, sha in conn.execute("SELECT temp_storage_path, sha256 FROM workspace_assets")}
        expected.update({(LIBRARY_BUCKET, path): sha for path, sha in conn.execute("SELECT storage_path, sha256 FROM user_library")})
        on_disk = bucket_files(self.vault.root)
        assert not [p for _b, p in on_disk if os.path.basename(p).startswith(TEMP_PREFIX)], "temp files left behind"
        assert on_disk == set(expected), "files without rows or rows without files"
        for (bucket, path), sha in expected.items():
            assert sha256_of(self.vault.root / bucket / path) == sha

    @invariant()
    def no_pending_deletes(self) -> None:
        assert self.vault.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == 0


VaultMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestVaultMachine = VaultMachine.TestCase
