"""Key store: KEK life cycle, crypto-shredding, rotation by rewrap, several processes at once.

Real files, real ``flock``, real worker processes; no mocks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import multiprocessing
import os
import time

import pytest

from imaging_lifecycle import crypto, keystore
from imaging_lifecycle.crypto import AssociatedData
from imaging_lifecycle.keystore import (
    KekRef,
    KeyDestroyed,
    KeyNotFound,
    KeyStore,
    KeyStoreError,
    KeyStoreUnreadable,
    LocalKeyStore,
    StaleKeyVersion,
)


@pytest.fixture
def master() -> bytes:
    return crypto.generate_key()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "keys" / "keystore.sealed"


@pytest.fixture
def ks(path, master) -> LocalKeyStore:
    return LocalKeyStore(path, master)


def all_kek_bytes(path, master) -> list[bytes]:
    state = keystore._read_file_state(path, master)
    return [
        base64.b64decode(v["key"])
        for kek in state["keks"].values()
        for v in kek["versions"].values()
        if v["key"] is not None
    ]


def test_is_a_keystore(ks):
    assert isinstance(ks, KeyStore)
    assert "master" not in repr(ks)


def test_create_is_idempotent_per_scope(ks):
    assert ks.current("study:a") is None
    ref = ks.create_kek("study:a")
    assert ref.version == 1 and ref.kek_id.startswith("kek-")
    assert ks.create_kek("study:a") == ref == ks.current("study:a")
    assert ks.create_kek("grant:b") != ref
    assert ks.write_count == 2  # the repeated create wrote nothing
    assert ks.scope_of(ref.kek_id) == "study:a"


def test_wrap_unwrap_and_rotation(ks):
    ref1 = ks.create_kek("study:a")
    dek = crypto.generate_key()
    w1 = ks.wrap(ref1, dek)
    assert dek not in w1 and ks.unwrap(ref1, w1) == dek

    ref2 = ks.rotate("study:a")
    assert ref2 == KekRef(ref1.kek_id, 2) == ks.current("study:a")
    assert ks.versions(ref1.kek_id) == [ref1, ref2]
    assert ks.unwrap(ref1, w1) == dek  # old version stays usable until destroyed
    with pytest.raises(StaleKeyVersion):
        ks.wrap(ref1, crypto.generate_key())  # new DEKs only under the current version
    with pytest.raises(crypto.IntegrityError):
        ks.unwrap(ref2, w1)  # wrong version: a clear integrity failure


def test_rewrap_keeps_data_readable_after_old_version_is_destroyed(ks):
    """The full rotation: data untouched, DEK moved to the new version, old version shredded."""
    ref1 = ks.create_kek("study:a")
    dek, dek_id = crypto.generate_key(), crypto.new_key_id()
    aad = AssociatedData("obj-7", "archive", 3, dek_id)
    data = os.urandom(50_000)
    blob = crypto.encrypt_bytes(data, dek, aad, chunk_size=4096)
    row = {"wrapped": ks.wrap(ref1, dek), "ref": str(ref1)}  # what the catalog keeps

    ref2 = ks.rotate("study:a")
    new_wrapped = ks.rewrap(row["wrapped"], KekRef.parse(row["ref"]), ref2)
    assert ks.rewrap(row["wrapped"], ref1, ref2) == new_wrapped  # idempotent: same bytes again
    row = {"wrapped": new_wrapped, "ref": str(ref2)}
    ks.destroy(ref1.kek_id, 1)

    assert ks.is_destroyed(ref1.kek_id, 1) and not ks.is_destroyed(ref1.kek_id)
    with pytest.raises(KeyDestroyed):
        ks.unwrap(ref1, ks.rewrap(new_wrapped, ref2, ref2))
    dek_again = ks.unwrap(KekRef.parse(row["ref"]), row["wrapped"])
    assert crypto.decrypt_bytes(blob, dek_again, aad, expected_sha256=hashlib.sha256(data).hexdigest()) == data


def test_destroy_whole_kek_shreds_the_scope(ks, path, master):
    ref = ks.create_kek("study:a")
    ks.rotate("study:a")
    dek = crypto.generate_key()
    wrapped = ks.wrap(KekRef(ref.kek_id, 2), dek)
    kek_bytes_before = all_kek_bytes(path, master)
    assert len(kek_bytes_before) == 2

    ks.destroy(ref.kek_id)
    assert ks.is_destroyed(ref.kek_id)
    assert ks.current("study:a") is None
    for v in (1, 2):
        with pytest.raises(KeyDestroyed, match="destroyed"):
            ks.unwrap(KekRef(ref.kek_id, v), wrapped)
    with pytest.raises(KeyDestroyed):
        ks.create_kek("study:a")  # a shredded scope gets no fresh key by accident
    with pytest.raises(KeyDestroyed):
        ks.rotate("study:a")
    ks.destroy(ref.kek_id)  # destroying again is a no-op

    # the material is gone from the file itself, not just flagged
    assert all_kek_bytes(path, master) == []
    state = keystore._read_file_state(path, master)
    assert base64.b64encode(kek_bytes_before[0]).decode() not in str(state)
    # and a fresh instance (another process) agrees
    assert LocalKeyStore(path, master).is_destroyed(ref.kek_id)


def test_destroy_refusals_and_unknowns(ks):
    ref = ks.create_kek("study:a")
    with pytest.raises(KeyStoreError, match="current version"):
        ks.destroy(ref.kek_id, 1)
    with pytest.raises(KeyNotFound):
        ks.destroy(ref.kek_id, 9)
    with pytest.raises(KeyNotFound):
        ks.destroy("kek-nope")
    with pytest.raises(KeyNotFound):
        ks.unwrap(KekRef("kek-nope", 1), b"\x00" * 40)
    with pytest.raises(KeyNotFound):
        ks.unwrap(KekRef(ref.kek_id, 5), b"\x00" * 40)
    with pytest.raises(KeyNotFound):
        ks.rotate("study:none")
    with pytest.raises(KeyNotFound):
        ks.versions("kek-nope")
    for bad in ("", 5, None, "x" * 513):
        with pytest.raises(ValueError):
            ks.create_kek(bad)
    with pytest.raises(TypeError):
        ks.wrap("kek-x@v1", crypto.generate_key())


def test_kekref_text_form():
    ref = KekRef("kek-abc", 12)
    assert KekRef.parse(str(ref)) == ref
    for bad in ("kek-abc", "kek-abc@vx", "@v1", "", None):
        with pytest.raises(ValueError):
            KekRef.parse(bad)


def test_file_is_private_and_holds_no_plaintext_keys(ks, path, master):
    refs = [ks.create_kek(f"study:{i}") for i in range(5)]
    ks.rotate("study:0")
    raw = path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.with_name(path.name + ".lock").stat().st_mode & 0o777 == 0o600
    keys = all_kek_bytes(path, master)
    assert len(keys) == 6
    for key in keys:
        assert key not in raw and base64.b64encode(key) not in raw and key.hex().encode() not in raw
    for ref in refs:
        assert ref.kek_id.encode() not in raw
    assert b"study:" not in raw and master not in raw
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_wrong_master_key_is_a_clear_error(ks, path, master):
    ks.create_kek("study:a")
    other = LocalKeyStore(path, crypto.generate_key())
    with pytest.raises(KeyStoreUnreadable, match="wrong master key") as exc:
        other.current("study:a")
    assert master.hex() not in str(exc.value)
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeyStore(path, b"too short")


def test_corrupted_or_foreign_file(ks, path, master):
    ks.create_kek("study:a")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(KeyStoreUnreadable, match="corrupted"):
        LocalKeyStore(path, master).current("study:a")
    path.write_bytes(b"PK\x03\x04 not a key store")
    with pytest.raises(KeyStoreUnreadable, match="bad magic"):
        LocalKeyStore(path, master).current("study:a")


def test_file_readable_by_others_is_refused(ks, path, master):
    ks.create_kek("study:a")
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError, match="0600"):
        LocalKeyStore(path, master).current("study:a")


def test_transaction_writes_once_and_rolls_back(ks, path, master):
    with ks.transaction():
        refs = [ks.create_kek(f"study:{i}") for i in range(300)]
        assert ks.current("study:299") == refs[-1]  # visible inside the transaction
    assert ks.write_count == 1
    assert LocalKeyStore(path, master).current("study:123") == refs[123]

    with pytest.raises(RuntimeError):
        with ks.transaction():
            ks.create_kek("study:lost")
            ks.rotate("study:0")
            raise RuntimeError("task failed half-way")
    assert ks.current("study:lost") is None and ks.current("study:0") == refs[0]
    assert ks.write_count == 1


def test_other_instance_sees_changes(path, master):
    a, b = LocalKeyStore(path, master), LocalKeyStore(path, master)
    ref = a.create_kek("study:a")
    assert b.current("study:a") == ref  # b caches an empty store, then sees the new file
    b.rotate("study:a")
    assert a.current("study:a") == KekRef(ref.kek_id, 2)
    a.destroy(ref.kek_id, 1)
    assert b.is_destroyed(ref.kek_id, 1)


def test_rewrap_never_rewrites_the_file(ks):
    ref1 = ks.create_kek("study:a")
    wrapped = [ks.wrap(ref1, crypto.generate_key()) for _ in range(10_000)]
    ref2 = ks.rotate("study:a")
    writes = ks.write_count
    t0 = time.perf_counter()
    moved = [ks.rewrap(w, ref1, ref2) for w in wrapped]
    elapsed = time.perf_counter() - t0
    assert ks.write_count == writes
    assert len(set(moved)) == 10_000
    assert elapsed < 5, f"10k rewraps took {elapsed:.1f} s"


def test_rekey_reseals_under_a_new_master(ks, path, master):
    ref = ks.create_kek("study:a")
    wrapped = ks.wrap(ref, b"d" * 32)
    new_master = crypto.generate_key()
    ks.rekey(new_master)
    with pytest.raises(KeyStoreUnreadable):
        LocalKeyStore(path, master).current("study:a")
    assert LocalKeyStore(path, new_master).unwrap(ref, wrapped) == b"d" * 32


# -- several processes at once -------------------------------------------------


def _worker(path: str, master: bytes, worker: int, n: int, barrier, out) -> None:
    ks = LocalKeyStore(path, master)
    barrier.wait()
    refs = {}
    for i in range(n):
        refs[f"study:w{worker}-{i}"] = str(ks.create_kek(f"study:w{worker}-{i}"))
        refs["study:shared"] = str(ks.create_kek("study:shared"))  # everyone races for one scope too
    out.put(refs)


def test_concurrent_processes_lose_no_update(path, master):
    ctx = multiprocessing.get_context("fork")
    workers, per_worker = 6, 25
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), master, w, per_worker, barrier, out)) for w in range(workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    ks = LocalKeyStore(path, master)
    seen: dict[str, str] = {}
    for refs in results:
        for scope, ref in refs.items():
            assert seen.setdefault(scope, ref) == ref, "two processes got different KEKs for one scope"
    assert len(seen) == workers * per_worker + 1
    for scope, ref in seen.items():
        assert str(ks.current(scope)) == ref
    dek = crypto.generate_key()
    ref = KekRef.parse(seen["study:shared"])
    assert ks.unwrap(ref, ks.wrap(ref, dek)) == dek


# -- defaults ------------------------------------------------------------------


def test_master_key_from_environment(monkeypatch, tmp_path):
    key = crypto.generate_key()
    monkeypatch.setenv("IL_MASTER_KEY", base64.b64encode(key).decode())
    assert keystore.load_master_key() == key
    monkeypatch.setenv("IL_MASTER_KEY", "not base64!!")
    with pytest.raises(KeyStoreError, match="not valid base64") as exc:
        keystore.load_master_key()
    assert "not base64!!" not in str(exc.value)
    monkeypatch.setenv("IL_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(KeyStoreError, match="32 bytes"):
        keystore.load_master_key()


def test_default_keystore_uses_the_secret_file(monkeypatch, tmp_path):
    from imaging_lifecycle.settings import load_settings

    monkeypatch.delenv("IL_MASTER_KEY", raising=False)
    monkeypatch.delenv("IL_SECRET_MASTER", raising=False)
    monkeypatch.delenv("IL_KEYSTORE_PATH", raising=False)
    monkeypatch.setenv("IL_STATE_DIR", str(tmp_path / "state"))
    settings = load_settings()
    ks = keystore.open_default_keystore(settings)
    ref = ks.create_kek("study:a")
    master_file = settings.secrets_dir / "master.key"
    assert master_file.stat().st_mode & 0o777 == 0o600
    assert ks.path == settings.secrets_dir / "keystore.sealed"
    # a second opening (another worker) finds the same master key and KEK
    again = keystore.open_default_keystore(settings)
    assert again.current("study:a") == ref
    assert master_file.read_bytes() not in ks.path.read_bytes()


def test_encrypting_reader_with_keystore_wrapped_dek(ks):
    """The envelope end to end: DEK from the store's wrap, data through the streaming API."""
    ref = ks.create_kek("study:a")
    dek, dek_id = crypto.generate_key(), crypto.new_key_id()
    wrapped = ks.wrap(ref, dek)
    aad = AssociatedData("obj-1", "archive", 2, dek_id)
    data = os.urandom(10_000)
    reader = crypto.EncryptingReader(io.BytesIO(data), dek, aad, chunk_size=2048)
    blob = reader.read()
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(blob), out, ks.unwrap(ref, wrapped), aad, reader.plaintext_sha256)
    assert out.getvalue() == data


# -- master-key generations: destruction that stays destroyed ---------------------


def _file_store(tmp_path):
    from imaging_lifecycle.keystore import MasterKeyFiles

    secrets = tmp_path / "secrets"
    return LocalKeyStore(secrets / "keystore.sealed", MasterKeyFiles(secrets)), secrets


def test_a_copy_taken_before_a_destruction_cannot_open_the_destroyed_kek_after_the_reseal(tmp_path):
    """The attacker's copy: the key store file (and a DR export) from before the deletion, current secrets."""
    from imaging_lifecycle.keystore import MasterKeyFiles

    ks, secrets = _file_store(tmp_path)
    gone, kept = ks.create_kek("study:gone"), ks.create_kek("study:kept")
    w_gone, w_kept = ks.wrap(gone, b"g" * 32), ks.wrap(kept, b"k" * 32)
    copy = tmp_path / "copy-before.sealed"
    copy.write_bytes(ks.path.read_bytes())
    copy.chmod(0o600)
    dr_before = ks.sealed_bytes()
    other_worker = LocalKeyStore(ks.path, MasterKeyFiles(secrets))
    assert other_worker.unwrap(kept, w_kept) == b"k" * 32  # it has the old generation cached

    ks.destroy(gone.kek_id)
    assert LocalKeyStore(copy, MasterKeyFiles(secrets)).unwrap(gone, w_gone) == b"g" * 32  # the danger
    out = ks.reseal()
    assert out == {"generation": 2, "retired": 1}
    assert not (secrets / "master.key").exists() and (secrets / "master-2.key").stat().st_mode & 0o777 == 0o600

    with pytest.raises(KeyStoreUnreadable, match="generation 1"):
        LocalKeyStore(copy, MasterKeyFiles(secrets)).unwrap(gone, w_gone)
    with pytest.raises(KeyStoreUnreadable):
        LocalKeyStore(tmp_path / "restored.sealed", MasterKeyFiles(secrets)).restore_from(dr_before)
    assert ks.unwrap(kept, w_kept) == b"k" * 32 and ks.generation == 2
    assert other_worker.unwrap(kept, w_kept) == b"k" * 32  # another process follows the new generation
    other_worker.create_kek("study:new")  # and writes under it
    assert ks.generation == 2 and ks.current("study:new") is not None
    assert ks.reseal()["generation"] == 3 and sorted(p.name for p in secrets.glob("master*")) == ["master-3.key"]


def test_a_dr_export_restores_a_lost_key_store(tmp_path):
    ks, secrets = _file_store(tmp_path)
    ref = ks.create_kek("study:a")
    wrapped = ks.wrap(ref, b"d" * 32)
    export = ks.sealed_bytes()
    with pytest.raises(KeyStoreError, match="exists"):
        ks.restore_from(export)  # never over a live key store
    ks.path.unlink()
    assert ks.restore_from(export) == 1
    assert ks.path.stat().st_mode & 0o777 == 0o600
    assert ks.unwrap(ref, wrapped) == b"d" * 32


def test_an_injected_master_key_is_not_resealed_here(ks):
    ks.create_kek("study:a")
    with pytest.raises(KeyStoreError, match="KMS"):
        ks.reseal()


def test_a_key_store_in_the_first_layout_still_opens(path, master):
    import json as _json
    import os as _os

    prefix = keystore.FILE_MAGIC_V1 + _os.urandom(16)
    state = {"format": 1, "scopes": {"study:a": "kek-1"},
             "keks": {"kek-1": {"scope": "study:a", "current": 1, "versions": {
                 "1": {"key": base64.b64encode(b"\x02" * 32).decode(), "created": "x", "destroyed": None}}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(prefix + crypto.seal(master, _json.dumps(state).encode(), aad=prefix))
    path.chmod(0o600)
    ks = LocalKeyStore(path, master)
    assert str(ks.current("study:a")) == "kek-1@v1"
    ks.create_kek("study:b")  # rewritten in the current layout
    assert path.read_bytes().startswith(keystore.FILE_MAGIC)


def test_a_crash_before_the_old_generation_is_destroyed_is_finished_by_the_next_reseal(tmp_path, monkeypatch):
    from imaging_lifecycle.keystore import MasterKeyFiles

    ks, secrets = _file_store(tmp_path)
    ref = ks.create_kek("study:a")
    ks.destroy(ref.kek_id)
    assert ks.needs_reseal

    def crash(self, below):
        raise OSError("power lost")

    with monkeypatch.context() as m:
        m.setattr(MasterKeyFiles, "retire", crash)
        with pytest.raises(OSError):
            ks.reseal()
    assert ks.needs_reseal  # the mark stays until the old generation is really gone
    assert sorted(p.name for p in secrets.glob("master*")) == ["master-2.key", "master.key"]
    (secrets / "master-3.key.123.abcd.tmp").write_bytes(b"x" * 32)  # a crashed key write, newer: kept
    (secrets / "master.key.99.beef.tmp").write_bytes(b"y" * 32)  # of an old generation: destroyed
    assert ks.reseal()["generation"] == 3 and not ks.needs_reseal
    assert sorted(p.name for p in secrets.glob("master*")) == ["master-3.key", "master-3.key.123.abcd.tmp"]


def test_only_the_latest_export_is_restored(tmp_path):
    ks, _ = _file_store(tmp_path)
    ks.create_kek("study:a")
    old = ks.sealed_bytes()
    ks.reseal()
    ks.path.unlink()
    with pytest.raises(KeyStoreUnreadable):  # its generation is destroyed
        ks.restore_from(old)
    ks.create_kek("study:b")
    assert ks.restore_from(ks.sealed_bytes(), replace=True) == 1
