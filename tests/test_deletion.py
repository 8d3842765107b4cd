"""Secure deletion against real S3 and a real SQLite catalog: erase, purge, verify, certify."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from dataclasses import replace

import pytest

from conftest import PROJECT, approved, policy_tier, write_policy

UTC = dt.timezone.utc
T = dt.datetime(2031, 3, 4, 8, 0, tzinfo=UTC)
ACTOR = "test/sweeper"


def _no_backup_for_tier_3(doc: dict) -> None:
    policy_tier(doc, 3)["handling"]["backup_required"] = False


@pytest.fixture
def env(object_store_settings, tmp_path, monkeypatch, catalog_url):
    # A key store per test: a study deleted here has its KEK destroyed, and the next test
    # ingests the same pydicom files (same study) again.
    monkeypatch.setenv("IL_KEYSTORE_PATH", str(tmp_path / "keystore.sealed"))
    # The hospital's policy here: tier-3 objects need no backup (these tests store no backups),
    # tier 4 still does. Set in the environment too, so the CLI in a subprocess runs under it.
    policy = write_policy(tmp_path / "policy.yaml", _no_backup_for_tier_3)
    monkeypatch.setenv("IL_POLICY_FILE", str(policy))
    settings = replace(object_store_settings, landing_dir=tmp_path / "landing", policy_file=policy,
                       catalog_url=catalog_url)  # SQLite, then a real PostgreSQL
    settings.landing_dir.mkdir()
    (settings.state_dir / "ingest").mkdir(exist_ok=True)
    for leftover in (settings.state_dir / "ingest").iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
    return settings


def stored_objects(env, dicom_file, names, *, tier=3, deadline=T):
    """Real DICOM files through ingest, then CLASSIFIED -> PROTECTED -> STORED with ``deadline``."""
    from imaging_lifecycle.catalog import Catalog

    from conftest import ingest_now

    for n in names:
        shutil.copy(dicom_file(n), env.landing_dir / n)
    summary = ingest_now(env)
    cat = Catalog(env.catalog_url)
    ids = [o.id for o in cat.objects(batch_id=summary["batch_id"])]
    for oid in ids:
        cat.transition(oid, "CLASSIFIED", tier=tier, rule_id="test", actor=ACTOR)
        cat.transition(oid, "PROTECTED", actor=ACTOR)
        cat.transition(oid, "STORED", zone="archive", retention_deadline=deadline, actor=ACTOR)
    return cat, ids


def services(env):
    from imaging_lifecycle.services import Services

    return Services.open(env)


def assert_gone(env, cat, oid):
    """No version of any copy, no live DEK, a certificate, DELETED."""
    from imaging_lifecycle.crypto import KeyUnavailable
    from imaging_lifecycle.storage import ObjectStore

    store = ObjectStore(env)
    assert cat.get(oid).state == "DELETED"
    all_copies = cat.copies(oid, include_deleted=True)
    assert all_copies and all(c.deleted_at is not None for c in all_copies)
    for c in all_copies:
        assert [v for v in store.versions(c.zone, c.key) if v.key == c.key] == []
        assert not store.exists(c.zone, c.key, c.version_id)
        with pytest.raises(KeyUnavailable):
            cat.sealed(c, "0" * 64)
    rows = cat.data_key_rows([c.key_id for c in all_copies])
    assert rows and not any(r["live"] for r in rows.values())
    certs = cat.certificates(oid)
    assert [c["scope"] for c in certs].count("object") == 1


def test_an_expired_object_is_erased_purged_verified_and_certified(env, dicom_file):
    from imaging_lifecycle.deletion import sweep
    from imaging_lifecycle.keystore import KekRef, open_default_keystore

    cat, (oid,) = stored_objects(env, dicom_file, ["CT_small.dcm"])
    copy = cat.copies(oid)[0]
    kek = KekRef.parse(cat.data_key_rows([copy.key_id])[copy.key_id]["kek_ref"]).kek_id
    assert sweep(services(env), T - dt.timedelta(seconds=1), actor=ACTOR)["candidates"] == 0
    out = sweep(services(env), T, actor=ACTOR)
    assert out["objects_deleted"] == 1 and out["certificates"] == 1 and out["gate"]["success"]
    assert list(out["phase_seconds"]) == ["gate", "erase", "purge", "verify", "certify"]  # the sweeper's log
    assert_gone(env, cat, oid)
    assert open_default_keystore(env).is_destroyed(kek)  # the whole study expired: its KEK went too
    (cert,) = cat.certificates(oid)
    assert cert["method"] == "cryptographic_erase+logical_delete" and cert["zones"] == ["archive"]
    assert cert["verification"] == {"versions_remaining": 0, "data_keys_live": 0, "kek_destroyed": True,
                                    "kek_shared_with_live_data": False, "unwrap_possible": False, "result": "pass"}
    assert "deletion.certificate" in [r.action for r in cat.audit.records()]
    assert cat.audit.verify().ok
    assert sweep(services(env), T + dt.timedelta(days=1), actor=ACTOR)["candidates"] == 0  # nothing twice


def test_after_a_destruction_no_copy_the_project_keeps_can_bring_the_kek_back(env, dicom_file, tmp_path):
    """The key store is re-sealed under a new master-key generation and its DR export replaced."""
    from imaging_lifecycle import keyseal
    from imaging_lifecycle.deletion import sweep
    from imaging_lifecycle.keystore import KekRef, KeyStoreUnreadable, LocalKeyStore, open_default_keystore

    cat, (oid,) = stored_objects(env, dicom_file, ["CT_small.dcm"])
    copy = cat.copies(oid)[0]
    row = cat.data_key_rows([copy.key_id])[copy.key_id]
    ks = open_default_keystore(env)
    svc = services(env)
    keyseal.export_dr(svc, actor=ACTOR)  # the export as it stood before the deletion
    before_gen = ks.generation
    stolen = tmp_path / "keystore-copy.sealed"
    stolen.write_bytes(ks.path.read_bytes())
    stolen.chmod(0o600)
    ref = KekRef.parse(row["kek_ref"])
    wrapped = bytes(cat.data_key(copy.key_id)["wrapped"])
    dek = LocalKeyStore(stolen, ks._masters).unwrap(ref, wrapped)  # the copy works while nothing is destroyed
    assert sweep(services(env), T, actor=ACTOR)["objects_deleted"] == 1

    ks = open_default_keystore(env)
    assert ks.generation == before_gen + 1 and not ks.needs_reseal
    with pytest.raises(KeyStoreUnreadable, match="destroyed"):  # the copy from before, with today's secrets
        LocalKeyStore(stolen, ks._masters).unwrap(ref, wrapped)
    assert dek
    versions = [v for v in svc.store.versions(keyseal.DR_ZONE, keyseal.DR_KEY)]
    assert len(versions) == 1  # the export from before the deletion is purged from the backup site
    actions = [r.action for r in cat.audit.records()]
    assert actions.index("key.destroy") < actions.index("key.reseal") < len(actions)
    assert "key.dr_export" in actions and cat.audit.verify().ok
    ks.path.unlink()  # the key store is lost: the DR export brings it back
    assert keyseal.restore_dr(services(env), actor=ACTOR)["restored"]
    assert open_default_keystore(env).is_destroyed(ref.kek_id)


def test_a_study_kek_survives_while_other_objects_of_the_study_live(env, dicom_file):
    from imaging_lifecycle.deletion import delete_candidates
    from imaging_lifecycle.synthetic import Patient, write_study

    write_study(env.landing_dir / "s", Patient("77"), instances=2)
    cat, ids = stored_objects(env, dicom_file, [])
    first, second = ids
    out = delete_candidates(services(env), [first], T, actor=ACTOR)
    assert out["objects_deleted"] == 1
    (cert,) = cat.certificates(first)
    assert cert["verification"]["kek_destroyed"] is False and cert["verification"]["result"] == "pass"
    from imaging_lifecycle.encrypted_store import EncryptedStore
    from imaging_lifecycle.keystore import open_default_keystore

    o = cat.get(second)
    with EncryptedStore(services(env).encrypted.store, open_default_keystore(env)).open(
            cat.sealed(cat.copies(second)[0], o.sha256), second) as r:
        assert len(r.read()) == o.size  # the other object of the study is still readable


def test_cache_copy_lives_72_hours_and_is_gone_one_interval_later(env, dicom_file):
    from imaging_lifecycle.catalog import NotApproved
    from imaging_lifecycle.deletion import sweep
    from imaging_lifecycle.keystore import open_default_keystore
    from imaging_lifecycle.retention import read_grant, retrieve
    from imaging_lifecycle.storage import ObjectStore

    cat, (oid,) = stored_objects(env, dicom_file, ["MR_small.dcm"], deadline=T + dt.timedelta(days=3650))
    svc = services(env)
    grant = retrieve(svc, oid, request_id=approved(svc, "working_copy", [oid], now=T), actor="clinician", now=T)
    g = cat.grant(grant.id)
    assert g["actor"] == "clinician" and g["deadline"] == T + dt.timedelta(hours=72)
    out = env.state_dir / "tmp-read" / "view.dcm"
    out.parent.mkdir(exist_ok=True)
    assert read_grant(svc, grant.id, out, actor="clinician", now=T + dt.timedelta(hours=1)) == cat.get(oid).sha256
    out.unlink()
    kek = open_default_keystore(env).current(f"grant:{grant.id}")
    assert kek is not None

    nearly = sweep(services(env), T + dt.timedelta(hours=71, minutes=59), actor=ACTOR)
    assert nearly["candidates"] == 0
    store = ObjectStore(env)
    assert list(store.versions("cache", g["key"]))
    with pytest.raises(NotApproved, match="GRANT_NOT_LIVE"):
        read_grant(svc, grant.id, out, actor="clinician", now=T + dt.timedelta(hours=72))

    done = sweep(services(env), T + dt.timedelta(hours=72, minutes=15), actor=ACTOR)
    assert done["copies_deleted"] == 1 and done["grants_erased"] == 1 and done["objects_deleted"] == 0
    assert list(store.versions("cache", g["key"])) == []
    assert open_default_keystore(env).is_destroyed(kek.kek_id)
    assert cat.get(oid).state == "STORED" and [c.zone for c in cat.copies(oid)] == ["archive"]
    (cert,) = cat.certificates(oid)
    assert cert["scope"].startswith("copy:") and cert["zones"] == ["cache"]
    assert cert["verification"]["kek_destroyed"] is True
    with pytest.raises(NotApproved, match="GRANT_NOT_LIVE"):
        read_grant(svc, grant.id, out, actor="clinician", now=T + dt.timedelta(hours=1))


def test_grant_lifetime_is_capped_at_72_hours(env, dicom_file):
    from imaging_lifecycle.retention import GrantRefused, retrieve

    cat, (oid,) = stored_objects(env, dicom_file, ["CT_small.dcm"], deadline=T + dt.timedelta(days=9))
    svc = services(env)
    rid = approved(svc, "working_copy", [oid], now=T)
    for bad in (73, 0, -1, True, "5"):
        with pytest.raises(GrantRefused):
            retrieve(svc, oid, request_id=rid, actor="clinician", hours=bad, now=T)
    g = retrieve(svc, oid, request_id=rid, actor="clinician", hours=5, now=T)
    assert cat.grant(g.id)["deadline"] == T + dt.timedelta(hours=5)


def test_held_objects_are_never_deleted(env, dicom_file):
    from imaging_lifecycle.deletion import sweep
    from imaging_lifecycle.retention import set_legal_hold

    cat, (oid,) = stored_objects(env, dicom_file, ["CT_small.dcm"])
    set_legal_hold(services(env), oid, True, actor="legal")
    for later in (T, T + dt.timedelta(days=400)):
        assert sweep(services(env), later, actor=ACTOR)["candidates"] == 0
    assert cat.get(oid).state == "STORED" and cat.copies(oid)
    svc = services(env)
    set_legal_hold(svc, oid, False, actor="operator", request_id=approved(svc, "release_hold", [oid]))
    assert sweep(services(env), T, actor=ACTOR)["objects_deleted"] == 1
    actions = [r.action for r in cat.audit.records()]
    assert "object.legal_hold" in actions and "object.legal_hold_release" in actions


@pytest.mark.parametrize("poison", ["not_due", "held", "no_backup", "wrong_state"])
def test_the_gate_blocks_a_poisoned_candidate_list_and_deletes_nothing(env, dicom_file, poison):
    from imaging_lifecycle.deletion import delete_candidates
    from imaging_lifecycle.gates import GateFailed
    from imaging_lifecycle.storage import ObjectStore

    cat, (good, bad) = stored_objects(env, dicom_file, ["CT_small.dcm", "MR_small.dcm"])
    if poison == "not_due":
        cat.set_retention_deadline(bad, T + dt.timedelta(hours=1), actor=ACTOR)
    elif poison == "held":
        cat.set_legal_hold(bad, True, ACTOR)
    elif poison == "no_backup":  # the env's policy wants backups of tier 4; this tier-4 object has none
        from sqlalchemy import update

        from imaging_lifecycle.catalog.schema import objects

        with cat.transaction() as s:
            s.execute(update(objects).where(objects.c.id == bad).values(tier=4))
    else:
        from sqlalchemy import update

        from imaging_lifecycle.catalog.schema import objects

        with cat.transaction() as s:  # a row in a state no sweep may touch
            s.execute(update(objects).where(objects.c.id == bad).values(state="VALIDATED"))
    with pytest.raises(GateFailed):
        delete_candidates(services(env), [good, bad], T, actor=ACTOR)
    store = ObjectStore(env)
    for oid in (good, bad):
        assert cat.get(oid).state in ("STORED", "VALIDATED")
        (c,) = cat.copies(oid)
        assert store.exists(c.zone, c.key, c.version_id)
        assert all(r["live"] for r in cat.data_key_rows([c.key_id]).values())
        assert cat.certificates(oid) == []
    assert any(r.action == "gate.run" and r.outcome == "failure" for r in cat.audit.records())


def test_every_version_and_delete_marker_is_purged(env, dicom_file):
    from imaging_lifecycle.deletion import sweep
    from imaging_lifecycle.storage import ObjectStore

    cat, (oid,) = stored_objects(env, dicom_file, ["CT_small.dcm"])
    (c,) = cat.copies(oid)
    store = ObjectStore(env)
    store.put("archive", c.key, b"an older overwrite")
    store.client("archive").remove_object(store.bucket("archive"), c.key)  # adds a delete marker
    versions = list(store.versions("archive", c.key))
    assert len(versions) == 3 and any(v.is_delete_marker for v in versions)
    out = sweep(services(env), T, actor=ACTOR)
    assert out["objects_deleted"] == 1
    assert list(store.versions("archive", c.key)) == []
    assert cat.certificates(oid)[0]["versions_purged"] == 3


def test_a_locked_backup_is_unreadable_at_once_and_purged_when_the_lock_ends(env, dicom_file):
    from imaging_lifecycle.crypto import KeyUnavailable
    from imaging_lifecycle.deletion import sweep

    cat, (oid,) = stored_objects(env, dicom_file, ["CT_small.dcm"])
    svc = services(env)
    obj = cat.get(oid)
    with svc.encrypted.open(cat.sealed(cat.copies(oid)[0], obj.sha256), oid) as r:
        data = r.read()
    import io

    until = dt.datetime.now(UTC) + dt.timedelta(seconds=4)
    sealed = svc.encrypted.put(io.BytesIO(data), catalog_id=oid, zone="backup", tier=3,
                               scope_id=f"study:{obj.study_key}", key=f"backup/{oid}", size=len(data),
                               retain_until=until)
    backup = cat.record_sealed(oid, sealed, actor=ACTOR)

    first = sweep(services(env), T, actor=ACTOR)
    assert first["pending_locked"] == 1 and first["certificates"] == 0
    assert cat.get(oid).state == "DELETING" and cat.certificates(oid) == []
    assert svc.encrypted.store.exists("backup", backup.key, backup.version_id)  # still there, under lock ...
    with pytest.raises(KeyUnavailable):  # ... but unreadable: its key is gone
        cat.sealed(backup, obj.sha256)
    with pytest.raises(KeyUnavailable):
        svc.encrypted.dek(sealed)  # even with the wrapped DEK from before: the KEK is destroyed
    assert not svc.encrypted.store.exists("archive", f"objects/{oid}")

    time.sleep(max(0.0, (until - dt.datetime.now(UTC)).total_seconds()) + 1.5)
    second = sweep(services(env), T + dt.timedelta(minutes=15), actor=ACTOR)
    assert second["objects_deleted"] == 1 and second["pending_locked"] == 0
    assert_gone(env, cat, oid)
    assert cat.certificates(oid)[0]["zones"] == ["archive", "backup"]


def _cli(env, *args, crash_at=None):
    run_env = {**os.environ, "IL_STATE_DIR": str(env.state_dir), "IL_CATALOG_URL": env.catalog_url}
    run_env.pop("IL_CRASH_AT", None)
    if crash_at:
        run_env["IL_CRASH_AT"] = crash_at
    return subprocess.run([str(PROJECT / ".venv" / "bin" / "imaging-lifecycle"), *args], env=run_env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("point", ["deletion.after_dek_destroy", "deletion.after_purge", "deletion.before_certify"])
def test_a_kill_mid_deletion_then_a_rerun_leaves_nothing_readable_and_no_orphans(env, dicom_file, point):
    from imaging_lifecycle.crypto import KeyUnavailable

    cat, ids = stored_objects(env, dicom_file, ["CT_small.dcm", "MR_small.dcm"])
    crashed = _cli(env, "sweep", "--now", T.isoformat(), crash_at=point)
    assert crashed.returncode == 86, crashed.stderr
    for oid in ids:
        assert cat.get(oid).state == "DELETING"
        assert cat.certificates(oid) == []  # no certificate without its deletion
        for c in cat.copies(oid):
            with pytest.raises(KeyUnavailable):  # erased first: already unreadable
                cat.sealed(c, "0" * 64)
    rerun = _cli(env, "sweep", "--now", (T + dt.timedelta(minutes=15)).isoformat())
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["objects_deleted"] == 2
    from imaging_lifecycle.keystore import open_default_keystore

    ks = open_default_keystore(env)
    for oid in ids:
        assert_gone(env, cat, oid)
        for c in cat.copies(oid, include_deleted=True):  # no dangling keys
            from imaging_lifecycle.keystore import KekRef

            ref = KekRef.parse(cat.data_key_rows([c.key_id])[c.key_id]["kek_ref"])
            assert ks.is_destroyed(ref.kek_id)
    assert cat.audit.verify().ok


def test_certificate_cli_exports_json(env, dicom_file):
    from imaging_lifecycle.deletion import sweep

    cat, (oid,) = stored_objects(env, dicom_file, ["CT_small.dcm"])
    none = _cli(env, "certificate", oid, "--json")
    assert none.returncode == 1 and json.loads(none.stdout)["certificates"] == []
    sweep(services(env), T, actor="sweeper")
    r = _cli(env, "certificate", oid, "--json")
    assert r.returncode == 0, r.stderr
    (cert,) = json.loads(r.stdout)["certificates"]
    assert {"object", "tier", "zones", "method", "issued_at", "actor", "verification", "certificate_id"} <= set(cert)
    assert cert["object"] == oid and cert["tier"] == 3 and cert["actor"] == "sweeper"
    assert cert["standard"] == "NIST-SP-800-88r1" and cert["verification"]["result"] == "pass"
    bad = _cli(env, "certificate", "not-an-id", "--json")
    assert bad.returncode == 2 and "catalog id" in bad.stderr


def test_an_expired_quarantined_object_is_deleted_and_does_not_stall_the_sweep(env, dicom_file):
    """Quarantine has no backup; a quarantined object past its 30 days must not fail the gate for everyone."""
    from imaging_lifecycle.deletion import sweep
    from imaging_lifecycle.retention import assign_missing_deadlines

    from conftest import ingest_now

    (env.landing_dir / "junk.dcm").write_bytes(b"not dicom at all" * 10)
    ingest_now(env)
    cat, (stored,) = stored_objects(env, dicom_file, ["CT_small.dcm"], deadline=T)
    (junk,) = [o.id for o in cat.objects() if o.state == "QUARANTINED"]
    assign_missing_deadlines(services(env), now=T, actor=ACTOR)  # created now: due 30 days on
    out = sweep(services(env), T + dt.timedelta(minutes=1), actor=ACTOR)  # both are due
    assert out["objects_deleted"] == 2, out
    for oid in (junk, stored):
        assert_gone(env, cat, oid)
