"""XMP packets (PNG ``XML:com.adobe.xmp``, JPEG APP1, WebP ``XMP `` chunk): the few texts rigs put there.

Draw Things writes its request as JSON in ``exif:UserComment`` (``c`` the
prompt, ``uc`` the negative prompt, ``seed``, ``model``, ``sampler``…) and an
A1111-like text in ``dc:description``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any

from ._clean import Found, json_object, parse_seed

#: Bigger XMP packets are not parsed (a rig's is a few KB).
MAX_XMP_CHARS = 1024 * 1024
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_NAMES = {
    "{http://ns.adobe.com/exif/1.0/}UserComment": "usercomment",
    "{http://purl.org/dc/elements/1.1/}description": "description",
    "{http://ns.adobe.com/xap/1.0/}CreatorTool": "creator_tool",
}


def texts(packet: Any) -> dict[str, str]:
    """``usercomment``, ``description`` and ``creator_tool`` of an XMP packet (element or attribute form)."""
    if not isinstance(packet, str) or len(packet) > MAX_XMP_CHARS or "<!DOCTYPE" in packet or "<!ENTITY" in packet:
        return {}  # (XMP has no DTD: one here could only be an entity-expansion bomb)
    try:
        root = ElementTree.fromstring(packet.strip().strip("\0"))
    except (ElementTree.ParseError, ValueError):
        return {}
    found: dict[str, str] = {}
    for description in root.iter(f"{_RDF}Description"):
        for attribute, value in description.attrib.items():
            if attribute in _NAMES:
                found.setdefault(_NAMES[attribute], value)
        for element in description:
            if element.tag in _NAMES:
                # An rdf:Alt/Seq/Bag's first li: no deeper (a search of every descendant, from each of thousands
                # of nested descriptions, was quadratic: 18 s from a 2.4 KB PNG, a review).
                value = element.findtext(f"*/{_RDF}li") or element.text or ""
                if value.strip():
                    found.setdefault(_NAMES[element.tag], value)
    return found


def draw_things(comment: Any) -> Found:
    """Draw Things' request (``exif:UserComment`` JSON with ``c``); empty when the text is not one."""
    data = json_object(comment)
    if data is None or not isinstance(data.get("c"), str):
        return Found()
    found = Found(source="drawthings", prompt=data["c"], seed=data.get("seed"), model=data.get("model"))
    if isinstance(data.get("uc"), str):
        found.negative_prompt = data["uc"]
        found.settings["negative_prompt"] = data["uc"]
    found.settings.update({k: v for k, v in data.items() if k not in ("c", "uc", "seed", "model")})
    if found.seed is not None and parse_seed(found.seed) is None:
        found.settings["seed"] = found.seed
    return found
