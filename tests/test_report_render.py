"""The monthly compliance report: every section, every key number as text, escaped names, no URLs, bad input named.

The PDF is checked the way a reader sees it: rasterised with ``pdftoppm`` and
read back as text with ``pdftotext -layout`` (poppler-utils; those tests skip
without it). One realistic summary is rendered once per module.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import time

import pytest

from imaging_lifecycle.report_render import (
    NONE_TEXT,
    SECTIONS,
    ReportInputError,
    fmt_duration,
    fmt_int,
    fmt_time,
    render_html,
    render_pdf,
)

ODD_USER = "ext<b>&co"  # a user name that is markup if not escaped
_POPPLER = shutil.which("pdftoppm") and shutil.which("pdftotext")
needs_poppler = pytest.mark.skipif(not _POPPLER, reason="pdftoppm/pdftotext (poppler-utils) not installed")


def _ts(day: int, hour: int = 0, minute: int = 0, month: int = 11) -> str:
    return f"2026-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00+00:00"


def _incident(n: int, level: str, user: str | None, resolved: bool) -> dict:
    return {"id": f"inc-{n:04d}", "nature": "slow_accumulation" if n % 2 else "off_hours", "level": level,
            "user": user, "detected_at": _ts(3 + n, 9), "acknowledged_at": _ts(3 + n, 10) if resolved else None,
            "resolved_at": _ts(4 + n, 12) if resolved else None, "response_seconds": 3725.0 if resolved else None,
            "responsible_role": "data_security_officer"}


def make_summary(*, overdue: int = 0, empty: bool = False) -> dict:
    """A month of a mid-sized department; ``overdue`` > 0 for the red variant, ``empty`` for a quiet month."""
    deletions = [{"object_id": f"{i:032x}", "certificate_id": f"cert-2026-11-{i:05d}",
                  "deleted_at": _ts(1 + i % 29, 2, i), "deadline": _ts(1 + i % 29, 3), "lag_seconds": 300.0 + 7 * i,
                  "zones": ["archive", "backup"],
                  "method": "cryptographic_erase+logical_delete", "anchor_seq": 5000 + i, "signed": i != 7}
                 for i in range(41)]
    deletions[3]["deadline"] = None
    deletions[4]["lag_seconds"] = None
    deletions[5].update(deadline=_ts(6, 1), lag_seconds=86405.0)  # erased 1 h 5 min after its deadline
    s = {
        "generated_at": "2026-12-01T00:00:00+00:00",
        "period": {"start": "2026-11-01T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00"},
        "objects": [{"tier": t, "zone": z, "state": st, "count": c} for t, z, st, c in [
            (1, "hot", "STORED", 1834), (1, "archive", "STORED", 977), (2, "hot", "STORED", 412),
            (2, "archive", "STORED", 1290), (2, "archive", "DELETE_PENDING", 17), (3, "archive", "STORED", 12),
            (3, "backup", "STORED", 2301)]],
        "due": {"next_24h": 23, "next_72h": 59},
        "overdue": overdue,
        "adherence": {"days": 30, "deletions": 41, "max_lag_seconds": 580.0, "overdue_now": overdue},
        "deletions": deletions,
        "gate_failures": [{"gate": "deid", "at": _ts(12, 14), "run": "manual__2026-11-12T14:00:00", "failed": 2},
                          {"gate": "classify", "at": _ts(20, 8), "run": None, "failed": 1}],
        "quarantine": [{"reason": "NOT_DICOM", "count": 44}, {"reason": "BURNED_IN_TEXT", "count": 13}],
        "review_queue": {"count": 3, "items": ["a" * 32, "b" * 32]},
        "requests": {"total": 131, "approved": 97, "denied": 21, "refused": 8, "timed_out": 5,
                     "pending": [{"request_id": "req-0131", "action": "working_copy", "requester": ODD_USER,
                                  "state": "PENDING", "since": _ts(30, 16)}],
                     "per_approver": [{"approver": "dso", "approved": 61, "rejected": 14},
                                      {"approver": "head-radiology", "approved": 36, "rejected": 7},
                                      {"approver": ODD_USER, "approved": 0, "rejected": 0}]},
        "emergencies": [
            {"request_id": "req-0088", "user": "er-doc", "at": _ts(14, 2, 30), "hours": 4, "reviewed": True},
            {"request_id": "req-0120", "user": ODD_USER, "at": _ts(27, 23), "hours": 2, "reviewed": False}],
        "incidents": {"open": [_incident(9, "major", "head-1", False)],
                      "period": [_incident(1, "warning", None, True), _incident(9, "major", "head-1", False)]},
        "anomalies": {"findings": 6, "by_rule": [{"rule": "off_hours", "count": 4}, {"rule": "slow_accumulation",
                                                                                       "count": 2}]},
        "audit": {"verified": True, "records": 51207, "head_seq": 51206, "verified_at": _ts(30, 23, 50),
                  "anchor": {"seq": 51100, "at": _ts(30, 23), "signature_valid": True}, "problems": ["UNSIGNED"]},
        "backup_verification": {"at": _ts(28, 3), "checked": 1207, "failed": 0},
        "key_rotations": [{"at": _ts(15, 1), "keks": 12, "rewrapped": 3407, "destroyed_versions": 11}],
        "reports": [{"id": "rep-2026-10", "period_start": "2026-10-01T00:00:00+00:00",
                     "period_end": "2026-11-01T00:00:00+00:00", "created_at": "2026-11-01T00:05:00+00:00"}],
        "permissions": {"roles": [{"user": "dso", "roles": ["data_security_officer"]},
                                  {"user": ODD_USER, "roles": ["clinician", "researcher"]}],
                        "activity": [{"user": "clinician-7", "requested": 18, "approved": 0, "rejected": 0},
                                     {"user": ODD_USER, "requested": 9, "approved": 0, "rejected": 0}]},
    }
    if empty:
        for key in ("objects", "deletions", "gate_failures", "quarantine", "emergencies", "key_rotations", "reports"):
            s[key] = []
        s["review_queue"] = {"count": 0, "items": []}
        s["requests"].update(pending=[], per_approver=[])
        s["incidents"] = {"open": [], "period": []}
        s["anomalies"]["by_rule"] = []
        s["audit"].update(anchor=None, problems=[])
        s["backup_verification"]["at"] = None
        s["permissions"] = {"roles": [], "activity": []}
        s["adherence"]["max_lag_seconds"] = None
    return s


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The realistic summary (with overdue objects) as PDF text (layout), page images and render time."""
    summary = make_summary(overdue=4)
    t0 = time.perf_counter()
    pdf = render_pdf(summary)
    seconds = time.perf_counter() - t0
    folder = tmp_path_factory.mktemp("report")
    (folder / "report.pdf").write_bytes(pdf)
    text = pages = None
    if _POPPLER:
        _run("pdftoppm", "-r", "50", "-png", str(folder / "report.pdf"), str(folder / "page"))
        pages = sorted(folder.glob("page*.png"))
        _run("pdftotext", "-layout", str(folder / "report.pdf"), str(folder / "report.txt"))
        text = (folder / "report.txt").read_text("utf-8")
    return {"summary": summary, "pdf": pdf, "seconds": seconds, "text": text, "pages": pages}


def _has_row(text: str, *cells: str) -> bool:
    """``cells`` in order on one line of the layout text, separated by blanks only."""
    return re.search(r"(?<!\S)" + r"\s+".join(re.escape(c) for c in cells) + r"(?!\S)", text) is not None


def test_formatting_helpers():
    assert fmt_int(1234) == "1234" and fmt_int(0) == "0"
    with pytest.raises(TypeError):
        fmt_int(True)
    assert fmt_duration(512.0) == "0:08:32" and fmt_duration(90061) == "25:01:01" and fmt_duration(None) == "n/a"
    assert fmt_duration(-61) == "-0:01:01"
    assert fmt_time("2026-11-03T15:04:05+01:00") == "2026-11-03 14:04:05"


def test_pdf_is_a_pdf_with_page_images(rendered):
    assert rendered["pdf"].startswith(b"%PDF-")
    assert rendered["seconds"] < 20, rendered["seconds"]
    if not _POPPLER:
        pytest.skip("pdftoppm/pdftotext (poppler-utils) not installed")
    assert rendered["pages"], "pdftoppm produced no page image"
    assert all(p.stat().st_size > 5000 for p in rendered["pages"])  # a blank A4 page at 50 dpi is ~1 kB


@needs_poppler
def test_pdf_text_has_every_section_and_the_page_frame(rendered):
    text = rendered["text"]
    for _sid, heading in SECTIONS:
        assert heading in text, heading
    n_pages = len(rendered["pages"])
    assert f"page 1 of {n_pages}" in text and f"page {n_pages} of {n_pages}" in text
    assert "Imaging lifecycle compliance report" in text
    assert "2026-11-01 00:00:00 to 2026-12-01 00:00:00 UTC" in text
    assert "Summary generated 2026-12-01 00:00:00 UTC" in text


@needs_poppler
def test_pdf_text_has_the_key_numbers_as_formatted(rendered):
    s, text = rendered["summary"], rendered["text"]
    f = fmt_int
    assert _has_row(text, "Records in the audit chain", f(s["audit"]["records"]))
    assert _has_row(text, "Head sequence number", f(s["audit"]["head_seq"]))
    assert _has_row(text, "Latest anchor sequence number", f(s["audit"]["anchor"]["seq"]))
    assert _has_row(text, "Deletions certified in this report", f(len(s["deletions"])))
    assert _has_row(text, "Certificates not signed", f(1))
    assert _has_row(text, "Deletions in the window", f(s["adherence"]["deletions"]))
    assert _has_row(text, "Longest lag in the window (h:mm:ss)", fmt_duration(s["adherence"]["max_lag_seconds"]))
    assert _has_row(text, "Overdue for deletion now", f(s["overdue"]))
    assert _has_row(text, "Overdue now", f(s["adherence"]["overdue_now"]))
    assert _has_row(text, "Due for deletion within 24 hours", f(s["due"]["next_24h"]))
    assert _has_row(text, "Due for deletion within 72 hours", f(s["due"]["next_72h"]))
    for a in s["requests"]["per_approver"]:
        assert _has_row(text, a["approver"], f(a["approved"]), f(a["rejected"])), a
    for q in s["quarantine"]:
        assert _has_row(text, q["reason"], f(q["count"])), q
    assert _has_row(text, "Objects restored and checked", f(s["backup_verification"]["checked"]))
    assert _has_row(text, "Objects that failed the check", f(s["backup_verification"]["failed"]))
    r = s["requests"]
    for label, key in [("Requests in the period", "total"), ("Approved", "approved"), ("Denied", "denied"),
                       ("Refused", "refused"), ("Timed out", "timed_out")]:
        assert _has_row(text, label, f(r[key])), label
    k = s["key_rotations"][0]
    assert _has_row(text, fmt_time(k["at"]), f(k["keks"]), f(k["rewrapped"]), f(k["destroyed_versions"]))
    per_zone = {}
    for o in s["objects"]:
        per_zone[o["zone"]] = per_zone.get(o["zone"], 0) + o["count"]
    assert _has_row(text, "all tiers", *[f(per_zone[z]) for z in sorted(per_zone)], f(sum(per_zone.values())))
    assert _has_row(text, "Anomaly findings in the period", f(s["anomalies"]["findings"]))
    assert s["deletions"][0]["certificate_id"] in text


@needs_poppler
def test_pdf_shows_the_odd_user_name_as_text(rendered):
    text = rendered["text"]
    assert ODD_USER in text
    assert "&lt;" not in text and "&amp;" not in text


def test_html_sections_numbers_and_escaping():
    s = make_summary(overdue=4)
    doc = render_html(s)
    for sid, heading in SECTIONS:
        assert f'<section id="{sid}">' in doc and heading in doc
    for n in (s["audit"]["records"], s["due"]["next_24h"], s["due"]["next_72h"], s["requests"]["total"],
              s["backup_verification"]["checked"], s["quarantine"][0]["count"]):
        assert f">{fmt_int(n)}<" in doc, n
    assert '<span class="alert">4</span>' in doc  # overdue in red
    assert re.search(r'after their deadline</th><td class="num"><span class="alert">1</span>', doc)
    assert ODD_USER not in doc and "ext&lt;b&gt;&amp;co" in doc
    assert "http://" not in doc and "https://" not in doc
    assert doc.count('src="data:image/png;base64,') >= 3
    assert render_html(s) == doc  # deterministic


def test_no_overdue_is_not_red():
    doc = render_html(make_summary(overdue=0))
    assert re.search(r"Overdue for deletion now</th><td class=\"num\">0</td>", doc)


def test_empty_lists_say_none_in_this_period():
    doc = render_html(make_summary(empty=True))
    for sid, _heading in SECTIONS:
        body = doc.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]
        if sid not in ("adherence", "backups"):  # these two are key/value facts, no list
            assert NONE_TEXT in body, sid
    assert "src=\"data:" not in doc  # nothing to plot: no empty charts


@needs_poppler
def test_empty_summary_renders_as_pdf(tmp_path):
    path = tmp_path / "empty.pdf"
    path.write_bytes(render_pdf(make_summary(empty=True), title="Quiet month <test>"))
    _run("pdftotext", "-layout", str(path), str(tmp_path / "empty.txt"))
    text = (tmp_path / "empty.txt").read_text("utf-8")
    assert "Quiet month <test>" in text and NONE_TEXT in text and "no restore test recorded" in text
    for _sid, heading in SECTIONS:
        assert heading in text


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["audit"].pop("records"), "summary.audit.records is missing"),
    (lambda s: s.pop("period"), "summary.period is missing"),
    (lambda s: s["audit"].update(records="5120"), "summary.audit.records must be a non-negative int"),
    (lambda s: s["audit"].update(records=True), "summary.audit.records must be a non-negative int"),
    (lambda s: s["deletions"][2].update(signed="yes"), "summary.deletions[2].signed must be a bool"),
    (lambda s: s["deletions"][1].update(anchor_seq=1.5),
     "summary.deletions[1].anchor_seq must be a non-negative int or None"),
    (lambda s: s["requests"]["per_approver"][0].pop("rejected"),
     "summary.requests.per_approver[0].rejected is missing"),
    (lambda s: s.update(generated_at="yesterday"), "summary.generated_at must be an ISO-8601 timestamp"),
    (lambda s: s.update(generated_at="2026-12-01T00:00:00"), "summary.generated_at must be an ISO-8601 timestamp"),
    (lambda s: s["adherence"].update(max_lag_seconds=float("nan")),
     "summary.adherence.max_lag_seconds must be a finite"),
    (lambda s: s.update(objects={}), "summary.objects must be a list"),
    (lambda s: s["period"].update(end=s["period"]["start"]),
     "summary.period.end must be after summary.period.start"),
])
def test_bad_input_names_the_path(edit, message):
    s = make_summary()
    edit(s)
    with pytest.raises(ReportInputError) as caught:
        render_html(s)
    assert str(caught.value).startswith(message)
    with pytest.raises(ReportInputError):
        render_pdf(s)


def test_bad_input_message_has_no_value():
    s = make_summary()
    s["permissions"]["roles"][0]["user"] = 12345678
    with pytest.raises(ReportInputError, match=r"^summary\.permissions\.roles\[0\]\.user must be a str$") as caught:
        render_html(copy.deepcopy(s))
    assert "12345678" not in str(caught.value)


def test_names_with_dollars_are_not_mathtext():
    s = make_summary()
    s["requests"]["per_approver"][0]["approver"] = r"$\frac$"  # broken mathtext if parsed
    s["objects"][0]["zone"] = "$z$"
    doc = render_html(s)
    assert r"$\frac$" in doc


def test_deletions_outside_the_period_are_flagged():
    s = make_summary()
    s["deletions"][0]["deleted_at"] = "2026-10-31T23:59:00+00:00"
    doc = render_html(s)
    assert re.search(r'outside the period[^<]*</th><td class="num"><span class="alert">1</span>', doc)


def test_pdf_fetcher_refuses_urls():
    from imaging_lifecycle.report_render import _data_only_fetcher

    fetcher = _data_only_fetcher()
    for url in ("https://example.org/a.png", "http://127.0.0.1/x.css", "file:///etc/passwd"):
        with pytest.raises(ValueError):
            fetcher(url)
    assert fetcher("data:text/plain;base64,aGk=").read() == b"hi"
