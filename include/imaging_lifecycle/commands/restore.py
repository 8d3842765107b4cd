"""``imaging-lifecycle restore CATALOG_ID OUT``: decrypt one object for an operator.

Reads the archive copy, falling back to the backup on the second site, and
writes the verified plaintext to OUT (mode 0600; the file appears only once
every tag and the content hash checked out). Audited either way. Objects of
a tier whose policy wants an approval for restores are refused (exit 3)
unless an approval record exists.

Exit codes: 0 restored, 1 no copy could be restored, 2 bad arguments or
unknown object, 3 refused (approval required).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "decrypt one object (archive, else backup) into a new 0600 file; tier-gated, audited"


def add_arguments(parser) -> None:
    parser.add_argument("catalog_id", help="the object's catalog id (32 hex characters)")
    parser.add_argument("out", type=Path, help="path of the new file (must not exist)")
    parser.add_argument("--actor", help="who restores (default: the login name)")


def run(args) -> int:
    from imaging_lifecycle.backup import ApprovalRequired, restore_object
    from imaging_lifecycle.catalog import UnknownObject
    from imaging_lifecycle.commands.audit import _actor
    from imaging_lifecycle.crypto import IntegrityError
    from imaging_lifecycle.services import PolicyMismatch, Services

    actor = args.actor or _actor()
    out: Path = args.out
    if not out.parent.is_dir():
        print(f"restore: the folder of {out} does not exist", file=sys.stderr)
        return 2
    try:
        result = restore_object(Services.open(), args.catalog_id, out, actor=actor)
    except (ValueError, UnknownObject, FileExistsError) as exc:  # messages never echo the id
        print(f"restore: {exc}", file=sys.stderr)
        return 2
    except (ApprovalRequired, PolicyMismatch) as exc:
        print(f"restore refused: {exc}", file=sys.stderr)
        return 3
    except IntegrityError as exc:
        print(f"restore failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
