"""Protect: started by the ingest asset (data-aware scheduling), never by a clock.

classify -> gate -> de-identify -> gate -> encrypt, upload, read back -> STORED -> gate -> backup
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

        return stage.pending_chunks()

    @task(max_active_tis_per_dagrun=2)
    def classify(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage

        return stage.run("classify", ids, actor=actor(get_current_context()))

    @task
    def classified_gate(chunks: list[list[str]]) -> dict:
        from imaging_lifecycle import protect as stage

        return stage.gate("classified", chunks, actor=actor(get_current_context()))

    @task(max_active_tis_per_dagrun=2)
    def deidentify(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage

        return stage.run("deidentify", ids, actor=actor(get_current_context()))

    @task
    def deid_gate(chunks: list[list[str]]) -> dict:
        from imaging_lifecycle import protect as stage

        return stage.gate("deid", chunks, actor=actor(get_current_context()))

    @task(max_active_tis_per_dagrun=2)
    def store(ids: list[str]) -> dict:
        from imaging_lifecycle import protect as stage

        return stage.run("store", ids, actor=actor(get_current_context()))

    @task(outlets=[STORED])
    def closing_gate(chunks: list[list[str]]) -> dict:
        from imaging_lifecycle import protect as stage

        return stage.gate("closing", chunks, actor=actor(get_current_context()))

    @task
    def backup(chunks: list[list[str]]) -> dict:
        from imaging_lifecycle import protect as stage

        return stage.run("backup", [i for c in chunks for i in c], actor=actor(get_current_context()))

    chunks = pending()
    c = classify.expand(ids=chunks)
    g1 = classified_gate(chunks)
    d = deidentify.expand(ids=chunks)
    g2 = deid_gate(chunks)
    s = store.expand(ids=chunks)
    g3 = closing_gate(chunks)
    c >> g1 >> d >> g2 >> s >> g3 >> backup(chunks)


protect()
