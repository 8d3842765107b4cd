"""Two-person authorization: every rule of an access request, kept and broken, on a real catalog and S3.

The end-to-end walk through the scheduler, the approvers' own tokens and the
plugin's download is in ``test_access_e2e.py``; here each rule is checked
alone, through the same functions the ``access_request`` DAG calls.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import replace

import pytest

from conftest import approved, ingest_now, write_policy

UTC = dt.timezone.utc


def _classified(settings, dicom_file, tier: int = 3, names=("CT_small.dcm", "MR_small.dcm"), tiers=None):
    from imaging_lifecycle.services import Services

    for i, name in enumerate(names):
        shutil.copy(dicom_file(name), settings.landing_dir / f"{i}.dcm")
    ingest_now(settings)
    svc = Services.open(settings)
    ids = [o.id for o in svc.catalog.objects()]
    for oid, t in zip(ids, tiers or [tier] * len(ids), strict=True):
        svc.catalog.transition(oid, "CLASSIFIED", tier=t, rule_id="test", actor="test")
    return svc, ids


def _submit(svc, ids, *, requester="clinician", action="working_copy", **kw):
    from imaging_lifecycle import access

    kw.setdefault("purpose", "treatment")
    kw.setdefault("justification", "follow-up of a known finding")
    return access.submit(svc, requester=requester, action=action, catalog_ids=ids, **kw)


def _refused(svc, reason, **kw):
    from imaging_lifecycle import access

    before = len(svc.catalog.requests())
    with pytest.raises(access.AccessRefused) as exc:
        _submit(svc, **kw)
    assert exc.value.reason == reason
    (req,) = svc.catalog.requests()[before:]  # recorded, REFUSED, with the code, before anyone was asked
    assert (req["state"], req["reason"]) == ("REFUSED", reason) and svc.catalog.decisions(req["id"]) == []
    last = [r for r in svc.catalog.audit.records() if r.action == "access.request"][-1]
    assert last.outcome == "failure" and last.detail["reason"] == reason
    return req


@pytest.fixture
def tier3(env, dicom_file):
    return _classified(env, dicom_file)


def test_a_working_copy_needs_a_dso_then_the_head_and_is_made_for_the_requester_only(tier3):
    from imaging_lifecycle import access
    from imaging_lifecycle.catalog import NotApproved

    svc, ids = tier3
    out = _submit(svc, ids, hours=8)
    rid = out["request_id"]
    assert out == {"request_id": rid, "state": "PENDING", "steps": ["dso", "head:radiology"]}
    assert access.approvers(svc, rid, "dso") == ["dso"] and access.approvers(svc, rid, "head:radiology") == [
        "radiology-head"]
    assert access.fulfil(svc, rid, actor="system:test")["grants"] == []  # nothing before the approvals
    assert access.decide(svc, rid, "dso", approver="dso", approved=True)["state"] == "PENDING"
    assert access.fulfil(svc, rid, actor="system:test")["grants"] == []  # one approval is not two
    shown = access.decide(svc, rid, "head:radiology", approver="radiology-head", approved=True)
    assert shown["state"] == "APPROVED" and [d["approver"] for d in shown["decisions"]] == ["dso", "radiology-head"]
    done = access.fulfil(svc, rid, actor="system:access_request/finish")
    assert done["state"] == "FULFILLED" and sorted(g["object_id"] for g in done["grants"]) == sorted(ids)
    assert access.fulfil(svc, rid, actor="system:test")["grants"] == done["grants"]  # a retry makes nothing twice
    g = done["grants"][0]
    obj = svc.catalog.get(g["object_id"])
    stream = access.download(svc, g["grant_id"], user="clinician")
    assert stream.size == obj.size and __import__("hashlib").sha256(b"".join(stream.chunks)).hexdigest() == obj.sha256
    for stranger in ("dso", "radiology-head", "operator"):
        with pytest.raises(NotApproved, match="NOT_THE_REQUESTER"):
            access.download(svc, g["grant_id"], user=stranger)
    deadline = dt.datetime.fromisoformat(g["deadline"])
    assert dt.timedelta(hours=7, minutes=59) < deadline - svc.catalog.request(rid)["created_at"] <= dt.timedelta(
        hours=8, minutes=1)
    with pytest.raises(NotApproved, match="GRANT_NOT_LIVE"):
        access.download(svc, g["grant_id"], user="clinician", now=deadline)
    trail = [(r.actor, r.action) for r in svc.catalog.audit.records() if r.action.startswith(("access.", "grant."))]
    assert ("clinician", "access.request") in trail and ("dso", "access.decision") in trail
    assert ("radiology-head", "access.decision") in trail and ("clinician", "grant.read") in trail
    assert all("follow-up" not in str(r.detail) for r in svc.catalog.audit.records())  # justification stays out


def test_the_same_person_cannot_approve_twice(env, dicom_file, tmp_path):
    from imaging_lifecycle import access

    def dso_is_also_head(doc):
        doc["access"]["departments"][0]["heads"] = ["dso", "radiology-head"]

    settings = replace(env, policy_file=write_policy(tmp_path / "p.yaml", dso_is_also_head))
    svc, ids = _classified(settings, dicom_file)
    rid = _submit(svc, ids)["request_id"]
    access.decide(svc, rid, "dso", approver="dso", approved=True)
    assert access.approvers(svc, rid, "head:radiology") == ["radiology-head"]  # Airflow offers it to the other
    with pytest.raises(access.AccessRefused) as exc:
        access.decide(svc, rid, "head:radiology", approver="dso", approved=True)
    assert exc.value.reason == "SAME_APPROVER"
    req = svc.catalog.request(rid)
    assert (req["state"], req["reason"]) == ("DENIED", "SAME_APPROVER")
    assert access.fulfil(svc, rid, actor="system:test")["grants"] == []
    alert = [r for r in svc.catalog.audit.records() if r.action == "security.alert"][-1]
    assert alert.actor == "dso" and alert.detail["reason"] == "SAME_APPROVER"


def test_the_requester_cannot_approve_their_own_request(env, dicom_file, tmp_path):
    from imaging_lifecycle import access

    def head_may_ask(doc):
        doc["access"]["data_security_officers"] = ["dso", "radiology-head"]

    settings = replace(env, policy_file=write_policy(tmp_path / "p.yaml", head_may_ask))
    svc, ids = _classified(settings, dicom_file)
    rid = _submit(svc, ids, requester="radiology-head")["request_id"]
    assert access.approvers(svc, rid, "dso") == ["dso"] and access.approvers(svc, rid, "head:radiology") == []
    with pytest.raises(access.AccessRefused) as exc:
        access.decide(svc, rid, "dso", approver="radiology-head", approved=True)
    assert exc.value.reason == "SELF_APPROVAL" and svc.catalog.request(rid)["state"] == "DENIED"


def test_an_approver_outside_the_role_or_out_of_order_denies_the_request(tier3):
    from imaging_lifecycle import access

    svc, ids = tier3
    for step, who, reason in (("dso", "operator", "NOT_AN_APPROVER"),
                              ("head:radiology", "radiology-head", "OUT_OF_ORDER")):
        rid = _submit(svc, ids)["request_id"]
        with pytest.raises(access.AccessRefused) as exc:
            access.decide(svc, rid, step, approver=who, approved=True)
        assert exc.value.reason == reason and svc.catalog.request(rid)["reason"] == reason
    rid = _submit(svc, ids)["request_id"]
    with pytest.raises(access.AccessRefused, match="no step"):
        access.decide(svc, rid, "head:cardiology", approver="radiology-head", approved=True)


def test_a_rejection_or_no_answer_denies(tier3):
    from imaging_lifecycle import access

    svc, ids = tier3
    rid = _submit(svc, ids)["request_id"]
    out = access.decide(svc, rid, "dso", approver="dso", approved=False)
    assert (out["state"], out["reason"]) == ("DENIED", "REJECTED")
    assert access.step_state(svc, rid, "head:radiology") == "denied"  # the head is not asked any more
    # A timeout: the step's task fails (no default option), the DAG's last task closes the request.
    rid = _submit(svc, ids)["request_id"]
    access.decide(svc, rid, "dso", approver="dso", approved=True)
    out = access.close(svc, rid, actor="system:access_request/finish")
    assert (out["state"], out["reason"]) == ("DENIED", "NOT_ANSWERED")
    assert access.fulfil(svc, rid, actor="system:test")["grants"] == []
    from imaging_lifecycle.catalog import RequestStateError

    with pytest.raises(RequestStateError):  # a late answer changes nothing
        access.decide(svc, rid, "head:radiology", approver="radiology-head", approved=True)


def test_requests_that_break_a_rule_are_refused_before_anyone_is_asked(env, dicom_file):
    from imaging_lifecycle import access

    svc, (a, b) = _classified(env, dicom_file, tiers=(3, 5))
    _refused(svc, "ROLE_NOT_ALLOWED", ids=[a], requester="operator")  # operators may not take working copies
    _refused(svc, "ROLE_NOT_ALLOWED", ids=[a], requester="nobody-we-know")
    _refused(svc, "BAD_PURPOSE", ids=[a], purpose="curiosity")
    planted = _refused(svc, "BAD_PURPOSE", ids=[a], purpose="doe.jane-mrn-a4471")  # what a requester typed
    assert planted["purpose"] == "unknown" and "a4471" not in str([r.detail for r in svc.catalog.audit.records()])
    _refused(svc, "NO_JUSTIFICATION", ids=[a], justification="pls")
    _refused(svc, "UNKNOWN_OBJECT", ids=[a, "f" * 32])
    _refused(svc, "BAD_SCOPE", ids=[])
    _refused(svc, "HOURS_OVER_CAP", ids=[a], hours=73)
    _refused(svc, "BAD_HOURS", ids=[a], hours=0)
    _refused(svc, "BAD_ACTION", ids=[a], action="peek")
    _refused(svc, "NOT_HELD", ids=[a], action="release_hold", requester="operator")
    _refused(svc, "EMERGENCY_NOT_ALLOWED", ids=[a], action="restore", emergency=True)
    _refused(svc, "HOURS_OVER_CAP", ids=[a], emergency=True, hours=5)  # emergency: 4 hours at most
    _refused(svc, "ROLE_NOT_ALLOWED", ids=[a], emergency=True, requester="radiology-head")
    _refused(svc, "NO_AGREEMENT", ids=[a], action="export")
    now = dt.datetime.now(UTC)
    dead = access.add_agreement(svc, actor="admin", recipient="Example University", scope="chest CT, de-identified",
                                purpose="research", legal_basis="consent", starts_at=now - dt.timedelta(days=30),
                                ends_at=now - dt.timedelta(days=1))["agreement_id"]
    _refused(svc, "AGREEMENT_NOT_LIVE", ids=[a], action="export", agreement_id=dead)
    live = access.add_agreement(svc, actor="admin", recipient="Example University", scope="chest CT",
                                purpose="research",
                                legal_basis="consent", starts_at=now, ends_at=now + dt.timedelta(days=30))
    assert _submit(svc, [a], action="export", agreement_id=live["agreement_id"])["state"] == "PENDING"
    with pytest.raises(access.AccessRefused, match="not an agreement admin"):
        access.add_agreement(svc, actor="clinician", recipient="x", scope="y", purpose="research", legal_basis="z",
                             starts_at=now, ends_at=now + dt.timedelta(days=1))
    _refused(svc, "TIER_FORBIDS", ids=[b])  # tier 5 allows no working copy
    _refused(svc, "TIER_FORBIDS", ids=[a, b])  # one object too many spoils the request
    assert not [c for c in svc.catalog.copies(b) if c.zone == "cache"]


def test_every_guarded_action_is_refused_without_an_approved_request(tier3, tmp_path):
    from imaging_lifecycle import backup, deletion, protect, retention
    from imaging_lifecycle.catalog import NotApproved

    svc, (a, b) = tier3
    svc.catalog.set_legal_hold(b, True, "counsel")
    now = dt.datetime.now(UTC)
    tries = {
        "working_copy": lambda rid: retention.retrieve(svc, a, request_id=rid, actor="clinician"),
        "restore": lambda rid: backup.restore_object(svc, a, tmp_path / "r.dcm", request_id=rid, actor="clinician"),
        "reidentify": lambda rid: protect.reidentify(svc, a, request_id=rid, actor="clinician"),
        "early_delete": lambda rid: retention.delete_early(svc, a, request_id=rid, actor="operator", now=now),
        "release_hold": lambda rid: retention.set_legal_hold(svc, b, False, actor="operator", request_id=rid),
        "policy_change": lambda rid: svc.adopt_policy(request_id=rid, actor="admin"),
    }
    pending = _submit(svc, [a])["request_id"]  # asked, not approved
    granted = approved(svc, "working_copy", [a])  # approved, but for another action
    for action, attempt in tries.items():
        for rid, reason in ((None, "NO_REQUEST"), (pending, "REQUEST_PENDING"), (granted, "OTHER_ACTION")):
            if action == "working_copy" and rid == granted:
                continue
            with pytest.raises(NotApproved) as exc:
                attempt(rid)
            assert exc.value.reason == reason, (action, reason)
    assert svc.catalog.get(b).legal_hold and svc.catalog.get(a).retention_deadline is None
    assert not (tmp_path / "r.dcm").exists() and not svc.catalog.grants_of_request(pending)
    # Early deletion by the back door, a sweep at a future time, needs the test clock the platform never sets.
    plain = replace(svc, settings=replace(svc.settings, test_clock=False))
    with pytest.raises(deletion.FutureClockRefused):
        deletion.sweep(plain, now + dt.timedelta(days=400), actor="system:cli/sweep")
    assert deletion.sweep(plain, now, actor="system:cli/sweep")["objects_deleted"] == 0
    alert = [r for r in svc.catalog.audit.records() if r.action == "security.alert"][-1]
    assert alert.detail["reason"] == "FUTURE_CLOCK"


def test_early_delete_and_hold_release_are_carried_out_once_approved(env):
    from imaging_lifecycle import access, deletion
    from imaging_lifecycle.services import Services
    from imaging_lifecycle.synthetic import Patient, write_study
    from test_protect import protect_all

    write_study(env.landing_dir / "chest", Patient("6262"), instances=2, modality="CT", body_part="CHEST")
    ingest_now(env)
    protect_all(env)
    svc = Services.open(env)
    a, b = [o.id for o in svc.catalog.objects() if o.tier == 3]
    svc.catalog.set_legal_hold(b, True, "counsel")
    rid = approved(svc, "early_delete", [a])
    assert access.fulfil(svc, rid, actor="system:access_request/finish")["state"] == "FULFILLED"
    assert svc.catalog.get(a).retention_deadline <= dt.datetime.now(UTC)
    assert [t.obj.id for t in deletion.plan(svc.catalog, dt.datetime.now(UTC), 10)] == [a]  # the sweeper's next
    rid = approved(svc, "release_hold", [b])
    access.fulfil(svc, rid, actor="system:access_request/finish")
    assert not svc.catalog.get(b).legal_hold
    release = [r for r in svc.catalog.audit.records() if r.action == "object.legal_hold_release"][-1]
    assert release.actor == "operator"  # the requester, whose request two people approved


def test_emergency_access_is_one_person_short_audited_major_and_reviewed(tier3):
    from imaging_lifecycle import access

    svc, (a, _) = tier3
    out = _submit(svc, [a], emergency=True, purpose="treatment")
    rid = out["request_id"]
    assert out["state"] == "APPROVED" and out["steps"] == []
    done = access.fulfil(svc, rid, actor="system:access_request/finish")
    (g,) = done["grants"]
    left = dt.datetime.fromisoformat(g["deadline"]) - dt.datetime.now(UTC)
    assert dt.timedelta(hours=3, minutes=58) < left <= dt.timedelta(hours=4)  # the policy's 4-hour cap
    major = [r for r in svc.catalog.audit.records() if r.action == "access.emergency"]
    assert [(r.actor, r.outcome) for r in major] == [("clinician", "major_failure")]
    assert [e["request_id"] for e in access.emergencies_to_review(svc)] == [rid]
    with pytest.raises(access.AccessRefused):
        access.review_emergency(svc, rid, reviewer="radiology-head", finding="APPROPRIATE")
    assert access.review_emergency(svc, rid, reviewer="dso", finding="APPROPRIATE")["reviewed_by"] == "dso"
    assert access.emergencies_to_review(svc) == []


def test_show_names_staff_and_codes_never_patient_data(tier3):
    from imaging_lifecycle import access

    svc, ids = tier3
    rid = approved(svc, "working_copy", ids)
    access.fulfil(svc, rid, actor="system:test")
    shown = access.show(svc, rid)
    assert shown["state"] == "FULFILLED" and len(shown["grants"]) == 2 and len(shown["decisions"]) == 2
    assert "justification" not in shown and "follow-up" not in str(shown)


def test_an_approved_reidentification_reads_the_stored_map_and_nothing_else_does(env):
    import pydicom

    from imaging_lifecycle import protect
    from imaging_lifecycle.catalog import NotApproved
    from imaging_lifecycle.services import Services
    from imaging_lifecycle.synthetic import Patient, write_study
    from test_protect import protect_all

    write_study(env.landing_dir / "chest", Patient("6161"), instances=1, modality="CT", body_part="CHEST")
    src = next((env.landing_dir / "chest").rglob("*.dcm"))
    original = pydicom.dcmread(src)
    ingest_now(env)
    protect_all(env)
    svc = Services.open(env)
    (deriv,) = [o for o in svc.catalog.objects() if (o.source or "").startswith("derived:")]
    with pytest.raises(NotApproved):
        protect.reidentify(svc, deriv.id, request_id=None, actor="clinician")
    rid = approved(svc, "reidentify", [deriv.id])
    assert svc.catalog.request(rid)["tiers"] == [3]  # judged by the identified original, not the derivative
    reid = protect.reidentify(svc, deriv.id, request_id=rid, actor="clinician")
    assert reid.original("PatientID") == str(original.PatientID) and reid.pseudonym("PatientID") != reid.original(
        "PatientID")
    assert str(original.PatientID) not in repr(reid)
    (rec,) = [r for r in svc.catalog.audit.records() if r.action == "access.reidentify"]
    assert rec.actor == "clinician" and rec.detail == {"request": rid, "entries": len(reid)}


def test_an_approved_export_is_packaged_under_its_own_key_and_opens_with_the_key_file_alone(env):
    import hashlib

    from imaging_lifecycle import access, deletion
    from imaging_lifecycle.catalog import NotApproved
    from imaging_lifecycle.services import Services
    from imaging_lifecycle.synthetic import Patient, write_study
    from test_protect import protect_all

    write_study(env.landing_dir / "chest", Patient("6363"), instances=1, modality="CT", body_part="CHEST")
    ingest_now(env)
    protect_all(env)
    svc = Services.open(env)
    (deriv,) = [o for o in svc.catalog.objects() if (o.source or "").startswith("derived:")]
    original = svc.catalog.get(deriv.source.removeprefix("derived:"))
    now = dt.datetime.now(UTC)
    ends = now + dt.timedelta(days=30)
    agreement = access.add_agreement(svc, actor="admin", recipient="Example University", scope="chest CT",
                                     purpose="research", legal_basis="ethics approval 2026-17", starts_at=now,
                                     ends_at=ends)["agreement_id"]
    rid = approved(svc, "export", [deriv.id, original.id], agreement_id=agreement)
    with pytest.raises(NotApproved):  # nothing to hand over before the package exists
        access.export_key(svc, rid, actor="dso")
    assert access.fulfil(svc, rid, actor="system:access_request/finish")["state"] == "APPROVED"
    access.fulfil(svc, rid, actor="system:access_request/finish")  # a retry packages nothing twice
    for o in (deriv, original):
        (pkg,) = [c for c in svc.catalog.copies(o.id) if c.zone == "export"]
        assert pkg.key == f"export/{rid}/{o.id}" and pkg.deadline == ends
    gates = [r for r in svc.catalog.audit.records() if r.action == "gate.run" and r.detail["gate"] == "deid"
             and r.actor == "clinician"]
    assert [g.outcome for g in gates] == ["success"]  # the derivative was gated again, once, before it went
    with pytest.raises(NotApproved, match="NOT_THE_REQUESTER"):
        access.export_key(svc, rid, actor="dso")
    key = access.export_key(svc, rid, actor="clinician")
    trail = str([r.detail for r in svc.catalog.audit.records()])
    assert all(item["dek"] not in trail for item in key["objects"])  # key material never in the trail
    for item in key["objects"]:
        ciphertext = svc.store.get("export", item["key"], item["version_id"])  # what the recipient is sent
        plain = access.open_export(key, item, ciphertext)
        assert hashlib.sha256(plain).hexdigest() == svc.catalog.get(item["catalog_id"]).sha256
    # At the agreement's end the sweeper deletes the package (and certifies it); the archive copy stays.
    out = deletion.sweep(svc, ends + dt.timedelta(minutes=15), actor="system:test/sweeper")
    assert out["copies_deleted"] >= 2
    assert not [c for o in (deriv, original) for c in svc.catalog.copies(o.id) if c.zone == "export"]
