"""What counts as an "original identifying string", shared by the engine and the validation gate.

The issue names the kinds: names, IDs, accession number, dates, addresses,
device serial numbers, institution. Names are every PN value; dates are every
DA value and the date part of every DT value; the rest are the attributes
below. Each is a Table E.1-1 attribute (a test checks), and one whose action
under the chosen options is K or C is being retained on purpose and so is not
an identifier to hunt for.

Values shorter than :data:`MIN_LENGTH` characters are not hunted: "M",
"1" or "JR" occur in innocent text everywhere, and removing them would
destroy data without protecting anyone. A value that begins and ends with a
Latin letter or digit is hunted as a whole word (``ANON`` is not found inside
``ANONYMIZED``, nor ``1234`` inside ``912345``); a value with another script
at an end (Chinese names are written without spaces) is found anywhere. The
engine and the gate share these rules, so the gate never counts what the
engine rightly left alone.
"""

from __future__ import annotations

import re

MIN_LENGTH = 3

IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    # patient names and IDs
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "AdmissionID",
    "ServiceEpisodeID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    # order and study identifiers
    "AccessionNumber",
    "StudyID",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    # addresses and contacts
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "RegionOfResidence",
    "CountryOfResidence",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PersonAddress",
    "PersonTelephoneNumbers",
    "ResponsibleOrganization",
    # devices
    "DeviceSerialNumber",
    "StationName",
    "DetectorID",
    "GantryID",
    "PlateID",
    "CassetteID",
    # institution
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
)

TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
DATE_VRS = frozenset({"DA", "DT"})


def identifying_tags(actions: dict[int, str]) -> frozenset[int]:
    """Tags of :data:`IDENTIFYING_KEYWORDS` that the options do not retain (action not K or C)."""
    from pydicom.datadict import tag_for_keyword

    out = set()
    for kw in IDENTIFYING_KEYWORDS:
        tag = tag_for_keyword(kw)
        if tag is not None and actions.get(tag) not in ("K", "C"):
            out.add(tag)
    return frozenset(out)


def split_values(raw: bytes, *, person_name: bool = False) -> list[bytes]:
    """The parts of a value worth hunting: each value of a multi-value, each name component.

    For a person name, every component of every component group (alphabetic,
    ideographic, phonetic) is hunted, and so is each group's name as free text
    writes it: the components run together (``王小东``: Chinese and Japanese
    names are written without spaces) and, for a Latin group, separated by a
    space (``Wang XiaoDong``).
    """
    out = []
    for value in raw.split(b"\\"):
        groups = value.split(b"=") if person_name else [value]
        for group in groups:
            comps = [c.strip(b" \x00") for c in (group.split(b"^") if person_name else [group])]
            comps = [c for c in comps if c]
            out += [c for c in comps if len(c) >= MIN_LENGTH]
            if person_name and len(comps) > 1:
                out.append(b"".join(comps) if not group.isascii() else b" ".join(comps))
    return [p for p in out if len(p) >= MIN_LENGTH]


def date_parts(raw: bytes) -> list[bytes]:
    """YYYYMMDD and YYYY-MM-DD spellings of each date in a DA or DT value."""
    out = []
    for p in raw.split(b"\\"):
        p = p.strip(b" \x00")
        if len(p) >= 8 and p[:8].isdigit():
            d = p[:8]
            out += [d, d[:4] + b"-" + d[4:6] + b"-" + d[6:8]]
    return out


_WORD = re.compile(rb"[A-Za-z0-9]")
_EDGE_BEFORE, _EDGE_AFTER = rb"(?<![A-Za-z0-9])", rb"(?![A-Za-z0-9])"


def pattern(strings: set[bytes]) -> re.Pattern[bytes] | None:
    """One case-insensitive regex for all ``strings``, longest first; None when there is nothing to hunt.

    Strings with a Latin letter or digit at both ends are matched as whole words (one boundary check
    around their whole alternation, which keeps the regex fast); the others anywhere.
    """
    if not strings:
        return None
    ordered = sorted(strings, key=len, reverse=True)
    words = [re.escape(s) for s in ordered if _WORD.match(s[:1]) and _WORD.match(s[-1:])]
    loose = [re.escape(s) for s in ordered if not (_WORD.match(s[:1]) and _WORD.match(s[-1:]))]
    parts = []
    if words:
        parts.append(_EDGE_BEFORE + b"(?:" + b"|".join(words) + b")" + _EDGE_AFTER)
    if loose:
        parts.append(b"|".join(loose))
    return re.compile(b"|".join(parts), re.IGNORECASE)
