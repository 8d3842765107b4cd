"""Signed anchors of the audit chain on the backup site: a truncated, re-hashed or forged trail is caught.

Each test gets buckets of its own (a bucket prefix), so the anchors it finds are its own.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import replace

import pytest

from conftest import PROJECT, Intruder, make_zones


@pytest.fixture
def svc(object_store_settings, tmp_path):
    from imaging_lifecycle.services import Services

    settings = replace(object_store_settings, bucket_prefix=f"il-t{os.urandom(4).hex()}-",
                       catalog_url=f"sqlite:///{tmp_path / 'catalog.sqlite'}", landing_dir=tmp_path / "landing")
    settings.landing_dir.mkdir()
    s = Services.open(settings)
    make_zones(settings)
    for i in range(6):
        s.catalog.audit.append("system:test/anchor", "catalog.query", detail={"n": i})
    return s


def _cli(svc, *args):
    env = {**os.environ, "IL_CATALOG_URL": svc.settings.catalog_url, "IL_BUCKET_PREFIX": svc.settings.bucket_prefix}
    return subprocess.run([str(PROJECT / ".venv" / "bin" / "imaging-lifecycle"), "audit", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _db(svc):
    """Raw SQL on the catalog with the append-only triggers off (an insider with database access)."""
    return Intruder(svc.settings.catalog_url)


def test_anchors_are_signed_numbered_write_once_and_on_the_second_site(svc):
    from imaging_lifecycle import anchor

    written = anchor.write_anchor(svc, actor="system:test/anchor")
    found = anchor.latest_anchor(svc)
    assert found.newest == (written["seq"], written["hash"]) and found.valid == 1 and found.problems == []
    assert svc.settings.endpoint_for("audit-anchor") == svc.settings.backup  # apart from the primary
    (v,) = list(svc.store.versions("audit-anchor", anchor.PREFIX))
    assert v.key == f"anchors/{written['seq']:015d}.json"
    assert svc.store.purge("audit-anchor", [(v.key, v.version_id)])[0][2] == "AccessDenied"
    ret = svc.store.client("audit-anchor").get_object_retention(svc.store.bucket("audit-anchor"), v.key,
                                                                 version_id=v.version_id)
    assert ret.mode == "COMPLIANCE"
    r = _cli(svc, "verify")
    assert r.returncode == 0 and "intact" in r.stdout and f"anchored head seq {written['seq']}" in r.stdout
    key = json.loads(_cli(svc, "public-key").stdout)
    assert base64.b64decode(key["public_key"]) == anchor.public_key(svc)


def test_a_truncated_tail_is_caught(svc):
    from imaging_lifecycle import anchor

    written = anchor.write_anchor(svc, actor="system:test/anchor")
    db = _db(svc)  # an insider with database access: drop the trigger, cut the tail, rewind the head
    db.execute("DELETE FROM audit_records WHERE seq >= ?", (written["seq"] - 2,))
    prev = db.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
    db.execute("UPDATE audit_head SET seq = ?, hash = ?", prev)
    assert svc.catalog.audit.verify().ok  # the chain alone looks intact ...
    result, _ = anchor.verify(svc)
    assert not result.ok and result.code in ("ANCHOR_MISSING", "ANCHOR_MISMATCH")  # ... the anchor does not
    assert _cli(svc, "verify").returncode == 1


def test_a_rehashed_chain_passes_alone_and_fails_a_plain_verify(svc):
    from imaging_lifecycle import anchor
    from imaging_lifecycle.catalog.audit import chain_hash

    anchor.write_anchor(svc, actor="system:test/anchor")
    db = _db(svc)  # edit record 2 and recompute every later hash and the head, as a careful forger would
    rows = db.execute("SELECT seq, ts, actor, action, event_id, object_ref, outcome, detail FROM audit_records "
                      "ORDER BY seq").fetchall()
    prev = "0" * 64
    for seq, ts, actor, action, event_id, ref, outcome, detail in rows:
        if seq == 2:
            detail = json.dumps({"n": 999})
        content = {"seq": seq, "ts": ts, "actor": actor, "action": action, "event_id": event_id,
                   "object_ref": ref, "outcome": outcome, "detail": json.loads(detail)}
        digest = chain_hash(prev, content)
        db.execute("UPDATE audit_records SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (detail, prev, digest, seq))
        prev = digest
    db.execute("UPDATE audit_head SET hash = ?", (prev,))
    assert svc.catalog.audit.verify().ok  # every hash links again ...
    r = _cli(svc, "verify")
    assert r.returncode == 1 and "BROKEN" in r.stdout  # ... but not to the signed anchor
    assert _cli(svc, "verify", "--no-anchor").returncode == 0
    with pytest.raises(RuntimeError):  # the platform never signs over it
        anchor.verify_and_anchor(svc, actor="system:test/anchor")
    anchor.write_anchor(svc, actor="system:test/anchor")  # and if a new anchor were signed over it anyway ...
    assert _cli(svc, "verify").returncode == 1  # ... the older signed anchor still disagrees


@pytest.mark.parametrize("forgery", ["unsigned", "other-key", "misnamed"])
def test_a_forged_anchor_is_reported_and_never_trusted(svc, forgery):
    from imaging_lifecycle import anchor, crypto

    genuine = anchor.write_anchor(svc, actor="system:test/anchor")
    seq, head = 999999999, "ab" * 32  # a head far ahead: by key order it would be "the newest"
    at = "2030-01-01T00:00:00+00:00"
    body = {"format": anchor.FORMAT, "seq": seq, "hash": head, "anchored_at": at}
    name = anchor.anchor_key(seq)
    if forgery == "other-key":
        body["signature"] = base64.b64encode(crypto.sign(os.urandom(32), anchor._message(seq, head, at))).decode()
    elif forgery == "misnamed":  # a genuine signature copied under another number
        genuine_body = json.loads(svc.store.get("audit-anchor", anchor.anchor_key(genuine["seq"])))
        body, name = genuine_body, anchor.anchor_key(genuine["seq"] + 1)
    svc.store.put("audit-anchor", name, json.dumps(body).encode())
    found = anchor.latest_anchor(svc)
    assert found.newest == (genuine["seq"], genuine["hash"])  # found by number and signature, not key order
    expected = {"unsigned": "UNSIGNED", "other-key": "BAD_SIGNATURE", "misnamed": "MISNAMED"}[forgery]
    assert [p["problem"] for p in found.problems] == [expected]
    r = _cli(svc, "verify")
    assert r.returncode == 1 and expected in r.stdout and "forged or unsigned" in r.stdout
    anchor.verify_and_anchor(svc, actor="system:test/anchor")  # the hourly step goes on, and says so
    alerts = [r for r in svc.catalog.audit.records() if r.action == "security.alert"]
    assert alerts and alerts[-1].detail["reason"] == "ANCHOR_NOT_VALID"


def test_a_deletion_certificate_exported_signed_verifies_offline_and_one_changed_byte_fails(svc, dicom_file,
                                                                                           tmp_path):
    from imaging_lifecycle import anchor
    from imaging_lifecycle.deletion import sweep
    from test_deletion import T, stored_objects

    _, (oid,) = stored_objects(svc.settings, dicom_file, ["CT_small.dcm"], tier=1)
    assert sweep(svc, T, actor="system:test/sweeper")["objects_deleted"] == 1
    (cert,) = svc.catalog.certificates(oid)
    out = tmp_path / "certificate.json"
    env = {**os.environ, "IL_CATALOG_URL": svc.settings.catalog_url, "IL_BUCKET_PREFIX": svc.settings.bucket_prefix}
    cli = str(PROJECT / ".venv" / "bin" / "imaging-lifecycle")
    r = subprocess.run([cli, "certificate", "export", cert["certificate_id"], "--object", oid, "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["anchor_seq"] >= doc["audit_record_seq"]  # a signed anchor covers the certificate's record
    assert anchor.latest_anchor(svc).newest[0] == doc["anchor_seq"]
    key = base64.b64encode(anchor.public_key(svc)).decode()
    offline = {"PATH": os.environ["PATH"]}  # no catalog, no S3, no secrets: the file and the public key

    def verify(path, public=key):
        return subprocess.run([cli, "certificate", "verify", str(path), "--public-key", public], env=offline,
                              capture_output=True, text=True, timeout=120)

    assert verify(out).returncode == 0
    raw = bytearray(out.read_bytes())
    i = raw.index(b'"pass"') + 2  # one byte of the verification result
    raw[i] = ord("P")
    (tmp_path / "changed.json").write_bytes(bytes(raw))
    assert verify(tmp_path / "changed.json").returncode == 1
    other = base64.b64encode(__import__("imaging_lifecycle.crypto", fromlist=["x"]).signing_public_key(
        os.urandom(32))).decode()
    assert verify(out, other).returncode == 1  # another platform's key does not vouch for it
