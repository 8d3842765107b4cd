"""DICOM PS3.15 Annex E Table E.1-1 as data, and the action each attribute gets under chosen options.

The table is loaded from the JSON beside this module (edition
:data:`TABLE_EDITION`, from innolitics/dicom-standard; see README.md), not
written out by hand, so every one of its attributes is covered and a newer
edition is a file swap.

Action codes are the standard's: D (dummy), Z (zero length), X (remove),
K (keep), C (clean), U (replace UID), and combined codes that leave the
choice to IOD conformance. Without per-IOD attribute types we resolve a
combined code to the choice that keeps the attribute present but empty or
dummy (Z or D), which is conformant for every attribute type; for sequences
the combinations resolve to an empty sequence (Z) or removal (X/D -> X),
because a "dummy" sequence has no defined content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from imaging_lifecycle.policy import DeidOptions

TABLE_EDITION = "2024b"
TABLE_SOURCE = "innolitics/dicom-standard"
TABLE_FILE = "ps3.15-table-e.1-1.json"
TABLE_ATTRIBUTE_COUNT = 621

#: policy option -> the table's column for it
OPTION_COLUMNS: dict[str, str] = {
    "retain_longitudinal_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
}
#: option -> DICOM CID 7050 code written into DeidentificationMethodCodeSequence
OPTION_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

#: combined code -> resolution for ordinary attributes, and for sequences
COMBINED: dict[str, tuple[str, str]] = {
    # code: (non-sequence, sequence)
    "X": ("X", "X"),
    "Z": ("Z", "Z"),
    "D": ("D", "D"),
    "K": ("K", "K"),
    "C": ("C", "C"),
    "U": ("U", "U"),
    "X/Z": ("Z", "Z"),
    "X/D": ("D", "X"),
    "Z/D": ("D", "Z"),
    "X/Z/D": ("D", "Z"),
    "X/Z/U*": ("U", "K"),  # keep the sequence, replace the UIDs inside (U* applies within)
}

_TAG = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")


@dataclass(frozen=True)
class Attribute:
    """One row of Table E.1-1."""

    name: str
    tag_text: str
    basic: str
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> int | None:
        """The tag as an int, or None for the repeating-group and private rows."""
        m = _TAG.match(self.tag_text)
        return int(m.group(1) + m.group(2), 16) if m else None

    def code(self, options: DeidOptions | None) -> str:
        """The standard's action code under ``options`` (K beats C when two options apply)."""
        chosen = [
            self.options[col]
            for opt, col in OPTION_COLUMNS.items()
            if options is not None and getattr(options, opt) and col in self.options
        ]
        if "K" in chosen:
            return "K"
        if "C" in chosen:
            return "C"
        return self.basic


@dataclass(frozen=True)
class AnnexETable:
    attributes: tuple[Attribute, ...]
    edition: str = TABLE_EDITION

    @property
    def by_tag(self) -> dict[int, Attribute]:
        return {a.tag: a for a in self.attributes if a.tag is not None}

    def special(self, tag_text: str) -> Attribute:
        for a in self.attributes:
            if a.tag_text == tag_text:
                return a
        raise KeyError(tag_text)

    @property
    def curves(self) -> Attribute:
        return self.special("(50XX,XXXX)")

    @property
    def overlay_data(self) -> Attribute:
        return self.special("(60XX,3000)")

    @property
    def overlay_comments(self) -> Attribute:
        return self.special("(60XX,4000)")

    @property
    def private(self) -> Attribute:
        return self.special("(GGGG,EEEE) WHERE GGGG IS ODD")


@cache
def load_table() -> AnnexETable:
    """Table E.1-1 from the packaged JSON; checked to be the whole table."""
    raw = json.loads(resources.files("imaging_lifecycle.deid").joinpath(TABLE_FILE).read_text("utf-8"))
    attrs = []
    for row in raw:
        opts = {k: v for k, v in row.items() if k.endswith("Opt")}
        if row["basicProfile"] not in COMBINED:
            raise ValueError(f"Table E.1-1 row {row['tag']}: unknown action code {row['basicProfile']!r}")
        for col, code in opts.items():
            if code not in ("K", "C"):
                raise ValueError(f"Table E.1-1 row {row['tag']}: unknown option action {code!r} in {col}")
        attrs.append(Attribute(row["name"], row["tag"].upper(), row["basicProfile"], opts))
    if len(attrs) != TABLE_ATTRIBUTE_COUNT:
        raise ValueError(f"Table E.1-1 has {len(attrs)} attributes, expected {TABLE_ATTRIBUTE_COUNT}")
    return AnnexETable(tuple(attrs))


def resolve(code: str, vr: str | None) -> str:
    """A single action (X, Z, D, K, C, U) for ``code`` on an attribute of ``vr``."""
    plain, seq = COMBINED[code]
    return seq if vr == "SQ" else plain


def effective_actions(options: DeidOptions | None) -> dict[int, str]:
    """tag -> single action code under ``options``, for every plain-tag row of the table."""
    from pydicom.datadict import dictionary_VR

    out = {}
    for attr in load_table().attributes:
        tag = attr.tag
        if tag is None:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = None
        out[tag] = resolve(attr.code(options), vr)
    return out


def repeating_action(tag: int, options: DeidOptions | None) -> str | None:
    """The action for curve (50xx,xxxx) and overlay data/comment (60xx,3000/4000) elements, else None."""
    group, elem = tag >> 16, tag & 0xFFFF
    table = load_table()
    if 0x5000 <= group <= 0x50FF and not group & 1:
        return resolve(table.curves.code(options), None)
    if 0x6000 <= group <= 0x60FF and not group & 1:
        if elem == 0x3000:
            return resolve(table.overlay_data.code(options), None)
        if elem == 0x4000:
            return resolve(table.overlay_comments.code(options), None)
    return None
