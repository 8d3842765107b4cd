"""``imaging-lifecycle kms serve``: a KMIP key server for a deployment without a hospital KMS (compose's ``kms``).

It runs PyKMIP's server (mutual TLS, client certificates from its own private CA), configured by
``kms.prepare_kmip_server``, in the foreground. The key store's master-key generations, the HMAC
keys behind catalog digests and pseudonyms, and the audit anchors' signing key live there; every
host reaches it with the same client certificate, which ``--client-out`` receives (with the CA
certificate) for the pipeline's containers to mount read-only. A hospital with its own KMS or HSM
points ``IL_KMIP_*`` there instead and runs no such service.
"""

from __future__ import annotations

HELP = "run a KMIP key server (PyKMIP, mutual TLS) for the key store's master key and the shared keys"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    s = sub.add_parser("serve", help="configure and run the key server in the foreground")
    s.add_argument("--folder", required=True, help="the server's private folder (CA, certificates, database)")
    s.add_argument("--client-out", required=True,
                   help="folder that receives the client certificate, its key and the CA certificate")
    s.add_argument("--host", default="127.0.0.1", help="the name clients reach it by (in its certificate)")
    s.add_argument("--port", type=int, default=5696, help="the KMIP port (default 5696)")


def run(args) -> int:
    import os
    import shutil
    from pathlib import Path

    from imaging_lifecycle import kms

    files = kms.prepare_kmip_server(Path(args.folder), args.port, host=args.host)
    out = Path(args.client_out)
    out.mkdir(parents=True, exist_ok=True)
    env = files.client_env()
    for var in ("IL_KMIP_CERT", "IL_KMIP_KEY", "IL_KMIP_CA"):
        src = Path(env[var])
        dst = out / src.name
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, dst)
    print(f"KMIP server on {args.host}:{args.port}; clients: {out}/client.crt, client.key, ca.crt", flush=True)
    os.execv(files.argv[0], files.argv)
    return 0  # not reached
