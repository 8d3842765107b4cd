"""Key rotation: monthly and on demand. New KEK versions, every DEK re-wrapped, old versions destroyed;
no data re-encrypted."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, actor


@dag(
    dag_id="rotate_keys",
    schedule="@monthly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "keys"],
    doc_md=__doc__,
)
def rotate_keys():
    @task
    def rotate() -> dict:
        """Resumable: the run id makes a retried or rerun attempt continue, never rotate twice."""
        from imaging_lifecycle import rotation
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return rotation.rotate_step(Services.open(), actor=actor(context), run_id=context["run_id"])

    rotate()


rotate_keys()
