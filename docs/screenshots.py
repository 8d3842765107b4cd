"""Take the README's access walk-through screenshots from a running platform (``make run`` first).

    .venv/bin/python docs/screenshots.py

Drives Debian's chromium through Playwright (no browser download). It makes a
real request as ``clinician``, shows the trigger form, the data security
officer's Required Actions page, then has both approvers answer and the
clinician download the copy through the UI's login cookie.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from imaging_lifecycle.services import Services

OUT = Path(__file__).parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"


def api(base: str, token: str | None, method: str, path: str, body: dict | None = None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def login(page, base: str, user: str, password: str) -> None:
    page.goto(f"{base}/auth/login/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30000)


def main() -> int:
    svc = Services.open()
    base = svc.settings.airflow_url
    passwords = json.loads((svc.settings.secrets_dir / "airflow-passwords.json").read_text())
    token = {u: api(base, None, "POST", "/auth/token", {"username": u, "password": p})["access_token"]
             for u, p in passwords.items()}
    objs = [o for o in svc.catalog.objects() if o.tier == 3 and o.state in ("STORED", "BACKED_UP")
            and not (o.source or "").startswith("derived:")]
    if not objs:
        print("no tier-3 object stored yet: run 'make run' and wait for the demo to be protected", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        clinician = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        page = clinician.new_page()
        login(page, base, "clinician", passwords["clinician"])
        page.goto(f"{base}/dags/access_request")
        page.get_by_role("button", name="Trigger").first.click()
        time.sleep(2)
        page.screenshot(path=OUT / "access-request-form.png")
        run = api(base, token["clinician"], "POST", "/api/v2/dags/access_request/dagRuns", {
            "logical_date": None, "conf": {"catalog_ids": [objs[0].id], "action": "working_copy",
                                           "purpose": "treatment", "hours": 2,
                                           "justification": "follow-up of the nodule seen last month"}})
        run_base = f"/api/v2/dags/access_request/dagRuns/{urllib.request.quote(run['dag_run_id'])}"

        def answer(task_id: str, who: str, map_index: int) -> None:
            path = f"{run_base}/taskInstances/{task_id}/{map_index}/hitlDetails"
            for _ in range(240):
                tis = api(base, token["admin"], "GET", f"{run_base}/taskInstances")["task_instances"]
                if any(t["task_id"] == task_id and t["state"] == "awaiting_input" for t in tis):
                    break
                time.sleep(1)
            if who == "dso":
                dso = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                login(dso, base, "dso", passwords["dso"])
                dso.goto(f"{base}/required_actions")
                time.sleep(3)
                dso.screenshot(path=OUT / "required-actions.png")
            api(base, token[who], "PATCH", path, {"chosen_options": ["Approve"]})

        answer("dso_approval", "dso", -1)
        answer("head_approval", "radiology-head", 0)
        for _ in range(240):
            if api(base, token["admin"], "GET", run_base)["state"] in ("success", "failed"):
                break
            time.sleep(1)
        rid = api(base, token["admin"], "GET", f"{run_base}/taskInstances/validate/xcomEntries/return_value")["value"]
        from imaging_lifecycle import access

        grant = access.show(svc, rid)["grants"][0]["grant_id"]
        with page.expect_download() as got:
            page.evaluate(f"window.location = '{base}/lifecycle/api/grants/{grant}/download'")
        data = Path(got.value.path()).read_bytes()
        print(json.dumps({"request": rid, "downloaded_bytes": len(data), "expected": objs[0].size}))
        page.goto(f"{base}/dags/access_request/runs/{run['dag_run_id']}")
        time.sleep(3)
        page.screenshot(path=OUT / "access-request-done.png")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
