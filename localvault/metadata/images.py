"""Text metadata of PNG, JPEG and WebP files, read from their chunks without decoding pixels.

Each reader returns ``{name: text}``: PNG text chunks by keyword; for EXIF,
the UserComment as ``"usercomment"`` and ComfyUI's ``"prompt:{…}"`` /
``"workflow:{…}"`` strings from IFD0 as ``"prompt"`` / ``"workflow"``; a JPEG
COM segment as ``"comment"``; an XMP packet as :data:`XMP_KEY`.
"""

from __future__ import annotations

import struct
import unicodedata
import warnings
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from PIL import Image

from localvault import _png

MAX_TEXT_BYTES = 32 * 1024 * 1024
#: What one file's texts may come to in all, inflated: a bomb of compressed chunks, each under MAX_TEXT_BYTES,
#: took gigabytes of memory, or hours of CPU under one keyword inflated again and again.
MAX_TEXTS_BYTES = 32 * 1024 * 1024
#: EXIF blocks parsed in one file (a real one has one; Pillow takes ~50 ms for each block of 64 KB).
MAX_EXIF_BLOCKS = 4
_MAX_CHUNKS = 200_000
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"comf")  # comf: ComfyUI's SaveAnimatedPNG, as tEXt
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_IFD0_TEXT_TAGS = (0x010E, 0x010F, 0x0110, 0x010D, 0x013B)  # description, make, model, document, artist
#: The name an XMP packet is found under: a PNG's iTXt keyword for it; JPEG's and WebP's are filed so too.
XMP_KEY = "XML:com.adobe.xmp"
_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\0"


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class Texts:
    """The texts found in one file, the first under each name, within MAX_TEXTS_BYTES and MAX_EXIF_BLOCKS (an
    MP4's tags too)."""

    def __init__(self) -> None:
        self.found: dict[str, str] = {}
        self.room = MAX_TEXTS_BYTES
        self._exif_blocks = 0

    def wants(self, name: str) -> bool:
        """Whether a text under ``name`` would be kept: read (inflate) it only then."""
        return name not in self.found and self.room > 0

    def add(self, name: str, raw: bytes, text: str) -> None:
        """Keep ``text``, read from ``raw`` (the bytes it cost: a character may take four)."""
        if self.wants(name):
            self.found[name] = text
            self.room -= len(raw)

    def add_exif(self, data: bytes) -> None:
        if self._exif_blocks < MAX_EXIF_BLOCKS and self.room > 0:
            self._exif_blocks += 1
            self.room -= len(data)
            for name, text in exif_texts(data).items():
                if name not in self.found:
                    self.found[name] = text


def _inflate(data: bytes, limit: int) -> bytes:
    try:
        return zlib.decompressobj().decompress(data, max(1, min(limit, MAX_TEXT_BYTES)))
    except zlib.error:
        return b""


def _add_png_text(texts: Texts, kind: bytes, data: bytes) -> None:
    key, sep, rest = data.partition(b"\0")
    name = key.decode("latin-1")
    if not sep or not texts.wants(name):  # (the keyword first: a chunk whose name is taken is never inflated)
        return
    if kind in (b"tEXt", b"comf"):
        texts.add(name, rest, _text(rest))
    elif kind == b"zTXt":
        inflated = _inflate(rest[1:], texts.room)
        texts.add(name, inflated, _text(inflated))
    else:
        compressed, rest = rest[:1] == b"\x01", rest[2:]
        _lang, _, rest = rest.partition(b"\0")
        _translated, _, rest = rest.partition(b"\0")
        raw = _inflate(rest, texts.room) if compressed else rest
        texts.add(name, raw, raw.decode("utf-8", "replace"))


def png_texts(f: BinaryIO) -> dict[str, str]:
    """Text chunks (tEXt, zTXt, iTXt, wherever they are) and the EXIF of a PNG stream."""
    texts = Texts()
    for kind, length in _png.chunks(f, _MAX_CHUNKS):
        if kind == b"IEND" or texts.room <= 0:
            break
        if kind not in _TEXT_CHUNKS or length > MAX_TEXT_BYTES:
            continue
        data = f.read(length)
        if kind == b"eXIf":
            texts.add_exif(data)
        else:
            _add_png_text(texts, kind, data)
    return texts.found


def jpeg_texts(f: BinaryIO) -> dict[str, str]:
    """The EXIF and XMP (APP1) and comment (COM) segments of a JPEG stream, up to the image data."""
    texts = Texts()
    f.seek(2)
    for _ in range(_MAX_CHUNKS):
        byte = f.read(1)
        if byte != b"\xff":
            break
        marker = f.read(1)
        while marker == b"\xff":
            marker = f.read(1)
        if not marker or marker in (b"\xda", b"\xd9"):
            break
        if marker in (b"\x01", b"\xd8") or b"\xd0" <= marker <= b"\xd7":
            continue
        size = f.read(2)
        if len(size) < 2 or struct.unpack(">H", size)[0] < 2:
            break
        data = f.read(struct.unpack(">H", size)[0] - 2)
        if marker == b"\xe1" and data.startswith(b"Exif\0\0"):
            texts.add_exif(data)
        elif marker == b"\xe1" and data.startswith(_XMP_APP1) and texts.wants(XMP_KEY):
            texts.add(XMP_KEY, data, _text(data[len(_XMP_APP1):]))
        elif marker == b"\xfe" and texts.wants("comment"):
            texts.add("comment", data, _text(data.rstrip(b"\0")))
    return texts.found


def webp_texts(f: BinaryIO) -> dict[str, str]:
    """The EXIF and XMP chunks of a WebP (RIFF) stream."""
    texts = Texts()
    for kind, length in riff_chunks(f, _MAX_CHUNKS):
        if kind == b"EXIF" and length <= MAX_TEXT_BYTES:
            texts.add_exif(f.read(length))
        elif kind == b"XMP " and length <= MAX_TEXT_BYTES and texts.wants(XMP_KEY):
            data = f.read(length)
            texts.add(XMP_KEY, data, _text(data))
    return texts.found


def riff_chunks(f: BinaryIO, limit: int) -> Iterator[tuple[bytes, int]]:
    """(name, data length) of each chunk of a WebP (RIFF) stream, ``f`` at the chunk's data as each is given:
    whatever the caller reads of it, the next is looked for past its data (padded to an even length). At most
    ``limit`` chunks."""
    offset = 12
    for _ in range(limit):
        f.seek(offset)
        head = f.read(8)
        if len(head) < 8:
            return
        kind, length = struct.unpack("<4sI", head)
        offset += 8 + length + length % 2
        yield kind, length


def exif_texts(data: bytes) -> dict[str, str]:
    """UserComment and ComfyUI's ``prompt:``/``workflow:`` strings from raw EXIF bytes."""
    exif = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif.load(data)
            ifd0 = {tag: exif.get(tag) for tag in _IFD0_TEXT_TAGS}
            # (Fooocus writes its UserComment in IFD0, not in the Exif IFD where it belongs.)
            comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT) or exif.get(_USER_COMMENT)
    except Exception:  # Pillow raises many kinds of error on malformed EXIF
        return {}
    texts: dict[str, str] = {}
    for value in ifd0.values():
        name, sep, rest = value.partition(":") if isinstance(value, str) else ("", "", "")
        if sep and name.strip().lower() in ("prompt", "workflow"):
            texts.setdefault(name.strip().lower(), rest)
    text = decode_user_comment(comment, big_endian=getattr(exif, "endian", ">") != "<")
    if text is not None and text.strip():
        texts["usercomment"] = text
    return texts


def _utf16(body: bytes, big_endian: bool = True) -> str:
    """UTF-16 text of either byte order. Without a byte-order mark, the zero bytes tell where a quarter of the
    characters or more are ASCII (an A1111 settings line is all ASCII): big-endian puts their zero byte first.
    Where fewer are (a prompt all in Chinese), a few zero bytes (U+4E00 "一" is 4E 00) tell nothing: the order
    whose reading has fewer impossible characters wins; on a tie, ``big_endian``: the EXIF block's own byte
    order (A1111, with piexif, writes big-endian text in a big-endian block)."""
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return body.decode("utf-16", "replace")
    even_zeros = body[0::2].count(0)
    odd_zeros = body[1::2].count(0)
    if max(even_zeros, odd_zeros) * 4 >= len(body) // 2 and even_zeros != odd_zeros:
        return body.decode("utf-16-be" if even_zeros > odd_zeros else "utf-16-le", "replace")
    big, little = body.decode("utf-16-be", "replace"), body.decode("utf-16-le", "replace")
    odd_big, odd_little = _unlikely_characters(big), _unlikely_characters(little)
    if odd_big != odd_little:
        return big if odd_big < odd_little else little
    return big if big_endian else little


def _unlikely_characters(text: str) -> int:
    """Characters that text in a wrong byte order is full of: undecodable, private-use, unassigned, controls."""
    return sum(1 for c in text if c == "\ufffd" or (unicodedata.category(c) in ("Co", "Cn", "Cs", "Cc")
                                                     and c not in "\n\r\t\0"))


def decode_user_comment(raw: Any, *, big_endian: bool = True) -> str | None:
    """Text of an EXIF UserComment: an 8-byte charset prefix (UNICODE, ASCII, JIS, none) then the text.

    ``big_endian``: the byte order of the EXIF block, UNICODE text's when its bytes cannot tell."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None
    raw = bytes(raw)
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        text = _utf16(body, big_endian)
    elif prefix in (b"ASCII\0\0\0", b"\0" * 8):
        text = _text(body)
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", "replace")
    else:
        text = _text(raw)
    return text.rstrip("\0")
