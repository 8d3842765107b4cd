"""The lifecycle catalog: state machine, registration, retention queries, copies, batches.

Everything runs against a real SQLite file; object facts (UIDs, content
hashes) come from pydicom's bundled test files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import sqlite3
from collections import deque
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging_lifecycle.catalog import (
    Catalog,
    DatabaseUsageError,
    IllegalTransition,
    LegalHoldActive,
    UnknownObject,
    states,
)
from imaging_lifecycle.catalog.audit import UnsafeAuditValue
from imaging_lifecycle.catalog.db import Database
from imaging_lifecycle.catalog.states import (
    BACKED_UP,
    CLASSIFIED,
    DEIDENTIFIED,
    DELETED,
    DELETING,
    EXPIRED,
    NEEDS_REVIEW,
    PROTECTED,
    QUARANTINED,
    RECEIVED,
    STORED,
    TRANSITIONS,
    VALIDATED,
)

UTC = dt.timezone.utc
ACTOR = "lifecycle/ingest/manual__2026-01-01T00:00:00+00:00"
#: Real files with distinct SOP Instance UIDs.
FILES = [
    "CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm", "liver_1frame.dcm",
    "examples_overlay.dcm", "examples_palette.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm",
    "image_dfl.dcm", "reportsi.dcm", "SC_rgb_small_odd.dcm", "JPEG-lossy.dcm", "badVR.dcm",
]
#: What each state needs set on entry (see states.REQUIRED_FIELDS).
ENTRY_FIELDS = {
    CLASSIFIED: {"tier": 2, "rule_id": "ct-default"},
    PROTECTED: {"ciphertext_sha256": "c" * 64, "key_id": "dek-0123456789abcdef"},
    STORED: {"zone": "archive"},
    QUARANTINED: {"quarantine_reason": "DEID_REJECTED"},
}


def arrival(name: str) -> dict:
    """register() arguments for a real file: its UIDs, size and content hash."""
    path = Path(get_testdata_file(name, download=False))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_class_uid": str(ds.SOPClassUID),
    }


def identifiers(name: str) -> list[str]:
    ds = pydicom.dcmread(get_testdata_file(name, download=False), stop_before_pixels=True)
    return [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.PatientName)]


def path_to(target: str) -> list[str]:
    """Shortest state path from RECEIVED to ``target`` through TRANSITIONS."""
    prev = {RECEIVED: None}
    todo = deque([RECEIVED])
    while todo:
        s = todo.popleft()
        for n in sorted(TRANSITIONS[s]):
            if n not in prev:
                prev[n] = s
                todo.append(n)
    out = [target]
    while prev[out[-1]] is not None:
        out.append(prev[out[-1]])
    return out[::-1][1:]


def drive(cat: Catalog, object_id: str, target: str) -> None:
    for s in path_to(target):
        cat.transition(object_id, s, actor=ACTOR, **ENTRY_FIELDS.get(s, {}))


@pytest.fixture
def cat(catalog_url) -> Catalog:
    """The catalog on SQLite and on a real PostgreSQL: every test of this file runs on both."""
    c = Catalog(catalog_url)
    yield c
    c.dispose()


def new(cat: Catalog, name: str = "CT_small.dcm", **kw) -> str:
    reg = cat.register(actor=ACTOR, source="landing", **arrival(name), **kw)
    assert reg.outcome == "registered"
    return reg.object.id


# -- the state machine -------------------------------------------------------


def test_state_table_is_consistent():
    assert set(TRANSITIONS) == set(states.STATE_ACTIONS)
    assert states.EXPIRABLE == {STORED, BACKED_UP, QUARANTINED}
    assert TRANSITIONS[DELETED] == frozenset()
    assert DELETING in TRANSITIONS[DELETING]  # resume after a crash
    for s in (RECEIVED, VALIDATED, CLASSIFIED):
        assert QUARANTINED in TRANSITIONS[s]
    for s in (DEIDENTIFIED, PROTECTED, STORED, BACKED_UP):
        assert QUARANTINED not in TRANSITIONS[s]


def test_happy_path_audits_every_step(cat):
    oid = new(cat)
    path = [VALIDATED, CLASSIFIED, DEIDENTIFIED, PROTECTED, STORED, BACKED_UP, EXPIRED, DELETING, DELETING, DELETED]
    for s in path:
        rec = cat.transition(oid, s, actor=ACTOR, **ENTRY_FIELDS.get(s, {}))
        assert rec.state == s
    recs = cat.audit.records(object_ref=oid)
    assert [r.action for r in recs] == ["object.register"] + [states.STATE_ACTIONS[s] for s in path]
    assert [r.detail["to"] for r in recs] == [RECEIVED] + path
    assert [r.detail.get("from") for r in recs[1:]] == [RECEIVED] + path[:-1]
    assert recs[-1].event_id == 110105 and recs[2].detail["tier"] == 2
    assert all(r.actor == ACTOR for r in recs)
    assert cat.audit.verify().ok


def test_every_illegal_transition_is_refused_and_changes_nothing(cat):
    everything = list(TRANSITIONS)
    ids = {}
    for name, state in zip(FILES, everything, strict=False):
        ids[state] = new(cat, name)
        drive(cat, ids[state], state)
    assert {s: cat.get(i).state for s, i in ids.items()} == {s: s for s in everything}
    head = cat.audit.head()
    refused = 0
    for state, oid in ids.items():
        for target in everything:
            if target in TRANSITIONS[state]:
                continue
            with pytest.raises(IllegalTransition) as exc:
                cat.transition(oid, target, actor=ACTOR, **ENTRY_FIELDS.get(target, {}))
            assert str(exc.value) == f"object {oid}: {state} -> {target} is not allowed"
            refused += 1
    assert refused == sum(len(everything) - len(n) for n in TRANSITIONS.values())
    assert cat.audit.head() == head
    assert {s: cat.get(i).state for s, i in ids.items()} == {s: s for s in everything}


def test_many_transitions_return_what_a_fresh_read_gives_and_fail_all_or_nothing(cat):
    """transition_many builds its records without reading the rows back: they must equal a fresh read."""
    ids = [new(cat, name) for name in FILES[:3]]
    for oid in ids:
        drive(cat, oid, CLASSIFIED)
    paris = dt.timezone(dt.timedelta(hours=1))  # a deadline given in another zone is stored and read as UTC
    moves = [(oid, {"ciphertext_sha256": f"{i:064x}", "key_id": f"{i:032x}"}, {"n": i}) for i, oid in enumerate(ids)]
    with cat.transaction() as s:
        cat.transition_many(PROTECTED, moves, actor=ACTOR, session=s)
        got = cat.transition_many(STORED, [
            (oid, {"zone": "archive", "retention_deadline": dt.datetime(2031, 1, 1, 12, 30, 15, 250, tzinfo=paris)},
             None) for oid in ids], actor=ACTOR, session=s)
    assert got == [cat.get(oid) for oid in ids]
    assert got[0].retention_deadline == dt.datetime(2031, 1, 1, 11, 30, 15, 250, tzinfo=dt.timezone.utc)
    assert [r.detail["n"] for r in cat.audit.records() if r.action == "object.protect"] == [0, 1, 2]
    cat.transition(ids[1], BACKED_UP, actor=ACTOR)  # one of them moves on: the next batch is refused whole
    head = cat.audit.head()
    with pytest.raises(IllegalTransition, match=f"object {ids[1]}: BACKED_UP -> BACKED_UP is not allowed"):
        cat.transition_many(BACKED_UP, [(oid, {}, None) for oid in ids], actor=ACTOR)
    assert [cat.get(oid).state for oid in ids] == [STORED, BACKED_UP, STORED] and cat.audit.head() == head
    with pytest.raises(ValueError, match="more than once"):
        cat.transition_many(BACKED_UP, [(ids[0], {}, None), (ids[0], {}, None)], actor=ACTOR)
    assert cat.get(ids[0]).state == STORED and cat.audit.verify().ok


def test_required_fields_on_entry(cat):
    oid = new(cat)
    cat.transition(oid, VALIDATED, actor=ACTOR)
    with pytest.raises(IllegalTransition, match=r"needs field\(s\): tier, rule_id"):
        cat.transition(oid, CLASSIFIED, actor=ACTOR)
    with pytest.raises(IllegalTransition, match="needs field.*quarantine_reason"):
        cat.transition(oid, QUARANTINED, actor=ACTOR)
    cat.transition(oid, CLASSIFIED, actor=ACTOR, tier=1, rule_id="r1")
    with pytest.raises(IllegalTransition, match="ciphertext_sha256, key_id"):
        cat.transition(oid, PROTECTED, actor=ACTOR)
    assert cat.get(oid).state == CLASSIFIED


def test_quarantine_from_review_keeps_reason_and_leaves_the_unique_key(cat):
    oid = new(cat)
    drive(cat, oid, NEEDS_REVIEW)
    rec = cat.transition(oid, QUARANTINED, actor="reviewer", quarantine_reason="DEID_REJECTED")
    assert rec.quarantine_reason == "DEID_REJECTED"
    last = cat.audit.records(last=1)[0]
    assert (last.action, last.outcome, last.outcome_code, last.detail["reason"]) == (
        "object.quarantine", "failure", 8, "DEID_REJECTED")
    # the same instance may come in again as a new live object
    assert cat.register(actor=ACTOR, source="landing", **arrival("CT_small.dcm")).outcome == "registered"


# -- registration ------------------------------------------------------------


def test_register_stores_only_keyed_digests(cat, tmp_path):
    facts = arrival("CT_small.dcm")
    rec = cat.register(actor=ACTOR, source="cstore:MODALITY1", batch_id="b1", **facts).object
    assert rec.state == RECEIVED and len(rec.id) == 32
    assert rec.sop_key == cat.uid_key("sop", facts["sop_instance_uid"])
    assert rec.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"  # not identifying, kept plain
    assert rec.created_at.tzinfo is not None
    assert cat.find_by_sop_uid(facts["sop_instance_uid"]) == rec
    assert cat.find_by_sop_key(rec.sop_key) == rec
    assert cat.get_batch("b1").state == "OPEN"
    cat.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("catalog.sqlite*"))
    for value in identifiers("CT_small.dcm"):
        assert value.encode() not in raw
    assert set(rec.public()) >= {"id", "state"} and "sop_key" not in rec.public()


def test_duplicate_is_skipped_and_conflict_quarantined(cat):
    facts = arrival("MR_small.dcm")
    first = cat.register(actor=ACTOR, source="landing", **facts).object
    dup = cat.register(actor=ACTOR, source="landing", **facts)
    assert (dup.outcome, dup.object.id, dup.created) == ("duplicate", first.id, False)
    conflict = cat.register(actor=ACTOR, source="landing", **{**facts, "sha256": "e" * 64})
    assert conflict.outcome == "conflict" and conflict.object.id != first.id
    assert conflict.object.state == QUARANTINED and conflict.object.quarantine_reason == "DUPLICATE_CONFLICT"
    assert cat.state_counts() == {RECEIVED: 1, QUARANTINED: 1}
    assert cat.find_by_sop_uid(facts["sop_instance_uid"]).id == first.id
    actions = [r.action for r in cat.audit.records()]
    assert actions == ["object.register", "object.duplicate_skipped", "object.quarantine"]
    assert cat.audit.records(last=1)[0].detail["duplicate_of"] == first.id


def test_instance_sent_again_after_deletion_is_a_new_object(cat):
    facts = arrival("rtplan.dcm")
    oid = new(cat, "rtplan.dcm")
    drive(cat, oid, DELETED)
    again = cat.register(actor=ACTOR, source="landing", **facts)
    assert again.outcome == "registered" and again.object.id != oid


def test_register_with_caller_id_is_idempotent(cat):
    import uuid

    oid = uuid.uuid4().hex
    a = cat.register(actor=ACTOR, source="landing", object_id=oid, **arrival("CT_small.dcm"))
    b = cat.register(actor=ACTOR, source="landing", object_id=oid, **arrival("CT_small.dcm"))
    assert (a.outcome, b.outcome, a.object.id, b.object.id) == ("registered", "existing", oid, oid)
    assert cat.audit.count() == 1


def test_register_quarantined_without_uids(cat):
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    reg = cat.register(actor=ACTOR, source="landing", size=path.stat().st_size, quarantine_reason="TRUNCATED")
    assert reg.outcome == "quarantined" and reg.object.state == QUARANTINED and reg.object.sop_key is None
    a = cat.audit.records(last=1)[0]
    assert (a.action, a.event_id, a.outcome, a.detail["reason"]) == (
        "object.quarantine", 110107, "failure", "TRUNCATED"
    )
    reg2 = cat.register(actor=ACTOR, source="landing", quarantine_reason="EMPTY_FILE",
                        sha256=hashlib.sha256(b"").hexdigest(),
                        size=0, zone="quarantine", ciphertext_sha256="d" * 64, key_id="dek-1")
    assert reg2.object.zone == "quarantine"


@pytest.mark.parametrize("change, message", [
    ({"sop_instance_uid": None}, "sop_key"),
    ({"sha256": None}, "sha256"),
    ({"sha256": "ZZMARK-NAME-1234"}, "64-character hex"),
    ({"size": -1}, "non-negative"),
    ({"sop_class_uid": "ZZMARK^NAME"}, "DICOM UID"),
    ({"batch_id": "ZZMARK NAME"}, "batch_id"),
    ({"quarantine_reason": "ZZMARK patient said no"}, "reason code"),
    ({"source": "ZZMARK^NAME"}, "source"),
    ({"tier": 300}, "tier"),
    ({"zone": "ZZMARK"}, "storage zone"),
    ({"retention_deadline": dt.datetime(2030, 1, 1)}, "timezone-aware"),
    ({"object_id": "ZZMARK-NAME"}, "32-character"),
    ({"sop_key": "a" * 64}, "not a settable catalog field"),
    ({"actor": "ZZMARK^NAME"}, "actor"),
    ({"detail": {"note": "ZZMARK NAME"}}, "single tokens"),
])
def test_register_rejects_bad_input_without_echo(cat, change, message):
    kwargs = {"actor": ACTOR, "source": "landing", **arrival("CT_small.dcm"), **change}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(ValueError, match=message) as exc:
        cat.register(**kwargs)
    assert "ZZMARK" not in str(exc.value)
    assert cat.objects() == [] and cat.audit.count() == 0


# -- transitions: bad input, atomicity ------------------------------------------


def test_transition_bad_input(cat):
    oid = new(cat)
    with pytest.raises(UnknownObject, match="no catalog object 0{32}"):
        cat.transition("0" * 32, VALIDATED, actor=ACTOR)
    with pytest.raises(ValueError, match="32-character"):
        cat.transition("1.2.3.4", VALIDATED, actor=ACTOR)
    with pytest.raises(IllegalTransition, match="unknown target state"):
        cat.transition(oid, "ZZMARK", actor=ACTOR)
    with pytest.raises(ValueError, match="'state' is not a settable"):
        cat.transition(oid, VALIDATED, actor=ACTOR, state=STORED)
    with pytest.raises(ValueError, match="only be set when entering QUARANTINED"):
        cat.transition(oid, VALIDATED, actor=ACTOR, quarantine_reason="X_Y")
    with pytest.raises(ValueError, match="naive datetime|timezone-aware"):
        cat.transition(oid, VALIDATED, actor=ACTOR, retention_deadline=dt.datetime(2040, 1, 1))
    assert cat.get(oid).state == RECEIVED and cat.audit.count() == 1


def test_unsafe_audit_detail_rolls_back_the_catalog_change(cat):
    oid = new(cat)
    with pytest.raises(UnsafeAuditValue):
        cat.transition(oid, VALIDATED, actor=ACTOR, detail={"patient": "CompressedSamples^CT1"})
    assert cat.get(oid).state == RECEIVED and cat.audit.count() == 1


def test_transaction_groups_changes_and_rolls_back_all(cat):
    oid = new(cat)
    with pytest.raises(RuntimeError):
        with cat.transaction() as tx:
            cat.transition(oid, VALIDATED, actor=ACTOR, session=tx)
            cat.add_copy(oid, zone="cache", bucket="il-cache", key=f"{oid}/v1", actor=ACTOR, session=tx)
            raise RuntimeError("crash before commit")
    assert cat.get(oid).state == RECEIVED and cat.copies(oid) == [] and cat.audit.count() == 1
    with cat.transaction() as tx:
        cat.transition(oid, VALIDATED, actor=ACTOR, session=tx)
        cat.transition(oid, CLASSIFIED, actor=ACTOR, session=tx, tier=3, rule_id="mr")
    assert cat.get(oid).state == CLASSIFIED and cat.audit.count() == 3 and cat.audit.verify().ok


def test_writes_need_a_write_transaction(cat):
    oid = new(cat)
    with cat.session() as ro:
        assert cat.get(oid, session=ro).state == RECEIVED
        with pytest.raises(DatabaseUsageError):
            cat.transition(oid, VALIDATED, actor=ACTOR, session=ro)


# -- retention and legal hold ----------------------------------------------------


def test_expired_objects_and_copies(cat):
    now = dt.datetime(2030, 6, 1, tzinfo=UTC)
    past, future = now - dt.timedelta(days=1), now + dt.timedelta(days=1)
    ids = [new(cat, n) for n in FILES[:6]]
    deadlines = [past, past - dt.timedelta(days=5), future, past, past, None]
    for oid, deadline in zip(ids, deadlines, strict=True):
        drive(cat, oid, STORED)
        if deadline is not None:
            cat.transition(oid, BACKED_UP, actor=ACTOR, retention_deadline=deadline)
    cat.set_legal_hold(ids[3], True, "legal-team")
    cat.transition(ids[4], EXPIRED, actor=ACTOR)  # already being handled: not returned again
    got = cat.expired(now, limit=10)
    assert [o.id for o in got.objects] == [ids[1], ids[0]]  # earliest deadline first
    assert cat.expired(now, limit=1).objects[0].id == ids[1]
    assert got.objects[0].retention_deadline == past - dt.timedelta(days=5)

    c_old = cat.add_copy(ids[5], zone="cache", bucket="il-cache", key="k1", deadline=past, actor=ACTOR)
    c_new = cat.add_copy(ids[5], zone="cache", bucket="il-cache", key="k2", deadline=future, actor=ACTOR)
    c_held = cat.add_copy(ids[3], zone="cache", bucket="il-cache", key="k3", deadline=past, actor=ACTOR)
    assert [c.id for c in cat.expired(now).copies] == [c_old.id]
    cat.mark_copy_deleted(c_old.id, actor=ACTOR)
    assert cat.expired(now).copies == []
    with pytest.raises(LegalHoldActive):
        cat.mark_copy_deleted(c_held.id, actor=ACTOR)
    with pytest.raises(LegalHoldActive):  # a sweep's batch with one held copy changes nothing at all
        cat.mark_copies_deleted([c_new.id, c_held.id], actor=ACTOR)
    assert {c.id for c in cat.copies(ids[5])} == {c_new.id} and c_held.id in {c.id for c in cat.copies(ids[3])}
    with pytest.raises(ValueError, match="timezone-aware"):
        cat.expired(dt.datetime(2030, 1, 1))


def test_legal_hold_blocks_deletion_until_released(cat):
    oid = new(cat)
    drive(cat, oid, EXPIRED)
    held = cat.set_legal_hold(oid, True, "legal-team")
    assert held.legal_hold
    with pytest.raises(LegalHoldActive, match=f"object {oid}: EXPIRED -> DELETING refused"):
        cat.transition(oid, DELETING, actor=ACTOR)
    cat.set_legal_hold(oid, False, "legal-team")
    cat.transition(oid, DELETING, actor=ACTOR)
    cat.set_legal_hold(oid, True, "legal-team")  # placed while deleting: resumption stops
    with pytest.raises(LegalHoldActive):
        cat.transition(oid, DELETING, actor=ACTOR)
    with pytest.raises(LegalHoldActive):
        cat.transition(oid, DELETED, actor=ACTOR)
    cat.set_legal_hold(oid, False, "legal-team")
    cat.transition(oid, DELETED, actor=ACTOR)
    with pytest.raises(IllegalTransition, match="DELETED objects cannot be held"):
        cat.set_legal_hold(oid, True, "legal-team")
    holds = [r for r in cat.audit.records(object_ref=oid) if r.action.startswith("object.legal_hold")]
    assert [(r.action, r.detail["held"], r.detail["changed"]) for r in holds] == [
        ("object.legal_hold", True, True), ("object.legal_hold_release", False, True),
        ("object.legal_hold", True, True), ("object.legal_hold_release", False, True)]


# -- copies and batches ------------------------------------------------------------


def test_copies_are_idempotent_and_audited(cat):
    oid = new(cat)
    kw = dict(zone="archive", bucket="il-archive", key=f"objects/{oid}", version_id="v1",
              ciphertext_sha256="f" * 64, key_id="dek-abc", actor=ACTOR)
    a = cat.add_copy(oid, **kw)
    assert cat.add_copy(oid, **kw) == a
    b = cat.add_copy(oid, **{**kw, "version_id": "v2"})
    assert a.id != b.id and len(cat.copies(oid)) == 2
    checked = cat.record_copy_check(a.id, ok=True, actor=ACTOR)
    assert checked.verified_at is not None
    failed = cat.record_copy_check(b.id, ok=False, actor=ACTOR)
    assert failed.verified_at is None
    d1 = cat.mark_copy_deleted(a.id, actor=ACTOR)
    assert cat.mark_copy_deleted(a.id, actor=ACTOR) == d1
    assert [c.id for c in cat.copies(oid)] == [b.id]
    assert len(cat.copies(oid, include_deleted=True)) == 2
    acts = [(r.action, r.outcome) for r in cat.audit.records(object_ref=oid)]
    assert acts == [("object.register", "success"), ("copy.add", "success"), ("copy.add", "success"),
                    ("copy.verify", "success"), ("copy.verify", "failure"), ("copy.delete", "success")]
    with pytest.raises(UnknownObject):
        cat.add_copy("0" * 32, **kw)
    with pytest.raises(ValueError, match="bucket"):
        cat.add_copy(oid, **{**kw, "bucket": "Not A Bucket"})
    with pytest.raises(ValueError, match="storage zone"):
        cat.add_copy(oid, **{**kw, "zone": "elsewhere"})
    with pytest.raises(UnknownObject):
        cat.mark_copy_deleted("0" * 32, actor=ACTOR)


def test_batches(cat):
    b = cat.open_batch("20260101T000000-abcd1234", actor=ACTOR)
    assert b.state == "OPEN" and cat.open_batch(b.id, actor=ACTOR) == b
    new(cat, batch_id=b.id)
    new(cat, "MR_small.dcm", batch_id=b.id)
    assert [o.batch_id for o in cat.objects(batch_id=b.id)] == [b.id, b.id]
    assert cat.state_counts(batch_id=b.id) == {RECEIVED: 2}
    assert cat.set_batch_state(b.id, "INGESTED", actor=ACTOR, counts={"files": 2}).state == "INGESTED"
    with pytest.raises(IllegalTransition, match=f"batch {b.id}: INGESTED -> OPEN is not allowed"):
        cat.set_batch_state(b.id, "OPEN", actor=ACTOR)
    b2 = cat.open_batch("b2", actor=ACTOR)
    failed = cat.set_batch_state(b2.id, "GATE_FAILED", actor=ACTOR,
                                 counts={"files": 3, "quarantined": {"NOT_DICOM": 3}})
    assert failed.counts == {"files": 3, "quarantined": {"NOT_DICOM": 3}}
    last = cat.audit.records(last=1)[0]
    assert (last.action, last.outcome, last.object_ref, last.detail["counts"]["files"]) == (
        "batch.state", "failure", "batch:b2", 3)
    for bad in ({"files": -1}, {"files": 1.5}, {"files": "3"}, {"ZZ MARK": 1}, [1]):
        with pytest.raises(ValueError):
            cat.set_batch_state(b2.id, "GATE_FAILED", actor=ACTOR, counts=bad)
    with pytest.raises(ValueError, match="batch state"):
        cat.set_batch_state(b2.id, "DONE", actor=ACTOR)
    with pytest.raises(UnknownObject):
        cat.get_batch("nope")


# -- the database itself ---------------------------------------------------------------


def test_ping_wal_and_utc(cat, tmp_path):
    assert cat.ping()
    if cat.engine.dialect.name == "sqlite":
        with sqlite3.connect(tmp_path / "catalog.sqlite") as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with cat.engine.connect() as conn:  # FULL (2): a commit is on disk when it returns, power cut or not
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    assert not Database(f"sqlite:///{tmp_path}/missing-dir/x/catalog.sqlite").ping()
    oid = new(cat)
    deadline = dt.datetime(2031, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    drive(cat, oid, STORED)
    rec = cat.transition(oid, BACKED_UP, actor=ACTOR, retention_deadline=deadline)
    assert rec.retention_deadline == deadline and rec.retention_deadline.tzinfo == UTC


def _register_worker(url: str, name: str, n: int) -> list[str]:
    cat = Catalog(url)
    out = []
    facts = arrival(name)
    for i in range(n):
        out.append(cat.register(actor=f"worker/{i}", source="landing", **facts).outcome)
    cat.dispose()
    return out


def test_concurrent_registration_of_one_instance_makes_one_object(catalog_url):
    url = catalog_url
    Catalog(url).dispose()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_register_worker, [(url, "CT_small.dcm", 10)] * 4)
    outcomes = [o for r in results for o in r]
    assert outcomes.count("registered") == 1 and outcomes.count("duplicate") == 39
    cat = Catalog(url)
    assert len(cat.objects()) == 1
    assert cat.audit.verify().ok and cat.audit.count() == 40


def _child_transition(cat: Catalog, oid: str) -> None:
    cat.transition(oid, VALIDATED, actor="child")


def test_catalog_made_before_a_fork_works_in_parent_and_child(cat):
    oid = new(cat)
    cat.get(oid)  # the parent has a pooled connection now
    child = multiprocessing.get_context("fork").Process(target=_child_transition, args=(cat, oid))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert cat.get(oid).state == VALIDATED
    cat.transition(oid, CLASSIFIED, actor=ACTOR, tier=1, rule_id="r")
    assert cat.audit.verify().ok and cat.audit.count() == 3


def test_a_catalog_from_before_a_new_column_is_upgraded_in_place(catalog_url):
    """An older catalog lacking a nullable column the schema now has gets it on open; its rows read as before."""
    from imaging_lifecycle.catalog import Catalog

    from conftest import Intruder

    url = catalog_url
    first = Catalog(url)
    reg = first.register(actor="t", source="landing", quarantine_reason="NOT_DICOM")
    first.dispose()
    Intruder(url).execute("ALTER TABLE objects DROP COLUMN policy_fingerprint")  # a catalog made before it
    cat = Catalog(url)
    assert cat.get(reg.object.id).policy_fingerprint is None and cat.get(reg.object.id).state == "QUARANTINED"
    assert cat.audit.verify().ok
