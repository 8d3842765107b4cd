"""The monthly compliance report, rendered from one summary dict as HTML and as PDF.

A data security officer hands this document to a regulator. The numbers come
from the query layer as a plain dict (shape: :data:`SUMMARY_SHAPE`); this
module only checks that dict and renders it. It never reads a database, a
clock or the network, and it imports nothing else from the package.

* :func:`render_html` returns one self-contained HTML page (styles inline,
  plots as ``data:image/png`` URIs), readable in a browser as it is.
* :func:`render_pdf` lays the same page out on A4 with weasyprint: running
  header (title, period), footer (summary time, ``page N of M``). Weasyprint is
  given a URL fetcher that refuses every URL except ``data:``, and the page
  references none, so nothing is fetched.

Every section of :data:`SECTIONS` is always present, with ``none in this
period`` where its list is empty. Every number a section shows is in a table
as text (the plots repeat them, never replace them), formatted by one helper
per kind: :func:`fmt_int` (plain digits, ``1234``, no grouping),
:func:`fmt_duration` (``h:mm:ss``), :func:`fmt_time` (UTC, ``YYYY-MM-DD
HH:MM:SS``). Every string from the summary is HTML-escaped. The output is
deterministic: the same summary renders the same HTML, byte for byte.

The input is checked up front (:func:`validate`): a missing key or a value of
the wrong type raises :class:`ReportInputError` whose message names the key
path only (``summary.audit.records must be an int``), never the value.
Unknown extra keys are ignored. The summary carries no patient data (object
ids, user names, counts, times) and nothing is added.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "NONE_TEXT",
    "SECTIONS",
    "SUMMARY_SHAPE",
    "ReportInputError",
    "fmt_duration",
    "fmt_int",
    "fmt_time",
    "render_html",
    "render_pdf",
    "validate",
]

DEFAULT_TITLE = "Imaging lifecycle compliance report"
NONE_TEXT = "none in this period"

SECTIONS: tuple[tuple[str, str], ...] = (
    ("data", "Data per tier and zone"),
    ("deletions", "Deletions and certificates"),
    ("adherence", "72-hour adherence"),
    ("requests", "Requests, approvals and denials"),
    ("emergencies", "Emergency access"),
    ("incidents", "Anomalies and incidents"),
    ("audit", "Audit verification and anchors"),
    ("backups", "Backup restore tests"),
    ("keys", "Key rotations"),
    ("permissions", "Permission review"),
)


class ReportInputError(ValueError):
    """The summary lacks a required key or has a value of the wrong type (the message is the key path)."""


# --------------------------------------------------------------------------- input shape and validation


@dataclass(frozen=True)
class _Opt:
    inner: object  # the value may also be None


@dataclass(frozen=True)
class _ListOf:
    item: object


_INT, _NUM, _STR, _BOOL, _TS = "int", "number", "str", "bool", "timestamp"

_INCIDENT = {
    "id": _STR, "nature": _STR, "level": _STR, "user": _Opt(_STR), "detected_at": _TS,
    "acknowledged_at": _Opt(_TS), "resolved_at": _Opt(_TS), "response_seconds": _Opt(_NUM),
    "responsible_role": _STR,
}

#: The summary's required keys and value types. A dict is a nested mapping, ``_ListOf`` a list,
#: ``_Opt`` allows None; ``int`` is a non-negative int (not bool), ``number`` a finite int or float,
#: ``timestamp`` an ISO-8601 string with a UTC offset.
SUMMARY_SHAPE: dict = {
    "generated_at": _TS,
    "period": {"start": _TS, "end": _TS},
    "objects": _ListOf({"tier": _INT, "zone": _STR, "state": _STR, "count": _INT}),
    "due": {"next_24h": _INT, "next_72h": _INT},
    "overdue": _INT,
    "adherence": {"days": _INT, "deletions": _INT, "max_lag_seconds": _Opt(_NUM), "overdue_now": _INT},
    "deletions": _ListOf({
        "object_id": _STR, "certificate_id": _STR, "deleted_at": _TS, "deadline": _Opt(_TS),
        "lag_seconds": _Opt(_NUM), "zones": _ListOf(_STR), "method": _STR, "anchor_seq": _Opt(_INT),
        "signed": _BOOL,
    }),
    "gate_failures": _ListOf({"gate": _STR, "at": _TS, "run": _Opt(_STR), "failed": _INT}),
    "quarantine": _ListOf({"reason": _STR, "count": _INT}),
    "review_queue": {"count": _INT, "items": _ListOf(_STR)},
    "requests": {
        "total": _INT, "approved": _INT, "denied": _INT, "refused": _INT, "timed_out": _INT,
        "pending": _ListOf({"request_id": _STR, "action": _STR, "requester": _STR, "state": _STR, "since": _TS}),
        "per_approver": _ListOf({"approver": _STR, "approved": _INT, "rejected": _INT}),
    },
    "emergencies": _ListOf({"request_id": _STR, "user": _STR, "at": _TS, "hours": _NUM, "reviewed": _BOOL}),
    "incidents": {"open": _ListOf(_INCIDENT), "period": _ListOf(_INCIDENT)},
    "anomalies": {"findings": _INT, "by_rule": _ListOf({"rule": _STR, "count": _INT})},
    "audit": {
        "verified": _BOOL, "records": _INT, "head_seq": _INT, "verified_at": _TS,
        "anchor": _Opt({"seq": _INT, "at": _TS, "signature_valid": _BOOL}), "problems": _ListOf(_STR),
    },
    "backup_verification": {"at": _Opt(_TS), "checked": _INT, "failed": _INT},
    "key_rotations": _ListOf({"at": _TS, "keks": _INT, "rewrapped": _INT, "destroyed_versions": _INT}),
    "reports": _ListOf({"id": _STR, "period_start": _TS, "period_end": _TS, "created_at": _TS}),
    "permissions": {
        "roles": _ListOf({"user": _STR, "roles": _ListOf(_STR)}),
        "activity": _ListOf({"user": _STR, "requested": _INT, "approved": _INT, "rejected": _INT}),
    },
}

_WHAT = {_INT: "a non-negative int", _NUM: "a finite number", _STR: "a str", _BOOL: "a bool",
         _TS: "an ISO-8601 timestamp with a UTC offset"}


def _parse_time(value: str) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.utcoffset() is not None else None


def _check(value, spec, path: str, nullable: bool = False) -> None:
    def fail(what: str) -> None:
        raise ReportInputError(f"{path} must be {what}{' or None' if nullable else ''}")

    if isinstance(spec, _Opt):
        if value is None:
            return
        _check(value, spec.inner, path, nullable=True)
    elif isinstance(spec, dict):
        if not isinstance(value, Mapping):
            fail("a dict")
        for key, sub in spec.items():
            if key not in value:
                raise ReportInputError(f"{path}.{key} is missing")
            _check(value[key], sub, f"{path}.{key}")
    elif isinstance(spec, _ListOf):
        if not isinstance(value, list | tuple):
            fail("a list")
        for i, item in enumerate(value):
            _check(item, spec.item, f"{path}[{i}]")
    elif spec == _INT:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            fail(_WHAT[_INT])
    elif spec == _NUM:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            fail(_WHAT[_NUM])
    elif spec == _STR:
        if not isinstance(value, str):
            fail(_WHAT[_STR])
    elif spec == _BOOL:
        if not isinstance(value, bool):
            fail(_WHAT[_BOOL])
    elif spec == _TS:
        if not isinstance(value, str) or _parse_time(value) is None:
            fail(_WHAT[_TS])
    else:  # pragma: no cover - a mistake in SUMMARY_SHAPE
        raise AssertionError(f"unknown spec at {path}")


def validate(summary: object) -> None:
    """Raise :class:`ReportInputError` (message: the key path) unless ``summary`` fits :data:`SUMMARY_SHAPE`."""
    _check(summary, SUMMARY_SHAPE, "summary")
    period = summary["period"]  # type: ignore[index]
    if _parse_time(period["end"]) <= _parse_time(period["start"]):
        raise ReportInputError("summary.period.end must be after summary.period.start")


# --------------------------------------------------------------------------- formatting (one helper per kind)


def fmt_int(n: int) -> str:
    """An integer as the report prints it: plain digits, no grouping (``1234``, ``-5``)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError("fmt_int takes an int")
    return str(n)


def fmt_duration(seconds: float | None) -> str:
    """A duration in seconds as ``h:mm:ss`` (hours unbounded, rounded to the second; ``n/a`` for None)."""
    if seconds is None:
        return "n/a"
    total = round(seconds)
    sign, total = ("-" if total < 0 else ""), abs(total)
    return f"{sign}{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


def fmt_time(value: str | None) -> str:
    """An ISO-8601 timestamp (with offset) in UTC as ``YYYY-MM-DD HH:MM:SS`` (``n/a`` for None)."""
    if value is None:
        return "n/a"
    t = _parse_time(value)
    if t is None:
        raise ValueError("not an ISO-8601 timestamp with a UTC offset")
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_hours(hours: float) -> str:
    return fmt_int(hours) if isinstance(hours, int) else f"{hours:.1f}"


# --------------------------------------------------------------------------- HTML building blocks


class _Safe(str):
    """A string that is already HTML (escaped text or markup built here): never escaped again."""


def _h(value: object) -> _Safe:
    """``value`` as HTML: markup built here passes, every other string is escaped, ints via fmt_int."""
    if isinstance(value, _Safe):
        return value
    if isinstance(value, bool):
        return _Safe("yes" if value else "no")
    if isinstance(value, int):
        return _Safe(fmt_int(value))
    if isinstance(value, str):
        return _Safe(html.escape(value, quote=True))
    raise TypeError(f"no HTML form for {type(value).__name__}")  # pragma: no cover - floats are formatted first


def _alert(value: object, when: bool) -> _Safe:
    """``value``, in red and bold when ``when`` (an overdue count, a failed check)."""
    return _Safe(f'<span class="alert">{_h(value)}</span>') if when else _h(value)


def _yes_no(value: bool) -> _Safe:
    """``yes``, or ``no`` in red (every yes/no in the report is a check that should pass)."""
    return _alert("yes" if value else "no", not value)


def _none() -> _Safe:
    return _Safe(f'<p class="none">{NONE_TEXT}</p>')


def _table(headers: list[str], rows: list[list], *, cls: str = "", numeric: set[int] = frozenset(),
           widths: list[int] | None = None) -> _Safe:
    """A bordered table; ``numeric`` columns align right; ``widths`` (percent) make a fixed layout (wide tables).

    No rows: ``none in this period``.
    """
    if not rows:
        return _none()

    def attr(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    cols = ""
    if widths is not None:
        cls += " fixed"
        cols = "<colgroup>" + "".join(f'<col style="width: {w:d}%">' for w in widths) + "</colgroup>"
    head = "".join(f"<th{attr(i)}>{_h(t)}</th>" for i, t in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{attr(i)}>{_h(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return _Safe(f'<table class="grid {cls}">{cols}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def _kv(rows: list[tuple[str, object]]) -> _Safe:
    """A two-column label/value table (one fact per row)."""
    body = "".join(f'<tr><th>{_h(k)}</th><td class="num">{_h(v)}</td></tr>' for k, v in rows)
    return _Safe(f'<table class="grid kv"><tbody>{body}</tbody></table>')


def _figure(uri: str | None, alt: str, caption: str) -> _Safe:
    if uri is None:
        return _Safe("")
    return _Safe(f'<figure><img class="plot" src="{_h(uri)}" alt="{_h(alt)}"><figcaption>{_h(caption)}'
                 "</figcaption></figure>")


def _code(value: str) -> _Safe:
    return _Safe(f'<span class="id">{_h(value)}</span>')


def _list(items: list[str]) -> _Safe:
    return _Safe("<ul>" + "".join(f"<li>{_h(i)}</li>" for i in items) + "</ul>")


# --------------------------------------------------------------------------- plots (matplotlib, Agg, no pyplot)

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _label(text: str, limit: int = 24) -> str:
    """Text for a plot label: shortened, and ``$`` escaped so matplotlib never reads it as mathtext."""
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _tier_zone_totals(objects: list[dict]) -> tuple[list[int], list[str], dict[tuple[int, str], int]]:
    tiers = sorted({o["tier"] for o in objects})
    zones = sorted({o["zone"] for o in objects})
    totals: dict[tuple[int, str], int] = {}
    for o in objects:
        totals[o["tier"], o["zone"]] = totals.get((o["tier"], o["zone"]), 0) + o["count"]
    return tiers, zones, totals


def _plot_objects(objects: list[dict]) -> str | None:
    if not objects:
        return None
    from matplotlib.ticker import MaxNLocator

    tiers, zones, totals = _tier_zone_totals(objects)
    fig, ax = _new_figure(7.0, 3.0)
    x = list(range(len(tiers)))
    bottom = [0] * len(tiers)
    for i, zone in enumerate(zones):
        values = [totals.get((t, zone), 0) for t in tiers]
        ax.bar(x, values, bottom=bottom, label=_label(zone), color=_PALETTE[i % len(_PALETTE)], width=0.6)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(x, [f"tier {fmt_int(t)}" for t in tiers])
    ax.set_ylabel("objects")
    ax.set_title("Objects per tier, by zone", fontsize=10, loc="left")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_above(ax)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _deletion_days(summary: dict) -> tuple[list[tuple[dt.date, int, float | None]], int]:
    """(UTC day, deletions, longest lag in seconds or None) for every day of the period; deletions outside it."""
    start = _parse_time(summary["period"]["start"])
    end = _parse_time(summary["period"]["end"])
    counts: dict[dt.date, int] = {}
    lags: dict[dt.date, float] = {}
    outside = 0
    for d in summary["deletions"]:
        at = _parse_time(d["deleted_at"])
        if not start <= at < end:
            outside += 1
            continue
        day = at.astimezone(dt.timezone.utc).date()
        counts[day] = counts.get(day, 0) + 1
        if d["lag_seconds"] is not None:
            lags[day] = max(lags.get(day, -math.inf), d["lag_seconds"])
    first = start.astimezone(dt.timezone.utc).date()
    last = (end.astimezone(dt.timezone.utc) - dt.timedelta(microseconds=1)).date()
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    return [(day, counts.get(day, 0), lags.get(day)) for day in days], outside


def _legend_above(ax, handles=None, labels=None) -> None:
    """The legend in one row above the plot, right-aligned (never over the data)."""
    args = () if handles is None else (handles, labels)
    ax.legend(*args, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=4, frameon=False)


def _plot_deletions(days: list[tuple[dt.date, int, float | None]]) -> str | None:
    if not any(n for _, n, _ in days):
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = _new_figure(7.0, 3.0)
    x = list(range(len(days)))
    ax.bar(x, [n for _, n, _ in days], color=_PALETTE[0], width=0.7, label="deletions")
    ax.set_ylabel("deletions per day")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    step = max(1, math.ceil(len(days) / 15))
    ax.set_xticks(x[::step], [day.strftime("%m-%d") for day, _, _ in days][::step], fontsize=7)
    ax.set_xlabel("day (UTC)")
    lag_x = [i for i, (_, _, lag) in enumerate(days) if lag is not None]
    longest = max((days[i][2] for i in lag_x), default=0.0)
    unit, scale = ("hours", 3600) if longest >= 7200 else ("minutes", 60)
    ax2 = ax.twinx()
    ax2.plot(lag_x, [days[i][2] / scale for i in lag_x], color=_PALETTE[1], marker="D", markersize=4,
             markeredgecolor="black", markeredgewidth=0.4, linestyle="none", label=f"longest lag ({unit})")
    ax2.set_ylabel(f"longest lag ({unit})")
    ax2.set_ylim(bottom=min(0.0, *(days[i][2] / scale for i in lag_x)))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    _legend_above(ax, h1 + h2, l1 + l2)
    ax.set_title("Deletions per day", fontsize=10, loc="left")
    return _png(fig)


def _plot_approvers(per_approver: list[dict]) -> str | None:
    if not per_approver:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = _new_figure(7.0, 1.3 + 0.35 * len(per_approver))
    y = list(range(len(per_approver)))
    h = 0.38
    ax.barh([v - h / 2 for v in y], [a["approved"] for a in per_approver], height=h, color=_PALETTE[2],
            label="approved")
    ax.barh([v + h / 2 for v in y], [a["rejected"] for a in per_approver], height=h, color="#d62728",
            label="rejected")
    ax.set_yticks(y, [_label(a["approver"]) for a in per_approver], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decisions")
    _legend_above(ax)
    ax.set_title("Decisions per approver", fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- sections


def _section_data(s: dict) -> _Safe:
    objects = sorted(s["objects"], key=lambda o: (o["tier"], o["zone"], o["state"]))
    tiers, zones, totals = _tier_zone_totals(objects)
    pivot = [[f"tier {fmt_int(t)}", *[totals.get((t, z), 0) for z in zones], sum(totals.get((t, z), 0) for z in zones)]
             for t in tiers]
    if pivot:
        pivot.append([_Safe("<strong>all tiers</strong>"), *[sum(totals.get((t, z), 0) for t in tiers) for z in zones],
                      sum(o["count"] for o in objects)])
    n = len(zones) + 2
    parts = [
        _Safe("<p>Objects held now, when the summary was generated (every state counted).</p>"),
        _table(["Tier", *zones, "Total"], pivot, numeric=set(range(1, n))),
        _figure(_plot_objects(objects), "Bar chart: objects per tier, stacked by zone",
                "Objects per tier, stacked by zone (the numbers are in the tables)."),
        _Safe("<h3>By tier, zone and state</h3>"),
        _table(["Tier", "Zone", "State", "Objects"], [[o["tier"], o["zone"], o["state"], o["count"]] for o in objects],
               numeric={0, 3}),
        _Safe("<h3>Deletion due dates</h3>"),
        _kv([("Due for deletion within 24 hours", s["due"]["next_24h"]),
             ("Due for deletion within 72 hours", s["due"]["next_72h"]),
             ("Overdue for deletion now", _alert(s["overdue"], s["overdue"] > 0))]),
        _Safe("<h3>Held back at ingest</h3><h4>Quarantine</h4>"),
        _table(["Reason", "Objects"], [[q["reason"], q["count"]] for q in s["quarantine"]], numeric={1}),
        _Safe("<h4>Review queue</h4>"),
        _kv([("Objects awaiting review", s["review_queue"]["count"])]),
    ]
    items = s["review_queue"]["items"]
    if items:
        shown = f" (first {fmt_int(len(items))} shown)" if len(items) < s["review_queue"]["count"] else ""
        parts.append(_Safe(f'<p class="ids">Objects{_h(shown)}: '
                           + ", ".join(_code(i) for i in items) + "</p>"))
    parts += [
        _Safe("<h4>Quality gate failures</h4>"),
        _table(["Gate", "At", "Run", "Objects failed"],
               [[g["gate"], fmt_time(g["at"]), _code(g["run"]) if g["run"] else "n/a", g["failed"]]
                for g in s["gate_failures"]], numeric={3}),
    ]
    return _Safe("".join(parts))


def _section_deletions(s: dict) -> _Safe:
    deletions = s["deletions"]
    unsigned = sum(1 for d in deletions if not d["signed"])
    days, outside = _deletion_days(s)
    with_deletions = [(day, n, lag) for day, n, lag in days if n]
    methods = sorted({d["method"] for d in deletions})
    one_method = len(methods) == 1
    headers = ["Object / certificate", "Deleted at", "Deadline", "Lag (h:mm:ss)", "Zones", "Anchor seq", "Signed"]
    widths = [34, 13, 13, 10, 12, 9, 9]
    if not one_method:
        headers.insert(5, "Method")
        widths = [30, 11, 11, 8, 10, 14, 8, 8]
    rows = []
    for d in deletions:
        row = [_Safe(f"{_code(d['object_id'])}<br>{_code(d['certificate_id'])}"), fmt_time(d["deleted_at"]),
               fmt_time(d["deadline"]), fmt_duration(d["lag_seconds"]), ", ".join(d["zones"]),
               d["anchor_seq"] if d["anchor_seq"] is not None else "none", _yes_no(d["signed"])]
        if not one_method:
            row.insert(5, d["method"])
        rows.append(row)
    method_note = (_Safe(f"<p>Erasure method of every deletion below: {_code(methods[0])}.</p>") if one_method
                   else _Safe(""))
    return _Safe("".join([
        _kv([("Deletions certified in this report", len(deletions)),
             ("Certificates signed", len(deletions) - unsigned),
             ("Certificates not signed", _alert(unsigned, unsigned > 0)),
             *([("Deleted outside the period (not per day)", _alert(outside, True))] if outside else [])]),
        _figure(_plot_deletions(days), "Bar chart: deletions per day, with the longest lag of each day",
                "Deletions per day (bars) and the longest lag of each day (diamonds, right axis)."),
        _Safe("<h3>Per day (UTC), days with deletions</h3>"),
        _table(["Day", "Deletions", "Longest lag (h:mm:ss)"],
               [[day.isoformat(), n, fmt_duration(lag)] for day, n, lag in with_deletions], numeric={1, 2}),
        _Safe("<h3>Certificates</h3>"), method_note,
        _table(headers, rows, cls="small", numeric={3, len(headers) - 2}, widths=widths),
    ]))


def _section_adherence(s: dict) -> _Safe:
    a = s["adherence"]
    late = sum(1 for d in s["deletions"]
               if d["deadline"] is not None and _parse_time(d["deleted_at"]) > _parse_time(d["deadline"]))
    return _Safe("".join([
        _kv([("Window (days)", a["days"]),
             ("Deletions in the window", a["deletions"]),
             ("Longest lag in the window (h:mm:ss)", fmt_duration(a["max_lag_seconds"])),
             ("Overdue now", _alert(a["overdue_now"], a["overdue_now"] > 0)),
             ("Certified deletions in this report after their deadline", _alert(late, late > 0))]),
        _Safe("<p>Every object due for deletion must be erased within 72 hours. The window counts are those of the "
              "query layer; the last row is counted from the certificates in section 2.</p>"),
    ]))


def _section_requests(s: dict) -> _Safe:
    r = s["requests"]
    return _Safe("".join([
        _kv([("Requests in the period", r["total"]), ("Approved", r["approved"]), ("Denied", r["denied"]),
             ("Refused", r["refused"]), ("Timed out", r["timed_out"]), ("Pending now", len(r["pending"]))]),
        _Safe("<h3>Decisions per approver</h3>"),
        _table(["Approver", "Approved", "Rejected"],
               [[a["approver"], a["approved"], a["rejected"]] for a in r["per_approver"]], numeric={1, 2}),
        _figure(_plot_approvers(r["per_approver"]), "Bar chart: approved and rejected requests per approver",
                "Requests approved and rejected per approver (the numbers are in the table above)."),
        _Safe("<h3>Pending requests</h3>"),
        _table(["Request", "Action", "Requester", "State", "Since"],
               [[_code(p["request_id"]), p["action"], p["requester"], p["state"], fmt_time(p["since"])]
                for p in r["pending"]]),
    ]))


def _section_emergencies(s: dict) -> _Safe:
    e = s["emergencies"]
    unreviewed = sum(1 for x in e if not x["reviewed"])
    return _Safe("".join([
        _kv([("Emergency accesses in the period", len(e)),
             ("Not yet reviewed", _alert(unreviewed, unreviewed > 0))]),
        _table(["Request", "User", "At", "Hours granted", "Reviewed"],
               [[_code(x["request_id"]), x["user"], fmt_time(x["at"]), _fmt_hours(x["hours"]),
                 _yes_no(x["reviewed"])] for x in e], numeric={3}),
    ]))


def _incident_rows(incidents: list[dict]) -> list[list]:
    def times(i: dict) -> _Safe:
        return _Safe("<br>".join(f"{label} {_h(fmt_time(i[key]))}" for label, key in
                                 [("detected", "detected_at"), ("acknowledged", "acknowledged_at"),
                                  ("resolved", "resolved_at")]))

    return [[_code(i["id"]), i["nature"], _alert(i["level"], i["level"] in ("major", "emergency")),
             i["user"] if i["user"] is not None else "n/a", times(i), fmt_duration(i["response_seconds"]),
             i["responsible_role"]] for i in incidents]


_INCIDENT_HEADERS = ["Incident", "Nature", "Level", "User", "Times (UTC)", "Response (h:mm:ss)", "Responsible role"]
_INCIDENT_WIDTHS = [12, 16, 9, 12, 25, 9, 17]


def _section_incidents(s: dict) -> _Safe:
    a, inc = s["anomalies"], s["incidents"]
    return _Safe("".join([
        _kv([("Anomaly findings in the period", a["findings"]),
             ("Incidents open now", _alert(len(inc["open"]), bool(inc["open"]))),
             ("Incidents raised in the period", len(inc["period"]))]),
        _Safe("<h3>Findings per rule</h3>"),
        _table(["Rule", "Findings"], [[b["rule"], b["count"]] for b in a["by_rule"]], numeric={1}),
        _Safe("<h3>Open incidents</h3>"),
        _table(_INCIDENT_HEADERS, _incident_rows(inc["open"]), cls="small", numeric={5}, widths=_INCIDENT_WIDTHS),
        _Safe("<h3>Incidents in the period</h3>"),
        _table(_INCIDENT_HEADERS, _incident_rows(inc["period"]), cls="small", numeric={5}, widths=_INCIDENT_WIDTHS),
    ]))


def _section_audit(s: dict) -> _Safe:
    a = s["audit"]
    anchor = a["anchor"]
    rows: list[tuple[str, object]] = [
        ("Audit chain verified", _yes_no(a["verified"])),
        ("Records in the audit chain", a["records"]),
        ("Head sequence number", a["head_seq"]),
        ("Verified at", fmt_time(a["verified_at"])),
    ]
    if anchor is None:
        rows.append(("Latest signed anchor", _alert("none", True)))
    else:
        rows += [("Latest anchor sequence number", anchor["seq"]), ("Anchored at", fmt_time(anchor["at"])),
                 ("Anchor signature valid", _yes_no(anchor["signature_valid"]))]
    problems = (_Safe('<div class="alert">' + _list(a["problems"]) + "</div>") if a["problems"]
                else _none())
    return _Safe("".join([
        _kv(rows),
        _Safe("<h3>Problems found by the verification</h3>"), problems,
        _Safe("<h3>Compliance reports issued</h3>"),
        _table(["Report", "Period start", "Period end", "Created"],
               [[_code(r["id"]), fmt_time(r["period_start"]), fmt_time(r["period_end"]), fmt_time(r["created_at"])]
                for r in s["reports"]]),
    ]))


def _section_backups(s: dict) -> _Safe:
    b = s["backup_verification"]
    at = fmt_time(b["at"]) if b["at"] is not None else _alert("no restore test recorded", True)
    return _kv([("Last restore test", at), ("Objects restored and checked", b["checked"]),
                ("Objects that failed the check", _alert(b["failed"], b["failed"] > 0))])


def _section_keys(s: dict) -> _Safe:
    return _Safe("".join([
        _table(["Rotated at", "KEKs rotated", "Keys rewrapped", "Versions destroyed"],
               [[fmt_time(k["at"]), k["keks"], k["rewrapped"], k["destroyed_versions"]] for k in s["key_rotations"]],
               numeric={1, 2, 3}),
        _Safe("<p class=\"note\">KEKs rotated: key-encryption keys replaced by a new version. Keys rewrapped: data "
              "keys re-encrypted under the new versions. Versions destroyed: old key versions erased.</p>")
        if s["key_rotations"] else "",
    ]))


def _section_permissions(s: dict) -> _Safe:
    p = s["permissions"]
    return _Safe("".join([
        _Safe("<h3>Roles held</h3>"),
        _table(["User", "Roles"], [[r["user"], ", ".join(r["roles"]) or "none"] for r in p["roles"]]),
        _Safe("<h3>Request activity per user</h3>"),
        _table(["User", "Requested", "Approved", "Rejected"],
               [[x["user"], x["requested"], x["approved"], x["rejected"]] for x in p["activity"]], numeric={1, 2, 3}),
    ]))


_RENDERERS = {
    "data": _section_data, "deletions": _section_deletions, "adherence": _section_adherence,
    "requests": _section_requests, "emergencies": _section_emergencies, "incidents": _section_incidents,
    "audit": _section_audit, "backups": _section_backups, "keys": _section_keys, "permissions": _section_permissions,
}


def _glance(s: dict) -> _Safe:
    unsigned = sum(1 for d in s["deletions"] if not d["signed"])
    unreviewed = sum(1 for e in s["emergencies"] if not e["reviewed"])
    b = s["backup_verification"]
    return _Safe('<div class="glance"><h2>At a glance</h2>' + _kv([
        ("Overdue for deletion now", _alert(s["overdue"], s["overdue"] > 0)),
        ("Audit chain verified", _yes_no(s["audit"]["verified"])),
        ("Incidents open now", _alert(len(s["incidents"]["open"]), bool(s["incidents"]["open"]))),
        ("Deletion certificates not signed", _alert(unsigned, unsigned > 0)),
        ("Emergency accesses not yet reviewed", _alert(unreviewed, unreviewed > 0)),
        ("Objects that failed the backup restore check", _alert(b["failed"], b["failed"] > 0)),
    ]) + "</div>")


_CSS = """
@page {
  size: A4; margin: 20mm 14mm 18mm 14mm;
  @top-left { content: string(report-title); font-size: 8pt; color: #444; }
  @top-right { content: string(report-period); font-size: 8pt; color: #444; }
  @bottom-left { content: "Summary generated " string(report-generated) " UTC"; font-size: 8pt; color: #444; }
  @bottom-right { content: "page " counter(page) " of " counter(pages); font-size: 8pt; color: #444; }
}
html { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 9.5pt; color: #111; }
body { margin: 0; }
h1 { font-size: 16pt; margin: 0 0 2mm 0; string-set: report-title content(); }
h2 { font-size: 12.5pt; margin: 6mm 0 2mm 0; border-bottom: 0.8pt solid #333; break-after: avoid; }
h3 { font-size: 10.5pt; margin: 4mm 0 1.5mm 0; break-after: avoid; }
h4 { font-size: 9.5pt; margin: 3mm 0 1mm 0; break-after: avoid; }
header p { margin: 0.5mm 0; }
.period-text { string-set: report-period content(); }
.generated-text { string-set: report-generated content(); }
section { margin-bottom: 4mm; }
table.grid { border-collapse: collapse; margin: 1mm 0 2mm 0; }
table.grid th, table.grid td { border: 0.5pt solid #777; padding: 0.6mm 1.6mm; vertical-align: top; text-align: left; }
table.grid thead th { background: #e8e8e8; }
table.grid tr { break-inside: avoid; }
table.kv { break-inside: avoid; }
table.kv th { font-weight: normal; background: #f3f3f3; min-width: 70mm; }
table.grid .num { text-align: right; }
table.small { font-size: 7pt; width: 100%; }
table.fixed { table-layout: fixed; width: 100%; }
table.fixed td { overflow-wrap: anywhere; }
.id { font-family: "DejaVu Sans Mono", monospace; font-size: 0.92em; }
p.ids { font-size: 7.5pt; }
.alert { color: #b00000; font-weight: bold; }
p.none { font-style: italic; color: #444; margin: 1mm 0 2mm 0; }
figure { margin: 2mm 0; break-inside: avoid; }
img.plot { width: 100%; max-width: 180mm; }
figcaption, p.note { font-size: 8pt; color: #444; }
.glance { margin-top: 3mm; }
@media screen { body { max-width: 200mm; margin: 8mm auto; padding: 0 6mm; } }
"""


def render_html(summary: dict, *, title: str = DEFAULT_TITLE) -> str:
    """The report as one self-contained HTML page (raises :class:`ReportInputError` for a malformed summary)."""
    validate(summary)
    if not isinstance(title, str):
        raise ReportInputError("title must be a str")
    s = summary
    period = f"{fmt_time(s['period']['start'])} to {fmt_time(s['period']['end'])} UTC"
    generated = fmt_time(s["generated_at"])
    sections = "".join(
        f'<section id="{sid}"><h2>{n}. {_h(heading)}</h2>{_RENDERERS[sid](s)}</section>'
        for n, (sid, heading) in enumerate(SECTIONS, start=1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_h(title)}</h1>'
        f'<p>Period: <span class="period-text">{_h(period)}</span> (start included, end excluded)</p>'
        f'<p>Summary generated: <span class="generated-text">{_h(generated)}</span> UTC. All times are UTC.</p>'
        "</header>"
        f"{_glance(s)}{sections}</body></html>\n"
    )


# --------------------------------------------------------------------------- PDF


def _data_only_fetcher():
    """A weasyprint URL fetcher that decodes ``data:`` URIs itself and refuses every other URL (fatally)."""
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class DataOnlyFetcher(URLFetcher):
        def fetch(self, url, headers=None):
            if not url.startswith("data:"):
                raise ValueError("the compliance report fetches no URLs")
            header, sep, payload = url[len("data:"):].partition(",")
            if not sep:
                raise ValueError("malformed data: URI")
            params = header.split(";")
            body = (base64.b64decode(payload) if "base64" in params[1:]
                    else urllib.parse.unquote_to_bytes(payload))
            return URLFetcherResponse(url, body, {"Content-Type": params[0] or "text/plain"})

    return DataOnlyFetcher(fail_on_errors=True)


def render_pdf(summary: dict, *, title: str = DEFAULT_TITLE) -> bytes:
    """The report as an A4 PDF (weasyprint; nothing fetched; raises :class:`ReportInputError` for bad input)."""
    from weasyprint import HTML

    document = render_html(summary, title=title)
    return HTML(string=document, base_url=None, url_fetcher=_data_only_fetcher()).write_pdf()
