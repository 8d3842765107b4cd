"""The embedded S3 server, started from the suite, through our storage adapter and the minio SDK."""

from __future__ import annotations

import datetime as dt
import io
import os
import uuid

import pytest
from minio.error import S3Error

from imaging_lifecycle.settings import ZONES

from conftest import make_zones


def _key() -> str:
    return f"test/{uuid.uuid4().hex}"


def test_all_zones_exist_versioned_and_locked_where_designed(store):
    for zone in ZONES:
        c, b = store.client(zone), store.bucket(zone)
        assert c.bucket_exists(b), zone
        assert c.get_bucket_versioning(b).status == "Enabled", zone
    assert make_zones(store.settings) == []  # idempotent: a second run creates nothing


def test_backup_zone_is_on_the_second_site(store, object_store_settings):
    assert object_store_settings.endpoint_for("backup") != object_store_settings.endpoint_for("archive")
    assert not store.client("archive").bucket_exists(store.bucket("backup"))


def test_put_and_get_round_trip(store):
    key = _key()
    r = store.put("archive", key, b"ciphertext bytes")
    assert r.version_id
    assert store.get("archive", key) == b"ciphertext bytes"
    assert store.exists("archive", key)
    assert not store.exists("archive", key + "-missing")
    with pytest.raises(FileNotFoundError):
        store.get("archive", key + "-missing")


def test_versioning_keeps_old_versions_and_purge_removes_every_version_and_marker(store):
    key = _key()
    v1 = store.put("cache", key, b"one").version_id
    v2 = store.put("cache", key, b"two").version_id
    assert store.get("cache", key, v1) == b"one"
    assert store.get("cache", key) == b"two"
    store.client("cache").remove_object(store.bucket("cache"), key)  # a plain delete: only a marker
    versions = list(store.versions("cache", key))
    assert {v.version_id for v in versions} >= {v1, v2}
    assert any(v.is_delete_marker for v in versions)
    assert store.purge("cache", [(v.key, v.version_id) for v in versions]) == []
    assert list(store.versions("cache", key)) == []
    for vid in (v1, v2):
        assert not store.exists("cache", key, vid)


def test_object_lock_retention_refuses_deletion_until_it_expires(store):
    key = _key()
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=4)
    r = store.put("backup", key, b"locked", retain_until=until)
    ret = store.client("backup").get_object_retention(store.bucket("backup"), key, version_id=r.version_id)
    assert ret.mode == "GOVERNANCE"
    failures = store.purge("backup", [(key, r.version_id)])
    assert failures and failures[0][2] == "AccessDenied"
    assert store.get("backup", key, r.version_id) == b"locked"
    import time

    time.sleep(max(0.0, (until - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.5)
    assert store.purge("backup", [(key, r.version_id)]) == []
    assert not store.exists("backup", key, r.version_id)


def test_legal_hold_blocks_deletion_until_released(store):
    key = _key()
    r = store.put("backup", key, b"held", legal_hold=True)
    c, b = store.client("backup"), store.bucket("backup")
    assert c.is_object_legal_hold_enabled(b, key, version_id=r.version_id)
    with pytest.raises(S3Error) as err:
        c.remove_object(b, key, version_id=r.version_id)
    assert err.value.code == "AccessDenied"
    store.set_legal_hold("backup", key, r.version_id, False)
    assert store.purge("backup", [(key, r.version_id)]) == []


def test_wrong_credentials_are_refused(object_store_settings):
    from dataclasses import replace

    from imaging_lifecycle.storage import ping

    ep = object_store_settings.primary
    assert ping(ep) == (True, "ok")
    up, detail = ping(replace(ep, secret_key="not-the-secret"))
    assert not up and "answered" in detail
    assert "not-the-secret" not in repr(replace(ep, secret_key="not-the-secret"))


def test_credentials_file_is_private(object_store_settings, state_dir):
    from imaging_lifecycle.settings import embedded_credentials_file

    path = embedded_credentials_file(state_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (state_dir / "secrets").stat().st_mode & 0o777 == 0o700


def test_the_pipeline_identity_cannot_bypass_a_lock_change_it_or_administer_buckets(store):
    """Least privilege: only the separate admin identity (never loaded by the pipeline) may do these."""
    from minio.commonconfig import ENABLED, GOVERNANCE, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
    from minio.objectlockconfig import DAYS, ObjectLockConfig
    from minio.retention import Retention

    from imaging_lifecycle.settings import admin_settings
    from imaging_lifecycle.storage import ObjectStore

    key = _key()
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    r = store.put("backup", key, b"locked", retain_until=until)
    c, b = store.client("backup"), store.bucket("backup")
    bypass = {"x-amz-bypass-governance-retention": "true"}
    attempts = {
        "bypass-delete": lambda: c._execute("DELETE", b, key, headers=bypass, query_params={"versionId": r.version_id}),
        "shorten-retention": lambda: c.set_object_retention(
            b, key, Retention(GOVERNANCE, dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)),
            version_id=r.version_id),
        "lock-config": lambda: c.set_object_lock_config(b, ObjectLockConfig(GOVERNANCE, 1, DAYS)),
        "make-bucket": lambda: c.make_bucket(f"il-x{uuid.uuid4().hex[:8]}"),
        "delete-bucket": lambda: c.remove_bucket(store.bucket("cache")),
        "outside-prefix": lambda: c.put_object("other-bucket", "k", __import__("io").BytesIO(b"x"), 1),
        # A lifecycle rule could expire locked versions by TTL, around the retention check.
        "lifecycle": lambda: c.set_bucket_lifecycle(b, LifecycleConfig([Rule(
            ENABLED, rule_filter=Filter(prefix=""), rule_id="x", expiration=Expiration(days=1))])),
        "bucket-policy": lambda: c.set_bucket_policy(b, '{"Version":"2012-10-17","Statement":[]}'),
    }
    refused = {}
    for name, attempt in attempts.items():
        with pytest.raises(S3Error) as err:
            attempt()
        refused[name] = err.value.code
    assert set(refused.values()) <= {"AccessDenied", "NoSuchBucket"}, refused
    assert store.get("backup", key, r.version_id) == b"locked"
    # Control: the admin identity can bypass governance, so the refusals above are the identity's, not the lock's.
    admin = ObjectStore(admin_settings(store.settings)).client("backup")
    admin._execute("DELETE", b, key, headers=bypass, query_params={"versionId": r.version_id})
    assert not store.exists("backup", key, r.version_id)


def test_an_upload_whose_bytes_differ_from_its_checksum_is_refused_and_nothing_is_stored(store):
    """What lets encrypt-and-store and backup skip the read-back: the site itself checks the hash."""
    import hashlib

    from imaging_lifecycle.storage import StorageError

    assert store.proves_checksums("archive") and store.proves_checksums("backup")  # probed on both sites
    key, data = _key(), os.urandom(4096)
    with pytest.raises(StorageError) as refused:
        store.put("archive", key, data, sha256=hashlib.sha256(data + b"x").hexdigest())
    assert refused.value.code == "BadDigest"
    assert not list(store.versions("archive", key))  # refused means nothing stored, not a bad version
    r = store.put("archive", key, data, sha256=hashlib.sha256(data).hexdigest())
    assert store.get("archive", key, r.version_id) == data
    with pytest.raises(ValueError, match="single-part"):
        store.put("archive", key, io.BytesIO(data), -1, sha256=hashlib.sha256(data).hexdigest())
    assert not list(store.versions("archive", "_probe/"))  # the probe stored nothing either
