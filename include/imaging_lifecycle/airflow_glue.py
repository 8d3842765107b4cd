"""What every DAG shares: assets, default arguments, and who the actor is.

DAG files import from here so they stay a few lines of wiring each. Assets
are the contract between DAGs (data-aware scheduling): ``ingest`` produces
:data:`INGESTED`, which starts ``protect``.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, AssetWatcher

from imaging_lifecycle.settings import load_settings
from imaging_lifecycle.triggers import LandingBatchTrigger

OWNER = "imaging-platform"

DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=20),
    "retry_exponential_backoff": True,
}


def quiet_seconds() -> float:
    """How long the landing folder must be still before a batch counts as complete."""
    return float(os.environ.get("IL_INGEST_QUIET_SECONDS", "5"))


def landing_asset() -> Asset:
    """The landing folder as an asset, watched by our trigger: one event per complete batch."""
    return Asset(
        "imaging://landing",
        watchers=[
            AssetWatcher(
                name="landing_batches",
                trigger=LandingBatchTrigger(
                    landing_dir=str(load_settings().landing_dir), quiet_seconds=quiet_seconds()
                ),
            )
        ],
    )


#: A batch passed the ingest gate: its objects are in the catalog, staged encrypted.
INGESTED = Asset("imaging://catalog/ingested")


def actor(context) -> str:
    """The audit actor for a task: dag/task/run (no user data)."""
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.task_id}/{context['run_id']}"

#: Objects reached STORED (encrypted, verified, in the archive zone).
STORED = Asset("imaging://catalog/stored")


def alert_on_failure(context) -> None:
    """Failure callback: a security alert in the audit trail (ids and codes only), visible beside the red task."""
    from imaging_lifecycle.services import Services

    ti = context["ti"]
    exc = context.get("exception")
    Services.open().catalog.audit.append(actor(context), "security.alert", outcome="failure",
                                         detail={"dag": ti.dag_id, "task": ti.task_id,
                                                 "error": type(exc).__name__ if exc else "unknown"})
