"""``imaging-lifecycle platform up|down``: the embedded platform (what make run / make stop call)."""

from __future__ import annotations

import sys

HELP = "start or stop the embedded platform (object stores, Airflow)"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["up", "down"])


def run(args) -> int:
    from imaging_lifecycle import embedded

    if args.action == "down":
        n = embedded.down()
        print(f"stopped {n} process(es); data kept under the state folder")
        return 0
    from imaging_lifecycle.services import PolicyMismatch

    try:
        login = embedded.up()
    except PolicyMismatch as exc:
        print(f"platform not started: {exc}", file=sys.stderr)
        return 4
    print(
        f"\nimaging-lifecycle is up (ready in {login['seconds']} s)\n"
        f"  Airflow UI:  {login['url']}\n"
        f"  login:       {login['user']}, password in {login['password_file']}\n"
        f"  people:      {', '.join(login['users'])} (each with a password in that file)\n"
        "  (generated on first start, mode 0600; never printed)\n"
    )
    return 0
