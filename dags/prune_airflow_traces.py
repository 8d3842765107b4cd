"""Airflow's own traces (task logs, XCom) can hold object references: prune them past a configured age."""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS

MAX_AGE = dt.timedelta(days=int(os.environ.get("IL_AIRFLOW_TRACE_DAYS", "30")))


@dag(
    dag_id="prune_airflow_traces",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "retention"],
    doc_md=__doc__,
)
def prune_airflow_traces():
    @task
    def db_clean() -> dict:
        import subprocess

        from imaging_lifecycle import retention

        argv = retention.airflow_db_clean_command(get_current_context()["data_interval_end"], MAX_AGE)
        subprocess.run(argv, check=True, capture_output=True)
        return {"cleaned_before_days": MAX_AGE.days}

    @task
    def log_folder() -> dict:
        from pathlib import Path

        from airflow.configuration import conf

        from imaging_lifecycle import retention

        return retention.prune_log_folder(Path(conf.get("logging", "base_log_folder")),
                                          now=get_current_context()["data_interval_end"], max_age=MAX_AGE)

    db_clean() >> log_folder()


prune_airflow_traces()
