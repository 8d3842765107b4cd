"""Access requests, and legal holds.

``access_request``: a person asks (the UI's trigger form, or the REST API); the
requester is the user Airflow authenticated, never a parameter. The request is
judged against the policy before anyone is asked; then a data security officer
approves, then the head of each affected department; two different people,
neither the requester. No default option: a timeout or a rejection denies.
What was approved is then carried out (working copies to download from the
Lifecycle plugin, holds released, early deletions handed to the sweeper) or
left for the requester's own command (restore, re-identification, policy
change). An emergency access skips the approvals, is audited at major level,
and waits for a data security officer's review.

``legal_hold``: place a hold (anyone may; it only stops deletion). Releasing
one is an ``access_request`` with action ``release_hold``.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from imaging_lifecycle.airflow_glue import DEFAULT_ARGS, access_approval_operator_class, actor, requester
from imaging_lifecycle.policy import REQUEST_ACTIONS

AccessApproval = access_approval_operator_class()


@dag(
    dag_id="access_request",
    schedule=None,
    default_args=DEFAULT_ARGS,
    catchup=False,
    tags=["imaging", "access", "approval"],
    params={
        "catalog_ids": Param([], type="array", items={"type": "string", "pattern": "^[0-9a-f]{32}$"},
                             title="Catalog ids of the objects (none for a policy change)"),
        "action": Param("working_copy", enum=list(REQUEST_ACTIONS), title="What you ask for"),
        "purpose": Param("treatment", type="string", title="Purpose (one of the policy's access purposes)"),
        "hours": Param(None, type=["null", "integer"], minimum=1, maximum=72,
                       title="Working copy: hours (capped at the tier's cache term)"),
        "justification": Param("", type="string", minLength=10, title="Why (shown to the approvers)"),
        "agreement_id": Param(None, type=["null", "string"], title="Export: the data-sharing agreement"),
        "policy_fingerprint": Param(None, type=["null", "string"],
                                    title="Policy change: fingerprint of the policy to adopt"),
        "emergency": Param(False, type="boolean",
                           title="Emergency: care that cannot wait (one person, working copy, short, reviewed)"),
    },
    doc_md=__doc__,
)
def access_request():
    @task
    def validate() -> str:
        """Judge the request against the policy in force; a refused one fails here, before anyone is asked."""
        from airflow.sdk.exceptions import AirflowFailException

        from imaging_lifecycle import access
        from imaging_lifecycle.services import Services

        context = get_current_context()
        p = context["params"]
        try:
            out = access.submit(Services.open(), requester=requester(context), action=p["action"],
                                catalog_ids=p["catalog_ids"], purpose=p["purpose"], hours=p["hours"],
                                justification=p["justification"], agreement_id=p["agreement_id"],
                                policy_target=p["policy_fingerprint"], emergency=p["emergency"],
                                key=f"{context['dag_run'].dag_id}/{context['run_id']}")
        except access.AccessRefused as exc:  # the rules will not change on a retry: fail once, saying why
            raise AirflowFailException(f"request refused ({exc.reason}): {exc}") from None
        return out["request_id"]

    @task
    def head_steps(request_id: str) -> list[str]:
        from imaging_lifecycle import access
        from imaging_lifecycle.services import Services

        return [s for s in access.steps(Services.open(), request_id) if s != access.STEP_DSO]

    @task(trigger_rule="all_done")
    def finish(request_id: str) -> dict:
        """Close the approvals (anything unanswered denies), then carry out what was approved."""
        from imaging_lifecycle import access
        from imaging_lifecycle.services import Services

        if request_id is None:  # validate refused it (its log says why); the run fails so it shows
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException("the request was refused before any approval was asked")
        svc, who = Services.open(), actor(get_current_context())
        access.close(svc, request_id, actor=who)
        out = access.fulfil(svc, request_id, actor=who)
        if svc.catalog.request(request_id)["emergency"]:  # an emergency incident notifies at once, not at the hour
            from imaging_lifecycle.airflow_glue import raise_and_notify_now

            raise_and_notify_now(svc, actor="system:access_request/finish")
        return {k: out[k] for k in ("request_id", "state", "reason", "expires_at")} | {"grants": len(out["grants"])}

    request_id = validate()
    # Approval steps keep retries: Airflow may retry a parked request under load; an answered step is
    # never asked again, and a timeout or a broken rule ends the request at once (see the operator).
    dso = AccessApproval(task_id="dso_approval", request_id=request_id, step="dso", retries=2)
    heads = AccessApproval.partial(task_id="head_approval", request_id=request_id, retries=2).expand(
        step=head_steps(request_id))
    dso >> heads >> finish(request_id)


@dag(
    dag_id="legal_hold",
    schedule=None,
    default_args=DEFAULT_ARGS,
    catchup=False,
    tags=["imaging", "retention"],
    params={"catalog_id": Param("", type="string", minLength=32, maxLength=32)},
    doc_md="Place a legal hold: a held object is never deleted, whatever its deadline. Releasing one is an "
           "access_request with action release_hold (two approvals).",
)
def legal_hold():
    @task
    def set_hold() -> dict:
        from imaging_lifecycle import retention
        from imaging_lifecycle.services import Services

        context = get_current_context()
        return retention.set_legal_hold(Services.open(), context["params"]["catalog_id"], True,
                                        actor=actor(context))

    set_hold()


access_request()
legal_hold()
