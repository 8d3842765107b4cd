"""Shared helpers for the policy, classification and de-identification tests.

Test objects are pydicom's bundled test files (real files nobody here wrote).
``plant`` writes known marker values into every Annex E attribute with a
text, date or UID value, and into nested sequence items and private
elements, so tests can assert that none survive.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import yaml
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

FAMILY = "ZQFAMILY"
GIVEN = "ZQGIVEN"
PATIENT_ID = "ZQPID4711"
DATE = "19770707"
TEXT_VRS = ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT")

#: real files: single and multi-frame, native and compressed, RT, SR, waveform, overlay, no-meta, big endian
FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "examples_overlay.dcm",
    "waveform_ecg.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
)


def sample_path(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not bundled"
    return Path(path)


def read(name: str) -> Dataset:
    from imaging_lifecycle.dicomfile import read_dataset

    return read_dataset(sample_path(name))


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def default_policy_dict() -> dict:
    from importlib import resources

    return yaml.safe_load(resources.files("imaging_lifecycle.policy").joinpath("default.yaml").read_text())


def write_policy(tmp_path: Path, data: dict, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def policy_with(tmp_path: Path, **changes):
    """The default policy with top-level keys replaced (``deid_options={...}`` merges)."""
    from imaging_lifecycle.policy import load_policy

    data = default_policy_dict()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return load_policy(write_policy(tmp_path, data))


@dataclass
class Planted:
    """Markers planted in one dataset: strings and UIDs that must not survive, and retained text."""

    gone: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    kept_text: dict[int, str] = field(default_factory=dict)


def _marker(tag: int, vr: str) -> str:
    if vr == "PN":
        return f"ZQ{tag:08X}^ZQN{tag:08X}"
    return f"ZQ{tag:08X}"


def plant(ds: Dataset, actions: dict[int, str]) -> Planted:
    """Put marker values in ``ds``. ``actions`` is the effective Annex E action per tag.

    Attributes the options retain (C, K) get a text that embeds the patient's
    family name, which cleaning must take out.
    """
    out = Planted(gone={FAMILY, GIVEN, PATIENT_ID, DATE, "1977-07-07"})
    n = 0
    for tag, action in actions.items():
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command and file meta elements do not go in the dataset
        vr = dictionary_VR(tag)
        if vr in TEXT_VRS:
            if action in ("C", "K"):
                value = f"KEEP {FAMILY}" if vr in ("CS", "SH", "AE") else f"retained text about {FAMILY}"
                out.kept_text[tag] = value
            else:
                value = _marker(tag, vr)
                out.gone.update(value.split("^"))
            ds.add_new(tag, vr, value)
        elif vr == "DA":
            ds.add_new(tag, vr, DATE)
        elif vr == "DT":
            ds.add_new(tag, vr, DATE + "101010")
        elif vr == "UI" and action in ("U", "D"):
            n += 1
            uid = f"1.2.826.0.1.3680043.10.99999.{n}"
            ds.add_new(tag, vr, uid)
            out.uids.add(uid)
    ds.PatientName = f"{FAMILY}^{GIVEN}"
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = DATE
    ds.StudyDescription = f"Follow-up of {FAMILY} {GIVEN} ({PATIENT_ID}) on {DATE}"
    ds.ImageComments = f"called {FAMILY.lower()} at home on 1977-07-07"

    # Nested: a sequence the profile keeps (UIDs replaced inside), two levels deep,
    # with names, dates, UIDs and a private element in its items.
    deep = Dataset()
    deep.PatientName = f"{FAMILY}^NESTED2"
    deep.OtherPatientIDs = "ZQNESTEDID2"
    out.gone.update({"NESTED2", "ZQNESTEDID2"})
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.99999.900"
    out.uids.add(item.ReferencedSOPInstanceUID)
    item.ReferringPhysicianName = "ZQDOCTOR^ZQNESTED1"
    item.StudyDate = DATE
    item.add_new(0x00090010, "LO", "ZQ NESTED PRIVATE")
    item.add_new(0x00091001, "LO", "ZQNESTEDPRIVATE")
    item.AnatomicRegionSequence = Sequence([deep])  # not in the table: kept and cleaned
    out.gone.update({"ZQDOCTOR", "ZQNESTED1", "ZQNESTEDPRIVATE", "ZQ NESTED PRIVATE"})
    ds.ReferencedImageSequence = Sequence([item])
    other = Dataset()
    other.PatientID = "ZQOTHERPID"
    ds.OtherPatientIDsSequence = Sequence([other])
    out.gone.add("ZQOTHERPID")

    # Private: a block at the top with text and a sequence holding a name.
    ds.add_new(0x00110010, "LO", "ZQ PRIVATE CREATOR")
    ds.add_new(0x00111001, "LO", "ZQPRIVATEVALUE")
    inner = Dataset()
    inner.PatientName = "ZQPRIVATESQNAME"
    ds.add_new(0x00111002, "SQ", Sequence([inner]))
    out.gone.update({"ZQPRIVATEVALUE", "ZQ PRIVATE CREATOR", "ZQPRIVATESQNAME"})
    # A curve (50xx repeating group) carrying text.
    ds.add_new(0x50000022, "LO", "ZQCURVEDESCRIPTION")
    out.gone.add("ZQCURVEDESCRIPTION")
    return out


def planted_copy(name: str, actions: dict[int, str]) -> tuple[Dataset, Planted]:
    ds = read(name)
    markers = plant(ds, actions)
    return ds, markers


def clone(ds: Dataset) -> Dataset:
    return copy.deepcopy(ds)


def reread(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)), force=True)
