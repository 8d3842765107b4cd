"""Backup to the second site, restore verification and operator restore: real files, real S3, real SQLite."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import PROJECT

CLI = str(PROJECT / ".venv" / "bin" / "imaging-lifecycle")
ACTOR = "test/backup"


def services(settings):
    """Catalog, object store and encrypt-and-store layer of one task's Services."""
    from imaging_lifecycle.services import Services

    svc = Services.open(settings)
    return svc.catalog, svc.store, svc.encrypted


def stored_objects(settings, files: dict[str, Path], *, tier: int = 3) -> dict[str, str]:
    """Ingest real files and move them to STORED as the protect stage would; returns name -> catalog id."""
    from imaging_lifecycle import ingest, landing
    from imaging_lifecycle.catalog import Catalog

    for name, src in files.items():
        shutil.copy(src, settings.landing_dir / name)
    from imaging_lifecycle.services import Services

    svc = Services.open(settings)
    landing.ensure_identity(settings.landing_dir)
    claim = ingest.claim_batch(svc, quiet_seconds=0)
    results = [ingest.run_chunk(svc, claim.batch_id, c, actor=ACTOR) for c in claim.chunks]
    ingest.close_batch(svc, results, actor=ACTOR)
    cat = Catalog(settings.catalog_url)
    by_sha = {hashlib.sha256(p.read_bytes()).hexdigest(): n for n, p in files.items()}
    out = {}
    deadline = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    for o in cat.objects(batch_id=claim.batch_id):
        (copy,) = cat.copies(o.id)
        cat.transition(o.id, "CLASSIFIED", tier=tier, rule_id="test", actor=ACTOR)
        cat.transition(o.id, "PROTECTED", ciphertext_sha256=copy.ciphertext_sha256, key_id=copy.key_id, actor=ACTOR)
        cat.transition(o.id, "STORED", zone="archive", retention_deadline=deadline, actor=ACTOR)
        out[by_sha[o.sha256]] = o.id
    assert len(out) == len(files)
    return out


def cli_env(settings, **extra) -> dict:
    return {**os.environ, "IL_CATALOG_URL": settings.catalog_url, **extra}


def backup_versions(store, key: str) -> list:
    return [v for v in store.versions("backup", key) if v.key == key]


def test_replicate_makes_a_byte_identical_locked_copy_and_backs_up(env, dicom_file):
    from imaging_lifecycle.backup import replicate, verify_all

    files = {n: dicom_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")}
    ids = stored_objects(env, files)
    cat, store, encrypted = services(env)
    keys_before = cat.kek_refs_in_use()
    result = replicate(cat, store, list(ids.values()), actor=ACTOR, retention_days=1, encrypted=encrypted)
    assert result["backed_up"] == 3 and result["uploaded"] == 3 and result["failed"] == 0
    assert result["lock_mode"] == "GOVERNANCE"
    assert cat.kek_refs_in_use() == keys_before  # no new data key: the backup shares the archive's
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=23)
    for oid in ids.values():
        assert cat.get(oid).state == "BACKED_UP"
        archive, backup = sorted(cat.copies(oid), key=lambda c: c.zone != "archive")
        assert (archive.zone, backup.zone) == ("archive", "backup")
        assert backup.key_id == archive.key_id and backup.ciphertext_sha256 == archive.ciphertext_sha256
        assert backup.bucket == store.bucket("backup") and backup.bucket != archive.bucket
        assert store.get("backup", backup.key, backup.version_id) == store.get("archive", archive.key,
                                                                             archive.version_id)
        ret = store.client("backup").get_object_retention(backup.bucket, backup.key, version_id=backup.version_id)
        assert ret.mode == "GOVERNANCE" and ret.retain_until_date > soon
        assert store.purge("backup", [(backup.key, backup.version_id)])  # locked: the delete is refused
    # A rerun duplicates nothing: every object is already BACKED_UP.
    again = replicate(cat, store, list(ids.values()), actor=ACTOR, retention_days=1)
    assert again["skipped"] == 3 and again["backed_up"] == 0
    for oid in ids.values():
        assert len([c for c in cat.copies(oid) if c.zone == "backup"]) == 1
        assert len(backup_versions(store, f"objects/{oid}")) == 1
    checked = verify_all(cat, store, encrypted, actor=ACTOR)
    assert checked["checked"] == 3 and checked["ok"] == 3 and checked["mismatch"] == 0
    assert all(c.verified_at is not None for oid in ids.values() for c in cat.copies(oid) if c.zone == "backup")
    # Counts and ids only: nothing from the files reaches the result.
    assert set(json.dumps(result)) and "CT_small" not in json.dumps(result)


def test_a_crash_after_upload_is_resumed_without_a_second_copy(env, dicom_file):
    ids = stored_objects(env, {"CT_small.dcm": dicom_file("CT_small.dcm")})
    (oid,) = ids.values()
    code = ("import sys; from imaging_lifecycle.backup import backup_step; "
            "from imaging_lifecycle.services import Services; "
            f"backup_step(Services.open(), [{oid!r}], actor='test/crash', limit=10)")
    crashed = subprocess.run([str(PROJECT / ".venv" / "bin" / "python"), "-c", code],
                             env=cli_env(env, IL_CRASH_AT="backup.uploaded"), capture_output=True, text=True,
                             timeout=120)
    assert crashed.returncode == 86, crashed.stderr
    cat, store, encrypted = services(env)
    assert cat.get(oid).state == "STORED" and [c.zone for c in cat.copies(oid)] == ["archive"]
    assert len(backup_versions(store, f"objects/{oid}")) == 1  # uploaded, not recorded
    from imaging_lifecycle.backup import replicate

    result = replicate(cat, store, [oid], actor=ACTOR, retention_days=1, encrypted=encrypted)
    assert result["adopted"] == 1 and result["uploaded"] == 0
    assert len(backup_versions(store, f"objects/{oid}")) == 1
    assert cat.get(oid).state == "BACKED_UP"


def _damage(cat, store, copy) -> None:
    """Write a corrupted version under the copy's key and point the copy row at it (bit rot on the second site)."""
    from sqlalchemy import update

    from imaging_lifecycle.catalog.schema import copies

    raw = bytearray(store.get("backup", copy.key, copy.version_id))
    raw[len(raw) // 2] ^= 0x01
    put = store.put("backup", copy.key, bytes(raw), retain_until=dt.datetime.now(dt.timezone.utc)
                    + dt.timedelta(days=1))
    with cat.engine.begin() as conn:
        conn.execute(update(copies).where(copies.c.id == copy.id).values(version_id=put.version_id))


def test_a_damaged_backup_fails_verification_flags_the_object_and_is_audited(env, dicom_file):
    from imaging_lifecycle.backup import BackupMismatch, replicate, verify_all

    ids = stored_objects(env, {n: dicom_file(n) for n in ("CT_small.dcm", "MR_small.dcm")})
    cat, store, encrypted = services(env)
    replicate(cat, store, list(ids.values()), actor=ACTOR, retention_days=1)
    bad, good = ids["CT_small.dcm"], ids["MR_small.dcm"]
    (copy,) = [c for c in cat.copies(bad) if c.zone == "backup"]
    _damage(cat, store, copy)
    with pytest.raises(BackupMismatch) as err:
        verify_all(cat, store, encrypted, actor=ACTOR)
    assert bad in str(err.value) and good not in str(err.value)
    assert err.value.result["mismatch"] == 1 and err.value.result["ok"] == 1
    assert err.value.result["mismatched_ids"] == [bad]
    assert cat.get(bad).flagged == "BACKUP_MISMATCH" and cat.get(good).flagged is None
    recs = cat.audit.records(object_ref=bad, last=5)
    check = [r for r in recs if r.action == "copy.verify"][-1]
    assert check.outcome == "failure" and check.detail["reason"] == "INTEGRITY"
    assert any(r.action == "object.flag" and r.detail["flag"] == "BACKUP_MISMATCH" for r in recs)
    assert cat.audit.verify().ok
    # The command: JSON counts on stdout, exit 1.
    r = subprocess.run([CLI, "verify-backups", "--all"], env=cli_env(env), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["mismatched_ids"] == [bad]


def _repoint(cat, copy, **values) -> None:
    from sqlalchemy import update

    from imaging_lifecycle.catalog.schema import copies

    with cat.engine.begin() as conn:
        conn.execute(update(copies).where(copies.c.id == copy.id).values(**values))


def test_a_backup_copies_only_the_recorded_bytes_that_decrypt_and_reads_nothing_back(env, dicom_file):
    """The backup site's copy is proven by its checksum, not by a read-back: so the bytes are checked before.

    An attacker on the primary site writes altered bytes over an archive copy (a new version the catalog
    row points at), then bytes that match the recorded hash but are another object's ciphertext. Neither
    reaches the backup site, each failure is audited, the objects stay STORED; an intact one is copied.
    """
    from imaging_lifecycle.backup import BackupFailed, replicate

    ids = stored_objects(env, {n: dicom_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")})
    cat, store, encrypted = services(env)
    altered, swapped, intact = ids["CT_small.dcm"], ids["MR_small.dcm"], ids["rtplan.dcm"]
    (a,) = [c for c in cat.copies(altered) if c.zone == "archive"]
    raw = bytearray(store.get("archive", a.key, a.version_id))
    raw[len(raw) // 2] ^= 0x01
    _repoint(cat, a, version_id=store.put("archive", a.key, bytes(raw)).version_id)
    (s,) = [c for c in cat.copies(swapped) if c.zone == "archive"]
    (i,) = [c for c in cat.copies(intact) if c.zone == "archive"]
    other = store.get("archive", i.key, i.version_id)  # a real ciphertext, of another object and key
    _repoint(cat, s, version_id=store.put("archive", s.key, other).version_id,
             ciphertext_sha256=hashlib.sha256(other).hexdigest())
    with pytest.raises(BackupFailed) as err:
        replicate(cat, store, [altered, swapped, intact], actor=ACTOR, retention_days=1, encrypted=encrypted)
    assert err.value.result["backed_up"] == 1
    assert cat.get(intact).state == "BACKED_UP"
    for oid, reason in ((altered, "SOURCE_MISMATCH"), (swapped, "INTEGRITY")):
        assert cat.get(oid).state == "STORED"
        assert not [c for c in cat.copies(oid) if c.zone == "backup"]
        assert not [v for v in store.versions("backup", f"objects/{oid}")], "nothing reached the backup site"
        check = [r for r in cat.audit.records(object_ref=oid, last=5) if r.action == "copy.verify"][-1]
        assert check.outcome == "failure" and check.detail["reason"] == reason


def test_sampling_checks_every_backup_exactly_once_per_cycle():
    from imaging_lifecycle.backup import is_due
    from imaging_lifecycle.catalog import CopyRecord

    cycle = 30
    start = dt.date(2030, 1, 1)
    verified = dt.datetime(2030, 1, 1, 3, tzinfo=dt.timezone.utc)
    ids = [os.urandom(16).hex() for _ in range(300)]
    copies = {i: CopyRecord(i, i, "backup", "b", "k", "v", None, None, None, verified, None, verified) for i in ids}
    seen: dict[str, int] = {}
    for day in range(1, cycle + 1):
        today = start + dt.timedelta(days=day)
        for i in ids:
            if is_due(copies[i], today, cycle):
                seen[i] = seen.get(i, 0) + 1
                when = dt.datetime.combine(today, dt.time(3), dt.timezone.utc)
                copies[i] = replace(copies[i], verified_at=when)
    assert set(seen) == set(ids) and set(seen.values()) == {1}
    # Never verified: due at once. Verified today: not again. Missed a whole cycle: overdue.
    fresh = replace(copies[ids[0]], verified_at=None)
    assert is_due(fresh, start, cycle)
    today = start + dt.timedelta(days=100)
    assert not is_due(replace(fresh, verified_at=dt.datetime.combine(today, dt.time(1), dt.timezone.utc)), today, cycle)
    assert is_due(replace(fresh, verified_at=verified), today, cycle)


def test_verify_sample_checks_new_backups_then_only_the_days_share(env, dicom_file):
    from imaging_lifecycle.backup import replicate, sample_day, verify_sample

    ids = stored_objects(env, {n: dicom_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")})
    cat, store, encrypted = services(env)
    replicate(cat, store, list(ids.values()), actor=ACTOR, retention_days=1)
    today = dt.datetime.now(dt.timezone.utc).date()
    first = verify_sample(cat, store, encrypted, today=today, cycle_days=7, actor=ACTOR)
    assert first["checked"] == 3 and first["ok"] == 3  # never verified: all due
    assert verify_sample(cat, store, encrypted, today=today, cycle_days=7, actor=ACTOR)["checked"] == 0
    tomorrow = today + dt.timedelta(days=1)
    expected = sum(sample_day(i, 7) == tomorrow.toordinal() % 7 for i in ids.values())
    assert verify_sample(cat, store, encrypted, today=tomorrow, cycle_days=7, actor=ACTOR)["checked"] == expected


def test_an_approved_restore_writes_the_exact_original_and_falls_back_to_the_backup(env, dicom_file, tmp_path):
    from imaging_lifecycle.backup import replicate, restore_object
    from imaging_lifecycle.services import Services

    from conftest import approved

    src = dicom_file("MR_small.dcm")
    (oid,) = stored_objects(env, {"MR_small.dcm": src}).values()
    cat, store, _ = services(env)
    replicate(cat, store, [oid], actor=ACTOR, retention_days=1)
    svc = Services.open(env)
    rid = approved(svc, "restore", [oid], requester="operator")
    out = tmp_path / "restored.dcm"
    result = restore_object(svc, oid, out, request_id=rid, actor="operator")
    assert out.read_bytes() == src.read_bytes() and (out.stat().st_mode & 0o777) == 0o600
    assert result == {"id": oid, "zone": "archive", "fallback": False, "size": src.stat().st_size}
    last = cat.audit.records(object_ref=oid, last=1)[0]
    assert (last.action, last.actor, last.outcome, last.detail["request"]) == ("object.export", "operator",
                                                                              "success", rid)
    # The primary site lost the object: the restore comes from the second site.
    (archive,) = [c for c in cat.copies(oid) if c.zone == "archive"]
    assert store.purge("archive", [(archive.key, archive.version_id)]) == []
    out2 = tmp_path / "from-backup.dcm"
    assert restore_object(svc, oid, out2, request_id=rid, actor="operator")["zone"] == "backup"
    assert out2.read_bytes() == src.read_bytes()
    assert any(x.action == "object.access" and x.outcome == "minor_failure" and x.detail["reason"] == "MISSING"
               for x in cat.audit.records(object_ref=oid, last=3))
    # Bad input: an existing OUT is never overwritten.
    with pytest.raises(FileExistsError):
        restore_object(svc, oid, out2, request_id=rid, actor="operator")


@pytest.mark.parametrize("tier", [3, 5])
def test_a_restore_without_an_approved_request_is_refused(env, dicom_file, tmp_path, tier):
    from imaging_lifecycle.backup import restore_object
    from imaging_lifecycle.catalog import NotApproved
    from imaging_lifecycle.services import Services

    from conftest import approved

    (oid,) = stored_objects(env, {"CT_small.dcm": dicom_file("CT_small.dcm")}, tier=tier).values()
    svc = Services.open(env)
    out = tmp_path / "nope.dcm"
    other = approved(svc, "restore", [oid], requester="clinician")  # someone else's approval
    for request_id, reason in ((None, "NO_REQUEST"), ("f" * 32, "NO_REQUEST"), (other, "NOT_THE_REQUESTER")):
        with pytest.raises(NotApproved) as refused:
            restore_object(svc, oid, out, request_id=request_id, actor="operator")
        assert refused.value.reason == reason
        last = svc.catalog.audit.records(object_ref=oid, last=1)[0]
        assert (last.action, last.actor, last.outcome, last.detail["reason"]) == ("access.denied", "operator",
                                                                                  "failure", reason)
    assert not out.exists() and list(tmp_path.glob(".nope*")) == []
    # The command acts for a person: without a login nobody is anybody, and nothing is written.
    r = subprocess.run([CLI, "restore", oid, str(out), "--request", other], env=cli_env(env, IL_TOKEN_FILE=str(
        tmp_path / "no-token")), capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "log in" in r.stderr and not out.exists()
    r = subprocess.run([CLI, "restore", oid, str(out), "--request", other, "--actor", "alice"], env=cli_env(env),
                       capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--actor" in r.stderr  # there is no free-text actor any more


def test_bad_settings_and_arguments_get_clear_errors(env, store, monkeypatch):
    from imaging_lifecycle.backup import lock_mode, verify_sample

    monkeypatch.setenv("IL_BACKUP_LOCK_MODE", "forever")
    with pytest.raises(ValueError, match="IL_BACKUP_LOCK_MODE must be one of GOVERNANCE, COMPLIANCE"):
        lock_mode()
    monkeypatch.setenv("IL_BACKUP_LOCK_MODE", "compliance")
    assert lock_mode() == "COMPLIANCE"
    cat, store_, encrypted = services(env)
    with pytest.raises(ValueError, match="cycle_days"):
        verify_sample(cat, store_, encrypted, today=dt.date.today(), cycle_days=0, actor=ACTOR)
    r = subprocess.run([CLI, "verify-backups", "--cycle-days", "0"], env=cli_env(env), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    # The storage adapter honours the COMPLIANCE mode (a short lock, so the bucket stays clean).
    key = f"test/compliance-{os.urandom(4).hex()}"
    put = store.put("backup", key, b"x", retain_until=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3),
                    lock_mode="COMPLIANCE")
    ret = store.client("backup").get_object_retention(store.bucket("backup"), key, version_id=put.version_id)
    assert ret.mode == "COMPLIANCE"
