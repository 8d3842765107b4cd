"""Text burned into pixels: which images may carry it, and blanking the policy's regions.

Header de-identification cannot see text in pixels, so an image that may
carry it is never released as if clean: it is either masked with a region
the policy declares for its size (and modality), or held in the
"needs review" state. Masking writes zeros into the native pixel bytes; it
never decodes or re-encodes, so compressed images are held for review
instead of being silently recompressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from imaging_lifecycle.classify import Facts, Matcher

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from imaging_lifecycle.policy import Mask, Policy

PIXEL_DATA = BaseTag(0x7FE00010)
PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData

#: transfer syntaxes whose pixel bytes are native (maskable in place)
NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)


def _str(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword)
    return "" if v is None else str(v).strip()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    v = ds.get(keyword)
    try:
        return int(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return -1


class BurnedInCheck:
    """The policy's burned-in rules, compiled once per engine."""

    def __init__(self, policy: Policy):
        bi = policy.burned_in
        self.modalities = frozenset(bi.modalities)
        self.sop_classes = frozenset(bi.sop_classes)
        self.rules = tuple((r.id, Matcher(r.match)) for r in bi.rules)
        self.masks = tuple(bi.masks)

    def assess(self, ds: Dataset, *, source: str | None = None) -> str | None:
        """Why this image may carry burned-in text (a reason code), or None."""
        if not any(t in ds._dict for t in PIXEL_TAGS):
            return None
        if _str(ds, "BurnedInAnnotation").upper() == "YES":
            return "burned-in:annotation-flag"
        if _str(ds, "Modality").upper() in self.modalities:
            return "burned-in:modality"
        if _str(ds, "SOPClassUID") in self.sop_classes:
            return "burned-in:sop-class"
        if self.rules:
            facts = Facts.of(ds, source=source)
            for rule_id, matcher in self.rules:
                if matcher(facts):
                    return f"burned-in:rule:{rule_id}"
        return None

    def mask_for(self, ds: Dataset) -> Mask | None:
        rows, cols = _int(ds, "Rows", -1), _int(ds, "Columns", -1)
        modality = _str(ds, "Modality").upper()
        for m in self.masks:
            if m.rows == rows and m.columns == cols and (m.modality is None or m.modality.upper() == modality):
                return m
        return None


def transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little in (True, None) else "1.2.840.10008.1.2.2"


def apply_mask(ds: Dataset, mask: Mask) -> str | None:
    """Zero ``mask``'s regions in every frame of the native PixelData; a reason code if it cannot."""
    if PIXEL_DATA not in ds._dict:
        return "mask-unsupported:no-integer-pixel-data"
    if transfer_syntax(ds) not in NATIVE_SYNTAXES:  # decode first (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE)
        from imaging_lifecycle.dicomfile import quiet_pydicom

        try:
            with quiet_pydicom():
                ds.decompress()  # the derivative becomes native (explicit VR little endian); the original is kept
        except Exception:  # noqa: BLE001 (no decoder for this syntax, or damaged frames: the image is held)
            return "mask-unsupported:compressed"
    bits = _int(ds, "BitsAllocated", -1)
    if bits not in (8, 16, 32):
        return "mask-unsupported:bits-allocated"
    spp = _int(ds, "SamplesPerPixel", 1)
    planar = _int(ds, "PlanarConfiguration", 0)
    frames = _int(ds, "NumberOfFrames", 1)
    rows, cols = _int(ds, "Rows", -1), _int(ds, "Columns", -1)
    if spp < 1 or frames < 1 or planar not in (0, 1) or (rows, cols) != (mask.rows, mask.columns):
        return "mask-unsupported:layout"
    elem = ds._dict[PIXEL_DATA]
    data = elem.value
    if not isinstance(data, (bytes, bytearray)):
        return "mask-unsupported:layout"
    bpp = bits // 8
    frame_bytes = rows * cols * spp * bpp
    if len(data) < frames * frame_bytes:
        return "mask-unsupported:layout"
    buf = bytearray(data)
    for f in range(frames):
        base = f * frame_bytes
        for r in mask.regions:
            if planar == 0 or spp == 1:
                run = r.width * spp * bpp
                zero = bytes(run)
                for y in range(r.y, r.y + r.height):
                    start = base + (y * cols + r.x) * spp * bpp
                    buf[start : start + run] = zero
            else:
                run = r.width * bpp
                zero = bytes(run)
                for p in range(spp):
                    plane = base + p * rows * cols * bpp
                    for y in range(r.y, r.y + r.height):
                        start = plane + (y * cols + r.x) * bpp
                        buf[start : start + run] = zero
    vr = elem.VR or ("OB" if bits == 8 else "OW")
    implicit, little = ds.original_encoding
    ds._dict[PIXEL_DATA] = RawDataElement(
        elem.tag, vr, len(buf), bytes(buf), 0, bool(implicit), little is not False, True
    )
    return None
