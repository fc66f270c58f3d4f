"""An import leaves its copies out of the page cache once they are durable (a rig's checkpoints stay cached).

Residency is read with ``mincore(2)`` on a mapping of each file (mapping a
file does not read it), so these tests see what Linux really keeps.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest
from PIL import Image

from localvault import Vault
from localvault.files import WORKSPACE_BUCKET

USER = "0d0d0d0d-0000-4000-8000-00000000000d"
SIDE = 300  # 300x300 noise, stored: ~270 KB, 66 pages


def _noise_pngs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3)).save(path, "PNG", compress_level=0)
        paths.append(path)
    return paths


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(byte & 1 for byte in vector.raw)
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def _vault_files(vault_root: Path) -> list[Path]:
    return sorted(p for p in (vault_root / "buckets" / WORKSPACE_BUCKET).rglob("*.png"))


@pytest.mark.parametrize("count", [3, 40], ids=["fsync-per-file batch", "syncfs batch"])
def test_import_copies_leave_the_page_cache(tmp_path: Path, count: int) -> None:
    sources = _noise_pngs(tmp_path / "out", count)
    with Vault.create(tmp_path / "vault", user_id=USER) as vault:
        report = vault.workspace.import_folder(tmp_path / "out")
        assert len(report.imported) == count
        assets = vault.workspace.list(limit=100).items
        copies = [Path(vault.files.full_path(WORKSPACE_BUCKET, a.temp_storage_path)) for a in assets]
    assert len(copies) == count
    assert all(resident_pages(copy) == 0 for copy in copies), [resident_pages(c) for c in copies]
    # the sources are the user's: their pages are left as they were (read just now, so cached)
    assert all(resident_pages(source) > 0 for source in sources)


def test_linked_imports_keep_the_sources_pages(tmp_path: Path) -> None:
    """A hard link shares the source's pages: dropping them would evict the user's own file."""
    sources = _noise_pngs(tmp_path / "out", 40)
    with Vault.create(tmp_path / "vault", user_id=USER) as vault:
        report = vault.workspace.import_folder(tmp_path / "out", mode="link")
        assert len(report.imported) == 40
    assert all(resident_pages(source) > 0 for source in sources)
