"""The ingest DAG: in-process with dag.test(), and end to end through the scheduler and triggerer."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote

import pytest

from conftest import PROJECT


def test_ingest_dag_runs_in_process_with_dag_test(airflow_db, object_store_settings, tmp_path, monkeypatch):
    from imaging_lifecycle.synthetic import Patient, write_study

    monkeypatch.setenv("IL_LANDING_DIR", str(tmp_path / "landing"))
    monkeypatch.setenv("IL_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    monkeypatch.setenv("IL_INGEST_QUIET_SECONDS", "0")
    write_study(tmp_path / "landing" / "s1", Patient("0815"), instances=4)
    (tmp_path / "landing" / "junk.dcm").write_bytes(b"not dicom at all" * 10)
    from airflow.dag_processing.dagbag import DagBag

    from imaging_lifecycle import landing

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "ingest.py")).dags["ingest"]
    # First as a worker that is not the landing host would run it (its folder has no landing identity):
    # the run fails, never a success that leaves the files waiting.
    dag.get_task("claim_batch").retries = 0  # Airflow would retry it (on the landing queue); once shows it
    run = dag.test()
    assert run.state == "failed"
    assert len(list((tmp_path / "landing").rglob("*.dcm"))) == 5
    landing.ensure_identity(tmp_path / "landing")  # now this is the landing host (the trigger would say so)
    run = dag.test()
    assert run.state == "success"
    from imaging_lifecycle.catalog import Catalog

    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    states = sorted(o.state for o in cat.objects())
    assert states == ["QUARANTINED"] + ["VALIDATED"] * 4
    assert not list((tmp_path / "landing").rglob("*.dcm"))


@pytest.mark.platform
@pytest.mark.slow
def test_a_folder_drop_triggers_ingest_through_scheduler_and_triggerer(platform_run, airflow_api):
    """No manual trigger: the AssetWatcher's trigger sees the batch and the scheduler runs the DAG."""
    from imaging_lifecycle.catalog import Catalog
    from imaging_lifecycle.synthetic import Patient, write_study

    settings = platform_run.settings()
    airflow_api.wait_for(lambda: any(d["dag_id"] == "ingest" for d in airflow_api.get("/api/v2/dags")["dags"]),
                         120, "the ingest DAG to be parsed")
    before = {r["dag_run_id"] for r in airflow_api.dag_runs("ingest")}
    patient = Patient("2024")
    t0 = time.time()
    write_study(settings.landing_dir / "drop", patient, instances=5)

    def finished():
        runs = [r for r in airflow_api.dag_runs("ingest") if r["dag_run_id"] not in before]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return done[0] if done else None

    run = airflow_api.wait_for(finished, 240, "an ingest run started by the landing folder")
    latency = time.time() - t0
    assert run["state"] == "success", run
    assert run["run_type"] == "asset_triggered"
    # This run's batch, by its gate's result. Its objects are checked by batch, in any state from
    # VALIDATED on: the ingest asset starts protect at once, and protect may already have moved them
    # on by the time this test reads the catalog (a count of VALIDATED objects raced it).
    summary = airflow_api.get(f"/api/v2/dags/ingest/dagRuns/{quote(run['dag_run_id'])}/taskInstances/gate/"
                              f"xcomEntries/return_value")["value"]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    cat = Catalog(settings.catalog_url)
    ingested = {"VALIDATED", "CLASSIFIED", "NEEDS_REVIEW", "DEIDENTIFIED", "PROTECTED", "STORED", "BACKED_UP"}
    states = [o.state for o in cat.objects(batch_id=summary["batch_id"])
              if not (o.source or "").startswith("derived:")]  # protect's derivatives share the batch
    assert summary["stored"] == 5 and len(states) == 5 and set(states) <= ingested, (summary, states)
    assert not list(settings.landing_dir.rglob("*.dcm"))
    print(f"\narrival -> completed ingest: {latency:.1f} s "
          f"(quiet period {os.environ.get('IL_INGEST_QUIET_SECONDS', '5')} s)")

    # No identifier in task logs, XCom or the audit trail.
    logs = "".join(p.read_text(errors="replace") for p in (platform_run.state / "airflow" / "logs").rglob("*")
                   if p.is_file())
    xcoms = ""
    for ti in airflow_api.task_instances("ingest", run["dag_run_id"]):
        path = (f"/api/v2/dags/ingest/dagRuns/{run['dag_run_id']}/taskInstances/{ti['task_id']}/xcomEntries"
                f"?map_index={ti.get('map_index', -1)}")
        for entry in airflow_api.get(path)["xcom_entries"]:
            xcoms += json.dumps(airflow_api.get(f"/api/v2/dags/ingest/dagRuns/{run['dag_run_id']}/taskInstances/"
                                                f"{ti['task_id']}/xcomEntries/{entry['key']}"
                                                f"?map_index={ti.get('map_index', -1)}"))
    audit = json.dumps([r.public() for r in cat.audit.records()], default=str)
    assert "batch_id" in xcoms and logs
    for marker in patient.markers():
        assert marker not in logs, "identifier in task logs"
        assert marker not in xcoms, "identifier in XCom"
        assert marker not in audit, "identifier in audit records"


@pytest.mark.platform
@pytest.mark.slow
def test_ingest_triggers_protect_and_the_sweeper_runs_on_its_schedule(platform_run, airflow_api):
    """Data-aware chaining: the asset ingest emits starts protect; the 15-minute sweeper runs by itself."""
    from imaging_lifecycle.catalog import Catalog

    settings = platform_run.settings()

    cat = Catalog(settings.catalog_url)

    def originals_states() -> set[str]:
        return {o.state for o in cat.objects() if not (o.source or "").startswith("derived:")}

    def protect_done():
        # Other tests share this platform and drop studies of their own: a protect run that finished
        # earlier (for their batch) does not mean this test's batch is through. Wait for the run that
        # leaves every original stored.
        runs = [r for r in airflow_api.dag_runs("protect") if r["state"] in ("success", "failed")]
        if runs and runs[0]["state"] == "failed":
            return runs[0]
        return runs[0] if runs and originals_states() <= {"STORED", "BACKED_UP"} else None

    run = airflow_api.wait_for(protect_done, 300, "a protect run started by the ingest asset")
    assert run["state"] == "success", run
    assert run["run_type"] == "asset_triggered"
    assert originals_states() <= {"STORED", "BACKED_UP"}, originals_states()
    assert any((o.source or "").startswith("derived:") for o in cat.objects())  # tier-3 chest CTs

    def sweeper_done():
        runs = [r for r in airflow_api.dag_runs("sweeper") if r["state"] in ("success", "failed")]
        return runs[0] if runs else None

    sweep = airflow_api.wait_for(sweeper_done, 240, "a scheduled sweeper run")
    assert sweep["state"] == "success", sweep
    assert cat.audit.verify().ok
