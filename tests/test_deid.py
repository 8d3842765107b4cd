"""De-identification engine: the Annex E table as data, planted markers that must not survive,
consistency of UIDs, pseudonyms and dates, options, private tags, bad input."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
from importlib import resources

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging_lifecycle.deid import Deidentifier, DeidError, ReidMap, effective_actions, load_table
from imaging_lifecycle.deid.identifiers import IDENTIFYING_KEYWORDS
from imaging_lifecycle.deid.table import OPTION_COLUMNS, TABLE_ATTRIBUTE_COUNT, TABLE_EDITION
from imaging_lifecycle.gates.deid import build_rows
from imaging_lifecycle.policy import load_policy

from deid_fixtures import (
    FAMILY,
    FILES,
    KEY,
    OTHER_KEY,
    PATIENT_ID,
    clone,
    plant,
    policy_with,
    read,
    reread,
    sample_path,
    to_bytes,
)

UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


@pytest.fixture(scope="module")
def policy():
    return load_policy()


@pytest.fixture(scope="module")
def engine(policy):
    return Deidentifier(policy, KEY)


# -- the table is data ----------------------------------------------------------------


def test_table_is_the_whole_2024b_table_with_its_notice():
    table = load_table()
    assert table.edition == TABLE_EDITION == "2024b"
    assert len(table.attributes) == TABLE_ATTRIBUTE_COUNT == 621
    assert len({a.tag_text for a in table.attributes}) == 621
    pkg = resources.files("imaging_lifecycle.deid")
    assert "Innolitics" in pkg.joinpath("LICENSE-innolitics-dicom-standard.txt").read_text()
    readme = pkg.joinpath("README.md").read_text()
    assert "2024b" in readme and "innolitics/dicom-standard" in readme


def test_every_table_attribute_gets_an_action_under_every_option_set(policy):
    table = load_table()
    plain = [a for a in table.attributes if a.tag is not None]
    assert len(plain) == 621 - 4  # the curve, two overlay rows and the private-attributes row are rules
    for options in (policy.deid_options, None):
        actions = effective_actions(options)
        assert set(actions) == {a.tag for a in plain}
        assert set(actions.values()) <= {"X", "Z", "D", "K", "C", "U"}
    # every option column the engine offers changes something
    for opt, column in OPTION_COLUMNS.items():
        assert any(column in a.options for a in table.attributes), opt


def test_identifying_keywords_are_table_attributes():
    by_tag = load_table().by_tag
    assert all(tag_for_keyword(k) in by_tag for k in IDENTIFYING_KEYWORDS)


# -- nothing planted survives --------------------------------------------------------------


def _deid_planted(name, engine, policy):
    ds = read(name)
    markers = plant(ds, effective_actions(policy.deid_options))
    original = clone(ds)
    result = engine.deidentify(ds)
    return original, result, markers


@pytest.mark.parametrize("name", FILES)
def test_no_planted_identifier_survives_anywhere_in_the_output_file(name, engine, policy, caplog):
    caplog.set_level(logging.DEBUG)
    original, result, markers = _deid_planted(name, engine, policy)
    data = to_bytes(result.dataset)
    for marker in markers.gone:
        assert marker.encode().lower() not in data.lower(), marker
    for uid in markers.uids:
        assert uid.encode() not in data, uid
    for rec in caplog.records:  # nothing identifying reached a log either
        assert FAMILY.lower() not in rec.getMessage().lower()
        assert "1.2.826.0.1.3680043.10.99999" not in rec.getMessage()
    out = reread(result.dataset)
    assert out.PatientIdentityRemoved == "YES"
    # the independent gate walk agrees, element by element
    (row,) = build_rows([(original, result.dataset)], policy)
    assert row == {
        "object": "0",
        "xzd_original_values": 0,
        "identifying_strings": 0,
        "dates_unchanged": 0,
        "uids_unchanged": 0,
        "unsafe_private": 0,
        "identifiers_detected": 0,
        "pixel_changed_unexpectedly": False,
        "identity_removed_recorded": True,
    }


def test_cleaned_descriptors_keep_only_vocabulary_words_and_narrative_is_removed(engine, policy):
    """PS3.15 E.3.5: a cleaned descriptor holds only words known to identify no one; narrative goes."""
    original, result, markers = _deid_planted("CT_small.dcm", engine, policy)
    out = result.dataset
    words = str(out.StudyDescription).split()  # the family and given name, the ID and the date: gone
    assert words[:2] == ["Follow-up", "of"] and set(words) <= {"Follow-up", "of", "on"}, words
    assert "ImageComments" not in out  # narrative: removed unless the policy keeps it
    kept = [t for t in markers.kept_text if t in out and out[t].VR not in ("SQ",)]
    assert kept, "the clean-descriptors option retains descriptors"
    for tag in kept:
        assert FAMILY not in str(out[tag].value)
    assert result.counts["scrubbed"] >= len(kept)


def test_without_clean_descriptors_descriptors_are_removed(tmp_path):
    policy = policy_with(tmp_path, deid_options={"clean_descriptors": False})
    ds = read("CT_small.dcm")
    ds.StudyDescription, ds.SeriesDescription = "Chest", "Axial"
    out = Deidentifier(policy, KEY).deidentify(ds).dataset
    assert "StudyDescription" not in out and "SeriesDescription" not in out
    codes = {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert "113105" not in codes and "113107" in codes


def test_pixel_data_is_byte_identical_when_nothing_is_masked(engine):
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "rtdose.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        ds = read(name)
        before = ds.PixelData
        result = engine.deidentify(ds)
        assert not result.masked and not result.needs_review, name
        assert reread(result.dataset).PixelData == before, name


def test_overlays_and_curves_are_removed(engine):
    ds = read("examples_overlay.dcm")
    assert 0x60003000 in ds
    ds.add_new(0x50003000, "OW", b"\x01\x02" * 8)
    out = engine.deidentify(ds).dataset
    assert 0x60003000 not in out and 0x50003000 not in out
    assert 0x60000010 in out  # overlay rows are not in the table: kept


def test_identity_removal_is_recorded(engine):
    out = reread(engine.deidentify(read("MR_small.dcm")).dataset)
    assert out.PatientIdentityRemoved == "YES"
    assert "2024b" in out.DeidentificationMethod[0]
    codes = {(i.CodingSchemeDesignator, i.CodeValue) for i in out.DeidentificationMethodCodeSequence}
    assert {("DCM", "113100"), ("DCM", "113105"), ("DCM", "113107"), ("DCM", "113111")} <= codes
    assert ("DCM", "113109") not in codes and ("DCM", "113112") not in codes  # device/institution not retained
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_media_storage_sop_instance_uid_follows_the_sop_instance_uid(engine):
    ds = read("CT_small.dcm")
    old = ds.file_meta.MediaStorageSOPInstanceUID
    out = engine.deidentify(ds).dataset
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == engine.uid(old)


# -- consistency: UIDs, pseudonyms, dates ---------------------------------------------------


def _study(n: int) -> list[Dataset]:
    """n instances of one study and series: CT_small copies with their own SOP Instance UIDs,
    each referencing the previous one."""
    out = []
    for i in range(n):
        ds = read("CT_small.dcm")
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.4242.{i}"
        if i:
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.4242.{i - 1}"
            ds.ReferencedImageSequence = Sequence([ref])
        out.append(ds)
    return out


def test_uids_stay_consistent_within_a_study_and_across_batches(policy):
    first, second = Deidentifier(policy, KEY), Deidentifier(policy, KEY)  # two batches, same key
    a = [first.deidentify(ds).dataset for ds in _study(3)]
    b = [second.deidentify(ds).dataset for ds in _study(3)]
    assert len({d.StudyInstanceUID for d in a + b}) == 1
    assert len({d.SeriesInstanceUID for d in a + b}) == 1
    assert len({d.FrameOfReferenceUID for d in a + b}) == 1
    assert len({d.SOPInstanceUID for d in a}) == 3
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    for prev, cur in zip(a, a[1:], strict=False):
        assert cur.ReferencedImageSequence[0].ReferencedSOPInstanceUID == prev.SOPInstanceUID
    for d in a:
        for uid in (d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID):
            assert UID_RE.match(uid) and len(uid) <= 64
    other = Deidentifier(policy, OTHER_KEY).deidentify(_study(1)[0]).dataset
    assert other.StudyInstanceUID != a[0].StudyInstanceUID


def test_sop_class_and_transfer_syntax_uids_are_kept(engine):
    ds = read("CT_small.dcm")
    cls, ts = ds.SOPClassUID, ds.file_meta.TransferSyntaxUID
    out = engine.deidentify(ds).dataset
    assert out.SOPClassUID == cls and out.file_meta.TransferSyntaxUID == ts


def test_patient_pseudonym_is_keyed_and_consistent(policy):
    def pid(key, value="ZQPID-1", issuer=None):
        ds = read("MR_small.dcm")
        ds.PatientID = value
        if issuer:
            ds.IssuerOfPatientID = issuer
        return Deidentifier(policy, key).deidentify(ds).dataset.PatientID

    import hashlib

    p = pid(KEY)
    assert p == pid(KEY) and p.startswith("IL") and "ZQPID" not in p
    assert p != pid(OTHER_KEY)
    assert p != pid(KEY, "ZQPID-2")
    assert p != pid(KEY, issuer="OTHER HOSPITAL")  # the same number from another issuer is another patient
    for h in (hashlib.sha256(b"ZQPID-1").hexdigest(), hashlib.md5(b"ZQPID-1").hexdigest()):
        assert p.lower() not in h and h[:16] not in p.lower()


def test_dates_shift_per_patient_consistently_and_keep_intervals(policy):
    from datetime import date

    def d(s):
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))

    def run(key, patient, study_date, birth="19700101"):
        ds = read("MR_small.dcm")
        ds.PatientID, ds.StudyDate, ds.PatientBirthDate = patient, study_date, birth
        ds.AcquisitionDateTime = study_date + "101500.5+0100"
        return Deidentifier(policy, key).deidentify(ds)

    r1, r2 = run(KEY, "P1", "20200101"), run(KEY, "P1", "20210615")
    shift = int(r1.reid.original("DateShiftDays"))
    assert 1 <= shift <= policy.deid_options.date_shift_max_days
    assert (d("20200101") - d(r1.dataset.StudyDate)).days == shift
    assert (d(r2.dataset.StudyDate) - d(r1.dataset.StudyDate)).days == (d("20210615") - d("20200101")).days
    assert r1.dataset.PatientBirthDate == ""  # Annex E has no modified-dates option for the birth date: Z
    assert r1.dataset.AcquisitionDateTime.endswith("101500.5+0100")
    assert r1.dataset.AcquisitionDateTime[:8] == r1.dataset.StudyDate
    assert run(KEY, "P1", "20200101").dataset.StudyDate == r1.dataset.StudyDate  # next batch
    shifts = {int(run(KEY, f"P{i}", "20200101").reid.original("DateShiftDays")) for i in range(2, 8)}
    assert len(shifts) > 1  # different patients, different shifts


def test_without_modified_dates_dates_are_emptied_or_removed(tmp_path):
    policy = policy_with(tmp_path, deid_options={"retain_longitudinal_modified_dates": False})
    ds = read("MR_small.dcm")
    ds.StudyDate = ds.ContentDate = "20200101"
    out = Deidentifier(policy, KEY).deidentify(ds).dataset
    assert out.StudyDate == ""  # Z
    assert out.ContentDate == "19000101"  # Z/D: kept present with a dummy
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


# -- options --------------------------------------------------------------------------------


def test_institution_and_device_identity_are_removed_unless_retained(tmp_path, engine):
    def with_ids():
        ds = read("CT_small.dcm")
        ds.InstitutionName, ds.DeviceSerialNumber, ds.StationName = "ZQ HOSPITAL", "ZQSN123", "ZQSTATION"
        return ds

    out = engine.deidentify(with_ids()).dataset
    assert "ZQ" not in str(out.get("InstitutionName", "")) + str(out.get("DeviceSerialNumber", ""))
    policy = policy_with(tmp_path, deid_options={"retain_institution_identity": True, "retain_device_identity": True})
    out = Deidentifier(policy, KEY).deidentify(with_ids()).dataset
    assert out.InstitutionName == "ZQ HOSPITAL" and out.DeviceSerialNumber == "ZQSN123"
    codes = {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert {"113109", "113112"} <= codes


def test_patient_characteristics_are_kept_only_with_the_option(tmp_path, engine):
    def ds():
        d = read("MR_small.dcm")
        d.PatientSex, d.PatientAge, d.PatientWeight = "F", "045Y", "61"
        return d

    out = engine.deidentify(ds()).dataset
    assert out.get("PatientSex", "") == "" and "PatientAge" not in out and "PatientWeight" not in out
    policy = policy_with(tmp_path, deid_options={"retain_patient_characteristics": True})
    out = Deidentifier(policy, KEY).deidentify(ds()).dataset
    assert (out.PatientSex, out.PatientAge, float(out.PatientWeight)) == ("F", "045Y", 61.0)


# -- private elements ------------------------------------------------------------------------


def test_private_elements_are_removed_unless_on_the_safe_list(engine):
    ds = read("CT_small.dcm")
    assert any(e.tag.is_private for e in ds)
    out = engine.deidentify(ds).dataset
    assert not any(e.tag.is_private for e in out.iterall())
    nested = engine.deidentify(read("nested_priv_SQ.dcm")).dataset
    assert not any(e.tag.is_private for e in nested.iterall())


def test_safe_private_elements_are_kept_by_creator_not_block_and_still_cleaned(engine):
    ds = read("MR_small.dcm")
    ds.PatientName = f"{FAMILY}^X"
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")  # B_value: on the default safe list
    block.add_new(0x0D, "CS", f"DIR {FAMILY}")  # safe, but holds a name: cleaned
    block.add_new(0x99, "LO", "ZQUNSAFE")  # same block, not safe
    other = ds.private_block(0x0019, "ZQ VENDOR", create=True)
    other.add_new(0x0C, "IS", "7")  # same element number, other creator: not safe
    out = reread(engine.deidentify(ds).dataset)
    kept = out.private_block(0x0019, "SIEMENS MR HEADER")
    assert kept[0x0C].value == 1000
    assert FAMILY not in str(kept[0x0D].value)
    assert 0x99 not in kept
    assert b"ZQUNSAFE" not in to_bytes(out) and b"ZQ VENDOR" not in to_bytes(out)
    codes = {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert "113111" in codes


# -- burned-in text -------------------------------------------------------------------------


def test_images_that_may_carry_burned_in_text_are_held_for_review(engine):
    sc = engine.deidentify(read("SC_rgb_rle_2frame.dcm"))
    assert sc.needs_review and sc.review_reason.startswith("burned-in:")
    flagged = read("MR_small.dcm")
    flagged.BurnedInAnnotation = "YES"
    r = engine.deidentify(flagged)
    assert (r.needs_review, r.review_reason) == (True, "burned-in:annotation-flag:no-mask")
    assert r.summary()["status"] == "needs-review"
    dx = read("CT_small.dcm")
    dx.Modality, dx.ImageType = "DX", ["DERIVED", "SECONDARY"]
    assert engine.deidentify(dx).review_reason == "burned-in:rule:secondary-radiograph:no-mask"
    rtplan = engine.deidentify(read("rtplan.dcm"))  # no pixels, nothing to burn in
    assert not rtplan.needs_review and rtplan.burned_in is None


def test_a_policy_mask_blanks_its_region_and_nothing_else(tmp_path):
    import numpy as np

    policy = policy_with(
        tmp_path,
        burned_in={
            "modalities": ["CT"],
            "masks": [{"id": "ct-top", "modality": "CT", "rows": 128, "columns": 128,
                       "regions": [{"x": 10, "y": 0, "width": 50, "height": 12}]}],
        },
    )
    engine = Deidentifier(policy, KEY)
    ds = read("CT_small.dcm")
    before = ds.pixel_array.copy()
    result = engine.deidentify(ds)
    assert result.masked and not result.needs_review and result.burned_in == "burned-in:modality"
    after = reread(result.dataset).pixel_array
    assert (after[0:12, 10:60] == 0).all()
    outside = np.ones_like(before, dtype=bool)
    outside[0:12, 10:60] = False
    assert (after[outside] == before[outside]).all()
    assert "113101" in {i.CodeValue for i in result.dataset.DeidentificationMethodCodeSequence}
    # a compressed image cannot be masked without re-encoding: it is held instead
    rle = read("MR_small_RLE.dcm")
    rle.Modality, rle.Rows, rle.Columns = "CT", 128, 128
    r = engine.deidentify(rle)
    assert r.needs_review and r.review_reason == "burned-in:modality:mask-unsupported:compressed"


# -- the re-identification map ------------------------------------------------------------------


def test_reid_map_holds_the_originals_and_never_leaks_them(engine, policy):
    original, result, _ = _deid_planted("CT_small.dcm", engine, policy)
    reid = result.reid
    assert reid.original("PatientID") == PATIENT_ID
    assert reid.pseudonym("PatientID") == result.dataset.PatientID
    assert reid.original("SOPInstanceUID") == original.SOPInstanceUID
    assert reid.pseudonym("SOPInstanceUID") == result.dataset.SOPInstanceUID
    assert reid.pseudonym("AccessionNumber") == result.dataset.StudyInstanceUID
    assert FAMILY in reid.original("PatientName")
    for text in (repr(reid), str(reid), repr(reid.entries[0]), repr(result), json.dumps(result.summary())):
        assert FAMILY not in text and PATIENT_ID not in text and original.SOPInstanceUID not in text
    with pytest.raises(TypeError):
        pickle.dumps(reid)
    with pytest.raises(TypeError):
        copy.deepcopy(reid)
    again = ReidMap.from_bytes(reid.to_bytes())
    assert again.original("PatientID") == PATIENT_ID and len(again) == len(reid)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "make", "reason"),
    [
        ("garbage", lambda p: p.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64), "unreadable:"),
        ("text", lambda p: p.write_text("PatientName=ZQFAMILY\n"), "unreadable:not-dicom"),
        ("empty", lambda p: p.write_bytes(b""), "unreadable:"),
        ("truncated", lambda p: p.write_bytes(sample_path("CT_small.dcm").read_bytes()[:1000]), "unreadable:truncated"),
        ("missing", lambda p: None, "unreadable:missing"),
        ("folder", lambda p: p.mkdir(), "unreadable:not-a-readable-file"),
    ],
)
def test_unreadable_input_is_reported_with_a_reason_and_nothing_is_written(engine, tmp_path, kind, make, reason):
    src = tmp_path / f"{kind}.dcm"
    make(src)
    dst = tmp_path / "out"
    dst.mkdir()
    with pytest.raises(DeidError) as e:
        engine.deidentify_path(src, dst)
    assert e.value.reason.startswith(reason)
    assert "ZQFAMILY" not in str(e.value) and e.value.__cause__ is None
    assert list(dst.iterdir()) == []


def test_a_value_the_engine_cannot_handle_fails_with_a_code_not_a_value(engine):
    ds = read("rtplan.dcm")
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds["ReferencedImageSequence"]._value = b"ZQFAMILY not a sequence"  # damaged in a way pydicom would not catch
    with pytest.raises(DeidError) as e:
        engine.deidentify(ds)
    assert e.value.reason.startswith("deid-failed:") and "ZQFAMILY" not in str(e.value)


def test_deidentify_path_writes_a_part10_file_named_by_its_new_uid(engine, tmp_path):
    result = engine.deidentify_path(sample_path("rtstruct.dcm"), tmp_path)  # no preamble or meta on input
    assert result.output_path.name == f"{result.dataset.SOPInstanceUID}.dcm"
    data = result.output_path.read_bytes()
    assert data[128:132] == b"DICM"
    assert not list(tmp_path.glob(".*.tmp"))


def test_key_must_be_long_enough(policy):
    with pytest.raises(ValueError, match="16 bytes"):
        Deidentifier(policy, b"short")


def test_in_place_false_leaves_the_input_alone(engine):
    ds = read("MR_small.dcm")
    name = str(ds.PatientName)
    result = engine.deidentify(ds, in_place=False)
    assert str(ds.PatientName) == name and result.dataset is not ds


def test_every_planted_vr_is_covered():
    """The planting helper covers every text, date and UID VR the table uses (guards the test itself)."""
    vrs = {dictionary_VR(a.tag) for a in load_table().attributes if a.tag is not None}
    assert {"PN", "LO", "SH", "DA", "DT", "UI", "LT", "ST", "UT", "AE", "CS"} <= vrs


@pytest.mark.parametrize("planar", [0, 1])
def test_masks_cover_every_frame_and_colour_layout(tmp_path, planar):
    import numpy as np

    masks = [
        {"id": "dose", "modality": "RTDOSE", "rows": 10, "columns": 10,
         "regions": [{"x": 2, "y": 1, "width": 3, "height": 2}]},
        {"id": "sc", "modality": "OT", "rows": 3, "columns": 3, "regions": [{"x": 1, "y": 1, "width": 2, "height": 1}]},
    ]  # fmt: skip
    policy = policy_with(tmp_path, burned_in={"modalities": ["RTDOSE", "OT"], "masks": masks})
    engine = Deidentifier(policy, KEY)

    dose = read("rtdose.dcm")  # 15 frames of 32-bit samples
    before = dose.pixel_array.copy()
    after = reread(engine.deidentify(dose).dataset).pixel_array
    assert (after[:, 1:3, 2:5] == 0).all() and (after[:, 3:, :] == before[:, 3:, :]).all()

    rgb = read("SC_rgb_small_odd.dcm")  # 3 samples per pixel
    if planar:
        arr = rgb.pixel_array
        rgb.PlanarConfiguration = 1
        rgb.PixelData = np.ascontiguousarray(arr.transpose(2, 0, 1)).tobytes() + b"\x00"
    before = rgb.pixel_array.copy()
    result = engine.deidentify(rgb)
    assert result.masked
    after = reread(result.dataset).pixel_array
    assert (after[1, 1:3, :] == 0).all()
    keep = np.ones(before.shape[:2], dtype=bool)
    keep[1, 1:3] = False
    assert (after[keep] == before[keep]).all()
