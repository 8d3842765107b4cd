"""The production shape end to end: two Celery workers on two "hosts", each with its own state folder.

``platform up --executor celery`` with our own DAGs: PostgreSQL, Redis, both S3 sites, a KMIP key
server, and the workers ``worker-1`` (the landing host: queues default and landing) and ``worker-2``
(its own state folder and an empty landing folder, queue default). What the hosts share is the
catalog, Redis, S3 and the key server, nothing else. Demo studies are dropped and one study is pushed
with dcmtk's storescu; everything reaches its final state with tasks on both hosts, no file is left in
any landing or staging folder, and the audit chain verifies. Then worker-2 is killed mid-chunk: the
chunk is retried on worker-1, nothing lost and nothing stored twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from celery_platform import CeleryPlatform

pytestmark = [pytest.mark.platform, pytest.mark.slow]

#: Transient states: an object in one of these is still moving through the pipeline.
MOVING = {"RECEIVED", "VALIDATED", "CLASSIFIED", "DEIDENTIFIED", "PROTECTED"}


@pytest.fixture(scope="module")
def prod():
    from imaging_lifecycle.embedded import celery_tools_missing

    missing = celery_tools_missing() + [t for t in ("storescu", "runuser") if not shutil.which(t)]
    if missing:
        pytest.skip(f"the production shape needs {', '.join(missing)} (make test-tools installs them)")
    p = CeleryPlatform(product_dags=True, extra_env={
        "IL_INGEST_CHUNK_SIZE": "4",  # several chunks per batch, so both hosts get some
        "IL_INGEST_QUIET_SECONDS": "2",
        "IL_FAULT_PAUSES": "1",  # lets the kill test hold worker-2 mid-chunk (a file in its own folder)
        # A killed worker's task is noticed after 20 s instead of Airflow's 5 minutes.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    })
    try:
        p.cli("platform", "up", "--executor", "celery")
        yield p
    finally:
        p.cli("platform", "down", check=False)
        shutil.rmtree(p.dags, ignore_errors=True)
        shutil.rmtree(p.state, ignore_errors=True)


def _svc(p: CeleryPlatform):
    from imaging_lifecycle.services import Services

    return Services.open(p.settings())


def _originals(svc) -> list:
    return [o for o in svc.catalog.objects() if not (o.source or "").startswith("derived:")]


def _settled(svc, expected: int):
    objs = _originals(svc)
    if len(objs) < expected or any(o.state in MOVING for o in objs):
        return None
    policy = svc.policy
    waiting = [o for o in objs if o.state == "STORED" and o.tier and policy.tier(o.tier).handling.backup_required]
    return None if waiting else objs


def _hosts_of(p: CeleryPlatform, dag_id: str) -> dict[str, set[str]]:
    """task id -> the host names its task instances ran on (every run of the DAG, every try's last)."""
    out: dict[str, set[str]] = {}
    runs = p.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
    for run in runs:
        tis = p.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances?limit=500")
        for ti in tis["task_instances"]:
            if ti.get("hostname"):
                out.setdefault(ti["task_id"], set()).add(ti["hostname"])
    return out


def _nothing_left_on_any_host(p: CeleryPlatform, svc) -> None:
    from imaging_lifecycle.embedded import host_dir

    settings = svc.settings
    other = host_dir(settings, "worker-2")
    for folder in (settings.landing_dir, other / "landing"):  # the claim's own folder (.claimed) included
        assert not [f for f in folder.rglob("*") if f.is_file() and f.name not in (".landing-id", ".lock")], folder
    for folder in (settings.state_dir / "tmp", other / "tmp"):  # the hosts' plaintext scratch folders
        assert not (folder.exists() and any(folder.iterdir())), folder
    assert svc.catalog.staged_count() == 0
    assert list(svc.store.versions("staging", "staging/")) == []


def test_demo_studies_and_a_cstore_push_reach_their_final_state_on_two_hosts(prod, tmp_path):
    from imaging_lifecycle.synthetic import Patient, write_demo, write_study

    svc = _svc(prod)
    settings = svc.settings
    dropped = write_demo(settings.landing_dir, seed=7)
    pushed = write_study(tmp_path / "modality", Patient("7001"), instances=3, modality="CT", body_part="CHEST")
    r = subprocess.run(["storescu", "-aet", "IL_DEMO_SCU", "-aec", "IL_ARCHIVE", "127.0.0.1",
                        str(settings.port("dicom")), *map(str, pushed)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    expected = len(dropped) + len(pushed)
    objs = prod.wait_for(lambda: _settled(svc, expected), 600, "every original in its final state", interval=3)
    assert len(objs) == expected
    assert {o.state for o in objs} <= {"STORED", "BACKED_UP", "NEEDS_REVIEW", "QUARANTINED"}
    assert any(o.state == "BACKED_UP" for o in objs)
    assert any(o.source.startswith("cstore:") for o in objs)

    ingest_hosts, protect_hosts = _hosts_of(prod, "ingest"), _hosts_of(prod, "protect")
    assert ingest_hosts["claim_batch"] == {"worker-1"}  # only the landing host claims
    everywhere = set().union(*ingest_hosts.values(), *protect_hosts.values())
    assert {"worker-1", "worker-2"} <= everywhere, (ingest_hosts, protect_hosts)
    _nothing_left_on_any_host(prod, svc)
    assert svc.catalog.audit.verify().ok
    prod.cli("audit", "verify")  # the operator's check too (with the signed anchors): exit 0


def test_a_worker_killed_mid_chunk_has_its_chunk_retried_on_the_other_nothing_lost_or_twice(prod, tmp_path):
    from celery import Celery

    from imaging_lifecycle.embedded import _recorded, backends, host_dir
    from imaging_lifecycle.synthetic import Patient, write_study

    svc = _svc(prod)
    settings = svc.settings
    before = {o.id for o in _originals(svc)}
    app = Celery(broker=backends(settings).broker)
    hold = host_dir(settings, "worker-2") / "faults" / "ingest.after_store"
    hold.parent.mkdir(parents=True, exist_ok=True)
    hold.write_text("")
    try:
        # Only worker-2 takes chunks now (worker-1 keeps the landing queue for the claim).
        app.control.cancel_consumer("default", destination=["celery@worker-1"], reply=True, timeout=10)
        files = write_study(settings.landing_dir / "kill-test", Patient("7002"), instances=8, modality="CT",
                            body_part="CHEST")
        prod.wait_for(lambda: hold.with_name(hold.name + ".hit").exists(), 300, "worker-2 to hold mid-chunk")
        worker = _recorded(settings, "celery-worker-2")
        os.killpg(worker.pid, signal.SIGKILL)  # the whole host's worker, its task processes included
        hold.unlink()
        app.control.add_consumer("default", destination=["celery@worker-1"], reply=True, timeout=10)

        def done():
            new = [o for o in _originals(svc) if o.id not in before]
            return new if len(new) == len(files) and not any(o.state in MOVING for o in new) else None

        new = prod.wait_for(done, 400, "the killed chunk retried to the end", interval=3)
    finally:
        hold.unlink(missing_ok=True)
        app.close()
    assert len({o.sop_key for o in new}) == len(files)  # every instance once: nothing twice
    assert not [o for o in new if o.quarantine_reason]
    for o in new:  # exactly one archive version each, even for the file that was stored before the kill
        archive = [c for c in svc.catalog.copies(o.id) if c.zone == "archive"]
        assert len(archive) >= 1
        for c in archive:
            assert [v.version_id for v in svc.store.versions("archive", c.key) if v.key == c.key] == [c.version_id]
    chunks = _hosts_of(prod, "ingest")["ingest_chunk"]
    assert "worker-1" in chunks
    _nothing_left_on_any_host(prod, svc)
    prod.cli("platform", "up")  # worker-2 comes back (up starts only what is missing)
    prod.wait_for(lambda: time.sleep(0) or _recorded(settings, "celery-worker-2"), 60, "worker-2 restarted")
