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


def landing_queue() -> str:
    """The Airflow queue of the one step that touches the landing folder (the claim).

    Only the landing host's worker consumes it (``airflow celery worker -q default,landing``);
    LocalExecutor ignores queues. ``IL_LANDING_QUEUE`` renames it.
    """
    return os.environ.get("IL_LANDING_QUEUE", "landing")


def landing_ids_fired(context) -> set[str]:  # noqa: ANN001
    """The landing folders whose trigger events started this run (empty for a manual run)."""
    found: set[str] = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            payload = (getattr(event, "extra", None) or {}).get("payload") or {}
            if isinstance(payload, dict) and isinstance(payload.get("landing"), str):
                found.add(payload["landing"])
    return found


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
    """The audit actor for a task: the person who triggered its run, else ``system:<dag>/<task>``.

    Airflow 3 records the authenticated user who triggered a run on the run
    itself (``triggering_user_name``); scheduled and asset-triggered runs have
    none, and are the platform's own work.
    """
    ti = context["ti"]
    user = getattr(context.get("dag_run"), "triggering_user_name", None)
    return str(user) if user else f"system:{ti.dag_id}/{ti.task_id}"


def requester(context) -> str:
    """The person who triggered this run: an access request's requester, never a parameter."""
    user = getattr(context.get("dag_run"), "triggering_user_name", None)
    if not user:
        raise PermissionError("an access request is made by a person: trigger it from the UI or the REST API")
    return str(user)

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


def earlier_answer(context, log, *, assigned: list[str], options: list[str]) -> dict | None:
    """The answer an assigned person gave to the previous try of this human-in-the-loop task, if any.

    Airflow 3.3 under the LocalExecutor loses a race: when a person answers before the scheduler has
    read the parked process's exit (a few seconds after the request appears), the scheduler queues the
    resumed task, then reads that exit as a crash ("state mismatch"), retries the task and deletes the
    request with its answer. Airflow's own event log still holds who answered and what
    (``update_hitl_detail``, the user authenticated by the API server). A retry takes the first answer
    given after the previous try parked, by a person this step is assigned to, with an offered option,
    and applies it instead of asking again. The stage's own rules (who may decide) are checked again
    when it is applied.
    """
    import datetime as dt
    import json

    from imaging_lifecycle.services import Services

    ti = context["ti"]
    tried = int(getattr(ti, "try_number", 1) or 1)
    if tried <= 1:
        return None
    map_index = getattr(ti, "map_index", -1)
    map_index = -1 if map_index is None else map_index
    events = Services.open().airflow_api.event_logs(dag_id=ti.dag_id, run_id=context["run_id"], task_id=ti.task_id)
    parked = [e["when"] for e in events if e["event"] == "awaiting_input" and e["try_number"] == tried - 1
              and e["map_index"] == map_index]
    if not parked:
        return None
    for e in events:
        if e["event"] != "update_hitl_detail" or e["when"] <= parked[-1] or e["owner"] not in assigned:
            continue
        try:
            extra = json.loads(e["extra"] or "{}")
        except ValueError:
            continue
        # Only a body Airflow itself would have taken: its logging records refused attempts too (400, 409,
        # 422; 403 is the assigned-user check above). The first such answer is the one Airflow kept.
        chosen, params_input = extra.get("chosen_options"), extra.get("params_input", {})
        if (str(extra.get("map_index", "-1")) != str(map_index) or not isinstance(chosen, list) or len(chosen) != 1
                or not all(isinstance(c, str) for c in chosen) or set(chosen) - set(options)
                or not isinstance(params_input, dict)):
            continue
        log.info("try %s: applying the answer given to try %s (Airflow retried the parked request)", tried,
                 tried - 1)
        return {"chosen_options": list(chosen), "params_input": params_input,
                "responded_at": dt.datetime.fromisoformat(e["when"].replace("Z", "+00:00")),
                "responded_by_user": {"id": e["owner"], "name": e["owner"]}}
    return None


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
            reviewers = list(svc.policy.review.reviewers)
            answered = earlier_answer(context, self.log, assigned=reviewers, options=list(review.OPTIONS))
            if answered is not None:
                return self.execute_complete(context, answered)
            item = review.describe(svc, self.catalog_id)
            self.subject, self.body = item.subject, item.body
            self.assigned_users = [{"id": u, "name": u} for u in reviewers]
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


def access_approval_operator_class():
    """One approval step of an access request (the standard provider's HITLOperator).

    ``step`` is ``dso`` or ``head:<department>``. What the approvers see, and
    who they are, is made when the task runs, from the catalog and the policy
    (the requester and anyone who answered another step are left out). The
    answer is recorded by :func:`imaging_lifecycle.access.decide`, which
    enforces the rules Airflow does not: two different people, neither the
    requester. No default option: a timeout fails the step, and the request is
    then denied. A rejection (or a broken rule) denies it too and skips the
    steps after it.
    """
    from airflow.providers.standard.exceptions import HITLTimeoutError
    from airflow.providers.standard.operators.hitl import HITLOperator
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from imaging_lifecycle import access

    class AccessApprovalOperator(HITLOperator):
        template_fields = (*HITLOperator.template_fields, "request_id", "step")

        def __init__(self, *, request_id, step: str, **kwargs):
            super().__init__(subject="Approve an access request", options=list(access.APPROVAL_OPTIONS), **kwargs)
            self.request_id, self.step = request_id, step

        def execute(self, context):
            # Give this operator retries: under load Airflow can retry a parked request. A retry of a
            # step that was answered asks nobody; a step can never be answered twice (the catalog).
            from imaging_lifecycle.services import Services

            svc = Services.open()
            state = access.step_state(svc, self.request_id, self.step)
            if state == "approved":  # a retry of a parked request that was answered: do not ask twice
                return {"request_id": self.request_id, "step": self.step, "approved": True}
            if state in ("denied", "not_needed"):
                raise AirflowSkipException(f"request {self.request_id}: step {self.step} is {state}")
            ask = access.approval_prompt(svc, self.request_id, self.step)
            answered = earlier_answer(context, self.log, assigned=ask.approvers, options=list(access.APPROVAL_OPTIONS))
            if answered is not None:
                return self.execute_complete(context, answered)
            if not ask.approvers:
                access.close(svc, self.request_id, actor=actor(context), reason="NO_ELIGIBLE_APPROVER")
                raise AirflowSkipException(f"request {self.request_id}: nobody may answer step {self.step}")
            self.subject, self.body = ask.subject, ask.body
            self.assigned_users = [{"id": u, "name": u} for u in ask.approvers]
            self.response_timeout = svc.policy.access.approval_timeout
            return super().execute(context)

        def execute_complete(self, context, event):
            from imaging_lifecycle.services import Services

            svc = Services.open()
            try:
                answer = super().execute_complete(context, event)
            except HITLTimeoutError:  # nobody answered in time: denied (a retry then asks nobody)
                access.close(svc, self.request_id, actor=actor(context), reason="TIMEOUT")
                raise
            who = answer["responded_by_user"] or {}
            try:
                out = access.decide(svc, self.request_id, self.step, approver=str(who.get("id") or who.get("name")),
                                    approved=answer["chosen_options"] == [access.APPROVE])
            except access.AccessRefused as exc:  # a broken rule denied the request: fail, visibly, once
                raise AirflowFailException(str(exc)) from None
            if out["state"] == "DENIED":
                raise AirflowSkipException(f"request {self.request_id} was denied at step {self.step}")
            return {"request_id": self.request_id, "step": self.step, "approved": True}

    return AccessApprovalOperator


def lifecycle_app():
    """The Lifecycle plugin's FastAPI app, mounted at ``/lifecycle`` by the API server.

    A plugin app inherits no authentication from Airflow: every route here
    depends on Airflow's own ``requires_access_view(PLUGINS)`` and user
    dependency, which read the bearer header or the UI's ``_token`` cookie.
    The person is the name the auth manager puts in that token.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user, requires_access_view
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response, StreamingResponse

    from imaging_lifecycle import access
    from imaging_lifecycle.catalog import NotApproved

    app = FastAPI(title="imaging-lifecycle", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(requires_access_view(AccessView.PLUGINS))])

    def _allowed(svc, user, who: str) -> None:  # noqa: ANN001
        """The view names the people incidents are about, the reports everyone's activity: policy lists only."""
        name = user.get_name()
        listed = svc.policy.monitoring.viewers if who == "viewers" else svc.policy.monitoring.report_readers
        if name not in listed:
            svc.catalog.audit.append(name, "access.denied", outcome="failure",
                                     detail={"action": f"lifecycle_{who}", "reason": "NOT_LISTED"})
            raise HTTPException(403, "NOT_LISTED")

    @app.get("/", response_class=HTMLResponse)
    def page(user=Depends(get_user)):  # noqa: B008
        """The operator's Lifecycle view: the one summary, as one page (numbers from ``overview``)."""
        from imaging_lifecycle import lifecycle_view, overview
        from imaging_lifecycle.services import Services

        svc = Services.open()
        _allowed(svc, user, "viewers")
        return HTMLResponse(lifecycle_view.render(overview.summary(svc)), headers={"Cache-Control": "no-store"})

    @app.get("/api/summary")
    def summary_json(user=Depends(get_user)):  # noqa: B008
        from imaging_lifecycle import overview
        from imaging_lifecycle.services import Services

        svc = Services.open()
        _allowed(svc, user, "viewers")
        return overview.summary(svc)

    @app.get("/api/reports/{report_id}/{kind}")
    def report(report_id: str, kind: str, user=Depends(get_user)):  # noqa: B008
        """A compliance report, decrypted for the person asking (audited under their name)."""
        from imaging_lifecycle import compliance
        from imaging_lifecycle.services import Services

        if kind not in compliance.KINDS:
            raise HTTPException(404, "NO_SUCH_FORMAT")
        svc = Services.open()
        _allowed(svc, user, "report_readers")
        try:
            data = compliance.read(svc, report_id, kind, actor=user.get_name())
        except FileNotFoundError:
            raise HTTPException(404, "NO_REPORT") from None
        return Response(data, media_type=compliance.KINDS[kind], headers={
            "Cache-Control": "no-store", "Content-Disposition": f'inline; filename="report-{report_id}.{kind}"'})

    @app.get("/api/grants/{grant_id}/download")
    def download(grant_id: str, user=Depends(get_user)):  # noqa: B008 (FastAPI's way; the hint is local here)
        """A live working copy, decrypted on the way out, for the person it was approved for (else 403)."""
        from imaging_lifecycle.services import Services

        try:
            stream = access.download(Services.open(), grant_id, user=user.get_name())
        except NotApproved as exc:
            raise HTTPException(404 if exc.reason == "NO_GRANT" else 403, exc.reason) from None
        return StreamingResponse(stream.chunks, media_type="application/dicom", headers={
            "Content-Length": str(stream.size), "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{stream.object_id}.dcm"'})

    return app


# -- incident notifications ---------------------------------------------------------------------


def _incident_text(inc: dict) -> tuple[str, str]:
    """(subject, HTML body): codes, counts, the user and the time; never a patient."""
    import html

    scope = ", ".join(f"{k}={v}" for k, v in sorted((inc.get("scope") or {}).items()))
    subject = f"[{inc['level'].upper()}] imaging-lifecycle incident: {inc['nature']}"
    body = (f"<p>Incident <b>{html.escape(inc['id'])}</b>: {html.escape(inc['nature'])}, level "
            f"{html.escape(inc['level'])}, user {html.escape(str(inc.get('user') or '-'))}.</p>"
            f"<p>Scope: {html.escape(scope)}</p><p>Responsible: {html.escape(inc['responsible_role'])}. "
            "Acknowledge with <code>imaging-lifecycle incidents ack ID</code>; the Lifecycle view lists it.</p>")
    return subject, body


def webhook_notifier_class():  # noqa: ANN201
    """An Airflow notifier that POSTs one incident as JSON to the URL of an Airflow connection."""
    from airflow.sdk import BaseHook
    from airflow.sdk.bases.notifier import BaseNotifier

    class WebhookNotifier(BaseNotifier):
        template_fields = ()

        def __init__(self, conn_id: str, payload: dict):
            super().__init__()
            self.conn_id, self.payload = conn_id, payload

        def notify(self, context) -> None:  # noqa: ANN001
            import json
            import urllib.request

            conn = BaseHook.get_connection(self.conn_id)
            url = conn.host if (conn.host or "").startswith("http") else conn.get_uri()
            req = urllib.request.Request(url, data=json.dumps(self.payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()

    return WebhookNotifier


def notify_incidents(svc, incidents: list[dict], *, actor: str) -> dict:  # noqa: ANN001
    """Send each incident at or above the policy's level through SMTP and the webhook; audited per send.

    Emergency incidents always go. A notifier that fails is audited as such and does not stop the
    others; an incident no channel delivered stays unsent (``notified_at`` empty) and the next run
    sends it again (callers pass ``catalog.unnotified()``), so a crash or an outage loses nothing.
    """
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    order = {"warning": 0, "major": 1, "emergency": 2}
    cfg = svc.policy.monitoring.notify
    sent = {"smtp": 0, "webhook": 0, "failed": 0}
    for inc in incidents:
        if order[inc["level"]] < order[cfg.min_level] and inc["level"] != "emergency":
            svc.catalog.mark_notified(inc["id"])  # below the level that is sent: nothing is owed
            continue
        subject, body = _incident_text(inc)
        channels = []
        if cfg.smtp_to:
            channels.append(("smtp", SmtpNotifier(to=cfg.smtp_to, from_email=cfg.smtp_from, subject=subject,
                                                  html_content=body, smtp_conn_id=cfg.smtp_conn_id)))
        if cfg.webhook_conn_id:
            payload = {k: inc.get(k) for k in ("id", "nature", "level", "user", "responsible_role", "state")}
            payload["scope"] = inc.get("scope")
            payload["detected_at"] = inc["detected_at"].isoformat()
            channels.append(("webhook", webhook_notifier_class()(cfg.webhook_conn_id, payload)))
        delivered = not channels
        for name, notifier in channels:
            try:
                notifier.notify({})
                sent[name] += 1
                delivered = True
                svc.catalog.audit.append(actor, "incident.notify", detail={"incident": inc["id"], "via": name})
            except Exception as exc:  # noqa: BLE001 - one channel down must not silence the others
                sent["failed"] += 1
                svc.catalog.audit.append(actor, "incident.notify", outcome="failure",
                                         detail={"incident": inc["id"], "via": name, "reason": type(exc).__name__})
        if delivered:
            svc.catalog.mark_notified(inc["id"])
    return sent


def raise_and_notify_now(svc, *, actor: str) -> dict:  # noqa: ANN001
    """Run detection now and send what is new (the access DAG's emergency path); never fails the caller.

    The hourly ``detect_anomalies`` run would find the same incidents; raising them is idempotent,
    so a failure here only delays the notification to that run.
    """
    import datetime as dt
    import logging

    from imaging_lifecycle import incidents

    try:
        incidents.detect(svc, now=dt.datetime.now(dt.timezone.utc), actor=actor)
        return notify_incidents(svc, svc.catalog.unnotified(), actor=actor)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).warning("immediate incident detection failed (%s); the hourly run retries",
                                            type(exc).__name__)
        return {"failed": 1}
