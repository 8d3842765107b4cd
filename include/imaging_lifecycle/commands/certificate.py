"""``imaging-lifecycle certificate``: deletion certificates, shown, exported signed, verified offline.

* ``certificate CATALOG_ID [--json]``: the object's certificates from the catalog;
* ``certificate export CERTIFICATE_ID --object CATALOG_ID --out FILE``: one certificate as a file,
  signed with the audit signing key and carrying the sequence number of the signed anchor that
  covers it (one is written if none does yet);
* ``certificate verify FILE --public-key KEY``: check a file offline with only the public key
  (``audit public-key`` prints it); exit 0 valid, 1 not.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HELP = "show, export (signed) or verify (offline) the NIST SP 800-88 style deletion certificates"


def add_arguments(parser) -> None:
    parser.add_argument("what", help="a catalog id (show its certificates), or 'export' or 'verify'")
    parser.add_argument("target", nargs="?", help="export: the certificate id; verify: the file")
    parser.add_argument("--json", action="store_true", help="show: print one JSON object")
    parser.add_argument("--object", help="export: the object the certificate belongs to")
    parser.add_argument("--out", type=Path, help="export: a new file")
    parser.add_argument("--public-key", help="verify: the base64 Ed25519 public key ('audit public-key')")


def _verify(args) -> int:
    import base64

    from imaging_lifecycle.anchor import certificate_valid

    if not args.target or not args.public_key:
        print("verify needs FILE and --public-key", file=sys.stderr)
        return 2
    try:
        doc = json.loads(Path(args.target).read_text())
        public = base64.b64decode(args.public_key, validate=True)
    except (OSError, ValueError) as exc:
        print(f"cannot read: {type(exc).__name__}", file=sys.stderr)
        return 2
    ok = certificate_valid(doc, public)
    print("certificate valid" if ok else "certificate NOT valid: changed, or not signed by this key")
    return 0 if ok else 1


def run(args) -> int:
    from imaging_lifecycle.catalog import CatalogError
    from imaging_lifecycle.deletion import certificates
    from imaging_lifecycle.services import Services

    if args.what == "verify":
        return _verify(args)
    try:
        if args.what == "export":
            from imaging_lifecycle.anchor import sign_certificate
            from imaging_lifecycle.commands._identity import system

            if not (args.target and args.object and args.out):
                print("export needs CERTIFICATE_ID, --object and --out", file=sys.stderr)
                return 2
            svc = Services.open()
            cert = next((c for c in certificates(svc, args.object) if c["certificate_id"] == args.target), None)
            if cert is None:
                print("no such certificate for that object", file=sys.stderr)
                return 2
            doc = sign_certificate(svc, cert, actor=system("certificate"))
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, sort_keys=True, indent=1)
            print(json.dumps({"certificate_id": args.target, "anchor_seq": doc["anchor_seq"], "out": str(args.out)}))
            return 0
        certs = certificates(Services.open(), args.what)
    except (CatalogError, ValueError, LookupError, RuntimeError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"object": args.what, "certificates": certs}, sort_keys=True))
    elif not certs:
        print(f"{args.what}: no deletion certificate")
    else:
        for c in certs:
            v = c["verification"]
            print(f"{c['certificate_id']} {c['scope']:40} {c['issued_at']} {c['method']} "
                  f"zones={','.join(c['zones'])} verification={v['result']} actor={c['actor']}")
    return 0 if certs else 1
