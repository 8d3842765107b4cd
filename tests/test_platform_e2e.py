"""The embedded platform as ``make run`` starts it: status down before, up after, nothing left after stop."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def test_status_reports_each_component_down_before_and_up_after_start(platform_run):
    before = platform_run.status_before
    assert set(before) == {"object-store-primary", "object-store-backup", "catalog", "airflow"}
    assert not any(c["up"] for c in before.values()), before
    after = platform_run.status()
    assert all(c["up"] for c in after.values()), after
    assert platform_run.cli("status").returncode == 0


def test_ui_is_served_within_three_minutes_and_the_printed_login_works(platform_run):
    assert platform_run.up_seconds < 180
    s = platform_run.settings()
    assert s.airflow_url in platform_run.up_output
    password_file = platform_run.state / "secrets" / "airflow-passwords.json"
    password = json.loads(password_file.read_text())["admin"]
    assert str(password_file) in platform_run.up_output and password not in platform_run.up_output  # where, not what
    with urllib.request.urlopen(s.airflow_url + "/", timeout=10) as r:
        assert r.status == 200
    req = urllib.request.Request(
        s.airflow_url + "/auth/token", method="POST",
        data=json.dumps({"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["access_token"]


def test_every_listening_port_is_loopback_only(platform_run):
    import psutil

    from imaging_lifecycle.embedded import ours

    pids = {p.pid for p in ours(platform_run.settings())}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening
    assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening


def test_second_up_reuses_state(platform_run):
    password = json.loads((platform_run.state / "secrets" / "airflow-passwords.json").read_text())["admin"]
    r = platform_run.cli("platform", "up")
    assert password not in r.stdout and "airflow-passwords.json" in r.stdout
    assert json.loads((platform_run.state / "secrets" / "airflow-passwords.json").read_text())["admin"] == password
    assert "migrating" not in r.stdout  # nothing was restarted


def test_first_prune_airflow_traces_run_succeeds_and_no_dag_run_failed(platform_run, airflow_api):
    """The daily trace pruning runs on the first start (its latest interval); it must not greet a new user in red."""
    def finished():
        runs = airflow_api.dag_runs("prune_airflow_traces")
        return [r for r in runs if r["state"] in ("success", "failed")]

    (first, *_) = airflow_api.wait_for(finished, 240, "the first prune_airflow_traces run to finish")
    tis = {t["task_id"]: t["state"] for t in airflow_api.task_instances("prune_airflow_traces", first["dag_run_id"])}
    assert first["state"] == "success", tis
    assert tis == {"old_runs": "success", "log_folder": "success"}
    failed = airflow_api.get("/api/v2/dags/~/dagRuns?state=failed&limit=100")["dag_runs"]
    assert failed == [], [(r["dag_id"], r["dag_run_id"]) for r in failed]


def test_old_airflow_runs_are_pruned_through_the_rest_api(platform_run, airflow_api):
    """The task's pruning, with a cutoff after the first prune run ended: that run and its XCom are gone."""
    import datetime as dt
    import urllib.error

    from imaging_lifecycle.retention import prune_airflow_runs
    from imaging_lifecycle.services import Services

    (run, *_) = [r for r in airflow_api.dag_runs("prune_airflow_traces") if r["state"] == "success"]
    ended = dt.datetime.fromisoformat(run["end_date"].replace("Z", "+00:00"))
    svc = Services.open(platform_run.settings())
    out = prune_airflow_runs(svc, now=ended + dt.timedelta(days=30, seconds=1), max_age=dt.timedelta(days=30))
    assert out["runs_deleted"] >= 1
    with pytest.raises(urllib.error.HTTPError) as gone:
        airflow_api.get(f"/api/v2/dags/prune_airflow_traces/dagRuns/{run['dag_run_id']}")
    assert gone.value.code == 404


def test_the_review_dag_end_to_end_through_the_rest_api(platform_run, airflow_api):
    """Held ultrasound images reach the review queue through the scheduler; a reviewer answers via the API."""
    from imaging_lifecycle import review
    from imaging_lifecycle.services import Services
    from imaging_lifecycle.synthetic import Patient, write_study

    settings = platform_run.settings()
    svc = Services.open(settings)
    write_study(settings.landing_dir / "us-review", Patient("4242"), instances=2, modality="US", body_part="ABDOMEN")
    airflow_api.wait_for(lambda: len(review.waiting(svc)) >= 2, 300, "two held images, through ingest and protect")
    run_id = airflow_api._call("POST", "/api/v2/dags/review/dagRuns", {"logical_date": None})["dag_run_id"]
    base = f"/api/v2/dags/review/dagRuns/{run_id}"

    def parked():
        tis = [t for t in airflow_api.task_instances("review", run_id) if t["task_id"] == "decide"]
        return tis if tis and all(t["state"] == "awaiting_input" for t in tis) else None

    tis = airflow_api.wait_for(parked, 240, "every review request to wait for a person")
    ids = airflow_api.get(f"{base}/taskInstances/waiting/xcomEntries/return_value")["value"]
    assert len(tis) == len(ids) >= 2
    detail = airflow_api.get(f"{base}/taskInstances/decide/0/hitlDetails")
    assert "data:image/png;base64," in detail["body"] and detail["assigned_users"] == [{"id": "admin", "name": "admin"}]

    def answer(i: int) -> dict:  # the first released with a mask, every other one rejected
        if i == 0:
            return {"chosen_options": [review.RELEASE_MASKED], "params_input": {"masks": [[0, 0, 8, 8]]}}
        return {"chosen_options": [review.REJECT], "params_input": {"masks": []}}

    # The reviewer works the Required Actions list: every request that waits gets its answer. Under
    # load Airflow can retry a parked request (its executor reports the parked process as finished
    # while the scheduler still reads it as queued), which asks again; an item already decided is not
    # asked again, and none may be decided twice (checked below).
    def done():
        for t in airflow_api.task_instances("review", run_id):
            if t["task_id"] == "decide" and t["state"] == "awaiting_input":
                path = f"{base}/taskInstances/decide/{t['map_index']}/hitlDetails"
                if not airflow_api.get(path).get("response_received"):
                    airflow_api._call("PATCH", path, answer(t["map_index"]))
        run = airflow_api.get(base)
        return run if run["state"] in ("success", "failed") else None

    finished = airflow_api.wait_for(done, 300, "the review run to finish", interval=2)
    assert finished["state"] == "success", airflow_api.task_instances("review", run_id)
    cat = svc.catalog
    assert cat.get(ids[0]).flagged is None and [o for o in cat.objects() if o.source == f"derived:{ids[0]}"]
    assert all(cat.get(i).flagged == review.REJECTED for i in ids[1:])
    made = [r for r in cat.audit.records() if r.action == "review.decision" and r.object_ref in ids]
    assert sorted(r.object_ref for r in made) == sorted(ids)  # each item decided once, never twice
    decisions = {r.object_ref: r for r in made}
    assert {i: decisions[i].actor for i in ids} == {i: "admin" for i in ids}  # the person who answered
    assert decisions[ids[0]].detail["choice"] == "release_with_mask" and decisions[ids[0]].detail["released"]


def test_no_other_local_user_can_read_anything_the_platform_keeps(platform_run):
    """Every file under the state folder is 0600, every folder 0700; as user nobody, reading any of them fails.

    The platform ran ingest, protect and review by now, so catalog, Airflow database, task logs, S3
    volumes, staged and received files all exist. The folders above the state folder are opened to
    traversal for the attack (as a project folder under /work is), so only our own modes stand in
    the way.
    """
    import os
    import stat
    import subprocess
    import sys

    state = platform_run.state
    loose = []
    for dirpath, dirs, files in os.walk(state):
        if dirpath == str(state / "landing"):
            dirs[:] = []  # what a sender drops is the sender's until the claim takes it (the folder is 0700)
        for name in [*dirs, *files]:
            p = os.path.join(dirpath, name)
            # SeaweedFS writes its volume-info files (.vif: version and replication, no data) 0644
            # whatever the umask; they sit in 0700 folders.
            if not os.path.islink(p) and os.lstat(p).st_mode & 0o077 and not p.endswith(".vif"):
                loose.append(p)
    assert not (state.stat().st_mode & 0o077) and loose == [], loose[:10]
    assert not [p for p in (state / "s3").rglob("*") if p.is_dir() and p.stat().st_mode & 0o077]
    targets = [str(p) for p in (state / "catalog.sqlite", state / "airflow" / "airflow.db",
                                state / "secrets" / "airflow-passwords.json") if p.exists()]
    targets += [str(p) for p in sorted(state.rglob("*.log"))[:5]]
    targets += [str(p) for p in sorted((state / "s3").rglob("*")) if p.is_file()][:5]
    assert len(targets) >= 8
    opened = []
    parents = [p for p in state.parents if str(p).startswith("/tmp/")]
    before = {p: stat.S_IMODE(p.stat().st_mode) for p in parents}
    try:
        for p in parents:
            os.chmod(p, before[p] | 0o011)  # others may traverse, not list
        probe = ("import os, sys\nos.setgid(65534); os.setuid(65534)\nopened = []\n"
                 "for t in sys.argv[1:]:\n    try:\n        open(t, 'rb').read(1); opened.append(t)\n"
                 "    except PermissionError:\n        pass\n"
                 "try:\n    os.listdir(sys.argv[1].rsplit('/', 1)[0]); opened.append('listdir')\n"
                 "except PermissionError:\n    pass\nprint('\\n'.join(opened))\n")
        r = subprocess.run([sys.executable, "-c", probe, *targets], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        opened = [line for line in r.stdout.splitlines() if line]
    finally:
        for p, mode in before.items():
            os.chmod(p, mode)
    assert opened == []
