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
        print(f"login refused: {exc}", file=sys.stderr)
        return 2
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    write_private_file(path, api.token().encode())
    print(json.dumps({"user": name, "token_file": str(path)}))
    return 0
