"""A PNG's structure, read from its bytes: its signature and end, its chunks' CRCs, its IHDR header."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The IEND chunk every whole PNG ends with (length, name, CRC).
END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: A PNG chunk's data is checked this many bytes at a time.
_PIECE = 1 << 20
#: More chunks than this is no PNG a program writes (1 GiB in IDATs of 8 KB, libpng's size, is 131,072): a file
#: crafted of millions of empty chunks would take minutes to walk.
_MAX_CHUNKS = 1_000_000
_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})


def chunks_sound(handle: BinaryIO, size: int) -> bool:
    """Whether a PNG's chunks run from its signature to an IEND at its end, each critical one (IHDR, PLTE, IDAT,
    IEND) holding the CRC it was written with: a bit flipped in the image data is found (Pillow's read of the
    header never gets there). An ancillary chunk's bad CRC is passed over, as libpng does."""
    handle.seek(len(SIGNATURE))
    offset, chunks = len(SIGNATURE), 0
    while offset + 12 <= size and chunks < _MAX_CHUNKS:
        header = handle.read(8)
        if len(header) < 8:
            return False
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        offset, chunks = offset + 12 + length, chunks + 1
        if offset > size:
            return False
        # Ancillary (a lower-case first letter): passed over, unless one bit away from a critical name (IDAT with
        # its case bit flipped would skip image data unchecked); its CRC, made for the critical name, then fails.
        if kind[0] & 0x20 and bytes([kind[0] ^ 0x20]) + kind[1:] not in _CRITICAL:
            handle.seek(length + 4, io.SEEK_CUR)
            continue
        crc, left = zlib.crc32(kind), length
        while left:
            piece = handle.read(min(left, _PIECE))
            if not piece:
                return False
            crc, left = zlib.crc32(piece, crc), left - len(piece)
        if handle.read(4) != crc.to_bytes(4, "big"):
            return False
        if kind == b"IEND":
            return offset == size
    return False


def chunks(f: BinaryIO, limit: int = _MAX_CHUNKS) -> Iterator[tuple[bytes, int]]:
    """(name, data length) of each chunk of a PNG stream, its signature passed over, ``f`` at the chunk's data as
    each is given: whatever the caller reads of it, the next is looked for past its data and CRC. At most
    ``limit`` chunks; CRCs unchecked (see :func:`chunks_sound`)."""
    offset = len(SIGNATURE)
    for _ in range(limit):
        f.seek(offset)
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        offset += 12 + length
        yield kind, length


#: The bit depths each PNG colour type allows (greyscale, RGB, palette, greyscale+alpha, RGBA).
_BIT_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}


#: The bytes :func:`header_size` reads: the signature, then the IHDR chunk's length, name and fields.
HEADER_BYTES = 29


def header_size(head: bytes) -> tuple[int, int] | None:
    """A PNG's width and height from its first :data:`HEADER_BYTES` (signature, then its IHDR chunk's length, name and
    fields); None unless they hold an IHDR a decoder can use (a bit depth its colour type allows, the one
    compression and filter method, interlace 0 or 1)."""
    if len(head) < HEADER_BYTES or head[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    depth, colour, compression, filtering, interlace = head[24:29]
    if depth not in _BIT_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
