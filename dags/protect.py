"""Protect: started by the ingest asset (data-aware scheduling), never by a clock.

classify -> gate -> de-identify (gated per object before release) -> encrypt, upload, read back -> STORED
-> gate -> backup. Every gate judges each object alone: one that fails is held for review, the rest go on.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, INGESTED, STORED, actor


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

    @task(max_active_tis_per_dagrun=2)
    def classify(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.classify_objects(Services.open(), ids, actor=actor(get_current_context()))

    @task
    def classified_gate(chunks: list[list[str]]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.classified_gate(Services.open(), chunks, actor=actor(get_current_context()))

    @task(max_active_tis_per_dagrun=2)
    def deidentify(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.deidentify_objects(Services.open(), ids, actor=actor(get_current_context()))

    @task(max_active_tis_per_dagrun=2)
    def store(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.store_objects(Services.open(), ids, actor=actor(get_current_context()))

    @task(outlets=[STORED])
    def closing_gate(chunks: list[list[str]]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.closing_gate(Services.open(), chunks, actor=actor(get_current_context()))

    @task
    def backup(chunks: list[list[str]]) -> dict:
        from imaging_lifecycle import protect as stage
        from imaging_lifecycle.services import Services

        return stage.backup_objects(Services.open(), [i for c in chunks for i in c],
                                    actor=actor(get_current_context()))

    chunks = pending()
    c = classify.expand(ids=chunks)
    g1 = classified_gate(chunks)
    d = deidentify.expand(ids=chunks)
    s = store.expand(ids=chunks)
    g2 = closing_gate(chunks)
    c >> g1 >> d >> s >> g2 >> backup(chunks)


protect()
