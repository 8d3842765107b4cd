"""``imaging-lifecycle access show|reidentify|emergencies|review-emergency``: access requests from the terminal.

Requests are made with the ``access_request`` DAG (the Airflow UI's trigger
form, or its REST API), so the requester is whoever Airflow authenticated.
Here:

* ``show ID [--json]``: a request's state, approvers, grants and deadlines (no patient data);
* ``reidentify ID CATALOG_ID --out FILE``: the pseudonym -> identity map, for
  the logged-in requester of an approved ``reidentify`` request (a new 0600 file);
* ``export-key ID --out FILE``: the export's key file, for the requester to hand to the recipient
  out of band (a new 0600 file; with it alone the package decrypts);
* ``emergencies``: emergency accesses no data security officer has reviewed;
* ``review-emergency ID --finding APPROPRIATE|INAPPROPRIATE``: a data security officer's review.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HELP = "show an access request, use an approved re-identification or export, or review emergency accesses"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    show = sub.add_parser("show", help="a request's state, approvers, grants and deadlines")
    show.add_argument("request_id")
    show.add_argument("--json", action="store_true")
    reid = sub.add_parser("reidentify", help="write the re-identification map of an object (approved request)")
    reid.add_argument("request_id")
    reid.add_argument("catalog_id")
    reid.add_argument("--out", type=Path, required=True, help="a new 0600 file")
    key = sub.add_parser("export-key", help="write an approved export's key file (for the recipient)")
    key.add_argument("request_id")
    key.add_argument("--out", type=Path, required=True, help="a new 0600 file")
    sub.add_parser("emergencies", help="emergency accesses waiting for a data security officer's review")
    rev = sub.add_parser("review-emergency", help="record a data security officer's review of an emergency access")
    rev.add_argument("request_id")
    rev.add_argument("--finding", required=True, choices=["APPROPRIATE", "INAPPROPRIATE"])


def run(args) -> int:
    from imaging_lifecycle import access
    from imaging_lifecycle.catalog import CatalogError, NotApproved
    from imaging_lifecycle.commands._identity import NotLoggedIn, person
    from imaging_lifecycle.services import PolicyMismatch, Services

    svc = Services.open()
    try:
        if args.what == "show":
            out = access.show(svc, args.request_id)
            print(json.dumps(out, indent=None if args.json else 2))
            return 0
        if args.what == "emergencies":
            print(json.dumps(access.emergencies_to_review(svc)))
            return 0
        if args.what == "review-emergency":
            print(json.dumps(access.review_emergency(svc, args.request_id, reviewer=person(svc),
                                                     finding=args.finding)))
            return 0
        if args.what == "export-key":
            doc = access.export_key(svc, args.request_id, actor=person(svc))
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
            print(json.dumps({"request_id": args.request_id, "objects": len(doc["objects"]), "out": str(args.out)}))
            return 0
        from imaging_lifecycle.protect import reidentify

        reid = reidentify(svc, args.catalog_id, request_id=args.request_id, actor=person(svc))
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({e.kind: {"pseudonym": e.pseudonym, "original": e.original} for e in reid.entries}, fh)
        print(json.dumps({"request_id": args.request_id, "entries": len(reid), "out": str(args.out)}))
        return 0
    except (NotApproved, NotLoggedIn, PolicyMismatch, access.AccessRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    except (CatalogError, ValueError, LookupError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
