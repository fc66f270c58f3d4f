"""Parameters hidden in an image's pixels ("stealth pnginfo"), for a file whose chunks were stripped.

The Stable Diffusion WebUI extension sd_webui_stealth_pnginfo, Forge's built-in copy of it, its ComfyUI port and
NovelAI write, in the least significant bits of the pixels, taken column by column (x outer, y inner)::

    signature (15 bytes)  length of the payload in bits (32 bits, big-endian)  payload

one bit a pixel from the alpha channel (``stealth_pnginfo``, ``stealth_pngcomp``), or three from red, green and
blue in turn (``stealth_rgbinfo``, ``stealth_rgbcomp``); a ``comp`` payload is gzip. A1111's payload is its
``parameters`` text; NovelAI's (and the ComfyUI port's) a JSON object of the PNG's text chunks, NovelAI's
``Comment`` itself JSON text.

Pixels are decoded only here, and only as far as they are needed: of a PNG, the rows that would hold the signature
and length (the first 152 of an RGBA one, 51 of an RGB one) until a signature is found. A lossy WebP without alpha
keeps no such bits, and is not decoded at all.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import BinaryIO

from PIL import Image, WebPImagePlugin

from localvault import _png

from ._clean import MAX_JSON_CHARS, json_object
from .images import riff_chunks

#: The signatures of each kind of bit stream (alpha: one bit a pixel; RGB: three), and whether its payload is gzip.
_SIGNATURES = {True: {b"stealth_pnginfo": False, b"stealth_pngcomp": True},
               False: {b"stealth_rgbinfo": False, b"stealth_rgbcomp": True}}
_SIGNATURE_BYTES = 15
#: The signature and the payload's length.
_HEADER_BITS = 8 * (_SIGNATURE_BYTES + 4)
#: A hidden payload, and what it inflates to, read up to this: the longest JSON text any reader parses (a real
#: one is a few KB; a 2048×2048 image holds 512 KiB in its alpha bits).
MAX_HIDDEN_BYTES = MAX_JSON_CHARS
#: Each byte as the character of its least significant bit, "0" or "1" (``int(…, 2)`` then packs them).
_BIT_CHARS = bytes(0x30 | (value & 1) for value in range(256))
_MAX_CHUNKS = 200_000
#: The most bytes deflate makes of one compressed byte (its longest matches: 258 bytes in two bits, ~1032:1).
_DEFLATE_MAX_RATIO = 1032
#: The PNG colour types whose pixels can hide bits (8 bits a channel): RGB, RGBA.
_PNG_MODES = {2: "RGB", 6: "RGBA"}


class _Pixels:
    """An image's mode and size, and its pixels decoded down to a given row, each extent at most once."""

    def __init__(self, mode: str, size: tuple[int, int], decode: Callable[[int], Image.Image]) -> None:
        self.mode = mode
        self.width, self.height = size
        self._decode = decode
        self._decoded: Image.Image | None = None

    def first(self, pixels: int) -> Image.Image:
        """An image holding at least the first ``pixels`` pixels in column order: the first rows of the first
        column, or every row."""
        rows = min(self.height, pixels)
        if self._decoded is None or self._decoded.height < rows:
            self._decoded = self._decode(rows)
        return self._decoded


def hidden_texts(f: BinaryIO) -> dict[str, str] | None:
    """The text chunks hidden in the pixels of a PNG or WebP stream, or None (no signature, or damaged data).

    ``{"parameters": text}`` for A1111's payload; for a JSON object (NovelAI's, ComfyUI's), its entries (a value
    that is not text as JSON text). Never raises on what the stream holds."""
    try:
        pixels = _open(f)
        return _read(pixels) if pixels is not None else None
    except Exception:  # Pillow and zlib raise many kinds of error on damaged data
        return None


def _read(pixels: _Pixels) -> dict[str, str] | None:
    for alpha in (True, False) if pixels.mode == "RGBA" else (False,):
        per_pixel = 1 if alpha else 3
        capacity = pixels.width * pixels.height * per_pixel
        if capacity < _HEADER_BITS:
            continue
        header = _pack(_bits(pixels, alpha, _HEADER_BITS))
        compressed = _SIGNATURES[alpha].get(header[:_SIGNATURE_BYTES])
        if compressed is None:
            continue
        length = int.from_bytes(header[_SIGNATURE_BYTES:], "big") // 8  # (whole bytes, as NovelAI's reader)
        if not 0 < length <= min(MAX_HIDDEN_BYTES, (capacity - _HEADER_BITS) // 8):
            return None
        payload = _pack(_bits(pixels, alpha, _HEADER_BITS + 8 * length)[_HEADER_BITS:])
        text = _gunzip(payload) if compressed else payload
        return _chunks(text) if text is not None else None
    return None


def _bits(pixels: _Pixels, alpha: bool, count: int) -> bytes:
    """The first ``count`` hidden bits, as "0"/"1" characters: of the alpha channel, or of red, green and blue in
    turn, pixel after pixel down each column."""
    per_pixel = 1 if alpha else 3
    needed = -(-count // per_pixel)
    image = pixels.first(needed)
    columns = min(image.width, -(-needed // image.height))
    part = image.crop((0, 0, columns, image.height))
    band = part.getchannel("A") if alpha else part.convert("RGB")
    # Transposed, the image's columns are rows: tobytes() gives them in the order the bits were written.
    return band.transpose(Image.Transpose.TRANSPOSE).tobytes()[:count].translate(_BIT_CHARS)


def _pack(bits: bytes) -> bytes:
    """"0"/"1" characters as the bytes they spell, eight to a byte, the first bit the highest."""
    count = len(bits) // 8
    return int(bits[:count * 8], 2).to_bytes(count, "big") if count else b""


def _gunzip(data: bytes) -> bytes | None:
    """A gzip payload inflated, within MAX_HIDDEN_BYTES; None for one that is damaged, cut short or inflates to more."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        text = inflater.decompress(data, MAX_HIDDEN_BYTES + 1)
    except zlib.error:
        return None
    return text if inflater.eof and len(text) <= MAX_HIDDEN_BYTES else None


def _chunks(payload: bytes) -> dict[str, str]:
    """A payload as the chunks it stands for: a JSON object's entries (NovelAI's, ComfyUI's), else A1111 text."""
    text = payload.decode("utf-8", "replace")
    data = json_object(text)
    if data is None:
        return {"parameters": text}
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}


def _open(f: BinaryIO) -> _Pixels | None:
    """The pixels of a PNG or WebP that may hide bits (RGB or RGBA, within Pillow's pixel limit), not yet decoded."""
    f.seek(0)
    head = f.read(_png.HEADER_BYTES)
    if head.startswith(_png.SIGNATURE):
        return _png_pixels(f, head)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_pixels(f)
    return None


def _within_limit(width: int, height: int) -> bool:
    """Whether an image is one Pillow decodes without a decompression-bomb warning (its MAX_IMAGE_PIXELS)."""
    limit = Image.MAX_IMAGE_PIXELS
    return width > 0 and height > 0 and (limit is None or width * height <= limit)


def _png_pixels(f: BinaryIO, head: bytes) -> _Pixels | None:
    size = _png.header_size(head)
    if size is None:
        return None
    depth, colour, interlaced = head[24], head[25], head[28]
    mode = _PNG_MODES.get(colour)
    # (An interlaced PNG's first rows are not at its start; the tools write none.)
    if mode is None or depth != 8 or interlaced or not _within_limit(*size):
        return None
    return _Pixels(mode, size, lambda rows: _png_rows(f, mode, size[0], rows))


def _png_rows(f: BinaryIO, mode: str, width: int, rows: int) -> Image.Image:
    """The first ``rows`` rows of a PNG, decoded by Pillow from as much of its IDAT data as they can take (a
    crafted chunk of a gigabyte is not read whole)."""
    raw = rows * (1 + width * len(mode))  # each row: its filter byte, then its pixels
    # Deflate makes raw bytes at most ~13% longer (fixed Huffman codes: 9 bits a byte), with room to spare.
    limit = raw + raw // 2 + 1024
    pieces: list[bytes] = []
    taken = 0
    for kind, length in _png.chunks(f, _MAX_CHUNKS):
        if kind != b"IDAT":
            if pieces or kind == b"IEND":  # (a PNG's IDAT chunks follow each other)
                break
            continue
        piece = f.read(min(length, limit - taken))
        pieces.append(piece)
        taken += len(piece)
        if taken >= limit or len(piece) < length:
            break
    # Deflate makes at most ~1032 bytes of each: data that cannot fill the rows is refused before Pillow makes
    # the image it would fill (a 69-byte PNG claiming 588,000 columns had it make 340 MB).
    if taken * _DEFLATE_MAX_RATIO < raw:
        raise ValueError("too little image data for the rows")
    return Image.frombytes(mode, (width, rows), b"".join(pieces), "zip", mode)


def _webp_pixels(f: BinaryIO) -> _Pixels | None:
    if not _webp_keeps_bits(f):
        return None
    f.seek(0)
    # The reader's class, not Image.open: the size is checked against the limit here, without a warning.
    image = WebPImagePlugin.WebPImageFile(f)
    if image.mode not in ("RGB", "RGBA") or not _within_limit(*image.size):
        return None

    def decode(_rows: int) -> Image.Image:  # (WebP is decoded whole)
        image.load()
        return image

    return _Pixels(image.mode, image.size, decode)


def _webp_keeps_bits(f: BinaryIO) -> bool:
    """Whether a WebP may keep bits hidden in its pixels: a lossless one, or one with an alpha channel (``ALPH``,
    lossless unless asked otherwise). A lossy one without it cannot, nor is an animation read."""
    for kind, _length in riff_chunks(f, 64):
        if kind in (b"VP8L", b"ALPH"):
            return True
        if kind in (b"VP8 ", b"ANMF"):
            return False
    return False
