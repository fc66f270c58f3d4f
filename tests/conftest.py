pytest_plugins = ["servers"]
# Shared fixtures for the core tests: fresh vaults and real media files.

import io
import os
import random
import signal
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import settings
from PIL import Image

from localvault import Vault
from localvault.files import BUCKETS, TEMP_PREFIX


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C is what several tests send (to this process, and to the CLI in a child). A suite started in the
    background of a shell without job control (``cmd &`` in a script, some CI runners) inherits SIGINT
    ignored, and so would every child: they would never see it. Python's own handler is put back, and a child
    started after that inherits SIGINT's default (an exec resets a handled signal, not an ignored one)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # (xdist's workers set an 80-column terminal: the CLI would fold)
        for name in ("COLUMNS", "LINES"):
            os.environ.pop(name, None)

# The suite's property tests draw the same examples on every run, so that CI's verdict on a commit does not hang
# on a random draw (a fuzzer's find made one clean-clone run fail and the next pass). Hunting with new draws is
# its own run: ``python -m pytest --hypothesis-profile=explore tests/test_metadata.py -k fuzz -n 0``.
settings.register_profile("suite", derandomize=True, database=None)
settings.register_profile("explore", max_examples=2000, database=None)
settings.load_profile("suite")

try:  # another engineer's media builders; our own minimal MP4 below otherwise
    from mediafiles import make_mp4
except ImportError:  # pragma: no cover
    make_mp4 = None

USER_A = "0a0a0a0a-0000-4000-8000-00000000000a"
USER_B = "0b0b0b0b-0000-4000-8000-00000000000b"

T = TypeVar("T")
VAULT_DB_FILES = {"vault.db", "vault.db-wal", "vault.db-shm", "vault.db-journal"}
TABLES = ("user_collections", "workspace_assets", "user_library", "library_tags", "sync_outbox",
          "pending_deletes", "vault_meta")


# ------------------------------------------------------------------ media


def image_bytes(kind: str = "png", seed: int = 0, size: tuple[int, int] = (32, 32)) -> bytes:
    """A real image whose pixels depend on ``seed`` (so the bytes, and sha256, differ per seed)."""
    image = Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    if kind == "png":
        image.save(out, format="PNG")
    elif kind in ("jpg", "jpeg"):
        image.save(out, format="JPEG", quality=90)
    elif kind == "webp":
        image.save(out, format="WEBP", lossless=True)
    else:
        raise ValueError(kind)
    return out.getvalue()


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mp4_bytes(seed: int = 0, duration_seconds: float = 2.5, size: tuple[int, int] = (64, 48),
              timescale: int = 1000) -> bytes:
    """A minimal, structurally whole MP4: ftyp + moov(mvhd, trak/tkhd) + mdat.

    Built by tests/mediafiles.py's make_mp4 where that helper exists, else here.
    """
    if make_mp4 is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = make_mp4(Path(folder) / "clip.mp4", duration_seconds, color=seed, size=size, timescale=timescale)
            return path.read_bytes()
    duration = int(round(duration_seconds * timescale))
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isom" + b"mp42")
    matrix = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
    mvhd = _box(b"mvhd", struct.pack(">B3sIIII", 0, b"\0\0\0", 0, 0, timescale, duration)
                + struct.pack(">IH", 0x00010000, 0x0100) + b"\0" * 10 + matrix + b"\0" * 24 + struct.pack(">I", 2))
    tkhd = _box(b"tkhd", struct.pack(">B3sIIIII", 0, b"\0\0\x03", 0, 0, 1, 0, duration) + b"\0" * 8
                + struct.pack(">hhhH", 0, 0, 0, 0) + matrix + struct.pack(">II", size[0] << 16, size[1] << 16))
    moov = _box(b"moov", mvhd + _box(b"trak", tkhd))
    mdat = _box(b"mdat", random.Random(seed).randbytes(256))
    return ftyp + moov + mdat


def write_media(folder: Path, kind: str = "png", seed: int = 0, size: tuple[int, int] = (32, 32),
                name: str | None = None) -> Path:
    """Write a media file of ``kind`` (png, jpg, webp, mp4) into ``folder`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = mp4_bytes(seed) if kind == "mp4" else image_bytes(kind, seed, size)
    path = folder / (name or f"{kind}-{seed}-{size[0]}x{size[1]}.{'jpg' if kind == 'jpeg' else kind}")
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------- state


def table_counts(vault: Vault) -> dict[str, int]:
    """Row count of every table of the vault (all of them, whatever later migrations add)."""
    conn = vault.db.conn
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    assert set(TABLES) <= set(tables)
    return {table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in sorted(tables)}


def vault_files(root: Path) -> set[str]:
    """Every file under a vault folder, relative, except the database's own files."""
    found = set()
    for folder, _dirs, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if rel not in VAULT_DB_FILES:
                found.add(rel)
    return found


def bucket_files(root: Path) -> set[tuple[str, str]]:
    """(bucket, relative path) of every file in the two buckets, temp files included."""
    found = set()
    for bucket in BUCKETS:
        base = root / bucket
        for folder, _dirs, names in os.walk(base):
            for name in names:
                found.add((bucket, os.path.relpath(os.path.join(folder, name), base)))
    return found


def temp_files(root: Path) -> list[str]:
    return [path for _bucket, path in bucket_files(root) if os.path.basename(path).startswith(TEMP_PREFIX)]


@contextmanager
def without_dac_override() -> Iterator[None]:
    """This thread (and threads it starts) obeys file modes even as root: CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH leave its effective set (capabilities are per thread), and come back after."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0
    saved = data[0].effective
    data[0].effective &= ~((1 << 1) | (1 << 2))
    assert libc.capset(ctypes.byref(header), data) == 0
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


def sqlite_steps(conn: sqlite3.Connection, call: Callable[[], T], every: int = 1000) -> tuple[int, T]:
    """``call()``'s result, and how many times ``every`` virtual machine steps SQLite took on ``conn`` for it:
    the work of a query, counted rather than timed (a test of it does not depend on the machine's speed)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, every)
    try:
        result = call()
        return steps, result
    finally:
        conn.set_progress_handler(None, 0)


def raw_connection(root: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(root / "vault.db", isolation_level=None, timeout=30)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


# --------------------------------------------------------------- fixtures


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault.create(tmp_path / "vault", user_id=USER_A)
    yield v
    v.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A rig's output folder, empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def other_user_vault(vault: Vault):
    v = Vault.open(vault.root, user_id=USER_B)
    yield v
    v.close()


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """make_image(kind="png", seed=0, size=(32, 32)) -> a distinct real media file in tmp_path/src."""

    def make(kind: str = "png", seed: int = 0, size: tuple[int, int] = (32, 32)) -> Path:
        return write_media(tmp_path / "src", kind, seed, size)

    return make


# ------------------------------------------------------------------ sync


@pytest.fixture
def server(pg_database: str) -> str:
    """A fresh server database (schema applied) in which users A and B exist."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        for user in (USER_A, USER_B):
            conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user, f"{user[:4]}@example.com"))
    return pg_database


@pytest.fixture
def remote(server: str, s3_bucket):
    """A sync target: the fresh database and a fresh bucket on the suite's S3 server."""
    from localvault.sync import Remote

    target = Remote(server, f"s3://{s3_bucket.name}", s3_bucket.storage_options)
    yield target
    target.close()
