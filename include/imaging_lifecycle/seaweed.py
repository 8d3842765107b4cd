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
  components), as a second lock behind the TLS one. A multi-node site's
  components must share them: there each key is derived from one site secret
  (``jwt_secret``, from the environment), so every component writes the same.
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

Two layouts run from this one configuration: ``weed mini`` (:func:`mini_argv`; the embedded
platform, one process per site) and a multi-node site (the compose primary), one process per
role: :func:`master_argv`, :func:`volume_argv` (two or more), :func:`filer_argv` and
:func:`s3_argv`, each started in a folder holding the same ``security.toml``
(:func:`write_security`) and, for the S3 gateway, the same identities (:func:`write_site_config`).
No secret is ever an argument: they are in those 0600 files.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle import crypto
from imaging_lifecycle.secretfiles import write_private_file

__all__ = ["PIPELINE_ACTIONS", "Pki", "pki", "security_toml", "identities", "write_security", "write_site_config",
           "mini_argv", "Node", "master_argv", "volume_argv", "filer_argv", "s3_argv", "ROLES"]

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


def pki_paths(directory: Path) -> Pki:
    """Where :func:`pki` keeps the CA and the component certificate (nothing is made or read here)."""
    return Pki(directory / "ca.crt", directory / "weed.crt", directory / "weed.key")


def pki(directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825) -> Pki:
    """The CA and component certificate under ``directory`` (0700, files 0600), made on first use.

    The CA key is kept only to issue the one certificate and is then deleted, so nothing here can
    mint another certificate later; a certificate near its end is therefore replaced together with
    a new CA, at a start (everything that verifies reads the CA file again when it starts).
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    out = pki_paths(directory)
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


def jwt_keys(jwt_secret: str | None = None) -> dict[str, str]:
    """One signing key per JWT section: fresh ones, or (``jwt_secret``) derived, the same in every component.

    Each derived key is HMAC-SHA256(secret, section name), so one site secret yields four independent
    keys and knowing one key tells nothing about the others or the secret.
    """
    if jwt_secret is None:
        return {section: secrets.token_urlsafe(32) for section in JWT_SECTIONS}
    if len(jwt_secret) < 16 or jwt_secret == "CHANGE_ME":
        raise ValueError("the site's JWT secret is missing or too short (16 characters at least)")
    return {section: base64.urlsafe_b64encode(crypto.hmac_sha256(
        jwt_secret.encode(), f"imaging-lifecycle seaweedfs {section}".encode())).decode().rstrip("=")
        for section in JWT_SECTIONS}


def security_toml(p: Pki, *, admin_password: str | None = None, jwt_secret: str | None = None) -> str:
    """The ``security.toml`` text: mutual TLS everywhere, JWT keys, admin login, no directory metadata.

    Without ``jwt_secret`` the JWT keys are new on every call (one ``weed mini`` process signs and
    checks them itself); with it they are derived from it, so every component of a site agrees.
    """
    ca, cert, key = (_toml_str(str(x)) for x in (p.ca, p.cert, p.key))
    lines = ["# Generated by imaging-lifecycle (seaweed.py) on every start; do not edit.", ""]
    for section, value in jwt_keys(jwt_secret).items():
        lines += [f"[{section}]", f"key = {_toml_str(value)}", "expires_after_seconds = 10", ""]
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


def write_security(conf_dir: Path, p: Pki, *, jwt_secret: str | None = None) -> Path:
    """Write ``security.toml`` (0600) into ``conf_dir`` (0700); returns its path.

    ``weed`` reads ``./security.toml``, so every component runs with ``conf_dir`` as its working directory.
    """
    conf_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf_dir.chmod(0o700)
    path = conf_dir / "security.toml"
    _replace_private(path, security_toml(p, jwt_secret=jwt_secret).encode())
    return path


def write_site_config(conf_dir: Path, p: Pki, *, pipeline: dict, admin: dict, bucket_prefix: str,
                      jwt_secret: str | None = None) -> Path:
    """Write one site's ``security.toml`` and ``s3.json`` (0600) into ``conf_dir``; returns the s3.json path.

    ``weed`` reads ``./security.toml``, so the site runs with ``conf_dir`` as its working directory.
    """
    write_security(conf_dir, p, jwt_secret=jwt_secret)
    s3 = conf_dir / "s3.json"
    _replace_private(s3, json.dumps(identities(pipeline, admin, bucket_prefix)).encode())
    return s3


#: Longest path a unix socket may have (sun_path).
_SUN_PATH_MAX = 107

#: The S3 gateway's listeners that stay off: the embedded IAM API (identities come from our file
#: only, never from an API call), the Iceberg and Lance catalogs.
_S3_OFF = ("iam=false", "port.iceberg=0", "port.lance=0")


def _s3_options(s3_config: Path, p: Pki, tls: bool) -> list[str]:
    """The S3 gateway's own options, without dash or prefix: ``weed s3`` takes ``-x``, ``weed mini`` ``-s3.x``."""
    out = [*_S3_OFF, f"config={s3_config}"]
    if tls:
        out += [f"cert.file={p.cert}", f"key.file={p.key}"]
    return out


def _socket(sockets: Path | None, name: str) -> Path | None:
    """A local socket in our own 0700 folder, if its path fits (else weed's default under /tmp, 0700 by umask)."""
    if sockets is None or len(str(sockets / name)) > _SUN_PATH_MAX:
        return None
    return sockets / name


#: Volume slots of a ``weed mini`` site (see :func:`mini_argv`).
MINI_MAX_VOLUMES = 1000


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
        "-webdav=false", "-master.telemetry=false", *(f"-s3.{o}" for o in _s3_options(s3_config, p, tls)),
        # Volumes are sparse files; left at 0, their number is capped at free disk / volume size when the
        # server starts, and every bucket takes its own: with less free disk (a big benchmark's data left
        # beside it) a test session's buckets ran out and PUTs failed with 500 ("no free volumes left").
        f"-volume.max={MINI_MAX_VOLUMES}",
    ]
    # The filer's and S3's local sockets in our own 0700 folder instead of /tmp under a guessable
    # name (another account could squat that path and keep the filer from starting). The gRPC
    # sockets' paths are fixed inside weed: they stay in /tmp, 0700 under our umask.
    filer_sock, s3_sock = _socket(sockets, "filer.sock"), _socket(sockets, "s3.sock")
    if filer_sock is not None and s3_sock is not None:
        argv += [f"-filer.localSocket={filer_sock}", f"-s3.localFilerSocket={filer_sock}",
                 f"-s3.localSocket={s3_sock}"]
    return argv


# -- a multi-node site: one process per role ---------------------------------------------------

#: The roles of a multi-node site, in the order they start (each needs the one before it).
ROLES = ("master", "volume", "filer", "s3")


@dataclass(frozen=True)
class Node:
    """Where one component is reached: the name the others use, its HTTP port and its gRPC port.

    ``grpc_port`` None is SeaweedFS's convention (HTTP port + 10000); any other value is passed in
    SeaweedFS's ``host:port.grpcPort`` address form, so the two need not be 10000 apart.
    """

    host: str
    port: int
    grpc_port: int | None = None

    @property
    def grpc(self) -> int:
        return self.port + 10000 if self.grpc_port is None else self.grpc_port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if self.grpc_port is None else f"{self.host}:{self.port}.{self.grpc_port}"

    @classmethod
    def parse(cls, text: str) -> Node:
        """``host:port`` or ``host:port.grpcPort`` (what :attr:`address` gives)."""
        host, _, ports = text.rpartition(":")
        http, _, grpc = ports.partition(".")
        if not host or not http.isdigit() or (grpc and not grpc.isdigit()):
            raise ValueError(f"not host:port[.grpcPort]: {text!r}")
        return cls(host, int(http), int(grpc) if grpc else None)


def _listen(node: Node, bind: str | None) -> list[str]:
    """A component's own address (what it registers as) and where it listens, HTTP and gRPC."""
    return [f"-ip={node.host}", f"-ip.bind={bind or node.host}", f"-port={node.port}", f"-port.grpc={node.grpc}"]


def _addresses(nodes: tuple[Node, ...] | list[Node]) -> str:
    if not nodes:
        raise ValueError("at least one address is needed")
    return ",".join(n.address for n in nodes)


def master_argv(weed: str, data: Path, node: Node, *, bind: str | None = None, peers: tuple[Node, ...] = (),
                default_replication: str = "000", volume_size_limit_mb: int = 1024) -> list[str]:
    """``weed master``: the volume-to-location map and file ids. ``peers`` (this one included) for a Raft
    quorum of masters; none is a single master. ``default_replication`` ``001``: every write on two
    volume servers of the rack (SeaweedFS's ``xyz``: other data centres, racks, servers)."""
    return [weed, "master", f"-mdir={data}", *_listen(node, bind),
            f"-peers={_addresses(peers) if peers else 'none'}", f"-defaultReplication={default_replication}",
            f"-volumeSizeLimitMB={volume_size_limit_mb}", "-telemetry=false"]


def volume_argv(weed: str, data: Path, node: Node, masters: tuple[Node, ...] | list[Node], *,
                bind: str | None = None, max_volumes: int = 0, data_center: str | None = None,
                rack: str | None = None) -> list[str]:
    """``weed volume``: one volume server (a site runs two or more). ``max_volumes`` 0: as many as the
    disk holds at the master's volume size; the needle index in LevelDB, not memory."""
    argv = [weed, "volume", f"-dir={data}", *_listen(node, bind), f"-master={_addresses(masters)}",
            f"-max={max_volumes}", "-index=leveldb"]
    if data_center:
        argv.append(f"-dataCenter={data_center}")
    if rack:
        argv.append(f"-rack={rack}")
    return argv


def filer_argv(weed: str, data: Path, node: Node, masters: tuple[Node, ...] | list[Node], *,
               bind: str | None = None, sockets: Path | None = None) -> list[str]:
    """``weed filer``: the namespace (buckets, keys, versions, lock settings), its metadata in ``data``
    (LevelDB), with the S3, WebDAV, SFTP and IAM servers it could embed off (S3 runs as its own role)."""
    argv = [weed, "filer", f"-defaultStoreDir={data}", *_listen(node, bind), f"-master={_addresses(masters)}",
            "-s3=false", "-webdav=false", "-sftp=false", "-iam=false", "-exposeDirectoryData=false"]
    if (sock := _socket(sockets, "filer.sock")) is not None:
        argv.append(f"-localSocket={sock}")
    return argv


def s3_argv(weed: str, s3_config: Path, node: Node, filers: tuple[Node, ...] | list[Node], *, p: Pki,
            tls: bool, bind: str | None = None, sockets: Path | None = None) -> list[str]:
    """``weed s3``: the S3 gateway in front of the filer(s), with the site's identities file and the same
    listeners off as in ``weed mini``; ``tls`` serves S3 over HTTPS with the CA's certificate."""
    argv = [weed, "s3", f"-filer={_addresses(filers)}", *_listen(node, bind),
            *(f"-{o}" for o in _s3_options(s3_config, p, tls))]
    if (sock := _socket(sockets, "s3.sock")) is not None:
        argv.append(f"-localSocket={sock}")
    return argv
