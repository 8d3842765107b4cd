"""Incidents, notifications, the one summary and the compliance report, on a real catalog, S3 and SMTP server.

The notification test runs a real SMTP server (aiosmtpd) and a real HTTP webhook receiver on local
ports; Airflow's SMTP notifier and our webhook notifier send to them through Airflow connections.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import shutil
import socket
import subprocess
import threading
from dataclasses import replace

import pytest

from conftest import make_zones, write_policy

UTC = dt.timezone.utc
ACTOR = "test/monitoring"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mon(object_store_settings, tmp_path, monkeypatch):
    """Services on a catalog, key store and buckets of this test, under a policy that notifies a webhook."""
    import os

    from imaging_lifecycle.services import Services

    def edit(doc):
        doc["monitoring"]["notify"]["webhook_conn_id"] = "il_test_webhook"
        doc["monitoring"]["notify"]["smtp_to"] = ["dso@hospital.example"]

    policy = write_policy(tmp_path / "policy.yaml", edit)
    monkeypatch.setenv("IL_POLICY_FILE", str(policy))
    monkeypatch.setenv("IL_KEYSTORE_PATH", str(tmp_path / "keystore.sealed"))
    settings = replace(object_store_settings, policy_file=policy, bucket_prefix=f"il-m{os.urandom(3).hex()}-",
                       catalog_url=f"sqlite:///{tmp_path / 'catalog.sqlite'}", landing_dir=tmp_path / "landing")
    settings.landing_dir.mkdir()
    make_zones(settings)
    svc = Services.open(settings)
    svc.guard("test", actor=ACTOR)
    return svc


def _emergency(svc, user="clinician"):
    import uuid

    return svc.catalog.add_request(uuid.uuid4().hex, action="working_copy", requester=user, object_ids=[],
                                   departments=["radiology"], tiers=[3], purpose="treatment", hours=2,
                                   justification="x", agreement_id=None, policy_target=None, emergency=True,
                                   policy_fingerprint=svc.policy.fingerprint, state="APPROVED",
                                   expires_at=dt.datetime.now(UTC) + dt.timedelta(hours=2))


def test_sources_raise_one_incident_each_and_a_rerun_raises_none(mon):
    from imaging_lifecycle import incidents

    _emergency(mon)
    from imaging_lifecycle.gates import Failure, GateResult, record

    verdict = GateResult("ingest", False, 3, (Failure("expect_column_values_to_not_be_null", "sha256", 2),),
                         {"0" * 32: ("sha256",), "1" * 32: ("sha256",)})
    record(mon.catalog, verdict, actor="ingest/close_batch/manual__1")  # the verdict as the gates record it
    for i in range(mon.policy.monitoring.association_burst):
        mon.catalog.audit.append("system:receiver", "security.alert", outcome="minor_failure",
                                 detail={"reason": "CALLING_AE_NOT_ALLOWED", "calling_ae": "EVIL", "called_ae": "X",
                                         "peer": f"127-0-0-{i}"})
    now = dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    out = incidents.detect(mon, now=now, actor=ACTOR)
    natures = sorted(i["nature"] for i in (mon.catalog.incident(x) for x in out["new"]))
    assert natures == ["emergency", "gate_failure", "rejected_associations"], natures
    gate = next(i for i in mon.catalog.incidents() if i["nature"] == "gate_failure")
    assert gate["scope"]["failed"] == 1 and gate["scope"]["held"] == 2 and gate["responsible_role"] == "operator"
    assert out["levels"]["emergency"] == 1
    inc = next(i for i in mon.catalog.incidents() if i["nature"] == "emergency")
    assert inc["user"] == "clinician" and inc["responsible_role"] == "data_security_officer"
    assert incidents.detect(mon, now=now, actor=ACTOR)["new"] == []  # the same sources: nothing twice
    assert mon.catalog.audit.verify().ok


def test_ack_and_resolve_are_timed_audited_and_in_order(mon):
    from imaging_lifecycle import incidents
    from imaging_lifecycle.catalog import IncidentStateError

    _emergency(mon)
    (new,) = incidents.detect(mon, now=dt.datetime.now(UTC) + dt.timedelta(seconds=1), actor=ACTOR)["new"]
    detected = mon.catalog.incident(new)["detected_at"]
    later = detected + dt.timedelta(minutes=7)
    mon.catalog.advance_incident(new, "ACKNOWLEDGED", actor="dso", now=later)
    with pytest.raises(IncidentStateError):
        mon.catalog.advance_incident(new, "ACKNOWLEDGED", actor="dso")
    done = mon.catalog.advance_incident(new, "RESOLVED", actor="dso", action="REVIEWED_LEGITIMATE",
                                        now=later + dt.timedelta(hours=1))
    assert done["state"] == "RESOLVED" and done["acknowledged_by"] == "dso" and done["resolved_by"] == "dso"
    steps = [r for r in mon.catalog.audit.records() if r.action.startswith("incident.")]
    assert [r.action for r in steps] == ["incident.raise", "incident.acknowledge", "incident.resolve"]
    assert steps[1].actor == "dso" and steps[1].detail["seconds"] == 420
    with pytest.raises(IncidentStateError):
        mon.catalog.advance_incident(new, "CONTAINED", actor="dso")


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):  # quiet
        pass


def test_an_incident_notifies_through_a_real_smtp_server_and_a_webhook(mon, monkeypatch):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    from imaging_lifecycle import incidents
    from imaging_lifecycle.airflow_glue import notify_incidents

    mails = []

    class Keep(Message):
        def handle_message(self, message):
            mails.append(message)

    smtp_port, hook_port = _port(), _port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
         "extra": {"disable_tls": True, "disable_ssl": True}}))
    monkeypatch.setenv("AIRFLOW_CONN_IL_TEST_WEBHOOK", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{hook_port}/incidents"}))
    try:
        _emergency(mon, user="clinician")
        out = incidents.detect(mon, now=dt.datetime.now(UTC) + dt.timedelta(seconds=1), actor=ACTOR)
        sent = notify_incidents(mon, [mon.catalog.incident(i) for i in out["new"]], actor=ACTOR)
    finally:
        controller.stop()
        hook.shutdown()
    assert sent == {"smtp": 1, "webhook": 1, "failed": 0}, sent
    assert mon.catalog.unnotified() == []
    (mail,) = mails
    assert "[EMERGENCY]" in mail["Subject"] and "emergency" in mail["Subject"]
    assert mail["To"] == "dso@hospital.example"
    (payload,) = _Hook.received
    assert payload["level"] == "emergency" and payload["user"] == "clinician"
    assert {r.detail["via"] for r in mon.catalog.audit.records() if r.action == "incident.notify"} == \
        {"smtp", "webhook"}


def test_a_notifier_that_is_down_is_audited_and_the_incident_stays(mon, monkeypatch):
    from imaging_lifecycle import incidents
    from imaging_lifecycle.airflow_glue import notify_incidents

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({"conn_type": "smtp", "host": "127.0.0.1",
                                                                "port": _port()}))
    monkeypatch.setenv("AIRFLOW_CONN_IL_TEST_WEBHOOK", json.dumps({"conn_type": "http",
                                                                   "host": f"http://127.0.0.1:{_port()}/x"}))
    _emergency(mon)
    out = incidents.detect(mon, now=dt.datetime.now(UTC) + dt.timedelta(seconds=1), actor=ACTOR)
    sent = notify_incidents(mon, [mon.catalog.incident(i) for i in out["new"]], actor=ACTOR)
    assert sent["failed"] == 2 and sent["smtp"] == sent["webhook"] == 0
    assert mon.catalog.incidents(open_only=True)
    assert [i["id"] for i in mon.catalog.unnotified()] == out["new"]  # owed: the next run sends it again
    assert [r.outcome for r in mon.catalog.audit.records() if r.action == "incident.notify"] == ["failure"] * 2


def test_the_summary_and_the_compliance_pdf_carry_the_catalogs_numbers(mon, dicom_file, tmp_path):
    from imaging_lifecycle import compliance, overview
    from imaging_lifecycle.report_render import fmt_int

    from conftest import ingest_now

    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(dicom_file(name), mon.settings.landing_dir / name)
    (mon.settings.landing_dir / "junk.dcm").write_bytes(b"not dicom")
    ingest_now(mon.settings)
    s = overview.summary(mon)
    objs = mon.catalog.objects()
    assert sum(o["count"] for o in s["objects"]) == len(objs)
    assert sum(q["count"] for q in s["quarantine"]) == sum(o.state == "QUARANTINED" for o in objs) == 1
    assert s["audit"]["verified"] and s["audit"]["head_seq"] == mon.catalog.audit.head()[0]
    assert s["overdue"] == 0

    end = dt.datetime.now(UTC) + dt.timedelta(minutes=1)
    made = compliance.make(mon, period_start=end - dt.timedelta(days=30), period_end=end, actor=ACTOR)
    pdf = compliance.read(mon, made["report"], "pdf", actor="dso")
    assert pdf.startswith(b"%PDF")
    assert mon.catalog.report(made["report"])["sha256"] == __import__("hashlib").sha256(pdf).hexdigest()
    stored = mon.store.get("audit", f"reports/{made['report']}.pdf")
    assert b"%PDF" not in stored[:64]  # encrypted at rest
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    path = tmp_path / "r.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout
    from imaging_lifecycle.report_render import SECTIONS

    for _, heading in SECTIONS:
        assert heading in text, heading
    summary = overview.summary(mon, now=end, period_start=end - dt.timedelta(days=30), period_end=end)
    for o in summary["objects"]:  # the catalog's counts, as the report prints them
        assert fmt_int(o["count"]) in text
    assert fmt_int(summary["quarantine"][0]["count"]) in text and summary["quarantine"][0]["reason"] in text
    assert fmt_int(summary["adherence"]["deletions"]) in text
    pages = subprocess.run(["pdftoppm", "-r", "40", "-png", str(path), str(tmp_path / "page")],
                           capture_output=True, check=True)
    assert pages.returncode == 0 and len(list(tmp_path.glob("page*.png"))) >= 2
    assert "report.read" in [r.action for r in mon.catalog.audit.records()]


def test_every_access_path_in_the_trail_becomes_history_and_a_spike_raises_an_incident(mon):
    """The adapter from audit records to the access history, then the spike rule through the real trail."""
    from imaging_lifecycle import incidents

    oid = mon.catalog.register(actor="test", source="landing", quarantine_reason="NOT_DICOM").object.id
    a = mon.catalog.audit
    a.append("clinician", "grant.create", object_ref=oid, detail={"grant": "g1", "zone": "cache"})
    a.append("clinician", "grant.read", object_ref=oid)
    a.append("operator", "object.export", object_ref=oid, detail={"action": "restore"})
    a.append("clinician", "object.export", object_ref=oid, detail={"action": "export"})
    a.append("clinician", "access.reidentify", object_ref=oid)
    a.append("clinician", "grant.read", object_ref=oid, outcome="failure")  # refused: a denial, not an access
    a.append("system:sweeper/sweep", "grant.read", object_ref=oid)  # system work is not a person's access
    now = dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    kinds = [(e.user, e.kind) for e in incidents.access_events(mon, since=now - dt.timedelta(hours=1), until=now)]
    assert kinds == [("clinician", "working_copy"), ("clinician", "download"), ("operator", "restore"),
                     ("clinician", "export"), ("clinician", "reidentify"), ("clinician", "denied")], kinds

    with mon.catalog.transaction() as s:
        for _ in range(400):
            a.append("clinician", "grant.read", object_ref=oid, session=s)
    out = incidents.detect(mon, now=dt.datetime.now(UTC) + dt.timedelta(seconds=1), actor=ACTOR)
    raised = [mon.catalog.incident(i) for i in out["new"]]
    # The audit stamps real wall-clock time, so when this runs at night the off-hours rule also (rightly) flags
    # both users' work: only the spike rules' subjects are asserted, or the test depends on the hour it runs.
    spikes = [i for i in raised if i["nature"].startswith("spike")]
    assert {i["nature"] for i in raised} >= {"spike_hour"} and {i["user"] for i in spikes} == {"clinician"}
    spike = next(i for i in raised if i["nature"] == "spike_hour")
    assert spike["scope"]["count"] >= 400 and spike["level"] == "major"


def test_only_a_holder_of_the_responsible_role_works_an_incident_and_never_its_subject(mon):
    from imaging_lifecycle import incidents

    _emergency(mon, user="clinician")
    (new,) = incidents.detect(mon, now=dt.datetime.now(UTC) + dt.timedelta(seconds=1), actor=ACTOR)["new"]
    for who, reason in (("clinician", "IS_THE_SUBJECT"), ("operator", "NOT_RESPONSIBLE")):
        with pytest.raises(incidents.NotResponsible, match=reason):
            incidents.step(mon, new, "ACKNOWLEDGED", actor=who)
    assert mon.catalog.incident(new)["state"] == "OPEN"
    assert incidents.step(mon, new, "ACKNOWLEDGED", actor="dso")["state"] == "ACKNOWLEDGED"
    denied = [r for r in mon.catalog.audit.records() if r.action == "access.denied"]
    assert [(r.actor, r.detail["reason"]) for r in denied] == [("clinician", "IS_THE_SUBJECT"),
                                                              ("operator", "NOT_RESPONSIBLE")]
