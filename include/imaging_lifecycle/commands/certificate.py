"""``imaging-lifecycle certificate CATALOG_ID [--json]``: export the object's deletion certificates."""

from __future__ import annotations

import json
import sys

HELP = "show the NIST SP 800-88 style deletion certificate(s) of an object"


def add_arguments(parser) -> None:
    parser.add_argument("catalog_id")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from imaging_lifecycle.catalog import CatalogError
    from imaging_lifecycle.deletion import certificates
    from imaging_lifecycle.services import Services

    try:
        certs = certificates(Services.open(), args.catalog_id)
    except (CatalogError, ValueError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"object": args.catalog_id, "certificates": certs}, sort_keys=True))
    elif not certs:
        print(f"{args.catalog_id}: no deletion certificate")
    else:
        for c in certs:
            v = c["verification"]
            print(f"{c['certificate_id']} {c['scope']:40} {c['issued_at']} {c['method']} "
                  f"zones={','.join(c['zones'])} verification={v['result']} actor={c['actor']}")
    return 0 if certs else 1
