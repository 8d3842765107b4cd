"""``imaging-lifecycle legal-hold set|release CATALOG_ID``: a hold overrides every deletion; both are audited.

Placing a hold only stops deletion, so any logged-in person may; releasing
one needs an approved ``release_hold`` access request (``--request``), or the
``access_request`` DAG, which releases it when the two approvals are in.
"""

from __future__ import annotations

import json
import sys

HELP = "place or release a legal hold on an object (audited); release needs an approved request"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["set", "release"])
    parser.add_argument("catalog_id")
    parser.add_argument("--request", help="release: the approved release_hold access request")


def run(args) -> int:
    from imaging_lifecycle.catalog import CatalogError
    from imaging_lifecycle.commands._identity import NotLoggedIn, person
    from imaging_lifecycle.retention import set_legal_hold
    from imaging_lifecycle.services import PolicyMismatch, Services

    svc = Services.open()
    try:
        out = set_legal_hold(svc, args.catalog_id, args.action == "set", actor=person(svc), request_id=args.request)
    except (CatalogError, ValueError, PolicyMismatch, NotLoggedIn) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0
