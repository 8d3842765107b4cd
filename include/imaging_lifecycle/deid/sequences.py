"""Sequence items as raw bytes: parse an SQ value into dicts of raw elements, and encode them back.

pydicom turns every sequence item into a ``Dataset``, which costs tens of
microseconds per item to build and as much again to write. The engine only
needs each item's elements as (tag, VR, bytes), so it parses SQ values here
into ``{tag: RawDataElement}`` dicts, edits those, and encodes them back into
one defined-length SQ value. Undefined-length values inside items
(encapsulated icon pixel data, nested sequences) keep their undefined length.

Only the element framing is handled here (tags, VRs, lengths, items,
delimiters); values stay opaque bytes.
"""

from __future__ import annotations

from functools import cache
from struct import Struct
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.tag import BaseTag

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
#: explicit-VR VRs with a 2-byte reserved field and a 4-byte length
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


class SequenceError(ValueError):
    """An SQ value is not well-formed (message has offsets only, never content)."""


class SeqNode:
    """A sequence being edited: its items as element dicts, encoded back when the pass is done."""

    __slots__ = ("tag", "vr", "items", "codec")

    def __init__(self, tag: int, vr: str, items: list[dict], codec: Codec):
        self.tag, self.vr, self.items, self.codec = tag, vr, items, codec


class Codec:
    """Framing for one transfer syntax: implicit or explicit VR, little or big endian."""

    def __init__(self, implicit: bool, little: bool):
        self.implicit, self.little = implicit, little
        e = "<" if little else ">"
        self._tag = Struct(f"{e}HH")
        self._tag_len = Struct(f"{e}HHL")
        self._u16 = Struct(f"{e}H")
        self._u32 = Struct(f"{e}L")
        self._explicit_short = Struct(f"{e}HH2sH")
        self._explicit_long = Struct(f"{e}HH2s2xL")

    # -- parsing ---------------------------------------------------------------------

    def items(self, buf: bytes) -> list[dict]:
        """The items of an SQ value (defined or undefined length items; an optional trailing delimiter)."""
        out: list[dict] = []
        pos, n = 0, len(buf)
        unpack = self._tag_len.unpack_from
        while pos + 8 <= n:
            g, e, length = unpack(buf, pos)
            tag = g << 16 | e
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                break
            if tag != ITEM:
                raise SequenceError(f"expected an item tag at offset {pos - 8}")
            if length == UNDEFINED:
                item, pos = self._elements(buf, pos, n, until_delimiter=True)
            else:
                if pos + length > n:
                    raise SequenceError(f"item at offset {pos - 8} runs past the end of its sequence")
                item, _ = self._elements(buf, pos, pos + length, until_delimiter=False)
                pos += length
            out.append(item)
        return out

    def _elements(self, buf: bytes, pos: int, end: int, *, until_delimiter: bool) -> tuple[dict, int]:
        d: dict = {}
        implicit, little = self.implicit, self.little
        tag_unpack = self._tag.unpack_from
        u16, u32 = self._u16.unpack_from, self._u32.unpack_from
        while pos < end:
            if pos + 8 > end:
                raise SequenceError(f"truncated element header at offset {pos}")
            g, e = tag_unpack(buf, pos)
            tag = g << 16 | e
            if tag == ITEM_DELIMITER:
                return d, pos + 8
            if implicit:
                vr = None
                length = u32(buf, pos + 4)[0]
                pos += 8
            else:
                vr = buf[pos + 4 : pos + 6].decode("ascii", "replace")
                if vr in LONG_VRS:
                    length = u32(buf, pos + 8)[0]
                    pos += 12
                else:
                    length = u16(buf, pos + 6)[0]
                    pos += 8
            if length == UNDEFINED:
                start = pos
                pos = self._skip_undefined(buf, pos, end)
                value = buf[start : pos - 8]  # without the sequence delimiter
                if vr is None:
                    vr = _implicit_undefined_vr(tag)
            else:
                if pos + length > end:
                    raise SequenceError(f"element at offset {pos} runs past the end of its item")
                value = buf[pos : pos + length]
                pos += length
            btag = BaseTag(tag)
            d[btag] = RawDataElement(btag, vr, length, value, 0, implicit, little)
        if until_delimiter:
            raise SequenceError("item without its delimiter")
        return d, pos

    def _skip_undefined(self, buf: bytes, pos: int, end: int) -> int:
        """Position just after the sequence delimiter closing an undefined-length value at ``pos``."""
        unpack = self._tag_len.unpack_from
        n = len(buf)
        while pos + 8 <= n:
            g, e, length = unpack(buf, pos)
            tag = g << 16 | e
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                return pos
            if tag != ITEM:
                raise SequenceError(f"expected an item or delimiter at offset {pos - 8}")
            if length == UNDEFINED:
                _, pos = self._elements(buf, pos, n, until_delimiter=True)
            else:
                pos += length
        raise SequenceError("undefined-length value without its sequence delimiter")

    # -- encoding --------------------------------------------------------------------

    def encode_items(self, items: list[dict], encodings: list[str]) -> bytes:
        out = []
        pack = self._tag_len.pack
        for item in items:
            body = self.encode_elements(item, encodings)
            out.append(pack(0xFFFE, 0xE000, len(body)))
            out.append(body)
        return b"".join(out)

    def encode_elements(self, d: dict, encodings: list[str]) -> bytes:
        return b"".join(self._encode(d[tag], encodings) for tag in sorted(d))

    def _encode(self, elem: Any, encodings: list[str]) -> bytes:
        cls = elem.__class__
        if cls is RawDataElement:
            vr, value, undefined = elem.VR, elem.value or b"", elem.length == UNDEFINED
            if elem.is_implicit_VR != self.implicit or elem.is_little_endian != self.little:
                if vr == "SQ" or (vr is None and _implicit_undefined_vr(elem.tag) == "SQ"):
                    src = codec(elem.is_implicit_VR, elem.is_little_endian)
                    value, undefined = self.encode_items(src.items(value), encodings), False
                elif elem.is_little_endian != self.little and vr not in _BYTE_VRS:
                    return self._fallback(elem, encodings)  # numbers need byte swapping: pydicom knows how
        elif cls is SeqNode:
            # A sequence sent as UN keeps its implicit little-endian items; any other is re-framed for this stream.
            vr, undefined = elem.vr, False
            value = (elem.codec if vr == "UN" else self).encode_items(elem.items, encodings)
        elif cls is DataElement and elem.VR == "SQ":
            value = self.encode_items([item._dict for item in elem.value], encodings)
            vr, undefined = "SQ", False
        else:
            return self._fallback(elem, encodings)
        tag = elem.tag
        g, e = tag >> 16, tag & 0xFFFF
        length = UNDEFINED if undefined else len(value)
        if self.implicit:
            head = self._tag_len.pack(g, e, length)
        else:
            if vr is None or len(vr) != 2:
                vr = _explicit_vr(tag)
            if vr in LONG_VRS:
                head = self._explicit_long.pack(g, e, vr.encode("ascii"), length)
            elif length > 0xFFFF:
                raise SequenceError(f"value of ({g:04X},{e:04X}) too long for its VR")
            else:
                head = self._explicit_short.pack(g, e, vr.encode("ascii"), length)
        if undefined:
            return head + value + self._tag_len.pack(0xFFFE, 0xE0DD, 0)
        return head + value

    def _fallback(self, elem: Any, encodings: list[str]) -> bytes:
        from pydicom.dataelem import convert_raw_data_element
        from pydicom.filewriter import write_data_element

        if elem.__class__ is RawDataElement:
            elem = convert_raw_data_element(elem, encoding=encodings)
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = self.little, self.implicit
        write_data_element(fp, elem, encodings)
        return fp.getvalue()


_BYTE_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT", "OB", "UN", "SQ"})  # fmt: skip


def _implicit_undefined_vr(tag: int) -> str:
    """VR of an undefined-length element in implicit VR: a sequence unless it is (encapsulated) pixel data."""
    return "OB" if tag == 0x7FE00010 else "SQ"


def _explicit_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr if len(vr) == 2 else "UN"


@cache
def codec(implicit: bool, little: bool) -> Codec:
    return Codec(bool(implicit), bool(little))
