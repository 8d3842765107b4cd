"""``imaging-lifecycle verify-backups``: restore-verify today's sample of backups (or all of them).

Prints the counts as one JSON object. Exit 1 if any backup did not restore
(those objects are flagged BACKUP_MISMATCH, their ids printed) or could not
be read; 2 on bad arguments.
"""

from __future__ import annotations

import datetime as dt
import json
import sys

HELP = "restore-verify backups (today's sample, or --all); JSON counts, exit 1 on any mismatch"


def add_arguments(parser) -> None:
    parser.add_argument("--all", action="store_true", help="check every backup copy, not today's sample")
    parser.add_argument("--cycle-days", type=int, default=30, help="every backup is checked once per this many days")
    parser.add_argument("--today", type=dt.date.fromisoformat, help="the day to sample for (YYYY-MM-DD; default today)")


def run(args) -> int:
    from imaging_lifecycle.backup import BackupFailed, BackupMismatch, verify_step
    from imaging_lifecycle.commands._identity import system
    from imaging_lifecycle.services import Services

    if args.cycle_days < 1:
        print("verify-backups: --cycle-days must be at least 1", file=sys.stderr)
        return 2
    try:
        result = verify_step(Services.open(), actor=system("verify-backups"), today=args.today,
                             cycle_days=args.cycle_days, all_copies=args.all)
    except (BackupMismatch, BackupFailed) as exc:
        print(json.dumps(exc.result))
        print(f"verify-backups: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
