"""``imaging-lifecycle rotate-keys``: rotate KEKs, re-wrap data keys, destroy the old versions.

Resumable: run it again after a crash and it finishes the rotation it
started instead of starting another. Prints the counts as JSON; exit 1 if
some data key could not be re-wrapped.
"""

from __future__ import annotations

import json
import sys

HELP = "rotate the KEK of every scope in use (or --scope), re-wrap data keys, destroy old versions"


def add_arguments(parser) -> None:
    parser.add_argument("--scope", action="append", dest="scopes", help="only this key scope (repeatable)")
    parser.add_argument("--batch", type=int, default=1000, help="data keys re-wrapped per transaction")
    parser.add_argument("--run-id", help="an id for this rotation; a rerun with the same id never rotates twice")
    parser.add_argument("--keep-old", action="store_true", help="do not destroy old KEK versions in this run")


def run(args) -> int:
    from imaging_lifecycle.commands._identity import system
    from imaging_lifecycle.rotation import RotationIncomplete, rotate_step
    from imaging_lifecycle.services import Services

    if args.batch < 1:
        print("rotate-keys: --batch must be at least 1", file=sys.stderr)
        return 2
    try:
        result = rotate_step(Services.open(), actor=system("rotate-keys"), scopes=args.scopes, batch=args.batch,
                             run_id=args.run_id, destroy_old=not args.keep_old)
    except RotationIncomplete as exc:
        print(json.dumps(exc.result))
        print(f"rotate-keys: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
