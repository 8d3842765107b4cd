"""Envelope encryption: round trips, every kind of tampering, bounded memory on multi-GB streams.

Everything is real: real AES-GCM from ``cryptography``, real DICOM files from
pydicom's bundled test data, a real subprocess for the memory measurement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap

import pydicom
import pytest

from imaging_lifecycle import crypto
from imaging_lifecycle.crypto import (
    HEADER_SIZE,
    TAG_SIZE,
    AssociatedData,
    DecryptingReader,
    EncryptingReader,
    IntegrityError,
    ciphertext_length,
    decrypt_bytes,
    decrypt_stream,
    decrypt_to_path,
    encrypt_bytes,
    encrypt_stream,
)

CS = 1024  # small chunks so multi-chunk cases stay tiny


@pytest.fixture
def dek() -> bytes:
    return crypto.generate_key()


@pytest.fixture
def aad() -> AssociatedData:
    return AssociatedData("obj-0001", "archive", 2, crypto.new_key_id())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_span(i: int, cs: int = CS) -> tuple[int, int]:
    """Byte range of full-size ciphertext chunk ``i`` (body + tag)."""
    start = HEADER_SIZE + i * (cs + TAG_SIZE)
    return start, start + cs + TAG_SIZE


def flip(blob: bytes, pos: int) -> bytes:
    b = bytearray(blob)
    b[pos] ^= 0x01
    return bytes(b)


# -- round trips -------------------------------------------------------------

SIZES = {"empty": 0, "one-byte": 1, "one-chunk": CS, "chunk+1": CS + 1, "multi-chunk": 5 * CS + 7,
         "three-exact": 3 * CS}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_round_trip_sizes(size, dek, aad):
    data = os.urandom(size)
    reader = EncryptingReader(io.BytesIO(data), dek, aad, chunk_size=CS, expected_size=size)
    parts = []
    while block := reader.read(333):  # odd read size: crosses chunk boundaries
        parts.append(block)
    blob = b"".join(parts)

    assert len(blob) == ciphertext_length(size, CS) == reader.length == reader.ciphertext_size
    assert reader.plaintext_sha256 == sha(data)
    assert reader.ciphertext_sha256 == sha(blob)
    assert reader.plaintext_size == size
    assert size < 16 or data[:16] not in blob  # no plaintext run survives (shorter ones can by chance)
    assert decrypt_bytes(blob, dek, aad, expected_sha256=sha(data)) == data

    out = io.BytesIO()
    assert decrypt_stream(io.BytesIO(blob), out, dek, aad) == sha(data)
    assert out.getvalue() == data


def test_ciphertext_length_table():
    # header + plaintext + one tag per chunk; an empty object still has its final chunk
    assert ciphertext_length(0, CS) == HEADER_SIZE + TAG_SIZE
    assert ciphertext_length(1, CS) == HEADER_SIZE + 1 + TAG_SIZE
    assert ciphertext_length(CS, CS) == HEADER_SIZE + CS + TAG_SIZE
    assert ciphertext_length(CS + 1, CS) == HEADER_SIZE + CS + 1 + 2 * TAG_SIZE
    assert ciphertext_length(3 << 30) == HEADER_SIZE + (3 << 30) + 3072 * TAG_SIZE
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError):
            ciphertext_length(bad, CS)


def test_real_dicom_file_round_trip_through_files(dicom_file, dek, tmp_path):
    """A real DICOM file through the streaming API, file to file, default chunk size."""
    src = dicom_file("CT_small.dcm")
    aad = AssociatedData("obj-ct", "archive", 3, crypto.new_key_id())
    ct_path = tmp_path / "ct.enc"
    with open(src, "rb") as fin, open(ct_path, "wb") as fout:
        result = encrypt_stream(fin, fout, dek, aad, expected_size=src.stat().st_size)
    assert result.plaintext_sha256 == crypto.sha256_file(src)
    assert result.ciphertext_sha256 == crypto.sha256_file(ct_path)
    assert ct_path.stat().st_size == ciphertext_length(src.stat().st_size)
    assert b"DICM" not in ct_path.read_bytes()

    out = tmp_path / "restored.dcm"
    with open(ct_path, "rb") as fin:
        digest = decrypt_to_path(fin, out, dek, aad, expected_sha256=result.plaintext_sha256)
    assert digest == result.plaintext_sha256
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_mode & 0o777 == 0o600
    assert pydicom.dcmread(out).Modality == "CT"


def test_several_real_dicom_files_bytes_api(dicom_file, dek):
    for name in ("MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"):
        data = dicom_file(name).read_bytes()
        aad = AssociatedData(f"obj-{name}", "research", 1, crypto.new_key_id())
        blob = encrypt_bytes(data, dek, aad)
        assert decrypt_bytes(blob, dek, aad, sha(data)) == data


def test_reader_is_a_real_file_object(dek, aad):
    data = os.urandom(3 * CS + 5)
    reader = EncryptingReader(io.BytesIO(data), dek, aad, CS)
    buffered = io.BufferedReader(reader, buffer_size=700)  # as an HTTP client might wrap it
    blob = buffered.read()
    assert decrypt_bytes(blob, dek, aad) == data
    dec = DecryptingReader(io.BytesIO(blob), dek, aad)
    buf = bytearray(100)
    got = bytearray()
    while n := dec.readinto(buf):
        got += buf[:n]
    assert bytes(got) == data
    assert dec.plaintext_sha256 == sha(data) and dec.plaintext_size == len(data)


def test_short_reads_from_source_are_handled(dek, aad):
    """Raw streams (sockets, pipes) return short reads; the framing must not depend on read sizes."""

    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.src = io.BytesIO(data)

        def readable(self):
            return True

        def read(self, n=-1):
            return self.src.read(min(n, 77) if n >= 0 else 77)

    data = os.urandom(4 * CS + 3)
    blob = EncryptingReader(Trickle(data), dek, aad, CS).read()
    assert len(blob) == ciphertext_length(len(data), CS)
    out = io.BytesIO()
    decrypt_stream(Trickle(blob), out, dek, aad, sha(data))
    assert out.getvalue() == data


@pytest.mark.parametrize("hint_delta", [0, -1, -500, +1, +5000, None],
                         ids=["exact", "1-short", "much-short", "1-long", "much-long", "none"])
@pytest.mark.parametrize("size", [0, 700, CS, 3 * CS + 5])
def test_length_hint_only_sizes_buffers(size, hint_delta, dek, aad):
    """A wrong ciphertext-size hint must never change the outcome, only the buffer sizes."""
    data = os.urandom(size)
    blob = encrypt_bytes(data, dek, aad, CS)
    hint = None if hint_delta is None else len(blob) + hint_delta
    out = io.BytesIO()
    DecryptingReader(io.BytesIO(blob), dek, aad, sha(data), length_hint=hint).copy_to(out)
    assert out.getvalue() == data
    with pytest.raises(IntegrityError):
        DecryptingReader(io.BytesIO(blob[:-1]), dek, aad, length_hint=hint).read()
    with pytest.raises(IntegrityError):
        DecryptingReader(io.BytesIO(blob + b"x"), dek, aad, length_hint=hint).read()


def test_copy_to_accepts_writers_that_return_nothing(dek, aad):
    class Sink:
        def __init__(self):
            self.parts = []

        def write(self, b):
            self.parts.append(bytes(b))  # copies, as a writer must

    data = os.urandom(5 * CS)
    sink = Sink()
    result = encrypt_stream(io.BytesIO(data), sink, dek, aad, CS)
    blob = b"".join(sink.parts)
    assert result.ciphertext_sha256 == sha(blob)
    assert decrypt_bytes(blob, dek, aad, result.plaintext_sha256) == data


def test_bounded_read_returns_verified_bytes_before_raising(sample, dek, aad):
    data, blob = sample
    bad = flip(blob, chunk_span(1)[0] + 3)
    reader = DecryptingReader(io.BytesIO(bad), dek, aad)
    first = reader.read(CS + 500)  # asks past the bad chunk: gets the good chunk only
    assert first == data[:CS]
    with pytest.raises(IntegrityError, match="chunk 1"):
        reader.read(10)
    with pytest.raises(IntegrityError):  # whole reads never return a partial object
        DecryptingReader(io.BytesIO(bad), dek, aad).read()


def test_fresh_nonce_prefix_per_object(dek, aad):
    data = b"same plaintext" * 100
    a, b = encrypt_bytes(data, dek, aad, CS), encrypt_bytes(data, dek, aad, CS)
    assert a[:4] == b[:4] == crypto.MAGIC
    assert a[9:HEADER_SIZE] != b[9:HEADER_SIZE] and a != b


def test_results_unavailable_until_finished(dek, aad):
    reader = EncryptingReader(io.BytesIO(os.urandom(3 * CS)), dek, aad, CS)
    reader.read(10)
    with pytest.raises(RuntimeError, match="not finished"):
        _ = reader.plaintext_sha256
    reader.read()
    assert reader.plaintext_size == 3 * CS
    dec = DecryptingReader(io.BytesIO(b""), dek, aad)
    with pytest.raises(RuntimeError):
        _ = dec.plaintext_sha256


@pytest.mark.parametrize(
    "expected,actual", [(CS, CS - 1), (CS, CS + 1), (CS, 0), (100, 99), (100, 101), (0, 1), (3 * CS, 3 * CS + 1)]
)
def test_source_size_changed_during_upload_is_refused(expected, actual, dek, aad):
    reader = EncryptingReader(io.BytesIO(os.urandom(actual)), dek, aad, CS, expected_size=expected)
    with pytest.raises(IntegrityError, match="source size changed"):
        reader.read()
    with pytest.raises(IntegrityError):  # and stays failed: never a silent EOF
        reader.read(1)


# -- tampering ---------------------------------------------------------------


@pytest.fixture
def sample(dek, aad):
    data = os.urandom(4 * CS + 100)  # chunks 0..3 full, chunk 4 short and last
    return data, encrypt_bytes(data, dek, aad, CS)


@pytest.mark.parametrize(
    "pos,what",
    [(0, "magic"), (4, "format version"), (6, "chunk size"), (8, "chunk size low byte"), (12, "nonce prefix")],
)
def test_flipped_header_byte(pos, what, sample, dek, aad):
    _, blob = sample
    with pytest.raises(IntegrityError):
        decrypt_bytes(flip(blob, pos), dek, aad)


@pytest.mark.parametrize("where", ["first chunk body", "middle chunk body", "tag", "last chunk tag"])
def test_flipped_chunk_byte(where, sample, dek, aad):
    _, blob = sample
    pos = {
        "first chunk body": HEADER_SIZE,
        "middle chunk body": chunk_span(2)[0] + 500,
        "tag": chunk_span(1)[1] - 1,
        "last chunk tag": len(blob) - 1,
    }[where]
    with pytest.raises(IntegrityError, match="failed authentication"):
        decrypt_bytes(flip(blob, pos), dek, aad)


def test_swapped_objects_are_detected(dek, aad):
    """Object A's ciphertext under B's catalog row (B's DEK and AAD) must not decrypt."""
    dek_b = crypto.generate_key()
    aad_b = AssociatedData("obj-0002", "archive", 2, crypto.new_key_id())
    blob_a = encrypt_bytes(os.urandom(2 * CS), dek, aad, CS)
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob_a, dek_b, aad_b)
    with pytest.raises(IntegrityError):  # even if only the DEK came from B's row
        decrypt_bytes(blob_a, dek_b, aad)
    with pytest.raises(IntegrityError):  # or only the associated data
        decrypt_bytes(blob_a, dek, aad_b)


@pytest.mark.parametrize(
    "change",
    [{"catalog_id": "obj-0002"}, {"zone": "research"}, {"tier": 3}, {"key_version": "dek-other"}],
    ids=["catalog_id", "zone", "tier", "key_version"],
)
def test_wrong_associated_data_each_field(change, sample, dek, aad):
    _, blob = sample
    with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
        decrypt_bytes(blob, dek, dataclasses.replace(aad, **change))


@pytest.mark.parametrize(
    "cut",
    ["drop last chunk", "drop last two chunks", "cut mid-chunk", "cut inside last tag", "header only",
     "cut inside header", "empty"],
)
def test_truncated_stream(cut, sample, dek, aad):
    _, blob = sample
    end = {
        "drop last chunk": chunk_span(3)[1],  # ends cleanly on a chunk boundary
        "drop last two chunks": chunk_span(2)[1],
        "cut mid-chunk": chunk_span(2)[0] + 300,
        "cut inside last tag": len(blob) - 5,
        "header only": HEADER_SIZE,
        "cut inside header": 7,
        "empty": 0,
    }[cut]
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob[:end], dek, aad)


def test_truncated_exact_multiple_object(dek, aad):
    """All chunks full: dropping the last one leaves a stream that ends on a boundary."""
    data = os.urandom(3 * CS)
    blob = encrypt_bytes(data, dek, aad, CS)
    with pytest.raises(IntegrityError, match="chunk 1 failed"):
        decrypt_bytes(blob[: chunk_span(1)[1]], dek, aad)


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (0, 2, 1, 3), (0, 1, 3, 2)])
def test_reordered_chunks(order, sample, dek, aad):
    _, blob = sample
    chunks = [blob[slice(*chunk_span(i))] for i in range(4)]
    tail = blob[chunk_span(3)[1]:]
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob[:HEADER_SIZE] + b"".join(chunks[i] for i in order) + tail, dek, aad)


def test_duplicated_and_appended_data(sample, dek, aad):
    _, blob = sample
    c1 = blob[slice(*chunk_span(1))]
    with pytest.raises(IntegrityError):  # a chunk repeated
        decrypt_bytes(blob[: chunk_span(1)[1]] + c1 + blob[chunk_span(2)[0]:], dek, aad)
    with pytest.raises(IntegrityError):  # trailing garbage after the final chunk
        decrypt_bytes(blob + b"\x00", dek, aad)
    with pytest.raises(IntegrityError):  # a whole extra (valid) chunk appended
        decrypt_bytes(blob + c1, dek, aad)


def test_wrong_dek(sample, aad):
    _, blob = sample
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob, crypto.generate_key(), aad)


def test_no_unauthenticated_plaintext_is_released(sample, dek, aad):
    """Reading up to a tampered chunk yields only the authenticated chunks before it."""
    data, blob = sample
    bad = flip(blob, chunk_span(2)[0] + 10)
    reader = DecryptingReader(io.BytesIO(bad), dek, aad)
    got = bytearray()
    with pytest.raises(IntegrityError, match="chunk 2"):
        while block := reader.read(100):
            got += block
    assert bytes(got) == data[: 2 * CS]
    with pytest.raises(IntegrityError):  # a second attempt does not look like EOF
        reader.read(100)


def test_expected_hash_checked_before_last_chunk_is_released(dek, aad):
    data = os.urandom(100)  # a single (final) chunk
    blob = encrypt_bytes(data, dek, aad, CS)
    reader = DecryptingReader(io.BytesIO(blob), dek, aad, expected_sha256=sha(b"something else"))
    with pytest.raises(IntegrityError, match="SHA-256 does not match"):
        reader.read(1)


def test_decrypt_to_path_leaves_nothing_on_failure(sample, dek, aad, tmp_path):
    _, blob = sample
    target = tmp_path / "out.dcm"
    with pytest.raises(IntegrityError):
        decrypt_to_path(io.BytesIO(blob[:-1]), target, dek, aad)
    assert list(tmp_path.iterdir()) == []


def test_error_messages_carry_no_secrets_or_data(sample, dek, aad):
    data, blob = sample
    errors = []
    for attempt in (
        lambda: decrypt_bytes(flip(blob, 100), dek, aad),
        lambda: decrypt_bytes(blob, dek, aad, sha(b"x")),
        lambda: crypto.unwrap_key(dek, os.urandom(40)),
        lambda: crypto.open_sealed(dek, os.urandom(60)),
    ):
        with pytest.raises(IntegrityError) as exc:
            attempt()
        errors.append(str(exc.value))
    for msg in errors:
        for secret in (dek.hex(), dek.decode("latin-1"), sha(data), data[:16].hex(), aad.catalog_id):
            assert secret not in msg


# -- associated data ---------------------------------------------------------


def test_associated_data_encoding_is_canonical_and_injective():
    a = AssociatedData("ab", "archive", 1, "c")
    assert a.encode() == AssociatedData("ab", "archive", 1, "c").encode()
    assert a.encode() != AssociatedData("a", "archive", 1, "bc").encode()
    assert a.encode() != AssociatedData("ab", "archive", 2, "c").encode()
    # pinned: the format is stored in every object forever
    assert a.encode() == b"IL-AAD\x01" + b"\x00\x02ab" + b"\x00\x07archive" + b"\x01" + b"\x00\x01c"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"catalog_id": ""}, "catalog_id"),
        ({"catalog_id": 12}, "catalog_id"),
        ({"catalog_id": "x" * 1025}, "catalog_id"),
        ({"catalog_id": "\udcff"}, "catalog_id"),
        ({"zone": "DOE^JOHN"}, "zone"),
        ({"tier": -1}, "tier"),
        ({"tier": 256}, "tier"),
        ({"tier": True}, "tier"),
        ({"tier": "2"}, "tier"),
        ({"key_version": ""}, "key_version"),
        ({"key_version": None}, "key_version"),
    ],
)
def test_bad_associated_data_is_refused_without_echo(kwargs, field):
    base = {"catalog_id": "obj-1", "zone": "archive", "tier": 1, "key_version": "dek-1"}
    with pytest.raises(ValueError, match=field) as exc:
        AssociatedData(**{**base, **kwargs})
    assert "DOE^JOHN" not in str(exc.value)


def test_bad_keys_and_arguments(aad):
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptingReader(io.BytesIO(b""), b"short", aad)
    with pytest.raises(TypeError):
        EncryptingReader(io.BytesIO(b""), "a" * 32, aad)
    with pytest.raises(TypeError, match="AssociatedData"):
        EncryptingReader(io.BytesIO(b""), crypto.generate_key(), b"raw aad")
    for bad in (0, 512, 65 << 20):
        with pytest.raises(ValueError, match="chunk_size"):
            EncryptingReader(io.BytesIO(b""), crypto.generate_key(), aad, chunk_size=bad)
    with pytest.raises(ValueError, match="expected_sha256"):
        DecryptingReader(io.BytesIO(b""), crypto.generate_key(), aad, expected_sha256="abc")


def test_header_declaring_huge_chunks_is_refused(dek, aad):
    """A corrupted header must not make the reader allocate gigabytes."""
    blob = bytearray(encrypt_bytes(b"x", dek, aad, CS))
    blob[5:9] = (1 << 31).to_bytes(4, "big")
    with pytest.raises(IntegrityError, match="chunk size out of range"):
        decrypt_bytes(bytes(blob), dek, aad)


# -- helpers -------------------------------------------------------------------


def test_verify_plaintext():
    h = sha(b"abc")
    crypto.verify_plaintext(h, h.upper())
    with pytest.raises(IntegrityError):
        crypto.verify_plaintext(h, sha(b"abd"))
    with pytest.raises(ValueError):
        crypto.verify_plaintext("not-a-hash", h)


def test_sha256_file(dicom_file):
    path = dicom_file("CT_small.dcm")
    assert crypto.sha256_file(path) == sha(path.read_bytes())


def test_key_wrap_rfc3394_vector():
    """RFC 3394 section 4.6: 256-bit key data wrapped with a 256-bit KEK."""
    kek = bytes.fromhex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
    key = bytes.fromhex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
    wrapped = bytes.fromhex(
        "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"
    )
    assert crypto.wrap_key(kek, key) == wrapped
    assert crypto.unwrap_key(kek, wrapped) == key


def test_key_wrap_failures():
    kek, dek = crypto.generate_key(), crypto.generate_key()
    wrapped = crypto.wrap_key(kek, dek)
    assert len(wrapped) == 40
    with pytest.raises(IntegrityError, match="wrong KEK"):
        crypto.unwrap_key(crypto.generate_key(), wrapped)
    with pytest.raises(IntegrityError, match="wrong KEK or corrupted"):
        crypto.unwrap_key(kek, flip(wrapped, 20))
    with pytest.raises(IntegrityError, match="malformed"):
        crypto.unwrap_key(kek, wrapped[:-1])
    with pytest.raises(ValueError):
        crypto.wrap_key(kek, b"tiny")
    with pytest.raises(ValueError):
        crypto.wrap_key(b"k" * 16, dek)  # KEKs are AES-256 only


def test_seal_and_open():
    key = crypto.generate_key()
    blob = crypto.seal(key, b"re-identification map", aad=b"ctx")
    assert crypto.open_sealed(key, blob, aad=b"ctx") == b"re-identification map"
    assert crypto.seal(key, b"same", b"") != crypto.seal(key, b"same", b"")  # fresh nonce
    assert crypto.open_sealed(key, crypto.seal(key, b"")) == b""
    for bad_key, bad_blob, bad_aad in (
        (crypto.generate_key(), blob, b"ctx"),
        (key, blob, b"other"),
        (key, flip(blob, 5), b"ctx"),
        (key, flip(blob, len(blob) - 1), b"ctx"),
        (key, blob[:20], b"ctx"),
        (key, b"\x02" + blob[1:], b"ctx"),
    ):
        with pytest.raises(IntegrityError):
            crypto.open_sealed(bad_key, bad_blob, bad_aad)


# -- multi-GB stream with bounded memory ----------------------------------------

_BIG_CHILD = textwrap.dedent(
    """
    import hashlib, io, json, os, resource, sys, time
    from imaging_lifecycle import crypto

    SIZE = int(sys.argv[1])
    BLOCK = 1 << 20
    BASE = os.urandom(BLOCK + 4096)

    class Generated(io.RawIOBase):
        '''SIZE bytes made up on the fly (never stored), hashed as they are handed out.'''
        def __init__(self):
            self.left, self.i, self.sha = SIZE, 0, hashlib.sha256()
        def readable(self):
            return True
        def read(self, n=-1):
            n = min(BLOCK if n < 0 else n, self.left, BLOCK)
            off = (self.i * 4093) % 4096
            self.i += 1
            out = BASE[off:off + n]
            self.sha.update(out)
            self.left -= n
            return out

    class Tee(io.RawIOBase):
        '''Passes ciphertext from the encryptor to the decryptor, hashing it in between.'''
        def __init__(self, src):
            self.src, self.sha, self.n = src, hashlib.sha256(), 0
        def readable(self):
            return True
        def read(self, n=-1):
            data = self.src.read(n)
            self.sha.update(data)
            self.n += len(data)
            return data

    class Discard:
        def write(self, b):
            return len(b)

    dek = crypto.generate_key()
    aad = crypto.AssociatedData("obj-big", "archive", 2, crypto.new_key_id())
    t0 = time.perf_counter()
    gen = Generated()
    enc = crypto.EncryptingReader(gen, dek, aad, expected_size=SIZE)
    tee = Tee(enc)
    pt_sha = crypto.decrypt_stream(tee, Discard(), dek, aad)
    print(json.dumps({
        "seconds": time.perf_counter() - t0,
        # VmHWM is this address space's own peak. ru_maxrss is not: Linux carries it over
        # fork+exec, so it would report the (large) pytest parent's RSS.
        "maxrss_kb": int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))),
        "source_sha": gen.sha.hexdigest(),
        "enc_pt_sha": enc.plaintext_sha256,
        "dec_pt_sha": pt_sha,
        "enc_ct_sha": enc.ciphertext_sha256,
        "seen_ct_sha": tee.sha.hexdigest(),
        "ct_size": tee.n,
        "expected_ct_size": crypto.ciphertext_length(SIZE),
        "pt_size": enc.plaintext_size,
    }))
    """
)


@pytest.mark.slow
def test_multi_gigabyte_round_trip_bounded_memory():
    size = (3 << 30) + 12345  # 3 GiB and a bit: not a multiple of the chunk size
    r = subprocess.run(
        [sys.executable, "-c", _BIG_CHILD, str(size)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    print(f"3 GiB round trip: {out['seconds']:.1f} s, peak RSS {out['maxrss_kb'] / 1024:.0f} MiB")
    assert out["source_sha"] == out["enc_pt_sha"] == out["dec_pt_sha"]
    assert out["enc_ct_sha"] == out["seen_ct_sha"]
    assert out["ct_size"] == out["expected_ct_size"] and out["pt_size"] == size
    assert out["maxrss_kb"] < 200 * 1024, f"peak RSS {out['maxrss_kb']} KiB"
    assert out["seconds"] < 60


def test_the_object_stores_pki_is_private_and_renewed_before_it_expires(tmp_path):
    """Files 0600 in a 0700 folder, the CA key thrown away; a certificate near its end is replaced."""
    from imaging_lifecycle import seaweed

    p = seaweed.pki(tmp_path / "pki", days=10)  # already inside the renewal margin
    assert sorted(x.name for x in (tmp_path / "pki").iterdir()) == ["ca.crt", "weed.crt", "weed.key"]
    assert all(x.stat().st_mode & 0o777 == 0o600 for x in (tmp_path / "pki").iterdir())
    assert (tmp_path / "pki").stat().st_mode & 0o777 == 0o700
    first = p.cert.read_bytes()
    again = seaweed.pki(tmp_path / "pki")  # the next start: renewed, now for the full term
    assert again.cert.read_bytes() != first and crypto.certificate_days_left(again.cert.read_bytes()) > 800
    assert seaweed.pki(tmp_path / "pki").cert.read_bytes() == again.cert.read_bytes()  # kept while valid
