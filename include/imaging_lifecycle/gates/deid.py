"""The gate after de-identification: a Great Expectations suite over one row per de-identified file.

Each row is built by comparing the original with its de-identified output,
element by element along the same path (sequence items are compared by
position; the engine never reorders them). A row holds only an opaque object
id, counts and flags -- never a value -- so the table itself can be logged.

The suite fails the batch if, in any file:

* an attribute whose Annex E action (under the policy's options) is X, Z or D
  still holds its original value (``xzd_original_values``);
* an original identifying string -- name, ID, accession number, date,
  address, device serial number, institution (see
  :mod:`imaging_lifecycle.deid.identifiers`) -- occurs in any text element of
  the output, nested sequences and private elements included
  (``identifying_strings``); dates are hunted in free text, while date
  elements are compared with their original (``dates_unchanged``);
* any UID of the original that Annex E replaces (action U) appears anywhere
  in the output (``uids_unchanged``);
* pixel data differs from the original although no pixel cleaning was
  recorded (``pixel_changed_unexpectedly``);
* a private element not on the policy's safe list survived (``unsafe_private``);
* a detector rule (:mod:`imaging_lifecycle.deid.detectors`: resident IDs,
  phone numbers, e-mail, dates, ages over 89, addresses, institutions, names
  after cue words) finds an identifier in any text the output kept, whether
  or not the original header held it elsewhere (``identifiers_detected``);
* PatientIdentityRemoved=YES and the Basic Profile code are not recorded
  (``identity_removed_recorded``).

This walk uses pydicom's ordinary API on purpose: it is a second,
independent reading of what the engine did.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaging_lifecycle.deid import detectors, identifiers
from imaging_lifecycle.deid.engine import ENGINE_WRITTEN
from imaging_lifecycle.deid.table import effective_actions, repeating_action
from imaging_lifecycle.deid.values import dummy_for
from imaging_lifecycle.gates import Expectation, GateResult, enforce, run_gate

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from imaging_lifecycle.policy import Policy

GATE_NAME = "deid"
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
CLEAN_PIXEL_CODE = "113101"
BASIC_PROFILE_CODE = "113100"

COLUMNS = [
    "object",
    "xzd_original_values",
    "identifying_strings",
    "dates_unchanged",
    "uids_unchanged",
    "unsafe_private",
    "identifiers_detected",
    "pixel_changed_unexpectedly",
    "identity_removed_recorded",
]


def _zero(column: str) -> Expectation:
    return Expectation("ExpectColumnValuesToBeInSet", {"column": column, "value_set": [0]})


SUITE: tuple[Expectation, ...] = (
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "object"}),
    _zero("xzd_original_values"),
    _zero("identifying_strings"),
    _zero("dates_unchanged"),
    _zero("uids_unchanged"),
    _zero("unsafe_private"),
    _zero("identifiers_detected"),
    Expectation("ExpectColumnValuesToBeInSet", {"column": "pixel_changed_unexpectedly", "value_set": [False]}),
    Expectation("ExpectColumnValuesToBeInSet", {"column": "identity_removed_recorded", "value_set": [True]}),
)


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).encode("utf-8", "surrogateescape")
    return str(value).encode("utf-8", "surrogateescape")


def _load(obj: Dataset | str | Path) -> Dataset:
    if isinstance(obj, (str, Path)):
        from imaging_lifecycle.dicomfile import read_dataset

        return read_dataset(obj)
    return obj


class _Checker:
    def __init__(self, policy: Policy):
        self.options = policy.deid_options
        self.actions = effective_actions(self.options)
        self.ident_tags = identifiers.identifying_tags(self.actions)
        self.safe = {(t.group, t.creator.strip(), t.element) for t in policy.safe_private_tags}

    def action(self, tag: int) -> str | None:
        return self.actions.get(tag) or repeating_action(tag, self.options)

    # -- what the original holds ----------------------------------------------------------

    def originals(self, ds: Dataset) -> tuple[set[bytes], set[bytes], set[str]]:
        """(identifying strings, dates, UIDs Annex E replaces) of the original, at any depth."""
        strings: set[bytes] = set()
        dates: set[bytes] = set()
        uids: set[str] = set()
        for elem in ds.iterall():
            tag, vr = int(elem.tag), elem.VR
            if vr in identifiers.DATE_VRS:
                dates.update(identifiers.date_parts(_as_bytes(elem.value)))
            elif tag in self.ident_tags or (vr == "PN" and self.action(tag) not in ("K", "C")):
                strings.update(identifiers.split_values(_as_bytes(elem.value), person_name=vr == "PN"))
            elif vr == "UI" and self.action(tag) == "U":
                # A value without a dot ("0", as some test objects carry) is no UID and identifies nothing.
                uids.update(v.strip() for v in _as_bytes(elem.value).decode("ascii", "replace").split("\\") if "." in v)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            uids.add(str(meta.MediaStorageSOPInstanceUID).strip())
        return strings, dates, uids

    # -- the row ---------------------------------------------------------------------------

    def row(self, object_id: str, original: Dataset, output: Dataset) -> dict[str, Any]:
        strings, dates, uids = self.originals(original)
        text_rx = identifiers.pattern(strings | dates)
        counts = {"xzd": 0, "strings": 0, "dates": 0, "uids": 0, "private": 0, "detected": 0}
        self._compare(original, output, text_rx, uids, counts)
        meta = getattr(output, "file_meta", None)
        if meta is not None and str(meta.get("MediaStorageSOPInstanceUID", "")).strip() in uids:
            counts["uids"] += 1
        codes = {str(item.get("CodeValue", "")) for item in output.get("DeidentificationMethodCodeSequence") or ()}
        return {
            "object": object_id,
            "xzd_original_values": counts["xzd"],
            "identifying_strings": counts["strings"],
            "dates_unchanged": counts["dates"],
            "uids_unchanged": counts["uids"],
            "unsafe_private": counts["private"],
            "identifiers_detected": counts["detected"],
            "pixel_changed_unexpectedly": self._pixels_changed(original, output) and CLEAN_PIXEL_CODE not in codes,
            "identity_removed_recorded": str(output.get("PatientIdentityRemoved", "")).upper() == "YES"
            and BASIC_PROFILE_CODE in codes,
        }

    def _compare(self, original: Dataset | None, output: Dataset, rx, uids: set[str], counts: dict) -> None:
        creators: dict[int, str] = {}
        for elem in output:
            tag, vr = int(elem.tag), elem.VR
            orig = original.get(elem.tag) if original is not None else None
            if tag >> 16 & 1:
                lo = tag & 0xFFFF
                if 0x10 <= lo <= 0xFF:
                    creators[tag] = str(elem.value or "").strip()
                else:
                    creator = creators.get((tag & 0xFFFF0000) | (lo >> 8), "")
                    if ((tag >> 16), creator, lo & 0xFF) not in self.safe:
                        counts["private"] += 1
            if vr == "SQ":
                orig_items = orig.value if orig is not None and orig.VR == "SQ" else []
                for i, item in enumerate(elem.value or ()):
                    self._compare(orig_items[i] if i < len(orig_items) else None, item, rx, uids, counts)
                continue
            value = _as_bytes(elem.value).strip(b" \x00")
            if (value and value == dummy_for(vr).strip(b" \x00")) or tag in ENGINE_WRITTEN:
                continue  # the engine's own values: even where the original held the same text, they tell nothing
            if vr in identifiers.TEXT_VRS and detectors.might_hold(value) \
                    and detectors.find(value.decode("utf-8", "replace")):
                counts["detected"] += 1
            original_value = _as_bytes(orig.value).strip(b" \x00") if orig is not None else b""
            if original_value and value == original_value and self.action(tag) in ("X", "Z", "D"):
                counts["xzd"] += 1
            if vr in identifiers.DATE_VRS:
                if original_value and value == original_value:
                    counts["dates"] += 1
            elif vr == "UI":
                if any(v.strip() in uids for v in value.decode("ascii", "replace").split("\\")):
                    counts["uids"] += 1
            elif rx is not None and (vr in identifiers.TEXT_VRS or (tag >> 16 & 1 and vr in ("UN", "OB", None))):
                if rx.search(value):
                    counts["strings"] += 1

    @staticmethod
    def _pixels_changed(original: Dataset, output: Dataset) -> bool:
        for tag in PIXEL_TAGS:
            if tag in original:
                if tag not in output or _as_bytes(original[tag].value) != _as_bytes(output[tag].value):
                    return True
        return False


def build_rows(pairs: Iterable[tuple], policy: Policy) -> list[dict[str, Any]]:
    """One row per pair. A pair is ``(original, output)`` or ``(object_id, original, output)``;
    originals and outputs are datasets or file paths. Without an id, the row is numbered."""
    from imaging_lifecycle.dicomfile import quiet_pydicom
    checker = _Checker(policy)
    rows = []
    with quiet_pydicom():
        for i, pair in enumerate(pairs):
            object_id, original, output = pair if len(pair) == 3 else (str(i), *pair)
            rows.append(checker.row(str(object_id), _load(original), _load(output)))
    return rows


def check(pairs: Iterable[tuple], policy: Policy) -> GateResult:
    """Run the de-identification suite over ``pairs``, per object (``result.failed``): names and counts only."""
    return run_gate(GATE_NAME, build_rows(pairs, policy), SUITE, columns=COLUMNS, key="object")


def check_and_enforce(pairs: Iterable[tuple], policy: Policy) -> GateResult:
    """:func:`check`, raising :class:`~imaging_lifecycle.gates.GateFailed` if the batch fails."""
    return enforce(check(pairs, policy))
