"""Review: a person decides each held image (burned-in candidates, de-identification gate failures).

Triggered by hand (or by the UI's trigger form). One human-in-the-loop request per item, assigned
to the policy's reviewers: release, release with mask rectangles (re-gated), or reject. No
default option: a timeout fails that request and the item stays held.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, review_operator_class

ReviewOperator = review_operator_class()


@dag(
    dag_id="review",
    schedule=None,
    default_args=DEFAULT_ARGS,  # a failed decision (say, a mask outside the image) is asked again
    max_active_runs=1,
    catchup=False,
    tags=["imaging", "review", "deidentification"],
    doc_md=__doc__,
)
def review():
    @task
    def waiting() -> list[str]:
        """Catalog ids of the held images a reviewer can release (ids only)."""
        from imaging_lifecycle import review as stage
        from imaging_lifecycle.services import Services

        return stage.waiting(Services.open())

    ReviewOperator.partial(task_id="decide").expand(catalog_id=waiting())


review()
