"""Ingest without Airflow: real files, real S3, real SQLite catalog."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imaging_lifecycle.services import Services

from conftest import PROJECT, catalog, ingest_now  # noqa: F401


def test_real_dicom_files_are_stored_encrypted_and_the_landing_file_removed(env, dicom_file):
    names = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "liver_1frame.dcm"]
    for n in names:
        shutil.copy(dicom_file(n), env.landing_dir / n)
    summary = ingest_now(env)
    assert summary["stored"] == len(names) and summary["quarantined"] == 0
    assert summary["gate"]["success"] is True
    assert list(env.landing_dir.rglob("*.dcm")) == []
    cat = catalog(env)
    objs = cat.objects(batch_id=summary["batch_id"])
    assert len(objs) == len(names) and {o.state for o in objs} == {"VALIDATED"}
    from imaging_lifecycle.storage import ObjectStore

    store = ObjectStore(env)
    for o in objs:
        (copy,) = cat.copies(o.id)
        raw = store.get(copy.zone, copy.key, copy.version_id)
        assert raw[128:132] != b"DICM" and b"DICM" not in raw[:200]
        from imaging_lifecycle.encrypted_store import EncryptedStore
        from imaging_lifecycle.keystore import open_default_keystore

        with EncryptedStore(store, open_default_keystore(env)).open(cat.sealed(copy, o.sha256), o.id) as r:
            data = r.read()
        assert len(data) == o.size


def _bad_inputs(folder: Path, dicom_file) -> dict[str, str]:
    """One file per kind of bad input; returns name -> expected reason code."""
    from pydicom import dcmread

    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("this is not an image\n" * 20)
    shutil.copy(dicom_file("MR_truncated.dcm"), folder / "cut.dcm")
    ds = dcmread(dicom_file("CT_small.dcm"))
    del ds.SOPInstanceUID
    ds.save_as(folder / "no-uid.dcm")
    import io

    import pydicom

    # A deflated dataset whose compressed stream is corrupt: the parser fails outright.
    ds = dcmread(dicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf)
    raw = bytearray(buf.getvalue())
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    raw[meta_end + 10:meta_end + 40] = b"\x00" * 30
    (folder / "garbage.dcm").write_bytes(bytes(raw))
    # Random bytes after a valid preamble run off the end of the file: truncated.
    (folder / "noise.dcm").write_bytes(raw[:132] + bytes(range(256)) * 4)
    os.symlink("/etc/hostname", folder / "escape.dcm")
    return {"empty.dcm": "EMPTY_FILE", "notes.txt": "NOT_DICOM", "cut.dcm": "TRUNCATED",
            "no-uid.dcm": "MISSING_UID", "garbage.dcm": "UNREADABLE", "escape.dcm": "PATH_TRAVERSAL",
            "noise.dcm": "TRUNCATED"}


def test_each_kind_of_bad_input_is_quarantined_with_its_reason_and_kept(env, dicom_file):
    expected = _bad_inputs(env.landing_dir, dicom_file)
    summary = ingest_now(env)
    assert summary["stored"] == 0
    from collections import Counter

    assert summary["reasons"] == dict(Counter(expected.values()))
    assert os.path.exists("/etc/hostname")  # the link was removed, never its target
    # its identity and the claim's own (empty) folder, nothing else
    assert sorted(p.name for p in env.landing_dir.iterdir()) == [".claimed", ".landing-id"]
    assert not [p for p in (env.landing_dir / ".claimed").iterdir() if p.is_dir()]
    cat = catalog(env)
    objs = cat.objects(batch_id=summary["batch_id"])
    assert sorted(o.quarantine_reason for o in objs) == sorted(expected.values())
    assert {o.state for o in objs} == {"QUARANTINED"}
    for o in objs:
        zones = [c.zone for c in cat.copies(o.id)]
        # content is kept, encrypted, in quarantine (a link's target is never read)
        assert zones == ([] if o.quarantine_reason == "PATH_TRAVERSAL" else ["quarantine"])


def test_duplicates_are_skipped_and_conflicts_quarantined(env, dicom_file):
    from pydicom import dcmread

    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "a.dcm")
    first = ingest_now(env)
    assert first["stored"] == 1
    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "again.dcm")
    ds = dcmread(dicom_file("CT_small.dcm"))
    ds.StudyDescription = "changed content, same SOP Instance UID"
    ds.save_as(env.landing_dir / "conflict.dcm")
    second = ingest_now(env)
    assert second["stored"] == 0 and second["duplicates"] == 1
    assert second["reasons"] == {"DUPLICATE_CONFLICT": 1}
    cat = catalog(env)
    live = [o for o in cat.objects() if o.quarantine_reason is None]
    assert len(live) == 1
    actions = [r.action for r in cat.audit.records()]
    assert "object.duplicate_skipped" in actions


def test_two_conflicting_files_in_one_chunk_are_each_quarantined_with_one_copy_and_one_version(env, dicom_file):
    """Every upload of a chunk lands before its one recording commit; each still ends with exactly one version."""
    from pydicom import dcmread

    from imaging_lifecycle.storage import ObjectStore

    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "a.dcm")
    assert ingest_now(env)["stored"] == 1
    ds = dcmread(dicom_file("CT_small.dcm"))
    ds.StudyDescription = "changed content, same SOP Instance UID"
    ds.save_as(env.landing_dir / "b.dcm")
    shutil.copy(env.landing_dir / "b.dcm", env.landing_dir / "c.dcm")
    second = ingest_now(env)
    assert second["reasons"] == {"DUPLICATE_CONFLICT": 2} and second["stored"] == 0
    cat, store = catalog(env), ObjectStore(env)
    held = [o for o in cat.objects() if o.quarantine_reason]
    assert len(held) == 2
    for o in held:
        (copy,) = cat.copies(o.id)
        assert copy.zone == "quarantine"
        assert [v.version_id for v in store.versions("quarantine", copy.key)] == [copy.version_id]
    assert cat.audit.verify().ok


def test_a_chunk_commits_the_same_few_times_for_two_files_as_for_eight(env):
    """Registration, recording with VALIDATED, and the staged rows' drop: a commit each per chunk, not per file."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from imaging_lifecycle import ingest, landing
    from imaging_lifecycle.synthetic import Patient, write_study

    landing.ensure_identity(env.landing_dir)
    commits = []

    def count(conn):  # noqa: ANN001
        commits.append(1)

    per_chunk = []
    for n in (2, 8):
        write_study(env.landing_dir / f"study-{n}", Patient(f"50{n}"), instances=n)
        svc = Services.open(env)
        claim = ingest.claim_batch(svc, quiet_seconds=0)
        assert claim.chunks == [0]
        commits.clear()
        event.listen(Engine, "commit", count)
        try:
            result = ingest.run_chunk(svc, claim.batch_id, 0, actor="test/ingest")
        finally:
            event.remove(Engine, "commit", count)
        assert result["counts"] == {"stored": n}
        per_chunk.append(len(commits))
        ingest.close_batch(svc, [result], actor="test/ingest")
    assert per_chunk[0] == per_chunk[1] <= 4, per_chunk


@pytest.mark.parametrize("point", ["ingest.claim_after_upload", "ingest.claim_after_record", "ingest.after_upload",
                                   "ingest.after_store", "ingest.before_remove"])
def test_a_crash_between_store_and_removal_loses_nothing_and_duplicates_nothing(env, dicom_file, point):
    for n in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(dicom_file(n), env.landing_dir / n)
    run_env = {**os.environ, "IL_STATE_DIR": str(env.state_dir), "IL_LANDING_DIR": str(env.landing_dir),
               "IL_CATALOG_URL": env.catalog_url, "IL_CRASH_AT": point}
    cli = str(PROJECT / ".venv" / "bin" / "imaging-lifecycle")
    crashed = subprocess.run([cli, "ingest"], env=run_env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 86, crashed.stderr  # died at the crash point
    del run_env["IL_CRASH_AT"]
    rerun = subprocess.run([cli, "ingest"], env=run_env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    cat = catalog(env)
    objs = [o for o in cat.objects() if o.quarantine_reason is None]
    assert len(objs) == 2 and {o.state for o in objs} == {"VALIDATED"}
    # Registered by the batch that died, they were gated by the rerun's: protect takes them.
    assert {cat.get_batch(o.batch_id).state for o in objs} == {"INGESTED"}
    from imaging_lifecycle.storage import ObjectStore

    store = ObjectStore(env)
    for o in objs:
        copies = cat.copies(o.id)
        assert len(copies) == 1
        assert [v.version_id for v in store.versions("archive", copies[0].key)] == [copies[0].version_id]
    assert not list(env.landing_dir.rglob("*.dcm"))
    from imaging_lifecycle import landing

    assert cat.staged_count() == 0  # nothing waits in the staging zone, and nothing is left there
    assert list(store.versions("staging", f"staging/{landing.identity(env.landing_dir)}/")) == []
    assert cat.audit.verify().ok


def test_the_ingest_command_takes_a_drop_bigger_than_a_batch_batch_by_batch(env, dicom_file):
    for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(dicom_file(n), env.landing_dir / n)
    run_env = {**os.environ, "IL_STATE_DIR": str(env.state_dir), "IL_LANDING_DIR": str(env.landing_dir),
               "IL_CATALOG_URL": env.catalog_url, "IL_INGEST_BATCH_FILES": "2"}
    cli = str(PROJECT / ".venv" / "bin" / "imaging-lifecycle")
    done = subprocess.run([cli, "ingest"], env=run_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [s["stored"] for s in summaries] == [2, 1]  # two batches, one summary line each
    cat = catalog(env)
    assert len({o.batch_id for o in cat.objects()}) == 2 and {o.state for o in cat.objects()} == {"VALIDATED"}
    assert not list(env.landing_dir.rglob("*.dcm"))


def test_no_identifier_reaches_audit_records_outputs_or_buckets_in_clear(env):
    from imaging_lifecycle.synthetic import Patient, write_study

    patient = Patient("4711")
    write_study(env.landing_dir / "study", patient, instances=3)
    summary = ingest_now(env)
    assert summary["stored"] == 3
    cat = catalog(env)
    text = json.dumps(summary) + json.dumps([r.public() for r in cat.audit.records()], default=str)
    text += json.dumps([o.public() for o in cat.objects()], default=str)
    from imaging_lifecycle.storage import ObjectStore

    store = ObjectStore(env)
    blobs = b"".join(store.get(c.zone, c.key, c.version_id) for o in cat.objects() for c in cat.copies(o.id))
    for marker in patient.markers():
        assert marker not in text
        assert marker.encode() not in blobs


def test_the_object_store_dying_mid_run_loses_nothing_and_the_retry_duplicates_nothing(env, dicom_file):
    """Kill the primary S3 server during an ingest run, restart it, retry: every file stored exactly once."""
    import threading

    import psutil
    import urllib3

    from imaging_lifecycle import embedded, ingest
    from imaging_lifecycle.storage import ObjectStore

    for i in range(12):
        shutil.copy(dicom_file("CT_small.dcm" if i == 0 else "MR_small.dcm" if i == 1 else "rtplan.dcm"),
                    env.landing_dir / f"f{i}.dcm")
    from pydicom import dcmread

    for i in range(2, 12):  # distinct instances
        ds = dcmread(env.landing_dir / f"f{i}.dcm")
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.999.{i}"
        ds.save_as(env.landing_dir / f"f{i}.dcm")
    claim = ingest.claim_batch(Services.open(env), quiet_seconds=0)
    weed = embedded._recorded(env, "s3-primary")
    store = ObjectStore(env)

    def kill_after_first_upload():
        while not any(True for _ in store.versions("archive", "objects/")):
            pass
        weed.kill()

    killer = threading.Thread(target=kill_after_first_upload)
    killer.start()
    # The task fails: Airflow would retry it. With the server gone, the S3 client raises a urllib3 error
    # (MaxRetryError on a new request, ProtocolError if killed mid-transfer).
    with pytest.raises(urllib3.exceptions.HTTPError):
        ingest.run_chunk(Services.open(env), claim.batch_id, 0, actor="test/ingest")
    killer.join()
    psutil.wait_procs([weed], timeout=10)
    embedded.start_object_stores(env)  # the store comes back
    retry = ingest.run_chunk(Services.open(env), claim.batch_id, 0, actor="test/ingest")
    summary = ingest.close_batch(Services.open(env), [retry], actor="test/ingest")
    cat = catalog(env)
    objs = [o for o in cat.objects() if o.quarantine_reason is None]
    assert len(objs) == 12 and {o.state for o in objs} == {"VALIDATED"}
    assert summary["gate"]["success"]
    for o in objs:
        copies = cat.copies(o.id)
        assert len(copies) == 1
        assert [v.version_id for v in store.versions("archive", copies[0].key)] == [copies[0].version_id]
    assert not list(ingest.batches_root(env).rglob("*.dcm"))


def test_a_batch_id_never_reads_as_a_dicom_date(env, dicom_file, monkeypatch):
    """A random suffix of eight digits starting 19/20 (1 in 2,147 batches) failed the audit's date guard."""
    import uuid

    real, first = uuid.uuid4, [uuid.UUID("20123456-7890-4000-8000-000000000000")]
    monkeypatch.setattr(uuid, "uuid4", lambda: first.pop() if first else real())
    shutil.copy(dicom_file("CT_small.dcm"), env.landing_dir / "a.dcm")
    summary = ingest_now(env)
    assert summary["stored"] == 1 and summary["batch_id"].rsplit("-", 1)[1] == "b20123456789"
