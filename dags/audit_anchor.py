"""Audit anchor: hourly, verify the audit chain and copy its head to write-once storage."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, actor


@dag(
    dag_id="audit_anchor",
    schedule=dt.timedelta(hours=1),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "audit"],
    doc_md=__doc__,
)
def audit_anchor():
    @task
    def verify_and_anchor() -> dict:
        from imaging_lifecycle import anchor
        from imaging_lifecycle.services import Services

        return anchor.verify_and_anchor(Services.open(), actor=actor(get_current_context()))

    verify_and_anchor()


audit_anchor()
