"""``platform up --executor celery``: PostgreSQL, Redis, CeleryExecutor and two workers on two "hosts".

One platform for the module (its own state folder under /tmp, ports shifted by 600), started
for real and stopped at the end; the last test checks that ``platform down`` leaves nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psutil
import pytest
from tests.celery_platform import (
    HOSTS_DAG_ID,
    MAPPED,
    USER_AUTH_MANAGER,
    USER_PARALLELISM,
    CeleryPlatform,
    as_nobody,
)

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def _missing() -> list[str]:
    from imaging_lifecycle.embedded import celery_tools_missing

    missing = celery_tools_missing()
    missing += [t for t in ("psql", "redis-cli", "runuser") if not shutil.which(t)]
    return missing


@pytest.fixture(scope="module")
def celery_platform():
    import time

    missing = _missing()
    if missing:
        pytest.skip(f"the celery mode needs Debian's PostgreSQL and Redis ({', '.join(missing)} missing; "
                    "make test-tools installs them)")
    p = CeleryPlatform()
    t0 = time.monotonic()
    try:
        p.up_result = p.cli("platform", "up", "--executor", "celery")
        p.up_seconds = time.monotonic() - t0
        print(f"celery platform up in {p.up_seconds:.1f} s")
        yield p
    finally:
        p.cli("platform", "down", check=False)
        shutil.rmtree(p.dags, ignore_errors=True)
        shutil.rmtree(p.state, ignore_errors=True)


def _processes(p: CeleryPlatform) -> list[psutil.Process]:
    from imaging_lifecycle.embedded import ours

    return ours(p.settings())


def _recorded(p: CeleryPlatform, name: str) -> psutil.Process:
    from imaging_lifecycle.embedded import _recorded

    proc = _recorded(p.settings(), name)
    assert proc is not None, f"{name} is not running"
    return proc


def test_up_starts_everything_and_status_sees_each_part(celery_platform):
    p = celery_platform
    assert p.up_seconds < 240, p.up_seconds
    assert "executor:    celery, workers worker-1, worker-2" in p.up_result.stdout
    status = json.loads(p.cli("status", "--json").stdout)
    assert set(status) == {"object-store-primary", "object-store-backup", "catalog", "broker", "worker-1",
                           "worker-2", "airflow"}
    assert all(c["up"] for c in status.values()), status
    assert status["catalog"]["detail"].endswith("/il_catalog")  # the PostgreSQL catalog, not SQLite
    assert not (p.state / "catalog.sqlite").exists() and not (p.state / "airflow" / "airflow.db").exists()
    st = json.loads(p.cli("platform", "status").stdout)
    assert st["executor"] == "celery" and all(st["services"].values())
    assert {"postgres", "redis", "celery-worker-1", "celery-worker-2"} <= set(st["services"])


def test_both_workers_answer_a_celery_ping_over_the_password_protected_broker(celery_platform):
    from celery import Celery

    from imaging_lifecycle.embedded import backends

    broker = backends(celery_platform.settings()).broker

    app = Celery(broker=broker)
    try:
        replies = app.control.ping(timeout=5)
    finally:
        app.close()
    assert {"celery@worker-1", "celery@worker-2"} <= {name for reply in replies for name in reply}, replies


def test_mapped_tasks_run_on_both_hosts_each_with_its_own_state_and_the_shared_things(celery_platform):
    p = celery_platform
    p.wait_for(lambda: p.call("GET", f"/api/v2/dags/{HOSTS_DAG_ID}"), 180, "the test DAG to be parsed")
    run_id = p.call("POST", f"/api/v2/dags/{HOSTS_DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]
    base = f"/api/v2/dags/{HOSTS_DAG_ID}/dagRuns/{run_id}"

    def finished():
        run = p.call("GET", base)
        return run if run["state"] in ("success", "failed") else None

    run = p.wait_for(finished, 300, "the test DAG run to finish", interval=2)
    tis = p.call("GET", f"{base}/taskInstances?limit=100")["task_instances"]
    assert run["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    mapped = [t for t in tis if t["task_id"] == "where"]
    assert len(mapped) == MAPPED
    # What Airflow records as each task instance's host, as the REST API shows it.
    assert {t["hostname"] for t in mapped} == {"worker-1", "worker-2"}, [t["hostname"] for t in mapped]
    (landing,) = [t for t in tis if t["task_id"] == "on_landing_host"]
    assert landing["queue"] == "landing" and landing["hostname"] == "worker-1"

    main_state = str(p.state)
    w2 = p.state / "hosts" / "worker-2"
    for t in mapped:
        seen = p.call("GET", f"{base}/taskInstances/where/xcomEntries/return_value?map_index={t['map_index']}")
        seen = seen["value"]
        seen = json.loads(seen) if isinstance(seen, str) else seen
        assert seen["host"] == t["hostname"]
        assert seen["catalog_role"] == "il_pipeline"  # the pipeline's role, which owns nothing
        p.seen.append(seen)
        if t["hostname"] == "worker-1":  # the landing host: the platform's own state and landing folder
            assert seen["state_dir"] == main_state and seen["landing_dir"] == str(p.state / "landing")
        else:  # another host: its own state folder, an empty landing folder, a copy of the CA
            assert seen["state_dir"] == str(w2) and seen["landing_dir"] == str(w2 / "landing")
            assert seen["landing_entries"] == []
            assert seen["s3_verify"] == str(w2 / "ca.crt")
            # Its keys come from the KMS, reached with a client certificate in its own folder: no key in its env.
            assert seen["kmip_cert"].startswith(str(w2 / "kmip"))
            assert seen["secrets_in_env"] == [] and not seen["has_jwt_secret"]


def test_user_airflow_settings_win_except_the_ones_the_platform_controls(celery_platform, monkeypatch):
    from imaging_lifecycle import embedded

    p = celery_platform
    # As Airflow resolved them in each task (both hosts): the user's parallelism, our executor and auth manager.
    assert p.seen, "the mapped-task run above did not record what the tasks saw"
    assert {s["parallelism"] for s in p.seen} == {USER_PARALLELISM}
    assert {s["executor"] for s in p.seen} == {"CeleryExecutor"}
    assert USER_AUTH_MANAGER not in {s["auth_manager"] for s in p.seen}
    assert "AIRFLOW__CORE__AUTH_MANAGER is set by the platform" in p.up_result.stderr
    assert p.call("GET", "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy"  # our login works
    # The one environment every Airflow component starts with (their own /proc environ is overwritten
    # by setproctitle): the user's variable is left out, so theirs reaches the process; ours is kept.
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", USER_PARALLELISM)
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES_CMD", "echo True")  # the _CMD form counts as set too
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", USER_AUTH_MANAGER)
    settings = p.settings()
    creds = embedded.ensure_credentials(settings)
    for executor, found in (("local", None), ("celery", embedded.backends(settings))):
        env = embedded.airflow_env(settings, creds, executor, found)
        assert "AIRFLOW__CORE__PARALLELISM" not in env and "AIRFLOW__CORE__LOAD_EXAMPLES" not in env
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] != USER_AUTH_MANAGER
        assert "AIRFLOW__CORE__EXECUTOR" in env and "AIRFLOW__CORE__FERNET_KEY" in env
    assert "AIRFLOW__CORE__AUTH_MANAGER" in embedded.ignored_overrides()


def test_postgresql_refuses_a_local_user_without_the_password(celery_platform):
    from imaging_lifecycle.embedded import PG_AIRFLOW_DB, PG_CATALOG_DB

    p = celery_platform
    pg_port = str(p.settings().port("postgres"))
    psql = shutil.which("psql")
    for role, db in (("postgres", "postgres"), ("il_airflow", PG_AIRFLOW_DB), ("il_catalog_owner", PG_CATALOG_DB),
                     ("il_pipeline", PG_CATALOG_DB)):
        argv = [psql, "-h", "127.0.0.1", "-p", pg_port, "-U", role, "-d", db, "-w", "-c", "SELECT 1"]
        r = as_nobody(argv)
        assert r.returncode != 0 and "no password supplied" in r.stderr, (role, r.stdout, r.stderr)
        r = as_nobody(argv, {"PGPASSWORD": "wrong-" + p.secrets()[role][:4]})
        assert r.returncode != 0 and "password authentication failed" in r.stderr, (role, r.stdout, r.stderr)
    # No Unix socket to try instead (peer authentication would need none).
    assert not list((p.state / "pg").rglob(".s.PGSQL.*"))
    for d in ("/var/run/postgresql", "/tmp"):
        assert not list(Path(d).glob(f".s.PGSQL.{pg_port}*"))
    # With the right password the roles work, and the pipeline's may not enter Airflow's database.
    ok = as_nobody([psql, "-h", "127.0.0.1", "-p", pg_port, "-U", "il_pipeline", "-d", PG_CATALOG_DB, "-w",
                    "-tAc", "SELECT count(*) FROM audit_head"], {"PGPASSWORD": p.secrets()["il_pipeline"]})
    assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr
    no = as_nobody([psql, "-h", "127.0.0.1", "-p", pg_port, "-U", "il_pipeline", "-d", PG_AIRFLOW_DB, "-w",
                    "-c", "SELECT 1"], {"PGPASSWORD": p.secrets()["il_pipeline"]})
    assert no.returncode != 0 and "permission denied" in no.stderr, no.stderr


def test_redis_refuses_a_local_user_without_the_password(celery_platform):

    p = celery_platform
    cli = [shutil.which("redis-cli"), "-h", "127.0.0.1", "-p", str(p.settings().port("redis"))]
    for cmd in (["PING"], ["CONFIG", "GET", "requirepass"], ["KEYS", "*"]):
        r = as_nobody([*cli, *cmd])
        assert "NOAUTH" in r.stdout + r.stderr, (cmd, r.stdout, r.stderr)
    r = as_nobody([*cli, "--no-auth-warning", "PING"], {"REDISCLI_AUTH": "wrong-" + p.secrets()["redis"][:4]})
    assert "WRONGPASS" in r.stdout + r.stderr, (r.stdout, r.stderr)
    r = as_nobody([*cli, "--no-auth-warning", "PING"], {"REDISCLI_AUTH": p.secrets()["redis"]})
    assert r.stdout.strip() == "PONG", r.stderr  # the control: the password is what stands in the way


def test_secrets_are_private_files_never_on_a_command_line_and_every_port_is_loopback(celery_platform):
    p = celery_platform
    secrets = p.secrets()
    for f in ("backends.json", "redis.conf", "catalog.url", "airflow-passwords.json"):
        assert (p.state / "secrets" / f).stat().st_mode & 0o077 == 0, f
    procs = _processes(p)
    assert len(procs) > 15
    for proc in procs:
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        assert not any(s in cmdline for s in secrets.values()), cmdline[:200]
    pids = {proc.pid for proc in procs}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]

    ports = {c.laddr.port for c in listening}
    assert {p.settings().port("postgres"), p.settings().port("redis")} <= ports
    assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening
    st = (p.state / "pg").stat()
    assert st.st_mode & 0o077 == 0  # PostgreSQL's own folder: its user's alone


def test_second_up_reuses_everything_and_the_state_folder_keeps_its_executor(celery_platform):
    p = celery_platform
    pids = {name: _recorded(p, name).pid for name in ("postgres", "redis", "celery-worker-1", "celery-worker-2")}
    r = p.cli("platform", "up")  # no --executor: the state folder remembers celery
    assert "migrating" not in r.stdout and "executor:    celery" in r.stdout
    assert {name: _recorded(p, name).pid for name in pids} == pids
    refused = p.cli("platform", "up", "--executor", "local", check=False)
    assert refused.returncode == 5 and "was set up for the celery executor" in refused.stderr
    refused = p.cli("platform", "up", check=False, env={"IL_EXECUTOR": "local"})
    assert refused.returncode == 5


def test_down_stops_every_process_workers_redis_and_postgres_included(celery_platform):

    p = celery_platform
    assert _processes(p)
    r = p.cli("platform", "down")
    assert "stopped" in r.stdout
    assert _processes(p) == []
    left = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
            and c.laddr.port in (p.settings().port("postgres"), p.settings().port("redis"), 8080 + 600)]
    assert left == [], left
    assert "database system is shut down" in (p.state / "logs" / "postgres.log").read_text()
