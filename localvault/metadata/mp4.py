"""MP4/QuickTime metadata tags, read from box headers without touching the media data.

ComfyUI VideoHelperSuite hands ffmpeg a ``comment`` holding JSON with the
``prompt`` and ``workflow`` graphs; ffmpeg's MP4 muxer stores it in
``moov/udta/meta/ilst/©cmt`` (or, with ``use_metadata_tags``, as an ``mdta``
key in ``moov/meta/keys`` + ``ilst``). Both are read here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from ..media import mvhd_duration
from .images import Texts

_MAX_VALUE = 16 * 1024 * 1024
_MAX_BOXES = 10_000
#: Box headers one file's reading may visit in all: a real movie's ``moov`` holds a few hundred, while nested
#: lists of empty boxes (each list within ``_MAX_BOXES``) would otherwise be walked for minutes.
_MAX_WALK = 100_000
_ITEM_NAMES = {b"\xa9cmt": "comment", b"\xa9nam": "title", b"desc": "description", b"\xa9too": "encoder"}

Box = tuple[bytes, int, int]  # type, payload start, payload end


class _Walk:
    """One file being read, and the box headers its reading may still visit."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.left = _MAX_WALK


def _boxes(walk: _Walk, start: int, end: int) -> Iterator[Box]:
    """The boxes between ``start`` and ``end``; a truncated last box is clipped to ``end``."""
    f = walk.f
    pos = start
    for _ in range(_MAX_BOXES):
        if pos + 8 > end or walk.left <= 0:
            return
        walk.left -= 1
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header)
        head = 8
        if size == 1:
            large = f.read(8)
            if len(large) < 8:
                return
            size, head = struct.unpack(">Q", large)[0], 16
        elif size == 0:
            size = end - pos
        if size < head:
            return
        yield kind, pos + head, min(pos + size, end)
        pos += size


def _child(walk: _Walk, box: Box | None, kind: bytes) -> Box | None:
    if box is None:
        return None
    return next((b for b in _boxes(walk, box[1], box[2]) if b[0] == kind), None)


def _meta_children(walk: _Walk, meta: Box) -> Iterator[Box]:
    """Children of a ``meta`` box, which is a full box in MP4 but not always in QuickTime."""
    walk.f.seek(meta[1])
    first = walk.f.read(8)
    start = meta[1] if first[4:8] == b"hdlr" else meta[1] + 4
    return _boxes(walk, start, meta[2])


def _read(f: BinaryIO, start: int, end: int) -> bytes:
    f.seek(start)
    return f.read(max(0, min(end - start, _MAX_VALUE)))


def _keys(f: BinaryIO, box: Box) -> dict[int, str]:
    data = _read(f, box[1], box[2])
    names: dict[int, str] = {}
    pos, index = 8, 1
    while pos + 8 <= len(data):
        size = struct.unpack(">I", data[pos:pos + 4])[0]
        if size < 8:
            break
        names[index] = data[pos + 8:pos + size].decode("utf-8", "replace")
        pos, index = pos + size, index + 1
    return names


def _add_item(walk: _Walk, item: Box, name: str, tags: Texts) -> None:
    data = _child(walk, item, b"data")
    if data is None or data[2] - data[1] < 8:
        return
    raw = _read(walk.f, data[1], min(data[2], data[1] + 8 + tags.room))
    kind = int.from_bytes(raw[1:4], "big")
    tags.add(name, raw, raw[8:].decode("utf-16-be" if kind == 2 else "utf-8", "replace"))


def _add_ilst_tags(walk: _Walk, meta: Box, tags: Texts) -> None:
    children = list(_meta_children(walk, meta))
    keys_box = next((b for b in children if b[0] == b"keys"), None)
    names = _keys(walk.f, keys_box) if keys_box else {}
    for ilst in (b for b in children if b[0] == b"ilst"):
        for item in _boxes(walk, ilst[1], ilst[2]):
            name = _ITEM_NAMES.get(item[0]) or names.get(int.from_bytes(item[0], "big"))
            if name and tags.wants(name):  # (read only then: a taken name, or a spent budget, reads nothing)
                _add_item(walk, item, name, tags)


def _add_udta_text(walk: _Walk, box: Box, name: str, tags: Texts) -> None:
    """A QuickTime ``udta/©cmt`` text: 16-bit length, 16-bit language, then the text."""
    raw = _read(walk.f, box[1], box[2])
    if len(raw) >= 4:
        length = struct.unpack(">H", raw[:2])[0]
        tags.add(name, raw, raw[4:4 + length].decode("utf-8", "replace"))


def read_tags(f: BinaryIO) -> dict[str, str]:
    """Metadata tags of an MP4 stream (``comment``, ``title``, ``mdta`` keys…) by name."""
    f.seek(0, 2)
    walk = _Walk(f)
    moov = next((b for b in _boxes(walk, 0, f.tell()) if b[0] == b"moov"), None)
    if moov is None:
        return {}
    tags = Texts()  # (one budget for the file's tags, as for an image's texts)
    for box in _boxes(walk, moov[1], moov[2]):
        if box[0] == b"meta":
            _add_ilst_tags(walk, box, tags)
        elif box[0] == b"udta":
            for child in _boxes(walk, box[1], box[2]):
                if child[0] == b"meta":
                    _add_ilst_tags(walk, child, tags)
                elif child[0] in _ITEM_NAMES and tags.wants(_ITEM_NAMES[child[0]]):
                    _add_udta_text(walk, child, _ITEM_NAMES[child[0]], tags)
    return tags.found


def duration_seconds(f: BinaryIO) -> float | None:
    """The movie duration from ``moov/mvhd`` (timescale and duration), or None."""
    f.seek(0, 2)
    walk = _Walk(f)
    moov = next((b for b in _boxes(walk, 0, f.tell()) if b[0] == b"moov"), None)
    mvhd = _child(walk, moov, b"mvhd")
    if mvhd is None:
        return None
    return mvhd_duration(_read(f, mvhd[1], min(mvhd[2], mvhd[1] + 32)))
