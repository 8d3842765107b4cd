"""Free text per PS3.15 E.3.5: identifiers that appear nowhere else in the header do not survive.

Real pydicom test files, with free-text attributes planted in English and in
Chinese under GB18030 and ISO 2022 IR 58 (GB 2312 behind escape sequences).
Each detector rule is tried with a hit and a near-miss.
"""

from __future__ import annotations

import io

import pydicom
import pytest

from imaging_lifecycle.deid import Deidentifier, detectors
from imaging_lifecycle.deid.free_text import clean_descriptor
from imaging_lifecycle.dicomfile import decode_text, encode_text
from imaging_lifecycle.policy import load_policy

from conftest import write_policy

KEY = b"k" * 32

# Identifiers a person typed: a relative's name and mobile, a previous hospital, an address, a resident ID.
ZH = {
    "relative": "家属王小明",
    "mobile": "13912345678",
    "hospital": "北京协和医院",
    "address": "北京市海淀区中关村大街27号",
    "resident_id": "11010519491231002X",
}
EN = {
    "relative": "Mrs. Eleanor Rigby",
    "mobile": "+44 20 7946 0958",
    "hospital": "Saint Mary Hospital",
    "email": "eleanor.rigby@example.org",
    "resident_id": "11010519491231002X",
}
CHARSETS = {"GB18030": "GB18030", "ISO 2022 IR 58": ["", "ISO 2022 IR 58"], "ISO_IR 192": "ISO_IR 192"}


def _encoded(charset) -> list[str]:
    from pydicom.charset import convert_encodings

    return convert_encodings([charset] if isinstance(charset, str) else charset)


def _planted(charset, words: dict[str, str], chinese: bool):
    """CT_small.dcm with free text planted as a modality would write it, read back as a file."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = charset
    ds = pydicom.dcmread(io.BytesIO(_file_bytes(ds)))  # a file of that character set, so raw values stay raw
    if chinese:
        text = {"PatientComments": f"{words['relative']}陪同，电话{words['mobile']}",
                "AdditionalPatientHistory": f"曾于{words['hospital']}就诊，住{words['address']}",
                "ImageComments": f"身份证{words['resident_id']}",
                "StudyDescription": f"胸部正位 {words['relative']}"}
    else:
        text = {"PatientComments": f"Came with {words['relative']}, call {words['mobile']}",
                "AdditionalPatientHistory": f"Seen at {words['hospital']}, mail {words['email']}",
                "ImageComments": f"ID {words['resident_id']}",
                "StudyDescription": f"CT CHEST {words['relative']}"}
    for kw, value in text.items():  # raw bytes: pydicom writes ISO 2022 IR 58 without its escape sequences
        tag = tag_for_keyword(kw)
        raw = encode_text(value, _encoded(charset))
        raw += b" " * (len(raw) % 2)
        ds[tag] = RawDataElement(pydicom.tag.Tag(tag), dictionary_VR(tag), len(raw), raw, 0, False, True)
    return pydicom.dcmread(io.BytesIO(_file_bytes(ds)))  # as it arrives: a file in its own character set


def _text(data: bytes, keyword: str) -> str:
    """A text attribute of a file, decoded under the file's own character set as the engine reads it."""
    ds = pydicom.dcmread(io.BytesIO(data))
    raw = ds.get_item(pydicom.datadict.tag_for_keyword(keyword)).value
    return decode_text(raw, list(ds._character_set)).strip(" \x00")


def _file_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _encodings(text: str, charset) -> list[bytes]:
    return [text.encode("utf-8"), text.encode("gb18030"), encode_text(text, _encoded(charset))]


@pytest.mark.parametrize("charset_name", sorted(CHARSETS))
@pytest.mark.parametrize("language", ["zh", "en"])
def test_no_planted_free_text_identifier_survives_byte_for_byte(charset_name, language):
    charset = CHARSETS[charset_name]
    words = ZH if language == "zh" else EN
    ds = _planted(charset, words, chinese=language == "zh")
    before = _file_bytes(ds)
    assert any(e in before for e in _encodings(words["relative"], charset))  # the plant is really there
    result = Deidentifier(load_policy(), KEY).deidentify(ds)
    out = _file_bytes(result.dataset)
    for kind, text in words.items():
        for encoded in _encodings(text, charset):
            assert encoded not in out, (kind, charset_name)
    reread = pydicom.dcmread(io.BytesIO(out))
    reread.decode()  # still decodable under its own Specific Character Set
    for kw in ("PatientComments", "AdditionalPatientHistory", "ImageComments"):
        assert kw not in reread  # narrative: removed
    assert _text(out, "StudyDescription") == ("胸部正位" if language == "zh" else "CT CHEST")


def test_a_kept_narrative_is_scrubbed_by_the_detectors_under_its_charset(tmp_path):
    policy = load_policy(write_policy(tmp_path / "p.yaml",
                                      lambda d: d["deid_options"].update(keep_narrative=["PatientComments"])))
    for charset in (["", "ISO 2022 IR 58"], "GB18030"):
        ds = _planted(charset, ZH, chinese=True)
        out = Deidentifier(policy, KEY).deidentify(ds).dataset
        text = _text(_file_bytes(out), "PatientComments")
        assert text == "陪同，电话", (charset, text)  # the relative's name and the mobile are gone, the rest stays


def test_descriptors_made_only_of_vocabulary_words_survive_unchanged():
    for text in ("CT CHEST W/O CONTRAST", "T2 FLAIR AX 5mm", "胸部正位", "头颅平扫", "腹部 增强 动脉期",
                 "LEFT KNEE AP"):
        assert clean_descriptor(text) == text
    assert clean_descriptor("CT CHEST ZHANG SAN 20190305") == "CT CHEST"
    assert clean_descriptor("张三胸部正位") == "胸部正位"
    assert clean_descriptor("Иванов") == ""


RULES = {  # code: (a hit, a near-miss)
    "EMAIL": ("联系 zhang.san@example.com", "user at example dot com"),
    "URL": ("see https://example.org/x", "http is a protocol"),
    "RESIDENT_ID_18": ("身份证 11010519491231002X", "身份证 110105194912310021"),  # checksum valid / invalid
    "RESIDENT_ID_15": ("ID 110105491231002", "ID 110105491331002"),  # month 13: not a date
    "MOBILE": ("电话13812345678", "编号2013812345678999"),  # a phone number inside a longer number
    "LANDLINE": ("tel 010-62345678", "ref 10-62345678"),
    "PHONE_INTL": ("call +44 20 7946 0958", "dose +4 mg"),
    "PHONE_NANP": ("call (212) 555-0199", "range (212) 555"),
    "DATE_CN": ("2019年3月5日入院", "三年前入院"),
    "DATE_YMD": ("seen 2019-03-05", "seen 2019-13-05"),
    "DATE_DMY": ("seen 05/03/2019", "seen 05/13/2019"),
    "DATE_COMPACT": ("on 20190305", "on 20191305"),
    "AGE_OVER_89": ("患者92岁", "患者89岁"),
    "ADDRESS_CN": ("住北京市海淀区中关村大街27号", "右肺下叶结节"),
    "INSTITUTION": ("曾在北京协和医院就诊", "去医院"),
    "NAME_CUE_CN": ("家属王小明陪同", "家属 3人"),
    "NAME_CUE_EN": ("seen by Dr. Gregory House", "dr. who"),
}


@pytest.mark.parametrize("code", sorted(RULES))
def test_each_detector_rule_finds_its_hit_and_not_its_near_miss(code):
    hit, miss = RULES[code]
    assert code in detectors.codes(hit), hit
    assert detectors.codes(miss) == [], miss
    scrubbed, found = detectors.scrub(hit)
    assert code in found and detectors.codes(scrubbed) == []


def test_every_rule_is_tested():
    assert {r.code for r in detectors.RULES} == set(RULES)


def test_a_derivative_with_a_detected_identifier_fails_the_gate():
    """The gate's own detector column: an identifier in text the output kept fails that object."""
    from imaging_lifecycle.gates.deid import build_rows

    policy = load_policy()
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    out = Deidentifier(policy, KEY).deidentify(ds, in_place=False).dataset
    (clean,) = build_rows([(ds, out)], policy)
    assert clean["identifiers_detected"] == 0
    out.ContrastBolusAgent = "call 13912345678"  # text the engine would have cleaned, put back after it
    (leaky,) = build_rows([(ds, out)], policy)
    assert leaky["identifiers_detected"] == 1


@pytest.mark.parametrize("charset", ["ISO_IR 192", "GB18030"])
def test_every_component_group_of_the_patients_name_is_hunted_in_kept_text(tmp_path, charset):
    """Alphabetic and ideographic groups, and each as free text writes it (run together, or spaced)."""
    from pydicom.dataelem import RawDataElement

    policy = load_policy(write_policy(tmp_path / "p.yaml",
                                      lambda d: d["deid_options"].update(keep_narrative=["PatientComments"])))
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = charset
    ds = pydicom.dcmread(io.BytesIO(_file_bytes(ds)))
    # in GB18030 each of 王 and 东 is two bytes, under the minimum length alone: only the name run
    # together as free text writes it is long enough to hunt
    for tag, vr, value in ((0x00100010, "PN", "Wang^Dong=王^东"),
                           (0x00104000, "LT", "王东 came with Wang Dong's wife; Dong is fine")):
        raw = encode_text(value, _encoded(charset))
        raw += b" " * (len(raw) % 2)
        ds[tag] = RawDataElement(pydicom.tag.Tag(tag), vr, len(raw), raw, 0, False, True)
    ds = pydicom.dcmread(io.BytesIO(_file_bytes(ds)))
    out = _file_bytes(Deidentifier(policy, KEY).deidentify(ds).dataset)
    text = _text(out, "PatientComments")
    for name in ("王东", "Wang Dong", "Dong", "Wang"):
        assert name not in text, (name, text)
        for encoded in _encodings(name, charset):
            assert encoded not in out
    assert "came with" in text and "wife" in text  # the rest of the sentence stays
