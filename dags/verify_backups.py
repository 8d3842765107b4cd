"""Restore verification: daily, a sample of backups (every object once per cycle) is restored and checked."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, actor, alert_on_failure


@dag(
    dag_id="verify_backups",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "backup"],
    doc_md=__doc__,
)
def verify_backups():
    @task(on_failure_callback=alert_on_failure)
    def verify_sample(cycle_days: int = 30) -> dict:
        """Download from the backup site, decrypt, compare with the catalog; a mismatch fails the task."""
        from imaging_lifecycle import backup
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return backup.verify_step(Services.open(), actor=actor(context), today=context["data_interval_end"].date(),
                                  cycle_days=cycle_days)

    verify_sample()


verify_backups()
