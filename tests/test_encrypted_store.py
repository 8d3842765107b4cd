"""Encrypted storage against the real embedded S3 server: plaintext never lands, tampering never passes."""

from __future__ import annotations

import io
import uuid

import pytest

from imaging_lifecycle.crypto import IntegrityError
from imaging_lifecycle.encrypted_store import EncryptedStore
from imaging_lifecycle.keystore import LocalKeyStore


@pytest.fixture(scope="module")
def encrypted(store, tmp_path_factory):
    ks = LocalKeyStore(tmp_path_factory.mktemp("ks") / "keystore.bin", b"\x01" * 32)
    return EncryptedStore(store, ks, chunk_size=64 * 1024)


def _put(encrypted, data: bytes, zone="archive", tier=3):
    cid = uuid.uuid4().hex
    sealed = encrypted.put(io.BytesIO(data), catalog_id=cid, zone=zone, tier=tier, scope_id=f"study:{cid[:4]}",
                       key=f"objects/{cid}", size=len(data))
    return cid, sealed


def test_round_trip_and_no_plaintext_in_the_bucket(encrypted, store, dicom_file):
    data = dicom_file("CT_small.dcm").read_bytes()
    cid, sealed = _put(encrypted, data)
    raw = store.get("archive", sealed.key, sealed.version_id)
    assert raw[128:132] != b"DICM" and not raw.startswith(b"DICM") and data[132:1000] not in raw
    with encrypted.open(sealed, cid) as r:
        assert r.read() == data
    out = encrypted.restore_to(sealed, cid, store.settings.state_dir / f"restored-{cid}.dcm")
    assert out == sealed.plaintext_sha256


def test_a_flipped_byte_in_the_stored_object_is_detected(encrypted, store):
    cid, sealed = _put(encrypted, b"x" * 200_000)
    raw = bytearray(store.get("archive", sealed.key))
    raw[len(raw) // 2] ^= 1
    tampered = store.put("archive", sealed.key, bytes(raw))
    from dataclasses import replace

    with pytest.raises(IntegrityError):
        encrypted.verify(replace(sealed, version_id=tampered.version_id), cid)


def test_a_swapped_object_fails_to_decrypt(encrypted, store):
    cid_a, a = _put(encrypted, b"a" * 5000)
    cid_b, b = _put(encrypted, b"b" * 5000)
    moved = store.put("archive", b.key, store.get("archive", a.key))  # A's ciphertext under B's key
    from dataclasses import replace

    with pytest.raises(IntegrityError):
        encrypted.verify(replace(b, version_id=moved.version_id), cid_b)
    with pytest.raises(IntegrityError):  # and A's bytes with A's DEK but another catalog id
        encrypted.verify(a, cid_b)


def test_wrong_zone_or_tier_in_associated_data_fails(encrypted):
    from dataclasses import replace

    cid, sealed = _put(encrypted, b"z" * 3000)
    with pytest.raises(IntegrityError):
        encrypted.verify(replace(sealed, tier=2), cid)


def test_a_truncated_stored_object_is_detected(encrypted, store):
    cid, sealed = _put(encrypted, b"t" * 300_000)
    raw = store.get("archive", sealed.key)
    cut = store.put("archive", sealed.key, raw[: len(raw) - 70_000])
    from dataclasses import replace

    with pytest.raises(IntegrityError):
        encrypted.verify(replace(sealed, version_id=cut.version_id), cid)


def test_a_shredded_scope_gets_a_new_key_generation_for_new_data(encrypted):
    """A study deleted (its KEK destroyed) and later sent again must be storable, under a new KEK."""
    first = encrypted.kek_for("study:resent")
    encrypted.keystore.destroy(first.kek_id)
    again = encrypted.kek_for("study:resent")
    assert again.kek_id != first.kek_id
    cid, sealed = _put(encrypted, b"r" * 1000)
    assert encrypted.kek_for("study:resent") == again  # stable once created
