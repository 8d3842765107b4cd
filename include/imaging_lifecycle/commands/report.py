"""``imaging-lifecycle report summary|make|list|get``: the numbers the Lifecycle view shows, and compliance reports.

``summary --json`` prints the one summary (``overview.summary``) the page and the PDF are made from.
``make --start --end`` renders and stores a compliance report for any period (the monthly DAG does
the previous month). ``get ID --out FILE`` decrypts one for the logged-in person (audited).
"""

from __future__ import annotations

import json

HELP = "print the lifecycle summary (--json), or make, list and fetch compliance reports"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["summary", "make", "list", "get"])
    parser.add_argument("report", nargs="?", help="get: the report id")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--start", help="make: period start (ISO date or time, UTC)")
    parser.add_argument("--end", help="make: period end (exclusive)")
    parser.add_argument("--format", choices=["pdf", "html"], default="pdf")
    parser.add_argument("--out", help="get: where to write the file")


def _when(text: str):  # noqa: ANN202
    import datetime as dt

    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def run(args) -> int:
    import datetime as dt
    import sys
    from pathlib import Path

    from imaging_lifecycle import compliance, overview
    from imaging_lifecycle.commands._identity import NotLoggedIn, person, system
    from imaging_lifecycle.services import Services

    svc = Services.open()
    if args.action == "summary":
        s = overview.summary(svc)
        print(json.dumps(s, indent=None if args.json else 2, default=str))
        return 0
    if args.action == "list":
        print(json.dumps(overview.summary(svc, verify_audit=False)["reports"]))
        return 0
    if args.action == "make":
        try:
            start, end = (_when(args.start), _when(args.end)) if args.start and args.end else \
                compliance.month_before(dt.datetime.now(dt.timezone.utc), compliance.hospital_tz(svc))
        except ValueError:
            print("--start and --end must be ISO dates or times")
            return 2
        print(json.dumps(compliance.make(svc, period_start=start, period_end=end, actor=system("report"))))
        return 0
    if not args.report or not args.out:
        print("report get needs a report id and --out FILE")
        return 2
    try:
        data = compliance.read(svc, args.report, args.format, actor=person(svc))
    except (NotLoggedIn, FileNotFoundError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0
