"""The two-person rule on a running platform, through Airflow's REST API, each person with their own token.

``clinician`` asks for a working copy of a tier-3 study; ``dso`` and then
``radiology-head`` approve in Airflow's human-in-the-loop API; only then can
``clinician`` download it from the Lifecycle plugin, and nobody else can.
After the deadline (the test clock runs the sweep) the copy and its key are
gone and the download is refused. The audit trail names each person.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from urllib.parse import quote

import pytest

from conftest import Person, browser_download, platform_run_cli

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_two_people_approve_then_only_the_requester_downloads_until_the_deadline(platform_run, airflow_api):
    from imaging_lifecycle import access, deletion
    from imaging_lifecycle.services import Services
    from imaging_lifecycle.synthetic import Patient, write_study

    settings = platform_run.settings()
    svc = Services.open(settings)
    people = {n: Person(platform_run, n) for n in ("clinician", "dso", "radiology-head", "operator")}
    clinician, dso, head = people["clinician"], people["dso"], people["radiology-head"]

    # A tier-3 chest study reaches the archive through ingest and protect.
    folder = settings.landing_dir / "chest-for-access"
    before = {o.id for o in svc.catalog.objects()}
    write_study(folder, Patient("5151"), instances=1, modality="CT", body_part="CHEST")
    original = next(folder.rglob("*.dcm")).read_bytes()

    def stored():  # this study's original (other tests may have stored tier-3 objects before)
        objs = [o for o in svc.catalog.objects() if o.tier == 3 and o.state in ("STORED", "BACKED_UP")
                and not (o.source or "").startswith("derived:") and o.id not in before]
        return objs if objs else None

    (obj,) = _wait(stored, 300, "the chest study to be stored")

    # 1. clinician asks, through the trigger API; the requester is whoever Airflow authenticated.
    status, run = clinician.call("POST", "/api/v2/dags/access_request/dagRuns", {
        "logical_date": None, "conf": {"catalog_ids": [obj.id], "action": "working_copy", "purpose": "treatment",
                                       "hours": 2, "justification": "follow-up of the nodule seen last month"}})
    assert status == 200, status
    run_id = run["dag_run_id"]
    base = f"/api/v2/dags/access_request/dagRuns/{quote(run_id)}"

    def waiting(task_id: str, map_index: int = -1):
        def check():
            tis = [t for t in airflow_api.task_instances("access_request", run_id) if t["task_id"] == task_id]
            return tis if tis and tis[0]["state"] == "awaiting_input" else None
        _wait(check, 240, f"{task_id} to wait for a person")
        return f"{base}/taskInstances/{task_id}/{map_index}/hitlDetails"

    # 2. The data security officer's step: assigned to dso alone; nobody else may answer it.
    dso_step = waiting("dso_approval")
    detail = airflow_api.get(dso_step)
    assert detail["assigned_users"] == [{"id": "dso", "name": "dso"}] and "follow-up of the nodule" in detail["body"]
    approve = {"chosen_options": [access.APPROVE]}
    assert clinician.call("PATCH", dso_step, approve)[0] == 403  # the requester cannot approve
    assert head.call("PATCH", dso_step, approve)[0] == 403  # not this step's role
    assert dso.call("PATCH", dso_step, approve)[0] == 200

    # 3. The department head's step: dso may not approve twice, the head does.
    head_step = waiting("head_approval", 0)
    assert airflow_api.get(head_step)["assigned_users"] == [{"id": "radiology-head", "name": "radiology-head"}]
    assert dso.call("PATCH", head_step, approve)[0] == 403
    assert head.call("PATCH", head_step, approve)[0] == 200

    # The approvers work their Required Actions list: under load Airflow can retry a parked request
    # (its executor reports the parked process finished), which asks again; each person answers what
    # waits for them. A step already answered is never asked again, and none is decided twice (below).
    def finished():
        for t in airflow_api.task_instances("access_request", run_id):
            if t["state"] == "awaiting_input":
                path = f"{base}/taskInstances/{t['task_id']}/{t['map_index']}/hitlDetails"
                if not airflow_api.get(path).get("response_received"):
                    (dso if t["task_id"] == "dso_approval" else head).call("PATCH", path, approve)
        r = airflow_api.get(base)
        return r if r["state"] in ("success", "failed") else None

    assert _wait(finished, 240, "the access request run to finish", interval=2)["state"] == "success"
    rid = airflow_api.get(f"{base}/taskInstances/validate/xcomEntries/return_value")["value"]
    shown = json.loads(platform_run.cli("access", "show", rid, "--json").stdout)
    assert shown["state"] == "FULFILLED" and shown["requester"] == "clinician"
    assert [(d["step"], d["approver"]) for d in shown["decisions"]] == [("dso", "dso"),
                                                                         ("head:radiology", "radiology-head")]
    assert len([r for r in svc.catalog.audit.records() if r.action == "access.decision"
                and r.detail["request"] == rid]) == 2  # each step decided exactly once
    (grant,) = shown["grants"]
    download = f"/lifecycle/api/grants/{grant['grant_id']}/download"

    # 4. The requester downloads the exact original; nobody else can, and nobody without a login.
    status, body = clinician.call("GET", download, raw=True)
    assert status == 200 and body == original
    assert dso.call("GET", download, raw=True)[0] == 403
    assert people["operator"].call("GET", download, raw=True)[0] == 403
    assert clinician.call("GET", download, auth=False, raw=True)[0] in (401, 403)
    assert clinician.call("GET", "/lifecycle/api/grants/" + "0" * 32 + "/download", raw=True)[0] == 404

    # The same, as a person does it: logged in to the UI in a real browser (the _token cookie, no header).
    import shutil
    import warnings

    if shutil.which("chromium"):
        assert browser_download(platform_run, "clinician", download) == (200, original)
        assert browser_download(platform_run, "dso", download)[0] == 403
    else:  # make test installs it where apt is available
        warnings.warn("Debian's chromium is not installed: the browser half of this walk was not run", stacklevel=1)

    # 5. After the deadline (the test clock), the sweeper erases the copy and its key; the download is refused.
    deadline = dt.datetime.fromisoformat(grant["deadline"])
    kek = svc.keystore.current(f"grant:{grant['grant_id']}")
    assert kek is not None and deadline - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(hours=2)
    out = deletion.sweep(svc, deadline + dt.timedelta(minutes=15), actor="system:test/sweeper")
    assert out["grants_erased"] >= 1
    assert clinician.call("GET", download, raw=True)[0] == 403
    g = svc.catalog.grant(grant["grant_id"])
    assert g["erased_at"] is not None and not [c for c in svc.catalog.copies(obj.id) if c.zone == "cache"]
    assert svc.keystore.is_destroyed(kek.kek_id)

    # The trail names each person at each step.
    mine = [r for r in svc.catalog.audit.records() if r.detail.get("request") == rid or r.detail.get("grant") ==
            grant["grant_id"]]
    steps = [(r.actor, r.action, r.outcome) for r in mine]
    assert ("clinician", "access.request", "success") in steps
    assert ("dso", "access.decision", "success") in steps and ("radiology-head", "access.decision", "success") in steps
    assert ("clinician", "grant.create", "success") in steps and ("clinician", "grant.read", "success") in steps
    assert ("dso", "grant.read", "failure") in steps and ("clinician", "grant.read", "failure") in steps
    assert all(not r.actor.startswith(("access_request/", "dag_test")) for r in mine)


def test_commands_that_act_for_a_person_use_the_name_airflow_finds_in_their_token(platform_run, tmp_path):
    from imaging_lifecycle.services import Services

    settings = platform_run.settings()
    svc = Services.open(settings)
    oid = next(o.id for o in svc.catalog.objects() if o.state in ("STORED", "BACKED_UP"))
    operator = Person(platform_run, "operator")

    def cli(*args, **env):
        return platform_run_cli(platform_run, args, env)

    r = cli("legal-hold", "set", oid, IL_AIRFLOW_TOKEN=operator.token)
    assert r.returncode == 0, r.stderr
    held = [x for x in svc.catalog.audit.records(object_ref=oid) if x.action == "object.legal_hold"][-1]
    assert held.actor == "operator"
    r = cli("legal-hold", "release", oid, IL_AIRFLOW_TOKEN=operator.token)
    assert r.returncode == 2 and "NO_REQUEST" in r.stderr and svc.catalog.get(oid).legal_hold
    forged = operator.token[:-4] + ("AAAA" if not operator.token.endswith("AAAA") else "BBBB")
    r = cli("legal-hold", "set", oid, IL_AIRFLOW_TOKEN=forged)
    assert r.returncode == 2 and "did not accept your token" in r.stderr
    r = cli("login", "operator", "--password-stdin", IL_TOKEN_FILE=str(tmp_path / "tok"), stdin="wrong\n")
    assert r.returncode == 2 and not (tmp_path / "tok").exists()
    password = json.loads((platform_run.state / "secrets" / "airflow-passwords.json").read_text())["operator"]
    r = cli("login", "operator", "--password-stdin", IL_TOKEN_FILE=str(tmp_path / "tok"), stdin=password + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)["user"] == "operator"
    assert (tmp_path / "tok").stat().st_mode & 0o777 == 0o600
