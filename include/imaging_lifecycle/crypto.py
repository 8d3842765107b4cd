"""All cryptography in imaging-lifecycle goes through this module.

Nothing else in the package imports ``cryptography``, ``hmac`` or ``secrets``
for protection purposes; other modules call the small functions here. That
keeps the dangerous primitives (nonces, key wrap, framing) in one place to
review.
"""

from __future__ import annotations

import hashlib
import hmac


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).digest()


def keyed_digest(key: bytes, purpose: str, value: str) -> str:
    """A keyed, purpose-separated hex digest of an identifying value.

    Used wherever an identifier must be matched without being stored or
    logged (a SOP Instance UID in the catalog, an object reference in the
    audit trail). ``purpose`` domain-separates uses, so the digest of a UID
    for the catalog cannot be joined with its digest for the audit trail
    unless both purposes are known.
    """
    return hmac_sha256(key, purpose.encode() + b"\x00" + value.encode("utf-8", "surrogateescape")).hex()
