"""The embedded platform in its celery mode, for tests: ``platform up --executor celery`` in a temporary state folder.

The platform runs with the user's own Airflow settings of a test: ``AIRFLOW__CORE__PARALLELISM``
(must win over the platform's default), ``AIRFLOW__CORE__DAGS_FOLDER`` (a folder with one small
DAG whose mapped tasks report the host that ran them) and ``AIRFLOW__CORE__AUTH_MANAGER`` (one
the platform controls: must be ignored). The unit tests' own ``AIRFLOW__*`` settings and
``AIRFLOW_HOME`` (conftest's) are not passed on: they describe another Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
#: Its own port range (IL_PORT_OFFSET): beside the unit tests' (100) and the e2e platform's (200).
PORT_OFFSET = 600
#: What the user set, and what must win.
USER_PARALLELISM = "7"
#: A user's attempt at an Airflow setting the platform controls.
USER_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.NotOurs"

HOSTS_DAG_ID = "il_celery_hosts"
MAPPED = 8
HOSTS_DAG = f'''"""Test-only: {MAPPED} mapped tasks reporting where they ran; one on the landing queue."""

import datetime as dt

from airflow.sdk import dag, task


@dag(dag_id="{HOSTS_DAG_ID}", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
     catchup=False, max_active_tasks=16)
def hosts():
    @task
    def where(i: int) -> dict:
        import os
        import time
        from urllib.parse import urlsplit

        from airflow.configuration import conf

        time.sleep(4)
        landing = os.environ.get("IL_LANDING_DIR", "")
        return {{
            "host": os.environ.get("IL_HOST_NAME"),
            "state_dir": os.environ.get("IL_STATE_DIR"),
            "landing_dir": landing,
            "landing_entries": sorted(os.listdir(landing)) if os.path.isdir(landing) else None,
            "catalog_role": urlsplit(os.environ.get("IL_CATALOG_URL", "")).username,
            "secrets_in_env": sorted(k for k in os.environ if k.startswith("IL_SECRET_") or k == "IL_MASTER_KEY"),
            "kmip_cert": os.environ.get("IL_KMIP_CERT"),
            "has_jwt_secret": bool(os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET")),
            "s3_verify": __import__("json").loads(os.environ["AIRFLOW_CONN_IL_S3_PRIMARY"])["extra"].get("verify"),
            "parallelism": conf.get("core", "parallelism"),
            "executor": conf.get("core", "executor"),
            "auth_manager": conf.get("core", "auth_manager"),
        }}

    @task(queue="landing")
    def on_landing_host() -> str:
        import os

        return os.environ.get("IL_HOST_NAME", "")

    where.expand(i=list(range({MAPPED})))
    on_landing_host()


hosts()
'''


class CeleryPlatform:
    def __init__(self, *, product_dags: bool = False, extra_env: dict[str, str] | None = None) -> None:
        """``product_dags``: run our own DAGs (the pipeline) instead of the small test DAG."""
        # Directly under /tmp: PostgreSQL runs as the postgres user and must traverse the state
        # folder's parents (pytest's own tmp folders are 0700 root).
        self.state = Path(tempfile.mkdtemp(prefix="il-celery-state-", dir="/tmp"))
        self.dags = Path(tempfile.mkdtemp(prefix="il-celery-dags-", dir="/tmp"))
        (self.dags / "il_celery_hosts.py").write_text(HOSTS_DAG)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"}
        env.update({
            "IL_STATE_DIR": str(self.state),
            "IL_PORT_OFFSET": str(PORT_OFFSET),
            "IL_S3_TLS": "1",
            "GX_ANALYTICS_ENABLED": "False",
            "AIRFLOW__CORE__PARALLELISM": USER_PARALLELISM,
            "AIRFLOW__CORE__AUTH_MANAGER": USER_AUTH_MANAGER,
        })
        if not product_dags:
            env["AIRFLOW__CORE__DAGS_FOLDER"] = str(self.dags)
        env.update(extra_env or {})
        self.env = env
        self.up_seconds = 0.0
        self.up_result: subprocess.CompletedProcess | None = None
        self._token: str | None = None
        #: What each mapped task of the test DAG reported (filled by the run's test).
        self.seen: list[dict] = []

    # -- the command line ------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 400, check: bool = True, env: dict | None = None):
        r = subprocess.run([str(PROJECT / ".venv" / "bin" / "imaging-lifecycle"), *args],
                           env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"imaging-lifecycle {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def settings(self):
        """This platform's Settings (the environment's IL_* of this platform, read without touching ours)."""
        from imaging_lifecycle.settings import load_settings

        keys = ("IL_STATE_DIR", "IL_PORT_OFFSET")
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update({k: self.env[k] for k in keys})
        try:
            return load_settings()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def secrets(self) -> dict:
        return json.loads((self.state / "secrets" / "backends.json").read_text())

    # -- the REST API -------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{8080 + PORT_OFFSET}"

    def call(self, method: str, path: str, body: dict | None = None):
        if self._token is None:
            password = json.loads((self.state / "secrets" / "airflow-passwords.json").read_text())["admin"]
            self._token = self._raw("POST", "/auth/token", {"username": "admin", "password": password},
                                    auth=False)["access_token"]
        return self._raw(method, path, body)

    def _raw(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self._token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 1.0):
        from conftest import wait_for

        return wait_for(predicate, timeout, what, interval, errors=(urllib.error.URLError, OSError, KeyError))


def as_nobody(argv: list[str], env: dict[str, str] | None = None, timeout: float = 30):
    """``argv`` run as the user ``nobody`` (an attacker with a local account), environment ``env`` only."""
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i", *[f"{k}={v}" for k, v in
                                                                            {**base, **(env or {})}.items()], *argv],
                          capture_output=True, text=True, timeout=timeout, cwd="/")
