"""Protect, step by step as the DAG runs it: real files, real S3, real catalog, the default policy."""

from __future__ import annotations

import json
import shutil

import pytest

from imaging_lifecycle.services import Services

from conftest import catalog, ingest_now


def protect_all(settings, actor="test/protect") -> dict:
    """Every step and gate of the protect DAG, in its order, through the functions its tasks call."""
    from imaging_lifecycle import protect

    svc = Services.open(settings)
    chunks = protect.pending_chunks(svc)
    out = {"chunks": chunks}
    def each(step):  # a mapped task per chunk, each with its own Services
        return [step(Services.open(settings), c, actor=actor) for c in chunks]

    out["classify"] = each(protect.classify_objects)
    out["classified"] = protect.classified_gate(Services.open(settings), chunks, actor=actor)
    out["deidentify"] = each(protect.deidentify_objects)  # gated per object before release
    out["store"] = each(protect.store_objects)
    out["closing"] = protect.closing_gate(Services.open(settings), chunks, actor=actor)
    out["backup"] = protect.backup_objects(svc, [i for c in chunks for i in c], actor=actor)
    return out


def test_ingested_objects_are_classified_deidentified_stored_and_backed_up(env, dicom_file):  # noqa: F811
    from imaging_lifecycle.synthetic import Patient, write_study

    patient = Patient("7777")
    write_study(env.landing_dir / "chest", patient, instances=2, modality="CT", body_part="CHEST")
    shutil.copy(dicom_file("MR_small.dcm"), env.landing_dir / "mr.dcm")
    assert ingest_now(env)["stored"] == 3
    result = protect_all(env)
    cat = catalog(env)
    originals = [o for o in cat.objects() if not (o.source or "").startswith("derived:")]
    derived = [o for o in cat.objects() if (o.source or "").startswith("derived:")]
    assert all(o.tier and o.rule_id for o in originals)
    chest = [o for o in originals if o.rule_id == "l3-chest-radiograph"]
    assert len(chest) == 2 and all(o.tier == 3 for o in chest)
    # tier 3 asks for a derivative: one per chest instance, tier 2, in the research zone
    assert len(derived) >= 2 and {o.tier for o in derived} == {2}
    assert all(o.state == "STORED" and o.zone == "research" for o in derived)
    # originals whose tier requires a backup are BACKED_UP on the second site
    assert {o.state for o in chest} == {"BACKED_UP"}
    assert all(any(c.zone == "backup" for c in cat.copies(o.id)) for o in chest)
    assert result["classified"]["held"] == 0 and result["closing"]["held"] == 0

    # The derivative holds none of the patient's identifiers, decrypted and read as text.
    from imaging_lifecycle.encrypted_store import EncryptedStore
    from imaging_lifecycle.keystore import open_default_keystore
    from imaging_lifecycle.storage import ObjectStore

    encrypted = EncryptedStore(ObjectStore(env), open_default_keystore(env))
    for d in derived:
        (copy,) = cat.copies(d.id)
        with encrypted.open(cat.sealed(copy, d.sha256, d.size), d.id) as r:
            data = r.read()
        for marker in patient.markers():
            assert marker.encode() not in data


def test_every_bucket_holds_ciphertext_only_after_a_run(env, store):  # noqa: F811
    from imaging_lifecycle.settings import ZONES
    from imaging_lifecycle.synthetic import Patient, write_study

    write_study(env.landing_dir / "s", Patient("8888"), instances=2)
    ingest_now(env)
    protect_all(env)
    seen = 0
    for zone in ZONES:
        for v in store.versions(zone):
            if v.is_delete_marker:
                continue
            with store.open(zone, v.key, v.version_id) as r:
                head = r.read(132)
            assert not head.startswith(b"DICM") and head[128:132] != b"DICM", f"plaintext in {zone}"
            seen += 1
    assert seen > 0


def test_ingest_classifies_from_its_one_parse_and_protect_takes_it_on_without_re_encrypting(env, dicom_file):  # noqa: F811
    """Each file is parsed once, at ingest: its archive copy is bound to the tier its header gives, and
    protect's classify step takes that tier on under the same policy (no download, no second encryption).
    A proposal made under another policy is not trusted: that object is classified again from its copy."""
    from sqlalchemy import update

    from imaging_lifecycle import protect
    from imaging_lifecycle.catalog.schema import objects
    from imaging_lifecycle.classify import classify_path

    files = {"ct": dicom_file("CT_small.dcm"), "mr": dicom_file("MR_small.dcm")}
    for name, src in files.items():
        shutil.copy(src, env.landing_dir / f"{name}.dcm")
    ingest_now(env)
    svc = Services.open(env)
    cat = catalog(env)
    by_sha = {o.sha256: o for o in cat.objects()}
    import hashlib

    ct, mr = (by_sha[hashlib.sha256(files[n].read_bytes()).hexdigest()] for n in ("ct", "mr"))
    for o, name in ((ct, "ct"), (mr, "mr")):
        expected = classify_path(files[name], svc.policy)
        assert o.state == "VALIDATED" and (o.tier, o.rule_id) == (expected.tier, expected.rule_id)
        assert o.policy_fingerprint == svc.policy.fingerprint
        (copy,) = cat.copies(o.id)
        assert cat.data_key(copy.key_id)["aad_tier"] == expected.tier  # the ciphertext is bound to it
    before = {o.id: cat.copies(o.id)[0].version_id for o in (ct, mr)}
    with cat.engine.begin() as conn:  # as if ingested under an earlier policy
        conn.execute(update(objects).where(objects.c.id == mr.id).values(policy_fingerprint="0" * 64))
    protect_all(env)
    for o in (ct, mr):
        now = cat.get(o.id)
        assert now.state == "BACKED_UP" and (now.tier, now.rule_id) == (o.tier, o.rule_id)
        assert now.policy_fingerprint == svc.policy.fingerprint
        (archive,) = [c for c in cat.copies(o.id) if c.zone == "archive" and not c.key.startswith(protect.REID_PREFIX)]
        assert archive.version_id == before[o.id], "stored as ingested: no second encryption"
    classified = [r for r in cat.audit.records() if (r.detail or {}).get("to") == "CLASSIFIED"]
    assert {r.object_ref for r in classified} >= {ct.id, mr.id}


def test_the_classified_gate_holds_an_object_without_a_tier_and_lets_the_others_go(env, dicom_file):  # noqa: F811
    from imaging_lifecycle import protect

    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "ct.dcm")
    shutil.copy(dicom_file("MR_small.dcm"), env.landing_dir / "mr.dcm")
    ingest_now(env)
    svc = Services.open(env)
    chunks = protect.pending_chunks(svc)
    (first, second) = [i for c in chunks for i in c]
    protect.classify_objects(svc, [first], actor="test/protect")  # the second is never classified: no tier
    out = protect.classified_gate(svc, chunks, actor="test/protect")
    assert out["held"] == 1
    cat = catalog(env)
    assert cat.get(second).flagged == protect.HELD_CLASSIFIED and cat.get(first).flagged is None
    protect.store_objects(svc, [first, second], actor="test/protect")
    assert cat.get(first).state == "STORED" and cat.get(second).state == "VALIDATED"
    assert protect.pending_chunks(svc) == []  # held for review: not taken again
    gate = [r for r in cat.audit.records() if r.action == "gate.run" and r.detail["gate"] == "classified"]
    assert gate[-1].outcome == "failure" and gate[-1].detail["held"] == 1


def test_objects_of_a_batch_that_has_not_passed_its_gate_are_not_taken(env, dicom_file):  # noqa: F811
    from imaging_lifecycle import ingest, protect

    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "ct.dcm")
    claim = ingest.claim_batch(Services.open(env), quiet_seconds=0)
    svc = Services.open(env)
    results = [ingest.run_chunk(svc, claim.batch_id, c, actor="test/protect") for c in claim.chunks]
    assert protect.pending_chunks(svc) == []  # stored and VALIDATED, but the gate has not run
    ingest.close_batch(svc, results, actor="test/protect")
    assert len([i for c in protect.pending_chunks(svc) for i in c]) == 1


def _plant_study_uid_in_safe_private(path) -> None:
    """Copy the study's UID into a private element the policy keeps as it is (its safe list)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "UI", ds.StudyInstanceUID)
    ds.save_as(path)


def test_one_object_failing_the_deid_gate_is_held_and_the_rest_are_released(env, store):  # noqa: F811
    """The gate judges each derivative before release: the bad one never reaches research; nothing stalls."""
    from imaging_lifecycle.synthetic import Patient, write_study

    patient = Patient("6061")
    files = write_study(env.landing_dir / "chest", patient, instances=3, modality="CT", body_part="CHEST")
    _plant_study_uid_in_safe_private(sorted(files)[0])  # an original UID where the engine keeps values
    ingest_now(env)
    result = protect_all(env)
    cat = catalog(env)
    originals = [o for o in cat.objects() if not (o.source or "").startswith("derived:")]
    derived = [o for o in cat.objects() if (o.source or "").startswith("derived:")]
    bad = [o for o in originals if o.flagged == "DEID_GATE"]
    assert len(bad) == 1 and sum(r.get("needs_review", 0) for r in result["deidentify"]) == 1
    assert len(derived) == 2 and bad[0].id not in {d.source.split(":", 1)[1] for d in derived}
    # every original, the held one too, is stored and backed up with its deadline
    assert {o.state for o in originals} == {"BACKED_UP"} and all(o.retention_deadline for o in originals)
    # nothing in the research zone but the two released derivatives
    research = {v.key for v in store.versions("research") if not v.is_delete_marker}
    mine = {c.key for d in derived for c in cat.copies(d.id)}
    assert mine <= research and not any(bad[0].id in k for k in research)
    # release came after the gate: the deid gate's audit record precedes every research copy of this run
    records = cat.audit.records()
    gate_seq = max(r.seq for r in records if r.action == "gate.run" and r.detail["gate"] == "deid")
    adds = [r for r in records if r.action == "copy.add" and r.detail.get("zone") == "research"]
    assert len(adds) == 2 and all(r.seq > gate_seq for r in adds)
    review = [r for r in records if r.object_ref == bad[0].id and r.action == "object.flag_review"]
    assert review and review[-1].detail["checks"] == ["uids_unchanged"] and review[-1].detail["reason"] == "DEID_GATE"
    assert patient.name not in json.dumps([r.public() for r in records], default=str)
    # the next run does not take the held object again, and does not stall on it
    from imaging_lifecycle import protect

    assert protect.pending_chunks(Services.open(env)) == []
    # it waits in the review queue, which the CLI prints without identifiers
    import os
    import subprocess

    from conftest import PROJECT

    cli_env = {**os.environ, "IL_CATALOG_URL": env.catalog_url, "IL_STATE_DIR": str(env.state_dir)}
    r = subprocess.run([str(PROJECT / ".venv/bin/imaging-lifecycle"), "review", "list", "--json"], env=cli_env,
                       capture_output=True, text=True, timeout=60, check=True)
    queue = json.loads(r.stdout)
    assert [(i["catalog_id"], i["flag"]) for i in queue] == [(bad[0].id, "DEID_GATE")]
    assert patient.name not in r.stdout and patient.patient_id not in r.stdout


def test_our_own_dummy_value_is_no_false_positive(env, dicom_file, tmp_path):  # noqa: F811
    """An original holding "ANON" (a name component) and the engine's dummy "ANONYMIZED": the gate passes."""
    import pydicom

    from imaging_lifecycle.deid import Deidentifier
    from imaging_lifecycle.gates.deid import check

    svc = Services.open(env)
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.PatientName = "ANON^CASE"
    ds.ContentCreatorName = "ANONYMIZED"  # the original already holds our dummy (action D): replaced by itself
    result = Deidentifier(svc.policy, b"k" * 32).deidentify(ds, in_place=False)
    assert str(result.dataset.PatientName) != "ANON^CASE"
    verdict = check([("x" * 32, ds, result.dataset)], svc.policy)
    assert verdict.success and verdict.passed("x" * 32), verdict.summary()


def test_a_study_keeps_one_map_kek_and_deleting_an_original_shreds_its_map_alone(env):
    """Maps share a KEK per study (apart from the data's): the key store grows per study, not per file."""
    import datetime as dt

    from sqlalchemy import update

    from imaging_lifecycle import protect
    from imaging_lifecycle.catalog.schema import objects
    from imaging_lifecycle.crypto import KeyUnavailable
    from imaging_lifecycle.deletion import delete_candidates
    from imaging_lifecycle.keystore import KekRef, open_default_keystore
    from imaging_lifecycle.synthetic import Patient, write_study

    write_study(env.landing_dir / "chest", Patient("5151"), instances=2, modality="CT", body_part="CHEST")
    ingest_now(env)
    protect_all(env)
    svc = Services.open(env)
    cat = svc.catalog
    originals = [o for o in cat.objects() if not (o.source or "").startswith("derived:")]
    assert len(originals) == 2 and len({o.study_key for o in originals}) == 1
    maps = {o.id: next(c for c in cat.copies(o.id) if c.key.startswith(protect.REID_PREFIX)) for o in originals}
    keks = {KekRef.parse(cat.data_key(c.key_id)["kek_ref"]).kek_id for c in maps.values()}
    data_keks = {KekRef.parse(cat.data_key(c.key_id)["kek_ref"]).kek_id
                 for o in originals for c in cat.copies(o.id) if not c.key.startswith(protect.REID_PREFIX)}
    assert len(keks) == 1 and not keks & data_keks, (keks, data_keks)
    assert len({c.key_id for c in maps.values()}) == 2, "each map has a DEK of its own"
    (kek,) = keks
    first, second = (o.id for o in originals)
    now = dt.datetime.now(dt.timezone.utc)
    with cat.engine.begin() as conn:
        conn.execute(update(objects).where(objects.c.id.in_([first, second]))
                     .values(retention_deadline=now - dt.timedelta(days=1)))
    out = delete_candidates(svc, [first], now, actor="test/dpo")  # the backup's object lock: purged later
    assert out["objects_deleted"] + out["pending_locked"] == 1, out["gate"]
    with pytest.raises(KeyUnavailable):
        cat.sealed(maps[first], None)  # its map's DEK is destroyed at once
    ks = open_default_keystore(env)
    assert not ks.is_destroyed(kek)
    with svc.encrypted.open(cat.sealed(maps[second], None), second) as r:
        assert r.read(), "the other original's map is still readable"
    out = delete_candidates(svc, [second], now, actor="test/dpo")
    assert out["objects_deleted"] + out["pending_locked"] == 1, out["gate"]
    assert open_default_keystore(env).is_destroyed(kek), "the study's last map gone: its KEK goes too"
