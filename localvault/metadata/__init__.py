"""Read how an image or video was generated: prompt, seed, model and settings.

Supported: Stable Diffusion WebUI (A1111/Forge) ``parameters`` text in PNG
chunks or JPEG/WebP EXIF UserComment; ComfyUI API/UI graphs in PNG chunks,
WebP EXIF and MP4 comments (VideoHelperSuite); InvokeAI metadata chunks;
Fooocus, SwarmUI, NovelAI, Easy Diffusion and Draw Things (XMP); sidecar
files (``NAME.json``, ``NAME.txt``). Only headers and metadata
chunks are read; pixels only of a PNG or WebP whose chunks held nothing, for
parameters hidden in them (:mod:`.stealth`)::

    info = read("out/00001.png")
    info.prompt, info.seed, info.model, info.source, info.settings["steps"]
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, BinaryIO

from localvault._disk import NotRegularFileError, open_regular
from localvault.errors import InvalidInputError, StorageError
from localvault.models import GenerationInfo, check_flag, check_path

from . import a1111, comfyui, images, invokeai, mp4, novelai, sidecar, stealth, xmp
from ._clean import Found, finish, json_object, merge

__all__ = ["Found", "read", "read_chunks"]

_COMMENT_KEYS = ("usercomment", "comment", "description")


def _from_comment(text: Any, key: str, depth: int, file_name: str | None) -> Found:
    """A free-text comment: JSON with ComfyUI graphs (or SwarmUI's or Fooocus's, as their JPEG and WebP files
    hold them in the UserComment), or A1111 parameters."""
    if not isinstance(text, str):
        return Found()
    data = json_object(text)
    if (found := _tool_json(data)) is not None:
        return found
    if data is not None:
        return read_chunks(data, depth + 1, file_name=file_name) if depth == 0 else Found()
    if key == "usercomment" or a1111.looks_like_parameters(text):
        return a1111.parse(text)
    return Found()


#: Keys only Fooocus's own metadata scheme writes in its ``parameters`` JSON.
_FOOOCUS_KEYS = ("full_prompt", "base_model", "fooocus_scheme", "metadata_scheme")


def _tool_json(data: dict[str, Any] | None) -> Found | None:
    """What the JSON object Fooocus (or SwarmUI, as ``sui_image_params``) writes holds; None for other JSON."""
    if data is not None and isinstance(data.get("sui_image_params"), dict):
        return sidecar.from_mapping(data["sui_image_params"], source="swarmui")
    if data is not None and any(key in data for key in _FOOOCUS_KEYS):
        return sidecar.from_mapping(data, source="fooocus")
    return None


def _parameters(text: Any) -> Found:
    """A ``parameters`` entry: A1111's text, or Fooocus's or SwarmUI's JSON object (:func:`_tool_json`). Other
    JSON is read as A1111 text (the whole of it becomes the prompt)."""
    found = _tool_json(json_object(text))
    return found if found is not None else a1111.parse(text)


#: Keys only Easy Diffusion writes (one PNG text chunk each, or a JSON object in EXIF).
_EASY_DIFFUSION_KEYS = ("use_stable_diffusion_model", "num_inference_steps")


def _plain_prompt(chunks: dict[str, Any]) -> Found:
    """Entries that hold the prompt as plain text, each setting in an entry of its own (Easy Diffusion's PNG
    chunks, or its JSON object in EXIF): not a ComfyUI graph, whose entry has the same name."""
    prompt = chunks.get("prompt")
    if not isinstance(prompt, str) or prompt.lstrip().startswith(("{", "[")) or "workflow" in chunks:
        return Found()
    return sidecar.from_mapping({k: v for k, v in chunks.items() if k != "parameters"},
                                source="easydiffusion" if any(key in chunks for key in _EASY_DIFFUSION_KEYS)
                                else "embedded")


def _from_xmp(packet: Any) -> Found:
    """Draw Things' request in the XMP's UserComment, else A1111 text in its description."""
    texts = xmp.texts(packet)
    found = xmp.draw_things(texts.get("usercomment"))
    if found.is_empty() and a1111.looks_like_parameters(texts.get("description", "")):
        found = a1111.parse(texts["description"])
    return found


def read_chunks(chunks: dict[str, Any], depth: int = 0, *, file_name: str | None = None) -> Found:
    """Raw findings from a file's named text entries (PNG chunks, EXIF texts, MP4 tags, XMP).

    ``depth``: how deep in a comment's JSON these entries were found (0 for a file's own; a JSON comment is
    read as entries once, not again inside itself). ``file_name``: the file's name, which tells which branch of a
    ComfyUI graph of several saved it."""
    found = Found()
    if "parameters" in chunks:
        found = merge(found, _parameters(chunks["parameters"]))
    # A1111 text in the UserComment is what a saver (ComfyUI's Image Saver) wrote of its graph: it goes first,
    # as "parameters" does in its PNGs.
    comment = chunks.get("usercomment")
    saver_text = isinstance(comment, str) and not comment.lstrip().startswith("{") and \
        a1111.looks_like_parameters(comment)
    if saver_text:
        found = merge(found, a1111.parse(comment))
    if novelai.is_novelai(chunks):
        found = merge(found, novelai.parse(chunks))
    if "prompt" in chunks or "workflow" in chunks:
        found = merge(found, comfyui.parse(chunks.get("prompt"), chunks.get("workflow"), extra=chunks,
                                           file_name=file_name))
        found = merge(found, _plain_prompt(chunks))
    if "invokeai_metadata" in chunks:
        found = merge(found, invokeai.parse(chunks["invokeai_metadata"], chunks.get("invokeai_graph")))
    if "sd-metadata" in chunks:
        found = merge(found, invokeai.parse_sd_metadata(chunks["sd-metadata"]))
    if "Dream" in chunks:
        found = merge(found, invokeai.parse_dream(chunks["Dream"]))
    if images.XMP_KEY in chunks:
        found = merge(found, _from_xmp(chunks[images.XMP_KEY]))
    for key in _COMMENT_KEYS:
        if key in chunks and not (key == "usercomment" and saver_text):
            found = merge(found, _from_comment(chunks[key], key, depth, file_name))
    return found


def _texts(f: BinaryIO) -> dict[str, str]:
    """The named text entries of a stream, by its format (sniffed from the first bytes)."""
    head = f.read(16)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return images.png_texts(f)
    if head.startswith(b"\xff\xd8\xff"):
        return images.jpeg_texts(f)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return images.webp_texts(f)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return mp4.read_tags(f)
    return {}


def _open_regular(path: Path) -> BinaryIO:
    """The file at ``path`` opened for reading (never blocking on a named pipe); StorageError if it cannot be,
    or is not a regular file."""
    try:
        return open_regular(path)
    except NotRegularFileError:
        raise StorageError(f"{os.fspath(path)!r} is not a regular file; give the path of an image or video") from None
    except OSError as exc:
        raise StorageError(f"cannot open {os.fspath(path)!r} to read its metadata: {exc.strerror or exc}") from exc


def _embedded(path: Path, data: bytes | None = None, handle: BinaryIO | None = None,
              file_name: str | None = None, pixels: bool = True) -> Found:
    if handle is not None:
        try:
            handle.seek(0)
        except (OSError, ValueError) as exc:  # a pipe, a closed file
            raise StorageError(f"cannot read the metadata of {file_name!r} from its handle: {exc}; give a file "
                               "open for reading, which can seek") from None
        return _chunks_of(handle, file_name, pixels)
    with io.BytesIO(data) if data is not None else _open_regular(path) as f:
        return _chunks_of(f, file_name, pixels)


def _chunks_of(f: BinaryIO, file_name: str | None, pixels: bool) -> Found:
    try:
        found = read_chunks(_texts(f), file_name=file_name)
        # Decoding pixels costs far more than reading chunks: only for a file that gave nothing else.
        if pixels and found.is_empty() and (hidden := stealth.hidden_texts(f)) is not None:
            found = read_chunks(hidden, file_name=file_name)
        return found
    except Exception:  # odd metadata must never stop an import; the fuzz tests
        return Found()  # exercise read_chunks() and the chunk readers without this net


def read(path: str | os.PathLike[str], *, data: bytes | None = None, handle: BinaryIO | None = None,
         siblings: Collection[str] | None = None, contents: str | os.PathLike[str] | None = None,
         pixels: bool = True) -> GenerationInfo:
    """How the file at ``path`` was generated, from its embedded metadata and any sidecar file.

    Embedded metadata wins; a sidecar (``NAME.json``, ``NAME.ext.json``, ``NAME.txt``)
    fills the gaps. Malformed metadata never raises: whatever could be read is
    returned, with ``source="none"`` when nothing was. Raises
    :class:`~localvault.errors.StorageError` only when the file cannot be opened
    (or ``handle`` read from its start), InvalidInputError for an argument of the wrong kind.

    A caller that has already read the file passes its bytes as ``data``; one
    that has listed the folder passes the names in it as ``siblings``, so that
    absent sidecars are not looked for on disk. One that has copied the file
    names the copy as ``contents``: the embedded metadata is read from it (the
    very bytes it keeps), sidecars still beside ``path``. One that holds the
    file open passes it as ``handle`` (read from its start, left open): the
    metadata then comes from the very file the caller checks and hashes.
    ``pixels=False`` leaves out the one costly step: the parameters a PNG or
    WebP whose chunks hold none may hide in its pixels (:mod:`.stealth`).
    """
    path = check_path(path, "the file to read")
    if contents is not None:
        contents = check_path(contents, "contents")
    if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"data must be the file's bytes, not {type(data).__name__}")
    pixels = check_flag(pixels, "pixels")
    found = _embedded(Path(contents) if contents is not None and data is None else path, data, handle, path.name,
                      pixels)
    try:
        found = merge(found, sidecar.read(path, siblings))
    except Exception:  # same contract as _embedded
        pass
    return finish(found)
