"""``imaging-lifecycle platform up|down|status``: the embedded platform (what make run / make stop call).

``up --executor celery`` (or ``IL_EXECUTOR=celery``) starts the production shape: PostgreSQL,
Redis, CeleryExecutor and two workers (see ``embedded``). The state folder remembers the choice.
"""

from __future__ import annotations

import json
import sys

HELP = "start, stop or show the embedded platform (object stores, Airflow; --executor celery: the production shape)"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--executor", choices=["local", "celery"], default=None,
                        help="up: LocalExecutor on SQLite (default) or CeleryExecutor with PostgreSQL, Redis and "
                             "two workers (also IL_EXECUTOR); a state folder keeps the one it started with")


def run(args) -> int:
    from imaging_lifecycle import embedded

    if args.action == "down":
        n = embedded.down()
        print(f"stopped {n} process(es); data kept under the state folder")
        return 0
    if args.action == "status":
        st = embedded.status()
        print(json.dumps(st, indent=2))
        return 0 if st["services"] and all(st["services"].values()) else 3
    from imaging_lifecycle.services import PolicyMismatch

    try:
        login = embedded.up(executor=args.executor)
    except PolicyMismatch as exc:
        print(f"platform not started: {exc}", file=sys.stderr)
        return 4
    except embedded.PlatformError as exc:
        print(f"platform not started: {exc}", file=sys.stderr)
        return 5
    for name in login["ignored"]:
        print(f"note: {name} is set by the platform; your value is not used", file=sys.stderr)
    workers = f"  executor:    celery, workers {', '.join(login['workers'])}\n" if login["workers"] else ""
    print(
        f"\nimaging-lifecycle is up (ready in {login['seconds']} s)\n"
        f"  Airflow UI:  {login['url']}\n"
        f"  login:       {login['user']}, password in {login['password_file']}\n"
        f"  people:      {', '.join(login['users'])} (each with a password in that file)\n"
        f"{workers}"
        "  (generated on first start, mode 0600; never printed)\n"
    )
    return 0
