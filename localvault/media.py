"""Decide a file's media type from its bytes, check it is whole, and read its size facts.

Only JPEG, PNG, WebP and MP4 are accepted. The name's extension must agree
with the bytes; a truncated file is refused, and so is a PNG whose image data
fails its checksums (the one format here that carries them).
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import _png as png
from ._disk import open_regular
from .errors import EmptyFileError, FileTooLargeError, InvalidInputError, StorageError, UnsupportedMediaError
from .models import MAX_FILE_BYTES, MediaType

EXTENSIONS: dict[str, MediaType] = {
    ".jpg": MediaType.jpeg, ".jpeg": MediaType.jpeg, ".jpe": MediaType.jpeg,
    ".png": MediaType.png, ".webp": MediaType.webp, ".mp4": MediaType.mp4, ".m4v": MediaType.mp4,
}
_MP4_BRANDS = {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso8", b"iso9", b"mp41", b"mp42",
               b"avc1", b"dash", b"M4V ", b"mmp4", b"MSNV", b"f4v ", b"av01", b"3gp4", b"3gp5", b"3gp6"}


@dataclass(frozen=True)
class MediaFacts:
    """What the vault records about a file's content."""

    media_type: MediaType
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None


def sniff(head: bytes) -> MediaType | None:
    """The media type the first bytes announce, or None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType.jpeg
    if head.startswith(png.SIGNATURE):
        return MediaType.png
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaType.webp
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(len(head), struct.unpack(">I", head[:4])[0]) - 3, 4)}
        if brands & _MP4_BRANDS:
            return MediaType.mp4
    return None


def expected_type(name: str) -> MediaType | None:
    return EXTENSIONS.get(os.path.splitext(name)[1].lower())


def check_export_name(destination: Path, stored_as: str) -> None:
    """InvalidInputError unless ``destination`` is named with the extension of the file stored as ``stored_as``
    (no extension, or another type's, would leave a file that viewers open wrongly or not at all)."""
    media = expected_type(stored_as)
    if media is not None and expected_type(destination.name) is not media:
        raise InvalidInputError(
            f"{destination} does not end in .{media.extension}, and the asset is {media.extension.upper()}: name the "
            f"file {destination.name}.{media.extension}, or give a folder (one that exists, or a path ending in '/')")


def check_source(path: Path) -> tuple[MediaType, int]:
    """Refuse a file that is empty, too large, of another type, truncated or (a PNG) failing its checksums.

    Returns its media type and size. Reads the head and the tail (and all of a PNG, to check its chunks).
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _check_file(path, size, path), size


def check_copy(copy: Path, size: int, source: Path) -> MediaType:
    """:func:`check_source` for the ``size``-byte copy of ``source`` at ``copy`` (messages name the source)."""
    return _check_file(copy, size, source)


def _check_file(path: Path, size: int, named: Path) -> MediaType:
    _check_size(size, named)
    try:
        with open(path, "rb") as handle:
            media = check_stream(handle, size, str(named))
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    _check_name(named, media)
    return media


def check_data(data: bytes, path: Path) -> MediaType:
    """:func:`check_source` for a file already read into memory (``data`` is all of ``path``)."""
    return check_open(io.BytesIO(data), len(data), path)


def check_open(handle: BinaryIO, size: int, path: Path) -> MediaType:
    """:func:`check_source` for ``path`` already open as ``handle`` (``size`` bytes, by its fstat)."""
    _check_size(size, path)
    media = check_stream(handle, size, str(path))
    _check_name(path, media)
    return media


def _check_size(size: int, path: Path) -> None:
    if size == 0:
        raise EmptyFileError(f"{path} is empty (0 bytes); nothing to store")
    if size > MAX_FILE_BYTES:
        raise FileTooLargeError(f"{path} is {size:,} bytes; the limit is 1 GiB ({MAX_FILE_BYTES:,} bytes)")


def _check_name(path: Path, media: MediaType) -> None:
    named = expected_type(path.name)
    if named is None:
        raise UnsupportedMediaError(
            f"{path}: unknown extension {os.path.splitext(path.name)[1]!r}; the vault takes .jpg (.jpeg), .png, .webp"
            " and .mp4 files"
        )
    if named is not media:
        raise UnsupportedMediaError(
            f"{path} is named like {named.extension.upper()} but its bytes are {media.extension.upper()}; "
            f"rename it to .{media.extension}"
        )


def check_stream(handle: BinaryIO, size: int, name: str) -> MediaType:
    """Sniff and check completeness of an open binary file of ``size`` bytes."""
    head = handle.read(64)
    media = sniff(head)
    if media is None:
        raise UnsupportedMediaError(f"{name} is not a JPEG, PNG, WebP or MP4 file (its bytes say otherwise)")
    if not _is_whole(handle, media, size, head) or (media is MediaType.png and not png.chunks_sound(handle, size)):
        raise UnsupportedMediaError(f"{name} is a truncated or damaged {media.extension.upper()} file; export it again")
    return media


def looks_finished(path: str | os.PathLike[str]) -> bool:
    """Whether a file is finished by its bytes: not empty, and a known type's end is there (head and tail read).

    A file whose bytes are of no known type counts as finished (its import
    refuses it); one that cannot be opened does not.
    """
    try:
        with open_regular(path) as handle:  # a named pipe is not finished (nor taken), and must not block us
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return False
            head = handle.read(64)
            media = sniff(head)
            # (an MP4 whose last box runs "to the end of the file" may be growing still: one appended to in
            # separate opens would have each close taken as a new asset)
            return media is None or _is_whole(handle, media, size, head, to_the_end=False)
    except (OSError, ValueError, IndexError, struct.error):  # it changed while being read: not finished
        return False


def _is_whole(handle: BinaryIO, media: MediaType, size: int, head: bytes, *, to_the_end: bool = True) -> bool:
    """Whether the file's end is there by its bytes; ``to_the_end``: see :func:`_mp4_boxes`."""
    if media is MediaType.png:
        handle.seek(max(0, size - 12))
        return handle.read(12) == png.END
    if media is MediaType.jpeg:
        tail_start = max(0, size - 1024)
        handle.seek(tail_start)
        end = handle.read().rfind(b"\xff\xd9")
        # The end marker must follow the first scan: an EXIF thumbnail, a whole JPEG inside the header, has
        # its own, which a file cut off early has in its tail too.
        return end >= 0 and tail_start + end > _jpeg_scan_start(handle, size)
    if media is MediaType.webp:
        declared = struct.unpack("<I", head[4:8])[0] + 8
        return declared in (size, size - 1)
    return _mp4_boxes(handle, size, to_the_end=to_the_end) is not None


def _jpeg_scan_start(handle: BinaryIO, size: int) -> int:
    """Offset of the first start-of-scan marker, found by walking the header's segments.

    ``size`` (past the end: not whole) when the header runs to the end of the file, as in a file cut off
    before its image data; -1 when the walk meets a byte that is no marker or takes more than
    :data:`_JPEG_WALK_STEPS` steps (a header this simple walk does not follow is judged by its end marker
    alone, as before).
    """
    position = 2
    for _step in range(_JPEG_WALK_STEPS):
        handle.seek(position)
        marker = handle.read(4)
        if len(marker) < 4:  # the end of the file (or a file cut shorter since its size was read)
            return size
        if marker[0] != 0xFF:
            return -1
        if marker[1] == 0xFF:  # fill byte before a marker
            position += 1
        elif marker[1] == 0xDA:
            return position
        elif marker[1] in _JPEG_STANDALONE:
            position += 2
        else:
            position += 2 + struct.unpack(">H", marker[2:4])[0]
    return -1


#: Segments (and fill bytes) the header walk follows at most: real headers have a few dozen.
_JPEG_WALK_STEPS = 1_000
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


#: Top-level boxes an MP4 may have: a fragmented one has two a fragment, a few thousand in all; a file of
#: millions of empty ones took minutes to walk, three times an import (a review).
_MP4_TOP_BOXES = 100_000


def _mp4_boxes(handle: BinaryIO, size: int, *, to_the_end: bool = True) -> dict[bytes, tuple[int, int]] | None:
    """Top-level boxes {type: (offset, length)} if they tile the file exactly and hold a moov; ``to_the_end``:
    whether a box of size 0 (running to the end of the file) may be one of them."""
    boxes: dict[bytes, tuple[int, int]] = {}
    offset = 0
    for _ in range(_MP4_TOP_BOXES + 1):
        if offset >= size:
            break
        handle.seek(offset)
        header = handle.read(16)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header[:8])
        if length == 1:
            if len(header) < 16:
                return None
            length = struct.unpack(">Q", header[8:16])[0]
        elif length == 0:
            if not to_the_end:
                return None
            length = size - offset
        if length < 8 or offset + length > size:
            return None
        boxes.setdefault(kind, (offset, length))
        offset += length
    else:
        return None
    return boxes if b"moov" in boxes and b"ftyp" in boxes else None


def facts(source: Path | BinaryIO, media: MediaType, name: str | None = None) -> MediaFacts:
    """Width and height of an image (header only), or duration and size of an MP4 (``name``: for messages;
    needed when ``source`` is an open file)."""
    name = name or (source.name if isinstance(source, Path) else "the file")
    if not isinstance(source, Path):
        source.seek(0)
    if media is MediaType.mp4:
        if isinstance(source, Path):
            with open(source, "rb") as handle:
                return _mp4_facts(handle, name)
        return _mp4_facts(source, name)
    return image_facts(source, media, name)


#: The largest width or height an image may have: PNG's own limit, and PostgreSQL's ``integer`` columns'.
MAX_SIDE = 2**31 - 1
#: The largest width or height the WebP format allows.
WEBP_MAX_SIDE = 16383
#: Pillow's reader of each image type (module, class); a PNG's header is read here (:func:`localvault._png.header_size`).
_IMAGE_READERS = {MediaType.jpeg: ("JpegImagePlugin", "JpegImageFile"),
                  MediaType.webp: ("WebPImagePlugin", "WebPImageFile")}


def image_facts(source: Path | BinaryIO, media: MediaType, name: str) -> MediaFacts:
    """Width and height from an image's header (nothing is decoded).

    Pillow's reader class is used directly: ``Image.open`` refuses an image
    over ~179 megapixels (a 14000×14000 upscale) as a decompression bomb,
    which matters only to code that decodes it.
    """
    import importlib

    from PIL.Image import DecompressionBombError

    if media is MediaType.png:
        # Its IHDR, which opens every PNG, is enough. Pillow's reader would also check the CRC of each chunk
        # before the image data, a text chunk's too, which libpng (and png.chunks_sound) pass over.
        if isinstance(source, Path):
            with open(source, "rb") as handle:
                head = handle.read(png.HEADER_BYTES)
        else:
            at = source.tell()
            head = source.read(png.HEADER_BYTES)
            source.seek(at)
        if (size := png.header_size(head)) is None:
            raise UnsupportedMediaError(f"{name} cannot be read as PNG (its IHDR header is missing or holds values "
                                        "no decoder takes); export it again")
        return sized_facts(media, *size, name)
    module, reader = _IMAGE_READERS[media]
    try:
        with getattr(importlib.import_module(f"PIL.{module}"), reader)(source) as image:
            width, height = image.size
    except DecompressionBombError as exc:  # WebP's reader checks its canvas itself (over ~358 megapixels)
        pixels = next(iter(re.findall(r"\d+", str(exc))), "too many")
        raise UnsupportedMediaError(f"{name} claims a canvas of {pixels} pixels, too large to read; export it "
                                    "smaller") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error) as exc:
        raise UnsupportedMediaError(f"{name} cannot be read as {media.extension.upper()} ({exc})") from None
    return sized_facts(media, width, height, name)


def sized_facts(media: MediaType, width: int, height: int, name: str) -> MediaFacts:
    """An image's facts from the width and height its header gives; UnsupportedMediaError for a size its
    format cannot have (a damaged or forged header)."""
    if media is MediaType.webp and max(width, height) > WEBP_MAX_SIDE:  # (a VP8X header)
        raise UnsupportedMediaError(f"{name} claims {width}×{height} pixels, beyond WebP's {WEBP_MAX_SIDE}×"
                                    f"{WEBP_MAX_SIDE}; export it again")
    if max(width, height) > MAX_SIDE:  # (a PNG header: its fields hold 32 bits)
        raise UnsupportedMediaError(f"{name} claims {width}×{height} pixels, beyond the {MAX_SIDE:,} a side may "
                                    "have; export it again")
    return MediaFacts(media, width or None, height or None)


def _mp4_facts(handle: BinaryIO, name: str) -> MediaFacts:
    size = handle.seek(0, os.SEEK_END)
    boxes = _mp4_boxes(handle, size)
    if boxes is None:
        raise UnsupportedMediaError(f"{name} is a truncated or damaged MP4 file; export it again")
    offset, length = boxes[b"moov"]
    if length > 64 * 1024 * 1024:
        raise UnsupportedMediaError(f"{name} has an implausibly large moov box; export it again")
    handle.seek(offset + 8)
    moov = handle.read(length - 8)
    duration = _mvhd_duration(moov)
    width, height = _tkhd_size(moov)
    return MediaFacts(MediaType.mp4, width, height, duration)


def _children(data: bytes) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    offset = 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        header = 8
        if length == 1 and offset + 16 <= len(data):
            length, header = struct.unpack(">Q", data[offset + 8:offset + 16])[0], 16
        if length < header or offset + length > len(data):
            break
        out.setdefault(kind, []).append(data[offset + header:offset + length])
        offset += length
    return out


def _mvhd_duration(moov: bytes) -> float | None:
    for payload in _children(moov).get(b"mvhd", []):
        return mvhd_duration(payload)
    return None


def mvhd_duration(payload: bytes) -> float | None:
    """Seconds from an ``mvhd`` box's payload (version 0 or 1), to the millisecond; None if unreadable."""
    if payload[:1] == b"\x01" and len(payload) >= 32:
        timescale, duration = struct.unpack(">IQ", payload[20:32])
    elif payload[:1] != b"\x01" and len(payload) >= 20:
        timescale, duration = struct.unpack(">II", payload[12:20])
    else:
        return None
    return round(duration / timescale, 3) if timescale else None


def _tkhd_size(moov: bytes) -> tuple[int | None, int | None]:
    for trak in _children(moov).get(b"trak", []):
        for tkhd in _children(trak).get(b"tkhd", []):
            if len(tkhd) >= 8 and len(tkhd) >= (92 if tkhd[0] == 1 else 80):
                width, height = struct.unpack(">II", tkhd[-8:])
                width, height = width >> 16, height >> 16
                if width and height:
                    return width, height
    return None, None
