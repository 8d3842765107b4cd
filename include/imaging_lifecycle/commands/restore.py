"""``imaging-lifecycle restore --request ID CATALOG_ID OUT``: decrypt one object for the person it was approved for.

Reads the archive copy, falling back to the backup on the second site, and
writes the verified plaintext to OUT (mode 0600; the file appears only once
every tag and the content hash checked out). Only under an APPROVED
``restore`` access request whose requester is the logged-in person
(``imaging-lifecycle login``) and which names the object. Audited either way.

Exit codes: 0 restored, 1 no copy could be restored, 2 bad arguments or
unknown object, 3 refused (no approved request, not logged in, policy mismatch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "decrypt one object (archive, else backup) into a new 0600 file, under your approved restore request"


def add_arguments(parser) -> None:
    parser.add_argument("catalog_id", help="the object's catalog id (32 hex characters)")
    parser.add_argument("out", type=Path, help="path of the new file (must not exist)")
    parser.add_argument("--request", required=True, help="the approved access request (access_request DAG)")


def run(args) -> int:
    from imaging_lifecycle.backup import restore_object
    from imaging_lifecycle.catalog import NotApproved, UnknownObject
    from imaging_lifecycle.commands._identity import NotLoggedIn, person
    from imaging_lifecycle.crypto import IntegrityError
    from imaging_lifecycle.services import PolicyMismatch, Services

    out: Path = args.out
    if not out.parent.is_dir():
        print(f"restore: the folder of {out} does not exist", file=sys.stderr)
        return 2
    svc = Services.open()
    try:
        result = restore_object(svc, args.catalog_id, out, request_id=args.request, actor=person(svc))
    except (NotApproved, PolicyMismatch, NotLoggedIn) as exc:
        print(f"restore refused: {exc}", file=sys.stderr)
        return 3
    except (ValueError, UnknownObject, FileExistsError) as exc:  # messages never echo the id
        print(f"restore: {exc}", file=sys.stderr)
        return 2
    except IntegrityError as exc:
        print(f"restore failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
