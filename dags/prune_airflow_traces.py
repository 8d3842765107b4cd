"""Airflow's own traces (task logs, XCom) can hold object references: prune them past a configured age.

Old runs are deleted through Airflow's REST API (their task instances and XCom
go with them): a task never touches the metadata database.
"""

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
    def old_runs() -> dict:
        from imaging_lifecycle import retention
        from imaging_lifecycle.services import Services

        return retention.prune_airflow_runs(Services.open(), now=get_current_context()["data_interval_end"],
                                            max_age=MAX_AGE)

    @task
    def log_folder() -> dict:
        from pathlib import Path

        from airflow.configuration import conf

        from imaging_lifecycle import retention

        return retention.prune_log_folder(Path(conf.get("logging", "base_log_folder")),
                                          now=get_current_context()["data_interval_end"], max_age=MAX_AGE)

    old_runs() >> log_folder()


prune_airflow_traces()
