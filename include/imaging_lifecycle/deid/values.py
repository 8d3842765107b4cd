"""What replaces what: keyed UIDs, the patient pseudonym, the date shift and dummy values.

Everything derived from an original value is an HMAC-SHA256 under the
de-identification key (through :mod:`imaging_lifecycle.crypto`, never a
plain hash, which anyone could recompute from a guessed PatientID), with a
purpose label so that the UID of a value and the pseudonym of the same value
are unrelated. Being deterministic, the same original gives the same
replacement in every batch: references between instances survive.

Values are bytes, as they sit in the file, so the engine can replace
elements without decoding them.
"""

from __future__ import annotations

import base64
from datetime import date, timedelta

from imaging_lifecycle.crypto import hmac_sha256

UID_ROOT = "2.25."
PSEUDONYM_PREFIX = "IL"

#: VR -> dummy value for action D (already padded to even length)
DUMMIES: dict[str, bytes] = {
    "AE": b"ANONYMIZED",
    "AS": b"000Y",
    "CS": b"ANONYMIZED",
    "DA": b"19000101",
    "DS": b"0 ",
    "DT": b"19000101000000",
    "IS": b"0 ",
    "LO": b"ANONYMIZED",
    "LT": b"ANONYMIZED",
    "PN": b"ANONYMIZED",
    "SH": b"ANONYMIZED",
    "ST": b"ANONYMIZED",
    "TM": b"000000",
    "UC": b"ANONYMIZED",
    "UR": b"urn:x-il:anonymized ",
    "UT": b"ANONYMIZED",
    "AT": b"\x00" * 4,
    "FL": b"\x00" * 4,
    "FD": b"\x00" * 8,
    "SL": b"\x00" * 4,
    "SS": b"\x00" * 2,
    "SV": b"\x00" * 8,
    "UL": b"\x00" * 4,
    "US": b"\x00" * 2,
    "UV": b"\x00" * 8,
}
DUMMY_BINARY = b"\x00\x00"  # OB, OW, OF, OD, OL, OV, UN and ambiguous VRs


def dummy_for(vr: str | None) -> bytes:
    return DUMMIES.get(vr or "", DUMMY_BINARY)


def derive_uid(key: bytes, uid: str) -> str:
    """``2.25.<int>``: a UUIDv8-shaped 128-bit integer from HMAC-SHA256(key, uid)."""
    b = bytearray(hmac_sha256(key, b"uid\x00" + uid.encode("ascii", "surrogateescape"))[:16])
    b[6] = (b[6] & 0x0F) | 0x80  # version 8 (custom)
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return UID_ROOT + str(int.from_bytes(b, "big"))


def patient_pseudonym(key: bytes, patient_key: bytes) -> str:
    """A stable, keyed PatientID for one patient (18 characters, fits LO and SH)."""
    digest = hmac_sha256(key, b"patient-id\x00" + patient_key)
    return PSEUDONYM_PREFIX + base64.b32encode(digest[:10]).decode("ascii")


def date_shift_days(key: bytes, patient_key: bytes, max_days: int) -> int:
    """How many days this patient's dates move back: 1..max_days, the same in every batch."""
    digest = hmac_sha256(key, b"date-shift\x00" + patient_key)
    return 1 + int.from_bytes(digest[:8], "big") % max_days


def pad(value: bytes, filler: bytes = b" ") -> bytes:
    return value + filler if len(value) & 1 else value


def shift_date(value: bytes, days: int) -> bytes | None:
    """Shift one DA value (``YYYYMMDD``) back; None if it is not a date."""
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        d = date(int(value[:4]), int(value[4:6]), int(value[6:8])) - timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return b"%04d%02d%02d" % (d.year, d.month, d.day)


def shift_datetime(value: bytes, days: int) -> bytes | None:
    """Shift the date part of one DT value; time and offset stay. None if there is no full date."""
    head = shift_date(value[:8], days)
    return None if head is None else head + value[8:]


def shift_values(raw: bytes, days: int, *, datetime: bool) -> bytes:
    """Shift every value of a (multi-valued) DA or DT; values that are not dates are dropped."""
    fn = shift_datetime if datetime else shift_date
    out = []
    for v in raw.split(b"\\"):
        v = v.strip(b" \x00")
        if v:
            s = fn(v, days)
            if s is not None:
                out.append(s)
    return pad(b"\\".join(out))
