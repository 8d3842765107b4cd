"""Sweeper: every 15 minutes, everything past its deadline is erased, purged, verified and certified.

"Now" is the run's data interval end, never the wall clock, so tests and
backfills are exact and the delay after a deadline is at most one interval.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, actor, alert_on_failure

INTERVAL = dt.timedelta(minutes=int(os.environ.get("IL_SWEEP_INTERVAL_MINUTES", "15")))


@dag(
    dag_id="sweeper",
    schedule=INTERVAL,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "retention", "deletion"],
    doc_md=__doc__,
)
def sweeper():
    @task
    def assign_deadlines() -> dict:
        from imaging_lifecycle import retention
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return retention.assign_missing_deadlines(Services.open(), now=context["data_interval_end"],
                                                  actor=actor(context))

    @task(on_failure_callback=alert_on_failure)
    def sweep() -> dict:
        """Safety gate first: one bad candidate and nothing at all is deleted."""
        from imaging_lifecycle import deletion
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return deletion.sweep(Services.open(), context["data_interval_end"], actor=actor(context))

    @task(on_failure_callback=alert_on_failure)
    def stale_plaintext() -> dict:
        """Local plaintext (landing, staging, temp) is held to the policy's cache term too: deleted, or alerted."""
        from imaging_lifecycle import retention
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return retention.stale_local_files(Services.open(), now=context["data_interval_end"], actor=actor(context))

    @task
    def anchor_deletions(result: dict) -> dict:
        """Every deletion batch is anchored at once (signed, on the backup site), not only at the hour."""
        from imaging_lifecycle import anchor
        from imaging_lifecycle.services import Services

        if not any(result.get(k) for k in ("objects_deleted", "copies_deleted", "grants_erased")):
            return {"anchored": False}
        return anchor.verify_and_anchor(Services.open(), actor=actor(get_current_context())) | {"anchored": True}

    swept = sweep()
    assign_deadlines() >> swept >> stale_plaintext()
    anchor_deletions(swept)


sweeper()
