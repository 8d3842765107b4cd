"""``imaging-lifecycle incidents list|ack|contain|resolve``: the incident queue, worked by named people.

``list`` needs no login (it shows codes, counts and user names, never patients). ``ack``,
``contain`` and ``resolve`` act for the logged-in person (``imaging-lifecycle login``): the
step is recorded under that name, with the time since detection, in the audit trail.
``detect`` runs one detection now (what the hourly ``detect_anomalies`` DAG does).
"""

from __future__ import annotations

import json

HELP = "list incidents, or acknowledge, contain or resolve one as the logged-in person; detect runs detection now"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["list", "ack", "contain", "resolve", "detect"])
    parser.add_argument("incident", nargs="?", help="the incident id (ack, contain, resolve)")
    parser.add_argument("--open", action="store_true", help="list: only those not resolved")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--note", help="ack/contain/resolve: a short action code (e.g. ACCOUNT_SUSPENDED)")


def run(args) -> int:
    import datetime as dt
    import sys

    from imaging_lifecycle import incidents
    from imaging_lifecycle.catalog import IncidentStateError, UnknownObject
    from imaging_lifecycle.commands._identity import NotLoggedIn, person, system
    from imaging_lifecycle.overview import iso
    from imaging_lifecycle.services import Services

    svc = Services.open()
    if args.action == "list":
        rows = svc.catalog.incidents(open_only=args.open)
        if args.json:
            print(json.dumps([{**r, **{k: iso(r[k]) for k in r if k.endswith("_at")}} for r in rows]))
        else:
            for r in rows:
                print(f"{r['id']} {r['level']:<9} {r['state']:<12} {r['nature']:<22} {r['user'] or '-':<16} "
                      f"{iso(r['detected_at'])}")
        return 0
    if args.action == "detect":
        out = incidents.detect(svc, now=dt.datetime.now(dt.timezone.utc), actor=system("incidents"))
        print(json.dumps(out))
        return 0
    if not args.incident:
        print(f"incidents {args.action} needs an incident id")
        return 2
    state = {"ack": "ACKNOWLEDGED", "contain": "CONTAINED", "resolve": "RESOLVED"}[args.action]
    try:
        out = incidents.step(svc, args.incident, state, actor=person(svc), action=args.note)
    except (NotLoggedIn, incidents.NotResponsible, IncidentStateError, UnknownObject, ValueError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0
