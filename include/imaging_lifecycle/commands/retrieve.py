"""``imaging-lifecycle retrieve``: a working copy in the cache zone (at most the tier's cache term), and reading it."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

HELP = "re-encrypt a working copy of CATALOG_ID into the cache zone for at most its tier's cache term (or read a grant)"


def add_arguments(parser) -> None:
    parser.add_argument("catalog_id", nargs="?", help="the object to retrieve")
    parser.add_argument("--hours", type=int, default=None,
                        help="lifetime of the copy in hours (capped at the tier's cache term, "
                             "which is also the default; never over 72)")
    parser.add_argument("--actor", default=None, help="who asks (default: the OS user)")
    parser.add_argument("--read", metavar="GRANT_ID", help="instead: decrypt a live grant's copy to --out")
    parser.add_argument("--out", type=Path, help="where --read writes the plaintext (a new 0600 file)")


def run(args) -> int:
    from imaging_lifecycle.catalog import UnknownObject
    from imaging_lifecycle.crypto import KeyUnavailable
    from imaging_lifecycle.retention import RetentionError, read_grant, retrieve
    from imaging_lifecycle.services import PolicyMismatch, Services

    actor = args.actor or getpass.getuser()
    try:
        if args.read:
            if args.out is None:
                print("--read needs --out PATH", file=sys.stderr)
                return 2
            digest = read_grant(Services.open(), args.read, args.out, actor=actor)
            print(json.dumps({"grant_id": args.read, "sha256": digest}))
            return 0
        if not args.catalog_id:
            print("give a CATALOG_ID (or --read GRANT_ID --out PATH)", file=sys.stderr)
            return 2
        grant = retrieve(Services.open(), args.catalog_id, actor=actor, hours=args.hours)
    except (RetentionError, UnknownObject, KeyUnavailable, ValueError, PolicyMismatch) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(grant.public()))
    return 0
