"""Protect, step by step as the DAG runs it: real files, real S3, real catalog, the default policy."""

from __future__ import annotations

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
    for name, step, gate_name, gate in (("classify", protect.classify_objects, "classified", protect.classified_gate),
                                        ("deidentify", protect.deidentify_objects, "deid", protect.deid_gate),
                                        ("store", protect.store_objects, "closing", protect.closing_gate)):
        out[name] = [step(Services.open(settings), c, actor=actor) for c in chunks]  # a fresh task each
        out[gate_name] = gate(Services.open(settings), chunks, actor=actor)
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
    assert result["closing"]["success"] is True

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


def test_the_classified_gate_blocks_an_object_without_a_tier(env, dicom_file):  # noqa: F811
    from imaging_lifecycle import protect
    from imaging_lifecycle.gates import GateFailed

    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "ct.dcm")
    ingest_now(env)
    chunks = protect.pending_chunks(Services.open(env))  # not classified yet: tier is empty
    with pytest.raises(GateFailed, match="classified"):
        protect.classified_gate(Services.open(env), chunks, actor="test/protect")


def test_objects_of_a_batch_that_has_not_passed_its_gate_are_not_taken(env, dicom_file):  # noqa: F811
    from imaging_lifecycle import ingest, protect

    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "ct.dcm")
    claim = ingest.claim_batch(env, quiet_seconds=0)
    svc = Services.open(env)
    results = [ingest.run_chunk(svc, claim.batch_id, c, actor="test/protect") for c in claim.chunks]
    assert protect.pending_chunks(svc) == []  # stored and VALIDATED, but the gate has not run
    ingest.close_batch(svc, results, actor="test/protect")
    assert len([i for c in protect.pending_chunks(svc) for i in c]) == 1
