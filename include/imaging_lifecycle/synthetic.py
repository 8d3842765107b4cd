"""Synthetic DICOM studies: for the demo, the benchmarks and the no-leak tests.

Every identifying attribute carries a recognisable *marker* value (for
example ``ZZMARK-NAME-1234``), so a test can scan logs, XCom, audit records
and buckets for any marker and prove that none leaked. Nothing here is a real
patient. Pixel data is a small deterministic gradient, so files are valid and
cheap to make.
"""

from __future__ import annotations

import datetime as dt
import io
import random
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": "1.2.840.10008.5.1.4.1.1.1",
             "DX": "1.2.840.10008.5.1.4.1.1.1.1", "US": "1.2.840.10008.5.1.4.1.1.6.1"}
MARKER_PREFIX = "ZZMARK"


@dataclass(frozen=True)
class Patient:
    """A synthetic patient whose every identifier is a marker string."""

    tag: str  # short unique tag, e.g. "0001"

    @property
    def name(self) -> str:
        return f"{MARKER_PREFIX}^NAME{self.tag}"

    @property
    def patient_id(self) -> str:
        return f"{MARKER_PREFIX}-ID-{self.tag}"

    @property
    def accession(self) -> str:
        return f"{MARKER_PREFIX}ACC{self.tag}"

    def markers(self) -> list[str]:
        """Strings that must never appear outside the encrypted identified originals."""
        return [f"NAME{self.tag}", self.patient_id, self.accession, f"{MARKER_PREFIX}-ADDR-{self.tag}",
                f"{MARKER_PREFIX}-INST-{self.tag}", f"{MARKER_PREFIX}-SERIAL-{self.tag}", f"REFDOC{self.tag}",
                self.file_marker]

    @property
    def file_marker(self) -> str:
        """Carried in file names: a logged landing path would show up as a leak too."""
        return f"{MARKER_PREFIX}-FILE-{self.tag}"


def make_instance(
    patient: Patient,
    study_uid: str,
    series_uid: str,
    number: int,
    *,
    modality: str = "CT",
    body_part: str = "CHEST",
    study_description: str = "CT CHEST",
    size: int = 64,
    rng: random.Random | None = None,
    frame_uid: str | None = None,
) -> Dataset:
    rng = rng or random.Random(number)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS.get(modality, CTImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid or generate_uid()
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "055Y"
    ds.PatientAddress = f"{MARKER_PREFIX}-ADDR-{patient.tag}"
    ds.AccessionNumber = patient.accession
    ds.InstitutionName = f"{MARKER_PREFIX}-INST-{patient.tag}"
    ds.DeviceSerialNumber = f"{MARKER_PREFIX}-SERIAL-{patient.tag}"
    ds.ReferringPhysicianName = f"{MARKER_PREFIX}^REFDOC{patient.tag}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260115"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.StudyID = f"S{patient.tag}"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.StudyDescription = study_description
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    # A nested sequence carrying an identifier, as real requests do.
    req = Dataset()
    req.RequestedProcedureID = f"{MARKER_PREFIX}-ID-{patient.tag}"
    req.AccessionNumber = patient.accession
    ds.RequestAttributesSequence = Sequence([req])
    # A private block carrying an identifier, as vendor tags often do.
    block = ds.private_block(0x0011, "ZZMARK SYNTHETIC", create=True)
    block.add_new(0x01, "LO", patient.patient_id)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    base = rng.randrange(0, 1000)
    period = b"".join(((base + i) % 4096).to_bytes(2, "little") for i in range(4096))  # the ramp repeats
    ds.PixelData = (period * (size * size // 4096 + 1))[: 2 * size * size]
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_study(
    folder: Path,
    patient: Patient,
    *,
    instances: int = 3,
    modality: str = "CT",
    body_part: str = "CHEST",
    study_description: str = "CT CHEST",
    size: int = 64,
) -> list[Path]:
    """Write one study of ``instances`` files into ``folder`` (atomically: .part then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for n in range(1, instances + 1):
        ds = make_instance(patient, study, series, n, modality=modality, body_part=body_part,
                           study_description=study_description, size=size, frame_uid=frame)
        path = folder / f"{patient.file_marker}-{n:04d}.dcm"
        part = path.with_suffix(".part")
        part.write_bytes(to_bytes(ds))
        part.rename(path)
        paths.append(path)
    return paths


#: The demo: a handful of studies spread over tiers, so the UI shows each path.
DEMO_STUDIES = [
    dict(modality="CT", body_part="CHEST", study_description="CT CHEST"),
    dict(modality="CR", body_part="CHEST", study_description="CHEST PA"),
    dict(modality="MR", body_part="BRAIN", study_description="MR BRAIN"),
    dict(modality="US", body_part="ABDOMEN", study_description="US ABDOMEN"),
    dict(modality="MR", body_part="KNEE", study_description="MR KNEE"),
]


def write_demo(landing: Path, *, seed: int | None = None) -> list[Path]:
    rng = random.Random(seed)
    out = []
    for i, spec in enumerate(DEMO_STUDIES):
        tag = f"{rng.randrange(10**4):04d}{i}"
        out += write_study(landing / f"demo-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{i}", Patient(tag), **spec)
    return out
