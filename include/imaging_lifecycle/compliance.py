"""The compliance report: one period's summary rendered to HTML and PDF, stored encrypted in the audit zone.

The monthly ``compliance_report`` DAG (and ``imaging-lifecycle report make``
for any period) builds :func:`overview.summary` for the period, renders it
(:mod:`report_render`: every section, plots, a permission review) and stores
both files encrypted, each under its own data key (KEK scope ``reports``), in
the ``audit`` zone. The catalog keeps where they are and the PDF's SHA-256;
reading one back (:func:`read`) is audited. The Lifecycle view lists and serves them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import uuid
from dataclasses import asdict

from imaging_lifecycle import overview, report_render
from imaging_lifecycle.catalog.audit import plain_utc
from imaging_lifecycle.catalog.records import Sealed
from imaging_lifecycle.services import Services

__all__ = ["ZONE", "SCOPE", "make", "read", "month_before", "hospital_tz"]

ZONE = "audit"
SCOPE = "reports"
#: Reports are at the top tier's handling: they name people and counts, never patients, but say a lot.
KINDS = {"pdf": "application/pdf", "html": "text/html; charset=utf-8"}


def hospital_tz(svc: Services) -> str:
    """The hospital's time zone: the detection calendar's (``monitoring.rules.calendar.timezone``)."""
    from imaging_lifecycle import anomalies

    return anomalies.resolve_rules(svc.policy.monitoring.rules)["calendar"]["timezone"]


def month_before(day: dt.datetime, tz: str = "UTC") -> tuple[dt.datetime, dt.datetime]:
    """The calendar month before ``day``'s month, in time zone ``tz``, as UTC instants."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    local = plain_utc(day).astimezone(zone)
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    prev = (first - dt.timedelta(days=1)).replace(day=1)
    return plain_utc(prev.replace(tzinfo=zone)), plain_utc(first.replace(tzinfo=zone))


def _seal(svc: Services, report_id: str, kind: str, data: bytes) -> dict:
    sealed = svc.encrypted.put(io.BytesIO(data), catalog_id=report_id, zone=ZONE, tier=svc.policy.highest_tier,
                               scope_id=SCOPE, key=f"reports/{report_id}.{kind}", size=len(data))
    d = asdict(sealed)
    d["wrapped_dek"] = base64.b64encode(sealed.wrapped_dek).decode()
    return d


def make(svc: Services, *, period_start: dt.datetime, period_end: dt.datetime, actor: str,
         now: dt.datetime | None = None) -> dict:
    """Render and store the report for ``[period_start, period_end)``; returns its id and counts (XCom-safe)."""
    period_start, period_end = plain_utc(period_start), plain_utc(period_end)
    if period_end <= period_start:
        raise ValueError("the report period must end after it starts")
    summary = overview.summary(svc, now=now or period_end, period_start=period_start, period_end=period_end)
    pdf = report_render.render_pdf(summary)
    html = report_render.render_html(summary).encode()
    report_id = uuid.uuid4().hex
    row = svc.catalog.add_report(report_id, period_start=period_start, period_end=period_end, actor=actor,
                                 sealed_pdf=_seal(svc, report_id, "pdf", pdf),
                                 sealed_html=_seal(svc, report_id, "html", html),
                                 sha256=hashlib.sha256(pdf).hexdigest())
    return {"report": row["id"], "pdf_bytes": len(pdf), "deletions": summary["adherence"]["deletions"],
            "overdue": summary["overdue"], "incidents": len(summary["incidents"]["period"])}


def read(svc: Services, report_id: str, kind: str, *, actor: str) -> bytes:
    """The decrypted report file (``pdf`` or ``html``); every read is audited under the reader's name."""
    if kind not in KINDS:
        raise ValueError(f"a report is {' or '.join(KINDS)}")
    row = svc.catalog.report(report_id)
    if row is None:
        raise FileNotFoundError(f"no report {report_id}")
    d = dict(row[f"sealed_{kind}"])
    d["wrapped_dek"] = base64.b64decode(d["wrapped_dek"])
    sealed = Sealed(**d)
    with svc.encrypted.open(sealed, report_id) as reader:
        data = reader.read()
    svc.catalog.audit.append(actor, "report.read", detail={"report": report_id, "kind": kind})
    return data
