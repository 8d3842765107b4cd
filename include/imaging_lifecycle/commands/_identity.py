"""Who is at the keyboard: a command that acts for a person proves it through Airflow's own authentication.

The person logs in once (``imaging-lifecycle login``): Airflow's API server
checks the password and hands back a token, kept in a 0600 file
(``IL_TOKEN_FILE``, default ``~/.config/imaging-lifecycle/token``), or given
as ``IL_AIRFLOW_TOKEN``. Every command that acts for a person sends that token
back to the API server (``GET /ui/auth/me``) and uses the name the server
finds in it. There is no ``--actor``: nobody types who they are.

Work the scheduler would do anyway (ingest, sweep, verify backups, rotate
keys) is recorded as ``system:cli/<command>``.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV = "IL_AIRFLOW_TOKEN"
TOKEN_FILE_ENV = "IL_TOKEN_FILE"


class NotLoggedIn(PermissionError):
    """No token, or the API server does not accept it."""


def token_file() -> Path:
    return Path(os.environ.get(TOKEN_FILE_ENV) or Path.home() / ".config" / "imaging-lifecycle" / "token")


def person(svc) -> str:  # noqa: ANN001
    """The Airflow user name behind this process's token, as the API server reads it."""
    from imaging_lifecycle.airflow_api import AirflowApi, AirflowApiError

    token = os.environ.get(TOKEN_ENV)
    if not token:
        try:
            token = token_file().read_text().strip()
        except OSError:
            token = ""
    if not token:
        raise NotLoggedIn("this command acts for a person: log in first ('imaging-lifecycle login USER')")
    try:
        return AirflowApi.as_person(svc.settings, token).whoami()
    except AirflowApiError as exc:
        raise NotLoggedIn(f"the API server did not accept your token ({exc}); log in again") from None


def system(command: str) -> str:
    return f"system:cli/{command}"
