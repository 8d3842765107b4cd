"""Incidents: raised from anomaly findings and from what the audit trail and catalog show, then worked by people.

The hourly ``detect_anomalies`` DAG calls :func:`detect`, which

1. reads the access history from the audit trail (:func:`access_events`: every
   access path counts: working copies, downloads, restores, exports,
   re-identification, emergency access; plus requests, approvals, denials and
   failed logins) and runs :func:`imaging_lifecycle.anomalies.detect` with the
   policy's rules;
2. checks the trail and the catalog for the other sources (:func:`scan`): gate
   failures, restore-verification mismatches, audit-chain breaks and anchor
   problems, overdue deletions, bursts of rejected DICOM associations, and every
   emergency access;
3. raises one incident per source (``source_key``: raising the same one again
   changes nothing) and returns the new ones, which the DAG sends through its
   notifiers (``airflow_glue.notify_incidents``).

An incident never names a patient: it carries the user, counts, tiers, time
windows and codes. People acknowledge, contain and resolve incidents by name
(``imaging-lifecycle incidents ack|resolve``), each step audited with the time
since detection.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable

from imaging_lifecycle import anomalies
from imaging_lifecycle.catalog.audit import AuditRecord, parse_ts, plain_utc
from imaging_lifecycle.services import Services

__all__ = ["gate_failed", "KIND_OF_ACTION", "access_events", "peer_groups", "raise_findings", "scan", "detect", "step",
           "may_respond", "NotResponsible", "LOOKBACK"]

#: How far back the access history is read for one detection run (the longest rolling window).
LOOKBACK = dt.timedelta(days=400)
#: Audit action (and, for some, a detail value) -> access-history kind, as data.
KIND_OF_ACTION: dict[str, str] = {
    "grant.create": "working_copy",
    "grant.read": "download",
    "object.export": "export",  # detail.action == "restore" makes it "restore"
    "access.reidentify": "reidentify",
    "access.emergency": "emergency",
    "access.request": "request",
    "access.decision": "approval",
    "access.outcome": "approved_request",
    "access.denied": "denied",
    "user.login": "login_failed",
}


def _at(record: AuditRecord) -> dt.datetime:
    return parse_ts(record.ts)


def _person(actor: str) -> bool:
    return "/" not in actor and not actor.startswith("system:")


def access_events(svc: Services, *, since: dt.datetime, until: dt.datetime) -> list[anomalies.AccessEvent]:
    """The access history between ``since`` and ``until``, from the audit trail (people only, no system work)."""
    records = svc.catalog.audit.by_actions(tuple(KIND_OF_ACTION), since=since, until=until)
    tiers = svc.catalog.tiers_of([r.object_ref for r in records if r.object_ref])
    approvers: dict[str, tuple[str, ...]] = {}
    emergency_requests = {(r.detail or {}).get("request") for r in records if r.action == "access.emergency"}
    out = []
    for r in records:
        kind = KIND_OF_ACTION[r.action]
        d = r.detail or {}
        user = r.actor
        if kind == "export" and d.get("action") == "restore":
            kind = "restore"
        if kind in ("working_copy", "download", "export", "restore", "reidentify") and r.outcome != "success":
            if kind == "export" and d.get("reason") == "NO_READABLE_COPY":
                continue  # a restore the store could not serve: no refusal of the person
            kind = "denied"  # a refused read (not the requester, expired, no grant) counts as a denial
        elif kind in ("working_copy", "download") and d.get("request") in emergency_requests:
            continue  # an emergency's own copy and download: the emergency event counts its objects once
        if kind == "approval" and not d.get("approved"):
            continue
        if kind == "approved_request":
            if d.get("state") != "FULFILLED" or not d.get("requester"):
                continue
            user = d["requester"]
            rid = d.get("request")
            if rid not in approvers:
                approvers[rid] = tuple(x["approver"] for x in svc.catalog.decisions(rid) if x["approved"])
        if kind == "request" and r.outcome != "success":
            kind = "denied"
        if kind == "login_failed" and r.outcome == "success":
            continue
        if not _person(user):
            continue
        objects = int(d.get("objects") or 1) if kind in ("emergency",) else 1
        t = (tiers[r.object_ref],) if r.object_ref in tiers and tiers[r.object_ref] is not None else \
            tuple(d.get("tiers") or ())
        out.append(anomalies.AccessEvent(at=_at(r), user=user, kind=kind, objects=max(objects, 1),
                                         tiers=tuple(int(x) for x in t if isinstance(x, int) and 1 <= x <= 5),
                                         request_id=d.get("request") if isinstance(d.get("request"), str) else None,
                                         approvers=approvers.get(d.get("request"), ()) if kind == "approved_request"
                                         else ()))
    return out


def peer_groups(svc: Services) -> dict[str, str]:
    """Each person's peer group from the policy: data security officers, department heads, everyone else staff."""
    a = svc.policy.access
    groups: dict[str, str] = {}
    for users in a.requesters.values():
        for u in users:
            groups.setdefault(u, "staff")
    for d in a.departments:
        for u in d.heads:
            groups[u] = f"{d.id}-head"
    for u in a.data_security_officers:
        groups[u] = "data_security_officer"
    return groups


def gate_failed(detail: dict) -> int:
    """How many checks a recorded gate verdict failed (``gates.record``: ``failed`` and ``held`` are counts)."""
    return int(detail.get("failed") or 0) or int(detail.get("held") or 0) or 1


def _responsible(svc: Services, nature: str) -> str:
    table = svc.policy.monitoring.responsible
    return table.get(nature) or table.get("default") or "data_security_officer"


def _scope_value(v):  # noqa: ANN001, ANN202
    """An audit-safe value: numbers rounded to ints, lists kept, anything else a short token."""
    if isinstance(v, bool) or v is None or isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(round(v))
    if isinstance(v, (list, tuple)):
        return [_scope_value(x) for x in v][:20]
    if isinstance(v, dt.datetime):  # epoch seconds: the trail refuses anything that looks like a date
        return int(v.timestamp())
    text = str(v)
    try:  # a date or time written out (a finding's local day): epoch seconds too
        when = dt.datetime.fromisoformat(text)
        return int((when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp())
    except ValueError:
        return text.replace(" ", "_")[:64]


def raise_findings(svc: Services, findings: Iterable[anomalies.Finding], *, actor: str) -> list[dict]:
    """One incident per finding (by its stable key); returns the incidents that are new."""
    new = []
    for f in findings:
        scope = {"count": f.count, "baseline": _scope_value(f.baseline), "tiers": list(f.tiers),
                 "window_start_epoch": _scope_value(f.window_start), "window_end_epoch": _scope_value(f.window_end),
                 **{k: _scope_value(v) for k, v in sorted(f.detail.items())[:12]}}
        inc, created = svc.catalog.raise_incident(
            source_key=f"finding:{f.key}"[:256], nature=f.rule, level=f.level, user=f.user, scope=scope,
            responsible_role=_responsible(svc, f.rule), actor=actor)
        if created:
            new.append(inc)
    return new


def _raise(svc: Services, key: str, nature: str, level: str, scope: dict, *, actor: str,
           user: str | None = None) -> dict | None:
    inc, created = svc.catalog.raise_incident(source_key=key, nature=nature, level=level, user=user,
                                              scope={k: _scope_value(v) for k, v in scope.items()},
                                              responsible_role=_responsible(svc, nature), actor=actor)
    return inc if created else None


def scan(svc: Services, *, now: dt.datetime, since: dt.datetime, actor: str) -> list[dict]:
    """Incidents from the trail and the catalog since ``since``; returns the new ones."""
    from imaging_lifecycle import anchor

    mon = svc.policy.monitoring
    new: list[dict | None] = []
    # (Emergency access is an anomaly rule of its own: every one is a finding, level emergency.)
    records = svc.catalog.audit.by_actions(("gate.run", "copy.verify", "security.alert"), since=since, until=now)
    rejected = []
    for r in records:
        d = r.detail or {}
        if r.action == "gate.run" and r.outcome != "success":
            new.append(_raise(svc, f"gate:{r.seq}", "gate_failure", "major",
                              {"gate": d.get("gate"), "failed": gate_failed(d), "held": int(d.get("held") or 0),
                               "run": r.actor, "seq": r.seq}, actor=actor))
        elif r.action == "copy.verify" and r.outcome != "success" and d.get("zone") == "backup":
            new.append(_raise(svc, f"restore:{r.seq}", "backup_mismatch", "major",
                              {"object": r.object_ref, "reason": d.get("reason"), "seq": r.seq}, actor=actor))
        elif r.action == "security.alert" and "calling_ae" in d:  # the receiver refused an association
            rejected.append(r)
    # Bursts of rejected associations: so many within one fixed window (windows are counted from the
    # epoch, so a later run with a different look-back sees the same windows and raises nothing twice).
    width = max(int(mon.association_window.total_seconds()), 60)
    buckets: dict[int, list] = {}
    for r in rejected:
        buckets.setdefault(int(_at(r).timestamp()) // width, []).append(r)
    for bucket, rs in sorted(buckets.items()):
        if len(rs) >= mon.association_burst:
            reasons = Counter(str((x.detail or {}).get("reason")) for x in rs)
            new.append(_raise(svc, f"associations:{width}:{bucket}", "rejected_associations", "major",
                              {"count": len(rs), "reasons": sorted(reasons), "window_start_epoch": bucket * width},
                              actor=actor))
    overdue = svc.catalog.overdue(now - mon.overdue_grace)
    if overdue:
        day = now.strftime("%Y-%m-%d")
        new.append(_raise(svc, f"overdue:{day}", "overdue_deletion", "major",
                          {"objects": len(overdue), "oldest_deadline": min(d for _, d in overdue)}, actor=actor))
    result, found = anchor.verify(svc)
    problems = sorted({f"{p.get('problem', 'PROBLEM')}:{p.get('seq')}" for p in found.problems})
    if not result.ok or problems:
        codes = ([result.code] if not result.ok else []) + problems
        # Keyed on what is broken (not on the head, which moves every hour): one incident per break.
        new.append(_raise(svc, f"audit:{result.first_bad_seq}:{','.join(codes)}"[:256], "audit_chain_break",
                          "emergency", {"first_bad_seq": result.first_bad_seq,
                                        "problems": [c.split(":")[0] for c in codes]}, actor=actor))
    return [n for n in new if n]


def detect(svc: Services, *, now: dt.datetime, actor: str, scan_since: dt.datetime | None = None) -> dict:
    """One detection run: anomaly findings and the other sources, raised as incidents; the new ones returned."""
    now = plain_utc(now)  # Airflow's is pendulum
    events = access_events(svc, since=now - LOOKBACK, until=now)
    findings = anomalies.detect(events, now=now, rules=svc.policy.monitoring.rules, peers=peer_groups(svc))
    new = raise_findings(svc, findings, actor=actor)
    new += scan(svc, now=now, since=scan_since or now - dt.timedelta(days=2), actor=actor)
    return {"events": len(events), "findings": len(findings), "new": [i["id"] for i in new],
            "levels": dict(Counter(i["level"] for i in new))}


class NotResponsible(PermissionError):
    """This person may not work this incident: not in its responsible role, or the person it is about."""


def may_respond(svc: Services, incident: dict, person: str) -> str | None:
    """None if ``person`` may act on the incident, else a reason code."""
    if person == incident.get("user"):
        return "IS_THE_SUBJECT"  # nobody closes an incident about themselves
    role = incident["responsible_role"]
    holders = set(svc.policy.monitoring.responders.get(role, []))
    holders |= set(svc.policy.access.data_security_officers)  # the DSOs may always act
    return None if person in holders else "NOT_RESPONSIBLE"


def step(svc: Services, incident_id: str, state: str, *, actor: str, action: str | None = None) -> dict:
    """A named person acknowledges, contains or resolves an incident (audited, with the response time).

    Only a holder of the incident's responsible role (or a data security officer) may, and never
    the person the incident is about; a refusal is audited.
    """
    reason = may_respond(svc, svc.catalog.incident(incident_id), actor)
    if reason is not None:
        svc.catalog.audit.append(actor, "access.denied", outcome="failure",
                                 detail={"incident": incident_id, "action": "incident_" + state.lower(),
                                         "reason": reason})
        raise NotResponsible(f"refusing: {reason}")
    inc = svc.catalog.advance_incident(incident_id, state, actor=actor, action=action)
    return {"id": inc["id"], "state": inc["state"]}
