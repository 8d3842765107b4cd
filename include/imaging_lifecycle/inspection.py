"""Looking at one arrived file: is it a DICOM object we can take in, and if not, why not.

Parsing never loads pixel data: values larger than :data:`DEFER_SIZE` are
skipped by seeking, which also reveals a truncated file (the parser seeks
past the end); smaller values cut short are caught by a short-read probe. A
file cut exactly between two elements is a well-formed smaller dataset and
cannot be told from one; it is caught only if that removed a required UID.
Every refusal carries a reason code from :data:`REASONS`,
so quarantine is machine-readable. The inspection holds the UIDs in memory
for the caller; they are never part of :meth:`Inspection.public`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from imaging_lifecycle.crypto import sha256_file
from imaging_lifecycle.dicomfile import NotDicom, read_probed

#: Quarantine reason codes. Stable strings: operators and dashboards match on them.
REASONS: dict[str, str] = {
    "EMPTY_FILE": "the file has zero bytes",
    "NOT_DICOM": "no DICOM Part 10 preamble and 'DICM' prefix",
    "TRUNCATED": "the file ends inside a data element",
    "UNREADABLE": "the DICOM parser or the file system could not read it",
    "MISSING_UID": "a required UID (SOP Instance, Study, Series or SOP Class) is absent or empty",
    "PATH_TRAVERSAL": "the name or link points outside the landing folder",
    "DUPLICATE_CONFLICT": "same SOP Instance UID as a stored object but different content",
    "TOO_LARGE": "larger than the configured ingest limit",
    "STAGED_COPY_MISSING": "its encrypted copy in the staging zone was gone when its chunk ran (never expected)",
}

REQUIRED_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")
DEFER_SIZE = 4096


@dataclass
class Inspection:
    path: Path
    size: int
    sha256: str | None = None
    reason: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    #: The parsed header (large values deferred), for the caller's next step in the same process: ingest
    #: classifies from it, so a file is parsed once. Never repr'd, never in :meth:`public`.
    dataset: object | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def public(self) -> dict:
        """What may leave the process (XCom, logs): no names, no UIDs."""
        return {"size": self.size, "sha256": self.sha256, "reason": self.reason, "sop_class_uid": self.sop_class_uid}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def safe_name(name: str) -> bool:
    """A name we would create inside the landing folder: no separators, no '..', no control chars."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name and (
        not any(ord(c) < 32 for c in name)
    )


def inspect(path: Path, landing: Path, *, max_bytes: int | None = None) -> Inspection:
    """Inspect one file under ``landing``. Never raises for bad content: it sets ``reason``."""
    try:
        st = os.lstat(path)
    except OSError:
        return Inspection(path, 0, reason="UNREADABLE")
    insp = Inspection(path, st.st_size)
    if path.is_symlink() or not _inside(path, landing) or ".." in path.relative_to(landing).parts:
        insp.reason = "PATH_TRAVERSAL"
        return insp
    if st.st_size == 0:
        insp.reason = "EMPTY_FILE"
        return insp
    if max_bytes is not None and st.st_size > max_bytes:
        insp.reason = "TOO_LARGE"
        return insp
    try:
        insp.sha256 = sha256_file(path)
        with open(path, "rb") as f:
            head = f.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                insp.reason = "NOT_DICOM"
                return insp
            f.seek(0)
            probed = read_probed(f, defer_size=DEFER_SIZE)
    except NotDicom:
        insp.reason = "NOT_DICOM"
        return insp
    except OSError:
        insp.reason = "UNREADABLE"
        return insp
    if probed.dataset is None:
        insp.reason = "TRUNCATED" if probed.truncated else "UNREADABLE"
        return insp
    ds = probed.dataset
    if probed.end > st.st_size or probed.truncated:
        insp.reason = "TRUNCATED"
        return insp
    values = {}
    try:
        for kw in REQUIRED_UIDS:
            values[kw] = str(ds.get(kw, "") or "").strip()
        insp.modality = str(ds.get("Modality", "") or "") or None
    except Exception:  # a malformed element only fails when touched
        insp.reason = "UNREADABLE"
        return insp
    insp.sop_instance_uid = values["SOPInstanceUID"] or None
    insp.study_instance_uid = values["StudyInstanceUID"] or None
    insp.series_instance_uid = values["SeriesInstanceUID"] or None
    insp.sop_class_uid = values["SOPClassUID"] or None
    if not all(values.values()):
        insp.reason = "MISSING_UID"
    else:
        insp.dataset = ds
    return insp
