"""What every DAG shares: assets, default arguments, and who the actor is.

DAG files import from here so they stay a few lines of wiring each. Assets
are the contract between DAGs (data-aware scheduling): ``ingest`` produces
:data:`INGESTED`, which starts ``protect``.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, AssetWatcher

from imaging_lifecycle.settings import load_settings
from imaging_lifecycle.triggers import LandingBatchTrigger

OWNER = "imaging-platform"

DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=20),
    "retry_exponential_backoff": True,
}


def quiet_seconds() -> float:
    """How long the landing folder must be still before a batch counts as complete."""
    return float(os.environ.get("IL_INGEST_QUIET_SECONDS", "5"))


def landing_asset() -> Asset:
    """The landing folder as an asset, watched by our trigger: one event per complete batch."""
    return Asset(
        "imaging://landing",
        watchers=[
            AssetWatcher(
                name="landing_batches",
                trigger=LandingBatchTrigger(
                    landing_dir=str(load_settings().landing_dir), quiet_seconds=quiet_seconds()
                ),
            )
        ],
    )


#: A batch passed the ingest gate: its objects are in the catalog, staged encrypted.
INGESTED = Asset("imaging://catalog/ingested")


def actor(context) -> str:
    """The audit actor for a task: dag/task/run (no user data)."""
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.task_id}/{context['run_id']}"

#: Objects reached STORED (encrypted, verified, in the archive zone).
STORED = Asset("imaging://catalog/stored")


def alert_on_failure(context) -> None:
    """Failure callback: a security alert in the audit trail (ids and codes only), visible beside the red task."""
    from imaging_lifecycle.services import Services

    ti = context["ti"]
    exc = context.get("exception")
    Services.open().catalog.audit.append(actor(context), "security.alert", outcome="failure",
                                         detail={"dag": ti.dag_id, "task": ti.task_id,
                                                 "error": type(exc).__name__ if exc else "unknown"})


def review_operator_class():
    """The review DAG's human-in-the-loop step (built on first use: the standard provider's HITLOperator).

    Each mapped instance asks the policy's reviewers about one held image.
    What it shows is made when the task runs, from the catalog (never passed
    through XCom), and the answer is applied in ``execute_complete`` under the
    name of the person who gave it.
    """
    from airflow.providers.standard.operators.hitl import HITLOperator
    from airflow.sdk import Param

    from imaging_lifecycle import review

    class ReviewOperator(HITLOperator):
        def __init__(self, *, catalog_id: str, **kwargs):
            super().__init__(
                subject="Review a held image",
                options=list(review.OPTIONS),
                params={"masks": Param([], type="array", title="Rectangles to blank: [x, y, width, height], ...",
                                       items={"type": "array", "items": {"type": "integer", "minimum": 0},
                                              "minItems": 4, "maxItems": 4})},
                **kwargs)
            self.catalog_id = catalog_id

        def execute(self, context):
            from imaging_lifecycle.services import Services

            svc = Services.open()
            if not review.is_waiting(svc, self.catalog_id):
                # Decided already: a retry of a request that was answered. Under load Airflow can retry a
                # parked or resumed request (the executor reports the process finished while the
                # scheduler still reads the task as queued or running). Asking again would decide twice.
                self.log.info("review item %s was decided already; nothing to ask", self.catalog_id)
                return {"catalog_id": self.catalog_id, "already_decided": True}
            item = review.describe(svc, self.catalog_id)
            self.subject, self.body = item.subject, item.body
            self.assigned_users = [{"id": u, "name": u} for u in svc.policy.review.reviewers]
            self.response_timeout = svc.policy.review.response_timeout
            return super().execute(context)

        def execute_complete(self, context, event):
            from imaging_lifecycle.services import Services

            answer = super().execute_complete(context, event)
            who = answer["responded_by_user"] or {}
            return review.decide(Services.open(), self.catalog_id, choice=answer["chosen_options"][0],
                                 masks=(answer["params_input"] or {}).get("masks") or [],
                                 reviewer=str(who.get("name") or who.get("id")))

    return ReviewOperator
