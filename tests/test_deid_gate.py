"""The validation gate after de-identification: passes engine output, fails each kind of leak."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from imaging_lifecycle.deid import Deidentifier, effective_actions
from imaging_lifecycle.gates import GateFailed
from imaging_lifecycle.gates.deid import COLUMNS, build_rows, check, check_and_enforce
from imaging_lifecycle.policy import load_policy

from deid_fixtures import FAMILY, KEY, clone, plant, read

NAMES = ("CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm", "test-SR.dcm", "rtdose.dcm")


@pytest.fixture(scope="module")
def policy():
    return load_policy()


@pytest.fixture(scope="module")
def pairs(policy):
    engine, out = Deidentifier(policy, KEY), []
    for name in NAMES:
        ds = read(name)
        plant(ds, effective_actions(policy.deid_options))
        out.append((name, ds, engine.deidentify(ds, in_place=False).dataset))
    return out


def _one(policy, original, output) -> dict:
    (row,) = build_rows([(original, output)], policy)
    return row


def test_gate_passes_engine_output(policy, pairs):
    result = check(pairs, policy)
    assert result.success, result.summary()
    assert result.rows == len(NAMES)


def _tampered(pairs, change):
    name, original, output = pairs[0]
    bad = clone(output)
    change(original, bad)
    return original, bad


TAMPERS = {
    "x-attribute-restored": (
        lambda o, b: b.add_new(0x00081070, "PN", o.OperatorsName),  # X
        "xzd_original_values",
    ),
    "d-attribute-restored": (lambda o, b: setattr(b, "InstitutionName", o.InstitutionName), "xzd_original_values"),
    "name-in-a-kept-descriptor": (
        lambda o, b: setattr(b, "SeriesDescription", f"axial {FAMILY.lower()}"),
        "identifying_strings",
    ),
    "name-in-a-nested-item": (
        lambda o, b: setattr(b.ReferencedImageSequence[0].AnatomicRegionSequence[0], "CodeMeaning", FAMILY),
        "identifying_strings",
    ),
    "id-in-a-safe-private-element": (
        lambda o, b: b.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0D, "CS", "ZQPID4711"),
        "identifying_strings",
    ),
    "date-in-free-text": (lambda o, b: setattr(b, "SeriesDescription", "done 19770707"), "identifying_strings"),
    "date-restored": (lambda o, b: setattr(b, "StudyDate", o.StudyDate), "dates_unchanged"),
    "uid-restored": (lambda o, b: setattr(b, "StudyInstanceUID", o.StudyInstanceUID), "uids_unchanged"),
    "nested-uid-restored": (
        lambda o, b: setattr(
            b.ReferencedImageSequence[0], "ReferencedSOPInstanceUID",
            o.ReferencedImageSequence[0].ReferencedSOPInstanceUID,
        ),
        "uids_unchanged",
    ),
    "uid-copied-elsewhere": (lambda o, b: b.add_new(0x0040A124, "UI", o.SeriesInstanceUID), "uids_unchanged"),
    "unsafe-private-element": (
        lambda o, b: b.private_block(0x0029, "SOME VENDOR", create=True).add_new(0x01, "DS", "1.5"),
        "unsafe_private",
    ),
    "identity-flag-missing": (lambda o, b: delattr(b, "PatientIdentityRemoved"), "identity_removed_recorded"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_each_kind_of_leak_is_caught(policy, pairs, case):
    change, column = TAMPERS[case]
    row = _one(policy, *_tampered(pairs, change))
    bad = {k for k, v in row.items() if k != "object" and v not in (0, False)} - {"identity_removed_recorded"}
    if column == "identity_removed_recorded":
        assert row[column] is False
    else:
        assert column in bad, row
        # a restored identifying attribute is also an identifying string, and a detector rule may find it
        # too; other leaks show in one column only
        assert bad <= {column, "identifying_strings", "identifiers_detected"}, row


def test_pixel_change_is_caught_unless_pixel_cleaning_is_recorded(policy, pairs):
    def flip(o, b):
        data = bytearray(b.PixelData)
        data[100] ^= 0xFF
        b.PixelData = bytes(data)

    original, bad = _tampered(pairs, flip)
    assert _one(policy, original, bad)["pixel_changed_unexpectedly"] is True
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113101", "DCM", "Clean Pixel Data Option"
    bad.DeidentificationMethodCodeSequence.append(item)
    assert _one(policy, original, bad)["pixel_changed_unexpectedly"] is False
    del bad.PixelData
    bad.DeidentificationMethodCodeSequence.pop()
    assert _one(policy, original, bad)["pixel_changed_unexpectedly"] is True


def test_a_batch_with_one_leak_fails_and_says_where_without_values(policy, pairs):
    original, bad = _tampered(pairs, TAMPERS["name-in-a-nested-item"][0])
    batch = [*pairs[1:], ("leaky", original, bad)]
    result = check(batch, policy)
    assert not result.success
    assert [(f.column, f.unexpected_count) for f in result.failures] == [("identifying_strings", 1)]
    with pytest.raises(GateFailed) as e:
        check_and_enforce(batch, policy)
    assert "identifying_strings" in str(e.value) and FAMILY not in str(e.value)


def test_rows_hold_counts_and_flags_only(policy, pairs):
    rows = build_rows([(o, d) for _, o, d in pairs], policy)
    for row in rows:
        assert list(row) == COLUMNS
        assert all(isinstance(v, (int, bool)) for k, v in row.items() if k != "object")
        assert row["object"].isdigit()


def test_an_empty_batch_fails(policy):
    assert not check([], policy).success


def test_the_gate_reads_files_too(policy, tmp_path):
    from deid_fixtures import sample_path

    engine = Deidentifier(policy, KEY)
    src = sample_path("MR_small.dcm")
    result = engine.deidentify_path(src, tmp_path)
    assert build_rows([("mr", src, result.output_path)], policy)[0]["identifying_strings"] == 0
    # the original itself, presented as "de-identified", fails on every count
    (row,) = build_rows([(src, src)], policy)
    assert row["xzd_original_values"] and row["identifying_strings"] and row["uids_unchanged"]
    assert row["identity_removed_recorded"] is False
