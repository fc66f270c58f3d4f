"""Small, real, deterministic media files for tests.

Each ``make_*`` function writes a file Pillow (or an MP4 parser) can open and
returns its path. ``color`` (an RGB tuple or an int seed) makes files
distinct: the same arguments always give the same bytes, different seeds give
different bytes.

    make_png(tmp_path / "a.png", text_chunks={"parameters": "a cat\\nSteps: 20, Seed: 1, Size: 64x64"})
    make_jpeg(tmp_path / "a.jpg", exif_user_comment="a cat\\nSteps: 20, ...")
    make_webp(tmp_path / "a.webp", exif_user_comment="...")
    make_mp4(tmp_path / "a.mp4", duration_seconds=2.0, comment='{"prompt": "..."}')
    make_stealth_png(tmp_path / "a.png", "a cat\nSteps: 20, ...", mode="alpha", compressed=True)
"""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

Color = tuple[int, int, int] | int

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286


def _image(size: tuple[int, int], color: Color) -> Image.Image:
    """A solid image; an int ``color`` is a seed that also marks the first row, so seeds stay distinct."""
    if isinstance(color, tuple):
        return Image.new("RGB", size, color)
    seed = color
    base = ((seed * 37 + 90) % 256, (seed * 101 + 40) % 256, (seed * 211 + 160) % 256)
    img = Image.new("RGB", size, base)
    for i, byte in enumerate(seed.to_bytes(8, "big", signed=True)):
        img.putpixel((i % size[0], 0), (byte, 255 - byte, byte ^ 0x5A))
    return img


def user_comment_bytes(text: str, encoding: str = "unicode") -> bytes:
    """An EXIF UserComment value: 8-byte charset prefix then the text.

    ``encoding``: ``"unicode"`` (UTF-16 big-endian, as A1111/piexif write it),
    ``"unicode-le"`` (UTF-16 little-endian), ``"ascii"``, or ``"raw"`` (UTF-8, no prefix).
    """
    if encoding == "unicode":
        return b"UNICODE\0" + text.encode("utf-16-be")
    if encoding == "unicode-le":
        return b"UNICODE\0" + text.encode("utf-16-le")
    if encoding == "ascii":
        return b"ASCII\0\0\0" + text.encode("ascii", "replace")
    if encoding == "raw":
        return text.encode("utf-8")
    raise ValueError(f"unknown UserComment encoding {encoding!r}")


def _exif(user_comment: str | bytes | None, ifd0: dict[int, str] | None, encoding: str) -> Image.Exif:
    exif = Image.Exif()
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    if user_comment is not None:
        raw = user_comment if isinstance(user_comment, bytes) else user_comment_bytes(user_comment, encoding)
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = raw
    return exif


def make_png(
    path: Path | str,
    size: tuple[int, int] = (64, 64),
    text_chunks: dict[str, str] | None = None,
    color: Color = (200, 80, 40),
    *,
    compress: bool = False,
) -> Path:
    """A PNG with the given text chunks (tEXt, or iTXt for non-Latin-1 text; zTXt/compressed iTXt if ``compress``)."""
    path = Path(path)
    info = PngInfo()
    for key, value in (text_chunks or {}).items():
        info.add_text(key, value, zip=compress)
    _image(size, color).save(path, "PNG", pnginfo=info)
    return path


def make_jpeg(
    path: Path | str,
    exif_user_comment: str | bytes | None = None,
    size: tuple[int, int] = (64, 64),
    color: Color = (40, 120, 200),
    *,
    encoding: str = "unicode",
    comment: str | None = None,
    exif_ifd0: dict[int, str] | None = None,
) -> Path:
    """A JPEG, optionally with an EXIF UserComment (text, or raw bytes as given) and a COM segment."""
    path = Path(path)
    options: dict[str, object] = {"quality": 90, "exif": _exif(exif_user_comment, exif_ifd0, encoding)}
    if comment is not None:
        options["comment"] = comment.encode("utf-8")
    _image(size, color).save(path, "JPEG", **options)
    return path


def jpeg_with_thumbnail(size: tuple[int, int] = (128, 128), seed: int = 0) -> bytes:
    """A JPEG whose EXIF carries a 16×16 JPEG thumbnail (IFD1), as cameras and some tools write: its
    header then holds an end-of-image marker of its own."""
    import io
    import random

    rng = random.Random(seed)
    thumbnail = io.BytesIO()
    Image.frombytes("RGB", (16, 16), rng.randbytes(16 * 16 * 3)).save(thumbnail, "JPEG")
    thumb = thumbnail.getvalue()
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 1)  # Orientation, then a link to IFD1
    ifd1_offset = 8 + len(ifd0) + 4
    thumb_offset = ifd1_offset + 2 + 2 * 12 + 4
    ifd1 = (struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, thumb_offset)
            + struct.pack("<HHII", 0x0202, 4, 1, len(thumb)) + struct.pack("<I", 0))
    exif = b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd0 + struct.pack("<I", ifd1_offset) + ifd1 + thumb
    out = io.BytesIO()
    Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def make_webp(
    path: Path | str,
    exif_user_comment: str | bytes | None = None,
    size: tuple[int, int] = (64, 64),
    color: Color = (90, 200, 90),
    *,
    encoding: str = "unicode",
    exif_ifd0: dict[int, str] | None = None,
) -> Path:
    """A lossless WebP, optionally with EXIF (a UserComment, and IFD0 strings such as ComfyUI's ``prompt:{…}``)."""
    path = Path(path)
    exif = _exif(exif_user_comment, exif_ifd0, encoding)
    options: dict[str, object] = {"lossless": True}
    if exif_user_comment is not None or exif_ifd0:
        options["exif"] = exif
    _image(size, color).save(path, "WEBP", **options)
    return path


def stealth_bits(payload: str | bytes, *, mode: str = "alpha", compressed: bool = False,
                 signature: bytes | None = None, length_bits: int | None = None) -> str:
    """The bits stealth pnginfo hides: its signature (``stealth_pnginfo``, ``stealth_pngcomp``,
    ``stealth_rgbinfo``, ``stealth_rgbcomp``, or ``signature``), the payload's length in bits (or
    ``length_bits``) on 32 bits, then the payload (gzip if ``compressed``), as "0"/"1" characters."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    if compressed:
        data = gzip.compress(data)
    if signature is None:
        signature = f"stealth_{'png' if mode == 'alpha' else 'rgb'}{'comp' if compressed else 'info'}".encode()
    length = 8 * len(data) if length_bits is None else length_bits
    return "".join(f"{byte:08b}" for byte in signature + length.to_bytes(4, "big") + data)


def make_stealth_png(
    path: Path | str,
    payload: str | bytes,
    *,
    mode: str = "alpha",
    compressed: bool = False,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    signature: bytes | None = None,
    length_bits: int | None = None,
    text_chunks: dict[str, str] | None = None,
    image_format: str = "PNG",
) -> Path:
    """An image of random pixels (RGBA for ``mode="alpha"``, RGB for ``"rgb"``) hiding ``payload`` in their least
    significant bits as sd_webui_stealth_pnginfo's ``add_data`` writes them: column by column (x outer, y
    inner), one bit a pixel in the alpha, or three in red, green and blue. NovelAI writes its gzip JSON so too
    (``mode="alpha"``, ``compressed=True``). ``text_chunks`` are written beside; ``image_format="WEBP"`` saves
    a lossless WebP."""
    path = Path(path)
    bits = stealth_bits(payload, mode=mode, compressed=compressed, signature=signature, length_bits=length_bits)
    width, height = size
    image = Image.frombytes("RGB", size, random.Random(seed).randbytes(width * height * 3))
    if mode == "alpha":
        image.putalpha(255)
    pixels = image.load()
    assert pixels is not None
    channels = (3,) if mode == "alpha" else (0, 1, 2)
    index = 0
    for x in range(width):
        for y in range(height):
            if index >= len(bits):
                break
            values = list(pixels[x, y])  # type: ignore[arg-type]
            for channel in channels:
                if index < len(bits):
                    values[channel] = values[channel] & ~1 | int(bits[index])
                    index += 1
            pixels[x, y] = tuple(values)
    assert index >= len(bits), "the payload does not fit in the image"
    if image_format == "WEBP":
        image.save(path, "WEBP", lossless=True)
    else:
        info = PngInfo()
        for key, value in (text_chunks or {}).items():
            info.add_text(key, value)
        image.save(path, "PNG", pnginfo=info)
    return path


# ------------------------------------------------------------------------ MP4


def box(kind: bytes, payload: bytes = b"") -> bytes:
    """An ISO-BMFF box: 32-bit size, 4-byte type, payload."""
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full_box(kind: bytes, payload: bytes = b"", version: int = 0, flags: int = 0) -> bytes:
    """A full box: version and flags, then the payload."""
    return box(kind, struct.pack(">I", (version << 24) | flags) + payload)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _mvhd(timescale: int, duration: int) -> bytes:
    body = struct.pack(">IIII", 0, 0, timescale, duration)
    body += struct.pack(">IH", 0x00010000, 0x0100) + b"\0" * 10 + _MATRIX + b"\0" * 24 + struct.pack(">I", 2)
    return full_box(b"mvhd", body)


def _tkhd(duration: int, size: tuple[int, int]) -> bytes:
    body = struct.pack(">IIIII", 0, 0, 1, 0, duration) + b"\0" * 8
    body += struct.pack(">hhhH", 0, 0, 0, 0) + _MATRIX + struct.pack(">II", size[0] << 16, size[1] << 16)
    return full_box(b"tkhd", body, flags=3)


def _ilst_item(kind: bytes, text: str) -> bytes:
    return box(kind, box(b"data", struct.pack(">II", 1, 0) + text.encode("utf-8")))


def _hdlr(handler: bytes) -> bytes:
    return full_box(b"hdlr", b"\0" * 4 + handler + b"\0" * 12 + b"\0")


def _udta(comment: str | None, title: str | None) -> bytes:
    items = b""
    if title is not None:
        items += _ilst_item(b"\xa9nam", title)
    if comment is not None:
        items += _ilst_item(b"\xa9cmt", comment)
    if not items:
        return b""
    return box(b"udta", full_box(b"meta", _hdlr(b"mdir") + box(b"ilst", items)))


def _mdta_meta(tags: dict[str, str]) -> bytes:
    """QuickTime-style ``moov/meta`` with ``keys`` (what ffmpeg writes with ``-movflags use_metadata_tags``)."""
    if not tags:
        return b""
    keys = b"".join(struct.pack(">I4s", 8 + len(k.encode()), b"mdta") + k.encode() for k in tags)
    keys_box = full_box(b"keys", struct.pack(">I", len(tags)) + keys)
    items = b"".join(
        box(struct.pack(">I", i), box(b"data", struct.pack(">II", 1, 0) + v.encode("utf-8")))
        for i, v in enumerate(tags.values(), start=1)
    )
    return full_box(b"meta", _hdlr(b"mdta") + keys_box + box(b"ilst", items))


def make_mp4(
    path: Path | str,
    duration_seconds: float = 2.0,
    comment: str | None = None,
    *,
    color: int = 0,
    title: str | None = None,
    mdta_tags: dict[str, str] | None = None,
    faststart: bool = False,
    size: tuple[int, int] = (64, 64),
    timescale: int = 1000,
) -> Path:
    """A tiny MP4: ``ftyp``, ``mdat`` and ``moov`` (``mvhd`` with timescale and duration, ``trak/tkhd``).

    ``comment`` goes to ``moov/udta/meta/ilst/©cmt`` (as ffmpeg writes VideoHelperSuite's
    ``comment``); ``mdta_tags`` to ``moov/meta`` keys. ``color`` seeds the ``mdat`` bytes;
    ``faststart`` puts ``moov`` before ``mdat``.
    """
    path = Path(path)
    duration = round(duration_seconds * timescale)
    ftyp = box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2mp41")
    moov = box(
        b"moov",
        _mvhd(timescale, duration) + box(b"trak", _tkhd(duration, size)) + _udta(comment, title)
        + _mdta_meta(mdta_tags or {}),
    )
    mdat = box(b"mdat", struct.pack(">q", color) * 4)
    path.write_bytes(ftyp + (moov + mdat if faststart else mdat + moov))
    return path
