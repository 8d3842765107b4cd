"""Value checks for what callers pass in, as a table: column -> checker returning the normalized value.

Each checker takes ``(name, value)`` and raises ``ValueError`` naming the
column, never the value.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from imaging_lifecycle.settings import ZONES

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def _fail(name: str, what: str) -> ValueError:
    return ValueError(f"{name} must be {what}")


def _sha256(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _HEX64.match(v):
        raise _fail(name, "a 64-character hex SHA-256")
    return v.lower()


def _label(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _LABEL.match(v):
        raise _fail(name, "a short label ([A-Za-z0-9_.:-], at most 64 characters)")
    return v


def _reason(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _REASON.match(v):
        raise _fail(name, "an upper-case reason code like NOT_DICOM (never free text)")
    return v


def _tier(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise _fail(name, "an int between 0 and 255")
    return v


def _size(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _fail(name, "a non-negative int")
    return v


def _zone(name: str, v: Any) -> str:
    if v not in ZONES:
        raise _fail(name, f"a storage zone ({', '.join(ZONES)})")
    return v


def _when(name: str, v: Any) -> dt.datetime:
    if not isinstance(v, dt.datetime) or v.utcoffset() is None:
        raise _fail(name, "a timezone-aware datetime")
    return v.astimezone(dt.timezone.utc)


def _class_uid(name: str, v: Any) -> str:
    if not isinstance(v, str) or len(v) > 64 or not _UID.match(v):
        raise _fail(name, "a DICOM UID (digits and dots, at most 64 characters)")
    return v


def _bucket(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _BUCKET.match(v):
        raise _fail(name, "an S3 bucket name")
    return v


def _text(name: str, v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 1024:
        raise _fail(name, "a non-empty string of at most 1024 characters")
    return v


def _source(name: str, v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 64 or not v.isprintable() or any(c in v for c in "^\\"):
        raise _fail(name, "printable text of at most 64 characters, e.g. 'landing' or 'cstore:<AE title>'")
    return v


#: Columns a caller may set, and how each is checked.
FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "tier": _tier,
    "rule_id": _label,
    "policy_fingerprint": _sha256,
    "zone": _zone,
    "ciphertext_sha256": _sha256,
    "key_id": _label,
    "retention_deadline": _when,
    "flagged": _label,
    "quarantine_reason": _reason,
}


def _check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in fields.items():
        check = FIELD_CHECKS.get(name)
        if check is None:
            raise ValueError(f"{name!r} is not a settable catalog field; settable: {', '.join(FIELD_CHECKS)}")
        out[name] = None if value is None and name in ("flagged", "retention_deadline") else check(name, value)
    return out


def _check_id(object_id: Any, what: str = "object_id") -> str:
    if not isinstance(object_id, str) or not _HEX32.match(object_id):
        raise ValueError(f"{what} must be a 32-character lower-case hex catalog id")
    return object_id
