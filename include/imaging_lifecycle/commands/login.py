"""``imaging-lifecycle login USER``: prove who you are to Airflow once; the commands that act for you use it."""

from __future__ import annotations

import getpass
import json
import sys

HELP = "log in with your Airflow user and password; keeps the token (0600) for commands that act for you"


def add_arguments(parser) -> None:
    parser.add_argument("username")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def run(args) -> int:
    from imaging_lifecycle.airflow_api import AirflowApi, AirflowApiError
    from imaging_lifecycle.commands._identity import token_file
    from imaging_lifecycle.secretfiles import write_private_file
    from imaging_lifecycle.settings import load_settings

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
    try:
        api = AirflowApi.login(load_settings(), args.username, password)
        name = api.whoami()
    except AirflowApiError as exc:
        _audit(args.username, ok=False)  # bursts of failed logins are an insider-detection rule
        print(f"login refused: {exc}", file=sys.stderr)
        return 2
    _audit(name, ok=True)
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    write_private_file(path, api.token().encode())
    print(json.dumps({"user": name, "token_file": str(path)}))
    return 0


def _audit(username: str, *, ok: bool) -> None:
    """``user.login`` under the name tried (a name that is not a plain user id is recorded as unknown)."""
    from imaging_lifecycle.catalog.audit import UnsafeAuditValue, check_actor
    from imaging_lifecycle.services import Services

    try:
        actor = check_actor(username)
    except (UnsafeAuditValue, ValueError):
        actor = "system:cli/login"
    if "/" in actor or actor.startswith("system:"):
        actor = "system:cli/login"
    try:
        Services.open().catalog.audit.append(actor, "user.login", outcome="success" if ok else "failure",
                                             detail={"via": "cli"})
    except Exception:  # noqa: BLE001 - a login is answered even when the catalog is not reachable from here
        pass
