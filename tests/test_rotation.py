"""KEK rotation: every object stays readable, old versions are destroyed, a kill mid-way resumes."""

from __future__ import annotations

import json
import subprocess

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from imaging_lifecycle.keystore import KekRef
from test_backup import ACTOR, CLI, cli_env, services, stored_objects


def variants(src, folder, n: int, *, new_study: bool) -> dict:
    """``n`` copies of a real file with fresh SOP Instance UIDs (and, if asked, one fresh study for all)."""
    study = generate_uid() if new_study else None
    out = {}
    for i in range(n):
        ds = dcmread(src)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if study:
            ds.StudyInstanceUID = study
        out[f"v{i}-{src.name}"] = folder / f"v{i}-{src.name}"
        ds.save_as(out[f"v{i}-{src.name}"])
    return out


def all_readable(cat, encrypted, ids) -> int:
    """Decrypt every live copy (archive and backup) of every object; returns how many were read."""
    from imaging_lifecycle.backup import sealed_for

    n = 0
    for oid in ids:
        obj = cat.get(oid)
        for copy in cat.copies(oid):
            encrypted.verify(sealed_for(cat, copy, obj), oid)
            n += 1
    return n


def fresh_studies(dicom_file, folder, names) -> dict:
    """Each named real file as an instance of a study of its own.

    The key store is shared by the whole test session, and rotation destroys
    old KEK versions: studies of their own keep other tests' keys out of it.
    """
    out = {}
    for n in names:
        out.update(variants(dicom_file(n), folder, 1, new_study=True))
    return out


def test_rotation_rewraps_every_key_destroys_old_versions_and_keeps_data_readable(env, dicom_file, tmp_path):
    from imaging_lifecycle.backup import replicate
    from imaging_lifecycle.rotation import rotate

    ids = stored_objects(env, fresh_studies(dicom_file, tmp_path, ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")))
    cat, store, encrypted = services(env)
    replicate(cat, store, list(ids.values()), actor=ACTOR, retention_days=1)
    ks = encrypted.keystore
    before = {KekRef.parse(r) for r in cat.kek_refs_in_use()}
    ciphertexts = {c.id: c.ciphertext_sha256 for oid in ids.values() for c in cat.copies(oid)}
    result = rotate(cat, ks, actor=ACTOR, run_id="rotation-1")
    keks = {r.kek_id for r in before}
    assert result["rotated"] == len(keks) and result["rewrapped"] == len(ids) and result["unreadable"] == 0
    assert result["destroyed_versions"] == len(before)
    after = {KekRef.parse(r) for r in cat.kek_refs_in_use()}
    assert {r.kek_id for r in after} == keks and all(r.version == 2 for r in after)
    assert all(ks.is_destroyed(r.kek_id, r.version) for r in before)
    assert all_readable(cat, encrypted, ids.values()) == 2 * len(ids)  # archive and backup, data untouched
    assert {c.id: c.ciphertext_sha256 for oid in ids.values() for c in cat.copies(oid)} == ciphertexts
    # The same run again (an Airflow retry) changes nothing; a new run rotates again.
    again = rotate(cat, ks, actor=ACTOR, run_id="rotation-1")
    assert again["rotated"] == 0 and again["rewrapped"] == 0 and again["resumed"] == len(keks)
    third = rotate(cat, ks, actor=ACTOR, run_id="rotation-2")
    assert third["rotated"] == len(keks) and all(KekRef.parse(r).version == 3 for r in cat.kek_refs_in_use())
    assert all_readable(cat, encrypted, ids.values()) == 2 * len(ids)
    recs = [r for r in cat.audit.records(last=200) if r.action in ("key.rotate", "key.destroy")
            and r.detail.get("reason") != "STAGING_DONE"]  # ingest's own: a batch's staging KEK
    assert {r.detail["step"] for r in recs} == {"rotate", "rewrap", "rotation"}
    assert cat.audit.verify().ok


def test_a_shredded_scope_is_skipped_and_bad_arguments_refused(env, dicom_file, tmp_path):
    from imaging_lifecycle.rotation import rotate

    # A study of its own to shred: the key store is shared by the whole test session.
    (doomed, kept) = fresh_studies(dicom_file, tmp_path, ("CT_small.dcm", "MR_small.dcm"))
    ids = stored_objects(env, {doomed: tmp_path / doomed, kept: tmp_path / kept})
    cat, _, encrypted = services(env)
    ks = encrypted.keystore
    with pytest.raises(ValueError, match="batch"):
        rotate(cat, ks, actor=ACTOR, batch=0)
    shredded = KekRef.parse(cat.data_key(cat.get(ids[doomed]).key_id)["kek_ref"])
    ks.destroy(shredded.kek_id)
    result = rotate(cat, ks, actor=ACTOR)
    assert result["shredded"] == 1 and result["rotated"] == 1
    assert all_readable(cat, encrypted, [ids[kept]]) == 1


def test_rotation_killed_mid_way_resumes_on_rerun_without_rotating_twice(env, dicom_file, tmp_path):
    # Five instances of one (fresh) study: one KEK, five data keys, three batches of two.
    ids = stored_objects(env, variants(dicom_file("CT_small.dcm"), tmp_path, 5, new_study=True))
    cat, _, encrypted = services(env)
    ks = encrypted.keystore
    (kek_id,) = {KekRef.parse(r).kek_id for r in cat.kek_refs_in_use()}
    cmd = [CLI, "rotate-keys", "--batch", "2", "--run-id", "nightly"]
    crashed = subprocess.run(cmd, env=cli_env(env, IL_CRASH_AT="rotation.mid"), capture_output=True, text=True,
                             timeout=120)
    assert crashed.returncode == 86, crashed.stderr
    assert cat.kek_refs_in_use() == {f"{kek_id}@v1": 3, f"{kek_id}@v2": 2}  # one batch committed
    assert not ks.is_destroyed(kek_id, 1)
    assert all_readable(cat, encrypted, ids.values()) == 5  # half-way is a readable state
    rerun = subprocess.run(cmd, env=cli_env(env), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["resumed"] == 1 and result["rotated"] == 0 and result["rewrapped"] == 3
    assert result["destroyed_versions"] == 1
    assert cat.kek_refs_in_use() == {f"{kek_id}@v2": 5}
    assert ks.versions(kek_id) == [KekRef(kek_id, 1), KekRef(kek_id, 2)]  # rotated once, not twice
    assert ks.is_destroyed(kek_id, 1)
    assert all_readable(cat, encrypted, ids.values()) == 5


def test_a_copy_wrapped_before_a_rotation_and_recorded_after_it_is_refused_not_lost(env, dicom_file):
    """The interleaving rotation's docstring used to leave open: wrap under v1, rotate (v1 destroyed), record."""
    import io
    import uuid

    from imaging_lifecycle.keystore import StaleKeyVersion
    from imaging_lifecycle.rotation import rotate
    from imaging_lifecycle.services import Services

    svc = Services.open(env)
    scope = f"study:race-{uuid.uuid4().hex[:8]}"
    oid = svc.catalog.register(actor=ACTOR, source="landing", quarantine_reason="NOT_DICOM").object.id
    data = dicom_file("CT_small.dcm").read_bytes()
    sealed = svc.encrypted.put(io.BytesIO(data), catalog_id=oid, zone="quarantine", tier=5, scope_id=scope,
                               key=f"quarantine/{oid}", size=len(data))  # wrapped under the current version
    old = KekRef.parse(sealed.kek_ref)
    rotate(svc.catalog, svc.keystore, actor=ACTOR, scopes=[scope])  # no row names the old version yet
    assert svc.keystore.is_destroyed(old.kek_id, old.version)
    with pytest.raises(StaleKeyVersion):
        svc.encrypted.record(svc.catalog, oid, sealed, actor=ACTOR)
    assert svc.catalog.copies(oid) == []  # nothing unreadable was recorded
    again = svc.encrypted.put(io.BytesIO(data), catalog_id=oid, zone="quarantine", tier=5, scope_id=scope,
                              key=f"quarantine/{oid}", size=len(data))  # the retry, under the new version
    copy = svc.encrypted.record(svc.catalog, oid, again, actor=ACTOR)
    svc.encrypted.verify(svc.catalog.sealed(copy, again.plaintext_sha256, again.size), oid)
