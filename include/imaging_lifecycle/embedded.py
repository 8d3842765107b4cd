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
* Two executors. ``local`` (the default): LocalExecutor on SQLite, as above. ``celery``
  (``platform up --executor celery`` or ``IL_EXECUTOR=celery``; remembered in
  ``<state>/platform.json``): the production shape, natively from Debian's packages. A private
  PostgreSQL cluster under ``<state>/pg`` (run as the ``postgres`` system user when we are root,
  SCRAM passwords only, TCP on 127.0.0.1, no Unix socket) holds Airflow's metadata database and
  the catalog (an owner role migrates it; the pipeline connects as a role that owns nothing); a
  private Redis (``requirepass`` in a 0600 config file) is the Celery broker; and two Celery
  workers run as two "hosts": ``worker-1`` on the landing host (queues ``default`` and the landing
  queue, the landing folder of the receiver and the triggerer) and ``worker-2`` (queue
  ``default``) with its own state folder ``<state>/hosts/worker-2``, which gets only the shared
  things by environment (see :func:`worker_env`). A state folder keeps the executor it was first
  started with: its catalog and Airflow database live in that executor's backend.
* Airflow's configuration is environment variables (:func:`airflow_env`); a user's own
  ``AIRFLOW__*`` variable wins over our default, except the few the platform must control
  (:data:`PLATFORM_CONTROLLED`).
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
SCHEDULER_IDLE_SLEEP = "0.2"  # seconds; the same in docker-compose.yml

#: ``IL_EXECUTOR`` at ``platform up`` (or ``--executor``): ``local`` (LocalExecutor, SQLite) or ``celery``.
EXECUTOR_ENV = "IL_EXECUTOR"
EXECUTORS = ("local", "celery")
#: The ports the celery mode adds, shifted by ``IL_PORT_OFFSET`` like ``settings.DEFAULT_PORTS``
#: (where they belong: TODO move them there as ``"postgres"`` and ``"redis"``). Not 5432/6379, so a
#: machine's own PostgreSQL or Redis never clashes; their last two digits differ from every other
#: platform port's (the S3 sites' auxiliary ports are 9400-9423 and 19400-19423), so offsets in
#: steps of 100 never collide.
#: The two Celery workers: name -> queues (the landing queue is added to the landing host's).
WORKERS = ("worker-1", "worker-2")
LANDING_WORKER = "worker-1"
#: Airflow's host name of a task instance comes from this variable in the celery mode
#: (``[core] hostname_callable`` = :func:`host_name`).
HOST_NAME_ENV = "IL_HOST_NAME"
#: The PostgreSQL roles and databases of the celery mode.
PG_SUPERUSER = "postgres"
PG_AIRFLOW_ROLE, PG_AIRFLOW_DB = "il_airflow", "airflow"
PG_CATALOG_OWNER, PG_CATALOG_DB = "il_catalog_owner", "il_catalog"
PG_PIPELINE_ROLE = "il_pipeline"
#: Celery needs at least this many worker processes per worker (user's AIRFLOW__CELERY__WORKER_CONCURRENCY wins).
CELERY_CONCURRENCY = 2

#: The ``AIRFLOW__*`` settings the platform sets even when the user set them: the executor (chosen
#: by ``--executor``), the metadata database and Celery's broker and result backend (they live in
#: the state folder, behind generated passwords), the auth manager with its people and their
#: password file (every actor is a real name), Airflow's generated secrets, and the API server's
#: bind address (everything listens on 127.0.0.1). Their ``_CMD``/``_SECRET`` forms lose to our
#: plain variable in Airflow's own order. ``up`` says which ones it ignored.
PLATFORM_CONTROLLED = frozenset({
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__AUTH_MANAGER",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__HOST",
})


class PlatformError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str]
    cwd: Path | None = None
    #: False: the process gets only ``env`` (plus a minimal system environment), not ours: another "host".
    inherit_env: bool = True
    #: Writes what the process reads at start (a site's security.toml and identities), called by ``_start``
    #: only: rewriting it beside a running process gave its components different JWT keys (HTTP 401).
    prepare: Callable[[], object] | None = None


def host_name() -> str:
    """Airflow's ``[core] hostname_callable`` in the celery mode: ``IL_HOST_NAME``, else the FQDN."""
    import socket

    return os.environ.get(HOST_NAME_ENV) or socket.getfqdn()


# -- the executor --------------------------------------------------------------------


def _platform_file(settings: Settings) -> Path:
    return settings.state_dir / "platform.json"


def recorded_executor(settings: Settings) -> str | None:
    """The executor this state folder was set up with (None: never started).

    A state folder from before the choice was recorded, with a catalog or Airflow database on
    SQLite, counts as ``local``.
    """
    path = _platform_file(settings)
    if path.exists():
        return json.loads(path.read_text()).get("executor")
    if (settings.state_dir / "catalog.sqlite").exists() or (settings.state_dir / "airflow" / "airflow.db").exists():
        return "local"
    return None


def choose_executor(settings: Settings, requested: str | None = None) -> str:
    """``requested`` (``--executor``), else ``IL_EXECUTOR``, else what the state folder records, else ``local``.

    A state folder keeps its executor: its catalog and Airflow database live in that executor's
    backend (SQLite files, or the private PostgreSQL), so switching would start on an empty catalog
    beside stored data. Use another ``IL_STATE_DIR`` for the other one.
    """
    recorded = recorded_executor(settings)
    want = (requested or os.environ.get(EXECUTOR_ENV) or recorded or "local").strip().lower()
    if want not in EXECUTORS:
        raise PlatformError(f"unknown executor {want!r}; choose one of {', '.join(EXECUTORS)}")
    if recorded and want != recorded:
        raise PlatformError(
            f"the state folder {settings.state_dir} was set up for the {recorded} executor (its catalog and "
            f"Airflow database live there); use another IL_STATE_DIR for the {want} executor")
    return want


def _record_executor(settings: Settings, executor: str) -> None:
    path = _platform_file(settings)
    if not path.exists() or json.loads(path.read_text()).get("executor") != executor:
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private_file(tmp, json.dumps({"executor": executor}).encode())
        os.replace(tmp, path)


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


def _site_config(settings: Settings, site: str) -> tuple[Path, Path]:
    """(working directory with security.toml, s3.json) of one site; :func:`_write_site_config` fills them."""
    conf = settings.secrets_dir / f"weed-{site}"
    return conf, conf / "s3.json"


def _write_site_config(settings: Settings, site: str, creds: dict) -> Path:
    """Write one site's security.toml (new JWT keys) and identities: on every start of that site, and only then."""
    from imaging_lifecycle import seaweed

    (settings.secrets_dir / f"weed-{site}-s3.json").unlink(missing_ok=True)  # an older build's Admin identity
    conf, _ = _site_config(settings, site)
    return seaweed.write_site_config(conf, seaweed.pki(embedded_ca_file(settings.state_dir).parent),
                                     pipeline=creds[site], admin=ensure_admin_credentials(settings)[site],
                                     bucket_prefix=settings.bucket_prefix)


# -- the celery mode's backends: PostgreSQL and Redis ----------------------------------


def _pg_bin() -> Path | None:
    """The newest of the machine's PostgreSQL server binaries (Debian: ``/usr/lib/postgresql/<v>/bin``)."""
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4])
                   if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and (Path(initdb).parent / "postgres").exists() else None


def celery_tools_missing() -> list[str]:
    """The Debian packages the celery mode needs and this machine lacks (``make test-tools`` installs them)."""
    missing = []
    if _pg_bin() is None:
        missing.append("postgresql")
    if not shutil.which("redis-server"):
        missing.append("redis-server")
    return missing


def backend_secrets(settings: Settings) -> dict[str, str]:
    """The celery mode's generated passwords (PostgreSQL's roles and Redis), one 0600 file, made on first start."""
    path = settings.secrets_dir / "backends.json"
    if not path.exists():
        names = (PG_SUPERUSER, PG_AIRFLOW_ROLE, PG_CATALOG_OWNER, PG_PIPELINE_ROLE, "redis")
        write_private_file(path, json.dumps({n: secrets.token_hex(24) for n in names}, indent=2).encode())
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Backends:
    """Where the celery mode's databases and broker are, with the passwords in (keep out of logs)."""

    airflow_db: str
    airflow_db_async: str
    result_backend: str
    broker: str
    catalog_owner: str
    catalog_pipeline: str


def _pg_url(settings: Settings, role: str, password: str, db: str, driver: str = "psycopg2") -> str:
    return f"postgresql+{driver}://{role}:{password}@127.0.0.1:{settings.port('postgres')}/{db}"


def backends(settings: Settings) -> Backends:
    sec = backend_secrets(settings)
    airflow_db = _pg_url(settings, PG_AIRFLOW_ROLE, sec[PG_AIRFLOW_ROLE], PG_AIRFLOW_DB)
    return Backends(
        airflow_db=airflow_db,
        airflow_db_async=_pg_url(settings, PG_AIRFLOW_ROLE, sec[PG_AIRFLOW_ROLE], PG_AIRFLOW_DB, "asyncpg"),
        result_backend="db+" + airflow_db,
        broker=f"redis://:{sec['redis']}@127.0.0.1:{settings.port('redis')}/0",
        catalog_owner=_pg_url(settings, PG_CATALOG_OWNER, sec[PG_CATALOG_OWNER], PG_CATALOG_DB),
        catalog_pipeline=_pg_url(settings, PG_PIPELINE_ROLE, sec[PG_PIPELINE_ROLE], PG_CATALOG_DB),
    )


def catalog_url_file(settings: Settings) -> Path:
    """The pipeline's catalog URL of the celery mode (0600); ``load_settings`` reads it when IL_CATALOG_URL is unset."""
    from imaging_lifecycle.settings import embedded_catalog_url_file

    return embedded_catalog_url_file(settings.state_dir)


def _pg_user():
    """The system user PostgreSQL runs as: ``postgres`` when we are root (initdb refuses root), else None (us)."""
    import pwd

    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PlatformError("no 'postgres' system user to run PostgreSQL as (Debian's postgresql package makes it)") \
            from None


def _as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if _pg_user() else argv


def _pg_dir(settings: Settings) -> Path:
    return settings.state_dir / "pg"


def _open_state_to_postgres(settings: Settings) -> None:
    """Root only: the state folder becomes ``root:postgres 0710`` so PostgreSQL can reach ``<state>/pg``.

    The ``postgres`` user may traverse the state folder, not list it; every file in it stays 0600
    ours. Its parents must let others traverse (a folder under ``/work`` or ``/tmp`` does): checked
    here, never changed.
    """
    user = _pg_user()
    if user is None:
        return
    os.chown(settings.state_dir, 0, user.pw_gid)
    os.chmod(settings.state_dir, 0o710)
    for parent in settings.state_dir.parents:
        st = parent.stat()
        may = (st.st_mode & 0o001) or (st.st_uid == user.pw_uid and st.st_mode & 0o100) or \
            (st.st_gid == user.pw_gid and st.st_mode & 0o010)
        if not may:
            raise PlatformError(f"PostgreSQL runs as the system user postgres, which may not enter {parent} "
                                "(above the state folder); choose an IL_STATE_DIR whose parents others may traverse")


def _init_pg_cluster(settings: Settings, sec: dict[str, str]) -> Path:
    """``initdb`` of the private cluster on first start (as ``postgres``), TCP and SCRAM only; its data folder."""
    root, data = _pg_dir(settings), _pg_dir(settings) / "data"
    user = _pg_user()
    root.mkdir(mode=0o700, exist_ok=True)
    if user:
        os.chown(root, user.pw_uid, user.pw_gid)
    if (data / "PG_VERSION").exists():
        return data
    if data.exists():
        shutil.rmtree(data)  # an initdb that died half-way
    pwfile = root / f"initdb-{secrets.token_hex(4)}.pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, sec[PG_SUPERUSER].encode() + b"\n")
    finally:
        os.close(fd)
    if user:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        r = subprocess.run(
            _as_pg([str(_pg_bin() / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, f"--pwfile={pwfile}",
                    "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"]),
            cwd=root, capture_output=True, text=True, timeout=120)
    finally:
        pwfile.unlink(missing_ok=True)
    if r.returncode != 0:
        raise PlatformError(f"initdb failed: {r.stderr.strip()[-500:]}")
    # Only TCP from 127.0.0.1, every role with its password; the Unix socket is off (see _pg_service).
    hba = data / "pg_hba.conf"
    hba.write_text("# imaging-lifecycle: TCP on 127.0.0.1 only, each role with its own password (SCRAM).\n"
                   "host all all 127.0.0.1/32 scram-sha-256\n")
    if user:
        os.chown(hba, user.pw_uid, user.pw_gid)
    os.chmod(hba, 0o600)
    return data


def _pg_service(settings: Settings) -> Service:
    data = _pg_dir(settings) / "data"
    argv = _as_pg([str(_pg_bin() / "postgres"), "-D", str(data), "-p", str(settings.port("postgres")),
                   "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                   "-c", "password_encryption=scram-sha-256", "-c", "max_connections=200"])
    return Service("postgres", argv, lambda: _pg_ready(settings), {}, _pg_dir(settings))


def _pg_connect(settings: Settings, user: str, password: str, dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=settings.port("postgres"), user=user, password=password,
                            dbname=dbname, connect_timeout=3)


def _pg_ready(settings: Settings) -> bool:
    if not _port_open(settings.port("postgres")):
        return False
    try:
        _pg_connect(settings, PG_SUPERUSER, backend_secrets(settings)[PG_SUPERUSER]).close()
        return True
    except Exception:
        return False


def _provision_pg(settings: Settings) -> None:
    """The roles and databases, idempotently; passwords sent only as SCRAM verifiers, never in clear.

    ``il_airflow`` owns Airflow's database, ``il_catalog_owner`` the catalog's; ``il_pipeline``
    owns nothing (``grant_pipeline_role`` gives it the catalog's tables). Nobody but its owner (and
    the pipeline, on the catalog) may connect to a database.
    """
    from psycopg2 import sql
    from psycopg2.extensions import encrypt_password

    sec = backend_secrets(settings)
    conn = _pg_connect(settings, PG_SUPERUSER, sec[PG_SUPERUSER])
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for role in (PG_AIRFLOW_ROLE, PG_CATALOG_OWNER, PG_PIPELINE_ROLE):
                verifier = encrypt_password(sec[role], role, conn, "scram-sha-256")
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(verifier)))
            for db, owner in ((PG_AIRFLOW_DB, PG_AIRFLOW_ROLE), (PG_CATALOG_DB, PG_CATALOG_OWNER)):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchone():
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                        sql.Identifier(db), sql.Identifier(owner)))
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
            cur.execute("REVOKE ALL ON DATABASE postgres FROM PUBLIC")
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(PG_CATALOG_DB), sql.Identifier(PG_PIPELINE_ROLE)))
    finally:
        conn.close()
    # In each database only its owner creates in the public schema (PostgreSQL 15's default, made
    # explicit for older servers, where a role owning nothing could otherwise create tables there).
    for db in (PG_AIRFLOW_DB, PG_CATALOG_DB):
        conn = _pg_connect(settings, PG_SUPERUSER, sec[PG_SUPERUSER], db)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                if db == PG_AIRFLOW_DB:  # Airflow's migrations create its tables in public, as their owner
                    cur.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(PG_AIRFLOW_ROLE)))
                else:
                    cur.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(PG_CATALOG_OWNER)))
        finally:
            conn.close()


def _kms_files(settings: Settings):
    from imaging_lifecycle import kms

    return kms.prepare_kmip_server(settings.state_dir / "kmip", settings.port("kmip"))


def _kms_service(settings: Settings) -> Service:
    """A PyKMIP server standing in for the hospital's KMS: the key store's master-key generations and the
    HMAC and signing keys live there, so every host gets the same ones and a destroyed generation is gone.
    Mutual TLS on 127.0.0.1; its CA, certificates and database in ``<state>/kmip`` (0700)."""
    files = _kms_files(settings)
    return Service("kms", files.argv, lambda: _port_open(settings.port("kmip")), {}, files.config_file.parent)


def _record_kmip_client(settings: Settings) -> None:
    """``secrets/kmip-client.json``: how this host's processes reach the KMS (``load_settings`` reads it)."""
    from imaging_lifecycle.settings import embedded_kmip_file

    text = json.dumps(_kms_files(settings).client_env(), sort_keys=True)
    path = embedded_kmip_file(settings.state_dir)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private_file(tmp, text.encode())
        os.replace(tmp, path)


def _redis_service(settings: Settings) -> Service:
    """Redis with its ``requirepass`` in a 0600 config file (never on a command line), on 127.0.0.1 only."""
    sec = backend_secrets(settings)
    data = settings.state_dir / "redis"
    data.mkdir(mode=0o700, exist_ok=True)
    conf = settings.secrets_dir / "redis.conf"
    text = "\n".join([
        "# imaging-lifecycle: the Celery broker (generated by platform up; rewritten on every start)",
        "bind 127.0.0.1", f"port {settings.port('redis')}", "protected-mode yes", "unixsocket \"\"",
        f"requirepass {sec['redis']}", f"dir {data}", "dbfilename broker.rdb", "save 60 100",
        "appendonly no", "daemonize no", "logfile \"\"", "enable-debug-command no",
        "enable-module-command no", "",
    ])
    if not conf.exists() or conf.read_text() != text:
        tmp = conf.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private_file(tmp, text.encode())
        os.replace(tmp, conf)
    return Service("redis", [shutil.which("redis-server") or "redis-server", str(conf)],
                   lambda: redis_ping(settings), {}, data)


def redis_ping(settings: Settings, password: str | None = None) -> bool:
    """Does the broker answer PING after AUTH with its password (or ``password``)?"""
    import redis

    try:
        client = redis.Redis(host="127.0.0.1", port=settings.port("redis"),
                             password=password if password is not None else backend_secrets(settings)["redis"],
                             socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def start_backends(settings: Settings) -> Backends:
    """PostgreSQL and Redis of the celery mode (started if not running), the roles and databases provisioned."""
    missing = celery_tools_missing()
    if missing:
        raise PlatformError(f"the celery executor needs Debian's {' and '.join(missing)} (make test-tools "
                            "installs them as root): apt-get install " + " ".join(missing))
    sec = backend_secrets(settings)
    _open_state_to_postgres(settings)
    _init_pg_cluster(settings, sec)
    for svc in (_pg_service(settings), _redis_service(settings), _kms_service(settings)):
        proc = _recorded(settings, svc.name) or _start(settings, svc)
        _wait(svc.ready, 60, svc.name, proc)
    _record_kmip_client(settings)
    _provision_pg(settings)
    found = backends(settings)
    path = catalog_url_file(settings)
    if not path.exists() or path.read_text().strip() != found.catalog_pipeline:
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private_file(tmp, (found.catalog_pipeline + "\n").encode())
        os.replace(tmp, path)
    return found


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


def _user_set(key: str) -> bool:
    """Did the user set Airflow option ``key`` (plainly, or as its ``_CMD``/``_SECRET`` form)?"""
    return any(k in os.environ for k in (key, f"{key}_CMD", f"{key}_SECRET"))


def ignored_overrides() -> list[str]:
    """The user's ``AIRFLOW__*`` variables the platform sets anyway (:data:`PLATFORM_CONTROLLED`)."""
    return sorted(k for k in PLATFORM_CONTROLLED if _user_set(k))


def _s3_conns(settings: Settings, creds: dict, ca_file: Path | None = None) -> dict[str, str]:
    """The two S3 connections as Airflow connection JSON; ``ca_file``: another host's copy of the CA."""
    tls = bool(creds.get("s3_tls"))

    def conn(site: str, port_name: str) -> str:
        extra: dict = {"endpoint_url": f"{'https' if tls else 'http'}://127.0.0.1:{settings.port(port_name)}"}
        if tls:
            extra["verify"] = str(ca_file or embedded_ca_file(settings.state_dir))
        return json.dumps(
            {"conn_type": "aws", "login": creds[site]["access_key"], "password": creds[site]["secret_key"],
             "extra": extra}
        )

    return {f"AIRFLOW_CONN_{CONN_PRIMARY.upper()}": conn("primary", "s3_primary"),
            f"AIRFLOW_CONN_{CONN_BACKUP.upper()}": conn("backup", "s3_backup")}


def airflow_env(settings: Settings, creds: dict, executor: str = "local",
                found: Backends | None = None) -> dict[str, str]:
    """Airflow's whole configuration, as environment variables (no airflow.cfg edits).

    These are defaults: an ``AIRFLOW__*`` variable the user set (or its ``_CMD``/``_SECRET`` form)
    is left out of this dict, so the user's own value reaches every component. The exceptions are
    :data:`PLATFORM_CONTROLLED` (executor, metadata database, broker, auth manager, generated
    secrets, bind address), which the platform always sets. ``executor="celery"`` needs ``found``
    (:func:`start_backends`).
    """
    home = settings.state_dir / "airflow"
    api_port = settings.port("airflow")
    env = {
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
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__FERNET_KEY": creds["airflow"]["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__SECRET_KEY": creds["airflow"]["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": creds["airflow"]["jwt_secret"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # An idle scheduler loop sleeps this long (default 1 s) before it sees a finished task and
        # queues the next: each stage-to-stage hop of a run waited for it.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": SCHEDULER_IDLE_SLEEP,
        **_s3_conns(settings, creds),
        "IL_STATE_DIR": str(settings.state_dir),
        "IL_LANDING_DIR": str(settings.landing_dir),
        "IL_CATALOG_URL": settings.catalog_url,
        "IL_PORT_OFFSET": str(settings.port_offset),
        "GX_ANALYTICS_ENABLED": "False",
    }
    if executor == "celery":
        if found is None:
            raise PlatformError("the celery executor's environment needs its backends (start_backends)")
        del env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"], env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"]
        env.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": found.airflow_db,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": found.airflow_db_async,
            "AIRFLOW__CELERY__BROKER_URL": found.broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": found.result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CELERY_CONCURRENCY),
            # What a task instance records as its host (the REST API's ``hostname``): IL_HOST_NAME.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "imaging_lifecycle.embedded.host_name",
            "IL_CATALOG_URL": found.catalog_pipeline,
            # Every process of this host reaches the KMS explicitly, never by a state file it might miss:
            # a process without it would quietly seal and pseudonymise with local keys no other host has.
            **_kms_files(settings).client_env(),
        })
    return {k: v for k, v in env.items()
            if not (k.startswith("AIRFLOW__") and k not in PLATFORM_CONTROLLED and _user_set(k))}


def landing_queue() -> str:
    """The Airflow queue only the landing host's worker consumes (``IL_LANDING_QUEUE``, as the DAGs read it)."""
    return os.environ.get("IL_LANDING_QUEUE", "landing")


#: What a worker on another host keeps of this process's environment: the system's basics only.
_SYSTEM_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
#: Settings every host must share (the same buckets, ports and timings), passed on when the user set them.
_SHARED_IL_ENV = ("IL_BUCKET_PREFIX", "IL_LANDING_QUEUE", "IL_INGEST_QUIET_SECONDS", "IL_INGEST_CHUNK_SIZE",
                  "IL_INGEST_BATCH_FILES",
                  "IL_AIRFLOW_TRACE_DAYS", "IL_S3_TLS", "IL_FAULT_PAUSES")


def host_dir(settings: Settings, name: str) -> Path:
    """The state folder of the worker ``name`` on its own "host"."""
    return settings.state_dir / "hosts" / name


def shared_secret_env(settings: Settings, name: str = "worker-2") -> dict[str, str]:
    """What a worker on another host needs to reach the shared secrets: the KMS, as ``IL_KMIP_*``.

    The key store's master-key generations, the two HMAC keys (``deid-hmac``, ``ref-hmac``) and the
    anchors' signing key (``audit-signing``) all come from the KMS, and the sealed key store from the
    catalog, so every host has the same ones and none is on any host's disk. The client certificate,
    its key and the KMS's CA are copied into the worker's own folder (0600), as a deployment installs
    them on each host.
    """
    files = _kms_files(settings)
    env = files.client_env()
    folder = host_dir(settings, name) / "kmip"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for var in ("IL_KMIP_CERT", "IL_KMIP_KEY", "IL_KMIP_CA"):
        src = Path(env[var])
        dst = folder / src.name
        data = src.read_bytes()
        if not dst.exists() or dst.read_bytes() != data:
            dst.unlink(missing_ok=True)
            write_private_file(dst, data)
        env[var] = str(dst)
    return env


def worker_env(settings: Settings, creds: dict, executor_env: dict[str, str], name: str) -> dict[str, str]:
    """The whole environment of the Celery worker ``name`` on its own host (nothing else of ours).

    Its own state folder ``<state>/hosts/<name>`` (``IL_STATE_DIR``) with an empty landing folder
    and its own ``AIRFLOW_HOME``; the shared things: the S3 connections (``verify`` = its own copy
    of the CA certificate), the REST API connection (``prune_airflow_traces`` calls the API), the
    pipeline's catalog URL, Airflow's configuration (ours and the user's ``AIRFLOW__*``, less the
    API server's own secrets), the policy file (copied) and :func:`shared_secret_env`.
    """
    home = host_dir(settings, name)
    for d in ("airflow", "landing", "secrets"):
        (home / d).mkdir(parents=True, exist_ok=True)
    install_local_settings(home / "airflow")
    ca = None
    if creds.get("s3_tls"):
        ca = home / "ca.crt"
        src = embedded_ca_file(settings.state_dir).read_bytes()
        if not ca.exists() or ca.read_bytes() != src:
            ca.write_bytes(src)  # a certificate, not a secret (0600 like everything here)
    airflow_cfg = {**{k: v for k, v in os.environ.items() if k.startswith("AIRFLOW__")},
                   **{k: v for k, v in executor_env.items() if k.startswith("AIRFLOW__")}}
    for k in ("AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
              "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"):
        airflow_cfg.pop(k, None)  # the API server's, not a worker's (its tasks carry their own tokens)
    admin = json.loads((settings.secrets_dir / "airflow-passwords.json").read_text())["admin"]
    env = {
        **{k: os.environ[k] for k in _SYSTEM_ENV if k in os.environ},
        **{k: os.environ[k] for k in _SHARED_IL_ENV if k in os.environ},
        # Keys a deployment injects (IL_SECRET_<NAME>) win over the KMS: every host must get the same ones.
        **{k: v for k, v in os.environ.items() if k.startswith("IL_SECRET_")},
        "HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        **airflow_cfg,
        **_s3_conns(settings, creds, ca),
        "AIRFLOW_CONN_IL_AIRFLOW_API": json.dumps({"conn_type": "http", "host": settings.airflow_url,
                                                   "login": "admin", "password": admin}),
        "IL_STATE_DIR": str(home),
        "IL_LANDING_DIR": str(home / "landing"),
        "IL_CATALOG_URL": executor_env["IL_CATALOG_URL"],
        "IL_PORT_OFFSET": str(settings.port_offset),
        HOST_NAME_ENV: name,
        "GX_ANALYTICS_ENABLED": "False",
        **shared_secret_env(settings, name),
    }
    if settings.policy_file:  # one policy per platform: the same file, copied to this host
        policy = home / "policy.yaml"
        data = settings.policy_file.read_bytes()
        if not policy.exists() or policy.read_bytes() != data:
            policy.write_bytes(data)
        env["IL_POLICY_FILE"] = str(policy)
    return env


def services(settings: Settings, creds: dict, executor: str = "local", found: Backends | None = None) -> list[Service]:
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
        conf, s3_config = _site_config(settings, site)
        argv = seaweed.mini_argv(weed, settings.state_dir / "s3" / site, s3_config, s3_port=s3, aux_port=aux,
                                 p=seaweed.pki_paths(ca.parent), tls=tls, sockets=conf)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{s3}/"
        out.append(Service(f"s3-{site}", argv, lambda url=url: http_ok(url, ca_file=ca if tls else None), {}, conf,
                           prepare=lambda site=site: _write_site_config(settings, site, creds)))
    if executor == "local":
        env = airflow_env(settings, creds)
    else:
        found = found or backends(settings)
        env = airflow_env(settings, creds, executor, found)
        out += [_pg_service(settings), _redis_service(settings)]
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
    if executor == "celery":
        for name in WORKERS:
            # --skip-serve-logs: Airflow's log server listens on 0.0.0.0. worker-1 shares the
            # api-server's log folder; worker-2's task logs stay on its own host (see README).
            argv = [airflow, "celery", "worker", "--celery-hostname", name, "--skip-serve-logs",
                    "--queues", f"default,{landing_queue()}" if name == LANDING_WORKER else "default",
                    "--without-gossip", "--without-mingle"]
            if name == LANDING_WORKER:  # the landing host: our own state folder, landing folder and Airflow home
                wenv, inherit = {**env, HOST_NAME_ENV: name}, True
                argv += ["--pid", str(_run_dir(settings) / f"{name}.pid")]
            else:
                wenv, inherit = worker_env(settings, creds, env, name), False
                argv += ["--pid", str(host_dir(settings, name) / "airflow" / "worker.pid")]
            out.append(Service(f"celery-{name}", argv,
                               lambda name=name, broker=found.broker: celery_ping(broker, name),
                               wenv, host_dir(settings, name) if not inherit else None, inherit))
    return out


def celery_ping(broker: str, name: str, timeout: float = 2.0) -> bool:
    """Does the Celery worker ``name`` answer a ping over the broker?"""
    try:
        from celery import Celery

        app = Celery(broker=broker)
        try:
            replies = app.control.ping(destination=[f"celery@{name}"], timeout=timeout)
        finally:
            app.close()
        return any(f"celery@{name}" in r for r in replies)
    except Exception:
        return False


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
    if svc.prepare is not None:
        svc.prepare()
    base = os.environ if svc.inherit_env else {}
    env = {k: v for k, v in {**base, **svc.env, MARKER: str(settings.state_dir)}.items() if k != TEST_CLOCK_ENV}
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


#: Airflow's ``airflow_local_settings`` hook: preloads what tasks import in the processes that fork them.
LOCAL_SETTINGS = PROJECT_ROOT / "deploy" / "airflow_local_settings.py"


def install_local_settings(airflow_home: Path) -> None:
    """Put ``deploy/airflow_local_settings.py`` into ``<airflow_home>/config`` (Airflow puts that folder on
    its path): the scheduler and Celery workers import Great Expectations and the stages once, and every
    forked task inherits them instead of importing them again (about 3 s per gate task)."""
    target = airflow_home / "config" / "airflow_local_settings.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = LOCAL_SETTINGS.read_text()
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


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
    pg = _pg_dir(settings)
    for root in {settings.state_dir, settings.landing_dir}:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for dirpath, dirs, files in os.walk(root):
            if Path(dirpath) == settings.state_dir and pg.name in dirs:
                dirs.remove(pg.name)  # PostgreSQL's own (0700, its files 0600): it keeps them so itself
            for name in [*dirs, *files]:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if st.st_mode & 0o077 and not os.path.islink(p):
                        os.chmod(p, st.st_mode & 0o7700)
                except FileNotFoundError:  # removed meanwhile (a running platform)
                    continue
        if not (root == settings.state_dir and pg.exists() and _pg_user()):
            os.chmod(root, 0o700)  # (with the celery mode's PostgreSQL as root: root:postgres 0710, kept)


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


def up(settings: Settings | None = None, *, executor: str | None = None,
       echo: Callable[[str], None] = print) -> dict:
    """Start whatever is not running; return the login. Idempotent: state is reused.

    ``executor``: ``local`` or ``celery`` (else ``IL_EXECUTOR``, else what the state folder
    records, else ``local``; see :func:`choose_executor`).
    """
    settings = settings or load_settings()
    t0 = time.monotonic()
    executor = choose_executor(settings, executor)
    if executor == "celery" and celery_tools_missing():
        start_backends(settings)  # raises, saying what to install, before anything starts
    for d in ("landing", "airflow", "logs", "tmp"):
        (settings.state_dir / d).mkdir(parents=True, exist_ok=True)
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    settings = start_object_stores(settings)
    creds = ensure_credentials(settings)
    _airflow_passwords(settings, creds)
    install_local_settings(settings.state_dir / "airflow")
    _landing_identity(settings)
    from imaging_lifecycle.services import Services

    found = None
    if executor == "celery":
        from dataclasses import replace

        found = start_backends(settings)
        settings = replace(settings, kmip=_kms_files(settings).endpoint)  # as load_settings now reads it
        # The catalog's owner creates its tables and records the policy; the pipeline's role is
        # then granted what it needs and no more, and every process of the platform connects as it.
        owner = Services.open(replace(settings, catalog_url=found.catalog_owner))
        owner.guard("platform_start", actor="system:platform")
        owner.catalog.db.grant_pipeline_role(PG_PIPELINE_ROLE)
        owner.catalog.db.dispose()
        settings = replace(settings, catalog_url=found.catalog_pipeline)
    else:
        # Opening the catalog creates its tables on first start; the platform records the policy it runs
        # under now (a later process with another policy is refused, 'imaging-lifecycle policy' says why).
        Services.open(settings).guard("platform_start", actor="system:platform")
    _record_executor(settings, executor)  # the catalog now lives in this executor's backend
    svcs = [s for s in services(settings, creds, executor, found)
            if not s.name.startswith("s3-") and s.name not in ("postgres", "redis", "kms")]
    env = {**os.environ, **airflow_env(settings, creds, executor, found)}
    if not all(_recorded(settings, s.name) for s in svcs if s.name.startswith("airflow-")):
        echo("migrating the Airflow metadata database ...")
        r = subprocess.run(
            [_bin("airflow"), "db", "migrate"], env=env, cwd=settings.state_dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if r.returncode != 0:
            raise PlatformError(f"airflow db migrate failed: {r.stderr.strip()[-800:]}")
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
        "executor": executor,
        "workers": list(WORKERS) if executor == "celery" else [],
        "ignored": ignored_overrides(),
        "seconds": round(time.monotonic() - t0, 1),
    }


def _landing_identity(settings: Settings) -> None:
    """The landing folder gets its identity on the landing host's start (``landing.ensure_identity``)."""
    from imaging_lifecycle import landing

    ensure = getattr(landing, "ensure_identity", None)
    if ensure is not None:
        ensure(settings.landing_dir)


def status(settings: Settings | None = None) -> dict:
    """The executor and, per recorded service, whether its process runs (``platform status``)."""
    settings = settings or load_settings()
    names = sorted(p.stem for p in _run_dir(settings).glob("*.json"))
    return {"executor": recorded_executor(settings) or "local",
            "services": {n: _recorded(settings, n) is not None for n in names}}


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


def _stop(procs: list[psutil.Process], sig: int, timeout: float) -> None:
    for p in procs:
        try:
            # Whole session first: catches children that were just forked.
            os.killpg(p.pid, sig) if os.getpgid(p.pid) == p.pid else p.send_signal(sig)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    _kill(alive)


#: Stopped last, after everything that uses them, each with its own clean-shutdown signal:
#: PostgreSQL's fast shutdown (SIGINT; SIGTERM would wait for every client), Redis saves on SIGTERM.
_BACKENDS = {"postgres": signal.SIGINT, "redis": signal.SIGTERM}


def down(settings: Settings | None = None, *, timeout: float = 20.0) -> int:
    """Stop every process of this platform, children included; keep the data.

    The Airflow components, workers, receiver and object stores first, then Redis and PostgreSQL.
    """
    settings = settings or load_settings()
    procs = ours(settings)
    backend: dict[str, list[psutil.Process]] = {}
    for name in _BACKENDS:
        p = _recorded(settings, name)
        if p is not None:
            try:
                backend[name] = [p, *p.children(recursive=True)]
            except psutil.Error:
                backend[name] = [p]
    held = {p.pid for tree in backend.values() for p in tree}
    _stop([p for p in procs if p.pid not in held], signal.SIGTERM, timeout)
    for name, tree in backend.items():
        _stop(tree[:1], _BACKENDS[name], 30.0)
        _kill([p for p in tree if p.is_running()])
    _kill(ours(settings))  # anything forked during the shutdown itself
    for pidfile in _run_dir(settings).glob("*.json"):
        pidfile.unlink()
    return len(procs)
