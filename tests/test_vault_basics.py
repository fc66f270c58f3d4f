"""The vault's core behaviour: opening, adding, saving, listing, updating, deleting,
expiry, isolation between users, verify/repair, migrations, counts and the outbox."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import (
    USER_A,
    USER_B,
    bucket_files,
    mp4_bytes,
    raw_connection,
    sqlite_steps,
    temp_files,
    without_dac_override,
    write_media,
)

from localvault import (
    DuplicateError,
    InvalidInputError,
    NotFoundError,
    SchemaVersionError,
    StorageError,
    Vault,
    VaultCorruptError,
    Visibility,
    media,
)
from localvault._sqlite_migrations import schema_version
from localvault.files import LIBRARY_BUCKET, TEMP_PREFIX, WORKSPACE_BUCKET
from localvault.models import WorkspaceAsset
from localvault.timestamps import format_time
from localvault.workspace import BatchEntry


def add_many(vault: Vault, make_image, n: int, start: int = 0, **kwargs):
    return [vault.workspace.add(make_image(seed=start + i), **kwargs) for i in range(n)]


def collect(fetch, limit: int):
    """Walk every page of a listing; return the items and the number of pages."""
    items, cursor, pages = [], None, 0
    while True:
        page = fetch(limit=limit, cursor=cursor)
        pages += 1
        assert len(page.items) <= limit
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items, pages
        assert pages < 1000


def outbox(vault: Vault) -> list[tuple[str, str, str]]:
    return vault.db.conn.execute("SELECT table_name, row_id, op FROM sync_outbox ORDER BY seq").fetchall()


def real_count(vault: Vault, collection_id: str) -> int:
    return vault.db.conn.execute("SELECT count(*) FROM user_library WHERE collection_id = ?", (collection_id,)).fetchone()[0]


# ------------------------------------------------------------------ opening


def test_create_open_reopen(tmp_path: Path, make_image):
    root = tmp_path / "v"
    with Vault.create(root, user_id=USER_A.upper()) as vault:
        assert vault.user_id == USER_A  # canonical lower case
        for name in ("vault.db", "workspace-temp", "user-library", "localvault.toml"):
            assert (root / name).exists(), name
        asset = vault.workspace.add(make_image(seed=1), prompt="kept across opens")
    with pytest.raises(DuplicateError):
        Vault.create(root)
    with Vault.open(root) as again:
        assert again.user_id == USER_A
        assert again.workspace.get(asset.id).original_prompt == "kept across opens"
    with Vault.open(root, user_id=USER_B) as other:
        assert other.user_id == USER_B
        assert other.workspace.count() == 0


@pytest.mark.parametrize("name", ["renders #2", "what?", "50%20off", "100%", "a b&c=d"])
def test_a_vault_folder_name_with_uri_characters_opens_its_own_database(tmp_path: Path, make_image, name: str):
    """The database is opened by URI: '#', '?' and '%' in the folder's name once opened another file
    (``renders `` beside the folder), and the vault looked empty after a rename."""
    root = tmp_path / name
    with Vault.create(root, user_id=USER_A) as vault:
        asset = vault.workspace.add(make_image(seed=5))
    assert {p.name for p in tmp_path.iterdir()} - {"src"} == {name}  # (src/: make_image's)
    assert (root / "vault.db").stat().st_size > 0
    with Vault.open(root) as vault:
        assert vault.workspace.get(asset.id).sha256 == asset.sha256
    with Vault.open(root, readonly=True) as vault:
        assert vault.workspace.count() == 1


def test_a_write_on_a_vault_opened_read_only_says_so(tmp_path: Path, make_image):
    """It said the database file was read-only and to check the folder's permissions, which were fine."""
    with Vault.create(tmp_path / "v", user_id=USER_A) as vault:
        kept = vault.library.add(make_image(seed=3))
    with Vault.open(tmp_path / "v", readonly=True) as vault:
        with pytest.raises(StorageError, match="was opened read-only .readonly=True.; open it without readonly"):
            vault.library.update(kept.id, title="new")
        assert vault.library.get(kept.id).title == kept.title


def test_a_vault_whose_database_is_gone_is_not_taken_for_an_empty_folder(tmp_path: Path, make_image):
    """A new vault there would take the files for orphans (and verify --repair would delete them)."""
    with Vault.create(tmp_path / "v") as vault:
        vault.library.add(make_image(seed=1))
    os.unlink(tmp_path / "v" / "vault.db")
    with pytest.raises(VaultCorruptError, match="restore vault.db"):
        Vault.open(tmp_path / "v")
    with pytest.raises(VaultCorruptError, match="restore vault.db"):
        Vault.create(tmp_path / "v")
    assert len(bucket_files(tmp_path / "v")) == 1


def test_create_adopts_what_a_cut_short_create_left_and_a_new_disk_s_folders(tmp_path: Path):
    with Vault.create(tmp_path / "cut", user_id=USER_A):
        pass
    for name in os.listdir(tmp_path / "cut"):
        if name.startswith("vault.db"):
            os.unlink(tmp_path / "cut" / name)  # killed before the database was made: settings and empty buckets
    with Vault.create(tmp_path / "cut") as adopted:
        assert adopted.user_id == USER_A
    (tmp_path / "mnt" / "lost+found").mkdir(parents=True)
    (tmp_path / "mnt" / ".DS_Store").write_bytes(b"x")
    Vault.create(tmp_path / "mnt").close()


_KILLED_WRITING_SETTINGS = """
import os, sys
from localvault import Vault
replace = os.replace
def replace_or_die(src, dst, *args, **kwargs):
    if str(dst).endswith("localvault.toml"):
        os._exit(9)  # killed just before the settings' rename
    return replace(src, dst, *args, **kwargs)
os.replace = replace_or_die
Vault.create(sys.argv[1], user_id=sys.argv[2])
"""


def test_init_killed_while_writing_its_settings_can_be_run_again(tmp_path: Path):
    """Before: 'init' said the folder was not empty (.tmp-…-localvault.toml) and 'ls' said there was no vault.
    The create is killed for real, in a child process, just before the settings' rename."""
    root = tmp_path / "cut"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITING_SETTINGS, str(root), USER_A], timeout=60)
    assert killed.returncode == 9 and [n for n in os.listdir(root) if n.startswith(TEMP_PREFIX)]
    with Vault.create(root, user_id=USER_A) as made:
        assert made.user_id == USER_A
    assert sorted(os.listdir(root)) == ["localvault.toml", "user-library", "vault.db", "workspace-temp"]


def test_an_empty_vault_db_beside_the_vaults_files_is_refused(tmp_path: Path, make_image):
    """A vault.db cut to zero bytes (a copy or restore cut short) used to open as a new, empty vault: every file
    then looked like an orphan, and 'verify --repair' removed them."""
    with Vault.create(tmp_path / "v", user_id=USER_A) as vault:
        vault.library.add(make_image(seed=1), title="kept")
        vault.workspace.add(make_image(seed=2))
    files_before = bucket_files(tmp_path / "v")
    (tmp_path / "v" / "vault.db").write_bytes(b"")
    with pytest.raises(VaultCorruptError, match="is empty .*restore vault.db from a backup"):
        Vault.open(tmp_path / "v")
    assert (tmp_path / "v" / "vault.db").stat().st_size == 0 and bucket_files(tmp_path / "v") == files_before

    (tmp_path / "new").mkdir()  # an empty one beside empty buckets: a create cut short, opened as the new vault
    with Vault.create(tmp_path / "new", user_id=USER_A):
        pass
    (tmp_path / "new" / "vault.db").write_bytes(b"")
    with Vault.open(tmp_path / "new") as reopened:
        assert reopened.workspace.count() == 0 and reopened.verify().clean


_RACING_CREATE = """
import sys, time
from localvault import DuplicateError, Vault
start = float(sys.argv[1])
for round, folder in enumerate(sys.argv[2:]):
    time.sleep(max(0.0, start + 0.25 * round - time.time()))
    try:
        with Vault.create(folder) as vault:
            print("created", vault.user_id)
    except DuplicateError:
        print("duplicate", "-")
"""


def test_racing_creates_of_one_folder_make_one_vault(tmp_path: Path):
    """Processes creating a vault in one folder at once: one makes it, the others are told it exists.

    Eight rounds, each on a new folder, as one round's race is often won cleanly by chance.
    """
    folders = [tmp_path / f"v{round}" for round in range(8)]
    start = time.time() + 2.0  # every process is up by then, and they all go at once
    procs = [subprocess.Popen([sys.executable, "-c", _RACING_CREATE, str(start), *map(str, folders)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outcomes.append([tuple(line.split()) for line in out.splitlines()])
    for round, folder in enumerate(folders):
        results = [lines[round] for lines in outcomes]
        made = [user for word, user in results if word == "created"]
        assert len(made) == 1, (folder, results)
        with Vault.open(folder) as vault:
            assert vault.user_id == made[0]


def test_open_missing_vault_is_not_found(tmp_path: Path):
    with pytest.raises(NotFoundError):
        Vault.open(tmp_path / "nothing-here")


def test_default_user_id_is_generated_and_remembered(tmp_path: Path):
    with Vault.create(tmp_path / "a") as first, Vault.create(tmp_path / "b") as second:
        assert str(uuid.UUID(first.user_id)) == first.user_id
        assert first.user_id != second.user_id
        generated = first.user_id
    with Vault.open(tmp_path / "a") as reopened:
        assert reopened.user_id == generated


# --------------------------------------------------------------------- add


@pytest.mark.parametrize("kind, mime, asset_type", [
    ("png", "image/png", "image"),
    ("jpg", "image/jpeg", "image"),
    ("webp", "image/webp", "image"),
])
def test_add_image(vault: Vault, make_image, kind, mime, asset_type):
    path = make_image(kind=kind, seed=3, size=(40, 24))
    asset = vault.workspace.add(path, prompt="a fox", seed=42, model="sdxl", settings={"steps": 20})
    assert asset.mime_type.value == mime
    assert asset.asset_type.value == asset_type
    assert (asset.width, asset.height) == (40, 24)
    assert asset.duration_seconds is None
    assert asset.file_size_bytes == path.stat().st_size
    assert asset.generation_seed == 42 and asset.model_used == "sdxl"
    assert asset.generation_settings == {"steps": 20}
    assert asset.temp_storage_path == f"{USER_A}/{asset.job_id}/0.{kind}"
    stored = Path(vault.workspace.file_path(asset))
    assert stored.read_bytes() == path.read_bytes()
    assert asset.expires_at - asset.created_at == timedelta(days=7)
    assert vault.workspace.get(asset.id) == asset


def test_add_mp4_reads_duration_and_size(vault: Vault, tmp_path: Path):
    path = write_media(tmp_path / "src", "mp4", seed=9)
    asset = vault.workspace.add(path)
    assert asset.mime_type.value == "video/mp4"
    assert asset.asset_type.value == "video"
    assert asset.duration_seconds == pytest.approx(2.5)
    assert (asset.width, asset.height) == (64, 48)
    kept = vault.library.add(write_media(tmp_path / "src2", "mp4", seed=10))
    assert kept.duration_seconds == pytest.approx(2.5) and kept.asset_type.value == "video"
    other = tmp_path / "clip.mp4"
    other.write_bytes(mp4_bytes(seed=11, duration_seconds=1.5, size=(320, 200), timescale=90_000))
    clip = vault.workspace.add(other)
    assert clip.duration_seconds == pytest.approx(1.5)
    assert (clip.width, clip.height) == (320, 200)


def test_add_defaults_and_job_indexes(vault: Vault, make_image):
    first = vault.workspace.add(make_image(seed=1))
    assert (first.generation_seed, first.original_prompt, first.model_used) == (0, "", "unknown")
    second = vault.workspace.add(make_image(seed=2), job_id=first.job_id)
    third = vault.workspace.add(make_image(seed=3), job_id=first.job_id.upper(), asset_index=7)
    assert (first.asset_index, second.asset_index, third.asset_index) == (0, 1, 7)
    assert third.job_id == first.job_id
    assert {a.id for a in vault.workspace.list(job_id=first.job_id).items} == {first.id, second.id, third.id}


@pytest.mark.parametrize("area", ["workspace", "library"])
def test_add_takes_metadata_read_beforehand_and_explicit_values_win(area: str, vault: Vault, make_image):
    """An app that read the metadata itself (or built it) hands it over as ``info``, in both areas alike."""
    from localvault import GenerationInfo

    info = GenerationInfo(prompt="a fox in snow", seed=77, model="sdxl", settings={"steps": 30})
    add = getattr(vault, area).add
    asset = add(make_image(seed=40), info=info)
    assert (asset.original_prompt, asset.generation_seed, asset.model_used) == ("a fox in snow", 77, "sdxl")
    assert asset.generation_settings["steps"] == 30
    asset = add(make_image(seed=41), info=info, seed=5, model="flux")
    assert (asset.original_prompt, asset.generation_seed, asset.model_used) == ("a fox in snow", 5, "flux")


# ---------------------------------------------------------------- listing


def test_workspace_list_newest_first_paging(vault: Vault, make_image):
    added = add_many(vault, make_image, 23)
    items, pages = collect(vault.workspace.list, limit=5)
    assert pages == 5
    ids = [a.id for a in items]
    assert len(ids) == len(set(ids)) == 23  # no duplicates, no gaps
    assert set(ids) == {a.id for a in added}
    keys = [(a.created_at, a.id) for a in items]
    assert keys == sorted(keys, reverse=True)
    assert ids[0] == added[-1].id and ids[-1] == added[0].id
    single, pages = collect(vault.workspace.list, limit=1)
    assert [a.id for a in single] == ids and pages == 23
    whole = vault.workspace.list(limit=23)
    assert whole.next_cursor is None and [a.id for a in whole.items] == ids


def test_paging_with_equal_timestamps(vault: Vault, make_image):
    added = add_many(vault, make_image, 9)
    with vault.db.write() as conn:  # all created in the same millisecond: ties broken by id
        conn.execute("UPDATE workspace_assets SET created_at = '2020-01-01T00:00:00.000Z'")
    items, _ = collect(vault.workspace.list, limit=2)
    assert [a.id for a in items] == sorted((a.id for a in added), reverse=True)


# ------------------------------------------------------------ save/library


def test_save_with_fields(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1), prompt="a red fox", seed=5, model="flux")
    trip = vault.collections.create("Trip", "summer")
    kept = vault.library.save(asset.id, title="  Fox ", tags=["fox", "red", "fox"], collection="Trip", favorite=True,
                              visibility="public")
    assert kept.title == "Fox"
    assert kept.tags == ["fox", "red"]
    assert kept.collection_id == trip.id
    assert kept.is_favorite is True
    assert kept.visibility is Visibility.public
    assert kept.original_asset_id == asset.id
    assert (kept.original_prompt, kept.generation_seed, kept.model_used) == ("a red fox", 5, "flux")
    assert kept.sha256 == asset.sha256
    assert kept.storage_path == f"{USER_A}/{kept.id}.png"
    assert vault.collections.get("Trip").asset_count == 1
    assert vault.library.get(kept.id) == kept
    # the workspace asset stays until it expires
    assert vault.workspace.get(asset.id).id == asset.id


def test_save_hard_links_on_same_filesystem(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)
    ws, lib = os.stat(vault.workspace.file_path(asset)), os.stat(vault.library.file_path(kept))
    assert ws.st_ino == lib.st_ino
    assert lib.st_nlink == 2


@pytest.mark.parametrize("damage", ["edited in place", "truncated"])
def test_save_refuses_to_link_a_workspace_file_that_no_longer_holds_its_bytes(vault: Vault, make_image, damage):
    """Before: the link path trusted the row's sha256, so a damaged file entered the library under a hash and a
    size it did not have (the copy path already refused); verify then found both, with no twin to restore."""
    asset = vault.workspace.add(make_image(seed=1))
    path = Path(vault.workspace.file_path(asset))
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[-5:]
    else:
        data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    before = bucket_files(vault.root)
    with pytest.raises(StorageError, match="no longer holds the bytes it was stored with.*nothing was changed"):
        vault.library.save(asset.id)
    assert vault.library.count() == 0 and bucket_files(vault.root) == before and not temp_files(vault.root)
    assert os.stat(path).st_nlink == 1


def test_save_on_another_fsspec_filesystem_refuses_a_workspace_file_that_changed(tmp_path: Path, make_image):
    """Before: on a non-local filesystem the copy was not hashed, and the library row took the workspace row's
    sha256: a file rewritten in place entered the library under a hash it did not have."""
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    vault = Vault.create(tmp_path / "vault", user_id=USER_A, fs=fs)
    try:
        asset = vault.workspace.add(make_image(seed=1))
        fs.pipe(vault.workspace.file_path(asset), make_image(seed=2).read_bytes())
        before = sorted(fs.find(vault.files.full_path(LIBRARY_BUCKET, "")))
        with pytest.raises(StorageError, match="no longer holds the bytes it was stored with"):
            vault.library.save(asset.id)
        assert vault.library.count() == 0 and sorted(fs.find(vault.files.full_path(LIBRARY_BUCKET, ""))) == before
        unchanged = vault.workspace.add(make_image(seed=3))
        kept = vault.library.save(unchanged.id)  # an unchanged file is still saved, under its own hash
        assert kept.sha256 == unchanged.sha256 and fs.cat(vault.library.file_path(kept)) == make_image(seed=3).read_bytes()
    finally:
        vault.close()


@pytest.mark.parametrize("fault", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_a_save_whose_link_cannot_be_hashed_leaves_no_link(vault: Vault, make_image, monkeypatch, fault):
    """A disk error (or Ctrl-C) while the linked file was hashed left its temporary link in the library's
    folder: the workspace file then had two links, and its next save copied it."""
    import localvault.files

    asset = vault.workspace.add(make_image(seed=1))

    def failing(path: Any, algorithm: str = "sha256") -> str:
        raise fault

    monkeypatch.setattr(localvault.files, "file_digest", failing)
    with pytest.raises(StorageError if isinstance(fault, OSError) else KeyboardInterrupt) as raised:
        vault.library.save(asset.id)
    assert isinstance(fault, KeyboardInterrupt) or "cannot read" in str(raised.value)
    assert vault.library.count() == 0 and not temp_files(vault.root)
    assert os.stat(vault.workspace.file_path(asset)).st_nlink == 1


def build_library(vault: Vault, make) -> list:
    """Twelve library assets in two collections with tags, favourites and prompts."""
    vault.collections.create("Animals")
    birds = vault.collections.create("Birds")
    assets = []
    for i in range(12):
        ws = vault.workspace.add(make(seed=100 + i), prompt=f"prompt number{i} {'sunset' if i % 3 == 0 else 'noon'}")
        tags = ["all"] + (["even"] if i % 2 == 0 else ["odd"]) + (["three"] if i % 3 == 0 else [])
        collection = "Animals" if i < 6 else (birds.id if i < 9 else None)
        assets.append(vault.library.save(ws.id, title=f"Title {i}" + (" lighthouse" if i in (4, 7) else ""),
                                         tags=tags, collection=collection, favorite=i % 4 == 0))
    return assets


@pytest.fixture
def library(vault: Vault, make_image):
    return build_library(vault, make_image)


@pytest.fixture(scope="module")
def shared_library(tmp_path_factory):
    """A read-only vault with the twelve assets, shared by the filter tests."""
    base = tmp_path_factory.mktemp("shared")
    vault = Vault.create(base / "vault", user_id=USER_A)
    assets = build_library(vault, lambda seed: write_media(base / "src", "png", seed))
    yield vault, assets
    vault.close()


def ids_of(items) -> list[str]:
    return [a.id for a in items]


def newest_first(assets) -> list[str]:
    return [a.id for a in sorted(assets, key=lambda a: (a.created_at, a.id), reverse=True)]


@pytest.mark.parametrize("kwargs, expected", [
    ({}, lambda i: True),
    ({"tags": ["even"]}, lambda i: i % 2 == 0),
    ({"tags": ["even", "three"]}, lambda i: i % 6 == 0),  # all tags must match
    ({"tags": ["odd", "even"]}, lambda i: False),
    ({"tags": ["nope"]}, lambda i: False),
    ({"favorite": True}, lambda i: i % 4 == 0),
    ({"favorite": False}, lambda i: i % 4 != 0),
    ({"collection": "Animals"}, lambda i: i < 6),
    ({"collection": "Birds"}, lambda i: 6 <= i < 9),
    ({"search": "sunset"}, lambda i: i % 3 == 0),  # prompt
    ({"search": "lighthouse"}, lambda i: i in (4, 7)),  # title
    ({"search": "three"}, lambda i: i % 3 == 0),  # tags
    ({"search": "number5"}, lambda i: i == 5),
    ({"search": "sunset noon"}, lambda i: False),  # every word must match
    ({"tags": ["even"], "favorite": True, "collection": "Animals"}, lambda i: i in (0, 4)),
    ({"search": "sunset", "tags": ["even"]}, lambda i: i in (0, 6)),
    ({"search": "title", "collection": "Animals", "favorite": False}, lambda i: i in (1, 2, 3, 5)),
    ({"search": "sunset", "tags": ["all", "odd"], "collection": "Birds"}, lambda i: False),
])
def test_library_filters_and_paging(shared_library, kwargs, expected):
    vault, library = shared_library
    want = newest_first([a for i, a in enumerate(library) if expected(i)])
    page = vault.library.list(**kwargs)
    assert page.next_cursor is None
    if "search" in kwargs:  # search orders by recency of saving
        assert sorted(ids_of(page.items)) == sorted(want)
    else:
        assert ids_of(page.items) == want
    for limit in (1, 2, 5):
        items, _ = collect(lambda **kw: vault.library.list(**kwargs, **kw), limit=limit)
        assert ids_of(items) == ids_of(page.items), limit


def test_library_collection_filter_by_id(shared_library):
    vault, library = shared_library
    birds = vault.collections.get("Birds")
    assert ids_of(vault.library.list(collection=birds.id).items) == newest_first(library[6:9])
    with pytest.raises(NotFoundError):
        vault.library.list(collection="No such collection")


def test_search_survives_fts_syntax(shared_library):
    vault, _ = shared_library
    assert vault.library.list(search='"sunset AND OR (').items == []
    assert vault.library.list(search="NEAR(") .items == []


def test_search_finds_words_of_scripts_written_without_spaces(vault: Vault, make_image):
    """FTS5 cuts text at spaces, so a Japanese prompt was one word: '日本語' found nothing in '日本語のプロンプト'.
    Such words are found anywhere in the prompt, title or tags; with other words, all must match."""
    first = vault.library.add(make_image(seed=1), prompt="日本語のプロンプト, 狐")
    second = vault.library.add(make_image(seed=2), prompt="a red fox at dusk", title="夕焼けの狐", tags=["風景"])
    third = vault.library.add(make_image(seed=3), prompt="여우가 숲에 있다")

    def found(text: str, **kwargs: Any) -> list[str]:
        return ids_of(vault.library.list(search=text, **kwargs).items)

    assert found("日本語") == found("プロンプト") == [first.id]
    assert found("狐") == [second.id, first.id]  # newest first
    assert found("fox 夕焼け") == found("風景") == [second.id]
    assert found("プロンプト red") == [] and found("夕焼け", favorite=True) == []
    assert found("여우") == [third.id]
    assert found('"日本語"') == found("日本語,") == found("「プロンプト」") == found("日本語、狐") == [first.id]
    assert found("sdxl風") == []  # (in no prompt, title or tag)
    page = vault.library.list(search="狐", limit=1)
    assert ids_of(page.items) == [second.id]
    assert found("狐", limit=1, cursor=page.next_cursor) == [first.id]


# --------------------------------------------------------------- update


def test_update_fields(vault: Vault, library):
    asset = library[1]
    time.sleep(0.005)
    updated = vault.library.update(asset.id, title="New title", add_tags=["new", "all"], remove_tags=["odd"],
                                   visibility=Visibility.unlisted, favorite=True)
    assert updated.title == "New title"
    assert updated.tags == ["all", "new"]
    assert updated.visibility is Visibility.unlisted
    assert updated.is_favorite is True
    assert updated.updated_at > asset.updated_at
    assert updated.created_at == asset.created_at
    assert asset.id in ids_of(vault.library.list(tags=["new"]).items)
    assert asset.id not in ids_of(vault.library.list(tags=["odd"]).items)
    assert asset.id in ids_of(vault.library.list(search="new title").items)
    assert asset.id not in ids_of(vault.library.list(search="Title 1").items)
    replaced = vault.library.update(asset.id, tags=["x"], title=None)
    assert replaced.tags == ["x"] and replaced.title is None
    unchanged = vault.library.update(asset.id)
    assert unchanged.tags == ["x"] and unchanged.visibility is Visibility.unlisted


def test_move_between_collections(vault: Vault, library):
    animals, birds = vault.collections.get("Animals"), vault.collections.get("Birds")
    moved = vault.library.move(library[0].id, "Birds")
    assert moved.collection_id == birds.id
    assert vault.collections.get("Animals").asset_count == 5
    assert vault.collections.get("Birds").asset_count == 4
    vault.library.update(library[1].id, collection=birds.id)
    vault.library.move(library[11].id, animals.id)
    vault.library.move(library[6].id, None)
    assert vault.library.get(library[6].id).collection_id is None
    for c in vault.collections.list():
        assert c.asset_count == real_count(vault, c.id)
    assert [c.asset_count for c in vault.collections.list()] == [5, 4]


def test_updated_at_changes_on_every_update(vault: Vault, library):
    asset = library[2]
    stamps = [asset.updated_at]
    for change in ({"favorite": True}, {"visibility": "public"}, {"collection": "Birds"}, {"add_tags": ["z"]}):
        time.sleep(0.005)
        stamps.append(vault.library.update(asset.id, **change).updated_at)
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    time.sleep(0.005)
    with vault.db.write() as conn:  # the trigger, not the app, sets it
        conn.execute("UPDATE user_library SET title = 'raw' WHERE id = ?", (asset.id,))
    assert vault.library.get(asset.id).updated_at > stamps[-1]


# --------------------------------------------------------------- delete


def test_delete_library_asset(vault: Vault, library):
    asset = library[0]
    path = Path(vault.library.file_path(asset))
    assert path.exists()
    vault.library.delete(asset.id)
    assert not path.exists()
    with pytest.raises(NotFoundError):
        vault.library.get(asset.id)
    assert vault.db.conn.execute("SELECT count(*) FROM library_tags WHERE id = ?", (asset.id,)).fetchone()[0] == 0
    assert asset.id not in ids_of(vault.library.list(search="sunset").items)
    assert vault.collections.get("Animals").asset_count == 5
    assert vault.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == 0
    with pytest.raises(NotFoundError):
        vault.library.delete(asset.id)


def test_delete_workspace_asset_keeps_library_copy(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)
    path = Path(vault.workspace.file_path(asset))
    vault.workspace.delete(asset.id)
    assert not path.exists()
    assert not path.parent.exists()  # the empty job folder goes too
    with pytest.raises(NotFoundError):
        vault.workspace.get(asset.id)
    lib_path = Path(vault.library.file_path(kept))
    assert lib_path.read_bytes() == make_image(seed=1).read_bytes()
    assert vault.verify().clean


def test_vault_delete_and_locate(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)
    assert vault.locate(kept.id) == (LIBRARY_BUCKET, kept.storage_path)
    assert vault.locate(asset.id) == (WORKSPACE_BUCKET, asset.temp_storage_path)
    assert vault.delete(kept.id) == "library"
    assert vault.delete(asset.id) == "workspace"
    assert bucket_files(vault.root) == set()
    with pytest.raises(NotFoundError):
        vault.delete(asset.id)


def test_export(vault: Vault, make_image, tmp_path: Path):
    source = make_image(kind="jpg", seed=4)
    asset = vault.workspace.add(source)
    kept = vault.library.save(asset.id)
    out = tmp_path / "out"
    out.mkdir()
    exported = vault.export(kept.id, out)
    assert exported == out / f"{kept.id}.jpg"
    assert exported.read_bytes() == source.read_bytes()
    named = vault.export(asset.id, out / "ws.jpg")
    assert named.read_bytes() == source.read_bytes()
    assert os.stat(named).st_ino != os.stat(vault.workspace.file_path(asset)).st_ino  # a copy, not a link
    with pytest.raises(DuplicateError):
        vault.export(kept.id, out / "ws.jpg")
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    made = vault.export(kept.id, f"{tmp_path}/new/")  # a path ending in / is a folder, made if needed
    assert made == tmp_path / "new" / f"{kept.id}.jpg" and made.read_bytes() == source.read_bytes()
    longest = out / ("n" * 251 + ".jpg")  # 255 bytes, the most a name may have (the temp name once had 37 more)
    assert vault.export(kept.id, longest).read_bytes() == source.read_bytes()
    assert vault.export(kept.id, out / "upper.JPEG").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("name", ["exported", "fox.png", "fox.jpg.txt"])
def test_export_to_a_file_named_without_the_assets_extension_is_refused(vault: Vault, make_image, tmp_path: Path,
                                                                        name: str):
    kept = vault.library.save(vault.workspace.add(make_image(kind="jpg", seed=4)).id)
    with pytest.raises(InvalidInputError, match=r"\.jpg"):  # (a folder of that name was meant, say)
        vault.export(kept.id, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_export_into_a_folder_one_may_write_to_but_not_list(vault: Vault, make_image, tmp_path: Path):
    """A drop box (mode 0333): the folder's fsync after the rename cannot open it, and export reported
    'cannot write' (exit 8) for a file it had written. That fsync is now best effort."""
    kept = vault.library.save(vault.workspace.add(make_image(seed=7)).id)
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o333)
    try:
        with without_dac_override():
            written = vault.export(kept.id, drop / "fox.png")
    finally:
        drop.chmod(0o755)
    assert written == drop / "fox.png" and written.stat().st_size == kept.file_size_bytes


def test_export_cut_short_by_ctrl_c_leaves_no_temporary_file(vault: Vault, make_image, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    kept = vault.library.save(vault.workspace.add(make_image(seed=6)).id)
    out = tmp_path / "out"
    out.mkdir()

    def copy_then_ctrl_c(reader: BinaryIO, writer: BinaryIO, length: int = 0) -> None:  # a Ctrl-C after the first chunk
        writer.write(reader.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        vault.export(kept.id, out / "fox.png")
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    assert vault.export(kept.id, out / "fox.png").stat().st_size == kept.file_size_bytes


def test_export_killed_mid_copy_leaves_nothing_in_the_destination(vault: Vault, make_image, tmp_path: Path):
    """A SIGKILL (or the OOM killer) in the middle of an export left its temporary file (``.tmp-…``) in the
    user's folder, which no later call looks at. The copy is an unnamed file (O_TMPFILE) until it is linked
    in as the destination now: the kernel frees it with the killed process."""
    import signal
    import subprocess
    import sys

    kept = vault.library.save(vault.workspace.add(make_image(seed=9)).id)
    out = tmp_path / "out"
    out.mkdir()
    child = f"""
import os, shutil, signal
from localvault import Vault

def copy_then_killed(reader, writer, length=0):
    writer.write(reader.read(100))
    writer.flush()
    os.kill(os.getpid(), signal.SIGKILL)

shutil.copyfileobj = copy_then_killed
Vault.open({str(vault.root)!r}).export({kept.id!r}, {str(out / "fox.png")!r})
"""
    ran = subprocess.run([sys.executable, "-c", child], capture_output=True)
    assert ran.returncode == -signal.SIGKILL, ran.stderr.decode()
    assert list(out.iterdir()) == []
    assert vault.export(kept.id, out / "fox.png").read_bytes() == Path(vault.library.file_path(kept)).read_bytes()


def test_export_never_overwrites_a_file_made_while_it_copied(vault: Vault, make_image, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """Two exports (or an export and any program) to one path: it was checked before the copy and renamed over
    after it, so both "succeeded" and the first file was lost. The copy is published by a hard link now."""
    kept = vault.library.save(vault.workspace.add(make_image(seed=8)).id)
    out = tmp_path / "out"
    out.mkdir()
    real_copy = shutil.copyfileobj

    def copy_while_another_writes_there(reader: BinaryIO, writer: BinaryIO, length: int = 0) -> None:
        real_copy(reader, writer, length)
        (out / "fox.png").write_bytes(b"another program's file")

    monkeypatch.setattr(shutil, "copyfileobj", copy_while_another_writes_there)
    with pytest.raises(DuplicateError, match="fox.png already exists; choose another destination"):
        vault.export(kept.id, out / "fox.png")
    assert [p.name for p in out.iterdir()] == ["fox.png"]  # no temporary file left either
    assert (out / "fox.png").read_bytes() == b"another program's file"


def test_a_job_with_no_index_left_refuses_the_next_file(vault: Vault, make_image):
    from localvault.models import MAX_ASSET_INDEX

    last = vault.workspace.add(make_image(seed=1), asset_index=MAX_ASSET_INDEX)
    before = set(bucket_files(vault.root))
    with pytest.raises(InvalidInputError, match="no index left"):
        vault.workspace.add(make_image(seed=2), job_id=last.job_id)
    assert set(bucket_files(vault.root)) == before and vault.workspace.count() == 1
    assert vault.workspace.add(make_image(seed=2), job_id=last.job_id, asset_index=0).asset_index == 0


def _with_header_size(data: bytes, kind: str, width: int, height: int) -> bytes:
    """A small real image whose header claims another size (what a 14000×14000 upscale's header says)."""
    import struct
    import zlib

    if kind == "png":
        ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
        return data[:8] + data[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]
    sof = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_an_image_over_pillows_bomb_limit_is_added_with_its_size(vault: Vault, tmp_path: Path, kind: str):
    """Pillow's Image.open refuses ~179+ megapixels as a decompression bomb; nothing here decodes pixels."""
    from conftest import image_bytes

    source = tmp_path / f"upscale.{kind}"
    source.write_bytes(_with_header_size(image_bytes(kind, 3, (16, 16)), kind, 14_000, 14_000))
    added = vault.workspace.add(source)
    assert (added.width, added.height) == (14_000, 14_000)
    (tmp_path / "rig").mkdir()
    os.replace(source, tmp_path / "rig" / f"again.{kind}")
    vault.workspace.delete(added.id)
    report = vault.workspace.import_folder(tmp_path / "rig")
    assert not report.refused and vault.workspace.get(report.imported[0].asset_id).width == 14_000


# ---------------------------------------------------------------- expiry


def test_expire_and_cleanup(vault: Vault, make_image):
    doomed = add_many(vault, make_image, 3)
    survivor = vault.workspace.add(make_image(seed=50))
    kept = vault.library.save(doomed[0].id, title="kept")
    paths = [Path(vault.workspace.file_path(a)) for a in doomed]
    for asset in doomed:
        vault.workspace.expire(asset.id)
    report = vault.cleanup()
    assert report.assets_removed == 3 and report.complete
    assert not any(p.exists() for p in paths)
    for asset in doomed:
        with pytest.raises(NotFoundError):
            vault.workspace.get(asset.id)
    assert vault.workspace.get(survivor.id).id == survivor.id
    lib = vault.library.get(kept.id)
    lib_path = Path(vault.library.file_path(lib))
    assert lib_path.read_bytes() == make_image(seed=0).read_bytes()
    assert os.stat(lib_path).st_nlink == 1
    assert vault.verify().clean
    assert vault.cleanup().assets_removed == 0
    assert vault.db.get_meta("last_cleanup") is not None


def test_cleanup_counts_what_it_removes_when_opened_without_auto_cleanup(vault: Vault, make_image):
    for asset in add_many(vault, make_image, 3):
        vault.workspace.expire(asset.id)
    root = vault.root
    vault.close()
    _set_last_cleanup(root, datetime.now(timezone.utc) - timedelta(hours=2))  # an open would clean them up first
    with Vault.open(root, auto_cleanup=False) as opened:
        assert opened.workspace.count() == 3
        assert opened.cleanup().assets_removed == 3 and opened.workspace.count() == 0


def test_cleanup_counts_only_the_files_it_removed(vault: Vault, make_image):
    """Files that cannot be removed stay queued and are not counted as removed (they were, before)."""
    job = str(uuid.uuid4())
    assets = add_many(vault, make_image, 3, job_id=job)
    paths = [Path(vault.workspace.file_path(a)) for a in assets]  # (once removed, file_path says not found)
    for asset in assets:
        vault.workspace.expire(asset.id)
    folder = vault.root / WORKSPACE_BUCKET / USER_A / job
    folder.chmod(0o555)
    try:
        with without_dac_override():  # root would remove them anyway
            report = vault.cleanup()
    finally:
        folder.chmod(0o755)
    assert (report.assets_removed, report.files_removed) == (3, 0)
    assert all(path.exists() for path in paths)
    again = vault.cleanup()  # the queued files go once they can
    assert (again.assets_removed, again.files_removed) == (0, 3)
    assert not folder.exists() and vault.verify().clean


def test_expire_future_keeps_asset(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    vault.workspace.expire(asset.id, datetime.now(timezone.utc) + timedelta(days=30))
    assert vault.cleanup().assets_removed == 0
    assert vault.workspace.get(asset.id).expires_at > datetime.now(timezone.utc) + timedelta(days=29)


def test_expire_to_a_year_before_1000_expires_it(vault: Vault, make_image):
    """A typo such as 205 for 2025: the year used to be stored as "205-…", which sorts after "2026-…", so the
    asset never expired and reading it back raised a raw pydantic error."""
    asset = vault.workspace.add(make_image(seed=1))
    vault.workspace.expire(asset.id, datetime(205, 1, 1, tzinfo=timezone.utc))
    time.sleep(0.002)  # an expiry is never before its creation: it is 1 ms after, maybe still ahead of the clock
    assert vault.workspace.get(asset.id).expires_at <= datetime.now(timezone.utc)
    assert vault.cleanup().assets_removed == 1


def test_an_expiry_stored_with_a_three_digit_year_is_mended_on_open(vault: Vault, make_image):
    """Vaults written before the fix hold "205-01-01…": migration 4 makes such an asset expire."""
    asset = vault.workspace.add(make_image(seed=1))
    root = vault.root
    vault.close()
    conn = raw_connection(root)
    conn.execute("UPDATE workspace_assets SET expires_at = '205-01-01T00:00:00.000Z' WHERE id = ?", (asset.id,))
    conn.execute("DROP TABLE write_intents")  # (a vault of version 3 had none: migration 5 makes it)
    conn.execute("DROP INDEX sync_outbox_row")  # (nor this index: migration 7)
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with Vault.open(root, auto_cleanup=False) as reopened:
        assert reopened.workspace.get(asset.id).expires_at <= datetime.now(timezone.utc)
        assert reopened.cleanup().assets_removed == 1


def test_expire_to_a_moment_without_a_utc_date_is_refused(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    before = vault.workspace.get(asset.id).expires_at
    west = timezone(-timedelta(hours=5))
    with pytest.raises(InvalidInputError, match="out of range"):
        vault.workspace.expire(asset.id, datetime.max.replace(tzinfo=west))
    with pytest.raises(InvalidInputError, match="out of range"):
        vault.workspace.expire(asset.id, datetime.min)  # naive: local time, which has no UTC date before year 1
    assert vault.workspace.get(asset.id).expires_at == before


def _set_last_cleanup(root: Path, moment: datetime) -> None:
    conn = raw_connection(root)
    conn.execute("INSERT OR REPLACE INTO vault_meta (key, value) VALUES ('last_cleanup', ?)", (format_time(moment),))
    conn.close()


def test_auto_cleanup_on_open_when_last_cleanup_is_old(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    vault.workspace.expire(asset.id)
    path = Path(vault.workspace.file_path(asset))
    root = vault.root
    vault.close()
    _set_last_cleanup(root, datetime.now(timezone.utc) - timedelta(minutes=10))
    with Vault.open(root) as recent:  # cleaned less than an hour ago: nothing happens on open
        assert recent.workspace.count() == 1 and path.exists()
    _set_last_cleanup(root, datetime.now(timezone.utc) - timedelta(hours=2))
    with Vault.open(root) as stale:
        assert stale.workspace.count() == 0
        assert not path.exists()
        last = datetime.fromisoformat(stale.db.get_meta("last_cleanup").replace("Z", "+00:00"))
        assert last > datetime.now(timezone.utc) - timedelta(minutes=1)


def test_a_last_cleanup_that_cannot_be_read_counts_as_none(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    vault.workspace.expire(asset.id)
    root = vault.root
    vault.close()
    conn = raw_connection(root)
    conn.execute("INSERT OR REPLACE INTO vault_meta (key, value) VALUES ('last_cleanup', 'yesterday-ish')")
    conn.close()
    with Vault.open(root) as reopened:  # before: a raw ValueError on every open
        assert reopened.workspace.count() == 0


# ------------------------------------------------------------- isolation


def test_other_user_sees_nothing(vault: Vault, other_user_vault: Vault, make_image, tmp_path: Path):
    mine = vault.workspace.add(make_image(seed=1), prompt="secret fox")
    kept = vault.library.save(mine.id, title="secret", tags=["fox"], collection=vault.collections.create("Mine").id)
    coll = vault.collections.get("Mine")
    other = other_user_vault
    for call in (
        lambda: other.workspace.get(mine.id),
        lambda: other.library.get(kept.id),
        lambda: other.library.save(mine.id),
        lambda: other.library.update(kept.id, title="stolen"),
        lambda: other.library.move(kept.id, None),
        lambda: other.library.delete(kept.id),
        lambda: other.workspace.delete(mine.id),
        lambda: other.workspace.expire(mine.id),
        lambda: other.collections.get(coll.id),
        lambda: other.collections.get("Mine"),
        lambda: other.collections.rename(coll.id, "x"),
        lambda: other.collections.delete(coll.id),
        lambda: other.collections.delete("Mine"),
        lambda: other.locate(kept.id),
        lambda: other.delete(mine.id),
        lambda: other.export(kept.id, tmp_path / "stolen.png"),
        lambda: other.library.list(collection=coll.id),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert other.workspace.list().items == []
    assert other.library.list().items == []
    assert other.library.list(search="secret fox").items == []
    assert other.library.list(tags=["fox"]).items == []
    assert other.collections.list() == []
    assert other.workspace.count() == other.library.count() == 0
    # the same bytes are fine for another user, and their own things stay theirs
    theirs = other.workspace.add(make_image(seed=1))
    assert theirs.temp_storage_path.startswith(USER_B + "/")
    their_kept = other.library.save(theirs.id, tags=["fox"])
    assert their_kept.storage_path.startswith(USER_B + "/")
    assert ids_of(vault.library.list(tags=["fox"]).items) == [kept.id]
    assert ids_of(other.library.list(tags=["fox"]).items) == [their_kept.id]
    # nothing of A was touched
    assert vault.library.get(kept.id).title == "secret"
    assert vault.collections.get("Mine").asset_count == 1
    assert not (tmp_path / "stolen.png").exists()


def test_cannot_save_into_another_users_collection(vault: Vault, other_user_vault: Vault, make_image):
    theirs = other_user_vault.collections.create("Theirs")
    asset = vault.workspace.add(make_image(seed=1))
    with pytest.raises(NotFoundError):
        vault.library.save(asset.id, collection=theirs.id)
    with pytest.raises(NotFoundError):
        vault.library.save(asset.id, collection="Theirs")
    with pytest.raises(NotFoundError):
        vault.library.add(make_image(seed=2), collection=theirs.id)
    kept = vault.library.save(asset.id)
    with pytest.raises(NotFoundError):
        vault.library.move(kept.id, theirs.id)
    assert vault.library.get(kept.id).collection_id is None
    assert other_user_vault.collections.get(theirs.id).asset_count == 0
    assert bucket_files(vault.root) == {(WORKSPACE_BUCKET, asset.temp_storage_path), (LIBRARY_BUCKET, kept.storage_path)}


def test_database_enforces_same_user_collection(vault: Vault, other_user_vault: Vault, make_image):
    theirs = other_user_vault.collections.create("Theirs")
    kept = vault.library.add(make_image(seed=1))
    with pytest.raises(sqlite3.IntegrityError):
        with vault.db.write() as conn:
            conn.execute("UPDATE user_library SET collection_id = ? WHERE id = ?", (theirs.id, kept.id))
    assert vault.library.get(kept.id).collection_id is None
    assert other_user_vault.collections.get(theirs.id).asset_count == 0


def test_same_collection_name_for_two_users(vault: Vault, other_user_vault: Vault):
    a = vault.collections.create("Shared name")
    b = other_user_vault.collections.create("Shared name")
    assert a.id != b.id
    assert vault.collections.get("Shared name").id == a.id
    assert other_user_vault.collections.get("Shared name").id == b.id


CAFE_COMPOSED, CAFE_DECOMPOSED = "Caf\u00e9", "Cafe\u0301"  # as Linux and as macOS keyboards give "Café"


def test_names_and_tags_typed_composed_or_decomposed_are_one(vault: Vault, make_image):
    made = vault.collections.create(CAFE_DECOMPOSED)
    assert made.name == CAFE_COMPOSED
    with pytest.raises(DuplicateError):
        vault.collections.create(CAFE_COMPOSED)
    assert vault.collections.get(CAFE_COMPOSED).id == made.id
    assert vault.collections.get(CAFE_DECOMPOSED).id == made.id
    kept = vault.library.save(vault.workspace.add(make_image(seed=1)).id, tags=[CAFE_DECOMPOSED])
    assert kept.tags == [CAFE_COMPOSED]
    assert vault.library.update(kept.id, add_tags=[CAFE_COMPOSED]).tags == [CAFE_COMPOSED]
    assert ids_of(vault.library.list(tags=[CAFE_DECOMPOSED]).items) == [kept.id]
    assert ids_of(vault.library.list(tags=[CAFE_COMPOSED], search="cafe").items) == [kept.id]


def test_decomposed_names_and_tags_of_an_older_vault_are_still_found(vault: Vault, make_image):
    older = vault.collections.create("older")
    kept = vault.library.save(vault.workspace.add(make_image(seed=1)).id, tags=["x"])
    conn = raw_connection(vault.root)  # as a vault written before names and tags were composed holds them
    conn.execute("UPDATE user_collections SET name = ? WHERE id = ?", (CAFE_DECOMPOSED, older.id))
    conn.execute("UPDATE user_library SET tags = ? WHERE id = ?", (f'["{CAFE_DECOMPOSED}", "x"]', kept.id))
    conn.close()
    assert vault.collections.get(CAFE_COMPOSED).id == older.id
    with pytest.raises(DuplicateError):
        vault.collections.create(CAFE_COMPOSED)
    assert vault.collections.rename(older.id, CAFE_COMPOSED).name == CAFE_COMPOSED  # its own old spelling
    for tags in ([CAFE_COMPOSED], ["x", CAFE_COMPOSED], [CAFE_COMPOSED, "x"]):
        assert ids_of(vault.library.list(tags=tags).items) == [kept.id]
    both = vault.library.save(vault.workspace.add(make_image(seed=2)).id)
    conn = raw_connection(vault.root)  # an entry of an older vault holding the tag in both spellings
    conn.execute("UPDATE user_library SET tags = ? WHERE id = ?", (f'["{CAFE_DECOMPOSED}", "{CAFE_COMPOSED}"]', both.id))
    conn.close()
    page = vault.library.list(tags=[CAFE_COMPOSED], limit=2)
    assert ids_of(page.items) == [both.id, kept.id] and page.next_cursor is None
    assert vault.library.update(kept.id, remove_tags=[CAFE_COMPOSED]).tags == ["x"]


# ---------------------------------------------------------------- verify


def test_verify_clean_vault(shared_library):
    vault, _ = shared_library
    report = vault.verify()
    assert report.clean
    assert report.checked == 24  # 12 workspace + 12 library rows
    assert not (report.missing or report.orphans or report.mismatched or report.stale_temps)


def test_verify_detects_and_repairs_orphan(vault: Vault, make_image):
    vault.workspace.add(make_image(seed=1))
    orphan = vault.root / LIBRARY_BUCKET / USER_A / f"{uuid.uuid4()}.png"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(make_image(seed=2).read_bytes())
    report = vault.verify()
    assert report.orphans == [f"{LIBRARY_BUCKET}/{USER_A}/{orphan.name}"]
    assert not report.clean
    assert orphan.exists()  # no repair without asking
    repaired = vault.verify(repair=True)
    assert repaired.repaired == report.orphans and repaired.clean
    assert not orphan.exists()
    moved = vault.root / "recovered" / LIBRARY_BUCKET / USER_A / orphan.name  # kept: it may be the only copy
    assert repaired.recovered == [str(moved)] and moved.read_bytes() == make_image(seed=2).read_bytes()
    assert vault.verify().clean and vault.workspace.count() == 1


def test_repair_after_restoring_an_older_vault_db_keeps_the_newer_files(tmp_path: Path, make_image):
    """Files committed after the backup have no row in it: they were deleted as orphans, lost for good."""
    root = tmp_path / "v"
    with Vault.create(root, user_id=USER_A) as vault:
        vault.library.add(make_image(seed=1), title="before the backup")
    backup = (root / "vault.db").read_bytes()
    with Vault.open(root) as vault:
        newer = vault.library.add(make_image(seed=2), title="after the backup")
        newer_bytes = Path(vault.library.file_path(newer)).read_bytes()
    (root / "vault.db").write_bytes(backup)
    with Vault.open(root) as restored:
        report = restored.verify(repair=True)
        assert report.orphans == [f"{LIBRARY_BUCKET}/{newer.storage_path}"] and report.clean
        assert Path(report.recovered[0]).read_bytes() == newer_bytes
        again = restored.library.add(report.recovered[0], title="added back")  # as the CLI's message says
        assert again.sha256 == newer.sha256 and restored.verify().clean


def test_verify_reports_a_file_it_cannot_read_and_goes_on(vault: Vault, make_image):
    """Before: a raw PermissionError at the first such file, nothing else checked."""
    unreadable = vault.library.add(make_image(seed=1), title="locked")
    fine = vault.library.add(make_image(seed=2), title="fine")
    os.unlink(vault.library.file_path(fine))
    path = Path(vault.library.file_path(unreadable))
    path.chmod(0)
    try:
        with without_dac_override():
            report = vault.verify()
            repaired = vault.verify(repair=True)
    finally:
        path.chmod(0o644)
    entry = f"{LIBRARY_BUCKET}/{unreadable.storage_path}"
    assert report.unreadable == [entry] and report.asset_ids[entry] == unreadable.id and not report.clean
    assert report.missing == [f"{LIBRARY_BUCKET}/{fine.storage_path}"]  # the check went on past it
    assert repaired.unreadable == [entry] and not repaired.clean and path.is_file()  # never touched
    assert vault.library.get(unreadable.id).id == unreadable.id


def test_a_temp_file_linked_from_an_old_rig_file_is_not_stale(vault: Vault, make_image):
    """import --link stages a hard link to the rig's file, which keeps that file's mtime (days ago): its age is
    the link's (the ctime), or a repair running beside the import removed its staged files."""
    source = make_image(seed=1)
    old = time.time() - 3 * 86400
    os.utime(source, (old, old))
    folder = vault.root / WORKSPACE_BUCKET / USER_A
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    os.link(source, staged)
    report = vault.verify(repair=True)
    assert report.stale_temps == [] and staged.exists()
    # The rig file removed before the commit (a review): the link, its only copy now, counts from then too.
    source.unlink()
    assert vault.verify(repair=True).stale_temps == [] and staged.exists()
    from localvault import _stale_temps

    _stale_temps.sweep(vault.db, vault.files)
    assert staged.exists()


def test_verify_detects_missing_file(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    os.unlink(vault.workspace.file_path(asset))
    report = vault.verify()
    assert report.missing == [f"{WORKSPACE_BUCKET}/{asset.temp_storage_path}"]
    assert not report.clean
    vault.verify(repair=True)
    with pytest.raises(NotFoundError):  # its file is gone for good: the row goes too
        vault.workspace.get(asset.id)
    assert vault.verify().clean


def test_repair_keeps_a_library_row_whose_file_is_gone(vault: Vault, make_image):
    """Deleting it would queue a sync delete of the server's good copy: it is reported, to restore or rm on purpose."""
    collection = vault.collections.create("Kept")
    kept = vault.library.add(make_image(seed=1), collection="Kept")
    queued = outbox(vault)
    os.unlink(vault.library.file_path(kept))
    report = vault.verify(repair=True)
    assert report.unrepairable == [f"{LIBRARY_BUCKET}/{kept.storage_path}"] and not report.clean
    assert vault.library.get(kept.id).id == kept.id and vault.collections.get(collection.id).asset_count == 1
    assert outbox(vault) == queued  # no delete queued for the server


def test_repair_refuses_to_start_when_a_bucket_folder_is_missing(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.add(make_image(seed=2))
    os.rename(vault.root / WORKSPACE_BUCKET, vault.root / "elsewhere")  # a disk not mounted, a folder moved
    with pytest.raises(StorageError, match="is missing: is the disk mounted"):
        vault.verify(repair=True)
    assert vault.workspace.get(asset.id) and vault.library.get(kept.id)
    assert vault.verify().missing == [f"{WORKSPACE_BUCKET}/{asset.temp_storage_path}"]  # reported, not repaired


def test_quick_repair_does_not_restore_from_a_damaged_twin(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)
    os.unlink(vault.library.file_path(kept))
    with open(vault.workspace.file_path(asset), "r+b") as twin:  # the twin is damaged too (in place)
        twin.seek(40)
        twin.write(b"\xff" * 16)
    report = vault.verify(repair=True, check_hashes=False)
    assert report.unrepairable == [f"{LIBRARY_BUCKET}/{kept.storage_path}"]
    assert not Path(vault.library.file_path(kept)).exists()


def test_verify_restores_missing_file_from_twin(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)
    os.unlink(vault.library.file_path(kept))
    report = vault.verify(repair=True)
    assert report.missing == [f"{LIBRARY_BUCKET}/{kept.storage_path}"]
    assert Path(vault.library.file_path(kept)).read_bytes() == make_image(seed=1).read_bytes()
    assert vault.verify().clean


def test_verify_detects_hash_mismatch(vault: Vault, make_image):
    kept = vault.library.add(make_image(seed=1))
    path = Path(vault.library.file_path(kept))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = vault.verify()
    assert report.mismatched == [f"{LIBRARY_BUCKET}/{kept.storage_path}"]
    assert not report.clean
    assert not vault.verify(repair=True).clean  # no twin to restore from
    quick = vault.verify(check_hashes=False)  # no hashing: damaged bytes go unseen, a missing file does not
    assert quick.clean and quick.checked == 1
    os.unlink(path)
    assert vault.verify(check_hashes=False).missing == [f"{LIBRARY_BUCKET}/{kept.storage_path}"]


def test_verify_detects_stale_temp_file(vault: Vault, make_image, monkeypatch: pytest.MonkeyPatch):
    from localvault import _stale_temps

    vault.workspace.add(make_image(seed=1))
    folder = vault.root / WORKSPACE_BUCKET / USER_A
    stale = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    fresh = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    stale.write_bytes(b"half written")
    monkeypatch.setattr(_stale_temps, "STALE_TEMP_SECONDS", 1.0)  # (an hour: a ctime cannot be set back)
    time.sleep(1.1)
    fresh.write_bytes(b"being written right now")
    report = vault.verify()
    assert report.stale_temps == [f"{WORKSPACE_BUCKET}/{USER_A}/{stale.name}"]
    assert report.orphans == []  # a young temp file may be another process's write
    assert not report.clean
    assert vault.verify(repair=True).clean
    assert not stale.exists() and fresh.exists()


def test_pending_deletes_drained_on_open(vault: Vault, make_image):
    keep = vault.library.add(make_image(seed=1))
    orphan = vault.root / LIBRARY_BUCKET / USER_A / f"{uuid.uuid4()}.png"
    orphan.write_bytes(make_image(seed=2).read_bytes())
    root = vault.root
    vault.close()
    conn = raw_connection(root)  # a crash after the row delete committed, before the file went
    conn.execute("INSERT INTO pending_deletes (bucket, path) VALUES (?, ?)", (LIBRARY_BUCKET, f"{USER_A}/{orphan.name}"))
    conn.execute("INSERT INTO pending_deletes (bucket, path) VALUES (?, ?)", (LIBRARY_BUCKET, keep.storage_path))
    conn.close()
    with Vault.open(root) as reopened:
        assert not orphan.exists()
        assert Path(reopened.library.file_path(keep)).exists()  # a live row's file is never removed
        assert reopened.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == 0
        assert reopened.verify().clean


def test_a_queued_file_that_cannot_be_removed_does_not_lock_the_vault(vault: Vault, make_image,
                                                                        caplog: pytest.LogCaptureFixture):
    from localvault.pending import BATCH

    root = vault.root
    stuck = [root / LIBRARY_BUCKET / USER_A / f"{uuid.uuid4()}.png" for _ in range(BATCH + 1)]
    for path in stuck:
        (path / "inside").mkdir(parents=True)  # a folder where the file was: unlink() fails (even for root)
    gone = root / LIBRARY_BUCKET / USER_A / f"{uuid.uuid4()}.png"
    gone.write_bytes(make_image(seed=2).read_bytes())
    vault.close()
    conn = raw_connection(root)  # deletions queued, as a crash after their rows went would leave them: more
    for path in (*stuck, gone):  # that cannot go than a batch, then one that can
        conn.execute("INSERT INTO pending_deletes (bucket, path) VALUES (?, ?)", (LIBRARY_BUCKET, f"{USER_A}/{path.name}"))
    conn.close()
    for _ in range(2):  # every open works, and those that cannot go stay queued
        caplog.clear()
        with Vault.open(root) as reopened:
            assert not gone.exists() and all(path.is_dir() for path in stuck)
            assert reopened.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == len(stuck)
            assert reopened.library.count() == 0
        warnings = [r.getMessage() for r in caplog.records if "stay queued" in r.getMessage()]
        assert 1 <= len(warnings) < 10 and "cannot remove" in warnings[0]  # a line per batch, not per file


# ------------------------------------------------------------ migrations


def test_schema_version_recorded(vault: Vault):
    assert schema_version() >= 1
    assert vault.db.conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()
    tables = {r[0] for r in vault.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"user_collections", "workspace_assets", "user_library", "sync_outbox", "pending_deletes"} <= tables


def test_newer_schema_refused(vault: Vault):
    root = vault.root
    vault.close()
    conn = raw_connection(root)
    conn.execute(f"PRAGMA user_version = {schema_version() + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError) as refused:
        Vault.open(root)
    # (never 'pip install -U localvault': that name on PyPI is another project's; an upgrade journey)
    assert "from its checkout" in str(refused.value) and "pip install -U" not in str(refused.value)
    with pytest.raises(SchemaVersionError):
        Vault.open(root, readonly=True)


def test_corrupt_database_refused(tmp_path: Path):
    root = tmp_path / "v"
    Vault.create(root).close()
    for suffix in ("-wal", "-shm"):
        (root / f"vault.db{suffix}").unlink(missing_ok=True)
    (root / "vault.db").write_bytes(os.urandom(8192))
    with pytest.raises(VaultCorruptError):
        Vault.open(root)


def test_foreign_sqlite_database_refused(tmp_path: Path):
    root = tmp_path / "v"
    Vault.create(root).close()
    for suffix in ("", "-wal", "-shm"):
        (root / f"vault.db{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(root / "vault.db")
    conn.execute("CREATE TABLE someone_elses (x)")
    conn.commit()
    conn.close()
    with pytest.raises(VaultCorruptError):
        Vault.open(root)
    conn = sqlite3.connect(root / "vault.db")  # left as it was
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["someone_elses"]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()


def test_search_ignores_case_and_diacritics(vault: Vault, make_image):
    kept = vault.library.add(make_image(seed=1), prompt="Un café à Montréal", title="Crème brûlée")
    vault.library.add(make_image(seed=2), prompt="a tea house")
    for words in ("cafe", "CAFÉ", "montreal", "creme brulee", "Café Montréal"):
        assert ids_of(vault.library.list(search=words).items) == [kept.id], words


def test_search_words_joined_by_a_list_separator_match_in_any_order(vault: Vault, make_image):
    """Before: ``solo,1girl`` went to FTS5 as one quoted string, which it reads as a phrase, in that order: a
    prompt pasted the usual comma-separated way (``1girl, solo, …``) was not found by its own words reordered.
    Other punctuation still binds its words, in order (a LoRA's weight, a version, an apostrophe)."""
    kept = vault.library.add(make_image(seed=1), prompt="1girl, solo, masterpiece, red fox <lora:add_detail:0.8>",
                             title="title card foo, sdxl 1.5, don't panic")
    other = vault.library.add(make_image(seed=2), prompt="1girl, crowd, red panda <lora:add_detail:0.5>, <lora:film:0.8>",
                              title="version 5.1, t-shirt, don panic")
    for words in ("solo,1girl", "fox,red", "masterpiece;fox", "Fox|RED!", "card-foo", "add_detail:0.8", "1.5",
                  "don't"):
        assert ids_of(vault.library.list(search=words).items) == [kept.id], words
    assert ids_of(vault.library.list(search="red,panda,solo").items) == []
    assert ids_of(vault.library.list(search="film:0.8").items) == [other.id]


def test_search_finds_emoji_and_passes_over_punctuation(vault: Vault, make_image):
    """SQLite's unicode61 tokenizer keeps some emoji as words (🦊) and drops others (😀) and symbols (✨): those it
    drops are looked for as substrings, so every word the user gives must match; punctuation alone is no word
    (a search of nothing else is refused: it found nothing)."""
    import localvault
    from localvault._search import TOKENIZER

    emoji = vault.library.add(make_image(seed=1), prompt="a fox 🦊 in the snow ✨ 😀", tags=["🇫🇷"])
    plain = vault.library.add(make_image(seed=2), prompt="a fox in the rain")
    for words in ("🦊", "fox 🦊", "fox ✨", "😀", "fox 😀", "🇫🇷", "fox, 😀!"):
        assert ids_of(vault.library.list(search=words).items) == [emoji.id], words
    assert set(ids_of(vault.library.list(search="fox (").items)) == {emoji.id, plain.id}
    with pytest.raises(InvalidInputError, match="no word to look for"):
        vault.library.list(search="( - ***")
    migration = (Path(localvault.__file__).parent / "schema" / "sqlite" / "0001_initial.sql").read_text()
    assert f"tokenize = '{TOKENIZER}'" in migration  # (the words asked of SQLite are the index's)


def test_reopen_does_not_migrate_again(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    root = vault.root
    vault.close()
    for _ in range(2):
        with Vault.open(root) as again:
            assert again.workspace.get(asset.id).id == asset.id
            assert again.db.user_version() == schema_version()


# ---------------------------------------------------------------- counts


def test_asset_count_exact(vault: Vault, make_image):
    a, b = vault.collections.create("A"), vault.collections.create("B")

    def counts():
        got = {c.name: c.asset_count for c in vault.collections.list()}
        assert got == {c.name: real_count(vault, c.id) for c in vault.collections.list()}
        return got

    kept = [vault.library.add(make_image(seed=i), collection="A") for i in range(4)]
    assert counts() == {"A": 4, "B": 0}
    ws = vault.workspace.add(make_image(seed=10))
    vault.library.save(ws.id, collection=b.id)
    assert counts() == {"A": 4, "B": 1}
    vault.library.move(kept[0].id, "B")
    vault.library.move(kept[1].id, None)
    vault.library.move(kept[2].id, "A")  # no-op move
    assert counts() == {"A": 2, "B": 2}
    vault.library.delete(kept[3].id)
    assert counts() == {"A": 1, "B": 2}
    vault.library.update(kept[1].id, collection="A", title="back")
    assert counts() == {"A": 2, "B": 2}
    vault.collections.delete("B")
    assert counts() == {"A": 2}
    assert vault.library.get(kept[0].id).collection_id is None  # released, not deleted
    vault.collections.delete(a.id)
    assert vault.collections.list() == []
    assert vault.library.count() == 4
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK keeps it from going negative
        with vault.db.write() as conn:
            conn.execute("INSERT INTO user_collections (id, user_id, name, asset_count) VALUES (?, ?, 'neg', -1)",
                         (str(uuid.uuid4()), USER_A))


# ---------------------------------------------------------------- outbox


def test_outbox_rows_for_library_and_collections_only(vault: Vault, make_image):
    ws = vault.workspace.add(make_image(seed=1))
    ws2 = vault.workspace.add(make_image(seed=2))
    vault.workspace.expire(ws2.id)
    vault.cleanup()
    assert outbox(vault) == []  # workspace changes are never queued
    coll = vault.collections.create("C")
    assert outbox(vault) == [("user_collections", coll.id, "insert")]
    kept = vault.library.save(ws.id, collection="C")
    assert outbox(vault)[1:] == [("user_library", kept.id, "insert")]  # the count change is not queued
    vault.library.update(kept.id, title="t")
    vault.collections.rename("C", "D")
    vault.library.move(kept.id, None)
    direct = vault.library.add(make_image(seed=3))
    vault.library.delete(direct.id)
    vault.collections.delete("D")
    vault.workspace.delete(ws.id)
    assert outbox(vault)[2:] == [
        ("user_library", kept.id, "update"),
        ("user_collections", coll.id, "update"),
        ("user_library", kept.id, "update"),
        ("user_library", direct.id, "insert"),
        ("user_library", direct.id, "delete"),
        ("user_collections", coll.id, "delete"),
    ]


def test_a_collection_delete_releases_its_assets_unstamped_and_unqueued(vault: Vault, make_image):
    """The server releases them itself, keeping their updated_at: sent again with a new one, they won over newer
    edits made on another machine and brought back rows deleted there."""
    birds = vault.collections.create("Birds")
    vault.collections.create("Other")
    inside = [vault.library.save(vault.workspace.add(make_image(seed=n)).id, collection="Birds") for n in (1, 2)]
    outside = vault.library.save(vault.workspace.add(make_image(seed=3)).id, collection="Other")
    before = {a.id: vault.library.get(a.id).updated_at for a in (*inside, outside)}
    queued = len(outbox(vault))
    vault.collections.delete("Birds")
    assert outbox(vault)[queued:] == [("user_collections", birds.id, "delete")]
    assert [vault.library.get(a.id).collection_id for a in inside] == [None, None]
    assert {a.id: vault.library.get(a.id).updated_at for a in (*inside, outside)} == before
    assert vault.collections.get("Other").asset_count == 1
    moved = vault.library.move(outside.id, None)  # a move out of a collection that is still there is an edit
    assert moved.updated_at > before[outside.id] and outbox(vault)[-1] == ("user_library", outside.id, "update")


def test_a_filter_of_tags_reads_the_rarest_tags_rows_and_none_for_a_tag_no_row_has(vault: Vault):
    """It read every row of the first tag given (or of a searched word) to check the others: 1.5 s over a
    million rows for a tag no row has."""
    with vault.db.write() as conn:
        conn.executemany(
            "INSERT INTO user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,"
            " original_prompt, model_used, generation_seed, sha256, tags) VALUES (?, ?, 'image', ?, 1, 'image/png',"
            " 'a cinematic shot', 'm', 0, ?, ?)",
            ((str(uuid.uuid4()), vault.user_id, f"{vault.user_id}/{n}.png", f"{n:064x}",
              '["common", "rare"]' if n == 7 else '["common"]') for n in range(20_000)))
    rare_first, page = sqlite_steps(vault.db.conn, lambda: vault.library.list(tags=["rare", "common"]))
    common_first, same = sqlite_steps(vault.db.conn, lambda: vault.library.list(tags=["common", "rare"]))
    assert len(page.items) == 1 and [a.id for a in same.items] == [page.items[0].id]
    assert common_first <= rare_first + 5, (rare_first, common_first)
    for tags, search in ((["common", "missing"], None), (["missing"], "cinematic"), (["common", "missing"], "shot")):
        steps, empty = sqlite_steps(vault.db.conn, lambda t=tags, s=search: vault.library.list(tags=t, search=s))
        assert empty.items == [] and steps <= rare_first + 5, (tags, search, steps)
    steps, found = sqlite_steps(vault.db.conn, lambda: vault.library.list(tags=["common", "rare"], search="cinematic"))
    assert [a.id for a in found.items] == [page.items[0].id]


def _sqlite_memory_peak(reset: bool) -> int:
    """SQLite's own peak of memory in this process, in bytes (``sqlite3_memory_highwater``); ``reset`` starts anew."""
    import _sqlite3
    import ctypes

    highwater = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_highwater
    highwater.restype, highwater.argtypes = ctypes.c_int64, [ctypes.c_int]
    return int(highwater(int(reset)))


def test_deleting_a_collection_of_many_entries_holds_little_memory(vault: Vault):
    """Its entries are released in one statement, whose undo journal SQLite kept in memory (temp_store MEMORY):
    479 MiB for a collection of 98,000 (a heavy user's journey). It goes to a temporary file now: SQLite's peak
    stays near its page cache (16 MB)."""
    many = vault.collections.create("Many")
    with vault.db.write() as conn:
        conn.executemany(
            "INSERT INTO user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,"
            " original_prompt, model_used, generation_seed, sha256, collection_id)"
            " VALUES (?, ?, 'image', ?, 1, 'image/png', ?, 'm', 0, ?, ?)",
            ((str(uuid.uuid4()), vault.user_id, f"{vault.user_id}/{n}.png", f"entry {n} " + "word " * 200,
              f"{n:064x}", many.id) for n in range(40_000)))
    _sqlite_memory_peak(reset=True)
    vault.collections.delete("Many")
    peak = _sqlite_memory_peak(reset=False)
    assert vault.library.list(limit=1).items[0].collection_id is None
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_a_call_returns_what_it_committed_though_another_process_deletes_it_at_once(
        vault: Vault, make_image, monkeypatch: pytest.MonkeyPatch):
    """save, add, update, create, rename and describe once read their row back after the commit: another
    process deleting it in between made a call that had succeeded raise NotFoundError."""
    from contextlib import contextmanager

    write = vault.db.write

    @contextmanager
    def others_delete_all_just_after_the_commit(**options: Any) -> Iterator[sqlite3.Connection]:
        with write(**options) as conn:
            yield conn
        other = raw_connection(vault.root)  # another process, right after our COMMIT
        other.execute("UPDATE user_library SET collection_id = NULL")
        other.execute("DELETE FROM user_library")
        other.execute("DELETE FROM user_collections")
        other.close()

    ws = vault.workspace.add(make_image(seed=1))
    monkeypatch.setattr(vault.db, "write", others_delete_all_just_after_the_commit)
    assert vault.library.save(ws.id, title="Fox").title == "Fox"
    assert vault.library.add(make_image(seed=3), title="Wolf").title == "Wolf"
    assert vault.collections.create("Foxes", description="red").description == "red"
    monkeypatch.undo()
    kept = vault.library.add(make_image(seed=4), title="a")
    monkeypatch.setattr(vault.db, "write", others_delete_all_just_after_the_commit)
    assert vault.library.update(kept.id, title="b").title == "b"
    monkeypatch.undo()
    vault.collections.create("C1")
    monkeypatch.setattr(vault.db, "write", others_delete_all_just_after_the_commit)
    assert vault.collections.rename("C1", "C2").name == "C2"
    monkeypatch.undo()
    vault.collections.create("C3")
    monkeypatch.setattr(vault.db, "write", others_delete_all_just_after_the_commit)
    assert vault.collections.describe("C3", "new").description == "new"


def test_an_update_that_changes_nothing_queues_nothing(vault: Vault, make_image):
    """A value already there is no change: no outbox entry to sync, and updated_at (the last writer's
    stamp, which would win over a later edit on the server) stays as it was."""
    vault.collections.create("Foxes", description="red ones")
    kept = vault.library.save(vault.workspace.add(make_image(seed=1)).id, title="Fox", tags=["fox"],
                              collection="Foxes", favorite=True, visibility="unlisted")
    before = outbox(vault)
    for same in ({"title": "Fox"}, {"tags": ["fox"]}, {"add_tags": ["fox"]}, {"remove_tags": ["wolf"]},
                 {"favorite": True}, {"visibility": "unlisted"}, {"collection": "Foxes"},
                 {"title": "Fox", "favorite": True, "tags": ["fox"]}):
        assert vault.library.update(kept.id, **same).updated_at == kept.updated_at, same
    vault.collections.describe("Foxes", "red ones")
    vault.collections.rename("Foxes", "Foxes")
    assert outbox(vault) == before
    changed = vault.library.update(kept.id, title="Fox", favorite=False)  # one change among same values
    assert changed.title == "Fox" and changed.is_favorite is False
    assert outbox(vault)[len(before):] == [("user_library", kept.id, "update")]


def test_blank_description_is_no_description(vault: Vault):
    assert vault.collections.create("A", description="").description is None
    vault.collections.describe("A", "something")
    assert vault.collections.describe("A", "  \n").description is None
    assert vault.collections.create("B", description=" x ").description == " x "


def test_collection_name_shaped_as_an_id_is_refused(vault: Vault):
    """Collections are named by id or name: another's id as a name made calls by that name act on the other."""
    holiday = vault.collections.create("Holiday")
    for name in (holiday.id, holiday.id.upper(), str(uuid.uuid4())):
        with pytest.raises(InvalidInputError, match="shape of an id"):
            vault.collections.create(name)
        with pytest.raises(InvalidInputError, match="shape of an id"):
            vault.collections.rename("Holiday", name)
    assert [c.name for c in vault.collections.list()] == ["Holiday"]


def test_verify_reads_rows_in_pages(vault: Vault, make_image, monkeypatch: pytest.MonkeyPatch):
    """Rows and files are read a page at a time (pages of 2 here): each is checked once, none skipped."""
    from localvault import verify as verify_module

    monkeypatch.setattr(verify_module, "PAGE_ROWS", 2)
    assets = [vault.workspace.add(make_image(seed=n)) for n in range(5)]
    kept = [vault.library.add(make_image(seed=n)) for n in range(10, 13)]
    os.unlink(vault.workspace.file_path(assets[3]))
    os.unlink(vault.library.file_path(kept[2]))
    stray = [(WORKSPACE_BUCKET, "stray.png"), (WORKSPACE_BUCKET, f"{USER_A}/stray.png"),  # beside job folders
             (LIBRARY_BUCKET, f"{USER_A}/stray.png"), (LIBRARY_BUCKET, "x/y/z/deep.png")]
    for bucket, relative in stray:
        path = vault.root / bucket / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an asset")
    folder_instead = vault.workspace.file_path(assets[1])  # a folder where a row's file should be
    os.unlink(folder_instead)
    os.mkdir(folder_instead)
    for quick in (False, True):
        report = vault.verify(check_hashes=not quick)
        assert report.checked == 8
        assert sorted(report.missing) == sorted([f"{WORKSPACE_BUCKET}/{assets[1].temp_storage_path}",
                                                 f"{WORKSPACE_BUCKET}/{assets[3].temp_storage_path}",
                                                 f"{LIBRARY_BUCKET}/{kept[2].storage_path}"])
        assert sorted(report.orphans) == sorted(f"{bucket}/{relative}" for bucket, relative in stray)
        assert not report.mismatched


def test_vault_files_on_another_fsspec_filesystem(tmp_path: Path, make_image):
    """The buckets on a non-local fsspec filesystem (memory://): add, import, save, delete and verify all work."""
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    vault = Vault.create(tmp_path / "vault", user_id=USER_A, fs=fs)
    try:
        first = vault.workspace.add(make_image(seed=1), prompt="one")
        second = vault.workspace.add(make_image(seed=2))
        kept = vault.library.save(first.id, title="kept")
        rig = tmp_path / "rig"
        rig.mkdir()
        for n in range(3):
            make_image(seed=10 + n).rename(rig / f"{n}.png")
        assert len(vault.workspace.import_folder(rig).imported) == 3
        assert not (tmp_path / "vault" / WORKSPACE_BUCKET / kept.storage_path).exists()  # nothing on the disk
        assert fs.cat(vault.files.full_path(LIBRARY_BUCKET, kept.storage_path)) == make_image(seed=1).read_bytes()
        assert vault.verify().clean and vault.verify().checked == 6
        vault.workspace.delete(second.id)
        vault.library.delete(kept.id)
        assert not fs.exists(vault.files.full_path(LIBRARY_BUCKET, kept.storage_path))
        fs.pipe(vault.files.full_path(LIBRARY_BUCKET, f"{USER_A}/orphan.png"), b"stray")
        report = vault.verify(repair=True)
        assert report.orphans == [f"{LIBRARY_BUCKET}/{USER_A}/orphan.png"] and report.clean
        assert vault.verify().clean and vault.verify().checked == 4
    finally:
        vault.close()


def _restore_older_db_then_add(tmp_path: Path, make_image, add_again) -> tuple[Vault, bytes, str]:
    """Asset 0 of a job, a backup, asset 1 of the job, then the backup restored: 1.png has no row any more."""
    root = tmp_path / "v"
    job = str(uuid.uuid4())
    with Vault.create(root, user_id=USER_A) as vault:
        vault.workspace.add(make_image(seed=1), job_id=job)
    backup = (root / "vault.db").read_bytes()
    with Vault.open(root) as vault:
        lost = vault.workspace.add(make_image(seed=2), job_id=job)
        assert lost.asset_index == 1
        lost_path = vault.workspace.file_path(lost)
        lost_bytes = Path(lost_path).read_bytes()
    (root / "vault.db").write_bytes(backup)
    restored = Vault.open(root)
    added = add_again(restored, job)
    assert Path(restored.workspace.file_path(added)).read_bytes() == make_image(seed=3).read_bytes()
    return restored, lost_bytes, lost.temp_storage_path


@pytest.mark.parametrize("how", ["add", "add_batch"])
def test_an_add_sets_aside_a_file_without_a_row_at_its_path(tmp_path: Path, make_image, how: str):
    """Before: the new file replaced 1.png, the only copy of the asset whose row the restore lost."""
    def add_again(vault: Vault, job: str) -> WorkspaceAsset:
        if how == "add":
            return vault.workspace.add(make_image(seed=3), job_id=job)
        staged = vault.files.stage(make_image(seed=3), WORKSPACE_BUCKET, f"{USER_A}/{job}")
        facts = media.facts(Path(staged.temp_path), media.MediaType.png)
        [(asset_id, index)] = vault.workspace.add_batch([BatchEntry(staged, facts, job, 0, "", "unknown", "{}")])
        return vault.workspace.get(asset_id)

    restored, lost_bytes, lost_path = _restore_older_db_then_add(tmp_path, make_image, add_again)
    with restored:
        moved = restored.root / "recovered" / WORKSPACE_BUCKET / lost_path
        assert moved.read_bytes() == lost_bytes
        assert restored.verify().clean and restored.workspace.count() == 2


def test_an_add_replaces_a_file_queued_for_deletion_without_setting_it_aside(vault: Vault, make_image):
    """A file whose row is gone and whose deletion is queued is rubbish, not a lost asset."""
    job = str(uuid.uuid4())
    vault.workspace.add(make_image(seed=1), job_id=job)
    doomed = vault.workspace.add(make_image(seed=2), job_id=job)
    with vault.db.write() as conn:  # what a delete does when removing the file fails: the file stays, queued
        conn.execute("DELETE FROM workspace_assets WHERE id = ?", (doomed.id,))
        conn.execute("INSERT INTO pending_deletes (bucket, path) VALUES (?, ?)",
                     (WORKSPACE_BUCKET, doomed.temp_storage_path))
    again = vault.workspace.add(make_image(seed=3), job_id=job)
    assert again.temp_storage_path == doomed.temp_storage_path
    assert not (vault.root / "recovered").exists()
    assert Path(vault.workspace.file_path(again)).read_bytes() == make_image(seed=3).read_bytes()


def test_an_add_replaces_a_stray_with_its_own_bytes_silently(vault: Vault, make_image,
                                                              caplog: pytest.LogCaptureFixture):
    """What an add killed between its rename and its commit leaves: running it again must not set the file aside."""
    job = str(uuid.uuid4())
    first = vault.workspace.add(make_image(seed=1), job_id=job)
    stray = Path(vault.workspace.file_path(first)).with_name("1.png")
    stray.write_bytes(make_image(seed=3).read_bytes())
    with caplog.at_level(logging.WARNING, logger="localvault"):
        again = vault.workspace.add(make_image(seed=3), job_id=job)
    assert Path(vault.workspace.file_path(again)) == stray and not (vault.root / "recovered").exists()
    assert not caplog.records and vault.verify().clean


def test_each_thread_has_its_own_connection_closed_when_the_thread_ends(vault: Vault, make_image) -> None:
    """A threaded app: a thread's connection does not outlive it (one per request thread would leak files)."""
    import gc
    import threading

    vault.workspace.add(make_image())
    fds_before = len(os.listdir("/proc/self/fd"))
    seen: list[int] = []
    for _ in range(30):
        thread = threading.Thread(target=lambda: seen.append(vault.workspace.count()))
        thread.start()
        thread.join()
    gc.collect()
    assert seen == [1] * 30
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2


def test_a_closed_vault_says_so_in_every_thread(tmp_path: Path) -> None:
    import threading

    vault = Vault.create(tmp_path / "v", user_id=USER_A)
    errors: list[BaseException] = []
    ready, go = threading.Event(), threading.Event()

    def use_after_close() -> None:
        vault.library.count()  # this thread's connection is open
        ready.set()
        go.wait(10)
        try:
            vault.library.count()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=use_after_close)
    thread.start()
    ready.wait(10)
    vault.close()
    go.set()
    thread.join(10)
    with pytest.raises(StorageError, match="is closed; open it again"):
        vault.workspace.count()
    assert len(errors) == 1 and isinstance(errors[0], StorageError) and "is closed" in str(errors[0])


def test_a_closed_vault_does_not_take_a_remote(vault: Vault) -> None:
    """Before: set_remote touched the database only when a remote was set already, so a closed vault wrote its
    localvault.toml anyway."""
    settings = (vault.root / "localvault.toml").read_bytes()
    vault.close()
    with pytest.raises(StorageError, match="is closed; open it again"):
        vault.set_remote("postgresql://u@db.example/app", "s3://user-library")
    assert (vault.root / "localvault.toml").read_bytes() == settings


def test_every_threads_connection_is_configured_alike(vault: Vault) -> None:
    """The one connection of before had sqlite-utils' recursive_triggers on; each thread's must too, whatever
    touched it first (it depended on whether that thread had used ``db.utils``)."""
    import threading

    settings: list[tuple[int, int, int]] = []

    def read_settings() -> None:
        conn = vault.db.conn
        settings.append(tuple(conn.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore[arg-type]
                              for name in ("recursive_triggers", "foreign_keys", "busy_timeout")))

    read_settings()
    thread = threading.Thread(target=read_settings)
    thread.start()
    thread.join()
    assert settings[0] == settings[1] == (1, 1, 60_000)
    assert vault.db.utils is vault.db.utils  # one sqlite-utils view per thread, not one per use


def test_closing_the_vault_lets_another_threads_write_finish_then_refuses(tmp_path: Path) -> None:
    """A write under way in another thread when the vault closes completes (its connection is not pulled from
    under it); that thread's next use is refused."""
    import threading

    vault = Vault.create(tmp_path / "v", user_id=USER_A)
    inside, closed = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            with vault.db.write() as conn:
                inside.set()
                closed.wait(10)
                conn.execute("INSERT INTO vault_meta (key, value) VALUES ('written', 'during close')")
            vault.db.get_meta("written")
        except BaseException as exc:  # looked at below
            outcome.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    inside.wait(10)
    vault.close()
    closed.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], StorageError) and "is closed" in str(outcome[0])
    with Vault.open(tmp_path / "v") as again:
        assert again.db.get_meta("written") == "during close"


def test_closing_the_vault_while_threads_query_it_never_crashes(tmp_path: Path) -> None:
    """Closing each thread's connection from the closing thread, under a query another thread was running,
    crashed the interpreter (a segmentation fault in Python's sqlite3), 4 times out of 4."""
    import subprocess
    import sys

    Vault.create(tmp_path / "v", user_id=USER_A).close()
    script = f"""
import threading, time
from localvault import Vault, StorageError
for trial in range(10):
    vault = Vault.open({str(tmp_path / "v")!r})
    stop, ends = threading.Event(), []
    def loop():
        try:
            while not stop.is_set():
                vault.library.list(limit=5)
                vault.workspace.list(limit=5)
        except StorageError as exc:
            ends.append(str(exc))
    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads: t.start()
    time.sleep(0.1)
    vault.close()
    time.sleep(0.05)
    stop.set()
    for t in threads: t.join(10)
    assert len(ends) == 3 and all("is closed" in e for e in ends), ends
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_a_damaged_or_foreign_database_is_named_before_a_missing_toml(tmp_path: Path, readonly: bool) -> None:
    """Following "localvault.toml is missing; recreate it" first only led to the real problem: the database."""
    import sqlite3

    junk, foreign = tmp_path / "junk", tmp_path / "foreign"
    junk.mkdir()
    (junk / "vault.db").write_bytes(b"x" * 5000)
    foreign.mkdir()
    conn = sqlite3.connect(foreign / "vault.db")
    conn.execute("CREATE TABLE notes (text)")
    conn.commit()
    conn.close()
    with pytest.raises(VaultCorruptError, match="not a readable localvault database"):
        Vault.open(junk, readonly=readonly)
    with pytest.raises(VaultCorruptError, match="tables that are not a localvault's"):
        Vault.open(foreign, readonly=readonly)
    assert not (junk / "localvault.toml").exists() and not (foreign / "localvault.toml").exists()


def test_an_id_prefix_names_the_one_asset_whose_id_starts_so(vault: Vault, other_user_vault: Vault, make_image,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What a person types after 'ls': the first 6 or more hex digits of an id, with or without its hyphens, name
    the one asset (library or workspace) of this user whose id starts so; several or none are said."""
    made = iter(range(1, 200))  # every new id starts with abcdef, then two hex digits of its own
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(f"abcdef{next(made):02x}-1234-4000-8000-00000000000a"))
    first = vault.workspace.add(make_image(seed=1))
    second = vault.workspace.add(make_image(seed=2))
    kept = vault.library.save(first.id)
    theirs = other_user_vault.workspace.add(make_image(seed=3))  # another user's

    assert vault.resolve_id(second.id[:8]) == second.id
    assert vault.resolve_id(f" {kept.id[:11].upper()} ") == kept.id
    assert vault.resolve_id(kept.id.replace("-", "")[:13]) == kept.id  # without the hyphens
    assert vault.resolve_id(first.id.upper()) == first.id  # a whole id, as it is
    assert vault.get(vault.resolve_id(first.id[:8])).id == first.id
    with pytest.raises(InvalidInputError, match="several assets") as several:
        vault.resolve_id("abcdef")
    assert set(re.findall(r"[0-9a-f-]{36}", str(several.value))) == {first.id, second.id, kept.id}
    with pytest.raises(NotFoundError, match=f"no asset id in this vault starts with '{theirs.id[:8]}'"):
        vault.resolve_id(theirs.id[:8])
    for not_a_prefix in ("abcde", "abcdeg", "", first.id + "0"):
        with pytest.raises(InvalidInputError, match="nor the first 6 or more hex digits of one"):
            vault.resolve_id(not_a_prefix)


def test_a_clock_set_back_after_a_cleanup_does_not_stop_the_cleanups(vault: Vault, make_image):
    """A cleanup made while the clock was a day (or a year) ahead recorded that time: once the clock was set right,
    no automatic cleanup ran, nor the daily sweep of temporary files, until it caught up (a journey)."""
    from datetime import datetime, timedelta, timezone

    from localvault import _stale_temps
    from localvault.timestamps import format_time

    asset = vault.workspace.add(make_image(seed=4))
    vault.workspace.expire(asset.id)
    ahead = format_time(datetime.now(timezone.utc) + timedelta(days=365))
    with vault.db.write() as conn:
        vault.db.set_meta(conn, "last_cleanup", ahead)
        vault.db.set_meta(conn, "last_temp_sweep", ahead)
    assert vault.cleanup_due() and _stale_temps.sweep_due(vault.db)
    root = vault.root
    vault.close()
    with Vault.open(root) as again:
        assert again.workspace.count() == 0 and not again.cleanup_due() and not _stale_temps.sweep_due(again.db)
        slightly = format_time(datetime.now(timezone.utc) + timedelta(minutes=1))  # another machine's clock
        with again.db.write() as conn:
            again.db.set_meta(conn, "last_cleanup", slightly)
        assert not again.cleanup_due()


def test_expire_now_an_asset_made_while_the_clock_was_ahead(vault: Vault, make_image):
    """Made while the clock ran a year ahead, the asset kept its expiry at 1 ms after that creation: expiring it
    now left it for a year (a journey). A creation later than now is taken as now."""
    from datetime import datetime, timedelta, timezone

    from localvault.timestamps import format_time

    asset = vault.workspace.add(make_image(seed=4))
    ahead = datetime.now(timezone.utc) + timedelta(days=365)
    with vault.db.write() as conn:
        conn.execute("UPDATE workspace_assets SET created_at = ?, expires_at = ? WHERE id = ?",
                     (format_time(ahead), format_time(ahead + timedelta(days=7)), asset.id))
    vault.workspace.expire(asset.id)
    time.sleep(0.002)  # (1 ms after its creation, now)
    expired = vault.workspace.get(asset.id)
    assert expired.created_at <= datetime.now(timezone.utc) and expired.expires_at <= datetime.now(timezone.utc)
    assert vault.cleanup().assets_removed == 1
    later = vault.workspace.add(make_image(seed=5))  # a later date given is kept
    with vault.db.write() as conn:
        conn.execute("UPDATE workspace_assets SET created_at = ?, expires_at = ? WHERE id = ?",
                     (format_time(ahead), format_time(ahead + timedelta(days=7)), later.id))
    vault.workspace.expire(later.id, ahead + timedelta(days=30))
    kept = vault.workspace.get(later.id)
    assert format_time(kept.expires_at) == format_time(ahead + timedelta(days=30))
    assert kept.created_at <= datetime.now(timezone.utc)


def test_a_temp_file_written_before_the_clock_was_set_back_is_stale(vault: Vault, make_image):
    from localvault import _stale_temps

    folder = vault.root / WORKSPACE_BUCKET / USER_A
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    temp.write_bytes(b"half written, a day ahead")
    ahead = time.time() + 86400
    os.utime(temp, (ahead, ahead))
    _stale_temps.sweep(vault.db, vault.files)
    assert not temp.exists()
