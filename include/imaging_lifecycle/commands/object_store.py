"""``imaging-lifecycle object-store``: run one SeaweedFS site locked down (the compose services).

``object-store pki --out DIR --ca-out DIR`` makes the private CA and the component certificate once
(DIR for the object stores only; ``--ca-out`` receives just the CA certificate, for clients to verify
S3's TLS). ``object-store serve`` writes ``security.toml`` and the S3 identities from the environment
(``S3_ACCESS_KEY``/``S3_SECRET_KEY`` for the pipeline, ``S3_ADMIN_ACCESS_KEY``/``S3_ADMIN_SECRET_KEY``
for bucket creation) and runs ``weed mini`` with S3 over TLS. The embedded platform uses the same
module (``seaweed.py``) without this command.
"""

from __future__ import annotations

HELP = "run one locked-down SeaweedFS site (mutual TLS inside, least-privilege S3 identities, S3 over TLS)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pki", help="make the CA and the object stores' certificate (once)")
    p.add_argument("--out", required=True, help="folder for the CA, certificate and key (object stores only)")
    p.add_argument("--ca-out", required=True, help="folder that receives only the CA certificate (for clients)")
    p.add_argument("--hosts", default="s3-primary,s3-backup,localhost,127.0.0.1",
                   help="names and addresses the certificate is valid for")
    s = sub.add_parser("serve", help="write the site's configuration and run weed mini in the foreground")
    s.add_argument("--pki", required=True, help="the folder 'object-store pki --out' made")
    s.add_argument("--data", required=True, help="the site's data folder")
    s.add_argument("--conf", required=True, help="a private folder for security.toml and s3.json")
    s.add_argument("--port", type=int, default=8333, help="S3 port (internal ports follow from 9333)")
    s.add_argument("--plain-s3", action="store_true", help="serve S3 without TLS (not for production)")


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
    missing = [k for k in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY")
               if not os.environ.get(k) or os.environ[k] == "CHANGE_ME"]
    if missing:
        print(f"refusing to start: set {', '.join(missing)}")
        return 2
    p = seaweed.Pki(Path(args.pki) / "ca.crt", Path(args.pki) / "weed.crt", Path(args.pki) / "weed.key")
    s3_config = seaweed.write_site_config(
        Path(args.conf), p,
        pipeline={"access_key": os.environ["S3_ACCESS_KEY"], "secret_key": os.environ["S3_SECRET_KEY"]},
        admin={"access_key": os.environ["S3_ADMIN_ACCESS_KEY"], "secret_key": os.environ["S3_ADMIN_SECRET_KEY"]},
        bucket_prefix=os.environ.get("IL_BUCKET_PREFIX", "il-"))
    argv = seaweed.mini_argv(shutil.which("weed") or "weed", Path(args.data), s3_config, s3_port=args.port,
                             aux_port=9333, p=p, tls=not args.plain_s3, ip="127.0.0.1", bind="0.0.0.0")
    os.chdir(args.conf)  # weed reads ./security.toml
    os.execvp(argv[0], argv)
    return 1  # not reached
