"""Classification: each default tier, the rule id that decided it, and failing closed."""

from __future__ import annotations

import json
import logging

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging_lifecycle.classify import Classification, classify, classify_path, patient_age_years
from imaging_lifecycle.cli import main
from imaging_lifecycle.policy import load_policy

from deid_fixtures import default_policy_dict, read, sample_path, write_policy


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def adult(name: str, **attrs) -> Dataset:
    ds = read(name)
    ds.PatientAge = "045Y"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


CASES = {
    # name: (file, attributes, kwargs, tier, rule)
    "L1 de-identified phantom": ("MR_small.dcm", {"StudyDescription": "PHANTOM QA weekly"}, {"deidentified": True}, 1,
                                 "l1-public-phantom"),
    "L2 de-identified derivative": ("CT_small.dcm", {}, {"deidentified": True}, 2, "l2-deidentified-derivative"),
    "L3 chest CT": ("CT_small.dcm", {"BodyPartExamined": "CHEST"}, {}, 3, "l3-chest-radiograph"),
    "L3 chest radiograph": ("CT_small.dcm", {"Modality": "DX", "BodyPartExamined": "chest"}, {}, 3,
                            "l3-chest-radiograph"),
    "L3 identified MR": ("MR_small.dcm", {}, {}, 3, "l3-identified-imaging"),
    "L3 RT plan": ("rtplan.dcm", {}, {}, 3, "l3-identified-imaging"),
    "L4 oncology": ("CT_small.dcm", {"StudyDescription": "ONCOLOGY restaging"}, {}, 4, "l4-restricted-topic"),
    "L4 burned-in annotation": ("CT_small.dcm", {"BurnedInAnnotation": "YES"}, {}, 4, "l4-burned-in-annotation"),
    "L5 HIV keyword": ("CT_small.dcm", {"StudyDescription": "HIV encephalopathy"}, {}, 5, "l5-special-disease"),
    "L5 psychiatric protocol": ("MR_small.dcm", {"ProtocolName": "psychiatry_research"}, {}, 5, "l5-psychiatric"),
    "L5 genetic": ("MR_small.dcm", {"StudyDescription": "Genetic syndrome"}, {}, 5, "l5-genetic"),
    "L5 minor by age": ("MR_small.dcm", {"PatientAge": "010Y"}, {}, 5, "l5-minor"),
    "L5 minor by age in months": ("MR_small.dcm", {"PatientAge": "018M"}, {}, 5, "l5-minor"),
    "L5 source": ("MR_small.dcm", {}, {"source": "PSYCH_PACS"}, 5, "l5-restricted-source"),
    "L5 stays L5 when de-identified": ("MR_small.dcm", {"StudyDescription": "HIV"}, {"deidentified": True}, 5,
                                       "l5-special-disease"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_default_tier_and_the_rule_that_decides_it(policy, case):
    name, attrs, kwargs, tier, rule = CASES[case]
    ds = adult(name, **attrs)
    assert classify(ds, policy, **kwargs) == Classification(tier, rule)


def test_minor_from_birth_date_when_age_is_absent(policy):
    ds = read("MR_small.dcm")
    ds.StudyDate = "20200601"
    ds.PatientBirthDate = "20100101"
    ds.pop("PatientAge", None)
    assert patient_age_years(ds) == pytest.approx(10.4, abs=0.1)
    assert classify(ds, policy).rule_id == "l5-minor"
    ds.PatientBirthDate = "19700101"
    assert classify(ds, policy).rule_id == "l3-identified-imaging"


def test_keywords_are_whole_words(policy):
    ds = adult("CT_small.dcm", StudyDescription="ARCHIVE RETRIEVAL^CHIVALRY", BodyPartExamined="CHEST")
    assert classify(ds, policy).rule_id == "l3-chest-radiograph"  # no HIV inside ARCHIVE, no STD inside words
    ds.StudyDescription = "HEAD^HIV_FOLLOWUP"
    assert classify(ds, policy).rule_id == "l5-special-disease"


def test_first_match_wins_so_l5_topics_beat_everything(policy):
    ds = adult("CT_small.dcm", StudyDescription="ONCOLOGY HIV", BodyPartExamined="CHEST", BurnedInAnnotation="YES")
    assert classify(ds, policy) == Classification(5, "l5-special-disease")


def test_the_identity_removed_flag_alone_does_not_lower_a_tier(policy):
    ds = adult("CT_small.dcm", PatientIdentityRemoved="YES")
    assert classify(ds, policy).tier >= 3


def test_procedure_codes_and_sop_class_rules(tmp_path):
    data = default_policy_dict()
    data["classification"]["rules"][:0] = [
        {"id": "l5-code", "tier": 5, "match": {"procedure_codes": ["99LOCAL:HIV1"]}},
        {"id": "l4-rtplan", "tier": 4, "match": {"sop_class": ["RTPlanStorage"]}},
    ]
    policy = load_policy(write_policy(tmp_path, data))
    ds = adult("MR_small.dcm")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "HIV1", "99LOCAL", "x"
    ds.ProcedureCodeSequence = Sequence([code])
    assert classify(ds, policy) == Classification(5, "l5-code")
    code.CodingSchemeDesignator = "OTHER"
    assert classify(ds, policy) == Classification(3, "l3-identified-imaging")
    assert classify(read("rtplan.dcm"), policy) == Classification(4, "l4-rtplan")


def test_fail_closed_unreadable(policy):
    assert classify(None, policy) == Classification(5, "fail-closed:unreadable")


def test_fail_closed_when_no_rule_matches(policy):
    assert classify(read("nested_priv_SQ.dcm"), policy) == Classification(5, "fail-closed:no-match")
    assert classify(adult("CT_small.dcm", Modality="ZZ"), policy) == Classification(5, "fail-closed:no-match")
    assert classify(Dataset(), policy).rule_id == "fail-closed:no-match"


def test_fail_closed_when_headers_cannot_be_evaluated(tmp_path):
    data = default_policy_dict()
    data["classification"]["rules"].insert(0, {"id": "code", "tier": 5, "match": {"procedure_codes": ["X"]}})
    policy = load_policy(write_policy(tmp_path, data))
    ds = adult("MR_small.dcm")
    ds.add_new(0x00081032, "LO", "not a sequence")  # ProcedureCodeSequence with the wrong VR
    assert classify(ds, policy) == Classification(5, "fail-closed:malformed")


def test_classify_path_fails_closed_on_unreadable_files(policy, tmp_path):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 200 + b"this is not DICOM")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(sample_path("CT_small.dcm").read_bytes()[:1000])  # ends inside a header value
    for p in (garbage, empty, cut, tmp_path / "missing.dcm", tmp_path):
        assert classify_path(p, policy) == Classification(5, "fail-closed:unreadable")


def test_classify_path_reads_headers_only(policy):
    # MR_truncated's pixel data is cut short; the headers are all a classifier needs.
    assert classify_path(sample_path("MR_truncated.dcm"), policy).rule_id == "l3-identified-imaging"
    # rtstruct.dcm has no preamble and no file meta: still readable.
    assert classify_path(sample_path("rtstruct.dcm"), policy).rule_id == "l3-identified-imaging"


def test_cli_prints_one_json_object_per_file(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("MR_small.dcm", "rtplan.dcm"):
        (folder / name).write_bytes(sample_path(name).read_bytes())
    (folder / "junk.dcm").write_bytes(b"junk")
    assert main(["classify", str(folder), str(sample_path("nested_priv_SQ.dcm")), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["tier"], line["rule"]) for line in lines] == [
        (3, "l3-identified-imaging"),
        (5, "fail-closed:unreadable"),
        (3, "l3-identified-imaging"),
        (5, "fail-closed:no-match"),
    ]
    assert set(lines[0]) == {"path", "tier", "rule"}


def test_cli_source_and_deidentified_flags(capsys):
    f = str(sample_path("MR_small.dcm"))
    main(["classify", f, "--json", "--source", "PSYCH_PACS"])
    main(["classify", f, "--json", "--deidentified"])
    out = [json.loads(line)["rule"] for line in capsys.readouterr().out.splitlines()]
    assert out == ["l5-restricted-source", "l2-deidentified-derivative"]


def test_cli_rejects_a_bad_policy(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\n")
    assert main(["classify", str(sample_path("MR_small.dcm")), "--policy", str(bad)]) == 2
    assert "invalid policy" in capsys.readouterr().err


def test_pydicom_messages_are_silenced_while_patient_data_is_handled(caplog):
    import warnings

    from pydicom.misc import warn_and_log

    from imaging_lifecycle.dicomfile import quiet_pydicom

    caplog.set_level(logging.DEBUG, logger="pydicom")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_pydicom():
            warn_and_log("Invalid value for VR PN: 'ZQFAMILY^ZQGIVEN'")  # how pydicom reports bad values
        assert "ZQFAMILY" not in caplog.text and not seen
        warn_and_log("outside: still reported")
    assert "outside" in caplog.text and len(seen) == 1
