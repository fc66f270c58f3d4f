"""Every refusal raises its specific LocalVaultError subclass and leaves no row and no file behind."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import USER_B, image_bytes, mp4_bytes, table_counts, vault_files, write_media
from mediafiles import jpeg_with_thumbnail

import localvault.files
import localvault.ingest
import localvault.media
import localvault.models
import localvault.rows
from localvault import (
    DuplicateError,
    EmptyFileError,
    FileTooLargeError,
    InvalidInputError,
    LocalVaultError,
    NotFoundError,
    StorageError,
    UnsupportedMediaError,
    Vault,
)
from localvault.models import MAX_FILE_BYTES, MAX_SEED, MAX_TAGS
from localvault.watch import Watcher

GOOD_UUID = "12345678-1234-4123-8123-123456789abc"


@dataclass
class Ctx:
    vault: Vault
    other: Vault
    src: Path
    saved_ws: Any  # a workspace asset already saved to the library
    fresh_ws: Any  # a workspace asset not saved yet
    kept: Any  # the library asset saved from saved_ws
    direct: Any  # a library asset added directly
    theirs: Any  # another user's collection
    ro: Vault  # the same vault opened read-only
    cursor: str  # a valid next_cursor of a plain workspace listing
    search_cursor: str  # a valid next_cursor of a library search

    def file(self, name: str, data: bytes) -> Path:
        path = self.src / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-input")
    vault = Vault.create(base / "vault")
    other = Vault.open(base / "vault", user_id=USER_B)
    src = base / "src"
    saved_ws = vault.workspace.add(write_media(src, "png", 1), prompt="fox one")
    fresh_ws = vault.workspace.add(write_media(src, "jpg", 2), prompt="fox two")
    vault.workspace.add(write_media(src, "webp", 3), prompt="fox three")
    vault.collections.create("Mine")
    kept = vault.library.save(saved_ws.id, title="kept", collection="Mine")
    direct = vault.library.add(write_media(src, "mp4", 4), prompt="fox four")
    theirs = other.collections.create("Theirs")
    cursor = vault.workspace.list(limit=1).next_cursor
    search_cursor = vault.library.list(search="fox", limit=1).next_cursor
    assert cursor and search_cursor
    ro = Vault.open(base / "vault", readonly=True)
    yield Ctx(vault, other, src, saved_ws, fresh_ws, kept, direct, theirs, ro, cursor, search_cursor)
    ro.close()
    other.close()
    vault.close()


def _cut_after_thumbnail(whole: bytes) -> bytes:
    """The file as a crashed rig leaves it: the thumbnail's end marker (FF D9) lands in the last 1024 bytes."""
    cut = whole[:whole.index(b"\xff\xd9") + 2 + 1000]
    assert len(cut) < len(whole) and b"\xff\xda" in cut  # the scan had begun
    return cut


def _dangling(link: Path) -> Path:
    """A symbolic link to a file that is not there (on a disk not mounted, say)."""
    if not link.is_symlink():
        link.symlink_to(link.parent / "not-mounted" / "image.png")
    return link


def _looped(link: Path) -> Path:
    """A symbolic link to itself (a loop of links)."""
    if not link.is_symlink():
        link.symlink_to(link.name)
    return link


def _png(seed: int) -> bytes:
    return image_bytes("png", 1000 + seed)


def _with_bad_text_chunk_at_its_end(png: bytes) -> bytes:
    """The PNG with a text chunk after its image data whose CRC is wrong (Pillow does not read that far)."""
    import zlib

    text = b"tEXt" + b"Comment\x00edited by hand"
    bad_crc = ((zlib.crc32(text) + 1) & 0xFFFFFFFF).to_bytes(4, "big")
    at = png.index(b"IEND") - 4
    return png[:at] + (len(text) - 4).to_bytes(4, "big") + text + bad_crc + png[at:]


def _with_bad_parameters_chunk_before_its_data(png: bytes) -> bytes:
    """The PNG with an A1111 ``parameters`` text chunk where Pillow and A1111 write it, before the image data,
    one bit of its text flipped after its CRC was made."""
    import zlib

    text = b"tEXt" + b"parameters\x00a red fox\nSteps: 20, Seed: 7, Model: sdxl"
    crc = zlib.crc32(text).to_bytes(4, "big")
    text = text[:-1] + bytes([text[-1] ^ 0x01])
    at = png.index(b"IDAT") - 4
    return png[:at] + (len(text) - 4).to_bytes(4, "big") + text + crc + png[at:]


def _idat_named_ancillary(png: bytes) -> bytes:
    """The PNG with one bit flipped in its last IDAT chunk's name ("iDAT": an ancillary chunk's, by its case)."""
    at = png.rindex(b"IDAT")
    return png[:at] + b"i" + png[at + 1:]


def _flipped_in_image_data(png: bytes) -> bytes:
    """The PNG with one bit flipped in the middle of its first IDAT chunk's data (a bad disk, a bad copy)."""
    start = png.index(b"IDAT") + 4
    length = int.from_bytes(png[start - 8:start - 4], "big")
    at = start + length // 2
    return png[:at] + bytes([png[at] ^ 0x10]) + png[at + 1:]


def _tree(root: Path) -> set[str]:
    """Every folder under the vault (a refused add must not leave an empty job folder either)."""
    return {os.path.relpath(folder, root) for folder, _dirs, _names in os.walk(root)}


Case = Callable[[Ctx], Any]

CASES: dict[str, tuple[type[LocalVaultError], Case]] = {
    # ---- media type, wholeness, size
    "png named .jpg": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("a.jpg", _png(1)))),
    "png named .jpg (library)": (UnsupportedMediaError, lambda c: c.vault.library.add(c.file("b.jpg", _png(2)))),
    "jpeg named .png": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("c.png", image_bytes("jpg", 3)))),
    "mp4 named .webp": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("d.webp", mp4_bytes(4)))),
    "truncated png": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("t.png", _png(5)[:-20]))),
    "truncated png (library)": (UnsupportedMediaError, lambda c: c.vault.library.add(c.file("t2.png", _png(6)[:200]))),
    "truncated jpeg": (UnsupportedMediaError,
                       lambda c: c.vault.workspace.add(c.file("t.jpg", image_bytes("jpg", 7, (64, 64))[:-300]))),
    "jpeg cut a little after its EXIF thumbnail": (UnsupportedMediaError, lambda c: c.vault.workspace.add(
        c.file("t3.jpg", _cut_after_thumbnail(jpeg_with_thumbnail(seed=7))))),
    "png with a bit flipped in its image data": (UnsupportedMediaError, lambda c: c.vault.workspace.add(
        c.file("flip.png", _flipped_in_image_data(image_bytes("png", 40, (64, 64)))))),
    "png whose IDAT's name lost its case bit": (UnsupportedMediaError, lambda c: c.vault.workspace.add(
        c.file("idat.png", _idat_named_ancillary(image_bytes("png", 43, (256, 256)))))),
    "png with a bit flipped (library)": (UnsupportedMediaError, lambda c: c.vault.library.add(
        c.file("flip2.png", _flipped_in_image_data(image_bytes("png", 41, (64, 64)))))),
    "truncated webp": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("t.webp", image_bytes("webp", 8)[:-40]))),
    "truncated mp4": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("t.mp4", mp4_bytes(9)[:-17]))),
    "mp4 cut inside moov": (UnsupportedMediaError, lambda c: c.vault.library.add(c.file("t2.mp4", mp4_bytes(10)[:100]))),
    "zero-byte png": (EmptyFileError, lambda c: c.vault.workspace.add(c.file("empty.png", b""))),
    "zero-byte mp4 (library)": (EmptyFileError, lambda c: c.vault.library.add(c.file("empty.mp4", b""))),
    "text named .mp4": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("notes.mp4", b"just some text\n" * 20))),
    "text named .png (library)": (UnsupportedMediaError, lambda c: c.vault.library.add(c.file("notes.png", b"hello " * 50))),
    "unknown extension .gif": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("pic.gif", _png(11)))),
    "no extension": (UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("picture", _png(12)))),
    "directory": (InvalidInputError, lambda c: c.vault.workspace.add(c.src)),
    "directory named .png": (InvalidInputError, lambda c: c.vault.library.add(_mkdir(c.src / "folder.png"))),
    "missing file": (NotFoundError, lambda c: c.vault.workspace.add(c.src / "does-not-exist.png")),
    "missing file (library)": (NotFoundError, lambda c: c.vault.library.add(c.src / "does-not-exist.jpg")),
    "path with a NUL character": (InvalidInputError, lambda c: c.vault.workspace.add(f"{c.src}/a\0b.png")),
    "file name too long for the disk": (StorageError, lambda c: c.vault.library.add(c.src / ("n" * 300 + ".png"))),
    "webp whose header claims a 20000x20000 canvas": (
        UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("canvas.webp", _webp_claiming(20_000, 20_000)))),
    # (the server's width and height are PostgreSQL integers: such a row was kept here and refused by every sync)
    "png whose header claims 2**31 pixels wide": (
        UnsupportedMediaError, lambda c: c.vault.workspace.add(c.file("wide.png", _png_claiming(2**31, 4)))),
    "png whose header claims 2**32-1 pixels high (library)": (
        UnsupportedMediaError, lambda c: c.vault.library.add(c.file("tall.png", _png_claiming(4, 2**32 - 1)))),
    # ---- ids
    "workspace get bad uuid": (InvalidInputError, lambda c: c.vault.workspace.get("not-a-uuid")),
    "library get bad uuid": (InvalidInputError, lambda c: c.vault.library.get("1234")),
    "library delete bad uuid": (InvalidInputError, lambda c: c.vault.library.delete("x" * 36)),
    "workspace delete bad uuid": (InvalidInputError, lambda c: c.vault.workspace.delete("")),
    "vault delete bad uuid": (InvalidInputError, lambda c: c.vault.delete("12345678-1234-4123-8123-12345678")),
    "save bad uuid": (InvalidInputError, lambda c: c.vault.library.save("not-a-uuid", title="x")),
    "update bad uuid": (InvalidInputError, lambda c: c.vault.library.update("nope", title="x")),
    "expire bad uuid": (InvalidInputError, lambda c: c.vault.workspace.expire("nope")),
    "job id bad uuid": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("job.png", _png(13)), job_id="job-1")),
    "job id bad uuid in list": (InvalidInputError, lambda c: c.vault.workspace.list(job_id="job-1")),
    "unknown workspace asset": (NotFoundError, lambda c: c.vault.library.save(GOOD_UUID)),
    "unknown library asset": (NotFoundError, lambda c: c.vault.library.delete(GOOD_UUID)),
    "another user's workspace asset": (NotFoundError, lambda c: c.other.library.save(c.fresh_ws.id)),
    "another user's library asset": (NotFoundError, lambda c: c.other.library.delete(c.kept.id)),
    "info that is a dict, not a GenerationInfo": (
        InvalidInputError, lambda c: c.vault.workspace.add(c.file("i1.png", _png(60)), info={"prompt": "x"})),
    "info that is a dict, not a GenerationInfo (library)": (
        InvalidInputError, lambda c: c.vault.library.add(c.file("i2.png", _png(61)), info={"prompt": "x"})),
    "collection named by a number": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, collection=5)),
    # ---- seed
    "negative seed": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("s1.png", _png(14)), seed=-1)),
    "negative seed (library)": (InvalidInputError, lambda c: c.vault.library.add(c.file("s2.png", _png(15)), seed=-5)),
    "non-integer seed text": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("s3.png", _png(16)), seed="abc")),
    "non-integer seed float": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("s4.png", _png(17)), seed=1.5)),
    "boolean seed": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("s5.png", _png(18)), seed=True)),
    "seed above 2**63-1": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("s6.png", _png(19)), seed=MAX_SEED + 1)),
    "seed above 2**63-1 as text": (InvalidInputError,
                                   lambda c: c.vault.library.add(c.file("s7.png", _png(20)), seed=str(2**64))),
    # ---- text
    "prompt of 1 MB": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("p1.png", _png(21)), prompt="x" * 1_000_000)),
    "prompt of 1 MB (library)": (InvalidInputError, lambda c: c.vault.library.add(c.file("p2.png", _png(22)), prompt="y" * 2**20)),
    "prompt with NUL": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("p3.png", _png(23)), prompt="a\x00b")),
    "model with newline": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("m.png", _png(24)), model="sd\nxl")),
    "tag with control character": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, tags=["ok", "bad\x07tag"])),
    "tag with newline": (InvalidInputError, lambda c: c.vault.library.update(c.kept.id, add_tags=["two\nlines"])),
    "tag with escape (library add)": (InvalidInputError, lambda c: c.vault.library.add(c.file("tg.png", _png(25)), tags=["\x1b[31m"])),
    "empty tag": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, tags=["  "])),
    "too many tags": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, tags=[f"t{i}" for i in range(MAX_TAGS + 1)])),
    "too many tags by adding": (InvalidInputError,
                                lambda c: c.vault.library.update(c.kept.id, add_tags=[f"t{i}" for i in range(MAX_TAGS + 1)])),
    "tags as a string": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, tags="fox,red")),
    "tags filter as a string": (InvalidInputError, lambda c: c.vault.library.list(tags="fox")),
    "empty title": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, title="")),
    "blank title": (InvalidInputError, lambda c: c.vault.library.update(c.kept.id, title="   ")),
    "over-long title": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, title="t" * 301)),
    "empty collection name": (InvalidInputError, lambda c: c.vault.collections.create("")),
    "collection name with control char": (InvalidInputError, lambda c: c.vault.collections.create("a\x00b")),
    "empty search": (InvalidInputError, lambda c: c.vault.library.list(search="   ")),
    "search of punctuation alone": (InvalidInputError, lambda c: c.vault.library.list(search="( - *** {} _")),
    # lone surrogates: what Python makes of a shell argument that is not UTF-8 (SQLite cannot store them)
    "prompt with a lone surrogate": (InvalidInputError,
                                     lambda c: c.vault.workspace.add(c.file("u1.png", _png(44)), prompt="caf\udce9")),
    "title with a lone surrogate": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, title="caf\udce9")),
    "tag with a lone surrogate": (InvalidInputError, lambda c: c.vault.library.update(c.kept.id, add_tags=["\ud800"])),
    "collection name with a lone surrogate": (InvalidInputError, lambda c: c.vault.collections.create("caf\udce9")),
    "search with a lone surrogate": (InvalidInputError, lambda c: c.vault.library.list(search="caf\udce9")),
    "search not text": (InvalidInputError, lambda c: c.vault.library.list(search=42)),
    "import with 0 workers": (InvalidInputError, lambda c: c.vault.workspace.import_folder(c.file("w0.png", _png(45)).parent,
                                                                                          workers=0)),
    "collection named with a lone surrogate (save)": (InvalidInputError,
                                                      lambda c: c.vault.library.save(c.fresh_ws.id, collection="c\udcff")),
    "collection named with a lone surrogate (move)": (InvalidInputError,
                                                      lambda c: c.vault.library.move(c.kept.id, "c\udcff")),
    "collection to delete named with a lone surrogate": (InvalidInputError,
                                                         lambda c: c.vault.collections.delete("c\udcff")),
    "database URL with a lone surrogate": (InvalidInputError,
                                           lambda c: c.vault.set_remote("postgresql://h/d\udcff", "s3://b")),
    "bucket URL with a lone surrogate": (InvalidInputError,
                                         lambda c: c.vault.set_remote("postgresql://h/d", "s3://b\udcff")),
    "storage option with a lone surrogate": (InvalidInputError,
                                             lambda c: c.vault.set_remote("postgresql://h/d", "s3://b",
                                                                          {"key": "k\udcff"})),
    # ---- settings
    "settings a list": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("j1.png", _png(26)), settings=[1, 2])),
    "settings a JSON list": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("j2.png", _png(27)), settings="[1, 2]")),
    "settings a JSON string": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("j3.png", _png(28)), settings='"steps"')),
    "settings plain text": (InvalidInputError, lambda c: c.vault.library.add(c.file("j4.png", _png(29)), settings="steps=20")),
    "settings invalid JSON": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("j5.png", _png(30)), settings='{"a": ')),
    "settings with NaN": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("j6.png", _png(31)), settings={"cfg": float("nan")})),
    # (settings read back by pydantic stop at 200 levels: these were committed, then failed, then broke every listing)
    "settings nested 201 deep": (InvalidInputError,
                                 lambda c: c.vault.workspace.add(c.file("j7.png", _png(40)), settings=_nested(201))),
    "settings nested 2,000 deep as text (library)": (
        InvalidInputError, lambda c: c.vault.library.add(c.file("j8.png", _png(41)), settings='{"a":' * 2000 + "1" + "}" * 2000)),
    "settings with a 5,000-digit number": (InvalidInputError,
                                           lambda c: c.vault.workspace.add(c.file("j9.png", _png(42)), settings='{"a": 1' + "0" * 5000 + "}")),
    # (PostgreSQL's jsonb refuses \u0000: such settings were kept here and refused by every sync)
    "settings with a NUL character": (InvalidInputError,
                                      lambda c: c.vault.workspace.add(c.file("j11.png", _png(47)), settings={"s": "a\0b"})),
    "settings as JSON text with \\u0000 in a key (library)": (
        InvalidInputError, lambda c: c.vault.library.add(c.file("j12.png", _png(48)), settings='{"a\\u0000": 1}')),
    "settings with a lone surrogate": (InvalidInputError,
                                       lambda c: c.vault.workspace.add(c.file("j10.png", _png(43)), settings={"a": "caf\udce9"})),
    # ---- collections
    "unknown collection on save": (NotFoundError, lambda c: c.vault.library.save(c.fresh_ws.id, collection="Nope")),
    "empty collection name on add": (InvalidInputError, lambda c: c.vault.library.add(c.file("ec.png", _png(33)),
                                                                                     collection="")),
    "blank collection name on save": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, collection=" ")),
    "unknown collection on add": (NotFoundError, lambda c: c.vault.library.add(c.file("uc.png", _png(32)), collection=GOOD_UUID)),
    "unknown collection on move": (NotFoundError, lambda c: c.vault.library.move(c.kept.id, "Nope")),
    "another user's collection on save": (NotFoundError, lambda c: c.vault.library.save(c.fresh_ws.id, collection=c.theirs.id)),
    "another user's collection by name": (NotFoundError, lambda c: c.vault.library.save(c.fresh_ws.id, collection="Theirs")),
    "another user's collection on add": (NotFoundError,
                                         lambda c: c.vault.library.add(c.file("oc.png", _png(33)), collection=c.theirs.id)),
    "another user's collection on move": (NotFoundError, lambda c: c.vault.library.move(c.direct.id, c.theirs.id)),
    "delete another user's collection": (NotFoundError, lambda c: c.vault.collections.delete(c.theirs.id)),
    "duplicate collection name": (DuplicateError, lambda c: c.vault.collections.create("Mine")),
    "duplicate collection name with spaces": (DuplicateError, lambda c: c.vault.collections.create("  Mine ")),
    "rename onto taken name": (DuplicateError, lambda c: c.other.collections.rename("Theirs", _other_collection(c))),
    # ---- duplicates
    "duplicate add of same bytes": (DuplicateError,
                                    lambda c: c.vault.workspace.add(c.file("again.png", (c.src / "png-1-32x32.png").read_bytes()))),
    "duplicate add into same job index": (DuplicateError, lambda c: c.vault.workspace.add(
        c.file("idx.png", _png(34)), job_id=c.fresh_ws.job_id, asset_index=c.fresh_ws.asset_index)),
    "duplicate library add of same bytes": (DuplicateError,
                                            lambda c: c.vault.library.add(c.file("again.mp4", mp4_bytes(4)))),
    "library add of bytes already saved": (DuplicateError,
                                           lambda c: c.vault.library.add(c.file("again2.png", (c.src / "png-1-32x32.png").read_bytes()))),
    "duplicate save": (DuplicateError, lambda c: c.vault.library.save(c.saved_ws.id, title="again")),
    # ---- a vault opened read-only refuses every write
    "add to a read-only vault": (StorageError, lambda c: c.ro.workspace.add(c.file("ro1.png", _png(36)))),
    "library add to a read-only vault": (StorageError, lambda c: c.ro.library.add(c.file("ro2.png", _png(37)))),
    "save in a read-only vault": (StorageError, lambda c: c.ro.library.save(c.fresh_ws.id)),
    "update in a read-only vault": (StorageError, lambda c: c.ro.library.update(c.kept.id, title="ro")),
    "delete in a read-only vault": (StorageError, lambda c: c.ro.library.delete(c.direct.id)),
    "collection in a read-only vault": (StorageError, lambda c: c.ro.collections.create("ro")),
    # ---- opening
    "create with a bad user id": (InvalidInputError, lambda c: Vault.create(c.src / "new-vault", user_id="alice")),
    "open with a bad user id": (InvalidInputError, lambda c: Vault.open(c.vault.root, user_id="bob")),
    "create over an existing vault": (DuplicateError, lambda c: Vault.create(c.vault.root)),
    # ---- enums, flags, paging
    "bad visibility on save": (InvalidInputError, lambda c: c.vault.library.save(c.fresh_ws.id, visibility="secret")),
    "bad visibility on update": (InvalidInputError, lambda c: c.vault.library.update(c.kept.id, visibility="PUBLIC")),
    "favorite not a bool": (InvalidInputError, lambda c: c.vault.library.update(c.kept.id, favorite="yes")),
    "negative asset index": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("ai.png", _png(35)), asset_index=-1)),
    "asset index 2**63 (past SQLite's integers)": (
        InvalidInputError, lambda c: c.vault.workspace.add(c.file("ai2.png", _png(45)), asset_index=2**63)),
    "asset index past PostgreSQL's integer": (
        InvalidInputError, lambda c: c.vault.workspace.add(c.file("ai3.png", _png(46)), asset_index=2**31)),
    "cursor nested 100,000 deep": (InvalidInputError, lambda c: c.vault.workspace.list(cursor=_deep_cursor())),
    "cursor not text": (InvalidInputError, lambda c: c.vault.library.list(cursor=42)),
    # ---- arguments of the wrong type
    "add None": (InvalidInputError, lambda c: c.vault.workspace.add(None)),
    "library add None": (InvalidInputError, lambda c: c.vault.library.add(None)),
    "expire with a date as text": (InvalidInputError, lambda c: c.vault.workspace.expire(c.fresh_ws.id, when="2030-01-01")),
    "export to None": (InvalidInputError, lambda c: c.vault.export(c.kept.id, None)),
    "export into a bucket of the vault": (InvalidInputError,
                                          lambda c: c.vault.export(c.kept.id, f"{c.vault.root}/user-library/")),
    "export into the vault's folder": (InvalidInputError, lambda c: c.vault.export(c.kept.id, c.vault.root / "k.png")),
    "export through a link into the vault": (InvalidInputError,
                                             lambda c: c.vault.export(c.kept.id, _link_to(c.src / "in", c.vault.root))),
    "open None": (InvalidInputError, lambda c: Vault.open(None)),
    "import with -1 workers": (InvalidInputError, lambda c: c.vault.workspace.import_folder(c.src, workers=-1)),
    "import with workers as text": (InvalidInputError, lambda c: c.vault.workspace.import_folder(c.src, workers="x")),
    "create in a folder holding other files": (InvalidInputError, lambda c: Vault.create(c.src)),
    "create on a file": (InvalidInputError, lambda c: Vault.create(c.file("not-a-folder", b"x"))),
    "create under a file": (InvalidInputError, lambda c: Vault.create(c.file("not-a-folder-2", b"x") / "vault")),
    "a symbolic link to nothing": (NotFoundError, lambda c: c.vault.library.add(_dangling(c.src / "gone.png"))),
    "a symbolic link to itself": (StorageError, lambda c: c.vault.library.add(_looped(c.src / "loop.png"))),
    "bad cursor": (InvalidInputError, lambda c: c.vault.workspace.list(cursor="garbage!")),
    "bad cursor (library)": (InvalidInputError, lambda c: c.vault.library.list(cursor="eyJ4IjogMX0")),
    # (a cursor made by hand: it paged by whatever text it held)
    "cursor with a date that is none": (InvalidInputError, lambda c: c.vault.workspace.list(
        cursor=localvault.rows.encode_cursor("workspace", "notadate", c.fresh_ws.id))),
    "cursor with an id that is none": (InvalidInputError, lambda c: c.vault.library.list(
        cursor=localvault.rows.encode_cursor("library", "2026-11-28T10:00:00.000Z", "zz"))),
    "search cursor on plain listing": (InvalidInputError, lambda c: c.vault.library.list(cursor=c.search_cursor)),
    "workspace cursor on the library": (InvalidInputError, lambda c: c.vault.library.list(cursor=c.cursor)),
    "plain cursor on search": (InvalidInputError, lambda c: c.vault.library.list(search="fox", cursor=c.cursor)),
    "search cursor past 64 bits": (InvalidInputError,
                                   lambda c: c.vault.library.list(search="fox", cursor=_cursor("library search", 2**64))),
    "search cursor true (JSON's bool for rowid 1)": (InvalidInputError,
                                                     lambda c: c.vault.library.list(search="fox", cursor=_cursor("library search", True))),
    "cursor with a lone surrogate": (InvalidInputError,
                                     lambda c: c.vault.workspace.list(cursor=_cursor("workspace", "\ud800", "x"))),
    "cursor with a lone surrogate (library)": (InvalidInputError,
                                               lambda c: c.vault.library.list(cursor=_cursor("library", "2026", "\udfff"))),
    "page size 0": (InvalidInputError, lambda c: c.vault.workspace.list(limit=0)),
    "page size negative": (InvalidInputError, lambda c: c.vault.library.list(limit=-3)),
    "page size too big": (InvalidInputError, lambda c: c.vault.library.list(limit=1001)),
    "page size text": (InvalidInputError, lambda c: c.vault.workspace.list(limit="10")),
    "page size bool": (InvalidInputError, lambda c: c.vault.library.list(limit=True)),
    # ---- flags and numbers that must be what they say ("no" is truthy: a repair would run)
    "verify repair as text": (InvalidInputError, lambda c: c.vault.verify(repair="no")),
    "verify check_hashes as text": (InvalidInputError, lambda c: c.vault.verify(check_hashes="false")),
    "import recursive as text": (InvalidInputError, lambda c: c.vault.workspace.import_folder(c.src, recursive="no")),
    "sync full as text": (InvalidInputError, lambda c: c.vault.sync(_unreachable_remote(), full="no")),
    "open readonly as text": (InvalidInputError, lambda c: Vault.open(c.vault.root, readonly="no")),
    "open auto_cleanup as text": (InvalidInputError, lambda c: Vault.open(c.vault.root, auto_cleanup="no")),
    "housekeeping auto_cleanup as text": (InvalidInputError, lambda c: c.vault.housekeeping(auto_cleanup="no")),
    "cleanup max_assets as text": (InvalidInputError, lambda c: c.vault.workspace.cleanup(max_assets="1")),
    "cleanup max_assets negative": (InvalidInputError, lambda c: c.vault.workspace.cleanup(max_assets=-1)),
    "vault cleanup max_assets 0": (InvalidInputError, lambda c: c.vault.cleanup(max_assets=0)),
    "find_sha256 not hex": (InvalidInputError, lambda c: c.vault.workspace.find_sha256("zz")),
    "find_sha256 not hex (library)": (InvalidInputError, lambda c: c.vault.library.find_sha256("g" * 64)),
    "seed as a float": (InvalidInputError, lambda c: c.vault.workspace.add(c.file("seed.png", _png(40)), seed=7.0)),
    "file_path of a number": (InvalidInputError, lambda c: c.vault.library.file_path(42)),  # type: ignore[arg-type]
    "file_path of an unknown id": (NotFoundError,
                                   lambda c: c.vault.workspace.file_path("00000000-0000-4000-8000-000000000000")),
    # ---- a sync's batch size (0 sent nothing yet said it had synced; -1 left a row behind each time)
    "sync batch_rows 0": (InvalidInputError, lambda c: c.vault.sync(_unreachable_remote(), batch_rows=0)),
    "sync batch_rows negative": (InvalidInputError, lambda c: c.vault.sync(_unreachable_remote(), batch_rows=-1)),
    "sync batch_rows as a flag": (InvalidInputError, lambda c: c.vault.sync(_unreachable_remote(), batch_rows=True)),
    # (it uploaded and committed on the server, then could not acknowledge: every sync sent the same again)
    "sync of a read-only vault": (StorageError, lambda c: c.ro.sync(_unreachable_remote())),
    # ---- a watcher's options are checked when it is made, not first in its thread (a StorageError at stop())
    "watch poll_seconds negative": (InvalidInputError, lambda c: Watcher(c.vault, c.src, poll_seconds=-1)),
    "watch poll_seconds 0": (InvalidInputError, lambda c: Watcher(c.vault, c.src, poll_seconds=0)),
    "watch stable_seconds NaN": (InvalidInputError, lambda c: Watcher(c.vault, c.src, stable_seconds=float("nan"))),
    "watch quiet_seconds as text": (InvalidInputError, lambda c: Watcher(c.vault, c.src, quiet_seconds="1")),
    "watch sidecar_wait_seconds negative": (InvalidInputError,
                                            lambda c: Watcher(c.vault, c.src, sidecar_wait_seconds=-0.5)),
    "watch with an unknown mode": (InvalidInputError, lambda c: Watcher(c.vault, c.src, mode="hardlink")),
    "watch with 0 workers": (InvalidInputError, lambda c: Watcher(c.vault, c.src, workers=0)),
    "watch stable_seconds set negative": (InvalidInputError, lambda c: setattr(Watcher(c.vault, c.src),
                                                                               "stable_seconds", -1)),
    # ---- paths the system cannot look at (a name over 255 bytes): an OSError escaped
    "import a folder whose name is too long": (InvalidInputError,
                                               lambda c: c.vault.workspace.import_folder(c.src / ("x" * 300))),
    "watch a folder whose name is too long": (InvalidInputError, lambda c: Watcher(c.vault, c.src / ("x" * 300))),
    "export under a name too long": (InvalidInputError, lambda c: c.vault.export(c.kept.id, c.src / ("x" * 300) / "k")),
}


def _unreachable_remote() -> Any:
    """A remote no sync could reach (a refused flag must be refused before anything is tried)."""
    from localvault.sync import Remote

    return Remote("postgresql://u:p@127.0.0.1:1/db", "memory://never")


def _webp_claiming(width: int, height: int) -> bytes:
    """A small WebP inside a VP8X header that claims a huge canvas (Pillow's WebP reader refuses it as a bomb)."""
    import struct

    data = image_bytes("webp", 60, (8, 8))
    vp8x = (b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + data[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose IHDR (checksum made good) claims another size."""
    import struct
    import zlib

    data = _png(49)
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def _cursor(listing: str, *parts: Any) -> str:
    """A cursor shaped as the library makes them for ``listing``, holding any parts."""
    return localvault.rows.encode_cursor(listing, *parts)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _deep_cursor() -> str:
    import base64

    return base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()


def _link_to(link: Path, target: Path) -> str:
    """A symbolic link at ``link`` to the folder ``target``: the path of a new folder made through it."""
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    return f"{link}/out/"


def _mkdir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


def _other_collection(c: Ctx) -> str:
    try:
        c.other.collections.get("Taken")
    except NotFoundError:
        c.other.collections.create("Taken")
    return "Taken"


@pytest.mark.parametrize("name", list(CASES))
def test_refusal_leaves_nothing_behind(ctx: Ctx, name: str):
    expected, case = CASES[name]
    ctx.src.mkdir(exist_ok=True)
    if name == "rename onto taken name":
        _other_collection(ctx)  # set up outside the measured step
    rows_before, files_before, tree_before = table_counts(ctx.vault), vault_files(ctx.vault.root), _tree(ctx.vault.root)
    with pytest.raises(expected) as info:
        case(ctx)
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value)  # every refusal says what was wrong
    assert table_counts(ctx.vault) == rows_before
    assert vault_files(ctx.vault.root) == files_before
    assert _tree(ctx.vault.root) == tree_before


def test_nothing_changed_after_all_refusals(ctx: Ctx):
    vault = ctx.vault
    assert vault.verify().clean
    kept = vault.library.get(ctx.kept.id)
    assert kept.title == "kept" and kept.tags == [] and kept.visibility.value == "private"
    assert vault.collections.get("Mine").asset_count == 1
    assert ctx.other.collections.get("Theirs").asset_count == 0
    assert vault.workspace.count() == 3 and vault.library.count() == 2
    assert not (ctx.src / "new-vault").exists()


class _Counting(io.RawIOBase):
    pass


def test_file_over_1_gib_is_refused_without_reading_it(ctx: Ctx, monkeypatch):
    big = ctx.src / "huge.png"
    with open(big, "wb") as handle:
        handle.write(_png(40)[:64])
    os.truncate(big, MAX_FILE_BYTES + 1)  # sparse: takes no disk space
    assert big.stat().st_blocks * 512 < 1024 * 1024
    read_bytes = []

    real_open = open

    class CountingFile:
        def __init__(self, handle):
            self._handle = handle

        def read(self, *args):
            data = self._handle.read(*args)
            read_bytes.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    def spy(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        return CountingFile(handle) if os.fspath(file) == os.fspath(big) else handle

    for module in (localvault.media, localvault.files, localvault.ingest):
        monkeypatch.setattr(module, "open", spy, raising=False)
    rows_before, files_before = table_counts(ctx.vault), vault_files(ctx.vault.root)
    started = time.perf_counter()
    for call in (ctx.vault.workspace.add, ctx.vault.library.add):
        with pytest.raises(FileTooLargeError):
            call(big)
    assert time.perf_counter() - started < 2.0
    assert sum(read_bytes) < 1024 * 1024
    assert table_counts(ctx.vault) == rows_before
    assert vault_files(ctx.vault.root) == files_before
    # exactly 1 GiB is within the limit: refused only for being truncated, never for its size
    os.truncate(big, MAX_FILE_BYTES)
    with pytest.raises(UnsupportedMediaError):
        ctx.vault.workspace.add(big)
    assert sum(read_bytes) < 1024 * 1024
    big.unlink()


def test_a_huge_tag_list_is_refused_without_reading_it_all(ctx: Ctx):
    """200,000 tags once took minutes of CPU (a list's lookups) before the count was checked."""
    read = 0

    def tags() -> Iterator[str]:
        nonlocal read
        for n in range(200_000):
            read += 1
            yield f"t{n}"

    with pytest.raises(InvalidInputError, match=f"more than {MAX_TAGS} tags"):
        ctx.vault.library.update(ctx.kept.id, tags=tags())
    assert read == MAX_TAGS + 1
    assert ctx.vault.library.get(ctx.kept.id).tags == ctx.kept.tags


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def _noise_png(path: Path, seed: int) -> Path:
    """A PNG of ~3 MB (noise does not compress): several copy chunks, so it can change while it is copied."""
    import random

    from PIL import Image

    Image.frombytes("RGB", (1024, 1024), random.Random(seed).randbytes(3 * 1024 * 1024)).save(path, "PNG")
    return path


def _while_copying(change: Callable[[], None]) -> Callable[[int], None]:
    """A progress callback that changes the source once, after the first chunk (a rig rewriting it then)."""
    done: list[bool] = []

    def on_bytes(_n: int) -> None:
        if not done:
            done.append(True)
            change()

    return on_bytes


@pytest.mark.parametrize("where", ["workspace", "library"])
def test_a_file_damaged_while_it_is_copied_is_refused(ctx: Ctx, where: str):
    """The check reads the source; the copy is read again: what is stored must be what was checked."""
    source = _noise_png(ctx.src / f"rewritten-{where}.png", 50 if where == "workspace" else 51)

    def scribble() -> None:
        with open(source, "r+b") as handle:
            handle.seek(1024 * 1024)
            handle.write(b"not an image " * 1000)
            handle.truncate(1024 * 1024 + 13_000)

    rows_before, files_before, tree_before = table_counts(ctx.vault), vault_files(ctx.vault.root), _tree(ctx.vault.root)
    add = ctx.vault.workspace.add if where == "workspace" else ctx.vault.library.add
    with pytest.raises(UnsupportedMediaError, match="truncated or damaged"):
        add(source, on_bytes=_while_copying(scribble))
    assert (table_counts(ctx.vault), vault_files(ctx.vault.root), _tree(ctx.vault.root)) == (
        rows_before, files_before, tree_before)


def test_a_file_growing_past_the_limit_while_it_is_copied_is_refused(ctx: Ctx, monkeypatch):
    source = _noise_png(ctx.src / "growing.png", 52)
    monkeypatch.setattr(localvault.models, "MAX_FILE_BYTES", 4 * 1024 * 1024)  # (checked at stat time: 1 GiB)
    before = table_counts(ctx.vault), vault_files(ctx.vault.root), _tree(ctx.vault.root)
    with pytest.raises(FileTooLargeError, match="grew past"):
        ctx.vault.workspace.add(source, on_bytes=_while_copying(lambda: os.truncate(source, 6 * 1024 * 1024)))
    # (before, the job's folder made for the copy stayed, empty, one per attempt)
    assert (table_counts(ctx.vault), vault_files(ctx.vault.root), _tree(ctx.vault.root)) == before


def test_a_copy_cut_short_by_ctrl_c_leaves_no_folder_behind(ctx: Ctx):
    source = _noise_png(ctx.src / "interrupted.png", 53)
    before = table_counts(ctx.vault), vault_files(ctx.vault.root), _tree(ctx.vault.root)

    def interrupt() -> None:
        raise KeyboardInterrupt

    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            ctx.vault.workspace.add(source, on_bytes=_while_copying(interrupt))
    assert (table_counts(ctx.vault), vault_files(ctx.vault.root), _tree(ctx.vault.root)) == before


def test_a_jpeg_with_a_thumbnail_is_whole_only_once_its_own_end_is_written(tmp_path: Path) -> None:
    """Before: the thumbnail's end marker in the last 1024 bytes passed a file cut off early as whole (and the
    watcher took it while still being written)."""
    from localvault import media

    whole = jpeg_with_thumbnail(seed=8)
    (tmp_path / "whole.jpg").write_bytes(whole)
    (tmp_path / "cut.jpg").write_bytes(_cut_after_thumbnail(whole))
    assert media.looks_finished(tmp_path / "whole.jpg") and not media.looks_finished(tmp_path / "cut.jpg")
    assert media.check_data(whole, tmp_path / "whole.jpg") is media.MediaType.jpeg
    # Cut before the image data begins, the header's walk runs off the end: not whole either.
    thumbnail_end = whole.index(b"\xff\xd9") + 2
    before_scan = whole[:thumbnail_end + 40]
    assert len(before_scan) < whole.index(b"\xff\xda", thumbnail_end)  # the main image's scan
    (tmp_path / "header-only.jpg").write_bytes(before_scan)
    assert not media.looks_finished(tmp_path / "header-only.jpg")


def test_judging_a_jpeg_that_shrinks_while_read_raises_nothing_and_reads_a_bounded_header() -> None:
    """The size is read before the bytes: a file saved over in place may be shorter by then (before: an
    IndexError that killed the watcher's event thread). And a header of junk is walked a bounded number of
    steps (before: a seek and a read per fill byte, minutes per GiB)."""
    from localvault import media

    whole = jpeg_with_thumbnail(seed=9)
    for cut in range(2, len(whole), 97):
        assert media._is_whole(io.BytesIO(whole[:cut]), media.MediaType.jpeg, len(whole), whole[:64]) is False

    class CountingReads(io.BytesIO):
        reads = 0

        def read(self, size: int | None = -1) -> bytes:
            CountingReads.reads += 1
            return super().read(size)

    junk = b"\xff\xd8" + b"\xff" * 2_000_000 + b"\xff\xd9"
    assert media._is_whole(CountingReads(junk), media.MediaType.jpeg, len(junk), junk[:64])  # judged by its end
    assert CountingReads.reads <= 1_002


def test_file_path_takes_an_asset_or_its_id(ctx: Ctx) -> None:
    ctx.src.mkdir(exist_ok=True)
    asset = ctx.vault.workspace.add(ctx.file("by-id.png", _png(41)))
    kept = ctx.vault.library.save(asset.id)
    assert ctx.vault.workspace.file_path(asset.id) == ctx.vault.workspace.file_path(asset)
    assert ctx.vault.library.file_path(kept.id) == ctx.vault.library.file_path(kept)


def test_file_path_of_an_asset_object_not_this_users_or_deleted_is_not_found(tmp_path: Path) -> None:
    """Before: given the object, not its id, it returned a path (of another user's file, or of none)."""
    with Vault.create(tmp_path / "vault") as vault, Vault.open(tmp_path / "vault", user_id=USER_B) as other:
        theirs = other.workspace.add(write_media(tmp_path / "src", "png", 1))
        their_kept = other.library.save(theirs.id)
        with pytest.raises(NotFoundError):
            vault.workspace.file_path(theirs)
        with pytest.raises(NotFoundError):
            vault.library.file_path(their_kept)
        other.library.delete(their_kept.id)
        with pytest.raises(NotFoundError):
            other.library.file_path(their_kept)
        assert other.workspace.file_path(theirs) == other.workspace.file_path(theirs.id)


def test_a_read_only_vault_does_not_store_a_remote(ctx: Ctx) -> None:
    """``readonly=True`` never writes: localvault.toml included."""
    toml = (ctx.vault.root / "localvault.toml").read_bytes()
    with Vault.open(ctx.vault.root, readonly=True) as reader:
        with pytest.raises(StorageError, match="read-only"):
            reader.set_remote("postgresql://u:p@h/db", "file:///tmp/bucket")
    assert (ctx.vault.root / "localvault.toml").read_bytes() == toml


def test_a_seed_given_as_a_float_is_named_so() -> None:
    from localvault.models import check_seed

    with pytest.raises(InvalidInputError, match=r"seed 7\.0 is a float; give an integer"):
        check_seed(7.0)



def test_tags_added_past_the_limit_name_the_asset_s_count_not_what_was_given(ctx: Ctx) -> None:
    """Two tags added to an asset holding 63 said 'more than 64 tags given': only two were given."""
    asset = ctx.vault.library.add(ctx.file("tags63.png", _png(60)), tags=[f"t{i}" for i in range(MAX_TAGS - 1)])
    with pytest.raises(InvalidInputError, match=f"the asset would hold {MAX_TAGS + 1} tags; it may hold at most "
                                                f"{MAX_TAGS}"):
        ctx.vault.library.update(asset.id, add_tags=["new one", "new two"])
    assert len(ctx.vault.library.get(asset.id).tags) == MAX_TAGS - 1
    ctx.vault.library.delete(asset.id)


@pytest.mark.parametrize("where", ["after the image data", "before the image data"])
def test_a_png_whose_text_chunk_fails_its_checksum_is_taken(ctx: Ctx, tmp_path: Path, where: str) -> None:
    """Only the image's own chunks must pass their CRC, as libpng reads a PNG: a text chunk with a bad CRC (a
    careless metadata tool) does not make the image damaged. Before: one before the image data, where A1111
    writes its parameters, was refused by add and library.add (Pillow's header reader checks it) and taken by
    import, which reads the header itself."""
    damage = _with_bad_text_chunk_at_its_end if where.startswith("after") else _with_bad_parameters_chunk_before_its_data
    png = damage(image_bytes("png", 42, (16, 16)))
    asset = ctx.vault.workspace.add(ctx.file("crc.png", png))
    assert asset.mime_type == "image/png" and asset.file_size_bytes == len(png) and asset.width == 16
    ctx.vault.workspace.delete(asset.id)
    direct = ctx.vault.library.add(ctx.file("crc.png", png))
    assert direct.height == 16
    ctx.vault.library.delete(direct.id)
    rig = tmp_path / "rig"
    rig.mkdir()
    (rig / "crc.png").write_bytes(png)
    report = ctx.vault.workspace.import_folder(rig)
    assert len(report.imported) == 1 and not report.refused
    ctx.vault.workspace.delete(report.imported[0].asset_id)


@pytest.mark.parametrize("field", ["bit depth 3", "colour type 5", "interlace 2"])
def test_a_png_whose_header_no_decoder_can_use_is_refused_on_every_path(ctx: Ctx, tmp_path: Path,
                                                                        field: str) -> None:
    """Its CRCs are right, its IHDR impossible. The size is read from the IHDR, not by Pillow: that reading
    must still refuse such a header (add, library.add and import alike), as Pillow did."""
    import zlib

    png = bytearray(image_bytes("png", 43, (4, 4)))
    at = {"bit depth 3": 24, "colour type 5": 25, "interlace 2": 28}[field]
    png[at] = int(field.split()[-1])
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # the IHDR's CRC, made again
    png = bytes(png)
    before = (table_counts(ctx.vault), vault_files(ctx.vault.root))
    with pytest.raises(UnsupportedMediaError, match="cannot be read as PNG"):
        ctx.vault.workspace.add(ctx.file("ihdr.png", png))
    with pytest.raises(UnsupportedMediaError, match="cannot be read as PNG"):
        ctx.vault.library.add(ctx.file("ihdr.png", png))
    rig = tmp_path / "rig"
    rig.mkdir()
    (rig / "ihdr.png").write_bytes(png)
    report = ctx.vault.workspace.import_folder(rig)
    assert not report.imported and "cannot be read as PNG" in report.refused[str(rig / "ihdr.png")]
    assert (table_counts(ctx.vault), vault_files(ctx.vault.root)) == before


def test_a_refused_remote_leaves_the_remote_in_use_as_it_was(tmp_path: Path) -> None:
    """Before: the new remote was kept in memory before localvault.toml refused it, so the next sync of the same
    Vault object went to the refused database and bucket."""
    with Vault.create(tmp_path / "vault") as vault:
        vault.set_remote("postgresql://u@db.example/one", "file:///tmp/bucket-a")
        toml = (tmp_path / "vault" / "localvault.toml").read_bytes()
        with pytest.raises(InvalidInputError, match="TOML"):
            vault.set_remote("postgresql://u@db.example/other", "file:///tmp/bucket-b", {"anon": None})
        assert vault.config.remote is not None
        assert (vault.config.remote.database_url, vault.config.remote.bucket_url) == (
            "postgresql://u@db.example/one", "file:///tmp/bucket-a")
        assert (tmp_path / "vault" / "localvault.toml").read_bytes() == toml


def test_a_sync_lock_that_cannot_be_opened_is_a_storage_error(tmp_path: Path) -> None:
    """Before: the IsADirectoryError (or EACCES, or ENOLCK on a network share) escaped as it was."""
    with Vault.create(tmp_path / "vault") as vault:
        (tmp_path / "vault" / ".sync.lock").mkdir()
        with pytest.raises(StorageError, match=r"cannot open .*\.sync\.lock.*Is a directory"):
            vault.sync(_unreachable_remote())


def test_a_watcher_takes_any_real_number_of_seconds(ctx: Ctx) -> None:
    """Durations as an app may hold them (a Decimal from its settings, a Fraction, numpy's floats): the checks
    added when the Watcher is made must not refuse what its thread always took."""
    from decimal import Decimal
    from fractions import Fraction

    watcher = Watcher(ctx.vault, ctx.src, stable_seconds=Decimal("0.5"), poll_seconds=Fraction(1, 4),
                      quiet_seconds=0, sidecar_wait_seconds=2)
    assert watcher.stable_seconds == 0.5 and watcher.poll_seconds == 0.25
    watcher.stop()


@pytest.mark.parametrize("replacement", ["named pipe", "link to /dev/zero"])
def test_saving_an_asset_whose_file_was_replaced_by_no_regular_file_is_refused_at_once(
        tmp_path: Path, replacement: str) -> None:
    """A workspace file replaced by a named pipe was hard-linked into the library, whose hashing then waited for
    ever; one replaced by a link to /dev/zero was copied without end (7.5 GB in a minute). Both are refused at
    once, and leave nothing behind (a security review)."""
    import threading

    with Vault.create(tmp_path / "vault") as vault:
        asset = vault.workspace.add(write_media(tmp_path / "src", "png", 7))
        path = Path(vault.workspace.file_path(asset))
        path.unlink()
        if replacement == "named pipe":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
        before = table_counts(vault), _tree(vault.root)
        outcome: list[BaseException | None] = []

        def save() -> None:
            try:
                vault.library.save(asset.id)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        saving = threading.Thread(target=save, daemon=True)
        saving.start()
        saving.join(30)
        if saving.is_alive():  # unblock it, so the suite goes on
            if replacement == "named pipe":
                with open(path, "wb"):
                    pass
            pytest.fail(f"save of a file replaced by a {replacement} did not end")
        (error,) = outcome
        assert isinstance(error, StorageError) and "not a regular file" in str(error), error
        assert (table_counts(vault), _tree(vault.root)) == before


def test_exporting_an_asset_whose_file_no_longer_holds_its_bytes_writes_nothing(tmp_path: Path) -> None:
    """A vault's file swapped for a link to another file (or rewritten in place) was exported as it was, with
    no check against its row (a security review): the copy now fails before it is published."""
    with Vault.create(tmp_path / "vault") as vault:
        kept = vault.library.add(write_media(tmp_path / "src", "png", 8))
        path = Path(vault.library.file_path(kept))
        outside = write_media(tmp_path / "elsewhere", "png", 9)
        path.unlink()
        path.symlink_to(outside)
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(StorageError, match="^user-library/.* no longer holds the bytes"):  # the vault's side
            vault.export(kept.id, out)
        path.unlink()
        path.write_bytes(outside.read_bytes()[:kept.file_size_bytes] + b"\0" * 64)  # longer than its row says
        with pytest.raises(StorageError, match="^user-library/.* no longer holds the bytes"):
            vault.export(kept.id, out / "k.png")
        assert list(out.iterdir()) == []


def test_importing_or_watching_a_folder_of_the_vault_is_refused(tmp_path: Path) -> None:
    """User A's `import VAULT --recursive --move` took user B's files as new ones (duplicates are per user) and
    deleted them; a watch of B's job folder took each as B committed it (a multi-user journey). The vault's
    folders are refused as a source; its recovered/ folder, where strays are set aside to be taken again, is not."""
    with Vault.create(tmp_path / "vault") as vault, Vault.open(tmp_path / "vault", user_id=USER_B) as other:
        theirs = other.workspace.add(write_media(tmp_path / "src", "png", 11))
        their_kept = other.library.save(theirs.id)
        job_folder = Path(other.workspace.file_path(theirs)).parent
        (tmp_path / "link").symlink_to(vault.root / "workspace-temp", target_is_directory=True)
        before = table_counts(vault), _tree(vault.root)
        for folder in (vault.root, job_folder, Path(other.library.file_path(their_kept)).parent, tmp_path / "link"):
            with pytest.raises(InvalidInputError, match="(inside|the folder of) the vault at"):
                vault.workspace.import_folder(folder, recursive=True, mode="move")
            with pytest.raises(InvalidInputError, match="(inside|the folder of) the vault at"):
                Watcher(vault, folder, mode="move")
        assert (table_counts(vault), _tree(vault.root)) == before
        recovered = vault.root / "recovered" / "user-library"
        recovered.mkdir(parents=True)
        (recovered / "stray.png").write_bytes(write_media(tmp_path / "src2", "png", 12).read_bytes())
        assert len(vault.workspace.import_folder(recovered).imported) == 1


def test_an_mp4_of_too_many_top_level_boxes_is_refused(tmp_path: Path) -> None:
    """Millions of empty top-level boxes took minutes to walk, three times an add (a complexity review): past
    100,000 (a fragmented video has a few thousand) the file is refused as damaged; a thousand are fine."""
    from mediafiles import make_mp4

    many = make_mp4(tmp_path / "many.mp4")
    many.write_bytes(many.read_bytes() + b"\0\0\0\x08free" * 100_001)
    some = make_mp4(tmp_path / "some.mp4", color=3)
    some.write_bytes(some.read_bytes() + b"\0\0\0\x08free" * 1000)
    with Vault.create(tmp_path / "vault") as vault:
        with pytest.raises(UnsupportedMediaError, match="truncated or damaged MP4"):
            vault.workspace.add(many)
        assert vault.workspace.add(some).file_size_bytes == some.stat().st_size
