"""Ingest: started by complete batches in the landing folder (an AssetWatcher), not by a clock."""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import (
    DEFAULT_ARGS,
    INGESTED,
    actor,
    landing_asset,
    landing_ids_fired,
    landing_queue,
    quiet_seconds,
)
from imaging_lifecycle.services import TASK_SLOTS


@dag(
    dag_id="ingest",
    schedule=[landing_asset()],
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "ingest"],
    doc_md=__doc__,
)
def ingest():
    @task(queue=landing_queue())
    def claim_batch() -> list[dict]:
        """Stage settled landing files in S3 as a batch (on the landing host); one {batch_id, chunk} per chunk."""
        from imaging_lifecycle import ingest as stage
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return stage.claim_batch(Services.open(), quiet_seconds=quiet_seconds(), actor=actor(context),
                                 landing_ids=landing_ids_fired(context)).work()

    @task(max_active_tis_per_dagrun=TASK_SLOTS)
    def ingest_chunk(batch_id: str, chunk: int) -> dict:
        from imaging_lifecycle import ingest as stage
        from imaging_lifecycle.services import Services

        return stage.run_chunk(Services.open(), batch_id, chunk, actor=actor(get_current_context()))

    @task(outlets=[INGESTED])
    def gate(results: list[dict]) -> dict:
        from imaging_lifecycle import ingest as stage
        from imaging_lifecycle.services import Services

        context = get_current_context()
        summary = stage.close_batch(Services.open(), results, actor=actor(context))
        context["outlet_events"][INGESTED].extra = {"batch_id": summary["batch_id"], "stored": summary["stored"]}
        return summary

    gate(ingest_chunk.expand_kwargs(claim_batch()))


ingest()
