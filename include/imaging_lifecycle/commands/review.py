"""``imaging-lifecycle review list [--json]``: what waits for a reviewer, without patient identifiers."""

from __future__ import annotations

import json

HELP = "list the review queue: objects held back by a gate or the de-identification engine"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["list"])
    parser.add_argument("--json", action="store_true", help="one JSON array of {catalog_id, state, flag, ...}")
    parser.add_argument("--limit", type=int, default=1000)


def run(args) -> int:
    from imaging_lifecycle.review import queue
    from imaging_lifecycle.services import Services

    items = queue(Services.open(), limit=max(1, args.limit))
    if args.json:
        print(json.dumps(items))
    else:
        for i in items:
            print(f"{i['catalog_id']} {i['state']:<13} {i['flag']:<20} tier={i['tier']} {i['sop_class_uid'] or '-'}")
    return 0
