"""Encrypted storage against the real embedded S3 server: plaintext never lands, tampering never passes."""

from __future__ import annotations

import io
import uuid

import pytest

from imaging_lifecycle.crypto import IntegrityError
from imaging_lifecycle.keystore import LocalKeyStore
from imaging_lifecycle.vault import Vault


@pytest.fixture(scope="module")
def vault(store, tmp_path_factory):
    ks = LocalKeyStore(tmp_path_factory.mktemp("ks") / "keystore.bin", b"\x01" * 32)
    return Vault(store, ks, chunk_size=64 * 1024)


def _put(vault, data: bytes, zone="archive", tier=3):
    cid = uuid.uuid4().hex
    sealed = vault.put(io.BytesIO(data), catalog_id=cid, zone=zone, tier=tier, scope_id=f"study:{cid[:4]}",
                       key=f"objects/{cid}", size=len(data))
    return cid, sealed


def test_round_trip_and_no_plaintext_in_the_bucket(vault, store, dicom_file):
    data = dicom_file("CT_small.dcm").read_bytes()
    cid, sealed = _put(vault, data)
    raw = store.get("archive", sealed.key, sealed.version_id)
    assert raw[128:132] != b"DICM" and not raw.startswith(b"DICM") and data[132:1000] not in raw
    with vault.open(sealed, cid) as r:
        assert r.read() == data
    out = vault.restore_to(sealed, cid, store.settings.state_dir / f"restored-{cid}.dcm")
    assert out == sealed.plaintext_sha256


def test_a_flipped_byte_in_the_stored_object_is_detected(vault, store):
    cid, sealed = _put(vault, b"x" * 200_000)
    raw = bytearray(store.get("archive", sealed.key))
    raw[len(raw) // 2] ^= 1
    tampered = store.put("archive", sealed.key, bytes(raw))
    from dataclasses import replace

    with pytest.raises(IntegrityError):
        vault.verify(replace(sealed, version_id=tampered.version_id), cid)


def test_a_swapped_object_fails_to_decrypt(vault, store):
    cid_a, a = _put(vault, b"a" * 5000)
    cid_b, b = _put(vault, b"b" * 5000)
    moved = store.put("archive", b.key, store.get("archive", a.key))  # A's ciphertext under B's key
    from dataclasses import replace

    with pytest.raises(IntegrityError):
        vault.verify(replace(b, version_id=moved.version_id), cid_b)
    with pytest.raises(IntegrityError):  # and A's bytes with A's DEK but another catalog id
        vault.verify(a, cid_b)


def test_wrong_zone_or_tier_in_associated_data_fails(vault):
    from dataclasses import replace

    cid, sealed = _put(vault, b"z" * 3000)
    with pytest.raises(IntegrityError):
        vault.verify(replace(sealed, tier=2), cid)


def test_a_truncated_stored_object_is_detected(vault, store):
    cid, sealed = _put(vault, b"t" * 300_000)
    raw = store.get("archive", sealed.key)
    cut = store.put("archive", sealed.key, raw[: len(raw) - 70_000])
    from dataclasses import replace

    with pytest.raises(IntegrityError):
        vault.verify(replace(sealed, version_id=cut.version_id), cid)


def test_a_shredded_scope_gets_a_new_key_generation_for_new_data(vault):
    """A study deleted (its KEK destroyed) and later sent again must be storable, under a new KEK."""
    first = vault.kek_for("study:resent")
    vault.keystore.destroy(first.kek_id)
    again = vault.kek_for("study:resent")
    assert again.kek_id != first.kek_id
    cid, sealed = _put(vault, b"r" * 1000)
    assert vault.kek_for("study:resent") == again  # stable once created
