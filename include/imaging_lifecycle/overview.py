"""The one query layer: what the operator's Lifecycle view, ``report summary --json`` and the compliance report show.

:func:`summary` reads the catalog, the audit trail and the anchors (never a
patient identifier: catalog ids, counts, codes, user names) and returns one
JSON-safe dict; every consumer renders that dict, so the page, the CLI and the
PDF cannot disagree. The shape is the one ``report_render`` documents.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

from imaging_lifecycle.catalog.audit import parse_ts
from imaging_lifecycle.catalog.audit import plain_utc as utc
from imaging_lifecycle.services import Services

__all__ = ["summary", "iso"]

UTC = dt.timezone.utc


def iso(when: dt.datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds") if when else None


def _incident(i: dict) -> dict:
    done = i.get("acknowledged_at") or i.get("resolved_at")
    return {"id": i["id"], "nature": i["nature"], "level": i["level"], "user": i.get("user"),
            "detected_at": iso(i["detected_at"]), "acknowledged_at": iso(i.get("acknowledged_at")),
            "resolved_at": iso(i.get("resolved_at")), "responsible_role": i["responsible_role"],
            "state": i["state"],
            "response_seconds": round((done - i["detected_at"]).total_seconds(), 1) if done else None}


def _audit_status(svc: Services) -> dict:
    from imaging_lifecycle import anchor

    result, found = anchor.verify(svc)
    newest = found.newest
    anchor_at = None
    if newest is not None:
        rec = svc.catalog.audit.records(after_seq=newest[0] - 1, limit=1)
        anchor_at = iso(parse_ts(rec[0].ts)) if rec else None
    return {"verified": bool(result.ok) and not found.problems, "records": int(result.count),
            "head_seq": int(result.head_seq or svc.catalog.audit.head()[0]),
            "verified_at": iso(dt.datetime.now(UTC)),
            "anchor": {"seq": newest[0], "at": anchor_at, "signature_valid": True} if newest else None,
            "problems": sorted({str(p.get("problem", "PROBLEM")) for p in found.problems}
                               | ({result.code} if not result.ok else set()))}


def summary(svc: Services, *, now: dt.datetime | None = None, period_start: dt.datetime | None = None,
            period_end: dt.datetime | None = None, verify_audit: bool = True) -> dict:
    """Everything the view and the report show; the period defaults to the 30 days before ``now``."""
    cat = svc.catalog
    now = utc(now or dt.datetime.now(UTC))
    end = utc(period_end or now)
    start = utc(period_start or end - dt.timedelta(days=30))
    grace = svc.policy.monitoring.overdue_grace

    deletions = cat.deletions_between(start, end)
    lags = [d["lag_seconds"] for d in deletions if d["lag_seconds"] is not None]
    overdue_now = len(cat.overdue(now - grace))

    trail = cat.audit.by_actions(("gate.run", "copy.verify", "key.rotate", "access.decision", "access.outcome",
                                  "access.request", "access.emergency", "access.emergency_review"),
                                 since=start, until=end + dt.timedelta(seconds=1))
    gate_failures, verify_at, verify_ok, verify_failed, rotations = [], None, 0, 0, defaultdict(Counter)
    per_approver: dict[str, Counter] = defaultdict(Counter)
    outcomes: Counter = Counter()
    emergencies, reviewed = [], set()
    for r in trail:
        d = r.detail or {}
        if r.action == "gate.run" and r.outcome != "success":
            gate_failures.append({"gate": str(d.get("gate")), "at": iso(parse_ts(r.ts)), "run": r.actor,
                                  "failed": int(d.get("failed") or 0) or int(d.get("held") or 0) or 1})
        elif r.action == "copy.verify" and (d.get("zone") in (None, "backup") or "sample" in d):
            verify_at = iso(parse_ts(r.ts))
            verify_ok += r.outcome == "success"
            verify_failed += r.outcome != "success"
        elif r.action == "key.rotate":
            day = r.ts[:10]
            rotations[day]["keks"] += d.get("step") == "rotate"
            rotations[day]["rewrapped"] += d.get("step") == "rewrap"
        elif r.action == "access.decision":
            per_approver[r.actor]["approved" if d.get("approved") else "rejected"] += 1
        elif r.action == "access.outcome":
            outcomes[str(d.get("state"))] += 1
            if d.get("reason") == "TIMEOUT":
                outcomes["TIMED_OUT"] += 1
        elif r.action == "access.request":
            outcomes["REQUESTED"] += 1
            if r.outcome != "success":
                outcomes["REFUSED"] += 1
        elif r.action == "access.emergency":
            emergencies.append({"request_id": str(d.get("request")), "user": r.actor, "at": iso(parse_ts(r.ts)),
                                "hours": d.get("hours"), "reviewed": False})
        elif r.action == "access.emergency_review":
            reviewed.add(str(d.get("request")))
    for e in emergencies:
        e["reviewed"] = e["request_id"] in reviewed
    destroyed = Counter(r.ts[:10] for r in cat.audit.by_actions(("key.destroy",), since=start, until=end)
                        if (r.detail or {}).get("step") == "rotation")

    pending = [{"request_id": q["id"], "action": q["action"], "requester": q["requester"], "state": q["state"],
                "since": iso(q["created_at"])} for q in cat.requests(state="PENDING")]
    roles = []
    a = svc.policy.access
    people: dict[str, list[str]] = defaultdict(list)
    for u in a.data_security_officers:
        people[u].append("data_security_officer")
    for dept in a.departments:
        for u in dept.heads:
            people[u].append(f"head:{dept.id}")
    for action, users in a.requesters.items():
        for u in users:
            people[u].append(f"requests:{action}")
    for u in a.emergency.users:
        people[u].append("emergency")
    for u in a.agreement_admins:
        people[u].append("agreement_admin")
    for u in svc.policy.review.reviewers:
        people[u].append("reviewer")
    roles = [{"user": u, "roles": sorted(set(r))} for u, r in sorted(people.items())]
    requested = Counter(r.actor for r in trail if r.action in ("access.request", "access.emergency"))
    activity = [{"user": u, "requested": requested.get(u, 0), "approved": per_approver[u]["approved"],
                 "rejected": per_approver[u]["rejected"]}
                for u in sorted(set(people) | set(requested) | set(per_approver))]

    open_incidents = [_incident(i) for i in cat.incidents(open_only=True)]
    period_incidents = [_incident(i) for i in cat.incidents(since=start) if i["detected_at"] < end]
    findings = [i for i in period_incidents if i["nature"] in _ANOMALY_RULES]
    return {
        "generated_at": iso(now),
        "period": {"start": iso(start), "end": iso(end)},
        "objects": cat.counts_by_tier_zone_state(),
        "due": {"next_24h": cat.deadlines_between(now, now + dt.timedelta(hours=24)),
                "next_72h": cat.deadlines_between(now, now + dt.timedelta(hours=72))},
        "overdue": overdue_now,
        "adherence": {"days": (end - start).days, "deletions": len(deletions),
                      "max_lag_seconds": round(max(lags), 1) if lags else None, "overdue_now": overdue_now},
        "deletions": [{**d, "deleted_at": iso(d["deleted_at"]), "deadline": iso(d["deadline"])} for d in deletions],
        "gate_failures": gate_failures[-50:],
        "quarantine": cat.quarantine_reasons(),
        "review_queue": {"count": cat.count_in_state("NEEDS_REVIEW"), "items": cat.ids_in_state("NEEDS_REVIEW")},
        "requests": {"total": outcomes["REQUESTED"], "approved": outcomes["FULFILLED"] + outcomes["APPROVED"],
                     "denied": outcomes["DENIED"], "refused": outcomes["REFUSED"], "timed_out": outcomes["TIMED_OUT"],
                     "pending": pending,
                     "per_approver": [{"approver": u, "approved": c["approved"], "rejected": c["rejected"]}
                                      for u, c in sorted(per_approver.items())]},
        "emergencies": emergencies,
        "incidents": {"open": open_incidents, "period": period_incidents},
        "anomalies": {"findings": len(findings),
                      "by_rule": [{"rule": k, "count": v} for k, v in sorted(Counter(i["nature"]
                                                                                     for i in findings).items())]},
        "audit": _audit_status(svc) if verify_audit else {"verified": False, "records": 0, "head_seq": 0,
                                                          "verified_at": None, "anchor": None, "problems": []},
        "backup_verification": {"at": verify_at, "checked": verify_ok + verify_failed, "failed": verify_failed},
        "key_rotations": [{"at": day, "keks": c["keks"], "rewrapped": c["rewrapped"],
                           "destroyed_versions": destroyed.get(day, 0)} for day, c in sorted(rotations.items())],
        "reports": [{"id": r["id"], "period_start": iso(r["period_start"]), "period_end": iso(r["period_end"]),
                     "created_at": iso(r["created_at"])} for r in cat.reports()],
        "permissions": {"roles": roles, "activity": activity},
    }


#: Incident natures that are anomaly findings (the rules of ``anomalies``).
_ANOMALY_RULES = frozenset({"off_hours", "spike_hour", "spike_day", "accumulation", "approver_accumulation",
                            "approver_spike", "colluding_pair", "approver_requests", "denied_burst",
                            "login_failed_burst", "emergency"})
