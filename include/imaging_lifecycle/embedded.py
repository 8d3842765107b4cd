"""The embedded platform: two S3 sites (``weed mini``) and Airflow, run as local processes.

``imaging-lifecycle platform up`` (what ``make run`` calls) starts it and
``platform down`` (``make stop``) stops it. Design points:

* Every service runs in its own session (``setsid``) and carries the
  environment marker ``IL_PLATFORM=<state dir>``. Stopping kills each
  recorded process tree *and* any other process carrying our marker, so
  LocalExecutor workers and task processes that outlived their parent are
  found too. ``airflow standalone`` is deliberately not used: SIGTERM to it
  leaves its workers running, and it hides the four components that
  production runs separately anyway.
* Everything lives under the state folder; credentials and Airflow's keys are
  generated on first start into 0600 files. There is no default password.
* Every port is bound to 127.0.0.1.
* A second ``up`` reuses the state and leaves running services alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from base64 import urlsafe_b64encode
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from imaging_lifecycle.secretfiles import write_private_file
from imaging_lifecycle.settings import (
    CONN_BACKUP,
    CONN_PRIMARY,
    PROJECT_ROOT,
    TEST_CLOCK_ENV,
    Settings,
    embedded_admin_credentials_file,
    embedded_ca_file,
    embedded_credentials_file,
    load_settings,
)

MARKER = "IL_PLATFORM"
#: ``IL_S3_TLS=1`` at ``platform up``: the object stores serve S3 over HTTPS (kept until set to 0).
S3_TLS_ENV = "IL_S3_TLS"
AIRFLOW_PARALLELISM = 4


class PlatformError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str]
    cwd: Path | None = None


# -- state and secrets ---------------------------------------------------------


def _bin(name: str) -> str:
    """A console script of this environment (the venv's bin next to python)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise PlatformError(f"{name!r} is not installed in this environment")
    return found


def _token() -> str:
    return secrets.token_urlsafe(30)


def ensure_credentials(settings: Settings) -> dict:
    """The embedded S3 credentials and Airflow keys, generated on first start."""
    path = embedded_credentials_file(settings.state_dir)
    if not path.exists():
        creds = {
            site: {"access_key": "IL" + secrets.token_hex(9).upper(), "secret_key": _token()}
            for site in ("primary", "backup")
        }
        creds["airflow"] = {
            "admin_password": _token(),
            "jwt_secret": _token(),
            "api_secret_key": _token(),
            "fernet_key": urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        }
        write_private_file(path, json.dumps(creds, indent=2).encode())
    return json.loads(path.read_text())


def ensure_admin_credentials(settings: Settings) -> dict:
    """The object stores' admin identity, generated on first start into its own 0600 file.

    Only bucket creation (``start_object_stores``, ``imaging-lifecycle init``) reads it; it is never
    put into a pipeline process's environment.
    """
    path = embedded_admin_credentials_file(settings.state_dir)
    if not path.exists():
        admin = {site: {"access_key": "ILADM" + secrets.token_hex(8).upper(), "secret_key": _token()}
                 for site in ("primary", "backup")}
        write_private_file(path, json.dumps(admin, indent=2).encode())
    return json.loads(path.read_text())


def _record_s3_tls(settings: Settings, creds: dict) -> dict:
    """``IL_S3_TLS=1`` at ``platform up`` serves S3 over HTTPS; the choice is kept with the credentials."""
    want = os.environ.get(S3_TLS_ENV, "1" if creds.get("s3_tls") else "0") == "1"
    if bool(creds.get("s3_tls")) != want:
        creds = {**creds, "s3_tls": want}
        path = embedded_credentials_file(settings.state_dir)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private_file(tmp, json.dumps(creds, indent=2).encode())
        os.replace(tmp, path)
    return creds


def _site_config(settings: Settings, site: str, creds: dict) -> tuple[Path, Path]:
    """(working directory with security.toml, s3.json) of one site, rewritten on every start."""
    from imaging_lifecycle import seaweed

    (settings.secrets_dir / f"weed-{site}-s3.json").unlink(missing_ok=True)  # an older build's Admin identity
    conf = settings.secrets_dir / f"weed-{site}"
    s3 = seaweed.write_site_config(conf, seaweed.pki(embedded_ca_file(settings.state_dir).parent),
                                   pipeline=creds[site], admin=ensure_admin_credentials(settings)[site],
                                   bucket_prefix=settings.bucket_prefix)
    return conf, s3


# -- readiness checks ------------------------------------------------------------


def http_ok(url: str, timeout: float = 2.0, ca_file: Path | None = None) -> bool:
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return 200 <= r.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except Exception:
        return False


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def airflow_health(settings: Settings, timeout: float = 10.0) -> dict | None:
    """Airflow's health document, or None if it does not answer within ``timeout``.

    Ten seconds, not two: right after a start the scheduler's first burst of runs
    keeps the API server (on SQLite, on two cores) busy for seconds at a time, and
    a short probe then reported a running Airflow as down (the e2e status test
    failed that way once).
    """
    try:
        with urllib.request.urlopen(f"{settings.airflow_url}/api/v2/monitor/health", timeout=timeout) as r:
            return json.loads(r.read())
    except Exception:
        return None


# -- environment -------------------------------------------------------------------


def airflow_env(settings: Settings, creds: dict) -> dict[str, str]:
    """Airflow's whole configuration, as environment variables (no airflow.cfg edits)."""
    home = settings.state_dir / "airflow"
    port = settings.port("airflow")

    tls = bool(creds.get("s3_tls"))

    def s3_conn(site: str, port_name: str) -> str:
        extra: dict = {"endpoint_url": f"{'https' if tls else 'http'}://127.0.0.1:{settings.port(port_name)}"}
        if tls:
            extra["verify"] = str(embedded_ca_file(settings.state_dir))
        return json.dumps(
            {"conn_type": "aws", "login": creds[site]["access_key"], "password": creds[site]["secret_key"],
             "extra": extra}
        )

    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(AIRFLOW_PARALLELISM),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Our DAGs are the product: new ones run at once instead of waiting for a click.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "imaging_lifecycle.settings.AIRFLOW_SQLITE_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "imaging_lifecycle.settings.AIRFLOW_SQLITE_CONNECT_ARGS",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
            settings.state_dir / "secrets" / "airflow-passwords.json"
        ),
        "AIRFLOW__CORE__FERNET_KEY": creds["airflow"]["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__SECRET_KEY": creds["airflow"]["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": creds["airflow"]["jwt_secret"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        f"AIRFLOW_CONN_{CONN_PRIMARY.upper()}": s3_conn("primary", "s3_primary"),
        f"AIRFLOW_CONN_{CONN_BACKUP.upper()}": s3_conn("backup", "s3_backup"),
        "IL_STATE_DIR": str(settings.state_dir),
        "IL_LANDING_DIR": str(settings.landing_dir),
        "IL_CATALOG_URL": settings.catalog_url,
        "IL_PORT_OFFSET": str(settings.port_offset),
        "GX_ANALYTICS_ENABLED": "False",
    }


def services(settings: Settings, creds: dict) -> list[Service]:
    from imaging_lifecycle import seaweed

    weed = _bin("weed")
    out = []
    tls = bool(creds.get("s3_tls"))
    ca = embedded_ca_file(settings.state_dir)
    for site, port_name, base in (("primary", "s3_primary", 0), ("backup", "s3_backup", 1)):
        s3 = settings.port(port_name)
        # weed mini opens a master, volume, filer and admin server too; give each
        # site its own ports (gRPC = port + 10000) so the two sites never clash.
        aux = 9400 + settings.port_offset + 20 * base
        conf, s3_config = _site_config(settings, site, creds)
        argv = seaweed.mini_argv(weed, settings.state_dir / "s3" / site, s3_config, s3_port=s3, aux_port=aux,
                                 p=seaweed.pki(ca.parent), tls=tls, sockets=conf)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{s3}/"
        out.append(Service(f"s3-{site}", argv, lambda url=url: http_ok(url, ca_file=ca if tls else None), {}, conf))
    env = airflow_env(settings, creds)
    dicom = settings.port("dicom")
    out.append(
        Service(
            "dicom-receiver",
            [_bin("imaging-lifecycle"), "receive"],
            lambda: _port_open(dicom),
            {k: v for k, v in env.items() if k.startswith("IL_")},
        )
    )
    airflow = _bin("airflow")
    for component in ("scheduler", "dag-processor", "triggerer", "api-server"):
        # Each component counts as up once the api-server reports it healthy.
        key = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer",
               "api-server": "metadatabase"}[component]

        def ready(key=key):
            return ((airflow_health(settings) or {}).get(key) or {}).get("status") == "healthy"

        argv = [airflow, component]
        if component in ("scheduler", "triggerer"):
            # Task and trigger logs are local files the api-server reads directly;
            # the log-serving sidecars would listen on 0.0.0.0, so they stay off.
            argv.append("--skip-serve-logs")
        out.append(Service(f"airflow-{component}", argv, ready, env))
    return out


# -- processes ---------------------------------------------------------------------


def _run_dir(settings: Settings) -> Path:
    d = settings.state_dir / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _recorded(settings: Settings, name: str) -> psutil.Process | None:
    """The live process recorded for ``name``, checked against its start time (no PID reuse)."""
    pidfile = _run_dir(settings) / f"{name}.json"
    if not pidfile.exists():
        return None
    rec = json.loads(pidfile.read_text())
    try:
        p = psutil.Process(rec["pid"])
        if abs(p.create_time() - rec["started"]) < 1 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None


def _start(settings: Settings, svc: Service) -> psutil.Process:
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in {**os.environ, **svc.env, MARKER: str(settings.state_dir)}.items() if k != TEST_CLOCK_ENV}
    with open(log_dir / f"{svc.name}.log", "ab") as log:
        proc = subprocess.Popen(
            svc.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=svc.cwd or settings.state_dir, start_new_session=True,
        )
    p = psutil.Process(proc.pid)
    (_run_dir(settings) / f"{svc.name}.json").write_text(json.dumps({"pid": p.pid, "started": p.create_time()}))
    return p


def _wait(check: Callable[[], bool], timeout: float, what: str, proc: psutil.Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and (not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE):
            raise PlatformError(f"{what} exited during start; see its log under .state/logs/")
        time.sleep(0.3)
    raise PlatformError(f"{what} not ready after {timeout:.0f}s; see .state/logs/")


#: The people of the embedded platform and their Airflow roles (simple auth manager). The policy
#: gives them their lifecycle roles: ``dso`` is the data security officer, ``radiology-head`` the
#: department head, ``clinician`` a requester. In production the same names come from the
#: deployment's auth manager (FAB, or an OIDC identity provider).
USERS = {"admin": "admin", "operator": "op", "dso": "user", "radiology-head": "user", "clinician": "user"}


def _airflow_passwords(settings: Settings, creds: dict) -> Path:
    """Each person's password, generated on first start into one 0600 file (users added later get one too)."""
    path = settings.state_dir / "secrets" / "airflow-passwords.json"
    have = json.loads(path.read_text()) if path.exists() else {}
    want = {u: have.get(u) or (creds["airflow"]["admin_password"] if u == "admin" else _token()) for u in USERS}
    if want != have:
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private_file(tmp, json.dumps(want, indent=2).encode())
        os.replace(tmp, path)
    return path


#: Everything the platform writes is its own: files 0600, folders 0700.
PRIVATE_UMASK = 0o077


def make_private(settings: Settings) -> None:
    """This process (and every process it starts) creates private files; existing state is made private.

    The state folder holds the catalog, Airflow's database and logs, the S3
    sites' volumes, staged and received DICOM files and the secrets. A start
    also repairs a state folder an older version left readable to others.
    """
    os.umask(PRIVATE_UMASK)
    for root in {settings.state_dir, settings.landing_dir}:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for dirpath, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if st.st_mode & 0o077 and not os.path.islink(p):
                        os.chmod(p, st.st_mode & 0o7700)
                except FileNotFoundError:  # removed meanwhile (a running platform)
                    continue
        os.chmod(root, 0o700)


def start_object_stores(settings: Settings) -> Settings:
    """Start both S3 sites (if not running) and create the zones; returns settings with credentials."""
    make_private(settings)
    for d in ("s3/primary", "s3/backup", "logs"):
        (settings.state_dir / d).mkdir(parents=True, exist_ok=True)
    creds = _record_s3_tls(settings, ensure_credentials(settings))
    for svc in services(settings, creds):
        if not svc.name.startswith("s3-"):
            continue
        proc = _recorded(settings, svc.name) or _start(settings, svc)
        _wait(svc.ready, 60, svc.name, proc)
    from imaging_lifecycle.settings import admin_settings
    from imaging_lifecycle.storage import ObjectStore

    settings = _with_creds(settings, creds)
    ObjectStore(admin_settings(settings)).ensure_zones()  # the admin identity creates; the pipeline's cannot
    return settings


def up(settings: Settings | None = None, *, echo: Callable[[str], None] = print) -> dict:
    """Start whatever is not running; return the login. Idempotent: state is reused."""
    settings = settings or load_settings()
    t0 = time.monotonic()
    for d in ("landing", "airflow", "logs", "tmp"):
        (settings.state_dir / d).mkdir(parents=True, exist_ok=True)
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    settings = start_object_stores(settings)
    creds = ensure_credentials(settings)
    _airflow_passwords(settings, creds)
    from imaging_lifecycle.services import Services

    # Opening the catalog creates its tables on first start; the platform records the policy it runs
    # under now (a later process with another policy is refused, 'imaging-lifecycle policy' says why).
    Services.open(settings).guard("platform_start", actor="system:platform")
    svcs = [s for s in services(settings, creds) if not s.name.startswith("s3-")]
    env = {**os.environ, **airflow_env(settings, creds)}
    if not all(_recorded(settings, s.name) for s in svcs if s.name.startswith("airflow-")):
        echo("migrating the Airflow metadata database ...")
        subprocess.run(
            [_bin("airflow"), "db", "migrate"], env=env, check=True, cwd=settings.state_dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
    for svc in svcs:
        if not _recorded(settings, svc.name):
            _start(settings, svc)
    for svc in svcs:
        _wait(svc.ready, 180, svc.name, _recorded(settings, svc.name))
    return {
        "url": settings.airflow_url,
        "user": "admin",
        "users": list(USERS),
        "password_file": str(settings.secrets_dir / "airflow-passwords.json"),
        "seconds": round(time.monotonic() - t0, 1),
    }


def _with_creds(settings: Settings, creds: dict) -> Settings:
    """Settings whose S3 endpoints use ``creds`` (needed on first start, before env has them)."""
    from dataclasses import replace

    from imaging_lifecycle.settings import S3Endpoint

    tls = bool(creds.get("s3_tls"))
    ca = str(embedded_ca_file(settings.state_dir)) if tls else None

    def ep(site: str, port_name: str) -> S3Endpoint:
        return S3Endpoint(f"127.0.0.1:{settings.port(port_name)}", creds[site]["access_key"],
                          creds[site]["secret_key"], tls, ca)

    return replace(settings, primary=settings.primary or ep("primary", "s3_primary"),
                   backup=settings.backup or ep("backup", "s3_backup"))


def ours(settings: Settings) -> list[psutil.Process]:
    """Every live process carrying this platform's marker, plus recorded trees."""
    found: dict[int, psutil.Process] = {}
    run = _run_dir(settings)
    for pidfile in run.glob("*.json"):
        p = _recorded(settings, pidfile.stem)
        if p:
            found[p.pid] = p
            for c in p.children(recursive=True):
                found[c.pid] = c
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.environ().get(MARKER) == str(settings.state_dir):
                found[p.pid] = p
        except psutil.Error:
            continue
    return [p for p in found.values() if p.pid != me]


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def down(settings: Settings | None = None, *, timeout: float = 20.0) -> int:
    """Stop every process of this platform, children included; keep the data."""
    settings = settings or load_settings()
    procs = ours(settings)
    for p in procs:
        try:
            # Whole session first: catches children that were just forked.
            os.killpg(p.pid, signal.SIGTERM) if os.getpgid(p.pid) == p.pid else p.terminate()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    _kill(alive)
    _kill(ours(settings))  # anything forked during the shutdown itself
    for pidfile in _run_dir(settings).glob("*.json"):
        pidfile.unlink()
    return len(procs)
