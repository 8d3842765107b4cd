"""Test harness: every test session gets its own state folder and port range.

The environment is set here, before any project module reads it, so tests
never touch a developer's ``.state/`` or a running ``make run`` platform.
Services started by fixtures are real (``weed mini``, Airflow) and are stopped
by pid, children included, when the session ends.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# A process this one starts (multiprocessing's spawn re-imports the test modules) shares its folder.
_STATE = Path(os.environ.get("PYTEST_IL_STATE") or tempfile.mkdtemp(prefix="il-test-state-"))
_OWNER = os.environ.get("PYTEST_IL_STATE_OWNER", str(os.getpid()))
os.environ["PYTEST_IL_STATE"], os.environ["PYTEST_IL_STATE_OWNER"] = str(_STATE), _OWNER
_KEEP_STATE = os.environ.get("IL_TEST_KEEP_STATE") == "1"  # read before the IL_ variables are dropped
for _k in list(os.environ):  # nothing of a developer's platform, keys or shell may leak in
    if _k.startswith(("IL_", "AIRFLOW_CONN_IL_", "AIRFLOW__")) and _k != "IL_TEST_PORT_OFFSET":
        del os.environ[_k]
os.environ["IL_STATE_DIR"] = str(_STATE)
os.environ["IL_TEST_CLOCK"] = "1"  # sweeps at a future "now" (the platform's own processes never get this)
os.environ["IL_PORT_OFFSET"] = os.environ.get("IL_TEST_PORT_OFFSET", "100")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ["AIRFLOW_HOME"] = str(_STATE / "airflow-unit")
# Airflow reads its config once, at first import: fix the unit-test metadata DB before that.
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_STATE / 'airflow-unit.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")

PROJECT = Path(__file__).resolve().parents[1]


def pytest_unconfigure(config) -> None:  # noqa: ANN001
    """This process's state folder goes when its session ends (after every fixture has stopped its
    servers): nothing piles up in /tmp run after run. ``IL_TEST_KEEP_STATE=1`` keeps it to look into."""
    if not _KEEP_STATE and _OWNER == str(os.getpid()):
        shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def airflow_db(state_dir):
    """A migrated Airflow metadata DB for dag.test() (in this test session's state dir)."""
    import subprocess

    assert os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("airflow-unit.db")  # set above
    subprocess.run([str(PROJECT / ".venv/bin/airflow"), "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy(), timeout=300)
    yield


def write_policy(path: Path, edit) -> Path:
    """A hospital's own policy file: the packaged default as YAML, changed by ``edit(document)``."""
    from importlib import resources

    import yaml

    doc = yaml.safe_load(resources.files("imaging_lifecycle.policy").joinpath("default.yaml").read_text("utf-8"))
    edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def policy_tier(doc: dict, level: int) -> dict:
    """The tier entry of a policy document, by level."""
    return next(t for t in doc["tiers"] if t["level"] == level)


@pytest.fixture(scope="session")
def object_store_settings(state_dir):
    """Both embedded S3 sites, running for the whole session; yields Settings with credentials."""
    from imaging_lifecycle import embedded

    try:
        settings = embedded.start_object_stores(embedded.load_settings())
        yield settings
    finally:
        embedded.down(embedded.load_settings())


def make_zones(settings) -> list[str]:
    """Create ``settings``' buckets as the object stores' admin identity (the pipeline's may not)."""
    from imaging_lifecycle.settings import admin_settings
    from imaging_lifecycle.storage import ObjectStore

    return ObjectStore(admin_settings(settings)).ensure_zones()


@pytest.fixture(scope="session")
def store(object_store_settings):
    from imaging_lifecycle.storage import ObjectStore

    return ObjectStore(object_store_settings)


@pytest.fixture
def dicom_file():
    """Path of one of pydicom's bundled test files (real files nobody here wrote)."""
    from pydicom.data import get_testdata_file

    def _get(name: str) -> Path:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.fail(f"pydicom test file {name} is not bundled")
        return Path(path)

    return _get


class Platform:
    """A full platform (both S3 sites + the four Airflow components) in its own state dir and ports."""

    def __init__(self, root: Path, offset: int):
        self.state = root
        # S3 over TLS (the CA made on first start): the whole platform walk runs over it.
        self.env = {**os.environ, "IL_STATE_DIR": str(root), "IL_PORT_OFFSET": str(offset), "IL_S3_TLS": "1"}
        self.env.pop("AIRFLOW_HOME", None)
        self.status_before: dict | None = None
        self.login: str = ""

    def cli(self, *args: str, timeout: float = 300, check: bool = True):
        import subprocess

        r = subprocess.run(
            [str(PROJECT / ".venv" / "bin" / "imaging-lifecycle"), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"imaging-lifecycle {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def status(self) -> dict:
        import json

        return json.loads(self.cli("status", "--json", check=False).stdout)

    def settings(self):
        from imaging_lifecycle.embedded import _with_creds, ensure_credentials
        from imaging_lifecycle.settings import Settings, load_settings

        old = {k: os.environ.get(k) for k in ("IL_STATE_DIR", "IL_PORT_OFFSET")}
        os.environ.update({k: self.env[k] for k in old})
        try:
            s: Settings = load_settings()
        finally:
            for k, v in old.items():
                os.environ[k] = v  # type: ignore[assignment]
        return _with_creds(s, ensure_credentials(s))


@pytest.fixture(scope="session")
def platform_run(tmp_path_factory):
    """``imaging-lifecycle platform up`` for real; stopped (and checked stopped) at session end."""
    import time

    from imaging_lifecycle import embedded as plat

    p = Platform(tmp_path_factory.mktemp("platform-state"), offset=200)
    p.status_before = p.status()
    t0 = time.monotonic()
    try:
        r = p.cli("platform", "up")
        p.up_seconds = time.monotonic() - t0
        p.up_output = r.stdout
        yield p
    finally:
        p.cli("platform", "down", check=False)
    assert plat.ours(p.settings()) == [], "processes of the test platform survived 'platform down'"


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0, errors=(Exception,)):
    """``predicate()``'s first truthy value within ``timeout`` s; its exceptions (``errors``) count as not yet."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except errors as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class AirflowAPI:
    """The real Airflow REST API of a running platform (v2), with a token for the generated admin."""

    def __init__(self, platform: Platform):
        import json

        self.base = platform.settings().airflow_url
        password = json.loads((platform.state / "secrets" / "airflow-passwords.json").read_text())["admin"]
        self.token = self._call("POST", "/auth/token", {"username": "admin", "password": password}, auth=False)[
            "access_token"
        ]

    def _call(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        import json
        import urllib.request

        req = urllib.request.Request(self.base + path, method=method, data=json.dumps(body).encode() if body else None)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def get(self, path: str):
        return self._call("GET", path)

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=-logical_date&limit=50")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        from urllib.parse import quote

        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances?limit=500")["task_instances"]

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 1.0):
        return wait_for(predicate, timeout, what, interval)  # the API may be briefly busy on SQLite


@pytest.fixture(scope="session")
def airflow_api(platform_run) -> AirflowAPI:
    return AirflowAPI(platform_run)


@pytest.fixture
def env(object_store_settings, tmp_path, catalog_url):
    """Settings with a fresh landing folder and catalog for this test (S3 and key store shared).

    The catalog is SQLite and then a real PostgreSQL: every pipeline test using ``env`` runs on both.
    """
    import shutil
    from dataclasses import replace

    settings = replace(object_store_settings, landing_dir=tmp_path / "landing", catalog_url=catalog_url)
    settings.landing_dir.mkdir()
    from imaging_lifecycle import landing

    landing.ensure_identity(settings.landing_dir)  # the test process is the landing host
    (settings.state_dir / "ingest").mkdir(exist_ok=True)
    for leftover in (settings.state_dir / "ingest").iterdir():  # each test starts with no staged batch
        if leftover.is_dir():
            shutil.rmtree(leftover)
    return settings


def ingest_now(settings) -> dict:
    """One ingest batch of whatever is in the landing folder, through the same functions the DAG runs."""
    from imaging_lifecycle import ingest, landing
    from imaging_lifecycle.services import Services

    landing.ensure_identity(settings.landing_dir)  # the test is the landing host
    svc = Services.open(settings)
    claim = ingest.claim_batch(svc, quiet_seconds=0)
    results = [ingest.run_chunk(svc, claim.batch_id, c, actor="test/ingest") for c in claim.chunks]
    return ingest.close_batch(svc, results, actor="test/ingest") if claim.files else {}


def catalog(settings):
    from imaging_lifecycle.catalog import Catalog

    return Catalog(settings.catalog_url)


def approved(svc, action: str, catalog_ids: list[str], *, requester: str | None = None, hours: int | None = None,
             now=None, **extra) -> str:
    """An APPROVED access request, made the real way: submitted, then a DSO and each department head approve."""
    from imaging_lifecycle import access

    who = requester or svc.policy.access.requesters[action][0]
    out = access.submit(svc, requester=who, action=action, catalog_ids=catalog_ids, purpose="treatment",
                        justification="follow-up of a known finding", hours=hours, now=now, **extra)
    for step in out["steps"]:
        access.decide(svc, out["request_id"], step, approver=access.approvers(svc, out["request_id"], step)[0],
                      approved=True, now=now)
    assert svc.catalog.request(out["request_id"])["state"] == "APPROVED"
    return out["request_id"]


class Person:
    """One user of the platform, logged in with their own generated password."""

    def __init__(self, platform, name: str):
        self.name = name
        self.base = platform.settings().airflow_url
        password = json.loads((platform.state / "secrets" / "airflow-passwords.json").read_text())[name]
        self.token = self.call("POST", "/auth/token", {"username": name, "password": password}, auth=False)[1][
            "access_token"]

    def call(self, method: str, path: str, body: dict | None = None, *, auth: bool = True, raw: bool = False):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                data = r.read()
                return r.status, (data if raw else json.loads(data or b"null"))
        except urllib.error.HTTPError as exc:
            return exc.code, None


def platform_run_cli(platform_run, args, env):
    import subprocess

    stdin = env.pop("stdin", None)
    return subprocess.run([str(PROJECT / ".venv" / "bin" / "imaging-lifecycle"), *args],
                          env={**platform_run.env, **env}, input=stdin, capture_output=True, text=True, timeout=120)


def browser_download(platform_run, user: str, path: str) -> tuple[int, bytes]:
    """Log in through Airflow's login page in Debian's chromium, then fetch ``path`` with the UI's cookie."""
    import shutil

    from playwright.sync_api import sync_playwright

    base = platform_run.settings().airflow_url
    password = json.loads((platform_run.state / "secrets" / "airflow-passwords.json").read_text())[user]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_context().new_page()
            page.goto(f"{base}/auth/login/")
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60000)
            assert any(c["name"] == "_token" for c in page.context.cookies())
            r = page.context.request.get(base + path)  # the browser's own cookies, no Authorization header
            return r.status, r.body()
        finally:
            browser.close()


# -- PostgreSQL: a real server for the catalog and audit tests -------------------------------------


def _pg_bin():
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server from the machine's own binaries (Debian's), on a private port and socket.

    Run as the ``postgres`` user (initdb refuses root) under a temporary folder, stopped at the end.
    Where there is none (``make test`` installs Debian's ``postgresql`` where apt is available),
    the tests that need it are skipped with that reason. Yields the superuser's URL.
    """
    import pwd
    import shutil
    import socket
    import subprocess
    import time

    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("no PostgreSQL on this machine (make test installs Debian's postgresql where it can)")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' system user to run PostgreSQL as (initdb refuses root)")
    root = Path(tempfile.mkdtemp(prefix="il-pg-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def as_postgres(*argv):
        return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], capture_output=True,
                              text=True, timeout=120)

    try:
        r = as_postgres(pg_bin / "initdb", "-D", data, "-A", "trust", "-U", "postgres")
        assert r.returncode == 0, r.stderr
        r = as_postgres(pg_bin / "pg_ctl", "-D", data, "-l", root / "pg.log", "-w", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        assert r.returncode == 0, r.stderr + (root / "pg.log").read_text()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        as_postgres(pg_bin / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


def new_pg_database(server_url: str) -> str:
    """A fresh, empty database on the test server; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"t_{os.urandom(6).hex()}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path):
    """The catalog URL a test runs against: the same test on SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return new_pg_database(request.getfixturevalue("pg_server"))


class Intruder:
    """Raw SQL on the catalog's database with the append-only triggers off: what an intruder does.

    Goes through its own engine (SQLite: the triggers dropped; PostgreSQL: disabled, as the owner
    or a superuser can), never the catalog's API. ``?`` placeholders, like sqlite3's.
    """

    def __init__(self, url: str):
        import re

        from sqlalchemy import create_engine, text

        self._re, self._text = re, text
        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self.sqlite = self.engine.dialect.name == "sqlite"
        if self.sqlite:
            self.execute("DROP TRIGGER IF EXISTS audit_records_no_update")
            self.execute("DROP TRIGGER IF EXISTS audit_records_no_delete")
        else:
            self.execute("ALTER TABLE audit_records DISABLE TRIGGER USER")

    def execute(self, sql: str, params: tuple = ()):
        with self.engine.connect() as c:
            if not params:  # as written: no placeholder parsing inside string literals (':999' in JSON)
                r = c.exec_driver_sql(sql)
            else:
                count = iter(range(1000))
                named = self._re.sub(r"\?", lambda _m: f":p{next(count)}", sql)
                r = c.execute(self._text(named), {f"p{i}": v for i, v in enumerate(params)})
            rows = r.fetchall() if r.returns_rows else []
        return _Rows(rows)


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self):
        return self.rows
