"""Protect: started by the ingest asset (data-aware scheduling), never by a clock.

One pipeline per chunk of objects (a mapped task group), so chunk 2 is classified while chunk 1
is being de-identified: classify, then the classified gate -> de-identify (gated per object before
release) -> encrypt and store, then the closing gate -> STORED -> backup. Every gate judges each
object alone: one that fails is held for review, the rest go on.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task, task_group

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, INGESTED, STORED, actor
from imaging_lifecycle.services import TASK_SLOTS


@dag(
    dag_id="protect",
    schedule=[INGESTED],
    default_args=DEFAULT_ARGS,
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "protect"],
    doc_md=__doc__,
)
def protect():
    @task
    def pending() -> list[list[str]]:
        """Catalog ids still to protect, in chunks (ids only: no identifiers)."""
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.pending_chunks(Services.open())

    @task(max_active_tis_per_dagrun=TASK_SLOTS)
    def classify(ids: list[str]) -> dict:
        """Classify the chunk, then its gate: every object has a tier of the policy and the rule that decided it."""
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        svc, who = Services.open(), actor(get_current_context())
        return {"counts": stage.classify_objects(svc, ids, actor=who),
                "gate": stage.classified_gate(svc, [ids], actor=who)}

    @task(max_active_tis_per_dagrun=TASK_SLOTS)
    def deidentify(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.deidentify_objects(Services.open(), ids, actor=actor(get_current_context()))

    @task(max_active_tis_per_dagrun=TASK_SLOTS, outlets=[STORED])
    def store(ids: list[str]) -> dict:
        """Store the chunk, then the closing gate: STORED, keyed, hashed, no plaintext copy."""
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        svc, who = Services.open(), actor(get_current_context())
        return {"counts": stage.store_objects(svc, ids, actor=who),
                "gate": stage.closing_gate(svc, [ids], actor=who)}

    @task(max_active_tis_per_dagrun=TASK_SLOTS)
    def backup(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.backup_objects(Services.open(), ids, actor=actor(get_current_context()))

    @task_group
    def chunk(ids: list[str]):
        classify(ids) >> deidentify(ids) >> store(ids) >> backup(ids)

    chunk.expand(ids=pending())


protect()
