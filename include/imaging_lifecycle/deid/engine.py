"""The de-identification engine: DICOM PS3.15 Annex E Table E.1-1 applied in one pass over raw elements.

Design, for throughput (the benchmark holds it to at least twice dicognito's
files per second while doing more):

* The table and the policy's options are resolved once, in ``__init__``, into
  a dict ``tag -> (action, what to collect, VR)``; tags the table does not list
  are resolved on first sight and memoised in the same dict.
* The walk goes over ``Dataset._dict`` directly. pydicom keeps every element
  it read as a ``RawDataElement`` (undecoded bytes) until someone touches it;
  the engine removes, empties and keeps elements without ever decoding them,
  and writes replacements as raw bytes too. Only sequences it must descend
  into are parsed. Pixel data is never decoded.
* Identifying strings (names, IDs, dates, ...; see :mod:`.identifiers`) are
  collected as bytes during the same pass; afterwards one regex over the
  retained text elements removes any that remain in free text ("Clean").

What the engine does beyond the bare table, and why:

* PatientID becomes a keyed pseudonym and PatientName the same pseudonym, so
  a patient's studies stay linkable without identity.
* Attributes the table does not list are kept, except: person names (PN)
  get a dummy, dates (DA/DT) are shifted (or emptied without the
  modified-dates option), standard tags unknown to the dictionary and group
  lengths are removed. The table predates many attributes; a name or a date
  is identifying wherever it sits.
* Private elements are removed unless listed in the policy's
  ``safe_private_tags`` (matched by private creator, not block number).
* Free text, per PS3.15 E.3.5 (:mod:`.free_text`): narrative attributes are
  removed unless the policy keeps them; descriptors kept under Clean
  Descriptors keep only vocabulary words; and every retained text value,
  decoded under its own Specific Character Set, is scrubbed of what the
  detector rules (:mod:`.detectors`) find, then encoded back the same way.

Nothing in this module logs or raises with a value from a dataset.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.charset import encode_string
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from imaging_lifecycle.deid import detectors, free_text, identifiers, values
from imaging_lifecycle.deid.burned_in import BurnedInCheck, apply_mask, transfer_syntax
from imaging_lifecycle.deid.reid import ReidEntry, ReidMap
from imaging_lifecycle.deid.sequences import Codec, SeqNode, codec
from imaging_lifecycle.deid.table import (
    OPTION_CODES,
    OPTION_COLUMNS,
    TABLE_EDITION,
    effective_actions,
    repeating_action,
)
from imaging_lifecycle.dicomfile import UnreadableDicom, decode_text, encode_text, quiet_pydicom, read_dataset

if TYPE_CHECKING:  # pragma: no cover
    from imaging_lifecycle.policy import Mask, Policy

# Engine actions (ints: the hot loop compares small ints).
KEEP, KEEP_TEXT, REMOVE, EMPTY, DUMMY, UID, SHIFT, PSEUDONYM, RECURSE, DUMMY_SEQ = range(10)
ACTION_NAMES = ("kept", "kept_text", "removed", "emptied", "dummied", "uids_replaced", "dates_shifted",
                "pseudonymized", "sequences_cleaned", "sequences_dummied")  # fmt: skip
# What to collect from an element before acting on it.
NOTHING, IDENT, NAME, DATE = range(4)

PATIENT_ID = BaseTag(0x00100020)
ISSUER_OF_PATIENT_ID = BaseTag(0x00100021)
PATIENT_NAME = BaseTag(0x00100010)
PATIENT_IDENTITY_REMOVED = BaseTag(0x00120062)
DEIDENTIFICATION_METHOD = BaseTag(0x00120063)
DEIDENTIFICATION_METHOD_CODES = BaseTag(0x00120064)
LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = BaseTag(0x00280303)
SPECIFIC_CHARACTER_SET = 0x00080005
CODE_VALUE_TAGS = (0x00080100, 0x00080119, 0x00080120)  # CodeValue, LongCodeValue, URNCodeValue
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
#: top-level attributes recorded in the re-identification map
REID_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

_UID_CACHE_MAX = 200_000
#: What the engine writes itself, to say what it did: never evidence of a leak.
ENGINE_WRITTEN = frozenset({0x00100010, 0x00100020, 0x00120062, 0x00120063, 0x00120064, 0x00280303})


class DeidError(Exception):
    """An input could not be de-identified; ``reason`` is a machine-readable code, never a value."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"de-identification failed: {reason}")


@dataclass
class DeidResult:
    """The outcome for one object. ``summary()`` is what may be logged, audited or put in XCom."""

    dataset: Dataset = field(repr=False)
    reid: ReidMap = field(repr=False)
    counts: dict[str, int]
    needs_review: bool = False
    review_reason: str | None = None
    burned_in: str | None = None  # why the pixels may carry text, if they may
    masked: bool = False
    output_path: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "status": "needs-review" if self.needs_review else "ok",
            "review_reason": self.review_reason,
            "burned_in": self.burned_in,
            "masked": self.masked,
            "counts": dict(self.counts),
        }


class _Run:
    """Per-object state of one pass."""

    __slots__ = ("counts", "idents", "text", "shift", "encodings", "implicit", "little", "codec", "private_removed")

    def __init__(self, ds: Dataset, shift: int):
        self.counts = [0] * len(ACTION_NAMES)
        self.idents: set[bytes] = set()
        self.text: list[tuple[dict, int]] = []
        self.shift = shift
        cs = ds._character_set
        self.encodings = [cs] if isinstance(cs, str) else list(cs)
        implicit, little = ds.original_encoding
        if implicit is None:  # built in memory: use its transfer syntax, else explicit little endian
            ts = transfer_syntax(ds)
            implicit, little = ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"
        self.implicit = bool(implicit)
        self.little = little is not False
        self.codec = codec(self.implicit, self.little)
        self.private_removed = 0


def _bytes(elem: Any, encodings: list[str]) -> bytes:
    """The value of an element as the bytes it is (or would be) stored as."""
    if elem.__class__ is RawDataElement:
        return elem.value or b""
    v = elem.value
    if v is None:
        return b""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, (list, tuple)) or v.__class__.__name__ == "MultiValue":
        s = "\\".join(str(x) for x in v)
    else:
        s = str(v)
    return encode_string(s, encodings)


class Deidentifier:
    """De-identifies datasets under one policy and one key.

    The key (at least 16 bytes; use ``secretfiles.load_or_create_secret("deid-hmac")``)
    makes UIDs, pseudonyms and date shifts deterministic across batches; whoever
    holds it can re-derive them, so it is a secret of the highest tier.
    """

    def __init__(self, policy: Policy, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError("the de-identification key must be at least 16 bytes")
        self.policy = policy
        self._key = bytes(key)
        self.options = policy.deid_options
        self.actions = effective_actions(self.options)
        ident_tags = identifiers.identifying_tags(self.actions)
        self._codes: dict[int, tuple[int, int, str | None]] = {}
        for tag, action in self.actions.items():
            vr = self._vr(tag)
            collect = NOTHING
            if vr in identifiers.DATE_VRS:
                collect = DATE
            elif tag in ident_tags or (vr == "PN" and action not in ("K", "C")):
                collect = NAME if vr == "PN" else IDENT
            self._codes[tag] = (self._engine_action(action, vr), collect, vr)
        self._codes[PATIENT_ID] = (PSEUDONYM, self._codes[PATIENT_ID][1], "LO")
        kept = set(self.options.keep_narrative)
        for kw in free_text.NARRATIVE:
            tag = tag_for_keyword(kw)
            if kw not in kept:
                self._codes[tag] = (REMOVE, NOTHING, None)
            elif self._codes.get(tag, (KEEP_TEXT,))[0] not in (REMOVE, EMPTY):
                self._codes[tag] = (KEEP_TEXT, NOTHING, self._vr(tag))
        #: descriptors whose value may keep only vocabulary words (those Annex E cleans, under Clean Descriptors)
        self._descriptors = frozenset(
            t for t in map(tag_for_keyword, free_text.DESCRIPTORS) if self._codes.get(t, (None,))[0] == KEEP_TEXT)
        for tag in [t for t in self._codes if t >> 16 == 0]:
            self._codes[tag] = (REMOVE, NOTHING, None)  # command elements never belong in a stored object
        self._safe = {(t.group, t.creator.strip(), t.element) for t in policy.safe_private_tags}
        self._burned_in = BurnedInCheck(policy)
        self._uid_cache: dict[str, str] = {}
        self._method = self._method_values()

    # -- resolution ---------------------------------------------------------------

    @staticmethod
    def _vr(tag: int) -> str | None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
        return vr if len(vr) == 2 else vr[:2]  # "US or SS" -> US: only used for replacements

    def _engine_action(self, action: str, vr: str | None) -> int:
        if vr == "SQ":
            return {"X": REMOVE, "Z": EMPTY, "D": DUMMY_SEQ}.get(action, RECURSE)
        if action == "X":
            return REMOVE
        if action == "Z":
            return EMPTY
        if action == "U" or (action == "D" and vr == "UI"):
            return UID  # a dummy UID is a derived one: unique, and the same across batches
        if action == "D":
            return DUMMY
        if action == "C":
            if vr in identifiers.DATE_VRS:
                return SHIFT
            if vr in identifiers.TEXT_VRS:
                return KEEP_TEXT
            if vr == "TM":
                return KEEP  # times are kept when dates are shifted: alone they identify no one
            return REMOVE  # binary values cannot be cleaned
        return KEEP_TEXT if vr in identifiers.TEXT_VRS else KEEP

    def _resolve(self, tag: int) -> tuple[int, int, str | None]:
        """Action for a tag the table does not list (memoised)."""
        rep = repeating_action(tag, self.options)
        if rep is not None:
            entry = (self._engine_action(rep, None), NOTHING, None)
        elif not tag & 0xFFFF or not tag >> 16:
            entry = (REMOVE, NOTHING, None)  # group lengths go stale; command elements do not belong
        else:
            vr = self._vr(tag)
            if vr is None:
                entry = (REMOVE, NOTHING, None)  # not a standard attribute we know: cannot judge it
            elif vr == "SQ":
                entry = (RECURSE, NOTHING, vr)
            elif vr in identifiers.DATE_VRS:
                entry = (SHIFT if self.options.retain_longitudinal_modified_dates else EMPTY, DATE, vr)
            elif vr == "PN":
                entry = (DUMMY, NAME, vr)
            elif vr in identifiers.TEXT_VRS:
                entry = (KEEP_TEXT, NOTHING, vr)
            else:
                entry = (KEEP, NOTHING, vr)
        self._codes[tag] = entry
        return entry

    def _method_values(self) -> tuple[list[str], list[tuple[str, str]]]:
        chosen = ["basic"] + [opt for opt in OPTION_COLUMNS if getattr(self.options, opt)]
        if self._safe:
            chosen.append("retain_safe_private")
        text = [f"imaging-lifecycle PS3.15 E.1-1 {TABLE_EDITION}", f"policy {self.policy.fingerprint[:16]}"]
        return text, [OPTION_CODES[c] for c in chosen]

    # -- derived values -------------------------------------------------------------

    def uid(self, original: str) -> str:
        """The replacement for a UID; the same for the same key in every batch."""
        new = self._uid_cache.get(original)
        if new is None:
            if len(self._uid_cache) >= _UID_CACHE_MAX:
                self._uid_cache.clear()
            new = self._uid_cache[original] = values.derive_uid(self._key, original)
        return new

    def _raw(self, run: _Run, tag: int, vr: str | None, value: bytes) -> RawDataElement:
        return RawDataElement(tag, vr, len(value), value, 0, run.implicit, run.little, True)

    # -- the pass -------------------------------------------------------------------------

    def _collect(self, run: _Run, elem: Any, kind: int) -> None:
        raw = _bytes(elem, run.encodings)
        if not raw:
            return
        if kind == DATE:
            run.idents.update(identifiers.date_parts(raw))
        else:
            run.idents.update(identifiers.split_values(raw, person_name=kind == NAME))

    def _items(self, elem: Any, run: _Run) -> tuple[list[dict], Codec, str]:
        """The items of a sequence element as element dicts (parsed from bytes when still raw)."""
        cls = elem.__class__
        if cls is RawDataElement:
            if elem.VR == "UN":  # a sequence sent as UN is always implicit VR little endian inside
                c = codec(True, True)
                return c.items(elem.value or b""), c, "UN"
            c = codec(elem.is_implicit_VR, elem.is_little_endian)
            return c.items(elem.value or b""), c, "SQ"
        if cls is SeqNode:
            return elem.items, elem.codec, elem.vr
        return [item._dict for item in elem.value or ()], run.codec, "SQ"

    def _code_item(self, c: Codec, value: bytes, scheme: bytes, meaning: bytes) -> dict:
        item = {}
        for tag, vr, v in ((0x00080100, "SH", value), (0x00080102, "SH", scheme), (0x00080104, "LO", meaning)):
            btag = BaseTag(tag)
            v = values.pad(v)
            item[btag] = RawDataElement(btag, vr, len(v), v, 0, c.implicit, c.little, True)
        return item

    def _walk(self, d: dict, run: _Run) -> None:
        codes = self._codes
        counts = run.counts
        private = None
        for tag, elem in list(d.items()):
            if tag & 0x10000:  # odd group: private
                if private is None:
                    private = []
                private.append(tag)
                continue
            entry = codes.get(tag + 0) or self._resolve(tag + 0)  # +0: an int key; BaseTag.__eq__ is slow
            action, collect, vr = entry
            if collect:
                self._collect(run, elem, collect)
            counts[action] += 1
            if action == KEEP:
                pass
            elif action == KEEP_TEXT:
                run.text.append((d, tag))
            elif action == REMOVE:
                del d[tag]
            elif action == EMPTY:
                d[tag] = self._raw(run, tag, vr or elem.VR, b"")
            elif action == DUMMY:
                vr = vr or elem.VR
                d[tag] = self._raw(run, tag, vr, values.dummy_for(vr))
            elif action == UID:
                raw = _bytes(elem, run.encodings)
                new = b"\\".join(
                    self.uid(p.decode("ascii", "surrogateescape")).encode("ascii")
                    for p in (x.strip(b" \x00") for x in raw.split(b"\\"))
                    if p
                )
                d[tag] = self._raw(run, tag, "UI", values.pad(new, b"\x00"))
            elif action == SHIFT:
                vr = vr or elem.VR
                new = values.shift_values(_bytes(elem, run.encodings), run.shift, datetime=vr == "DT")
                d[tag] = self._raw(run, tag, vr, new)
            elif action == PSEUDONYM:
                issuer = d.get(ISSUER_OF_PATIENT_ID)
                key = (_bytes(issuer, run.encodings).strip() if issuer is not None else b"") + b"\x00"
                pid = _bytes(elem, run.encodings).strip(b" \x00")
                new = values.patient_pseudonym(self._key, key + pid).encode("ascii") if pid else b""
                d[tag] = self._raw(run, tag, "LO", values.pad(new))
            elif action == RECURSE:
                items, c, sq_vr = self._items(elem, run)
                for item in items:
                    self._walk(item, run)
                d[tag] = SeqNode(tag, sq_vr, items, c)
            else:  # DUMMY_SEQ
                items, c, sq_vr = self._items(elem, run)
                if items and any(t in items[0] for t in CODE_VALUE_TAGS):
                    items = [self._code_item(c, b"ANONYMIZED", b"99IL", b"de-identified")]
                else:
                    for item in items:
                        self._walk(item, run)
                d[tag] = SeqNode(tag, sq_vr, items, c)
        if private is not None:
            self._private(d, private, run)

    def _private(self, d: dict, tags: list[int], run: _Run) -> None:
        if not self._safe:
            for tag in tags:
                del d[tag]
            run.private_removed += len(tags)
            return
        creators, kept_blocks = {}, set()
        for tag in tags:
            lo = tag & 0xFFFF
            if 0x10 <= lo <= 0xFF:
                elem = d[tag]
                creators[tag + 0] = _bytes(elem, run.encodings).strip(b" \x00").decode("latin-1")
                continue
            if lo >= 0x1000:
                ctag = (tag + 0) & 0xFFFF0000 | (lo >> 8)
                creator = creators.get(ctag, "")
                if ((tag >> 16) + 0, creator, lo & 0xFF) in self._safe:
                    kept_blocks.add(ctag)
                    elem = d[tag]
                    if elem.VR == "SQ":
                        items, c, sq_vr = self._items(elem, run)
                        for item in items:
                            self._walk(item, run)
                        d[tag] = SeqNode(tag, sq_vr, items, c)
                    else:
                        run.text.append((d, tag))  # kept, but still hunted for identifiers
                    continue
            del d[tag]
            run.private_removed += 1
        for tag in tags:
            if tag + 0 in creators and tag + 0 not in kept_blocks:
                del d[tag]
                run.private_removed += 1

    def _encode_sequences(self, d: dict, run: _Run) -> None:
        """Turn the top level's edited sequences back into raw SQ elements (nested ones encode with them)."""
        for tag, elem in list(d.items()):
            if elem.__class__ is SeqNode:
                c = elem.codec if elem.vr == "UN" else run.codec
                value = c.encode_items(elem.items, run.encodings)
                d[tag] = RawDataElement(tag, elem.vr, len(value), value, 0, c.implicit, c.little, True)

    def _scrub(self, run: _Run) -> int:
        """Clean every retained text element; returns how many changed.

        1. The value is decoded under the object's character set; a descriptor
           keeps only vocabulary words; what the detector rules find is removed;
           a changed value is encoded back under the same character set.
        2. Identifying strings collected from the header are removed (as bytes).
        """
        rx = identifiers.pattern(run.idents)
        changed = 0
        for d, tag in run.text:
            elem = d.get(tag)
            if elem is None:
                continue
            raw = _bytes(elem, run.encodings)
            new = self._clean_text(raw, tag + 0, run) if raw else raw  # vocabulary first: it sees whole tokens
            if rx is not None and new and rx.search(new) is not None:
                new = rx.sub(b"", new).strip(b" \x00")
            if new == raw:
                continue
            vr = elem.VR or self._vr(tag)
            d[tag] = self._raw(run, tag, vr, values.pad(new))
            changed += 1
        return changed

    def _clean_text(self, raw: bytes, tag: int, run: _Run) -> bytes:
        """Vocabulary (for descriptors) and detector rules over the decoded value; the bytes back."""
        descriptor = tag in self._descriptors
        if not descriptor and not detectors.might_hold(raw):
            return raw  # the fast path: nothing any rule could match
        parts = decode_text(raw, run.encodings).rstrip(" \x00").split("\\")
        cleaned = [detectors.scrub(free_text.clean_descriptor(p) if descriptor else p)[0] for p in parts]
        if cleaned == parts:
            return raw
        return encode_text("\\".join(cleaned).strip(), run.encodings)

    # -- public API -------------------------------------------------------------------------

    def deidentify(self, ds: Dataset, *, source: str | None = None, in_place: bool = True,
                   reviewed_mask: Mask | None = None, reviewed: bool = False) -> DeidResult:
        """De-identify ``ds`` (in place unless ``in_place=False``) and say what was done.

        ``reviewed=True`` is a reviewer's decision on a burned-in candidate: the
        pixels are released as they are, or with ``reviewed_mask`` blanked
        (recorded as pixel cleaning), instead of holding the image for review.

        Raises :class:`DeidError` with a reason code if the dataset cannot be
        processed; the original exception is not chained, because pydicom's
        messages can quote values.
        """
        if not in_place:
            ds = copy.deepcopy(ds)
        try:
            with quiet_pydicom():
                return self._deidentify(ds, source, reviewed_mask if reviewed else None, reviewed)
        except DeidError:
            raise
        except Exception as e:
            raise DeidError(f"deid-failed:{type(e).__name__}") from None

    def _patient_key(self, ds: Dataset, encodings: list[str]) -> bytes:
        d = ds._dict
        pid = _bytes(d[PATIENT_ID], encodings).strip(b" \x00") if PATIENT_ID in d else b""
        if pid:
            issuer = _bytes(d[ISSUER_OF_PATIENT_ID], encodings).strip() if ISSUER_OF_PATIENT_ID in d else b""
            return issuer + b"\x00" + pid
        # No PatientID: fall back to name + birth date, then to the study (consistent per study only).
        for tags in ((PATIENT_NAME, 0x00100030), (0x0020000D,), (0x00080018,)):
            parts = [_bytes(d[t], encodings).strip(b" \x00") for t in tags if t in d]
            if any(parts):
                return b"\x01" + b"\x00".join(parts)
        return b"\x02" + os.urandom(16)  # nothing to link by: a one-off patient

    def _deidentify(self, ds: Dataset, source: str | None, reviewed_mask: Mask | None = None,
                    reviewed: bool = False) -> DeidResult:
        probe = _Run(ds, 0)
        patient_key = self._patient_key(ds, probe.encodings)
        pseudonym = values.patient_pseudonym(self._key, patient_key)
        shift = values.date_shift_days(self._key, patient_key, self.options.date_shift_max_days)
        run = _Run(ds, shift)
        reid = self._reid_entries(ds, run.encodings, pseudonym, shift)

        burned_in = self._burned_in.assess(ds, source=source)
        masked, review = False, None
        if reviewed:  # a person looked at these pixels and decided
            if reviewed_mask is not None:
                failure = apply_mask(ds, reviewed_mask)
                if failure is not None:
                    raise DeidError(failure)
                masked = True
        elif burned_in is not None:
            mask = self._burned_in.mask_for(ds)
            if mask is None:
                review = f"{burned_in}:no-mask"
            else:
                failure = apply_mask(ds, mask)
                if failure is None:
                    masked = True
                else:
                    review = f"{burned_in}:{failure}"

        self._walk(ds._dict, run)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and MEDIA_STORAGE_SOP_INSTANCE_UID in meta._dict:
            old = _bytes(meta._dict[MEDIA_STORAGE_SOP_INSTANCE_UID], run.encodings).strip(b" \x00")
            if old:
                meta.MediaStorageSOPInstanceUID = self.uid(old.decode("ascii", "surrogateescape"))
                run.counts[UID] += 1
        scrubbed = self._scrub(run)
        self._record(ds, run, pseudonym, masked)
        self._encode_sequences(ds._dict, run)

        counts = {name: n for name, n in zip(ACTION_NAMES, run.counts, strict=True) if n}
        counts["private_removed"] = run.private_removed
        counts["scrubbed"] = scrubbed
        return DeidResult(
            dataset=ds,
            reid=reid,
            counts=counts,
            needs_review=review is not None,
            review_reason=review,
            burned_in=burned_in,
            masked=masked,
        )

    def _reid_entries(self, ds: Dataset, encodings: list[str], pseudonym: str, shift: int) -> ReidMap:
        from pydicom.charset import decode_bytes

        d = ds._dict

        def text(keyword: str) -> str:
            elem = d.get(tag_for_keyword(keyword))
            if elem is None:
                return ""
            return decode_bytes(_bytes(elem, encodings), encodings, set()).strip(" \x00")

        entries = [
            ReidEntry("PatientID", pseudonym, text("PatientID")),
            ReidEntry("PatientName", pseudonym, text("PatientName")),
            ReidEntry("IssuerOfPatientID", pseudonym, text("IssuerOfPatientID")),
            ReidEntry("PatientBirthDate", pseudonym, text("PatientBirthDate")),
            ReidEntry("DateShiftDays", pseudonym, str(shift)),
        ]
        study = ""
        for kind in REID_UIDS:
            original = text(kind)
            new = self.uid(original) if original else ""
            study = study or new
            entries.append(ReidEntry(kind, new, original))
        entries.append(ReidEntry("AccessionNumber", study, text("AccessionNumber")))
        return ReidMap(entries)

    def _record(self, ds: Dataset, run: _Run, pseudonym: str, masked: bool) -> None:
        """Pseudonymous patient, and what was done (PS3.15 E.1.1 and CID 7050)."""
        d = ds._dict
        p = values.pad(pseudonym.encode("ascii"))
        d[PATIENT_ID] = self._raw(run, PATIENT_ID, "LO", p)
        d[PATIENT_NAME] = self._raw(run, PATIENT_NAME, "PN", p)
        d[PATIENT_IDENTITY_REMOVED] = self._raw(run, PATIENT_IDENTITY_REMOVED, "CS", b"YES ")
        text, codes = self._method
        method = values.pad("\\".join(text).encode("ascii"))
        d[DEIDENTIFICATION_METHOD] = self._raw(run, DEIDENTIFICATION_METHOD, "LO", method)
        if masked:
            codes = codes + [OPTION_CODES["clean_pixel_data"]]
        items = [self._code_item(run.codec, v.encode(), b"DCM", m.encode()) for v, m in codes]
        d[DEIDENTIFICATION_METHOD_CODES] = SeqNode(DEIDENTIFICATION_METHOD_CODES, "SQ", items, run.codec)
        temporal = b"MODIFIED" if self.options.retain_longitudinal_modified_dates else b"REMOVED "
        tag = LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED
        d[tag] = self._raw(run, tag, "CS", temporal)

    # -- files --------------------------------------------------------------------------------

    def deidentify_path(self, src: str | Path, dst: str | Path, *, source: str | None = None) -> DeidResult:
        """Read ``src``, de-identify it and write the result.

        ``dst`` is a file path, or an existing directory in which the file is
        named after its new SOP Instance UID (input names can hold identity).
        Nothing is written when de-identification fails.
        """
        try:
            with quiet_pydicom():
                ds = read_dataset(src)
        except UnreadableDicom as e:
            raise DeidError(f"unreadable:{e.reason}") from None
        result = self.deidentify(ds, source=source)
        dst = Path(dst)
        if dst.is_dir():
            dst = dst / output_name(result.dataset)
        write_dataset(result.dataset, dst)
        result.output_path = dst
        return result


def output_name(ds: Dataset) -> str:
    """File name for a de-identified object: its new SOP Instance UID."""
    uid = str(ds.get("SOPInstanceUID") or "").strip()
    return f"{uid}.dcm" if uid else f"object-{os.urandom(8).hex()}.dcm"


def write_dataset(ds: Dataset, path: str | Path) -> None:
    """Write a Part 10 file atomically (temp file + rename), adding file meta when the input had none."""
    from pydicom.dataset import FileMetaDataset

    path = Path(path)
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = transfer_syntax(ds)
    # A dataset without SOP Class/Instance cannot be a conformant Part 10 file; it is written as it came.
    conformant = bool(ds.get("SOPClassUID")) and bool(ds.get("SOPInstanceUID"))
    if conformant:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with quiet_pydicom():
            ds.save_as(tmp, enforce_file_format=conformant)
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise DeidError(f"write-failed:{type(e).__name__}") from None
