"""Classification: which sensitivity tier an object belongs to, and which rule said so.

Rules come from the policy (``classification.rules``), are tried in order and
the first match decides, so a reader of the policy can predict the outcome.
The classifier fails closed: an object that cannot be read, whose headers
cannot be evaluated, or that no rule matches gets the policy's highest tier,
with a ``fail-closed:*`` rule id that says which of those happened.

The same condition matcher is used by the de-identification engine for the
policy's burned-in-text rules, so both read one vocabulary of conditions.

Nothing here logs or returns attribute values: a :class:`Classification` is
a tier and a rule id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaging_lifecycle.dicomfile import UnreadableDicom, quiet_pydicom, read_header

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from imaging_lifecycle.policy import Match, Policy

FAIL_UNREADABLE = "fail-closed:unreadable"
FAIL_MALFORMED = "fail-closed:malformed"
FAIL_NO_MATCH = "fail-closed:no-match"

#: sequences whose items name the procedure (CodeValue + CodingSchemeDesignator)
PROCEDURE_CODE_SEQUENCES = (
    0x00081032,  # ProcedureCodeSequence
    0x00321064,  # RequestedProcedureCodeSequence
    0x00400260,  # PerformedProtocolCodeSequence
)
#: where keywords are looked for
KEYWORD_FIELDS = ("StudyDescription", "ProtocolName")
#: dates that stand for "when the images were made", for an age from the birth date
STUDY_DATE_FIELDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
#: PatientAge unit -> years
AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


@dataclass(frozen=True)
class Classification:
    tier: int
    rule_id: str

    @property
    def fail_closed(self) -> bool:
        return self.rule_id.startswith("fail-closed")

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "rule": self.rule_id}


# ---------------------------------------------------------------------------
# Facts: the few attributes conditions look at, extracted once per object.
# ---------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword)
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def _dicom_date(value: str) -> date | None:
    value = value.strip()
    if len(value) >= 8 and value[:8].isdigit():
        try:
            return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            return None
    return None


def patient_age_years(ds: Dataset) -> float | None:
    """Age in years from PatientAge (``045Y``), else from PatientBirthDate and the study date."""
    age = _text(ds, "PatientAge").strip().upper()
    m = re.fullmatch(r"(\d{1,3})([DWMY])", age)
    if m:
        return int(m.group(1)) * AGE_UNITS[m.group(2)]
    born = _dicom_date(_text(ds, "PatientBirthDate"))
    if born is None:
        return None
    for field in STUDY_DATE_FIELDS:
        when = _dicom_date(_text(ds, field))
        if when is not None and when >= born:
            return (when - born).days / 365.25
    return None


def procedure_codes(ds: Dataset) -> set[str]:
    codes: set[str] = set()
    for tag in PROCEDURE_CODE_SEQUENCES:
        if tag not in ds:
            continue
        for item in ds[tag].value or ():
            value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
            if value:
                value = str(value).strip()
                codes.add(value)
                scheme = str(item.get("CodingSchemeDesignator") or "").strip()
                if scheme:
                    codes.add(f"{scheme}:{value}")
    return codes


class Facts:
    """What conditions look at, read from the dataset on first use (a rule that never asks costs nothing)."""

    def __init__(self, ds: Dataset, *, source: str | None = None, deidentified: bool = False):
        self._ds = ds
        self.source = source.strip() if source else None
        self.deidentified = deidentified

    @classmethod
    def of(cls, ds: Dataset, *, source: str | None = None, deidentified: bool = False) -> Facts:
        return cls(ds, source=source, deidentified=deidentified)

    @cached_property
    def modality(self) -> str:
        return _text(self._ds, "Modality").strip().upper()

    @cached_property
    def body_part(self) -> str:
        return _text(self._ds, "BodyPartExamined").strip().upper()

    @cached_property
    def sop_class(self) -> str:
        return _text(self._ds, "SOPClassUID").strip()

    @cached_property
    def text(self) -> str:
        """StudyDescription and ProtocolName, upper case."""
        return " | ".join(_text(self._ds, k) for k in KEYWORD_FIELDS).upper()

    @cached_property
    def codes(self) -> frozenset[str]:
        return frozenset(procedure_codes(self._ds))

    @cached_property
    def image_type(self) -> frozenset[str]:
        return frozenset(v.strip().upper() for v in _text(self._ds, "ImageType").split("\\"))

    @cached_property
    def age(self) -> float | None:
        return patient_age_years(self._ds)

    @cached_property
    def burned_in(self) -> bool:
        return _text(self._ds, "BurnedInAnnotation").strip().upper() == "YES"


class Matcher:
    """A compiled :class:`~imaging_lifecycle.policy.Match`: a list of checks that must all pass."""

    def __init__(self, match: Match):
        checks = []
        if match.modality is not None:
            s = frozenset(match.modality)
            checks.append(lambda f: f.modality in s)
        if match.body_part is not None:
            s2 = frozenset(match.body_part)
            checks.append(lambda f: f.body_part in s2)
        if match.sop_class is not None:
            s3 = frozenset(match.sop_class)
            checks.append(lambda f: f.sop_class in s3)
        if match.keywords is not None:
            rx = re.compile(
                r"(?<![A-Z0-9])(?:" + "|".join(re.escape(k) for k in match.keywords) + r")(?![A-Z0-9])"
            )
            checks.append(lambda f: rx.search(f.text) is not None)
        if match.procedure_codes is not None:
            s4 = frozenset(match.procedure_codes)
            checks.append(lambda f: not s4.isdisjoint(f.codes))
        if match.image_type is not None:
            s5 = frozenset(match.image_type)
            checks.append(lambda f: not s5.isdisjoint(f.image_type))
        if match.age_below is not None:
            below = match.age_below
            checks.append(lambda f: f.age is not None and f.age < below)
        if match.age_at_least is not None:
            least = match.age_at_least
            checks.append(lambda f: f.age is not None and f.age >= least)
        if match.burned_in_annotation is not None:
            want = match.burned_in_annotation
            checks.append(lambda f: f.burned_in is want)
        if match.sources is not None:
            s6 = frozenset(match.sources)
            checks.append(lambda f: f.source in s6)
        if match.deidentified is not None:
            want_d = match.deidentified
            checks.append(lambda f: f.deidentified is want_d)
        self._checks = tuple(checks)

    def __call__(self, facts: Facts) -> bool:
        return all(check(facts) for check in self._checks)


_COMPILED: dict[str, tuple[tuple[str, int, Matcher], ...]] = {}


def _rules(policy: Policy) -> tuple[tuple[str, int, Matcher], ...]:
    compiled = _COMPILED.get(policy.fingerprint)
    if compiled is None:
        compiled = tuple((r.id, r.tier, Matcher(r.match)) for r in policy.classification.rules)
        if len(_COMPILED) > 32:
            _COMPILED.clear()
        _COMPILED[policy.fingerprint] = compiled
    return compiled


def sender_of(source: str | None) -> str | None:
    """The sending AE title of a source our C-STORE receiver recorded (``cstore:<AE>``), else None."""
    return source.split(":", 1)[1] if source and source.startswith("cstore:") else None


def classify(
    ds: Dataset | None, policy: Policy, *, source: str | None = None, deidentified: bool = False
) -> Classification:
    """The tier of ``ds`` and the id of the rule that decided it; ``None`` means unreadable.

    ``deidentified`` is the caller's statement that ``ds`` is a derivative our
    engine produced. A PatientIdentityRemoved=YES in the headers alone does
    not lower a tier: anyone can write that flag.
    """
    top = policy.highest_tier
    if ds is None:
        return Classification(top, FAIL_UNREADABLE)
    facts = Facts(ds, source=source, deidentified=deidentified)
    try:
        with quiet_pydicom():
            for rule_id, tier, matcher in _rules(policy):
                if matcher(facts):
                    return Classification(tier, rule_id)
    except Exception:  # damaged values: their text may hold identifiers, so only the outcome is kept
        return Classification(top, FAIL_MALFORMED)
    return Classification(top, FAIL_NO_MATCH)


def classify_path(
    path: str | Path, policy: Policy, *, source: str | None = None, deidentified: bool = False
) -> Classification:
    """Classify a file from its headers (pixel data is not read)."""
    try:
        ds = read_header(path)
    except UnreadableDicom:
        ds = None
    return classify(ds, policy, source=source, deidentified=deidentified)
