"""``imaging-lifecycle sweep``: one run of the sweeper (what the DAG runs every 15 minutes)."""

from __future__ import annotations

import datetime as dt
import json
import sys

HELP = "securely delete everything past its deadline (gate first; erase, purge, verify, certify)"


def add_arguments(parser) -> None:
    parser.add_argument("--now", default=None,
                        help="the sweep's 'now' as ISO 8601 with offset (default: the current time); a future time is "
                             "refused unless the process runs the test clock (IL_TEST_CLOCK=1, tests only)")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many candidates of each kind")


def run(args) -> int:
    from imaging_lifecycle.commands._identity import system
    from imaging_lifecycle.deletion import FutureClockRefused, sweep
    from imaging_lifecycle.gates import GateFailed
    from imaging_lifecycle.services import PolicyMismatch, Services

    now = dt.datetime.now(dt.timezone.utc)
    if args.now:
        try:
            now = dt.datetime.fromisoformat(args.now)
        except ValueError:
            print("--now must be ISO 8601, e.g. 2030-01-01T00:00:00+00:00", file=sys.stderr)
            return 2
        if now.utcoffset() is None:
            print("--now needs a UTC offset", file=sys.stderr)
            return 2
    try:
        out = sweep(Services.open(), now, limit=args.limit, actor=system("sweep"))
    except GateFailed as exc:
        print(f"gate failed, nothing deleted: {exc}", file=sys.stderr)
        return 3
    except (PolicyMismatch, FutureClockRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 4
    print(json.dumps(out))
    return 0
