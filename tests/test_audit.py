"""The hash-chained audit trail: format, guards, concurrency, and every kind of tampering.

Tampering is done the way an intruder would: raw SQL on the database (SQLite and a real
PostgreSQL, each test on both), with the append-only triggers dropped or disabled first.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging_lifecycle import cli
from imaging_lifecycle.catalog import Catalog, audit, states
from imaging_lifecycle.catalog.audit import ACTIONS, EVENTS, OUTCOMES, ZERO_HASH, AuditLog, UnsafeAuditValue

from conftest import Intruder

PROJECT = Path(__file__).resolve().parents[1]
ACTOR = "lifecycle/ingest/scheduled__2026-01-01T00:00:00+00:00"


@pytest.fixture
def db(catalog_url) -> str:
    """The catalog's URL: every test here runs on SQLite and on PostgreSQL."""
    return catalog_url


@pytest.fixture
def cat(db) -> Catalog:
    c = Catalog(db)
    yield c
    c.dispose()


def fill(cat: Catalog, n: int = 10) -> None:
    for i in range(n):
        cat.audit.append(ACTOR, "gate.run", object_ref=f"{i:032x}", detail={"rows": i, "gate": "ingest"})


def raw(db: str) -> Intruder:
    """Raw SQL with the append-only triggers off, beside the catalog (what an intruder does)."""
    return Intruder(db)


def rehash_from(con: Intruder, seq: int) -> None:
    """Recompute the chain from ``seq`` on and fix the head row: a competent rewrite."""
    prev = con.execute("SELECT hash FROM audit_records WHERE seq = ?", (seq - 1,)).fetchone()
    prev = prev[0] if prev else ZERO_HASH
    for row in con.execute("SELECT seq, ts, actor, action, event_id, object_ref, outcome, detail FROM audit_records "
                           "WHERE seq >= ? ORDER BY seq", (seq,)).fetchall():
        content = dict(zip(("seq", "ts", "actor", "action", "event_id", "object_ref", "outcome"), row[:7], strict=True))
        content["detail"] = json.loads(row[7])
        h = independent_hash(prev, content)
        con.execute("UPDATE audit_records SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, row[0]))
        prev = h
    last = con.execute("SELECT max(seq) FROM audit_records").fetchone()[0] or 0
    con.execute("UPDATE audit_head SET seq = ?, hash = ?", (last, prev))


def independent_hash(prev: str, content: dict) -> str:
    """The chain hash, written from the module docstring only."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev + text).encode()).hexdigest()


# -- format ------------------------------------------------------------------------


def test_records_chain_as_documented(cat):
    fill(cat, 5)
    recs = cat.audit.records()
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].prev_hash == ZERO_HASH
    prev = ZERO_HASH
    for r in recs:
        assert r.prev_hash == prev and r.hash == independent_hash(prev, r.content())
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", r.ts)
        prev = r.hash
    assert [r.ts for r in recs] == sorted(r.ts for r in recs)
    assert recs[0].event_id == 110100 and recs[0].event_name == "Application Activity"
    assert cat.audit.head() == (5, recs[-1].hash)
    result = cat.audit.verify()
    assert (result.ok, result.count, result.head_hash, result.head_seq, result.code) == (True, 5, prev, 5, "OK")
    assert cat.audit.verify(expected_head=(3, recs[2].hash)).ok


def test_append_returns_what_was_stored(cat):
    rec = cat.audit.append("alice", "audit.anchor", outcome="minor_failure", detail={"bucket": "il-audit-anchor"})
    assert rec == cat.audit.records(last=1)[0]
    assert (rec.outcome_code, rec.event_id) == (4, 110101)
    assert rec.public()["hash"] == rec.hash


def test_a_transactions_records_chain_and_commit_together_or_not_at_all(cat):
    """A write transaction's records go to the table in one statement at its end: the same chain,
    nothing of a rolled-back one, and the next transaction continues where the last commit left off."""
    fill(cat, 1)
    with cat.transaction() as s:
        got = [cat.audit.append("alice", "audit.anchor", detail={"n": i}, session=s) for i in range(3)]
    assert [r.seq for r in got] == [2, 3, 4] and got == cat.audit.records()[1:]
    with pytest.raises(RuntimeError), cat.transaction() as s:
        for i in range(3):
            cat.audit.append("mallory", "audit.anchor", detail={"n": i}, session=s)
        raise RuntimeError("rolled back")
    assert cat.audit.head() == (4, got[-1].hash) and cat.audit.count() == 4
    after = cat.audit.append("alice", "audit.anchor")  # a pooled connection carries nothing over
    assert after.seq == 5 and after.prev_hash == got[-1].hash
    assert cat.audit.verify(expected_head=(5, after.hash)).ok


def test_empty_trail(cat):
    assert cat.audit.head() == (0, ZERO_HASH)
    assert cat.audit.verify().ok and cat.audit.verify(expected_head=(0, ZERO_HASH)).ok
    assert not cat.audit.verify(expected_head=(0, "1" * 64)).ok


def test_action_and_outcome_tables():
    assert set(ACTIONS.values()) <= set(EVENTS)
    assert set(states.STATE_ACTIONS.values()) <= set(ACTIONS)
    assert OUTCOMES == {"success": 0, "minor_failure": 4, "failure": 8, "major_failure": 12}
    assert ACTIONS["object.delete"] == 110105 and ACTIONS["audit.verify"] == 110101
    assert ACTIONS["object.register"] == 110107 and ACTIONS["object.store"] == 110104


def test_unknown_action_or_outcome(cat):
    with pytest.raises(ValueError, match="unknown audit action"):
        cat.audit.append(ACTOR, "ZZMARK.do")
    with pytest.raises(ValueError, match="outcome must be one of"):
        cat.audit.append(ACTOR, "gate.run", outcome="meh")
    assert cat.audit.count() == 0


# -- guards ---------------------------------------------------------------------------


def _ct() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False), stop_before_pixels=True)


@pytest.mark.parametrize("value", [
    "1.2.840.113619.2.55.3.604688119",  # a UID
    "uid:1.3.6.1.4.1.5962.1.1.1",  # a UID inside a token
    "DOE^JOHN",  # PN
    "John Doe",  # free text
    "20040119",  # DA
    "2004-01-19",  # ISO date
    "acq-2004-01-19",  # date inside a token
    "12345678",  # an MRN-like digit string
    "x" * 129,  # too long
    1.5,  # float
    b"bytes",
    {"a": {"b": {"c": 1}}},  # nested too deep
])
def test_detail_guard_rejects_without_echo(cat, value):
    with pytest.raises(UnsafeAuditValue) as exc:
        cat.audit.append(ACTOR, "gate.run", detail={"v": value})
    text = str(exc.value)
    assert (str(value)[:12] not in text) if isinstance(value, str) else True
    assert cat.audit.count() == 0


def test_detail_guard_rejects_identifiers_of_a_real_file(cat):
    ds = _ct()
    for value in (ds.PatientName, ds.StudyDate, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.InstitutionName):
        with pytest.raises(UnsafeAuditValue):
            cat.audit.append(ACTOR, "gate.run", detail={"v": str(value)})
        with pytest.raises(UnsafeAuditValue):
            cat.audit.append(ACTOR, "gate.run", object_ref=str(value))
    # A short alphanumeric Patient ID ("1CT1") is indistinguishable from a
    # code: the guard is a net, not a proof. Callers pass codes and counts.
    assert cat.audit.count() == 0


@pytest.mark.parametrize("detail", [
    "not a dict", {"bad key": 1}, {"1st": 1}, {"k": {"x" * 70: 1}}, {"big": ["abcdefgh"] * 600},
])
def test_detail_shape_rejected(cat, detail):
    with pytest.raises(UnsafeAuditValue):
        cat.audit.append(ACTOR, "gate.run", detail=detail)


def test_detail_guard_accepts_codes_ids_and_counts(cat, tmp_path):
    ok = {
        "reason": "NOT_DICOM", "zone": "archive", "copy": "0123456789abcdef0123456789abcdef",
        "digest": hashlib.sha256(b"x").hexdigest(), "batch": "20260101T000000-abcd1234", "error": "InvalidDicomError",
        "counts": {"files": 12, "quarantined": {"TRUNCATED": 2}}, "tiers": [0, 1, 2], "gate": "ingest",
        "expectation": "expect_column_values_to_not_be_null", "version": "3.0.2", "held": True, "none": None,
    }
    assert cat.audit.append(ACTOR, "gate.run", detail=ok).detail == ok
    for ref in (f"{7:032x}", audit.object_ref_for_uid(str(_ct().SOPInstanceUID)), "batch:b1"):
        cat.audit.append(ACTOR, "object.access", object_ref=ref)


@pytest.mark.parametrize("actor", ["", "DOE^JOHN", "x" * 257, "user/1.2.840.113619.2.55.3", "a\nb", 7])
def test_actor_guard(cat, actor):
    with pytest.raises(UnsafeAuditValue):
        cat.audit.append(actor, "gate.run")


def test_object_ref_for_uid_is_keyed_and_separate_from_catalog_keys(cat):
    uid = str(_ct().SOPInstanceUID)
    ref = audit.object_ref_for_uid(uid)
    assert re.fullmatch(r"[0-9a-f]{64}", ref) and ref == audit.object_ref_for_uid(uid)
    assert ref != hashlib.sha256(uid.encode()).hexdigest()  # keyed, not a plain hash anyone can recompute
    assert ref != cat.uid_key("sop", uid)  # purposes keep the two unjoinable
    assert audit.object_ref_for_uid(uid, key=b"k" * 32) != ref
    with pytest.raises(ValueError):
        audit.object_ref_for_uid("")


# -- tampering ------------------------------------------------------------------------


def test_append_only_triggers(cat, db):
    from sqlalchemy import create_engine, text

    fill(cat, 3)
    engine = create_engine(db)  # a plain connection, triggers in place
    for sql in ("UPDATE audit_records SET actor = 'mallory' WHERE seq = 2", "DELETE FROM audit_records WHERE seq = 3"):
        with pytest.raises(Exception, match="append-only"):  # noqa: B017 - each driver's own error class
            with engine.begin() as conn:
                conn.execute(text(sql))
    engine.dispose()
    assert cat.audit.verify().ok


@pytest.mark.parametrize("column, value, code", [
    ("actor", "'mallory'", "BAD_HASH"),
    ("action", "'object.access'", "BAD_HASH"),
    ("event_id", "110113", "BAD_HASH"),
    ("event_id", "NULL", "BAD_HASH"),
    ("object_ref", "'00000000000000000000000000000000'", "BAD_HASH"),
    ("outcome", "'failure'", "BAD_HASH"),
    ("detail", """'{"gate":"ingest","rows":999}'""", "BAD_HASH"),
    ("detail", "'not json'", "MALFORMED"),
    ("ts", "'2020-01-01T00:00:00.000Z'", "BAD_HASH"),
    ("ts", "'2020-01-01 00:00:00'", "MALFORMED"),
    ("prev_hash", "'" + "1" * 64 + "'", "BROKEN_LINK"),
    ("hash", "'" + "2" * 64 + "'", "BAD_HASH"),
])
def test_modified_field_is_detected(cat, db, column, value, code):
    fill(cat)
    con = raw(db)
    con.execute(f"UPDATE audit_records SET {column} = {value} WHERE seq = 4")
    result = cat.audit.verify()
    assert (result.ok, result.first_bad_seq, result.code, result.count) == (False, 4, code, 3)
    assert "seq 4" in result.reason


def test_modified_last_record_is_detected(cat, db):
    fill(cat)
    raw(db).execute("UPDATE audit_records SET outcome = 'failure' WHERE seq = 10")
    assert (cat.audit.verify().first_bad_seq, cat.audit.verify().code) == (10, "BAD_HASH")


@pytest.mark.parametrize("seqs, first_bad", [((5,), 5), ((1,), 1), ((4, 5, 6), 4)])
def test_deleted_records_are_detected(cat, db, seqs, first_bad):
    fill(cat)
    con = raw(db)
    for s in seqs:
        con.execute("DELETE FROM audit_records WHERE seq = ?", (s,))
    result = cat.audit.verify()
    assert (result.ok, result.first_bad_seq, result.code) == (False, first_bad, "GAP")
    assert "missing" in result.reason


def test_deleted_and_renumbered_record_is_detected(cat, db):
    fill(cat)
    con = raw(db)
    con.execute("DELETE FROM audit_records WHERE seq = 5")
    for s in range(6, 11):
        con.execute("UPDATE audit_records SET seq = seq - 1 WHERE seq = ?", (s,))
    con.execute("UPDATE audit_head SET seq = 9")
    result = cat.audit.verify()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 5, "BROKEN_LINK")


def test_reordered_records_are_detected(cat, db):
    fill(cat)
    con = raw(db)
    con.execute("UPDATE audit_records SET seq = -1 WHERE seq = 3")
    con.execute("UPDATE audit_records SET seq = 3 WHERE seq = 4")
    con.execute("UPDATE audit_records SET seq = 4 WHERE seq = -1")
    result = cat.audit.verify()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 3, "BROKEN_LINK")


def test_inserted_record_in_the_middle_is_detected(cat, db):
    fill(cat)
    con = raw(db)
    for s in range(10, 4, -1):
        con.execute("UPDATE audit_records SET seq = seq + 1 WHERE seq = ?", (s,))
    prev = con.execute("SELECT hash FROM audit_records WHERE seq = 4").fetchone()[0]
    content = {"seq": 5, "ts": "2026-01-01T00:00:00.000Z", "actor": "mallory", "action": "object.access",
               "event_id": 110103, "object_ref": None, "outcome": "success", "detail": {}}
    con.execute("INSERT INTO audit_records VALUES "
                "(5, ?, 'mallory', 'object.access', 110103, NULL, 'success', '{}', ?, ?)",
                (content["ts"], prev, independent_hash(prev, content)))
    result = cat.audit.verify()
    # the forged record itself is well-formed; the record it displaced no longer fits
    assert (result.ok, result.first_bad_seq, result.code) == (False, 6, "BROKEN_LINK")


def test_record_written_around_the_log_is_detected(cat, db):
    fill(cat)
    con = raw(db)
    prev = con.execute("SELECT hash FROM audit_records WHERE seq = 10").fetchone()[0]
    content = {"seq": 11, "ts": "2026-01-01T00:00:00.000Z", "actor": "mallory", "action": "object.access",
               "event_id": 110103, "object_ref": None, "outcome": "success", "detail": {}}
    con.execute("INSERT INTO audit_records VALUES "
                "(11, ?, 'mallory', 'object.access', 110103, NULL, 'success', '{}', ?, ?)",
                (content["ts"], prev, independent_hash(prev, content)))
    result = cat.audit.verify()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 11, "HEAD_MISMATCH")


def test_duplicate_seq_is_detected(cat, db):
    fill(cat)
    con = raw(db)
    # seq is the primary key; an intruder recreates the table without it
    con.execute("CREATE TABLE t AS SELECT * FROM audit_records")
    con.execute("INSERT INTO t SELECT * FROM audit_records WHERE seq = 3")
    con.execute("DROP TABLE audit_records")
    con.execute("ALTER TABLE t RENAME TO audit_records")
    result = cat.audit.verify()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 3, "BAD_SEQ")


def test_truncated_tail_is_detected_by_head_row_and_by_anchor(cat, db):
    fill(cat)
    anchor = cat.audit.head()
    con = raw(db)
    con.execute("DELETE FROM audit_records WHERE seq > 7")
    result = cat.audit.verify()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 8, "HEAD_MISMATCH")
    # a careful intruder also rewinds the head row: only the anchor shows it
    rehash_from(con, 8)
    assert cat.audit.verify().ok
    result = cat.audit.verify(expected_head=anchor)
    assert (result.ok, result.first_bad_seq, result.code, result.count) == (False, 8, "ANCHOR_MISSING", 7)
    assert "truncated" in result.reason


def test_rewritten_history_is_detected_by_anchor(cat, db):
    fill(cat)
    anchor = cat.audit.head()
    con = raw(db)
    con.execute("UPDATE audit_records SET outcome = 'failure' WHERE seq = 6")
    rehash_from(con, 6)
    assert cat.audit.verify().ok  # self-consistent again
    result = cat.audit.verify(expected_head=anchor)
    assert (result.ok, result.first_bad_seq, result.code) == (False, 10, "ANCHOR_MISMATCH")


def test_deleted_trail_is_detected_through_the_catalog(cat, db):
    reg = cat.register(actor=ACTOR, source="landing", quarantine_reason="NOT_DICOM", size=3)
    fill(cat, 2)
    con = raw(db)
    con.execute("DELETE FROM audit_records")
    con.execute("UPDATE audit_head SET seq = 0, hash = ?", (ZERO_HASH,))
    result = cat.audit.verify()
    assert (result.ok, result.code) == (False, "UNAUDITED")
    assert reg.object.id not in result.reason


def test_missing_head_row_stops_appends_and_fails_verify(cat, db):
    fill(cat, 2)
    raw(db).execute("DELETE FROM audit_head")
    assert cat.audit.verify().code == "HEAD_MISMATCH"
    with pytest.raises(audit.AuditError, match="head row is missing"):
        cat.audit.append(ACTOR, "gate.run")
    Catalog(db).dispose()  # reopening must not paper over it
    assert cat.audit.verify().code == "HEAD_MISMATCH"


# -- concurrency ------------------------------------------------------------------------


def _append_worker(url: str, worker: int, n: int) -> float:
    log = AuditLog(url)
    t0 = time.perf_counter()
    for i in range(n):
        log.append(f"worker-{worker}", "gate.run", object_ref=f"{worker:016x}{i:016x}", detail={"i": i, "w": worker})
    log.db.dispose()
    return time.perf_counter() - t0


def test_concurrent_appends_from_processes_form_one_chain(cat, db):
    url = db
    workers, per = 4, 60
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.starmap(_append_worker, [(url, w, per) for w in range(workers)])
    result = cat.audit.verify()
    assert result.ok and result.count == workers * per
    recs = cat.audit.records()
    assert [r.seq for r in recs] == list(range(1, workers * per + 1))
    for w in range(workers):  # every append of every worker is there, in its own order
        mine = [r.detail["i"] for r in recs if r.actor == f"worker-{w}"]
        assert mine == list(range(per))


def test_verify_is_fast_enough(cat):
    n = 5000
    with cat.transaction() as tx:
        for i in range(n):
            cat.audit.append(ACTOR, "gate.run", object_ref=f"{i:032x}", detail={"rows": i}, session=tx)
    t0 = time.perf_counter()
    result = cat.audit.verify(batch=700)
    elapsed = time.perf_counter() - t0
    assert result.ok and result.count == n
    assert elapsed < 5, f"verify of {n} records took {elapsed:.2f}s"


# -- the command ------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The chain checks of the command; the signed anchors on the backup site are tested in test_anchor.py."""
    if args and args[0] == "verify" and "--anchor-seq" not in args and "--anchor-hash" not in args:
        args = (*args, "--no-anchor")
    code = cli.main(["audit", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_verify_intact_and_records_its_use(cat, db, capsys):
    fill(cat, 3)
    seq, digest = cat.audit.head()
    code, out, _ = run_cli(capsys, "verify", "--catalog-url", db)
    assert code == 0 and out.strip() == f"audit chain intact: 3 records, head {digest}"
    last = cat.audit.records(last=1)[0]
    assert (last.seq, last.action, last.event_id, last.detail) == (
        4, "audit.verify", 110101, {"records": 3, "check": "OK", "anchored": False, "bad_anchors": 0})
    code, out, _ = run_cli(capsys, "verify", "--catalog-url", db, "--anchor-seq", str(seq),
                           "--anchor-hash", digest, "--no-record")
    assert code == 0 and "anchored head seq 3" in out
    assert cat.audit.count() == 4


def test_cli_verify_names_the_first_bad_record(cat, db, capsys):
    fill(cat, 6)
    raw(db).execute("UPDATE audit_records SET actor = 'mallory' WHERE seq = 2")
    code, out, _ = run_cli(capsys, "verify", "--catalog-url", db)
    assert code == 1 and "record seq 2" in out and "BAD_HASH" in out and "modified" in out
    last = cat.audit.records(last=1)[0]
    assert (last.action, last.outcome, last.detail["first_bad_seq"]) == ("audit.verify", "failure", 2)


def test_cli_verify_with_anchor_detects_truncation(cat, db, capsys):
    fill(cat, 6)
    seq, digest = cat.audit.head()
    con = raw(db)
    con.execute("DELETE FROM audit_records WHERE seq > 4")
    rehash_from(con, 5)
    url = db
    assert run_cli(capsys, "verify", "--catalog-url", url, "--no-record")[0] == 0
    code, out, _ = run_cli(capsys, "verify", "--catalog-url", url, "--anchor-seq", str(seq), "--anchor-hash", digest)
    assert code == 1 and "ANCHOR_MISSING" in out and "seq 5" in out


def test_cli_bad_input(cat, db, tmp_path, capsys):
    assert run_cli(capsys, "verify", "--catalog-url", db, "--anchor-seq", "3")[0] == 2
    code, _, err = run_cli(capsys, "verify", "--catalog-url", f"sqlite:///{tmp_path}/nope.sqlite")
    assert code == 2 and "no catalog database" in err
    assert not (tmp_path / "nope.sqlite").exists()
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("CREATE TABLE objects (id TEXT)").connection.close()
    code, out, _ = run_cli(capsys, "verify", "--catalog-url", f"sqlite:///{empty}")
    assert code == 1 and "audit_head, audit_records" in out
    with pytest.raises(SystemExit):
        cli.main(["audit", "verify", "--anchor-seq", "x"])
    with pytest.raises(SystemExit):
        cli.main(["audit"])


def test_cli_default_url_show_and_head(monkeypatch, db, cat, capsys):
    monkeypatch.setenv("IL_CATALOG_URL", db)
    fill(cat, 5)
    code, out, _ = run_cli(capsys, "show", "--limit", "2", "--json")
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [x["seq"] for x in lines] == [4, 5] and lines[0]["outcome_code"] == 0
    code, out, _ = run_cli(capsys, "show", "--limit", "3")
    assert code == 0 and len(out.splitlines()) == 3 and "audit.show" in out
    code, out, _ = run_cli(capsys, "head", "--no-record")
    assert json.loads(out) == dict(zip(("seq", "hash"), cat.audit.head(), strict=True))
    assert cat.audit.verify().ok


def test_console_script_end_to_end(cat, db):
    fill(cat, 2)
    exe = PROJECT / ".venv" / "bin" / "imaging-lifecycle"
    r = subprocess.run([str(exe), "audit", "verify", "--no-anchor", "--catalog-url", db],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("audit chain intact: 2 records, head ")
    raw(db).execute("DELETE FROM audit_records WHERE seq = 1")
    r = subprocess.run([str(exe), "audit", "verify", "--no-anchor", "--catalog-url", db],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "record seq 1" in r.stdout
