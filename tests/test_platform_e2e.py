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
    password = json.loads((platform_run.state / "secrets" / "airflow-passwords.json").read_text())["admin"]
    assert password in platform_run.up_output
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

    from imaging_lifecycle.platform import ours

    pids = {p.pid for p in ours(platform_run.settings())}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening
    assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening


def test_second_up_reuses_state(platform_run):
    password = json.loads((platform_run.state / "secrets" / "airflow-passwords.json").read_text())["admin"]
    r = platform_run.cli("platform", "up")
    assert password in r.stdout
    assert "migrating" not in r.stdout  # nothing was restarted
