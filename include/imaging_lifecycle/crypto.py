"""All cryptography in imaging-lifecycle goes through this module.

Nothing else in the package imports ``cryptography``, ``hmac`` or ``secrets``
for protection purposes; other modules call the small functions here. That
keeps the dangerous primitives (nonces, key wrap, framing) in one place to
review.
"""

from __future__ import annotations

import hashlib
import hmac


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).digest()


def keyed_digest(key: bytes, purpose: str, value: str) -> str:
    """A keyed, purpose-separated hex digest of an identifying value.

    Used wherever an identifier must be matched without being stored or
    logged (a SOP Instance UID in the catalog, an object reference in the
    audit trail). ``purpose`` domain-separates uses, so the digest of a UID
    for the catalog cannot be joined with its digest for the audit trail
    unless both purposes are known.
    """
    return hmac_sha256(key, purpose.encode() + b"\x00" + value.encode("utf-8", "surrogateescape")).hex()


# ---------------------------------------------------------------------------
# Envelope encryption of stored objects (issue 5).
#
# Every object gets its own random 256-bit data key (DEK); the DEK is wrapped
# under a key-encryption key (KEK) held by ``imaging_lifecycle.keystore`` and
# the wrapped DEK lives in the catalog, never next to the data. The object is
# encrypted with AES-256-GCM in chunks using the STREAM construction
# (Hoang, Reyhanitabar, Rogaway, Vizar 2015):
#
#   ciphertext = header || chunk_0 || chunk_1 || ... || chunk_last
#   header     = MAGIC(4) || format version(1) || chunk size(u32 BE) || nonce prefix(7)
#   chunk_i    = AES-GCM(DEK, nonce_i, plaintext_i, AD) = ciphertext_i || tag(16)
#   nonce_i    = nonce prefix(7) || i (u32 BE) || last-chunk flag(1)
#   AD         = header || AssociatedData.encode()
#
# The counter in the nonce detects reordering, dropping and duplication; the
# last-chunk flag detects truncation at a chunk boundary (the new final chunk
# was sealed with flag 0); putting the header into every chunk's AD means no
# header byte can change unnoticed. Only whole chunks that passed their tag
# are ever released, so memory is bounded by a few chunks whatever the size.
# ---------------------------------------------------------------------------

import io  # noqa: E402  (the section above is shared and must stay as it is)
import os  # noqa: E402
import secrets  # noqa: E402
import struct  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import BinaryIO  # noqa: E402

from cryptography.exceptions import InvalidTag  # noqa: E402
from cryptography.hazmat.primitives import keywrap  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from imaging_lifecycle.settings import ZONES  # noqa: E402

KEY_SIZE = 32  # AES-256 for DEKs, KEKs and sealing keys alike
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
MAGIC = b"\x89ILE"  # non-ASCII first byte: never mistaken for text or DICOM
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBI7s")
HEADER_SIZE = _HEADER.size  # 16
DEFAULT_CHUNK_SIZE = 1 << 20
#: Bounds on the chunk size a header may declare: the upper one caps the
#: memory a hostile or corrupted header can make a reader allocate.
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 64 << 20
_MAX_CHUNKS = 1 << 32  # the counter is 32 bits: 4 PiB at 1 MiB chunks
_AAD_MAGIC = b"IL-AAD\x01"
_MAX_AAD_FIELD = 1024
_SEAL_VERSION = b"\x01"
_SEAL_NONCE = 12


class CryptoError(Exception):
    """Base of every error this module raises on purpose."""


class IntegrityError(CryptoError):
    """Ciphertext, header, tag, key wrap or hash failed verification.

    The message says what failed (which chunk, which check), never key bytes,
    plaintext or hashes of content.
    """


class KeyUnavailable(CryptoError):
    """A key needed to decrypt is missing or has been destroyed."""


def generate_key() -> bytes:
    """A fresh random 256-bit key (DEK, KEK or sealing key)."""
    return secrets.token_bytes(KEY_SIZE)


def new_key_id() -> str:
    """A fresh opaque id for a DEK; it is what ``AssociatedData.key_version`` binds."""
    return f"dek-{uuid.uuid4().hex}"


def _check_key(key: object, what: str) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def _check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError("chunk_size must be an int")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes, got {chunk_size}")
    return chunk_size


@dataclass(frozen=True)
class AssociatedData:
    """What a ciphertext is bound to; decrypting with any other value fails.

    ``key_version`` is the id of the object's own DEK, *not* the KEK version:
    key rotation re-wraps DEKs under a new KEK version without touching the
    data, so anything bound into the ciphertext must stay stable across
    rotation. Binding the DEK id still stops a ciphertext from being paired
    with another object's (wrapped) DEK row in the catalog.

    ``zone`` is the zone the object was encrypted for. A byte-identical replica
    (the backup copy of an archive object) keeps its original zone here.

    Validation errors never echo the offending value: a caller that passes a
    patient identifier by mistake must not see it copied into a log.
    """

    catalog_id: str
    zone: str
    tier: int
    key_version: str

    def __post_init__(self) -> None:
        for name in ("catalog_id", "zone", "key_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"AssociatedData.{name} must be a non-empty str")
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValueError(f"AssociatedData.{name} must be valid Unicode text") from None
            if size > _MAX_AAD_FIELD:
                raise ValueError(f"AssociatedData.{name} is {size} bytes; at most {_MAX_AAD_FIELD}")
        if self.zone not in ZONES:
            raise ValueError(f"AssociatedData.zone is not a known storage zone; known: {', '.join(ZONES)}")
        if isinstance(self.tier, bool) or not isinstance(self.tier, int) or not 0 <= self.tier <= 255:
            raise ValueError("AssociatedData.tier must be an int between 0 and 255")

    def encode(self) -> bytes:
        """Canonical, injective byte encoding: fixed field order, each length-prefixed."""
        out = [_AAD_MAGIC]
        for value in (self.catalog_id, self.zone):
            raw = value.encode("utf-8")
            out.append(struct.pack(">H", len(raw)) + raw)
        out.append(struct.pack(">B", self.tier))
        raw = self.key_version.encode("utf-8")
        out.append(struct.pack(">H", len(raw)) + raw)
        return b"".join(out)


def _check_aad(aad: object) -> bytes:
    if not isinstance(aad, AssociatedData):
        raise TypeError(f"aad must be an AssociatedData, not {type(aad).__name__}")
    return aad.encode()


@dataclass(frozen=True)
class Header:
    """The clear-text start of every ciphertext object. Holds no key material."""

    chunk_size: int
    nonce_prefix: bytes

    def encode(self) -> bytes:
        return _HEADER.pack(MAGIC, FORMAT_VERSION, self.chunk_size, self.nonce_prefix)

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        if len(raw) < HEADER_SIZE:
            raise IntegrityError(f"ciphertext truncated: header has {len(raw)} of {HEADER_SIZE} bytes")
        magic, version, chunk_size, prefix = _HEADER.unpack(raw[:HEADER_SIZE])
        if magic != MAGIC:
            raise IntegrityError("bad header: not an imaging-lifecycle ciphertext (magic mismatch)")
        if version != FORMAT_VERSION:
            raise IntegrityError(f"bad header: unsupported format version {version}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityError("bad header: chunk size out of range")
        return cls(chunk_size, prefix)


def ciphertext_length(plaintext_length: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Exact ciphertext size for a plaintext size, so uploads can stream with a known length.

    Empty plaintext still yields one (empty, final) chunk: its tag is what
    proves the object is complete.
    """
    _check_chunk_size(chunk_size)
    if isinstance(plaintext_length, bool) or not isinstance(plaintext_length, int) or plaintext_length < 0:
        raise ValueError("plaintext_length must be a non-negative int")
    chunks = max(1, -(-plaintext_length // chunk_size))
    return HEADER_SIZE + plaintext_length + chunks * TAG_SIZE


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def _check_sha256_hex(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError(f"{what} must be a 64-character hex SHA-256")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} must be a 64-character hex SHA-256") from None
    return value.lower()


def verify_plaintext(expected_sha256: str, actual_sha256: str) -> None:
    """Raise ``IntegrityError`` unless the two hex SHA-256 digests are equal.

    ``expected_sha256`` is the catalog's value; the message carries neither
    digest (a content hash can link copies of a patient's file).
    """
    expected = _check_sha256_hex(expected_sha256, "expected_sha256")
    actual = _check_sha256_hex(actual_sha256, "actual_sha256")
    if not hmac.compare_digest(expected, actual):
        raise IntegrityError("plaintext SHA-256 does not match the expected (catalog) value")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (never whole into memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class EncryptionResult:
    """What a finished encryption reports; everything the catalog records about the bytes."""

    plaintext_sha256: str
    ciphertext_sha256: str
    plaintext_size: int
    ciphertext_size: int


class _Source:
    """Fills caller buffers from a binary source, through ``readinto`` when it has one.

    Reading into reused buffers instead of allocating a fresh ``bytes`` per
    chunk roughly halves the cost of a stream: large fresh allocations cost
    page faults, copies into warm buffers do not.
    """

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._readinto = getattr(src, "readinto", None)

    def fill(self, view: memoryview) -> int:
        """Fill ``view`` completely unless EOF comes first; returns the byte count."""
        got, total = 0, len(view)
        while got < total:
            n = None
            if self._readinto is not None:
                try:
                    n = self._readinto(view[got:])
                except (NotImplementedError, io.UnsupportedOperation):
                    self._readinto = None  # a read()-only stream; fall back below
            if self._readinto is None:
                data = self._src.read(total - got)
                n = None if data is None else len(data)
                if n:
                    view[got:got + n] = data
            if n is None:
                raise OSError("source is in non-blocking mode and has no data")
            if n == 0:
                break
            got += n
        return got


class _ChunkReader(io.RawIOBase):
    """A read-only file-like over a generator of byte chunks (views into reused buffers).

    A view is valid only until the next chunk is produced, so ``read`` copies
    out of it and ``readinto`` copies straight into the caller's buffer.
    Once the generator fails, every later read re-raises the same error, so a
    caller that swallows one exception can never mistake the stop for EOF.
    Bytes gathered before a failure are returned first; the error comes with
    the next read.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: Iterator[memoryview | bytes] = iter(())
        self._buf: memoryview | bytes = b""
        self._pos = 0
        self._error: BaseException | None = None
        self._exhausted = False

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bool:
        if self._error is not None:
            raise self._error
        if self._exhausted:
            return False
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._exhausted = True
            return False
        except BaseException as exc:
            self._error = exc
            raise
        self._buf, self._pos = chunk, 0
        return True

    def _pieces(self, size: int) -> Iterator[memoryview | bytes]:
        """Up to ``size`` bytes (all if negative) as views; each valid until the next is taken."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._error is not None:
            raise self._error
        need = size if size >= 0 else -1
        first = True
        while need:
            if self._pos >= len(self._buf):
                self._buf, self._pos = b"", 0
                try:
                    if not self._next_chunk():
                        return
                except Exception:
                    if size >= 0 and not first:
                        return  # a bounded read hands out what verified; the error comes next read
                    raise
                continue
            end = len(self._buf) if need < 0 else min(len(self._buf), self._pos + need)
            piece = self._buf[self._pos:end]
            if need > 0:
                need -= end - self._pos
            self._pos = end
            first = False
            yield piece

    def read(self, size: int | None = -1) -> bytes:
        parts = [bytes(p) for p in self._pieces(-1 if size is None else size)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b) -> int:  # noqa: ANN001 - any writable buffer
        out = memoryview(b).cast("B")
        n = 0
        for piece in self._pieces(len(out)):
            out[n:n + len(piece)] = piece
            n += len(piece)
        return n

    def copy_to(self, dst) -> None:  # noqa: ANN001 - anything with write()
        """Write the rest of the stream to ``dst`` with no intermediate copies.

        ``dst.write`` receives views into reused buffers; like any
        ``RawIOBase.write`` it must not keep them after returning.
        """
        for piece in self._pieces(-1):
            view = memoryview(piece)
            while view:
                written = dst.write(view)
                if written is None:  # some writers return nothing: they took it all
                    break
                view = view[written:]


class EncryptingReader(_ChunkReader):
    """File-like whose ``read(n)`` yields the ciphertext of ``src``: hand it to an S3 upload.

    ``src`` is read one chunk ahead (to know which chunk is the last) into
    two reused buffers, so memory stays at about three chunks whatever the
    size. Pass ``expected_size`` (the plaintext size) to get ``.length`` for
    the upload and to fail, rather than upload a wrong object, if the source
    turns out longer or shorter.

    ``plaintext_sha256``, ``ciphertext_sha256``, ``plaintext_size`` and
    ``ciphertext_size`` are available once the last byte has been read; before
    that they raise, so a partial hash can never be recorded. ``src`` is not
    closed.
    """

    def __init__(
        self,
        src: BinaryIO,
        dek: bytes,
        aad: AssociatedData,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        expected_size: int | None = None,
    ) -> None:
        super().__init__()
        self._aead = AESGCM(_check_key(dek, "DEK"))
        self._chunk_size = _check_chunk_size(chunk_size)
        self.length = None if expected_size is None else ciphertext_length(expected_size, chunk_size)
        self._expected_size = expected_size
        header = Header(chunk_size, secrets.token_bytes(NONCE_PREFIX_SIZE))
        self._header = header
        self._ad = header.encode() + _check_aad(aad)
        self._src = _Source(src)
        self._pt_hash = hashlib.sha256()
        self._ct_hash = hashlib.sha256()
        self._pt_size = 0
        self._ct_size = 0
        self._result: EncryptionResult | None = None
        self._chunks = self._generate()

    def _generate(self) -> Iterator[memoryview | bytes]:
        cs, expected, prefix = self._chunk_size, self._expected_size, self._header.nonce_prefix
        header = self._header.encode()
        self._ct_hash.update(header)
        self._ct_size += len(header)
        yield header
        # A known small object needs buffers only its size (+1 byte to notice a
        # longer source): large fresh buffers per object cost page faults.
        size = cs if expected is None else min(cs, expected + 1)
        inputs = [memoryview(bytearray(size)), None]
        out = memoryview(bytearray(size + TAG_SIZE))
        cur = 0
        n = self._src.fill(inputs[cur])
        counter = 0
        while True:
            if n < cs:
                n_next, last = 0, True
            else:
                if inputs[1 - cur] is None:
                    inputs[1 - cur] = memoryview(bytearray(cs))
                n_next = self._src.fill(inputs[1 - cur])
                last = n_next == 0
            pt = inputs[cur][:n]
            self._pt_hash.update(pt)
            self._pt_size += n
            if expected is not None and (self._pt_size > expected or (last and self._pt_size != expected)):
                raise IntegrityError(
                    f"source size changed: expected {expected} plaintext bytes, "
                    f"got {'more' if self._pt_size > expected else self._pt_size}"
                )
            if counter >= _MAX_CHUNKS:
                raise ValueError("object too large for one stream (2^32 chunks)")
            ct = out[:n + TAG_SIZE]
            self._aead.encrypt_into(_nonce(prefix, counter, last), pt, self._ad, ct)
            self._ct_hash.update(ct)
            self._ct_size += len(ct)
            if last:
                self._result = EncryptionResult(
                    self._pt_hash.hexdigest(), self._ct_hash.hexdigest(), self._pt_size, self._ct_size
                )
                yield ct
                return
            yield ct
            counter += 1
            cur, n = 1 - cur, n_next

    @property
    def result(self) -> EncryptionResult:
        if self._result is None:
            raise RuntimeError("encryption not finished: read the stream to the end first")
        return self._result

    @property
    def plaintext_sha256(self) -> str:
        return self.result.plaintext_sha256

    @property
    def ciphertext_sha256(self) -> str:
        return self.result.ciphertext_sha256

    @property
    def plaintext_size(self) -> int:
        return self.result.plaintext_size

    @property
    def ciphertext_size(self) -> int:
        return self.result.ciphertext_size


class DecryptingReader(_ChunkReader):
    """File-like whose ``read(n)`` yields the plaintext of ciphertext ``src``.

    Only chunks whose GCM tag verified are ever returned. If
    ``expected_sha256`` is given (the catalog's value), the plaintext hash is
    checked *before* the final chunk is released, so a reader that reaches EOF
    has received exactly the expected bytes. Any failure raises
    ``IntegrityError``; what was read before it is an authenticated prefix and
    must be discarded by the caller (``decrypt_to_path`` does that).
    """

    def __init__(
        self,
        src: BinaryIO,
        dek: bytes,
        aad: AssociatedData,
        expected_sha256: str | None = None,
        length_hint: int | None = None,
    ) -> None:
        super().__init__()
        self._aead = AESGCM(_check_key(dek, "DEK"))
        self._aad = _check_aad(aad)
        self._length_hint = length_hint  # the ciphertext size if known; only sizes buffers
        self._expected = None if expected_sha256 is None else _check_sha256_hex(expected_sha256, "expected_sha256")
        self._src = _Source(src)
        self._pt_hash = hashlib.sha256()
        self._pt_size = 0
        self._done = False
        self._chunks = self._generate()

    def _generate(self) -> Iterator[memoryview]:
        raw = bytearray(HEADER_SIZE)
        header = Header.parse(bytes(raw[: self._src.fill(memoryview(raw))]))
        ad = bytes(raw) + self._aad
        block_len = header.chunk_size + TAG_SIZE
        cap = block_len  # buffer capacity; smaller when the caller says the object is small
        if isinstance(self._length_hint, int) and not isinstance(self._length_hint, bool):
            # +1: a stream longer than announced must fill the buffer, so it is noticed
            cap = max(TAG_SIZE, min(block_len, self._length_hint - HEADER_SIZE + 1))
        # one spare byte: the look-ahead that tells whether a full block is the last
        block = memoryview(bytearray(cap + 1))
        out_buf = bytearray(cap - TAG_SIZE)
        out = memoryview(out_buf)
        carry = 0
        counter = 0
        while True:
            got = carry + self._src.fill(block[carry:cap])
            if got == cap < block_len:  # longer than the hint said: continue at full size
                grown = memoryview(bytearray(block_len + 1))
                grown[:got] = block[:got]
                block, cap = grown, block_len
                out_buf = bytearray(header.chunk_size)
                out = memoryview(out_buf)
                got += self._src.fill(block[got:block_len])
            if got < block_len:
                last, carry = True, 0
                if got < TAG_SIZE:
                    raise IntegrityError(f"ciphertext truncated: chunk {counter} is incomplete")
            else:
                carry = self._src.fill(block[block_len:block_len + 1])
                last = carry == 0
            pt = out[:got - TAG_SIZE]
            try:
                self._aead.decrypt_into(_nonce(header.nonce_prefix, counter, last), block[:got], ad, pt)
            except InvalidTag:
                out_buf[:] = bytes(len(out_buf))  # decrypt_into may have written unverified plaintext
                raise IntegrityError(
                    f"chunk {counter} failed authentication: data tampered, reordered or truncated, "
                    "or wrong key or associated data"
                ) from None
            self._pt_hash.update(pt)
            self._pt_size += len(pt)
            if last:
                if self._expected is not None:
                    verify_plaintext(self._expected, self._pt_hash.hexdigest())
                self._done = True
                if len(pt):
                    yield pt
                return
            yield pt
            if carry:
                block[0] = block[block_len]
            counter += 1
            if counter >= _MAX_CHUNKS:
                raise IntegrityError("ciphertext has more chunks than the format allows")

    @property
    def plaintext_sha256(self) -> str:
        if not self._done:
            raise RuntimeError("decryption not finished: read the stream to the end first")
        return self._pt_hash.hexdigest()

    @property
    def plaintext_size(self) -> int:
        if not self._done:
            raise RuntimeError("decryption not finished: read the stream to the end first")
        return self._pt_size


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    dek: bytes,
    aad: AssociatedData,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    expected_size: int | None = None,
) -> EncryptionResult:
    """Encrypt ``src`` into ``dst`` (anything with ``write``) with bounded memory."""
    reader = EncryptingReader(src, dek, aad, chunk_size, expected_size)
    reader.copy_to(dst)
    return reader.result


def decrypt_stream(
    src: BinaryIO, dst: BinaryIO, dek: bytes, aad: AssociatedData, expected_sha256: str | None = None
) -> str:
    """Decrypt ``src`` into ``dst``; returns the plaintext hex SHA-256.

    On ``IntegrityError`` ``dst`` may already hold an authenticated prefix:
    discard it. Use ``decrypt_to_path`` when the target is a file.
    """
    reader = DecryptingReader(src, dek, aad, expected_sha256)
    reader.copy_to(dst)
    return reader.plaintext_sha256


def decrypt_to_path(
    src: BinaryIO,
    path: str | os.PathLike,
    dek: bytes,
    aad: AssociatedData,
    expected_sha256: str | None = None,
) -> str:
    """Decrypt into a new 0600 file at ``path`` that appears only if everything verified.

    Writes a temporary file beside ``path`` and renames it into place after
    the last tag (and ``expected_sha256``) checked out; on any failure the
    temporary file is removed and nothing is left at ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = decrypt_stream(src, out, dek, aad, expected_sha256)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def encrypt_bytes(data: bytes, dek: bytes, aad: AssociatedData, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """Whole-buffer convenience for small objects; same format as the streaming API."""
    return EncryptingReader(io.BytesIO(data), dek, aad, chunk_size, expected_size=len(data)).read()


def decrypt_bytes(blob: bytes, dek: bytes, aad: AssociatedData, expected_sha256: str | None = None) -> bytes:
    """Whole-buffer convenience for small objects; verifies exactly like ``DecryptingReader``."""
    return DecryptingReader(io.BytesIO(blob), dek, aad, expected_sha256, length_hint=len(blob)).read()


def wrap_key(kek: bytes, dek: bytes) -> bytes:
    """Wrap ``dek`` under ``kek`` with AES key wrap (RFC 3394); deterministic, 8 bytes longer."""
    kek = _check_key(kek, "KEK")
    if not isinstance(dek, (bytes, bytearray, memoryview)) or len(dek) < 16 or len(dek) % 8:
        raise ValueError("key to wrap must be bytes, at least 16 long and a multiple of 8")
    return keywrap.aes_key_wrap(kek, bytes(dek))


def unwrap_key(kek: bytes, wrapped: bytes) -> bytes:
    """Inverse of ``wrap_key``; ``IntegrityError`` if the KEK is wrong or ``wrapped`` was altered."""
    kek = _check_key(kek, "KEK")
    if not isinstance(wrapped, (bytes, bytearray, memoryview)) or len(wrapped) < 24 or len(wrapped) % 8:
        raise IntegrityError("wrapped key is malformed (wrong length)")
    try:
        return keywrap.aes_key_unwrap(kek, bytes(wrapped))
    except keywrap.InvalidUnwrap:
        raise IntegrityError("key unwrap failed: wrong KEK or corrupted wrapped key") from None


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """AES-256-GCM for small secrets at rest: ``version(1) || nonce(12) || ciphertext || tag``.

    The nonce is random, which is safe for far more than the number of times
    any one key here seals something (the birthday bound is ~2^32 messages).
    """
    aead = AESGCM(_check_key(key, "sealing key"))
    nonce = secrets.token_bytes(_SEAL_NONCE)
    return _SEAL_VERSION + nonce + aead.encrypt(nonce, bytes(plaintext), _SEAL_VERSION + bytes(aad))


def open_sealed(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Inverse of ``seal``; ``IntegrityError`` on a wrong key, wrong ``aad`` or any altered byte."""
    aead = AESGCM(_check_key(key, "sealing key"))
    blob = bytes(blob)
    if len(blob) < 1 + _SEAL_NONCE + TAG_SIZE:
        raise IntegrityError("sealed blob truncated")
    if blob[:1] != _SEAL_VERSION:
        raise IntegrityError("sealed blob has an unsupported format version")
    try:
        return aead.decrypt(blob[1:1 + _SEAL_NONCE], blob[1 + _SEAL_NONCE:], _SEAL_VERSION + bytes(aad))
    except InvalidTag:
        raise IntegrityError("sealed blob failed authentication: wrong key, wrong context or altered data") from None


# ---------------------------------------------------------------------------
# Signatures (Ed25519): audit anchors. The private key is 32 random bytes,
# kept as a secret apart from the catalog; the public key is what anyone
# verifies with, offline.
# ---------------------------------------------------------------------------

SIGNING_KEY_SIZE = 32


def signing_public_key(private: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of ``private`` (32 bytes)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(private: bytes, message: bytes) -> bytes:
    """An Ed25519 signature (64 bytes) of ``message``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def signature_valid(public: bytes, message: bytes, signature: bytes) -> bool:
    """Does ``signature`` sign ``message`` under the raw Ed25519 ``public`` key? Never raises on bad input."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# ---------------------------------------------------------------------------
# TLS identities (DICOM TLS): a self-signed certificate made on first start.
# ---------------------------------------------------------------------------


def self_signed_certificate(common_name: str, *, days: int = 825) -> tuple[bytes, bytes]:
    """``(certificate PEM, private key PEM)``: RSA 2048, SHA-256, valid ``days``, for ``common_name``."""
    import datetime as _dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name), x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# ---------------------------------------------------------------------------
# A private certificate authority for the embedded object stores' mutual TLS.
# ---------------------------------------------------------------------------


def _ec_key_pem(key) -> bytes:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate_authority(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """``(CA certificate PEM, CA key PEM)``: ECDSA P-256, may sign leaf certificates only."""
    import datetime as _dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _ec_key_pem(key)


def issue_certificate(ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, *,
                      hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825) -> tuple[bytes, bytes]:
    """``(certificate PEM, key PEM)`` signed by the CA, for server and client use, valid for ``hosts``."""
    import datetime as _dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _ec_key_pem(key)


def certificate_days_left(cert_pem: bytes) -> float:
    """Days until the certificate's ``notAfter`` (negative once expired)."""
    import datetime as _dt

    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    return (cert.not_valid_after_utc - _dt.datetime.now(_dt.timezone.utc)).total_seconds() / 86400
