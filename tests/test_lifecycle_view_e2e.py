"""The operator's Lifecycle view on the running platform, in Debian's chromium, against the catalog's numbers.

Also: the view is in the UI's navigation (the plugin's external view), it refuses a caller without
Airflow's login, an incident is acknowledged and resolved from the command line by the logged-in
person, and a compliance report made by the command line is listed on the page and downloads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import Person, platform_run_cli

pytestmark = [pytest.mark.platform, pytest.mark.slow]

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def _page_numbers(page) -> dict[str, int]:
    out = {}
    for el in page.query_selector_all("[data-k]"):
        text = el.inner_text().replace(",", "").strip()
        if text.lstrip("-").isdigit():
            out[el.get_attribute("data-k")] = int(text)
    return out


def test_the_page_shows_the_catalogs_numbers_behind_airflows_login(platform_run, tmp_path):
    from imaging_lifecycle import incidents
    from imaging_lifecycle.services import Services

    settings = platform_run.settings()
    svc = Services.open(settings)
    base = settings.airflow_url
    with pytest.raises(urllib.error.HTTPError) as err:  # no login, no page
        urllib.request.urlopen(base + "/lifecycle/", timeout=30)
    assert err.value.code in (401, 403)

    operator = Person(platform_run, "operator")
    views = [v for p in operator.call("GET", "/api/v2/plugins")[1]["plugins"] for v in p.get("external_views", [])]
    assert any(v["name"] == "Lifecycle" and v["href"] == "/lifecycle/" for v in views), views

    # An incident to work, and a report to list: both through the command line.
    svc.catalog.add_request(os.urandom(16).hex(), action="working_copy", requester="clinician", object_ids=[],
                            departments=["radiology"], tiers=[3], purpose="treatment", hours=1, justification="x",
                            agreement_id=None, policy_target=None, emergency=True,
                            policy_fingerprint=svc.policy.fingerprint, state="APPROVED",
                            expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    r = platform_run_cli(platform_run, ("incidents", "detect"), {})
    assert r.returncode == 0, r.stderr
    (new,) = [i for i in json.loads(r.stdout)["new"] if svc.catalog.incident(i)["nature"] == "emergency"]
    r = platform_run_cli(platform_run, ("report", "make"), {})
    assert r.returncode == 0, r.stderr
    report_id = json.loads(r.stdout)["report"]

    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (make test installs it where apt is available)")
    from playwright.sync_api import sync_playwright

    password = json.loads((platform_run.state / "secrets" / "airflow-passwords.json").read_text())["operator"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1600}).new_page()
            page.goto(f"{base}/auth/login/")
            page.fill("input[name=username]", "operator")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60000)
            page.goto(f"{base}/lifecycle/")
            shown = _page_numbers(page)
            summary = page.context.request.get(f"{base}/lifecycle/api/summary").json()
            pdf = page.context.request.get(f"{base}/lifecycle/api/reports/{report_id}/pdf")
            pdf_status, pdf_body = pdf.status, pdf.body()
            page.screenshot(path=str(tmp_path / "lifecycle.png"), full_page=True)
            if os.environ.get("SAVE_SCREENSHOTS") == "1":
                SHOTS.mkdir(exist_ok=True)
                page.screenshot(path=str(SHOTS / "lifecycle-view.png"), full_page=True)
            page.goto(f"{base}/plugin/lifecycle")  # the same page inside Airflow's UI (the nav entry)
            page.wait_for_selector("iframe", timeout=60000)
        finally:
            browser.close()

    # The page's numbers are the catalog's.
    objects = svc.catalog.objects()
    assert sum(v for k, v in shown.items() if k.startswith("objects.")) == len(objects)
    assert shown["overdue"] == len(svc.catalog.overdue(summary_now(summary) - svc.policy.monitoring.overdue_grace))
    assert shown["quarantine.total"] == sum(o.state == "QUARANTINED" for o in objects)
    assert shown["review_queue.count"] == sum(o.state == "NEEDS_REVIEW" for o in objects)
    assert shown["incidents.open"] == len(svc.catalog.incidents(open_only=True)) >= 1
    assert shown["audit.head_seq"] <= svc.catalog.audit.head()[0] and summary["audit"]["verified"]
    # Reports are for the policy's report readers (the data security officer), not every viewer.
    assert pdf_status == 403 and b"%PDF" not in pdf_body
    status, body = Person(platform_run, "dso").call("GET", f"/lifecycle/api/reports/{report_id}/pdf", raw=True)
    assert status == 200 and body.startswith(b"%PDF")
    assert any(r.action == "report.read" and r.actor == "dso" for r in svc.catalog.audit.records(last=50))
    # The view names the people incidents are about: a requester (or a department head) may not open it.
    assert Person(platform_run, "clinician").call("GET", "/lifecycle/api/summary")[0] == 403
    assert Person(platform_run, "radiology-head").call("GET", "/lifecycle/")[0] == 403

    # A named person works the incident from the command line; it leaves the page's open count.
    r = platform_run_cli(platform_run, ("incidents", "ack", new), {"IL_AIRFLOW_TOKEN": operator.token})
    assert r.returncode == 2 and "NOT_RESPONSIBLE" in r.stderr  # not the role this incident needs
    clinician = Person(platform_run, "clinician")
    r = platform_run_cli(platform_run, ("incidents", "ack", new), {"IL_AIRFLOW_TOKEN": clinician.token})
    assert r.returncode == 2 and "IS_THE_SUBJECT" in r.stderr  # nobody closes an incident about themselves
    dso = Person(platform_run, "dso")
    for step in ("ack", "resolve"):
        r = platform_run_cli(platform_run, ("incidents", step, new, "--note", "REVIEWED"),
                             {"IL_AIRFLOW_TOKEN": dso.token})
        assert r.returncode == 0, r.stderr + r.stdout
    done = svc.catalog.incident(new)
    assert done["state"] == "RESOLVED" and done["acknowledged_by"] == done["resolved_by"] == "dso"
    r = platform_run_cli(platform_run, ("incidents", "ack", new), {"IL_AIRFLOW_TOKEN": dso.token})
    assert r.returncode == 2  # resolved already: a clear refusal, nothing changed
    assert incidents.LOOKBACK.days >= 365


def summary_now(summary: dict):
    return dt.datetime.fromisoformat(summary["generated_at"])
