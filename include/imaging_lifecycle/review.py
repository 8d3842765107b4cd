"""The review queue, and a reviewer's decision on each held image.

What is in the queue, by flag:

* ``burned-in:...`` (and other engine reasons, ``DEID_<code>``): the pixels
  may carry text, so no derivative was made;
* ``DEID_GATE``: a derivative was made, but its own gate row failed, so it
  was never released to the research zone;
* ``GATE_CLASSIFIED`` / ``GATE_CLOSING``: the object failed a per-object
  protect gate (an operator's matter: listed, not offered for release).

Their originals are stored and backed up as usual. The ``review`` DAG asks the
policy's ``review.reviewers`` about each releasable item (:func:`waiting`)
with :func:`describe` (codes and a thumbnail of the *de-identified* pixels,
never the original header), and applies the answer with :func:`decide`:

* ``release``: the derivative is made again (de-identification is
  deterministic), with the pixels as they are, gated, and released;
* ``release with mask``: the reviewer's rectangles are blanked first
  (recorded as pixel cleaning), then gated and released;
* ``reject``: no derivative is released; the original stays protected and
  leaves the queue.

A derivative that fails its gate on release stays held. The reviewer's
identity and choice go to the audit trail.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass

from imaging_lifecycle.catalog import states
from imaging_lifecycle.services import Services

RELEASE, RELEASE_MASKED, REJECT = "release", "release with mask", "reject"
OPTIONS = (RELEASE, RELEASE_MASKED, REJECT)
#: Flags of items a reviewer may release (the engine held them, or their own de-identification gate did).
RELEASABLE_PREFIXES = ("burned-in", "DEID_")
REJECTED = "REVIEW_REJECTED"
THUMBNAIL_MAX = 256


def queue(svc: Services, *, limit: int = 1000) -> list[dict]:
    """The review queue, oldest first (what ``imaging-lifecycle review list --json`` prints)."""
    return [{"catalog_id": o.id, "state": o.state, "flag": o.flagged, "tier": o.tier, "sop_class_uid": o.sop_class_uid,
             "derived": bool(o.source and o.source.startswith("derived:"))}
            for o in svc.catalog.flagged_objects(limit=limit) if o.flagged != REJECTED]


def _releasable(obj) -> bool:  # noqa: ANN001
    return bool(obj.flagged and obj.flagged.startswith(RELEASABLE_PREFIXES)) \
        and obj.state in (states.STORED, states.BACKED_UP) and not (obj.source or "").startswith("derived:")


def waiting(svc: Services, *, limit: int = 50) -> list[str]:
    """Catalog ids of items a reviewer can release: stored originals held by the engine or their own gate."""
    return [o.id for o in svc.catalog.flagged_objects(limit=1000) if _releasable(o)][:limit]


def is_waiting(svc: Services, catalog_id: str) -> bool:
    """Is this item still waiting for a decision? (False once decided: a retried request asks no one again.)"""
    return _releasable(svc.catalog.get(catalog_id))


@dataclass(frozen=True)
class Item:
    subject: str
    body: str


def _derive(svc: Services, obj, *, masks: list[list[int]] | None = None):  # noqa: ANN001
    """(original, engine result) for a held object: decrypted once, de-identified again as a reviewer decided.

    ``masks`` are the reviewer's rectangles ``[x, y, width, height]``, checked against the image's size.
    """
    from imaging_lifecycle.deid import Deidentifier
    from imaging_lifecycle.dicomfile import read_dataset
    from imaging_lifecycle.policy import Mask, Region
    from imaging_lifecycle.protect import plaintext_file, sender
    from imaging_lifecycle.secretfiles import load_or_create_secret

    engine = Deidentifier(svc.policy, load_or_create_secret("deid-hmac", settings=svc.settings))
    with plaintext_file(svc, obj) as path:
        original = read_dataset(path)
    mask = None
    if masks:
        mask = Mask(id="reviewer", rows=int(original.Rows), columns=int(original.Columns),
                    regions=[Region(x=x, y=y, width=w, height=h) for x, y, w, h in masks])
    result = engine.deidentify(original, source=sender(obj), in_place=False, reviewed=True, reviewed_mask=mask)
    return original, result


def describe(svc: Services, catalog_id: str) -> Item:
    """What a reviewer sees: codes, the kind of object, and a thumbnail of the de-identified pixels."""
    obj = svc.catalog.get(catalog_id)
    _original, result = _derive(svc, obj)
    ds = result.dataset
    lines = [f"**Catalog id** `{obj.id}`  ", f"**Held because** `{obj.flagged}`  ",
             f"**Modality** `{ds.get('Modality', '-')}`, **SOP class** `{obj.sop_class_uid or '-'}`, "
             f"**tier** {obj.tier}  ", f"**Size** {ds.get('Columns', '?')} x {ds.get('Rows', '?')} pixels  "]
    png = thumbnail(ds)
    if png is None:
        lines.append("_No thumbnail: the pixels could not be decoded here._")
    else:
        lines.append(f"![de-identified pixels](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")
    lines.append("To blank regions, choose *release with mask* and give rectangles as [x, y, width, height].")
    return Item(f"Review held image {obj.id[:8]} ({obj.flagged})", "\n".join(lines))


def decide(svc: Services, catalog_id: str, *, choice: str, masks: list[list[int]] | None, reviewer: str) -> dict:
    """Apply a reviewer's decision (audited under the reviewer's name). Returns codes and ids only."""
    from imaging_lifecycle.gates import deid as suite
    from imaging_lifecycle.gates import record
    from imaging_lifecycle.protect import release_derivatives

    if choice not in OPTIONS:
        raise ValueError(f"unknown review choice; choose one of {', '.join(OPTIONS)}")
    obj = svc.catalog.get(catalog_id)
    if not (obj.flagged or "").startswith(RELEASABLE_PREFIXES):
        raise ValueError(f"object {catalog_id} is not waiting for review")
    audit = {"choice": choice.replace(" ", "_"), "held": obj.flagged, "masks": len(masks or [])}
    if choice == REJECT:
        svc.catalog.flag(obj.id, REJECTED, actor=reviewer, detail={"reason": REJECTED})
        svc.catalog.audit.append(reviewer, "review.decision", object_ref=obj.id, detail={**audit, "released": False})
        return {"catalog_id": obj.id, "released": False, "choice": choice}
    if choice == RELEASE_MASKED and not masks:
        raise ValueError("release with mask needs at least one rectangle [x, y, width, height]")
    original, result = _derive(svc, obj, masks=masks if choice == RELEASE_MASKED else None)
    verdict = record(svc.catalog, suite.check([(obj.id, original, result.dataset)], svc.policy), actor=reviewer)
    if not verdict.passed(obj.id):
        svc.catalog.audit.append(reviewer, "review.decision", object_ref=obj.id, outcome="minor_failure",
                                 detail={**audit, "released": False, "reason": "DEID_GATE"})
        return {"catalog_id": obj.id, "released": False, "choice": choice, "reason": "DEID_GATE"}
    release_derivatives(svc, [(obj, result)], svc.policy, actor=reviewer)
    svc.catalog.flag(obj.id, None, actor=reviewer)
    svc.catalog.audit.append(reviewer, "review.decision", object_ref=obj.id, detail={**audit, "released": True})
    return {"catalog_id": obj.id, "released": True, "choice": choice}


# -- the thumbnail: numpy and a few lines of PNG ------------------------------------------


def thumbnail(ds, max_side: int = THUMBNAIL_MAX) -> bytes | None:  # noqa: ANN001
    """A grey PNG of the first frame, windowed to its own range and shrunk to ``max_side``; None if undecodable."""
    import numpy as np

    try:
        arr = np.asarray(ds.pixel_array)
    except Exception:  # noqa: BLE001 - compressed without a decoder, or no pixels: say so, never fail the review
        return None
    if arr.ndim == 4 or (arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1):
        arr = arr[0]  # first frame
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)  # colour to grey
    arr = arr.astype(np.float64)
    step = max(1, -(-max(arr.shape) // max_side))
    arr = arr[::step, ::step]
    lo, hi = float(arr.min()), float(arr.max())
    grey = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return png(grey)


def png(grey) -> bytes:  # noqa: ANN001
    """An 8-bit greyscale PNG of a 2-D uint8 array."""
    h, w = grey.shape
    raw = b"".join(b"\x00" + grey[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
