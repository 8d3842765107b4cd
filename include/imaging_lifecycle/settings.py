"""Where everything is: one place that turns the environment into settings.

Connections are Airflow connections given as environment variables
(``AIRFLOW_CONN_<ID>`` in Airflow's JSON form), so the DAG tasks, the
console command and docker-compose all read the same source. The console
command parses them itself and never needs Airflow to be running.

With nothing set, the embedded defaults apply: everything lives under the
project-local state folder (``.state/``) and the object-store credentials are
the ones ``imaging-lifecycle platform up`` generated into a 0600 file there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Storage zones and what each holds. Bucket names are ``<prefix><zone>``.
ZONES: dict[str, str] = {
    "archive": "primary copy of identified originals (ciphertext)",
    "research": "de-identified derivatives (ciphertext)",
    "cache": "temporary working copies handed out for viewing (72-hour rule)",
    "quarantine": "bad input, kept with its reason code (ciphertext)",
    "export": "packages for third parties under a data-sharing agreement (ciphertext, per-export key)",
    "audit-anchor": "write-once heads of the audit hash chain (object lock)",
    "backup": "second-site replica of archive ciphertext (object lock)",
    "audit": "compliance reports (ciphertext, one data key each)",
    "keystore-dr": "the key store's disaster-recovery export, sealed under the current master-key generation",
    "staging": "originals claimed from a landing folder, waiting for their ingest chunk on any worker (ciphertext)",
}
#: Zones whose bucket lives on the backup endpoint (the second site).
BACKUP_SITE_ZONES = frozenset({"backup", "audit-anchor", "keystore-dr"})  # apart from the primary
#: Zones created with object lock enabled (write-once retention).
LOCKED_ZONES = frozenset({"backup", "audit-anchor"})

#: Every TCP port the embedded platform listens on (all bound to 127.0.0.1).
#: ``IL_PORT_OFFSET`` shifts them all, so a test platform can run beside a
#: developer's without a clash.
DEFAULT_PORTS: dict[str, int] = {
    "airflow": 8080,
    "s3_primary": 8333,
    "s3_backup": 8334,
    "dicom": 11112,
    "dicom_tls": 2762,  # DICOM TLS (PS3.15 Annex B), its own port
    # The celery mode's own services (``platform up --executor celery``); not 5432/6379/5696, so a
    # machine's own servers never clash, and their last two digits match no other platform port.
    "postgres": 15432,
    "redis": 16379,
    "kmip": 15696,
}

#: Connect arguments of the embedded platform's SQLite Airflow database (Airflow imports this dict by
#: name: ``[database] sql_alchemy_connect_args``). SQLite's default 5 s busy timeout is shorter than the
#: scheduler's longest write under load; a person's approval then failed with HTTP 500 ("database is
#: locked") instead of waiting its turn.
AIRFLOW_SQLITE_CONNECT_ARGS = {"timeout": 30.0}

#: The test-only clock switch; ``embedded`` strips it from every process it starts.
TEST_CLOCK_ENV = "IL_TEST_CLOCK"

CONN_PRIMARY = "il_s3_primary"
CONN_BACKUP = "il_s3_backup"


class SettingsError(RuntimeError):
    """The environment or state folder does not describe a usable platform."""


@dataclass(frozen=True)
class S3Endpoint:
    """One S3 endpoint: host:port plus credentials. ``repr`` hides the secret."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    secure: bool = False
    #: The CA certificate that signs the server's TLS certificate (None: the system's trust store).
    ca_file: str | None = None


# -- KMIP (issue #14 item 5): the key store's master key and the HMAC keys from a KMS ----------------

#: ``IL_KMIP_*``: all five or none (a partial set is refused: a worker silently falling back to its own
#: local keys would pseudonymise and seal differently from the other hosts).
KMIP_ENV = {"host": "IL_KMIP_HOST", "port": "IL_KMIP_PORT", "cert_file": "IL_KMIP_CERT",
            "key_file": "IL_KMIP_KEY", "ca_file": "IL_KMIP_CA"}
#: Optional: the prefix of every KMIP object name, so several platforms (production, a test) can share one KMS.
KMIP_NAMESPACE_ENV = "IL_KMIP_NAMESPACE"


@dataclass(frozen=True)
class KmipEndpoint:
    """A KMIP server reached over mutual TLS: our client certificate and key, and the CA that signs the server.

    Holds paths only (the key file's content never enters settings, reprs or logs).
    """

    host: str
    port: int
    cert_file: str
    key_file: str
    ca_file: str
    #: Prefix of the object names this platform makes in the KMS (``<namespace>/keystore-master/<gen>``).
    namespace: str = "imaging-lifecycle"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _kmip_from_env() -> KmipEndpoint | None:
    values = {field_: os.environ.get(var, "").strip() for field_, var in KMIP_ENV.items()}
    if not any(values.values()):
        return None
    missing = [KMIP_ENV[f] for f, v in values.items() if not v]
    if missing:
        raise SettingsError(f"KMIP is configured only in part: set {', '.join(missing)} too "
                            f"(all of {', '.join(KMIP_ENV.values())}, or none)")
    try:
        port = int(values["port"])
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise SettingsError("IL_KMIP_PORT must be a TCP port number (1-65535)")
    namespace = os.environ.get(KMIP_NAMESPACE_ENV, "").strip() or "imaging-lifecycle"
    if len(namespace) > 100 or not all(c.isalnum() or c in "-_./" for c in namespace):
        raise SettingsError(f"{KMIP_NAMESPACE_ENV} may hold letters, digits and -_./ only (at most 100)")
    return KmipEndpoint(values["host"], port, values["cert_file"], values["key_file"], values["ca_file"], namespace)


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    landing_dir: Path
    catalog_url: str
    primary: S3Endpoint | None
    backup: S3Endpoint | None
    bucket_prefix: str = "il-"
    port_offset: int = 0
    #: The policy file (``IL_POLICY_FILE``); None means the packaged default.
    policy_file: Path | None = None
    #: ``IL_TEST_CLOCK=1``: a sweep may be run at a future "now" (tests only; the platform never sets it).
    test_clock: bool = False
    #: The KMS (``IL_KMIP_*``): when set, the key store's master key and the HMAC keys come from it
    #: and the sealed key store lives in the catalog, so several hosts share them. None: local files.
    kmip: KmipEndpoint | None = None

    def port(self, name: str) -> int:
        return DEFAULT_PORTS[name] + self.port_offset

    @property
    def airflow_url(self) -> str:
        return os.environ.get("IL_AIRFLOW_URL") or f"http://127.0.0.1:{self.port('airflow')}"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    def bucket(self, zone: str) -> str:
        if zone not in ZONES:
            raise SettingsError(f"unknown storage zone {zone!r}; known: {', '.join(ZONES)}")
        return f"{self.bucket_prefix}{zone}"

    def endpoint_for(self, zone: str) -> S3Endpoint:
        ep = self.backup if zone in BACKUP_SITE_ZONES else self.primary
        if ep is None:
            raise SettingsError(
                "no object-store connection: set AIRFLOW_CONN_IL_S3_PRIMARY/_BACKUP "
                "or run 'imaging-lifecycle platform up' to create the embedded one"
            )
        return ep


def _conn_from_env(conn_id: str) -> S3Endpoint | None:
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not raw:
        return None
    try:
        conn = json.loads(raw)
        extra = conn.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        url = extra["endpoint_url"]
    except (ValueError, KeyError, TypeError) as exc:
        # Never echo the value: it holds the secret key.
        raise SettingsError(
            f"AIRFLOW_CONN_{conn_id.upper()} must be Airflow connection JSON with "
            f"login, password and extra.endpoint_url ({type(exc).__name__})"
        ) from None
    secure = url.startswith("https://")
    verify = extra.get("verify")  # the aws connection's CA bundle (a path), as boto reads it
    return S3Endpoint(url.split("://", 1)[-1].rstrip("/"), conn["login"], conn["password"], secure,
                      verify if isinstance(verify, str) else None)


def embedded_credentials_file(state_dir: Path) -> Path:
    return state_dir / "secrets" / "s3-credentials.json"


def embedded_admin_credentials_file(state_dir: Path) -> Path:
    """The object stores' admin identity (creates buckets); read only by ``init`` and the platform's start."""
    return state_dir / "secrets" / "s3-admin.json"


def embedded_ca_file(state_dir: Path) -> Path:
    """The private CA of the embedded object stores (see ``seaweed.py``)."""
    return state_dir / "secrets" / "weed-tls" / "ca.crt"


def _endpoint_from_file(path: Path, state_dir: Path, which: str, port: int) -> S3Endpoint | None:
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    data = doc[which]
    tls = bool(json.loads(embedded_credentials_file(state_dir).read_text()).get("s3_tls")) \
        if embedded_credentials_file(state_dir).exists() else False
    return S3Endpoint(f"127.0.0.1:{port}", data["access_key"], data["secret_key"], tls,
                      str(embedded_ca_file(state_dir)) if tls else None)


def _conn_from_state(state_dir: Path, which: str, port: int) -> S3Endpoint | None:
    return _endpoint_from_file(embedded_credentials_file(state_dir), state_dir, which, port)


def admin_settings(settings: Settings) -> Settings:
    """``settings`` with the object stores' *admin* identity: for creating buckets, nothing else.

    From ``AIRFLOW_CONN_IL_S3_ADMIN_PRIMARY`` / ``_BACKUP`` (a deployment's init job), else the
    embedded platform's ``secrets/s3-admin.json``. No pipeline process calls this.
    """
    from dataclasses import replace

    found = {}
    for site, port_name in (("primary", "s3_primary"), ("backup", "s3_backup")):
        ep = _conn_from_env(f"il_s3_admin_{site}") or _endpoint_from_file(
            embedded_admin_credentials_file(settings.state_dir), settings.state_dir, site, settings.port(port_name))
        if ep is None:
            raise SettingsError(f"no admin identity for the {site} object store: set AIRFLOW_CONN_IL_S3_ADMIN_"
                                f"{site.upper()} or start the embedded platform")
        found[site] = ep
    return replace(settings, primary=found["primary"], backup=found["backup"])


def load_settings() -> Settings:
    state_dir = Path(os.environ.get("IL_STATE_DIR", PROJECT_ROOT / ".state")).resolve()
    landing = Path(os.environ.get("IL_LANDING_DIR", state_dir / "landing")).resolve()
    catalog_url = os.environ.get("IL_CATALOG_URL") or _state_catalog_url(state_dir)
    offset = int(os.environ.get("IL_PORT_OFFSET", "0"))
    primary = _conn_from_env(CONN_PRIMARY) or _conn_from_state(
        state_dir, "primary", DEFAULT_PORTS["s3_primary"] + offset
    )
    backup = _conn_from_env(CONN_BACKUP) or _conn_from_state(state_dir, "backup", DEFAULT_PORTS["s3_backup"] + offset)
    return Settings(
        state_dir=state_dir,
        landing_dir=landing,
        catalog_url=catalog_url,
        primary=primary,
        backup=backup,
        bucket_prefix=os.environ.get("IL_BUCKET_PREFIX", "il-"),
        port_offset=offset,
        policy_file=Path(os.environ["IL_POLICY_FILE"]).resolve() if os.environ.get("IL_POLICY_FILE") else None,
        test_clock=os.environ.get(TEST_CLOCK_ENV) == "1",
        kmip=_kmip_from_env() or _kmip_from_state(state_dir),
    )


def embedded_catalog_url_file(state_dir: Path) -> Path:
    """The celery mode's catalog URL (the pipeline role on the platform's PostgreSQL), 0600."""
    return state_dir / "secrets" / "catalog.url"


def embedded_kmip_file(state_dir: Path) -> Path:
    """The celery mode's KMIP client settings (the ``IL_KMIP_*`` values as JSON), 0600."""
    return state_dir / "secrets" / "kmip-client.json"


def _state_catalog_url(state_dir: Path) -> str:
    """The embedded platform's catalog: its PostgreSQL in the celery mode, else the SQLite file."""
    path = embedded_catalog_url_file(state_dir)
    if path.exists():
        return path.read_text().strip()
    return f"sqlite:///{state_dir / 'catalog.sqlite'}"


def _kmip_from_state(state_dir: Path) -> KmipEndpoint | None:
    path = embedded_kmip_file(state_dir)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return KmipEndpoint(doc["IL_KMIP_HOST"], int(doc["IL_KMIP_PORT"]), doc["IL_KMIP_CERT"], doc["IL_KMIP_KEY"],
                        doc["IL_KMIP_CA"], doc.get("IL_KMIP_NAMESPACE") or "imaging-lifecycle")
