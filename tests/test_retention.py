"""Retention without S3: deadlines from the policy, stale local plaintext, Airflow trace pruning, legal hold CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from dataclasses import replace

import pytest

from imaging_lifecycle.services import Services

from conftest import PROJECT

UTC = dt.timezone.utc
T = dt.datetime(2031, 3, 4, 8, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path):
    from imaging_lifecycle.settings import load_settings

    s = replace(load_settings(), state_dir=tmp_path / "state", landing_dir=tmp_path / "landing",
                catalog_url=f"sqlite:///{tmp_path / 'c.sqlite'}")
    s.landing_dir.mkdir(parents=True)
    return s


def test_deadlines_come_from_the_policy_in_force(settings):
    from imaging_lifecycle.retention import RetentionError, deadline_for
    from imaging_lifecycle.services import Services

    svc = Services.open(settings)  # no IL_POLICY_FILE: the packaged default
    assert deadline_for(svc, 3, "cache", T) == T + dt.timedelta(hours=72)
    assert deadline_for(svc, 4, "cache", T) == T + dt.timedelta(hours=24)  # the tier's own term
    assert deadline_for(svc, 5, "quarantine", T) == T + dt.timedelta(days=30)
    assert deadline_for(svc, 3, "archive", T) == T + svc.policy.retention_for(3, "archive")
    assert deadline_for(svc, 5, "archive", T) - T > deadline_for(svc, 3, "archive", T) - T
    with pytest.raises(RetentionError):
        deadline_for(svc, 3, "cache", T.replace(tzinfo=None))
    with pytest.raises(RetentionError):
        deadline_for(svc, 3, "nowhere", T)


def _stored_object(cat, content: bytes) -> str:
    reg = cat.register(actor="t", source="landing", sha256=hashlib.sha256(content).hexdigest(), size=len(content),
                       sop_instance_uid="1.2.3.4.5", study_instance_uid="1.2.3.4", series_instance_uid="1.2.3.4.6",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    cat.add_copy(reg.object.id, zone="archive", bucket="il-archive", key=f"objects/{reg.object.id}", actor="t")
    return reg.object.id


def _old(path, content: bytes, age: dt.timedelta):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    ts = (T - age).timestamp()
    os.utime(path, (ts, ts))


def test_stale_local_plaintext_is_deleted_if_stored_else_alerted(settings):
    from imaging_lifecycle.catalog import Catalog
    from imaging_lifecycle.retention import stale_local_files

    cat = Catalog(settings.catalog_url)
    _stored_object(cat, b"stored content")
    _old(settings.landing_dir / "a.dcm", b"stored content", dt.timedelta(hours=73))
    _old(settings.landing_dir / "stuck.dcm", b"never stored", dt.timedelta(hours=80))
    _old(settings.state_dir / "tmp" / "x.dcm", b"never stored either", dt.timedelta(days=5))
    _old(settings.landing_dir / "young.dcm", b"never stored", dt.timedelta(hours=71))
    _old(settings.state_dir / "ingest" / "b1" / "manifest.json", b"{}", dt.timedelta(days=9))
    out = stale_local_files(Services.open(settings), now=T, actor="t")
    assert out == {"deleted": 1, "alerts": 2, "stuck_by_folder": {"landing": 1, "tmp": 1}}
    assert not (settings.landing_dir / "a.dcm").exists()
    assert (settings.landing_dir / "stuck.dcm").exists() and (settings.landing_dir / "young.dcm").exists()
    alerts = [r for r in cat.audit.records() if r.action == "security.alert"]
    assert len(alerts) == 2 and all(r.detail["reason"] == "STALE_PLAINTEXT_NOT_STORED" for r in alerts)
    assert "stuck" not in json.dumps([r.public() for r in cat.audit.records()], default=str)


def test_quarantined_objects_get_their_30_day_deadline(settings):
    from imaging_lifecycle.catalog import Catalog
    from imaging_lifecycle.retention import assign_missing_deadlines

    cat = Catalog(settings.catalog_url)
    q = cat.register(actor="t", source="landing", quarantine_reason="NOT_DICOM").object
    assert assign_missing_deadlines(Services.open(settings), now=T, actor="t") == {"deadlines_set": 1}
    assert cat.get(q.id).retention_deadline == q.created_at + dt.timedelta(days=30)
    assert assign_missing_deadlines(Services.open(settings), now=T, actor="t") == {"deadlines_set": 0}


def test_airflow_traces_pruning(tmp_path):
    from imaging_lifecycle.retention import prune_log_folder

    _old(tmp_path / "logs" / "dag_id=x" / "run" / "1.log", b"old", dt.timedelta(days=31))
    _old(tmp_path / "logs" / "dag_id=x" / "run2" / "1.log", b"new", dt.timedelta(days=1))
    assert prune_log_folder(tmp_path / "logs", now=T, max_age=dt.timedelta(days=30)) == {"log_files_removed": 1}
    assert not (tmp_path / "logs" / "dag_id=x" / "run").exists()
    assert (tmp_path / "logs" / "dag_id=x" / "run2" / "1.log").exists()


def test_anyone_places_a_hold_but_only_an_approved_request_releases_it(settings, tmp_path):
    from imaging_lifecycle.catalog import NotApproved
    from imaging_lifecycle.retention import set_legal_hold

    from conftest import approved

    svc = Services.open(settings)
    cat = svc.catalog
    oid = _stored_object(cat, b"held content")
    assert set_legal_hold(svc, oid, True, actor="counsel")["legal_hold"] is True
    with pytest.raises(NotApproved, match="NO_REQUEST"):
        set_legal_hold(svc, oid, False, actor="counsel")
    rid = approved(svc, "release_hold", [oid], requester="operator")
    with pytest.raises(NotApproved, match="NOT_THE_REQUESTER"):
        set_legal_hold(svc, oid, False, actor="counsel", request_id=rid)
    assert cat.get(oid).legal_hold
    assert set_legal_hold(svc, oid, False, actor="operator", request_id=rid)["legal_hold"] is False
    assert [x.actor for x in cat.audit.records() if x.action.startswith("object.legal_hold")] == ["counsel",
                                                                                                   "operator"]
    # The command acts for a person: with no login it refuses, whatever the id.
    env = {**os.environ, "IL_CATALOG_URL": settings.catalog_url, "IL_TOKEN_FILE": str(tmp_path / "none")}
    cli = str(PROJECT / ".venv" / "bin" / "imaging-lifecycle")
    for args in (("set", oid), ("set", "Robert^Smith"), ("set", oid, "--actor", "counsel")):
        r = subprocess.run([cli, "legal-hold", *args], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Robert" not in r.stderr
    assert not cat.get(oid).legal_hold
