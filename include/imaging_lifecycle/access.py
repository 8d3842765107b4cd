"""Who may see what: access requests, two-person approval, and what an approval unlocks.

One request names a requester (the Airflow user who triggered the
``access_request`` DAG, never a parameter), an action, the objects, a purpose
from the policy and a justification. It goes:

1. :func:`submit` judges it against the policy in force *before anyone is
   asked*: the requester's role, every object readable, the tier allows the
   action, hours within the tier's cache term, a live agreement for exports.
   A refused request is recorded (REFUSED, with a reason code) and raises
   :class:`AccessRefused`.
2. :func:`decide` records each approval: first a data security officer
   (step ``dso``), then the head of each affected department (``head:<id>``).
   Airflow lets only the assigned users answer; this module enforces what
   Airflow does not: an approver holds the step's role, is not the requester,
   and has not answered another step of the same request. A violation, or a
   rejection, denies the request.
3. :func:`close` ends it: all steps approved -> APPROVED (usable until its
   expiry), anything else (a timeout, a failed step) -> DENIED.
4. :func:`fulfil` does what was approved: working copies are made for the
   requester (downloaded through the plugin, :func:`download`); holds are
   released; early deletions get a deadline of now (the sweeper deletes).
   A restore, a re-identification or a policy change is carried out by the
   requester's own authenticated command while the approval is live.

Emergency access (``emergency=True``) is one person, a working copy only,
capped by the policy; it is approved at once, audited at major level, and
waits in :func:`emergencies_to_review` for a data security officer.

Every stage function that reads, hands out or deletes checks
``catalog.approved_request`` itself, so there is no path around the request.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle.catalog import NotApproved, UnknownObject
from imaging_lifecycle.catalog.access_requests import APPROVED, DENIED, FULFILLED, PENDING, REFUSED
from imaging_lifecycle.policy import REQUEST_ACTIONS
from imaging_lifecycle.services import Services

STEP_DSO = "dso"
HEAD_PREFIX = "head:"
#: States whose primary copy can be read (the same as a working copy's).
_READABLE = frozenset({"VALIDATED", "CLASSIFIED", "DEIDENTIFIED", "NEEDS_REVIEW", "PROTECTED", "STORED",
                       "BACKED_UP"})
_DELETABLE = frozenset({"STORED", "BACKED_UP", "QUARANTINED"})
#: Actions carried out by the requester's own command while the approval is live (not by the DAG).
BY_THE_REQUESTER = ("restore", "reidentify", "policy_change")
EXPORT_ZONE = "export"
EXPORT_KEY_FORMAT = "il-export-key-v1"
MAX_OBJECTS = 500
APPROVE, REJECT = "Approve", "Reject"
#: The options of every approval step (no default: a timeout denies).
APPROVAL_OPTIONS = (APPROVE, REJECT)
#: Emergency-review findings a data security officer may record.
FINDINGS = ("APPROPRIATE", "INAPPROPRIATE")

__all__ = ["AccessRefused", "NotApproved", "submit", "steps", "approvers", "decide", "close", "fulfil", "show",
           "download", "emergencies_to_review", "review_emergency", "add_agreement", "STEP_DSO", "REQUEST_ACTIONS"]


class AccessRefused(PermissionError):
    """A request or a decision broke a rule; ``reason`` is its code (the message names ids and limits only)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _hours(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise AccessRefused("hours must be a whole number of hours, at least 1", "BAD_HOURS")
    return v


# -- 1. submit -------------------------------------------------------------------------


def _judge(svc: Services, *, requester: str, action: str, catalog_ids: list[str], purpose: str, hours: int | None,
           justification: str, agreement_id: str | None, policy_target: str | None, emergency: bool,
           now: dt.datetime) -> tuple[list, list[str], list[int], int | None]:
    """``(objects, departments, tiers, hours granted)``, or :class:`AccessRefused` naming the first broken rule."""
    from imaging_lifecycle.retention import cache_terms

    access = svc.policy.access
    if action not in REQUEST_ACTIONS:
        raise AccessRefused(f"unknown action; actions are {', '.join(REQUEST_ACTIONS)}", "BAD_ACTION")
    allowed = access.emergency.users if emergency else access.requesters.get(action, [])
    if requester not in allowed:
        raise AccessRefused(f"{requester} may not request {'emergency access' if emergency else action}",
                            "ROLE_NOT_ALLOWED")
    if emergency and action != "working_copy":
        raise AccessRefused("emergency access is a working copy only", "EMERGENCY_NOT_ALLOWED")
    if purpose not in access.purposes:
        raise AccessRefused(f"purpose must be one of {', '.join(access.purposes)}", "BAD_PURPOSE")
    if not isinstance(justification, str) or len(justification.strip()) < 10:
        raise AccessRefused("say why, in at least 10 characters", "NO_JUSTIFICATION")
    hours = _hours(hours)
    if action == "policy_change":
        if catalog_ids:
            raise AccessRefused("a policy change names no objects", "BAD_SCOPE")
        if not isinstance(policy_target, str) or len(policy_target) != 64:
            raise AccessRefused("a policy change names the fingerprint of the policy to adopt "
                                "('imaging-lifecycle policy show' prints it)", "BAD_POLICY_TARGET")
        if policy_target == svc.catalog.platform_policy():
            raise AccessRefused("that policy is in force already", "BAD_POLICY_TARGET")
        return [], list({access.default_department: None}), [], None
    if not catalog_ids or len(catalog_ids) > MAX_OBJECTS or len(set(catalog_ids)) != len(catalog_ids):
        raise AccessRefused(f"name 1 to {MAX_OBJECTS} different objects", "BAD_SCOPE")
    objs = []
    for oid in catalog_ids:
        try:
            objs.append(svc.catalog.get(oid))
        except (UnknownObject, ValueError):
            raise AccessRefused("an object of the request is not in the catalog", "UNKNOWN_OBJECT") from None
    if action == "reidentify":  # what is revealed is the identified original's: judge by it
        objs = [svc.catalog.get(o.source.removeprefix("derived:")) if (o.source or "").startswith("derived:") else o
                for o in objs]
    granted = None
    for obj in objs:
        tier = obj.tier if obj.tier is not None else svc.policy.highest_tier
        wanted = _READABLE if action in ("working_copy", "restore", "export", "reidentify") else _DELETABLE
        if action != "release_hold" and obj.state not in wanted:
            raise AccessRefused(f"object {obj.id} is {obj.state}", "NOT_READABLE")
        if action == "release_hold" and not obj.legal_hold:
            raise AccessRefused(f"object {obj.id} is not under a legal hold", "NOT_HELD")
        if action not in svc.policy.tier(tier).handling.actions:
            raise AccessRefused(f"object {obj.id}: tier {tier} ({svc.policy.tier(tier).name}) allows no {action}",
                                "TIER_FORBIDS")
        if action == "working_copy":
            from imaging_lifecycle.retention import RetentionError

            try:
                _, limit = cache_terms(svc, obj, None)
            except RetentionError:
                raise AccessRefused(f"object {obj.id}: its tier allows no cache copy", "TIER_FORBIDS") from None
            cap = min(limit, access.emergency.max_hours // dt.timedelta(hours=1)) if emergency else limit
            if hours is not None and hours > cap:
                raise AccessRefused(f"hours must be at most {cap} for object {obj.id}", "HOURS_OVER_CAP")
            granted = min(cap, granted or cap, hours or cap)
    if action == "export":
        if not agreement_id:
            raise AccessRefused("an export names its agreement", "NO_AGREEMENT")
        try:
            ag = svc.catalog.agreement(agreement_id)
        except (UnknownObject, ValueError):
            raise AccessRefused("no such agreement", "NO_AGREEMENT") from None
        if not ag["starts_at"] <= now < ag["ends_at"]:
            raise AccessRefused(f"agreement {agreement_id} is not live", "AGREEMENT_NOT_LIVE")
    departments = sorted({access.department_of(o.source) for o in objs})
    tiers = sorted({o.tier if o.tier is not None else svc.policy.highest_tier for o in objs})
    return objs, departments, tiers, granted


def submit(svc: Services, *, requester: str, action: str, catalog_ids: list[str], purpose: str,
           justification: str, hours: int | None = None, agreement_id: str | None = None,
           policy_target: str | None = None, emergency: bool = False, now: dt.datetime | None = None,
           key: str | None = None) -> dict:
    """Judge and record a request; returns ``{"request_id", "state", "steps"}`` (ids and codes only).

    Refused before any approval is asked when a rule fails: recorded as
    REFUSED with the rule's code, audited, and raised as :class:`AccessRefused`.
    ``key`` (the DAG run) makes it idempotent: a rerun of the same run gets
    the same request back, or the same refusal, and records nothing twice.
    """
    svc.guard("access_request", actor=requester)
    now = now or _now()
    request_id = uuid.uuid5(uuid.NAMESPACE_URL, f"imaging-lifecycle:access:{key}").hex if key else uuid.uuid4().hex
    if key:
        try:
            prior = svc.catalog.request(request_id)
        except UnknownObject:
            prior = None
        if prior is not None:
            if prior["requester"] != requester:
                raise AccessRefused("this run's request belongs to someone else", "NOT_THE_REQUESTER")
            if prior["state"] == REFUSED:
                raise AccessRefused(f"request {request_id} was refused ({prior['reason']})", prior["reason"])
            return {"request_id": request_id, "state": prior["state"],
                    "steps": [] if prior["emergency"] else steps_for(prior["departments"])}
    catalog_ids = list(catalog_ids or [])
    words = justification if isinstance(justification, str) else ""
    words = "".join(c if c.isprintable() or c == "\n" else " " for c in words)
    record = {"action": action if action in REQUEST_ACTIONS else "unknown", "requester": requester,
              "purpose": purpose if isinstance(purpose, str) and purpose.strip() else "unknown",
              "justification": words,
              "agreement_id": agreement_id or None, "emergency": bool(emergency),
              "policy_fingerprint": svc.policy.fingerprint}
    try:
        objs, departments, tiers, granted = _judge(
            svc, requester=requester, action=action, catalog_ids=catalog_ids, purpose=purpose, hours=hours,
            justification=justification, agreement_id=agreement_id, policy_target=policy_target,
            emergency=emergency, now=now)
    except AccessRefused as exc:
        safe_ids = [i for i in catalog_ids if isinstance(i, str) and len(i) == 32 and i.isalnum() and i.islower()]
        # a refused request's purpose may be anything the requester typed: only a listed one is kept
        record["purpose"] = purpose if purpose in svc.policy.access.purposes else "unknown"
        svc.catalog.add_request(request_id, object_ids=safe_ids, departments=[], tiers=[],
                                hours=hours if isinstance(hours, int) else None, policy_target=None,
                                state=REFUSED, reason=exc.reason, **record)
        raise
    state = APPROVED if emergency else PENDING
    svc.catalog.add_request(request_id, object_ids=catalog_ids, departments=departments, tiers=tiers,
                            hours=granted if action == "working_copy" else hours, policy_target=policy_target,
                            state=state, expires_at=now + dt.timedelta(hours=granted or 1) if emergency else None,
                            **record)
    return {"request_id": request_id, "state": state, "steps": [] if emergency else steps_for(departments)}


# -- 2. decide -------------------------------------------------------------------------


def steps_for(departments: list[str]) -> list[str]:
    return [STEP_DSO] + [f"{HEAD_PREFIX}{d}" for d in departments]


def steps(svc: Services, request_id: str) -> list[str]:
    """The approval steps of a request, in order (none for an emergency access)."""
    req = svc.catalog.request(request_id)
    return [] if req["emergency"] else steps_for(req["departments"])


def _role(svc: Services, step: str) -> list[str]:
    access = svc.policy.access
    if step == STEP_DSO:
        return list(access.data_security_officers)
    if step.startswith(HEAD_PREFIX):
        try:
            return list(access.department(step.removeprefix(HEAD_PREFIX)).heads)
        except StopIteration:
            return []
    return []


def approvers(svc: Services, request_id: str, step: str) -> list[str]:
    """Who may answer ``step``: the role's people, minus the requester and whoever answered another step."""
    req = svc.catalog.request(request_id)
    answered = {d["approver"] for d in svc.catalog.decisions(request_id)}
    return [u for u in _role(svc, step) if u != req["requester"] and u not in answered]


def decide(svc: Services, request_id: str, step: str, *, approver: str, approved: bool,
           now: dt.datetime | None = None) -> dict:
    """Record ``approver``'s answer to ``step``; returns the request's public state.

    Refuses, and denies the whole request (fail closed), when the approver is
    the requester, answered another step already, or does not hold the step's
    role, or when the steps are answered out of order.
    """
    svc.guard("access_decision", actor=approver)
    req = svc.catalog.request(request_id)
    order = steps_for(req["departments"]) if not req["emergency"] else []
    if step not in order:
        raise AccessRefused(f"request {request_id} has no step {step}", "BAD_STEP")
    done = {d["step"]: d for d in svc.catalog.decisions(request_id)}
    violation = None
    if approver == req["requester"]:
        violation = "SELF_APPROVAL"
    elif any(d["approver"] == approver for d in done.values()):
        violation = "SAME_APPROVER"
    elif approver not in _role(svc, step):
        violation = "NOT_AN_APPROVER"
    elif step != STEP_DSO and STEP_DSO not in done:  # the DSO first; the heads then in any order (in parallel)
        violation = "OUT_OF_ORDER"
    if violation:
        svc.catalog.audit.append(approver, "security.alert", outcome="major_failure",
                                 detail={"reason": violation, "request": request_id, "step": step})
        if req["state"] == PENDING and step not in done:
            svc.catalog.record_decision(request_id, step, approver=approver, approved=False, deny_reason=violation)
        raise AccessRefused(f"{approver} may not answer step {step} of request {request_id} ({violation}); "
                            "the request is denied", violation)
    req = svc.catalog.record_decision(request_id, step, approver=approver, approved=approved)
    if approved and all(s in done or s == step for s in order):
        valid = svc.policy.access.approval_valid
        if req["action"] == "working_copy":
            valid = dt.timedelta(hours=req["hours"] or 1)
        svc.catalog.set_request_state(request_id, APPROVED, actor=approver, expires_at=(now or _now()) + valid)
    return show(svc, request_id)


def close(svc: Services, request_id: str, *, actor: str, reason: str = "NOT_ANSWERED") -> dict:
    """End the approval phase: a request still PENDING (a step timed out or failed) is DENIED."""
    req = svc.catalog.request(request_id)
    if req["state"] == PENDING:
        svc.catalog.set_request_state(request_id, DENIED, actor=actor, reason=reason)
    return show(svc, request_id)


def step_state(svc: Services, request_id: str, step: str) -> str:
    """``approved``, ``denied`` (answered no, or the request is over), ``not_needed`` (emergency) or ``waiting``."""
    req = svc.catalog.request(request_id)
    if req["emergency"] or req["state"] == REFUSED:
        return "not_needed"
    mine = next((d for d in svc.catalog.decisions(request_id) if d["step"] == step), None)
    if mine is not None:
        return "approved" if mine["approved"] else "denied"
    return "waiting" if req["state"] == PENDING else "denied"


@dataclass(frozen=True)
class Prompt:
    subject: str
    body: str
    approvers: list[str]


def approval_prompt(svc: Services, request_id: str, step: str) -> Prompt:
    """What the approvers of ``step`` are shown (ids, codes and the requester's own words) and who they are."""
    req = svc.catalog.request(request_id)
    role = "data security officer" if step == STEP_DSO else f"head of {step.removeprefix(HEAD_PREFIX)}"
    lines = [
        f"**{req['requester']}** asks for **{req['action']}** ({req['purpose']}).",
        "",
        f"- approval step: {step} ({role})",
        f"- objects: {len(req['object_ids'])}; tiers: {', '.join(map(str, req['tiers'])) or '-'}; "
        f"departments: {', '.join(req['departments'])}",
        f"- hours: {req['hours'] if req['hours'] is not None else '-'}",
        f"- agreement: {req['agreement_id'] or '-'}",
        f"- policy: {req['policy_fingerprint']}" + (f"\n- to adopt: **{req['policy_target']}** (compare all 64 "
                                                     "characters with 'imaging-lifecycle policy show' on the new "
                                                     "file)" if req["policy_target"] else ""),
        f"- request: {request_id}",
        "",
        "Justification, in the requester's words:",
        "",
        "> " + req["justification"].replace("\n", "\n> "),
    ]
    for d in svc.catalog.decisions(request_id):
        lines.append(f"\nAlready approved at step {d['step']} by {d['approver']}.")
    return Prompt(subject=f"Access request: {req['action']} by {req['requester']}", body="\n".join(lines),
                  approvers=approvers(svc, request_id, step))


# -- 3. what an approval unlocks -------------------------------------------------------------


def fulfil(svc: Services, request_id: str, *, actor: str, now: dt.datetime | None = None) -> dict:
    """Carry out an APPROVED request that the platform carries out itself; idempotent.

    ``working_copy``: one grant per object, for the requester, until the
    approval's expiry (never past the tier's cache term). ``release_hold``:
    each hold released. ``early_delete``: each deadline set to now, so the next
    sweep deletes and certifies. The others stay APPROVED for the requester's
    own command until they expire.
    """
    from imaging_lifecycle import retention

    now = now or _now()
    req = svc.catalog.request(request_id)
    if req["state"] != APPROVED or req["action"] in BY_THE_REQUESTER:
        return show(svc, request_id)
    who = req["requester"]
    if req["action"] == "working_copy":
        have = {g["object_id"] for g in svc.catalog.grants_of_request(request_id) if g["copy_id"]}
        for oid in req["object_ids"]:
            if oid not in have:  # a retry makes only what a killed attempt did not (the sweeper erases halves)
                retention.retrieve(svc, oid, request_id=request_id, actor=who, hours=req["hours"], now=now)
    elif req["action"] == "release_hold":
        for oid in req["object_ids"]:
            if svc.catalog.get(oid).legal_hold:
                retention.set_legal_hold(svc, oid, False, actor=who, request_id=request_id)
    elif req["action"] == "early_delete":
        for oid in req["object_ids"]:
            retention.delete_early(svc, oid, request_id=request_id, actor=who, now=now)
    elif req["action"] == "export":
        _export(svc, req, actor=who)
        return show(svc, request_id)  # stays APPROVED: the requester collects the key (export_key) while live
    svc.catalog.set_request_state(request_id, FULFILLED, actor=actor)
    return show(svc, request_id)


def _export(svc: Services, req: dict, *, actor: str) -> None:
    """The export package: each object re-encrypted into the export zone under the export's own key.

    A de-identified object (a derivative) is packaged only if the
    de-identification gate passes again on (original, derivative) now; an
    identified one goes under the two approvals the request already has. Each
    copy's deadline is the agreement's end, so the sweeper deletes and
    certifies the package then. Idempotent: objects already packaged are skipped.
    """
    from imaging_lifecycle.dicomfile import read_dataset
    from imaging_lifecycle.gates import deid as deid_gate
    from imaging_lifecycle.gates import record
    from imaging_lifecycle.protect import plaintext_file

    svc.guard("export", actor=actor)
    rid = req["id"]
    agreement = svc.catalog.agreement(req["agreement_id"])
    ends = agreement["ends_at"]
    if not agreement["starts_at"] <= _now() < ends:  # approvals take time: the agreement may have ended since
        raise AccessRefused(f"agreement {req['agreement_id']} is no longer live; nothing was exported",
                            "AGREEMENT_NOT_LIVE")
    for oid in req["object_ids"]:
        svc.catalog.approved_request(rid, action="export", actor=actor, object_id=oid)
        if any(c.key.startswith(f"{EXPORT_ZONE}/{rid}/") for c in svc.catalog.copies(oid)):
            continue
        obj = svc.catalog.get(oid)
        derived = (obj.source or "").startswith("derived:")
        with plaintext_file(svc, obj) as path:
            if derived:
                parent = svc.catalog.get(obj.source.removeprefix("derived:"))
                with plaintext_file(svc, parent) as original:
                    result = deid_gate.check([(oid, read_dataset(original), read_dataset(path))], svc.policy)
                record(svc.catalog, result, actor=actor)
                if result.failed:
                    raise AccessRefused(f"object {oid} failed the de-identification gate; it was not exported",
                                        "DEID_GATE")
            tier = obj.tier if obj.tier is not None else svc.policy.highest_tier
            sealed = svc.encrypted.put(Path(path), catalog_id=oid, zone=EXPORT_ZONE, tier=tier,
                                       scope_id=f"export:{rid}", key=f"{EXPORT_ZONE}/{rid}/{oid}")
        svc.encrypted.record(svc.catalog, oid, sealed, actor=actor, deadline=ends)
        svc.catalog.audit.append(actor, "object.export", object_ref=oid,
                                 detail={"request": rid, "agreement": req["agreement_id"], "zone": EXPORT_ZONE,
                                         "tier": tier, "deidentified": derived})


def export_key(svc: Services, request_id: str, *, actor: str) -> dict:
    """The export's key, for the requester to hand to the recipient out of band (the caller writes it 0600).

    Per object: where the ciphertext is, its data key and what it is bound
    to, and the SHA-256 of the plaintext. With it alone (no catalog, no key
    store) the recipient decrypts the package (:func:`open_export`). Only for
    the requester of the approved export while the approval is live; audited
    with counts, never key material.
    """
    import base64

    req = svc.catalog.approved_request(request_id, action="export", actor=actor)
    items = []
    for oid in req["object_ids"]:
        obj = svc.catalog.get(oid)
        mine = [c for c in svc.catalog.copies(oid) if c.key.startswith(f"{EXPORT_ZONE}/{request_id}/")]
        if not mine:
            raise AccessRefused(f"object {oid} is not packaged (has the access_request run finished?)",
                                "NOT_PACKAGED")
        sealed = svc.catalog.sealed(mine[-1], obj.sha256, obj.size)
        items.append({"catalog_id": oid, "bucket": sealed.bucket, "key": sealed.key, "version_id": sealed.version_id,
                      "zone": sealed.zone, "tier": sealed.tier, "dek_id": sealed.dek_id, "sha256": obj.sha256,
                      "dek": base64.b64encode(svc.encrypted.dek(sealed)).decode()})
    svc.catalog.audit.append(actor, "object.export",
                             detail={"request": request_id, "objects": len(items), "handover": "export_key"})
    return {"format": EXPORT_KEY_FORMAT, "request_id": request_id, "agreement_id": req["agreement_id"],
            "objects": items}


def open_export(key: dict, item: dict, ciphertext: bytes) -> bytes:
    """What a recipient runs: decrypt one exported object with the key file only (every tag and the hash checked)."""
    import base64

    from imaging_lifecycle.crypto import AssociatedData, decrypt_bytes

    if key.get("format") != EXPORT_KEY_FORMAT:
        raise ValueError("not an imaging-lifecycle export key")
    aad = AssociatedData(item["catalog_id"], item["zone"], item["tier"], item["dek_id"])
    return decrypt_bytes(ciphertext, base64.b64decode(item["dek"]), aad, item["sha256"])


def show(svc: Services, request_id: str) -> dict:
    """A request's state, approvers, grants and deadlines: ids, names of staff and codes; no patient data."""
    req = svc.catalog.request(request_id)

    def iso(v: dt.datetime | None) -> str | None:
        return v.isoformat() if v else None

    return {
        "request_id": req["id"], "action": req["action"], "requester": req["requester"], "state": req["state"],
        "reason": req["reason"], "emergency": req["emergency"], "purpose": req["purpose"],
        "objects": req["object_ids"], "tiers": req["tiers"], "departments": req["departments"],
        "hours": req["hours"], "agreement_id": req["agreement_id"],
        "steps": [] if req["emergency"] else steps_for(req["departments"]),
        "decisions": [{"step": d["step"], "approver": d["approver"], "approved": d["approved"],
                       "at": iso(d["decided_at"])} for d in svc.catalog.decisions(request_id)],
        "grants": [{"grant_id": g["id"], "object_id": g["object_id"], "deadline": iso(g["deadline"]),
                    "erased": g["erased_at"] is not None} for g in svc.catalog.grants_of_request(request_id)],
        "created_at": iso(req["created_at"]), "decided_at": iso(req["decided_at"]),
        "expires_at": iso(req["expires_at"]), "fulfilled_at": iso(req["fulfilled_at"]),
        "reviewed_by": req["reviewed_by"],
    }


def download(svc: Services, grant_id: str, *, user: str, now: dt.datetime | None = None):  # noqa: ANN201
    """A working copy for ``user`` (a :class:`~imaging_lifecycle.retention.GrantStream`), if the grant is live
    and ``user`` is the one it was approved for; else :class:`NotApproved` (audited)."""
    from imaging_lifecycle.retention import open_grant

    return open_grant(svc, grant_id, actor=user, now=now or _now())


# -- emergency review ----------------------------------------------------------------------


def emergencies_to_review(svc: Services) -> list[dict]:
    """Emergency accesses no data security officer has reviewed yet (the DSO's review list)."""
    return [show(svc, r["id"]) for r in svc.catalog.requests(emergency=True) if r["reviewed_at"] is None
            and r["state"] != REFUSED]


def review_emergency(svc: Services, request_id: str, *, reviewer: str, finding: str) -> dict:
    if reviewer not in svc.policy.access.data_security_officers:
        raise AccessRefused(f"{reviewer} is not a data security officer", "NOT_AN_APPROVER")
    if reviewer == svc.catalog.request(request_id)["requester"]:
        raise AccessRefused(f"{reviewer} may not review their own emergency access", "SELF_APPROVAL")
    if finding not in FINDINGS:
        raise AccessRefused(f"finding must be one of {', '.join(FINDINGS)}", "BAD_FINDING")
    svc.catalog.review_emergency(request_id, reviewer=reviewer, finding=finding)
    return show(svc, request_id)


# -- agreements -----------------------------------------------------------------------------


def add_agreement(svc: Services, *, actor: str, recipient: str, scope: str, purpose: str, legal_basis: str,
                  starts_at: dt.datetime, ends_at: dt.datetime) -> dict:
    """Record a data-sharing agreement: only a person the policy lists in ``access.agreement_admins``.

    (The issue allowed either an admin or an approved policy_change request; a policy_change approval
    names a policy fingerprint, so letting it also create agreements would spend one approval on
    another decision. Agreement admins it is; every agreement is audited, and each export under it
    still needs its own two approvals.)
    """
    if purpose not in svc.policy.access.purposes:
        raise AccessRefused(f"purpose must be one of {', '.join(svc.policy.access.purposes)}", "BAD_PURPOSE")
    if actor not in svc.policy.access.agreement_admins:
        svc.catalog.audit.append(actor, "access.denied", outcome="failure",
                                 detail={"action": "agreement_add", "reason": "ROLE_NOT_ALLOWED"})
        raise AccessRefused(f"{actor} is not an agreement admin", "ROLE_NOT_ALLOWED")
    how = "agreement_admin"
    aid = uuid.uuid4().hex
    svc.catalog.add_agreement(aid, recipient=recipient, scope=scope, purpose=purpose, legal_basis=legal_basis,
                              starts_at=starts_at, ends_at=ends_at, actor=actor, how=how)
    return {"agreement_id": aid, "how": how}

