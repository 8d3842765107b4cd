"""The policy: the packaged default, durations, and one test per kind of bad policy."""

from __future__ import annotations

from datetime import timedelta

import pytest

from imaging_lifecycle.policy import PolicyError, load_policy, parse_duration, parse_policy

from deid_fixtures import default_policy_dict, write_policy


def test_default_policy_has_five_gbt_39725_tiers():
    p = load_policy()
    assert p.schema_version == 1
    assert [t.level for t in p.tiers] == [1, 2, 3, 4, 5]
    assert [p.tier(n).name for n in range(1, 6)] == ["L1", "L2", "L3", "L4", "L5"]
    assert p.highest_tier == 5
    assert p.classification.identified_minimum_tier == 3
    assert p.tier(3).handling.deidentify and p.tier(3).handling.backup_required
    assert p.tier(5).handling.key_scope == "object"
    assert "working_copy" not in p.tier(5).handling.actions and "restore" in p.tier(5).handling.actions
    assert p.access.data_security_officers == ["dso"] and p.access.department("radiology").heads == ["radiology-head"]
    assert p.access.department_of("cstore:ANY_AE") == "radiology" and p.access.emergency.max_hours.seconds == 4 * 3600
    assert p.deid_options.retain_device_identity is False
    assert p.deid_options.retain_institution_identity is False
    assert p.safe_private_tags and p.burned_in.masks


def test_default_policy_is_what_load_policy_none_returns_and_has_a_stable_fingerprint(tmp_path):
    a, b = load_policy(), load_policy(write_policy(tmp_path, default_policy_dict()))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64


def test_retention_for_uses_the_tier_then_the_policy_default():
    p = load_policy()
    assert p.retention_for(3, "archive") == timedelta(days=15 * 365)
    assert p.retention_for(4, "cache") == timedelta(hours=24)  # tier's own
    assert p.retention_for(5, "cache") == timedelta(hours=72)  # policy default
    assert p.retention_for(3, "quarantine") == timedelta(days=30)
    assert p.retention_for(2, "research") == timedelta(days=3650)
    with pytest.raises(KeyError, match="unknown zone"):
        p.retention_for(3, "attic")
    with pytest.raises(KeyError, match="tier level 9"):
        p.tier(9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("72h", timedelta(hours=72)), ("30d", timedelta(days=30)), ("15y", timedelta(days=5475)),
     ("2w", timedelta(days=14))],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["1.5y", "-3d", "30 days", "0d", "72", "h", "3m", 72, None, "99999999d"])
def test_bad_durations_are_rejected(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def _bad(tmp_path, mutate) -> str:
    data = default_policy_dict()
    mutate(data)
    with pytest.raises(PolicyError) as e:
        load_policy(write_policy(tmp_path, data))
    return str(e.value)


def _tier(data, level):
    return next(t for t in data["tiers"] if t["level"] == level)


BAD_POLICIES = {
    "cache-over-72h-in-a-tier": (
        lambda d: _tier(d, 3)["handling"]["retention"].update(cache="96h"),
        ["tiers[2].handling.retention", "cache: 96h exceeds the hard maximum of 72h"],
    ),
    "cache-over-72h-default": (
        lambda d: d["retention"].update(cache="4d"),
        ["retention.cache", "exceeds the hard maximum of 72h"],
    ),
    "misspelt-key": (lambda d: d.update(retension=d.pop("retention")), ["retension", "unknown key"]),
    "missing-schema-version": (lambda d: d.pop("schema_version"), ["schema_version", "missing"]),
    "unsupported-schema-version": (lambda d: d.update(schema_version=2), ["schema_version", "unsupported"]),
    "unknown-zone": (
        lambda d: _tier(d, 1)["handling"]["zones"].append("attic"), ["tiers[0].handling.zones[1]", "attic"]
    ),
    "bad-duration": (
        lambda d: _tier(d, 3)["handling"]["retention"].update(archive="15 years"),
        ["tiers[2].handling.retention.archive", "15 years"],
    ),
    "retention-for-a-zone-the-tier-lacks": (
        lambda d: _tier(d, 1)["handling"]["retention"].update(archive="1y"),
        ["tiers[0].handling", "'archive' is not one of this tier's zones"],
    ),
    "backup-required-without-backup-zone": (
        lambda d: _tier(d, 2)["handling"].update(backup_required=True),
        ["tiers[1].handling", "backup_required"],
    ),
    "unknown-tier-action": (
        lambda d: _tier(d, 3)["handling"]["actions"].append("launch"),
        ["tiers[2].handling.actions[6]", "launch"],
    ),
    "working-copy-without-cache-zone": (
        lambda d: _tier(d, 5)["handling"]["actions"].append("working_copy"),
        ["tiers[4].handling", "working_copy needs 'cache'"],
    ),
    "unknown-requester-action": (
        lambda d: d["access"]["requesters"].update(peek=["clinician"]),
        ["access.requesters", "peek"],
    ),
    "default-department-undeclared": (
        lambda d: d["access"].update(default_department="cardiology"),
        ["access", "default_department", "cardiology"],
    ),
    "source-in-two-departments": (
        lambda d: d["access"]["departments"].extend([{"id": "a", "heads": ["x"], "sources": ["AE1"]},
                                                     {"id": "b", "heads": ["y"], "sources": ["AE1"]}]),
        ["access", "AE1"],
    ),
    "emergency-too-long": (
        lambda d: d["access"]["emergency"].update(max_hours="48h"),
        ["access.emergency.max_hours", "1 to 12 hours"],
    ),
    "identified-rule-below-minimum-tier": (
        lambda d: d["classification"]["rules"].append({"id": "cheap-ct", "tier": 2, "match": {"modality": ["CT"]}}),
        ["classification.rules[11] (cheap-ct).tier", "below identified_minimum_tier 3"],
    ),
    "rule-without-conditions": (
        lambda d: d["classification"]["rules"].append({"id": "all", "tier": 3, "match": {}}),
        ["classification.rules[11].match", "at least one condition"],
    ),
    "duplicate-rule-id": (
        lambda d: d["classification"]["rules"].append(dict(d["classification"]["rules"][0])),
        ["l5-special-disease", "duplicate rule id"],
    ),
    "rule-for-undeclared-tier": (
        lambda d: d["classification"]["rules"][0].update(tier=6),
        ["classification.rules[0].tier", "less than or equal to 5"],
    ),
    "tier-levels-with-a-gap": (lambda d: _tier(d, 5).update(level=7), ["tiers[4].level"]),
    "tiers-without-level-2": (
        lambda d: d["tiers"].pop(1),
        ["tiers: levels must be 1..N"],
    ),
    "unknown-sop-class-keyword": (
        lambda d: d["burned_in"]["sop_classes"].append("NoSuchImageStorage"),
        ["burned_in.sop_classes", "NoSuchImageStorage"],
    ),
    "mask-outside-the-image": (
        lambda d: d["burned_in"]["masks"][0]["regions"].append({"x": 600, "y": 0, "width": 100, "height": 10}),
        ["burned_in.masks[0]", "regions[1] reaches outside"],
    ),
    "safe-private-tag-in-an-even-group": (
        lambda d: d["safe_private_tags"].append({"group": "0018", "creator": "X", "element": "01"}),
        ["safe_private_tags[6].group", "odd"],
    ),
    "empty-condition-list": (
        lambda d: d["classification"]["rules"][0]["match"].update(keywords=[]),
        ["classification.rules[0].match", "empty list"],
    ),
    "date-shift-out-of-range": (
        lambda d: d["deid_options"].update(date_shift_max_days=0),
        ["deid_options.date_shift_max_days"],
    ),
    "option-with-wrong-type": (
        lambda d: d["deid_options"].update(clean_descriptors="sometimes"),
        ["deid_options.clean_descriptors"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_each_kind_of_bad_policy_is_rejected_naming_the_key_and_the_problem(tmp_path, case):
    mutate, expected = BAD_POLICIES[case]
    message = _bad(tmp_path, mutate)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("schema_version: 1\ntiers: [\n  - level: 1\n")
    with pytest.raises(PolicyError, match=r"not valid YAML at line \d+"):
        load_policy(path)


@pytest.mark.parametrize("text", ["just a string", "- a\n- list", ""])
def test_a_document_that_is_not_a_mapping_is_rejected(text):
    with pytest.raises(PolicyError, match="must be a mapping"):
        parse_policy(text)


def test_a_missing_policy_file_raises_and_never_falls_back_to_the_default(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "dir.yaml")


def test_a_hospital_policy_can_change_tiers_options_and_rules(tmp_path):
    data = default_policy_dict()
    data["deid_options"].update(retain_patient_characteristics=True, clean_descriptors=False)
    data["retention"]["research"] = "1825d"
    data["classification"]["rules"].insert(
        0, {"id": "l5-local-code", "tier": 5, "match": {"procedure_codes": ["99LOCAL:HIV1"]}}
    )
    p = load_policy(write_policy(tmp_path, data))
    assert p.deid_options.retain_patient_characteristics and not p.deid_options.clean_descriptors
    assert p.retention_for(1, "cache") == timedelta(hours=72)
    assert p.retention.research == timedelta(days=1825)
    assert p.classification.rules[0].id == "l5-local-code"
    assert p.source.endswith("policy.yaml")


def test_research_retention_is_whole_days(tmp_path):
    assert "whole days" in _bad(tmp_path, lambda d: d["retention"].update(research="36h"))
