"""docker-compose.yml, checked statically: no Docker engine runs on these machines.

``make compose-check`` also runs Debian's ``docker-compose config -q`` when it
can be installed; this test checks the shape the deployment promises. The two
scripts under ``deploy/`` that handle passwords run for real against this
machine's redis-server and PostgreSQL (skipped where there are none); the
multi-node object store itself runs natively in ``test_seaweed_cluster.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((PROJECT / "docker-compose.yml").read_text())


def test_services_of_the_production_shape(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "s3-primary", "s3-backup", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-worker-landing",
                 "dicom-receiver"):
        assert name in services, name
    worker = services["airflow-worker"]
    assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "container_name" not in worker  # a fixed name would forbid --scale
    assert "ports" not in worker


def test_every_long_running_service_has_a_healthcheck_and_named_volumes(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":  # one-shot jobs: airflow-init, object-store-pki
            continue
        assert "healthcheck" in svc, name
    assert {"postgres-data", "s3-primary-master-data", "s3-primary-filer-data", "s3-backup-data"} <= set(
        compose["volumes"])


def test_airflow_metadata_and_catalog_are_separate_postgres_databases(compose):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert env["IL_CATALOG_URL"].endswith("@postgres:5432/catalog")
    init = (PROJECT / "deploy" / "postgres-init.sh").read_text()
    assert "CREATE DATABASE airflow" in init and "CREATE DATABASE catalog" in init


def test_secrets_come_from_env_and_none_are_checked_in():
    text = (PROJECT / "docker-compose.yml").read_text()
    # every password/secret/key value is a ${VAR} reference
    for line in text.splitlines():
        m = re.match(r"\s*([A-Z_]*(PASSWORD|SECRET|FERNET|MASTER_KEY)[A-Z_]*):\s*(.+)", line)
        if m:
            assert "${" in m.group(3), line
    example = (PROJECT / ".env.example").read_text()
    values = [entry.split("=", 1)[1] for entry in example.splitlines() if "=" in entry and not entry.startswith("#")]
    assert all(v in ("CHANGE_ME", "latest") for v in values)
    assert ".env" in (PROJECT / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian docker-compose not installed")
def test_docker_compose_config_validates():
    r = subprocess.run(
        ["docker-compose", "--env-file", ".env.example", "-f", "docker-compose.yml", "config", "-q"],
        cwd=PROJECT, capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr


def test_the_object_stores_run_locked_down_and_the_pipeline_gets_no_admin_secret(compose):
    """Issue 11 in compose: SeaweedFS through our seaweed.py (mutual TLS inside, least-privilege
    identities), S3 over TLS verified against the CA, and the admin identities for airflow-init only."""
    services = compose["services"]
    for name in _object_store_services(compose):
        svc = services[name]
        assert svc["command"][:3] == ["imaging-lifecycle", "object-store", "serve"], name
        assert "--plain-s3" not in svc["command"] and "ports" not in svc
        assert all(":ro" in v for v in svc["volumes"] if v.startswith("s3-pki:"))
    env = compose["x-airflow-common"]["environment"]
    for conn in ("AIRFLOW_CONN_IL_S3_PRIMARY", "AIRFLOW_CONN_IL_S3_BACKUP"):
        extra = json.loads(re.sub(r"\$\{[^}]*\}", "X", env[conn]))["extra"]
        assert extra["endpoint_url"].startswith("https://") and extra["verify"].endswith("ca.crt")
        mount = extra["verify"].rsplit("/", 1)[0]
        assert f"s3-ca:{mount}:ro" in compose["x-airflow-common"]["volumes"], "the CA is not mounted where verify looks"
    for name, svc in services.items():
        if name.startswith("airflow-") and name != "airflow-init":
            assert "s3-pki" not in str(svc.get("volumes", compose["x-airflow-common"]["volumes"])), name
    for var in ("S3_PRIMARY_ADMIN_SECRET_KEY", "S3_BACKUP_ADMIN_SECRET_KEY", "CATALOG_OWNER_PASSWORD"):
        airflow_side = yaml.safe_dump(compose["x-airflow-common"]) + yaml.safe_dump(
            {k: v for k, v in services.items() if k.startswith("airflow-") and k != "airflow-init"})
        assert var not in airflow_side, var
    init = services["airflow-init"]["environment"]
    assert "catalog_owner" in init["IL_CATALOG_URL"] and init["IL_CATALOG_PIPELINE_ROLE"] == "catalog"
    assert env["IL_CATALOG_URL"].startswith("postgresql+psycopg2://catalog:")


def test_postgres_init_gives_the_catalog_an_owner_and_a_pipeline_role_that_owns_nothing():
    init = (PROJECT / "deploy" / "postgres-init.sh").read_text()
    assert "CREATE DATABASE catalog OWNER catalog_owner" in init
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in init


def test_the_lock_holds_the_production_shape_and_the_result_backend_names_its_driver(compose):
    """Celery, Redis, asyncpg and the PostgreSQL driver are pinned like everything else, and importable."""
    import importlib

    req = (PROJECT / "requirements.txt").read_text()
    lines = (PROJECT / "constraints.txt").read_text().splitlines()
    lock = {line.split("==")[0].lower() for line in lines if "==" in line}
    for pkg in ("apache-airflow-providers-celery", "celery", "kombu", "redis", "asyncpg", "psycopg2-binary"):
        assert f"\n{pkg}==" in req and pkg in lock, pkg
    for module in ("airflow.providers.celery.executors.celery_executor", "asyncpg", "psycopg2", "redis"):
        importlib.import_module(module)
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert "-r /opt/imaging-lifecycle/requirements.txt -c /opt/imaging-lifecycle/constraints.txt" in dockerfile
    assert "providers-celery==" not in dockerfile  # from the lock, not pinned apart


# -- issue 14 item 6: the primary site multi-node, passwords from .env, no shared pipeline volume ----


def _object_store_services(compose) -> list[str]:
    return [n for n, svc in compose["services"].items()
            if svc.get("command", [])[:3] == ["imaging-lifecycle", "object-store", "serve"]]


def _role(svc) -> str:
    cmd = svc["command"]
    return cmd[cmd.index("--role") + 1] if "--role" in cmd else "mini"


def _opt(svc, flag: str) -> str | None:
    cmd = svc["command"]
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def _volumes(compose, svc) -> list[str]:
    return svc.get("volumes", compose["x-airflow-common"]["volumes"])


def test_the_primary_site_is_a_master_two_volume_servers_a_filer_and_the_s3_gateway(compose):
    services = compose["services"]
    primary = {n: _role(services[n]) for n in _object_store_services(compose) if n.startswith("s3-primary")}
    roles = sorted(primary.values())
    assert roles.count("master") >= 1 and roles.count("volume") >= 2 and roles.count("filer") >= 1, primary
    assert primary["s3-primary"] == "s3", "the gateway keeps the name the connections use"
    assert "mini" not in roles
    assert _role(services["s3-backup"]) in ("mini", "s3")  # the backup site: one process (see its comment)

    by_role = {role: [n for n, r in primary.items() if r == role] for role in set(roles)}
    (master,) = by_role["master"]
    master_port = _opt(services[master], "--port")
    assert _opt(services[master], "--replication") == "001"  # every write on two volume servers
    for name in by_role["volume"] + by_role["filer"]:  # each finds the master by its service name
        assert _opt(services[name], "--master") == f"{master}:{master_port}", name
        assert services[name]["depends_on"]  # started after what it needs
    (filer,) = by_role["filer"]
    assert _opt(services["s3-primary"], "--filer") == f"{filer}:{_opt(services[filer], '--port')}"
    assert len({_opt(services[n], "--ip") for n in primary}) == len(primary)  # each advertises its own name

    data = [v.split(":")[0] for n in primary for v in services[n]["volumes"] if v.endswith("/s3/data")]
    assert len(data) == len(set(data)) == len(primary) - 1  # its own data volume each; the gateway none
    # Every component has the CA's certificate for its own name (https.client checks the host name).
    hosts = _opt(services["object-store-pki"], "--hosts").split(",")
    assert set(primary) <= set(hosts) and "s3-backup" in hosts
    # The internals are on the site's own network; only the gateway is on Airflow's too.
    assert compose["networks"]["s3-primary-internal"]["internal"] is True
    for name in primary:
        nets = services[name].get("networks", ["default"])
        assert "s3-primary-internal" in nets, name
        assert ("default" in nets) == (name == "s3-primary"), name
    # One JWT secret for the whole site, from .env; the S3 identities only where S3 is served.
    for name in primary:
        env = services[name]["environment"]
        assert env["SEAWEED_JWT_SECRET"].startswith("${S3_PRIMARY_JWT_SECRET:?"), name
        assert ("S3_SECRET_KEY" in env) == (name == "s3-primary"), name
        assert ("S3_ADMIN_SECRET_KEY" in env) == (name == "s3-primary"), name


def test_the_object_store_roles_build_from_the_compose_commands(compose, tmp_path, monkeypatch):
    """Each compose command parses, and ``serve`` builds weed's argv for that role with no secret in it."""
    import argparse

    from imaging_lifecycle import seaweed
    from imaging_lifecycle.commands import object_store

    pki = seaweed.pki(tmp_path / "pki")
    env = {"S3_ACCESS_KEY": "ILPIPE000", "S3_SECRET_KEY": "pipeline-secret-value-1",
           "S3_ADMIN_ACCESS_KEY": "ILADM000", "S3_ADMIN_SECRET_KEY": "admin-secret-value-12",
           "SEAWEED_JWT_SECRET": "jwt-site-secret-value-123"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    parser = argparse.ArgumentParser()
    object_store.add_arguments(parser)
    seen = set()
    for name in _object_store_services(compose):
        cmd = list(compose["services"][name]["command"][2:])
        cmd = [str(pki.ca.parent) if c == "/opt/imaging-lifecycle/s3/pki" else c for c in cmd]
        cmd = [str(tmp_path / name / c.rsplit("/", 1)[1]) if c.startswith("/opt/imaging-lifecycle/s3/") else c
               for c in cmd]
        argv = object_store.build(parser.parse_args(cmd), "weed")
        role = _role(compose["services"][name])
        seen.add(role)
        assert argv[1] == role, name
        assert not any(v in " ".join(argv) for v in env.values()), name
        if role in ("s3", "mini"):
            assert any(a.startswith(("-cert.file=", "-s3.cert.file=")) for a in argv), "S3 over TLS"
    assert {"master", "volume", "filer", "s3", "mini"} <= seen


def test_no_password_is_literal_in_compose_and_redis_and_postgres_take_theirs_from_env(compose):
    text = (PROJECT / "docker-compose.yml").read_text()
    example = (PROJECT / ".env.example").read_text()
    names = [entry.split("=", 1)[0] for entry in example.splitlines() if "=" in entry and not entry.startswith("#")]
    for name in names:  # every .env variable is only ever referenced as ${NAME...}, never given a value here
        for line in text.splitlines():
            m = re.match(rf'\s*-?\s*"?{name}"?\s*[:=]\s*(.*)$', line)
            if m:
                assert m.group(1).startswith("${"), line
    for svc_name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key, value in (env.items() if isinstance(env, dict) else []):
            if re.search(r"PASSWORD|SECRET|_KEY$|FERNET|BROKER_URL|SQL_ALCHEMY_CONN|RESULT_BACKEND|CATALOG_URL", key):
                # a ${VAR} from .env, or the path of a file mounted read-only (the KMS client's key)
                assert "${" in str(value) or value in ("catalog",) or str(value).startswith("/opt/"), (svc_name, key)
        # no password on any command line: neither in command/entrypoint nor in a healthcheck's argv
        for part in ("command", "entrypoint"):
            assert not re.search(r"PASSWORD|SECRET|requirepass", json.dumps(svc.get(part) or [])), (svc_name, part)
        health = json.dumps((svc.get("healthcheck") or {}).get("test") or [])
        assert not re.search(r"-a\s|--pass|PASSWORD\W*\s+redis-cli\s+-a", health), svc_name

    redis = compose["services"]["redis"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "./deploy/redis-start.sh:/opt/imaging-lifecycle/redis-start.sh:ro" in redis["volumes"]
    assert "REDISCLI_AUTH" in json.dumps(redis["healthcheck"]["test"])
    broker = compose["x-airflow-common"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert broker == "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0"
    pg = compose["services"]["postgres"]["environment"]
    assert pg["POSTGRES_PASSWORD"].startswith("${POSTGRES_ADMIN_PASSWORD:?")
    init = (PROJECT / "deploy" / "postgres-init.sh").read_text()
    assert "\\getenv catalog_pw CATALOG_DB_PASSWORD" in init and not re.search(r"-v \w+_pw=", init)


def test_only_the_landing_worker_the_triggerer_and_the_receiver_mount_the_landing_volume(compose):
    services = compose["services"]
    assert not any(v.split(":")[0] in ("landing", "il-state") for v in compose["x-airflow-common"]["volumes"])
    assert "il-state" not in compose["volumes"]  # no shared state volume at all
    landing = {n for n, svc in services.items() if any(v.startswith("landing:") for v in svc.get("volumes", []))}
    assert landing == {"airflow-worker-landing", "airflow-triggerer", "dicom-receiver"}
    workers = {n: svc for n, svc in services.items() if svc.get("command", [])[:2] == ["celery", "worker"]}
    assert set(workers) == {"airflow-worker", "airflow-worker-landing"}
    for name, svc in workers.items():
        queues = _opt(svc, "--queues")
        assert queues == ("default,landing" if name == "airflow-worker-landing" else "default"), name
        mounts = [v.split(":")[0] for v in _volumes(compose, svc)]
        assert "il-state" not in mounts and all("state" not in m for m in mounts), name
    for name, svc in services.items():  # nothing else shares a state folder either
        if name != "dicom-receiver":
            assert not any(":/opt/imaging-lifecycle/state" in v for v in _volumes(compose, svc)
                           if not v.startswith(".")), name
    # What every worker must share comes from the KMS (KMIP), not from a volume or a per-container key.
    env = compose["x-airflow-common"]["environment"]
    assert {"IL_KMIP_HOST", "IL_KMIP_PORT", "IL_KMIP_CERT", "IL_KMIP_KEY", "IL_KMIP_CA"} <= set(env)
    assert not {"IL_MASTER_KEY", "IL_SECRET_REF_HMAC", "IL_SECRET_DEID_HMAC"} & set(env)  # no per-container keys
    kms = services["kms"]
    assert kms["command"][:3] == ["imaging-lifecycle", "kms", "serve"]
    assert not any(v.startswith("kms-data:") for n, svc in services.items() if n != "kms"
                   for v in svc.get("volumes", []))  # the KMS's own CA key and database stay with it
    for name in ("airflow-worker", "airflow-worker-landing", "dicom-receiver"):
        assert any(v.startswith("kms-client:") and v.endswith(":ro") for v in _volumes(compose, services[name])), name


def test_the_redis_start_script_keeps_the_password_off_every_command_line():
    """deploy/redis-start.sh for real, with this machine's redis-server (the image's entrypoint stubbed)."""
    import os
    import pwd
    import socket
    import time

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("no redis-server on this machine")
    try:
        pwd.getpwnam("redis")
    except KeyError:
        pytest.skip("no 'redis' user (the script hands the file to it)")
    if os.geteuid() != 0:
        pytest.skip("the script chowns its file to redis: run as root, as the image's entrypoint does")
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="il-redis-"))  # not pytest's 0700 tree: the redis user reads here
    os.chmod(tmp_path, 0o755)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec runuser -u redis -- "$@"\n')
    (stub / "docker-entrypoint.sh").chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = "Pw-" + os.urandom(12).hex()
    work = tmp_path / "data"
    work.mkdir()
    shutil.chown(work, "redis")
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "REDIS_PASSWORD": password,
           "IL_REDIS_CONF_DIR": str(tmp_path / "conf")}
    proc = subprocess.Popen(["/bin/sh", str(PROJECT / "deploy" / "redis-start.sh"), "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(work), "--save", ""],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def cli(auth: str | None):
            e = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
            if auth:
                e["REDISCLI_AUTH"] = auth
            return subprocess.run(["redis-cli", "-p", str(port), "ping"], env=e, capture_output=True,
                                  text=True, timeout=10).stdout.strip()

        deadline = time.monotonic() + 20
        while cli(password) != "PONG":
            assert proc.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.2)
        assert "NOAUTH" in cli(None) and cli("not-the-password") != "PONG"
        conf = tmp_path / "conf" / "redis.conf"
        assert conf.stat().st_mode & 0o777 == 0o600 and conf.owner() == "redis"
        import psutil

        server = [p for p in psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
                  if "redis-server" in " ".join(p.cmdline())]
        assert server
        for p in server:
            assert password not in " ".join(p.cmdline()) and "REDIS_PASSWORD" not in p.environ()
    finally:
        import signal

        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        shutil.rmtree(tmp_path, ignore_errors=True)

    bad = subprocess.run(["/bin/sh", str(PROJECT / "deploy" / "redis-start.sh")], capture_output=True, text=True,
                         env={**env, "REDIS_PASSWORD": "CHANGE_ME"}, timeout=10)
    assert bad.returncode == 2 and "CHANGE_ME" in bad.stderr


def test_the_postgres_init_script_sets_the_passwords_from_its_environment():
    """deploy/postgres-init.sh for real, on a PostgreSQL of its own (the roles it makes are cluster-wide)."""
    import os
    import pwd
    import socket
    import tempfile

    from conftest import _pg_bin

    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("no PostgreSQL on this machine")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' system user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="il-pginit-"))
    shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(*argv, env=None):
        return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], capture_output=True,
                              text=True, timeout=120, env=env)

    passwords = {"AIRFLOW_DB_PASSWORD": "air'flow-" + os.urandom(6).hex(),  # a quote: psql quotes it
                 "CATALOG_OWNER_PASSWORD": "owner-" + os.urandom(6).hex(),
                 "CATALOG_DB_PASSWORD": "cat-" + os.urandom(6).hex()}
    try:
        r = as_postgres(pg_bin / "initdb", "-D", root / "data", "-U", "postgres", "--auth-local=trust",
                        "--auth-host=scram-sha-256")
        assert r.returncode == 0, r.stderr
        r = as_postgres(pg_bin / "pg_ctl", "-D", root / "data", "-l", root / "pg.log", "-w", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        assert r.returncode == 0, r.stderr
        env = {**os.environ, **passwords, "POSTGRES_USER": "postgres", "PGHOST": str(root), "PGPORT": str(port),
               "PATH": f"{pg_bin}:{os.environ['PATH']}"}
        r = as_postgres("bash", PROJECT / "deploy" / "postgres-init.sh", env=env)
        assert r.returncode == 0, r.stderr
        import psycopg2

        for user, var, db in (("airflow", "AIRFLOW_DB_PASSWORD", "airflow"),
                              ("catalog", "CATALOG_DB_PASSWORD", "catalog"),
                              ("catalog_owner", "CATALOG_OWNER_PASSWORD", "catalog")):
            psycopg2.connect(host="127.0.0.1", port=port, user=user, password=passwords[var], dbname=db).close()
            with pytest.raises(psycopg2.OperationalError):
                psycopg2.connect(host="127.0.0.1", port=port, user=user, password="wrong", dbname=db)
    finally:
        as_postgres(pg_bin / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
