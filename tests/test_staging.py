"""No per-host state in ingest: the claim stages originals in S3 on the landing host, any host ingests them.

Real SeaweedFS, real catalogs (SQLite and PostgreSQL), real DICOM files. A "host" is its own state
folder and landing folder; what hosts share is exactly what a deployment shares: the catalog, S3
and the key store (here one key-store file both are pointed at, standing in for the secret provider).
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from imaging_lifecycle import ingest, landing, staging
from imaging_lifecycle.services import Services

from conftest import catalog  # noqa: F401

ACTOR = "test/staging"


def _files(env, dicom_file, names=("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")):
    for n in names:
        shutil.copy(dicom_file(n), env.landing_dir / n)
    return len(names)


@pytest.fixture
def hosts(env, tmp_path, monkeypatch):
    """(landing host, second host): separate state and landing folders, one catalog, S3 and key store."""
    monkeypatch.setenv("IL_KEYSTORE_PATH", str(tmp_path / "shared-keys" / "keystore.sealed"))
    other = replace(env, state_dir=tmp_path / "host-b", landing_dir=tmp_path / "host-b" / "landing")
    other.landing_dir.mkdir(parents=True)
    return env, other


def _staged_versions(settings):
    svc = Services.open(settings)
    return list(svc.store.versions("staging", f"staging/{landing.identity(settings.landing_dir)}/"))


def test_a_claim_stages_each_file_encrypted_in_s3_and_keeps_nothing_on_the_host(hosts, dicom_file):
    a, _ = hosts
    n = _files(a, dicom_file)
    svc = Services.open(a)
    claim = ingest.claim_batch(svc, quiet_seconds=0, actor=ACTOR)
    assert claim.files == n and claim.chunks == [0]
    assert not list(a.landing_dir.rglob("*.dcm")) and not list(ingest.batches_root(a).rglob("*.dcm"))
    assert not [d for d in ingest.batches_root(a).iterdir() if d.is_dir()]  # no batch folder left
    assert ingest.batches_root(a).parent == a.landing_dir  # claimed files never left the landing volume
    rows = svc.catalog.staged(claim.batch_id)
    assert len(rows) == n and {r.scope_id for r in rows} == {staging.scope_for(claim.batch_id)}
    versions = _staged_versions(a)
    assert len(versions) == n
    for v in versions:  # ciphertext: no DICOM preamble marker anywhere near the start
        raw = svc.store.get("staging", v.key, v.version_id)
        assert b"DICM" not in raw[:512]
    claimed = [r for r in svc.catalog.audit.records() if r.action == "batch.claim"]
    assert claimed[-1].detail["counts"]["staged"] == n


def _staging_keks(svc, batch_id) -> set[str]:
    from imaging_lifecycle.keystore import KekRef

    return {KekRef.parse(r.sealed.kek_ref).kek_id for r in svc.catalog.staged(batch_id) if r.sealed}


def test_any_host_ingests_what_the_landing_host_claimed_and_the_staging_key_is_destroyed(hosts, dicom_file):
    a, b = hosts
    n = _files(a, dicom_file)
    claim = ingest.claim_batch(Services.open(a), quiet_seconds=0, actor=ACTOR)
    (kek,) = _staging_keks(Services.open(a), claim.batch_id)
    on_b = Services.open(b)
    results = [ingest.run_chunk(on_b, claim.batch_id, c, actor=ACTOR) for c in claim.chunks]
    summary = ingest.close_batch(on_b, results, actor=ACTOR)
    assert summary["stored"] == n and summary["gate"]["success"]
    cat = catalog(a)
    assert {o.state for o in cat.objects(batch_id=claim.batch_id)} == {"VALIDATED"}
    assert cat.staged_count() == 0 and _staged_versions(a) == []
    assert on_b.keystore.is_destroyed(kek)  # the batch's staging KEK is gone: any missed copy is unreadable
    destroyed = [r for r in cat.audit.records() if r.action == "key.destroy"]
    assert destroyed and destroyed[-1].detail["reason"] == "STAGING_DONE"
    assert not list((b.state_dir / "tmp").glob("*")) if (b.state_dir / "tmp").exists() else True
    assert cat.audit.verify().ok


def test_a_claim_on_a_host_without_the_files_fails_instead_of_claiming_nothing(hosts, dicom_file):
    """The issue's stranded-files run: a worker with its own empty landing folder must not end in success."""
    a, b = hosts
    _files(a, dicom_file)
    a_id = landing.identity(a.landing_dir)
    with pytest.raises(ingest.NotTheLandingHost, match="no landing folder"):
        ingest.claim_batch(Services.open(b), quiet_seconds=0, landing_ids={a_id}, actor=ACTOR)
    landing.ensure_identity(b.landing_dir)  # even a second landing host is not the one whose files fired
    with pytest.raises(ingest.NotTheLandingHost, match="not the one whose files started this run"):
        ingest.claim_batch(Services.open(b), quiet_seconds=0, landing_ids={a_id}, actor=ACTOR)
    assert len(list(a.landing_dir.glob("*.dcm"))) == 3  # nothing moved, nothing lost
    claim = ingest.claim_batch(Services.open(a), quiet_seconds=0, landing_ids={a_id}, actor=ACTOR)
    assert claim.files == 3


def test_files_of_a_batch_whose_run_died_are_taken_by_the_next_claim(hosts, dicom_file):
    a, b = hosts
    _files(a, dicom_file, ("CT_small.dcm", "MR_small.dcm"))
    dead = ingest.claim_batch(Services.open(a), quiet_seconds=0, actor=ACTOR)  # its chunks never run
    keks = _staging_keks(Services.open(a), dead.batch_id)
    _files(a, dicom_file, ("rtplan.dcm",))
    claim = ingest.claim_batch(Services.open(a), quiet_seconds=0, chunk_size=1, actor=ACTOR)
    assert claim.files == 3 and claim.chunks == [0, 1, 2]
    keks |= _staging_keks(Services.open(a), claim.batch_id)
    assert len(keks) == 2
    on_b = Services.open(b)
    results = [ingest.run_chunk(on_b, claim.batch_id, c, actor=ACTOR) for c in claim.chunks]
    assert ingest.close_batch(on_b, results, actor=ACTOR)["stored"] == 3
    assert on_b.catalog.staged(dead.batch_id) == [] and on_b.catalog.staged_count() == 0
    claimed = [r for r in on_b.catalog.audit.records() if r.action == "batch.claim"]
    assert claimed[-1].detail["counts"] == {"staged": 1, "adopted": 2, "problems": 0}  # the adoption is audited
    assert all(on_b.keystore.is_destroyed(k) for k in keks)


def test_a_staged_copy_without_a_row_is_purged_by_the_next_claim(hosts, dicom_file):
    """Between forgetting a row and purging its copy a worker can die: the next claim reaps the orphan."""
    a, _ = hosts
    _files(a, dicom_file, ("CT_small.dcm",))
    svc = Services.open(a)
    claim = ingest.claim_batch(svc, quiet_seconds=0, actor=ACTOR)
    (row,) = svc.catalog.staged(claim.batch_id)
    svc.catalog.unstage(row.object_id)  # the first half of staging.drop, then the "crash"
    assert len(_staged_versions(a)) == 1
    again = ingest.claim_batch(svc, quiet_seconds=0, actor=ACTOR)
    assert again.files == 0 and _staged_versions(a) == []


def test_a_link_in_the_landing_folder_is_quarantined_unread_from_any_host(hosts, dicom_file, tmp_path):
    a, b = hosts
    secret = tmp_path / "outside.txt"
    secret.write_text("not for the archive")
    secret.chmod(0o644)
    (a.landing_dir / "link.dcm").symlink_to(secret)
    claim = ingest.claim_batch(Services.open(a), quiet_seconds=0, actor=ACTOR)
    (row,) = Services.open(a).catalog.staged(claim.batch_id)
    assert row.problem == "PATH_TRAVERSAL" and row.sealed is None and _staged_versions(a) == []
    on_b = Services.open(b)
    summary = ingest.close_batch(on_b, [ingest.run_chunk(on_b, claim.batch_id, 0, actor=ACTOR)], actor=ACTOR)
    assert summary["reasons"] == {"PATH_TRAVERSAL": 1}
    assert secret.read_text() == "not for the archive" and secret.stat().st_mode & 0o777 == 0o644


def test_a_staged_copy_gone_missing_is_quarantined_with_its_reason_not_retried_forever(hosts, dicom_file):
    a, b = hosts
    _files(a, dicom_file, ("CT_small.dcm", "MR_small.dcm"))
    svc = Services.open(a)
    claim = ingest.claim_batch(svc, quiet_seconds=0, actor=ACTOR)
    lost, kept = svc.catalog.staged(claim.batch_id)
    svc.store.purge("staging", [(lost.sealed.key, lost.sealed.version_id)])  # never expected: shown, not hidden
    on_b = Services.open(b)
    summary = ingest.close_batch(on_b, [ingest.run_chunk(on_b, claim.batch_id, 0, actor=ACTOR)], actor=ACTOR)
    assert summary["stored"] == 1 and summary["reasons"] == {"STAGED_COPY_MISSING": 1}
    assert on_b.catalog.get(lost.object_id).quarantine_reason == "STAGED_COPY_MISSING"
    assert on_b.catalog.staged_count() == 0


def test_two_runs_on_one_staged_file_store_it_once(hosts, dicom_file):
    """A second claim may adopt a row whose first run is still working (the CLI beside the DAG): both
    then ingest the same file at once. One copy is recorded, the other upload is purged, and a run that
    lost the race fails at most once: its retry finds the work done."""
    import threading

    from imaging_lifecycle.catalog import IllegalTransition

    a, b = hosts
    _files(a, dicom_file, ("CT_small.dcm",))
    claim = ingest.claim_batch(Services.open(a), quiet_seconds=0, actor=ACTOR)
    (row,) = Services.open(a).catalog.staged(claim.batch_id)
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def run(settings):
        go.wait()
        try:
            ingest.ingest_file(Services.open(settings), row, claim.batch_id, actor=ACTOR)
        except IllegalTransition as exc:  # the other run moved it to VALIDATED first
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    svc = Services.open(b)
    for staged in svc.catalog.staged(claim.batch_id):  # the retry of a run that lost the race
        ingest.ingest_file(svc, staged, claim.batch_id, actor=ACTOR)
    obj = svc.catalog.get(row.object_id)
    assert obj.state == "VALIDATED" and len(errors) <= 1
    (copy,) = [c for c in svc.catalog.copies(obj.id) if c.zone == "archive"]
    assert [v.version_id for v in svc.store.versions("archive", copy.key) if v.key == copy.key] == [copy.version_id]
    assert svc.catalog.staged_count() == 0 and _staged_versions(a) == []


def test_a_claim_makes_even_chunks_in_a_multiple_of_the_task_slots(hosts):
    """Five files, at most two per chunk: four chunks (two rounds of two slots), not 2 + 2 + 1 with a
    slot idle in the last round; every file in exactly one chunk, and every chunk ingests."""
    from imaging_lifecycle.services import TASK_SLOTS
    from imaging_lifecycle.synthetic import Patient, write_study

    a, b = hosts
    write_study(a.landing_dir / "study", Patient("5150"), instances=5)
    claim = ingest.claim_batch(Services.open(a), quiet_seconds=0, chunk_size=2, actor=ACTOR)
    assert claim.files == 5 and claim.chunks == [0, 1, 2, 3] and len(claim.chunks) % TASK_SLOTS == 0
    on_b = Services.open(b)
    sizes = [len(on_b.catalog.staged(claim.batch_id, c)) for c in claim.chunks]
    assert sorted(sizes) == [1, 1, 1, 2]
    results = [ingest.run_chunk(on_b, claim.batch_id, c, actor=ACTOR) for c in claim.chunks]
    assert ingest.close_batch(on_b, results, actor=ACTOR)["stored"] == 5


def test_a_claim_takes_at_most_a_batch_and_leaves_the_rest_for_the_next(hosts, dicom_file, monkeypatch):
    """A big drop goes in batch by batch, so protect starts on the first while the next is ingested."""
    a, b = hosts
    monkeypatch.setattr(ingest, "BATCH_FILES", 2)
    _files(a, dicom_file)  # three files
    on_b = Services.open(b)

    def run(claim) -> int:  # noqa: ANN001 (the ingest DAG's run of one batch; runs never overlap)
        results = [ingest.run_chunk(on_b, claim.batch_id, n, actor=ACTOR) for n in claim.chunks]
        return ingest.close_batch(on_b, results, actor=ACTOR)["stored"]

    first = ingest.claim_batch(Services.open(a), quiet_seconds=0, actor=ACTOR)
    assert first.files == 2 and len(list(a.landing_dir.glob("*.dcm"))) == 1  # the third waits, untouched
    assert run(first) == 2
    second = ingest.claim_batch(Services.open(a), quiet_seconds=0, actor=ACTOR)
    assert second.files == 1 and second.batch_id != first.batch_id and not list(a.landing_dir.glob("*.dcm"))
    assert run(second) == 1 and on_b.catalog.staged_count() == 0


def test_a_chunk_whose_one_file_fails_to_decrypt_leaves_no_plaintext_and_loses_nothing(hosts, dicom_file):
    """The chunk's files are fetched together: when one staged copy does not verify (here its row names
    another plaintext hash), the task fails, every other file's plaintext is still removed from the
    scratch folder, and every staged row stays for the retry."""
    import json

    from sqlalchemy import select, update

    from imaging_lifecycle.catalog.schema import staged_files
    from imaging_lifecycle.crypto import IntegrityError

    a, b = hosts
    _files(a, dicom_file)
    claim = ingest.claim_batch(Services.open(a), quiet_seconds=0, actor=ACTOR)
    on_b = Services.open(b)
    victim = on_b.catalog.staged(claim.batch_id)[0].object_id
    with on_b.catalog.engine.begin() as conn:
        sealed = json.loads(conn.execute(select(staged_files.c.sealed)
                                         .where(staged_files.c.object_id == victim)).scalar_one())
        sealed["plaintext_sha256"] = "0" * 64
        conn.execute(update(staged_files).where(staged_files.c.object_id == victim).values(sealed=json.dumps(sealed)))
    with pytest.raises(IntegrityError):
        ingest.run_chunk(on_b, claim.batch_id, 0, actor=ACTOR)
    scratch = b.state_dir / "tmp"
    assert not scratch.exists() or list(scratch.iterdir()) == []  # no plaintext left behind on this host
    assert on_b.catalog.staged_count(claim.batch_id) == 3  # nothing dropped: the retry takes them all
