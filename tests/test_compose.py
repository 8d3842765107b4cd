"""docker-compose.yml, checked statically: no Docker engine runs on these machines.

``make compose-check`` also runs Debian's ``docker-compose config -q`` when it
can be installed; this test checks the shape the deployment promises.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import PROJECT


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((PROJECT / "docker-compose.yml").read_text())


def test_services_of_the_production_shape(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "s3-primary", "s3-backup", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer", "airflow-worker"):
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
    assert {"postgres-data", "s3-primary-data", "s3-backup-data"} <= set(compose["volumes"])


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
    for site in ("s3-primary", "s3-backup"):
        svc = services[site]
        assert svc["command"][:3] == ["imaging-lifecycle", "object-store", "serve"], site
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
