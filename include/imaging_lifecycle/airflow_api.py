"""Airflow's own REST API (v2), for the few things the pipeline asks of Airflow itself.

Tasks never touch Airflow's metadata database (Airflow 3 hands a task process a
connection string that refuses, and ``airflow db clean`` from a task fails on
it). What a task needs from Airflow's records it asks the API server for, as
any other client would, with a bearer token.

Credentials: ``AIRFLOW_CONN_IL_AIRFLOW_API`` (Airflow connection JSON with
``host``, ``login``, ``password``) in a deployment; else the embedded
platform's generated ``admin`` password (the 0600 file ``make run`` writes).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from imaging_lifecycle.settings import Settings, SettingsError

CONN_ENV = "AIRFLOW_CONN_IL_AIRFLOW_API"
#: Run states Airflow lets a client delete (a running or queued run is left alone).
FINISHED = ("success", "failed")


class AirflowApiError(RuntimeError):
    """The API server refused or failed a call; the message names the route and the status only."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _route(path: str) -> str:
    """The API route of ``path`` without its query or the run ids in it (run ids are chosen by people)."""
    parts = path.split("?", 1)[0].split("/")
    return "/".join("{run}" if i > 0 and parts[i - 1] == "dagRuns" else p for i, p in enumerate(parts))


@dataclass
class AirflowApi:
    base_url: str
    username: str
    password: str = field(repr=False)
    timeout: float = 30.0
    _token: str | None = field(default=None, repr=False)

    @staticmethod
    def base_url_for(settings: Settings) -> str:
        raw = os.environ.get(CONN_ENV)
        if raw:
            try:
                return str(json.loads(raw)["host"]).rstrip("/")
            except (ValueError, KeyError, TypeError):
                raise SettingsError(f"{CONN_ENV} must be Airflow connection JSON with host, login and password") \
                    from None
        return settings.airflow_url

    @classmethod
    def as_person(cls, settings: Settings, token: str) -> AirflowApi:
        """A client that speaks for whoever ``token`` belongs to (no stored password)."""
        return cls(cls.base_url_for(settings), "", "", _token=token)

    @classmethod
    def login(cls, settings: Settings, username: str, password: str) -> AirflowApi:
        """Log in as a person with their own password; the token proves who they are to :meth:`whoami`."""
        api = cls(cls.base_url_for(settings), username, password)
        api.token()
        return api

    def whoami(self) -> str:
        """The user name the API server itself finds in this client's token (401 if the token is bad)."""
        me = self._request("GET", "/ui/auth/me")
        name = me.get("username") if isinstance(me, dict) else None
        if not isinstance(name, str) or not name:
            raise AirflowApiError("GET /ui/auth/me -> no user name")
        return name

    @classmethod
    def from_settings(cls, settings: Settings) -> AirflowApi:
        raw = os.environ.get(CONN_ENV)
        if raw:
            try:
                conn = json.loads(raw)
                return cls(str(conn["host"]).rstrip("/"), str(conn["login"]), str(conn["password"]))
            except (ValueError, KeyError, TypeError):
                raise SettingsError(f"{CONN_ENV} must be Airflow connection JSON with host, login and password") \
                    from None
        path = settings.secrets_dir / "airflow-passwords.json"
        try:
            password = json.loads(path.read_text())["admin"]
        except (OSError, ValueError, KeyError):
            raise SettingsError(f"no Airflow API credentials: set {CONN_ENV}, or start the embedded platform") \
                from None
        return cls(settings.airflow_url, "admin", password)

    def _request(self, method: str, path: str, body: dict | None = None, *, auth: bool = True):
        req = urllib.request.Request(self.base_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                data = r.read()
        except urllib.error.HTTPError as exc:
            raise AirflowApiError(f"{method} {_route(path)} -> HTTP {exc.code}", exc.code) from None
        except urllib.error.URLError as exc:
            raise AirflowApiError(f"{method} {_route(path)}: {type(exc.reason).__name__}") from None
        return json.loads(data) if data else None

    def token(self) -> str:
        if self._token is None:
            self._token = self._request("POST", "/auth/token", {"username": self.username, "password": self.password},
                                        auth=False)["access_token"]
        return self._token

    def finished_runs_before(self, cutoff: dt.datetime, *, page: int = 100) -> list[tuple[str, str]]:
        """``(dag_id, run_id)`` of every finished run of any DAG that ended before ``cutoff``."""
        if cutoff.utcoffset() is None:
            raise ValueError("cutoff must be timezone-aware")
        when = cutoff.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        out: list[tuple[str, str]] = []
        offset = 0
        while True:
            query = urllib.parse.urlencode([("end_date_lt", when), *(("state", s) for s in FINISHED),
                                            ("order_by", "id"), ("limit", page), ("offset", offset)])
            runs = self._request("GET", f"/api/v2/dags/~/dagRuns?{query}")["dag_runs"]
            out += [(r["dag_id"], r["dag_run_id"]) for r in runs]
            if len(runs) < page:
                return out
            offset += page

    def event_logs(self, *, dag_id: str, run_id: str, task_id: str, limit: int = 500) -> list[dict]:
        """Airflow's own event log of one task in one run, oldest first (who did what, as Airflow recorded it)."""
        query = urllib.parse.urlencode([("dag_id", dag_id), ("run_id", run_id), ("task_id", task_id),
                                        ("order_by", "when"), ("limit", limit)])
        return self._request("GET", f"/api/v2/eventLogs?{query}")["event_logs"]

    def delete_run(self, dag_id: str, run_id: str) -> bool:
        """Delete one run; its task instances, their history and XCom go with it (Airflow cascades).

        Idempotent: a run already gone (a concurrent prune) is not an error; returns whether this call deleted it.
        """
        q = urllib.parse.quote
        try:
            self._request("DELETE", f"/api/v2/dags/{q(dag_id, safe='')}/dagRuns/{q(run_id, safe='')}")
        except AirflowApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
