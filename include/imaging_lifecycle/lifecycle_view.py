"""The operator's Lifecycle page: the one summary (``overview.summary``) as one HTML page, no scripts, no URLs out.

Every number on the page is a value of the summary, shown with ``report_render.fmt_int``, inside an
element whose ``data-k`` names its summary path, so a test can read the page and compare it with the
catalog. Links go to Airflow's own pages (Required Actions, a DAG run) and to this plugin's report
downloads; the page itself is served by the plugin app behind Airflow's login.
"""

from __future__ import annotations

import html
from urllib.parse import quote

from imaging_lifecycle.report_render import fmt_int

__all__ = ["render"]

_CSS = """
body{font-family:sans-serif;margin:1.5rem;color:#222}h1{font-size:1.4rem}h2{font-size:1.05rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #bbb;padding:.2rem .5rem;text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{border:1px solid #bbb;border-radius:6px;padding:.6rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.6rem}.bad{color:#b00020}.ok{color:#0a7d28}.muted{color:#777}
"""


def _e(v) -> str:  # noqa: ANN001
    return html.escape("" if v is None else str(v))


def _n(path: str, value: int, *, bad: bool = False) -> str:
    cls = ' class="bad"' if bad else ""
    return f'<span data-k="{_e(path)}"{cls}>{fmt_int(int(value))}</span>'


def _table(head: list[str], rows: list[list[str]], empty: str = "none") -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render(s: dict, *, airflow_base: str = "", reports_base: str = "/lifecycle/api/reports") -> str:
    """The page for summary ``s``; ``airflow_base`` prefixes links into Airflow's UI."""
    audit = s["audit"]
    overdue = int(s["overdue"])
    cards = [
        ("Overdue deletions", _n("overdue", overdue, bad=overdue > 0)),
        ("Due in 24 h", _n("due.next_24h", s["due"]["next_24h"])),
        ("Due in 72 h", _n("due.next_72h", s["due"]["next_72h"])),
        ("In quarantine", _n("quarantine.total", sum(q["count"] for q in s["quarantine"]))),
        ("Waiting for review", _n("review_queue.count", s["review_queue"]["count"])),
        ("Pending approvals", _n("requests.pending", len(s["requests"]["pending"]))),
        ("Open incidents", _n("incidents.open", len(s["incidents"]["open"]), bad=bool(s["incidents"]["open"]))),
    ]
    lag = s["adherence"]["max_lag_seconds"]
    anchor = audit.get("anchor")
    chain = (f'<p data-k="audit.verified" class="{"ok" if audit["verified"] else "bad"}">'
             f'{"Intact" if audit["verified"] else "NOT intact"}: verified up to record '
             f'{_n("audit.head_seq", audit["head_seq"])} at {_e(audit["verified_at"])}. ')
    chain += (f'Newest signed anchor: record {_n("audit.anchor.seq", anchor["seq"])} at {_e(anchor["at"])}, '
              f'signature {"valid" if anchor["signature_valid"] else "INVALID"}.' if anchor
              else '<span class="bad">No signed anchor yet.</span>')
    if audit["problems"]:
        chain += f' <span class="bad">Problems: {_e(", ".join(audit["problems"]))}</span>'
    chain += "</p>"
    required = f"{airflow_base}/required_actions"
    bv = s["backup_verification"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Lifecycle</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Imaging lifecycle</h1><p class='muted'>as of {_e(s['generated_at'])}; period "
        f"{_e(s['period']['start'])} to {_e(s['period']['end'])}</p>",
        "<div class='cards'>" + "".join(f"<div class='card'>{_e(t)}<b>{v}</b></div>" for t, v in cards) + "</div>",
        "<h2 id='objects'>Objects per tier, zone and state</h2>",
        _table(["tier", "zone", "state", "objects"],
               [[_e(o["tier"]), _e(o["zone"]), _e(o["state"]),
                 _n(f"objects.{o['tier']}.{o['zone']}.{o['state']}", o["count"])] for o in s["objects"]]),
        "<h2 id='adherence'>72-hour adherence (last 30 days)</h2>",
        f"<p>{_n('adherence.deletions', s['adherence']['deletions'])} deletions certified; largest lag from "
        f"deadline to certificate: <span data-k='adherence.max_lag_seconds'>"
        f"{_e(round(lag) if lag is not None else 'none')}</span> s.</p>",
        "<h2 id='quarantine'>Quarantine</h2>",
        _table(["reason", "objects"], [[_e(q["reason"]), _n(f"quarantine.{q['reason']}", q["count"])]
                                       for q in s["quarantine"]]),
        "<h2 id='review'>Review queue</h2>",
        _table(["catalog id"], [[_e(i)] for i in s["review_queue"]["items"][:50]], "nothing waits for review"),
        "<h2 id='approvals'>Pending approvals</h2>",
        f"<p><a href='{_e(required)}'>Answer them in Airflow's Required Actions</a></p>",
        _table(["request", "action", "requester", "since"],
               [[_e(p["request_id"]), _e(p["action"]), _e(p["requester"]), _e(p["since"])]
                for p in s["requests"]["pending"]], "no request waits"),
        "<h2 id='gates'>Gate failures</h2>",
        _table(["gate", "when", "failed", "run"],
               [[_e(g["gate"]), _e(g["at"]), _n("gate_failures.failed", g["failed"]), _run_link(g["run"], airflow_base)]
                for g in s["gate_failures"]], "no gate failed"),
        "<h2 id='incidents'>Open incidents</h2>",
        _table(["id", "level", "nature", "user", "detected", "responsible"],
               [[_e(i["id"]), _e(i["level"]), _e(i["nature"]), _e(i["user"]), _e(i["detected_at"]),
                 _e(i["responsible_role"])] for i in s["incidents"]["open"]], "no open incident"),
        "<h2 id='audit'>Audit trail</h2>", chain,
        "<h2 id='backups'>Backup restore verification</h2>",
        f"<p>latest: {_e(bv['at'] or 'none')}; {_n('backup_verification.checked', bv['checked'])} checked, "
        f"{_n('backup_verification.failed', bv['failed'], bad=bv['failed'] > 0)} failed.</p>",
        "<h2 id='keys'>Key rotations</h2>",
        _table(["day", "KEKs rotated", "keys re-wrapped", "old versions destroyed"],
               [[_e(k["at"]), _e(k["keks"]), _e(k["rewrapped"]), _e(k["destroyed_versions"])]
                for k in s["key_rotations"]], "no rotation in the period"),
        "<h2 id='reports'>Compliance reports</h2>",
        _table(["period", "made", "download"],
               [[f"{_e(r['period_start'])} to {_e(r['period_end'])}", _e(r["created_at"]),
                 f"<a href='{_e(reports_base)}/{quote(r['id'])}/pdf'>PDF</a> "
                 f"<a href='{_e(reports_base)}/{quote(r['id'])}/html'>HTML</a>"] for r in s["reports"]],
               "no report yet"),
        "</body></html>",
    ]
    return "".join(parts)


def _run_link(actor: str | None, base: str) -> str:
    """A link to the DAG run a gate verdict came from (its actor is ``dag/task/run``)."""
    bits = (actor or "").split("/", 2)
    if len(bits) != 3:
        return _e(actor)
    dag, _task, run = bits
    return f"<a href='{_e(base)}/dags/{quote(dag)}/runs/{quote(run)}'>{_e(dag)}</a>"
