"""SeaweedFS locked down: the configuration our object stores run with (embedded, and compose).

``weed mini`` opens a master, a volume server, a filer, an admin server and the
S3 gateway, each HTTP port with a gRPC twin (port + 10000). Left as shipped,
the filer's HTTP port lists, reads, writes and deletes every object for anyone
who can reach it, whatever the S3 identities say. What this module generates
closes that:

* **Mutual TLS on every internal port.** A private CA is made on first start
  (``secrets/weed-tls/``, 0600); the master, volume and filer HTTP ports and
  every gRPC port require a client certificate it signed. A local account
  without our files gets a failed handshake, nothing else.
* **JWT signing keys** for volume writes and reads and for filer writes and
  reads, new on every start (they only sign 10-second tokens between the
  components), as a second lock behind the TLS one.
* **The admin server:** UI off, login password generated; the embedded IAM
  API, WebDAV, Iceberg and Lance ports off.
* **Two S3 identities per site.** The pipeline's may read, write, list, tag,
  set retention and legal holds, only on buckets under its prefix (writes and
  tags on objects only: no lifecycle rule, bucket policy or versioning change);
  it may not bypass governance retention, change a bucket's lock configuration,
  create or delete buckets, or administer anything. A separate admin identity
  creates the buckets (``imaging-lifecycle init``, or the platform's first
  start); its secret lives in its own 0600 file that no pipeline process reads
  (``settings.admin_settings``).
* **S3 over TLS** when asked (``IL_S3_TLS=1`` at ``platform up``; the compose
  default), with a certificate from the same CA; clients verify it.

SeaweedFS's local unix sockets (``/tmp/seaweedfs-*.sock``, hard-coded) are
created under our umask 077, so other accounts cannot connect to them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle import crypto
from imaging_lifecycle.secretfiles import write_private_file

__all__ = ["PIPELINE_ACTIONS", "Pki", "pki", "security_toml", "identities", "write_site_config", "mini_argv"]

#: What the pipeline's identity may do, on its own buckets only. Not among them: Admin,
#: BypassGovernanceRetention, PutBucketObjectLockConfiguration, DeleteBucket, ReadAcp/WriteAcp.
PIPELINE_ACTIONS = (
    "Read", "Write", "List", "Tagging",
    "PutObjectRetention", "GetObjectRetention", "PutObjectLegalHold", "GetObjectLegalHold",
    "GetBucketObjectLockConfiguration",
)
#: Actions granted on objects only (``<bucket>/<key>``), never on the bucket itself: SeaweedFS files
#: bucket-level changes (lifecycle rules, whose expiry would ignore object lock; bucket policy;
#: versioning) under ``Write``, so a bucket-wide ``Write`` would let the pipeline age out locked copies.
OBJECT_ONLY_ACTIONS = frozenset({"Write", "Tagging"})
#: The JWT keys security.toml carries (master <-> volume, s3 <-> filer; writes and reads).
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
#: Components whose gRPC server side gets the mutual-TLS certificate.
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")
#: Components whose HTTP side requires a client certificate.
HTTPS_COMPONENTS = ("master", "volume", "filer")


@dataclass(frozen=True)
class Pki:
    """The CA certificate and the one certificate every component (and our clients) present."""

    ca: Path
    cert: Path
    key: Path


#: A certificate with fewer days left than this is replaced (with a new CA) at the next start.
RENEW_DAYS = 30


def pki(directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825) -> Pki:
    """The CA and component certificate under ``directory`` (0700, files 0600), made on first use.

    The CA key is kept only to issue the one certificate and is then deleted, so nothing here can
    mint another certificate later; a certificate near its end is therefore replaced together with
    a new CA, at a start (everything that verifies reads the CA file again when it starts).
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    out = Pki(directory / "ca.crt", directory / "weed.crt", directory / "weed.key")
    complete = out.ca.exists() and out.cert.exists() and out.key.exists()
    if not complete or crypto.certificate_days_left(out.cert.read_bytes()) < RENEW_DAYS:
        ca_cert, ca_key = crypto.certificate_authority("imaging-lifecycle object-store CA", days=days + 1)
        cert, key = crypto.issue_certificate(ca_cert, ca_key, "imaging-lifecycle-weed", hosts=hosts, days=days)
        for p in (out.ca, out.cert, out.key):
            p.unlink(missing_ok=True)
        write_private_file(out.key, key)
        write_private_file(out.cert, cert)
        write_private_file(out.ca, ca_cert)  # written last: its presence means the set is complete
    return out


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def security_toml(p: Pki, *, admin_password: str | None = None) -> str:
    """The ``security.toml`` text: mutual TLS everywhere, fresh JWT keys, admin login, no directory metadata."""
    ca, cert, key = (_toml_str(str(x)) for x in (p.ca, p.cert, p.key))
    lines = ["# Generated by imaging-lifecycle (seaweed.py) on every start; do not edit.", ""]
    for section in JWT_SECTIONS:
        lines += [f"[{section}]", f"key = {_toml_str(secrets.token_urlsafe(32))}", "expires_after_seconds = 10", ""]
    lines += ["[access]", "ui = false", "", "[filer.expose_directory_metadata]", "enabled = false", ""]
    lines += ["[grpc]", f"ca = {ca}", ""]
    for comp in GRPC_COMPONENTS:
        lines += [f"[grpc.{comp}]", f"cert = {cert}", f"key = {key}", ""]
    lines += ["[grpc.client]", f"cert = {cert}", f"key = {key}", ""]
    lines += ["[https.client]", "enabled = true", f"cert = {cert}", f"key = {key}", f"ca = {ca}", ""]
    for comp in HTTPS_COMPONENTS:
        lines += [f"[https.{comp}]", f"cert = {cert}", f"key = {key}", f"ca = {ca}", ""]
    lines += ["[admin]", 'user = "admin"', f"password = {_toml_str(admin_password or secrets.token_urlsafe(24))}", ""]
    return "\n".join(lines)


def identities(pipeline: dict, admin: dict, bucket_prefix: str) -> dict:
    """The ``-s3.config`` document: the pipeline's least-privilege identity and the admin identity."""
    scope = f"{bucket_prefix}*"
    return {
        "identities": [
            {
                "name": "imaging-lifecycle",
                "credentials": [{"accessKey": pipeline["access_key"], "secretKey": pipeline["secret_key"]}],
                "actions": [f"{a}:{scope}/*" if a in OBJECT_ONLY_ACTIONS else f"{a}:{scope}"
                            for a in PIPELINE_ACTIONS],
            },
            {
                "name": "imaging-lifecycle-admin",
                "credentials": [{"accessKey": admin["access_key"], "secretKey": admin["secret_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
        ]
    }


def _replace_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_private_file(tmp, data)
    tmp.replace(path)


def write_site_config(conf_dir: Path, p: Pki, *, pipeline: dict, admin: dict, bucket_prefix: str) -> Path:
    """Write one site's ``security.toml`` and ``s3.json`` (0600) into ``conf_dir``; returns the s3.json path.

    ``weed`` reads ``./security.toml``, so the site runs with ``conf_dir`` as its working directory.
    """
    conf_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf_dir.chmod(0o700)
    _replace_private(conf_dir / "security.toml", security_toml(p).encode())
    s3 = conf_dir / "s3.json"
    _replace_private(s3, json.dumps(identities(pipeline, admin, bucket_prefix)).encode())
    return s3


#: Longest path a unix socket may have (sun_path).
_SUN_PATH_MAX = 107


def mini_argv(weed: str, data: Path, s3_config: Path, *, s3_port: int, aux_port: int, p: Pki,
              tls: bool, ip: str = "127.0.0.1", bind: str | None = None,
              sockets: Path | None = None) -> list[str]:
    """``weed mini`` with every optional listener off; ``tls`` serves S3 over HTTPS with the CA's certificate.

    ``ip`` is the address the components give each other; ``bind`` (default: ``ip``) where they listen.
    """
    argv = [
        weed, "mini", f"-dir={data}", f"-ip={ip}", f"-ip.bind={bind or ip}",
        f"-s3.port={s3_port}", f"-master.port={aux_port}", f"-volume.port={aux_port + 1}",
        f"-filer.port={aux_port + 2}", f"-admin.port={aux_port + 3}", "-admin.ui=false",
        "-webdav=false", "-s3.iam=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        f"-s3.config={s3_config}",
    ]
    if tls:
        argv += [f"-s3.cert.file={p.cert}", f"-s3.key.file={p.key}"]
    # The filer's and S3's local sockets in our own 0700 folder instead of /tmp under a guessable
    # name (another account could squat that path and keep the filer from starting). The gRPC
    # sockets' paths are fixed inside weed: they stay in /tmp, 0700 under our umask.
    if sockets is not None and len(str(sockets / "filer.sock")) <= _SUN_PATH_MAX:
        argv += [f"-filer.localSocket={sockets / 'filer.sock'}", f"-s3.localFilerSocket={sockets / 'filer.sock'}",
                 f"-s3.localSocket={sockets / 's3.sock'}"]
    return argv
