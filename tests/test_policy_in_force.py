"""One policy: a hospital's own policy file decides every stage, and a process under another policy is refused.

The custom policy moves chest imaging to tier 4 under a new rule id, and gives
tier 4 its own archive term (7 years), cache term (6 hours) and no backup.
The packaged default says tier 3, 15 years and 72 hours for the same objects,
and requires a backup of tier 4, so every assertion here fails if any stage
falls back to the default. The stages run through the real DAGs (dag.test()).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT, approved, make_zones, policy_tier, write_policy

SEVEN_YEARS = "2555d"


def _hospital_policy(doc: dict) -> None:
    rule = next(r for r in doc["classification"]["rules"] if r["id"] == "l3-chest-radiograph")
    rule.update(id="hospital-chest-l4", tier=4)
    policy_tier(doc, 4)["handling"].update(
        retention={"archive": SEVEN_YEARS, "backup": SEVEN_YEARS, "cache": "6h"}, backup_required=False)


@pytest.fixture
def hospital(airflow_db, object_store_settings, tmp_path, monkeypatch):
    """Everything the DAG tasks read from the environment, pointed at this test; the policy via IL_POLICY_FILE."""
    policy = write_policy(tmp_path / "hospital-policy.yaml", _hospital_policy)
    monkeypatch.setenv("IL_POLICY_FILE", str(policy))
    monkeypatch.setenv("IL_LANDING_DIR", str(tmp_path / "landing"))
    monkeypatch.setenv("IL_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    monkeypatch.setenv("IL_KEYSTORE_PATH", str(tmp_path / "keystore.sealed"))
    monkeypatch.setenv("IL_INGEST_QUIET_SECONDS", "0")
    # Buckets of its own: the sweeper anchors its deletions, and anchors belong to one platform's chain.
    monkeypatch.setenv("IL_BUCKET_PREFIX", f"il-h{os.urandom(4).hex()}-")
    (tmp_path / "landing").mkdir()
    from imaging_lifecycle import landing

    landing.ensure_identity(tmp_path / "landing")  # this process is the landing host (dag.test runs the claim here)
    from imaging_lifecycle.services import Services

    svc = Services.open()
    make_zones(svc.settings)
    return svc


def _dag(name: str, dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT / "dags" / f"{name}.py")).dags[dag_id]


def test_a_custom_policy_decides_classification_deadlines_cache_backup_and_sweep(hospital):
    from imaging_lifecycle.policy import load_policy
    from imaging_lifecycle.synthetic import Patient, write_study

    svc = hospital
    assert svc.policy.fingerprint != load_policy().fingerprint
    write_study(svc.settings.landing_dir / "chest", Patient("4711"), instances=2, modality="CT", body_part="CHEST")
    t0 = dt.datetime.now(dt.timezone.utc)
    assert _dag("ingest", "ingest").test().state == "success"
    assert _dag("protect", "protect").test().state == "success"

    cat = svc.catalog
    originals = [o for o in cat.objects() if not (o.source or "").startswith("derived:")]
    assert len(originals) == 2
    for o in originals:  # classification: the hospital's rule, recorded with its policy
        assert (o.tier, o.rule_id, o.policy_fingerprint) == (4, "hospital-chest-l4", svc.policy.fingerprint)
        # retention: the tier's own 7-year archive term, not the default's 30 years for tier 4
        assert abs(o.retention_deadline - (t0 + dt.timedelta(days=2555))) < dt.timedelta(minutes=10)
        # backup rule: tier 4 needs none here, so protect made none
        assert o.state == "STORED" and not [c for c in cat.copies(o.id) if c.zone == "backup"]
    assert cat.platform_policy() == svc.policy.fingerprint

    # cache cap: 72 hours asked is refused before anyone is asked; nothing asked gets the tier's 6
    from imaging_lifecycle import access

    target = originals[0]
    with pytest.raises(access.AccessRefused, match="at most 6"):
        approved(svc, "working_copy", [target.id], hours=72)
    rid = approved(svc, "working_copy", [target.id])
    assert access.fulfil(svc, rid, actor="system:test")["state"] == "FULFILLED"
    (cache,) = [c for c in cat.copies(target.id) if c.zone == "cache"]
    assert cache.deadline - cache.created_at <= dt.timedelta(hours=6, seconds=5)
    assert cache.deadline - cache.created_at >= dt.timedelta(hours=6) - dt.timedelta(seconds=5)

    # sweeper: eight years on, everything is past its 7-year term and no backup is required, so it goes
    later = t0 + dt.timedelta(days=8 * 365)
    assert _dag("sweeper", "sweeper").test(logical_date=later).state == "success"
    assert {cat.get(o.id).state for o in originals} == {"DELETED"}


def test_retrieve_refuses_a_tier_without_a_cache_zone_and_caps_hours(hospital, dicom_file):
    import shutil

    from imaging_lifecycle.access import AccessRefused
    from imaging_lifecycle.retention import retrieve

    from conftest import ingest_now

    svc = hospital
    shutil.copy(dicom_file("CT_small.dcm"), svc.settings.landing_dir / "a.dcm")
    shutil.copy(dicom_file("MR_small.dcm"), svc.settings.landing_dir / "b.dcm")
    ingest_now(svc.settings)
    (a, b) = [o.id for o in svc.catalog.objects()]
    for oid, tier in ((a, 5), (b, 4)):
        svc.catalog.transition(oid, "CLASSIFIED", tier=tier, rule_id="test", actor="test")
    with pytest.raises(AccessRefused, match="allows no working_copy") as refused:
        approved(svc, "working_copy", [a], hours=1)  # tier 5's zones exclude the cache
    assert refused.value.reason == "TIER_FORBIDS"
    assert not [c for c in svc.catalog.copies(a) if c.zone == "cache"]
    with pytest.raises(AccessRefused, match="at most 6") as refused:
        approved(svc, "working_copy", [b], hours=72)
    assert refused.value.reason == "HOURS_OVER_CAP"
    rid = approved(svc, "working_copy", [b])
    now = dt.datetime.now(dt.timezone.utc)
    grant = retrieve(svc, b, request_id=rid, actor="clinician", hours=72, now=now)
    deadline = svc.catalog.grant(grant.id)["deadline"]  # the tier's term, and never past the approval's end
    assert grant.hours == 6 and now + dt.timedelta(hours=6) - dt.timedelta(seconds=30) < deadline <= now + dt.timedelta(
        hours=6) and deadline <= svc.catalog.request(rid)["expires_at"]
    assert retrieve(svc, b, request_id=rid, actor="clinician", now=now).hours == 6  # the tier's whole term


def test_a_process_under_another_policy_refuses_guarded_actions(hospital, dicom_file, tmp_path):
    import shutil

    from imaging_lifecycle.services import PolicyMismatch, Services

    from conftest import ingest_now

    svc = hospital
    shutil.copy(dicom_file("CT_small.dcm"), svc.settings.landing_dir / "a.dcm")
    ingest_now(svc.settings)
    (oid,) = [o.id for o in svc.catalog.objects()]
    svc.guard("classify", actor="test")  # the first process records the platform's policy
    assert svc.catalog.platform_policy() == svc.policy.fingerprint

    from dataclasses import replace

    other = Services.open(replace(svc.settings, policy_file=None))  # the packaged default instead
    from imaging_lifecycle import protect, retention

    with pytest.raises(PolicyMismatch, match="refusing classify"):
        protect.classify_objects(other, [oid], actor="test/worker-2")
    with pytest.raises(PolicyMismatch):
        retention.set_legal_hold(other, oid, True, actor="test/worker-2")
    assert svc.catalog.get(oid).state == "VALIDATED" and not svc.catalog.get(oid).legal_hold
    alerts = [r for r in svc.catalog.audit.records() if r.action == "security.alert"]
    assert alerts and alerts[-1].detail["reason"] == "POLICY_MISMATCH"

    # The CLI, run without IL_POLICY_FILE, sees the mismatch; adopting its policy takes an approved
    # policy_change request whose target is exactly that policy: without one it is refused.
    import os

    env = {k: v for k, v in os.environ.items() if k != "IL_POLICY_FILE"}
    cli = str(PROJECT / ".venv" / "bin" / "imaging-lifecycle")
    r = subprocess.run([cli, "policy", "show"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and json.loads(r.stdout)["in_force"] is False
    r = subprocess.run([cli, "policy", "adopt"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "refused" in r.stderr and svc.catalog.platform_policy() == svc.policy.fingerprint
    from imaging_lifecycle.catalog import NotApproved

    wrong = approved(svc, "policy_change", [], requester="admin", policy_target="ab" * 32)
    with pytest.raises(NotApproved, match="another policy"):
        other.adopt_policy(request_id=wrong, actor="admin")
    rid = approved(svc, "policy_change", [], requester="admin", policy_target=other.policy.fingerprint)
    with pytest.raises(NotApproved, match="NOT_THE_REQUESTER"):
        other.adopt_policy(request_id=rid, actor="operator")
    other.adopt_policy(request_id=rid, actor="admin")
    assert svc.catalog.platform_policy() == other.policy.fingerprint
    assert svc.catalog.request(rid)["state"] == "FULFILLED"
    assert [x.actor for x in svc.catalog.audit.records() if x.action == "policy.adopt"][-1] == "admin"
    decided = {x.actor for x in svc.catalog.audit.records() if x.action == "access.decision"
               and x.detail["request"] == rid}
    assert decided == {"dso", "radiology-head"}  # two people approved the change
    with pytest.raises(PolicyMismatch):  # and now the hospital's own process is the one refused
        svc.guard("classify", actor="test")


def test_only_the_composition_root_loads_the_policy():
    """No stage, DAG or command reads a policy file or the packaged default on its own."""
    callers = []
    for root in ("include/imaging_lifecycle", "dags", "plugins"):
        for path in sorted((PROJECT / root).rglob("*.py")):
            rel = path.relative_to(PROJECT).as_posix()
            if rel.startswith("include/imaging_lifecycle/policy/") or rel.endswith(("/services.py", "/settings.py")):
                continue  # the policy package itself; the one loader; the one place the environment is read
            text = path.read_text()
            if "load_policy(" in text or re.search(r"environ[^\n]*IL_POLICY", text):
                callers.append(rel)
    assert callers == []
    assert "IL_POLICY_FILE" in Path(PROJECT / "include/imaging_lifecycle/settings.py").read_text()


GUARDED = {
    "classify": lambda m, svc, oid, tmp: m.protect.classify_objects(svc, [oid], actor="t"),
    "deidentify": lambda m, svc, oid, tmp: m.protect.deidentify_objects(svc, [oid], actor="t"),
    "store": lambda m, svc, oid, tmp: m.protect.store_objects(svc, [oid], actor="t"),
    "working_copy": lambda m, svc, oid, tmp: m.retention.retrieve(svc, oid, request_id=None, actor="t"),
    "read_grant": lambda m, svc, oid, tmp: m.retention.read_grant(svc, "0" * 32, tmp / "x.dcm", actor="t"),
    "legal_hold": lambda m, svc, oid, tmp: m.retention.set_legal_hold(svc, oid, True, actor="t"),
    "release_hold": lambda m, svc, oid, tmp: m.retention.set_legal_hold(svc, oid, False, actor="t"),
    "restore": lambda m, svc, oid, tmp: m.backup.restore_object(svc, oid, tmp / "x.dcm", request_id=None,
                                                                 actor="t"),
    "early_delete": lambda m, svc, oid, tmp: m.retention.delete_early(
        svc, oid, request_id=None, actor="t", now=dt.datetime.now(dt.timezone.utc)),
    "reidentify": lambda m, svc, oid, tmp: m.protect.reidentify(svc, oid, request_id=None, actor="t"),
    "access_request": lambda m, svc, oid, tmp: m.access.submit(
        svc, requester="clinician", action="working_copy", catalog_ids=[oid], purpose="treatment",
        justification="follow-up of a known finding"),
    "sweep": lambda m, svc, oid, tmp: m.deletion.sweep(svc, dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc),
                                                       actor="t"),
    "delete": lambda m, svc, oid, tmp: m.deletion.delete_candidates(
        svc, [oid], dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc), actor="t"),
}


@pytest.mark.parametrize("action", sorted(GUARDED))
def test_every_guarded_action_refuses_under_another_policy(hospital, dicom_file, tmp_path, action):
    import shutil
    import types
    from dataclasses import replace

    from imaging_lifecycle import access, backup, deletion, protect, retention
    from imaging_lifecycle.services import PolicyMismatch, Services

    from conftest import ingest_now

    svc = hospital
    shutil.copy(dicom_file("CT_small.dcm"), svc.settings.landing_dir / "a.dcm")
    ingest_now(svc.settings)
    (oid,) = [o.id for o in svc.catalog.objects()]
    svc.guard("setup", actor="test")  # the platform runs the hospital's policy
    before = [r.seq for r in svc.catalog.audit.records()]
    other = Services.open(replace(svc.settings, policy_file=None))
    modules = types.SimpleNamespace(protect=protect, retention=retention, backup=backup, deletion=deletion,
                                    access=access)
    with pytest.raises(PolicyMismatch):
        GUARDED[action](modules, other, oid, tmp_path)
    after = svc.catalog.audit.records()
    new = [r for r in after if r.seq not in before]
    assert [r.action for r in new] == ["security.alert"] and new[0].detail["reason"] == "POLICY_MISMATCH"
    assert svc.catalog.get(oid).state == "VALIDATED" and not svc.catalog.get(oid).legal_hold
