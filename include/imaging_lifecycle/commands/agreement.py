"""``imaging-lifecycle agreement add``: record a data-sharing agreement that exports are made under.

Who may: a logged-in person the policy lists in ``access.agreement_admins``
(``admin`` by default); audited. (An approved ``policy_change`` request does
not do: it approves one policy fingerprint, not an agreement.) An export
request names the agreement and is refused unless the agreement is live
(between its start and its end).
"""

from __future__ import annotations

import datetime as dt
import json
import sys

HELP = "record a data-sharing agreement (recipient, scope, purpose, legal basis, term); audited"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["add"])
    parser.add_argument("--recipient", required=True)
    parser.add_argument("--scope", required=True, help="what may be shared, in words")
    parser.add_argument("--purpose", required=True, help="one of the policy's access purposes")
    parser.add_argument("--legal-basis", required=True)
    parser.add_argument("--days", type=int, required=True, help="the term, from now")


def run(args) -> int:
    from imaging_lifecycle import access
    from imaging_lifecycle.catalog import CatalogError
    from imaging_lifecycle.commands._identity import NotLoggedIn, person
    from imaging_lifecycle.services import Services

    if args.days < 1:
        print("--days must be at least 1", file=sys.stderr)
        return 2
    svc = Services.open()
    now = dt.datetime.now(dt.timezone.utc)
    try:
        out = access.add_agreement(svc, actor=person(svc), recipient=args.recipient, scope=args.scope,
                                   purpose=args.purpose, legal_basis=args.legal_basis, starts_at=now,
                                   ends_at=now + dt.timedelta(days=args.days))
    except (NotLoggedIn, access.AccessRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    except (CatalogError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0
