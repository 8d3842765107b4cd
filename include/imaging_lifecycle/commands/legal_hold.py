"""``imaging-lifecycle legal-hold set|release CATALOG_ID``: a hold overrides every deletion; both are audited."""

from __future__ import annotations

import getpass
import json
import sys

HELP = "place or release a legal hold on an object (audited); a held object is never deleted"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["set", "release"])
    parser.add_argument("catalog_id")
    parser.add_argument("--actor", default=None, help="who decides (default: the OS user)")


def run(args) -> int:
    from imaging_lifecycle.catalog import CatalogError
    from imaging_lifecycle.retention import set_legal_hold
    from imaging_lifecycle.services import PolicyMismatch, Services

    try:
        out = set_legal_hold(Services.open(), args.catalog_id, args.action == "set",
                             actor=args.actor or getpass.getuser())
    except (CatalogError, ValueError, PolicyMismatch) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0
