"""Key-encryption keys (KEKs): kept apart from the data, per scope, versioned, destroyable.

A scope is whatever a set of data keys should live and die with ("study:<keyed
digest>", "grant:<uuid>"); this module treats scope ids as opaque strings.
Each scope has one KEK lineage (``kek_id``) with numbered versions. Data keys
(DEKs) are wrapped under the current version; the wrapped DEK and the
``KekRef`` that wrapped it are stored in the catalog. Destroying a KEK (all
versions) makes every object of its scope unreadable: crypto-shredding.

Interface: KEK bytes never leave the store
------------------------------------------
``KeyStore`` offers ``wrap``/``unwrap``/``rewrap`` rather than ``get(kek) ->
bytes``. That is what lets a remote KMS or HSM implement it unchanged, and it
keeps the one local implementation the only code that ever holds a KEK:

* HashiCorp Vault Transit: one transit key per ``kek_id``. ``create_kek`` ->
  ``POST transit/keys/<kek_id>`` (plus a scope -> kek_id record in Vault KV or
  the catalog); ``rotate`` -> ``POST transit/keys/<kek_id>/rotate``;
  ``wrap`` -> ``transit/encrypt/<kek_id>`` with ``key_version``;
  ``unwrap`` -> ``transit/decrypt``; ``rewrap`` -> ``transit/rewrap`` (the DEK
  never leaves Vault); ``destroy(kek_id, v)`` -> raise
  ``min_decryption_version`` past ``v`` and ``transit/keys/<kek_id>/trim``;
  ``destroy(kek_id)`` -> ``deletion_allowed=true`` then ``DELETE``;
  ``versions`` -> the key's ``keys`` map.
* A cloud KMS (AWS KMS, GCP KMS, Azure Key Vault): ``wrap``/``unwrap`` are
  Encrypt/Decrypt with the DEK as plaintext and ``kek_id`` as the key; GCP
  and Azure have explicit versions, AWS rotates behind one key id and
  destruction is ``ScheduleKeyDeletion`` (7-30 days delay: a retention policy
  must allow for it). Per-study cloud keys cost money each, so a large site
  would keep this module's per-scope KEKs and replace only the master key by
  a KMS key (the sealed file then holds KEKs wrapped by the KMS).

The embedded default: ``LocalKeyStore``
---------------------------------------
One file holding every KEK, the whole content sealed (AES-256-GCM) under a
master key from ``IL_MASTER_KEY`` (base64 of 32 bytes) or the 0600 secret file
``<state>/secrets/master.key``. Writes go to a temporary file, fsync, rename,
fsync of the directory, all under ``fcntl.flock`` on a lock file, because the
LocalExecutor runs several worker processes that create KEKs at once. Every
mutation re-reads the file under the lock, so no update is lost. Reads take
no file lock (rename is atomic) and reuse the decrypted state while the
file's identity (inode, size, mtime and a random write id in its header) is
unchanged, so wrapping and rewrapping cost no file parsing.
``with store.transaction():`` groups many mutations into one write.

Destroyed key material is removed from the file when the file is rewritten.
An older copy of the file (a backup, a DR export, blocks the filesystem has
not reused yet) would still hold destroyed KEKs sealed under the same master
key, so the master key has **generations**: ``reseal()`` (the sweeper calls
it after every destruction batch) seals the store under a new generation
(``secrets/master-<n>.key``; generation 1 is ``secrets/master.key``) and then
destroys every older generation's file. A copy taken before the destruction
can then not be opened with the secrets that exist afterwards (NIST SP 800-88
asks that every copy of a key be sanitized). What stays the hospital's job:
their own filesystem backups of ``.state/secrets``, which hold the old
generations until they expire. A master key injected through ``IL_MASTER_KEY``
has one generation only: ``reseal`` refuses, and a KMS must do the rotation.
Python cannot wipe ``bytes`` from memory.

Shared by several hosts: the blob in the catalog, the master key in a KMS
-------------------------------------------------------------------------
Where the sealed blob lives is separate from the logic above: ``SealedFile``
(the file, its flock, fsyncs, mode checks and signature cache) or
``CatalogSealedState`` (one row of the catalog's ``keystore_state`` table, with
the same blob format and the same transaction semantics: a lock across hosts,
a re-read inside it, one write at the end). With ``IL_KMIP_*`` set,
``open_default_keystore`` takes the catalog row and ``kms.KmipMasterKeys``:
generations are KMIP keys, and ``reseal`` destroys the old ones *in the KMS*,
so a database backup holding an older row opens on no host afterwards.

Rotation, resumable and idempotent per DEK
------------------------------------------
1. ``new = store.rotate(scope)`` once; the DAG records ``new`` in its run
   state (rotate is not idempotent, a rerun must reuse the recorded ref).
   From then on ``wrap`` accepts only ``new``: no fresh DEK is wrapped under a
   retiring version.
2. For each catalog row ``(wrapped, old_ref)`` with ``old_ref.kek_id ==
   new.kek_id`` and ``old_ref.version < new.version``:
   ``w2 = store.rewrap(wrapped, old_ref, new)``, then in the catalog
   ``UPDATE ... SET wrapped = w2, version = new.version WHERE id = ? AND
   version = old_ref.version`` (compare-and-set). Data is never touched: the
   ciphertext's associated data binds the DEK's id, not the KEK version.
   A crash anywhere leaves each row either old (still readable, the old
   version is alive) or new; rerunning picks up the old ones. AES key wrap is
   deterministic, so rewrapping the same row twice yields the same bytes.
3. Only when no row refers to the old version any more (checked again after
   the longest in-flight ingest could have committed), ``destroy(kek_id,
   old_version)``.
``rewrap`` only reads the key store, so 100k rewraps never rewrite the file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable

import sqlalchemy as sa

from imaging_lifecycle import crypto
from imaging_lifecycle.crypto import KeyUnavailable

# The error types live in ``kms`` (below this module: its master keys raise them); these are the same classes.
from imaging_lifecycle.kms import KeyDestroyed, KeyNotFound, KeyStoreError
from imaging_lifecycle.settings import Settings

__all__ = [
    "KekRef",
    "KeyStore",
    "LocalKeyStore",
    "SealedKeyStore",
    "SealedFile",
    "CatalogSealedState",
    "KeyStoreError",
    "KeyStoreUnreadable",
    "KeyUnavailable",
    "KeyNotFound",
    "KeyDestroyed",
    "StaleKeyVersion",
    "load_master_key",
    "master_keys",
    "MasterKeys",
    "MasterKeyFiles",
    "FixedMasterKey",
    "open_default_keystore",
]

MASTER_KEY_ENV = "IL_MASTER_KEY"
KEYSTORE_PATH_ENV = "IL_KEYSTORE_PATH"
#: File layout: MAGIC || master generation (4 bytes, big endian) || write id (16 random bytes)
#: || crypto.seal(master key of that generation, json, aad=everything before it).
FILE_MAGIC = b"\x89ILKEYS\x02"
#: The first layout (no generation field: generation 1), still read.
FILE_MAGIC_V1 = b"\x89ILKEYS\x01"
_GEN_SIZE = 4
_WRITE_ID_SIZE = 16
_PREFIX_SIZE = len(FILE_MAGIC) + _GEN_SIZE + _WRITE_ID_SIZE
_PREFIX_SIZE_V1 = len(FILE_MAGIC_V1) + _WRITE_ID_SIZE
_STATE_FORMAT = 1
_MAX_SCOPE_ID = 512


class KeyStoreUnreadable(KeyStoreError):
    """The key store file cannot be opened: wrong master key, corruption, or not a key store."""


class StaleKeyVersion(KeyUnavailable):
    """``wrap`` was given a version that is no longer current; fetch ``current(scope)`` again."""


@dataclass(frozen=True, order=True)
class KekRef:
    """Which KEK version wrapped a DEK; the catalog stores it beside the wrapped DEK."""

    kek_id: str
    version: int

    def __str__(self) -> str:
        return f"{self.kek_id}@v{self.version}"

    @classmethod
    def parse(cls, text: str) -> KekRef:
        """Inverse of ``str(ref)``, for a single catalog column."""
        kek_id, sep, version = text.rpartition("@v") if isinstance(text, str) else ("", "", "")
        if not sep or not kek_id or not version.isdigit():
            raise ValueError("not a KEK reference (expected '<kek_id>@v<version>')")
        return cls(kek_id, int(version))


def batched(ks):  # noqa: ANN001, ANN201
    """One key-store write for a group of changes, where the key store groups them (``LocalKeyStore``
    rewrites its whole sealed state per write); else each change on its own. Not across threads."""
    return ks.transaction() if hasattr(ks, "transaction") else contextlib.nullcontext()


@runtime_checkable
class KeyStore(Protocol):
    """What the pipeline needs from a key store; implementable by a remote KMS."""

    def create_kek(self, scope_id: str) -> KekRef:
        """The scope's current KEK, created on first call (idempotent)."""

    def current(self, scope_id: str) -> KekRef | None:
        """The scope's current KEK version, or None if it has none (or was shredded)."""

    def rotate(self, scope_id: str) -> KekRef:
        """Make a new version current; older versions stay usable until destroyed."""

    def destroy(self, kek_id: str, version: int | None = None) -> None:
        """Destroy one version (not the current one alone) or, with None, all of them."""

    def versions(self, kek_id: str) -> list[KekRef]:
        """Every version ever made, destroyed ones included, oldest first."""

    def is_destroyed(self, kek_id: str, version: int | None = None) -> bool:
        """Whether that version (with None: every version) is destroyed."""

    def wrap(self, ref: KekRef, dek: bytes) -> bytes:
        """Wrap a DEK under ``ref``, which must be its KEK's current version."""

    def unwrap(self, ref: KekRef, wrapped: bytes) -> bytes:
        """The DEK inside ``wrapped``; ``KeyDestroyed`` if ``ref`` was destroyed."""

    def rewrap(self, wrapped: bytes, old_ref: KekRef, new_ref: KekRef) -> bytes:
        """Move a wrapped DEK from ``old_ref`` to ``new_ref`` (current) without exposing it."""


def _check_scope(scope_id: object) -> str:
    if not isinstance(scope_id, str) or not scope_id or len(scope_id) > _MAX_SCOPE_ID:
        raise ValueError(f"scope_id must be a non-empty str of at most {_MAX_SCOPE_ID} characters")
    return scope_id


def _check_ref(ref: object) -> KekRef:
    if not isinstance(ref, KekRef):
        raise TypeError(f"expected a KekRef, not {type(ref).__name__}")
    return ref


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _empty_state() -> dict:
    return {"format": _STATE_FORMAT, "scopes": {}, "keks": {}}


def _prefix(blob: bytes) -> tuple[bytes, int] | None:
    """(prefix, master generation) of a key store file's bytes, or None if it is not one."""
    if blob[: len(FILE_MAGIC)] == FILE_MAGIC and len(blob) >= _PREFIX_SIZE:
        return blob[:_PREFIX_SIZE], int.from_bytes(blob[len(FILE_MAGIC):len(FILE_MAGIC) + _GEN_SIZE], "big")
    if blob[: len(FILE_MAGIC_V1)] == FILE_MAGIC_V1 and len(blob) >= _PREFIX_SIZE_V1:
        return blob[:_PREFIX_SIZE_V1], 1
    return None


def _decode_file(blob: bytes, masters: MasterKeys, path: Path | str) -> tuple[int, dict]:
    """(master generation, state) of a key store file's bytes."""
    found = _prefix(blob)
    if found is None:
        raise KeyStoreUnreadable(f"{path} is not an imaging-lifecycle key store (bad magic)")
    prefix, generation = found
    try:
        master = masters.get(generation)
    except KeyUnavailable:
        raise KeyStoreUnreadable(
            f"cannot open key store {path}: it is sealed under master-key generation {generation}, "
            "which was destroyed (a copy from before a re-seal) or is not here"
        ) from None
    try:
        raw = crypto.open_sealed(master, blob[len(prefix):], aad=prefix)
    except crypto.IntegrityError:
        raise KeyStoreUnreadable(
            f"cannot open key store {path}: wrong master key ({MASTER_KEY_ENV} or secrets/master*.key) "
            "or the file is corrupted"
        ) from None
    state = json.loads(raw)
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise KeyStoreUnreadable(f"key store {path} has an unsupported format")
    return generation, state


def _read_file_state(path: Path, master_key: bytes | MasterKeys) -> dict:
    """The decrypted content of a key store file (for tests and offline inspection)."""
    return _decode_file(Path(path).read_bytes(), _masters(master_key), Path(path))[1]


class MasterKeys(Protocol):
    """The master key's generations: the key store is sealed under the current one."""

    def current(self) -> tuple[int, bytes]:
        """(generation, key) to seal a new file under."""

    def get(self, generation: int) -> bytes:
        """That generation's key; ``KeyDestroyed`` once it was retired, ``KeyNotFound`` if it never existed."""

    def advance(self) -> tuple[int, bytes]:
        """Make and durably store the next generation (not yet used); ``KeyStoreError`` if it cannot rotate."""

    def retire(self, below: int) -> int:
        """Destroy every generation older than ``below``; returns how many were destroyed."""


class FixedMasterKey:
    """One injected master key (``IL_MASTER_KEY``, or a test's bytes): generation 1, never rotated here."""

    def __init__(self, key: bytes) -> None:
        self._key = crypto._check_key(key, "master key")

    def current(self) -> tuple[int, bytes]:
        return 1, self._key

    def get(self, generation: int) -> bytes:
        if generation != 1:
            raise KeyNotFound(f"master-key generation {generation} is not the injected key")
        return self._key

    def advance(self) -> tuple[int, bytes]:
        raise KeyStoreError(
            f"the master key is injected ({MASTER_KEY_ENV}): re-seal under a new generation in your KMS"
        )

    def retire(self, below: int) -> int:
        return 0


class MasterKeyFiles:
    """Generations as 0600 files: ``<name>.key`` is generation 1, ``<name>-<n>.key`` generation n.

    Each key store has its own (``name`` is ``master`` for the default key store, else
    ``<key store file name>.master`` beside it), so re-sealing one never retires another's key.
    """

    def __init__(self, directory: Path, name: str = "master") -> None:
        self.directory = Path(directory)
        self.name = name

    def _path(self, generation: int) -> Path:
        return self.directory / (f"{self.name}.key" if generation == 1 else f"{self.name}-{generation}.key")

    def generations(self) -> list[int]:
        gens = [1] if self._path(1).exists() else []
        for p in self.directory.glob(f"{self.name}-*.key"):
            tail = p.name[len(self.name) + 1:-len(".key")]
            if tail.isdigit():
                gens.append(int(tail))
        return sorted(gens)

    def _read(self, generation: int) -> bytes:
        path = self._path(generation)
        st = path.stat()
        if st.st_mode & 0o077:
            raise KeyStoreError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); expected 0600")
        data = path.read_bytes()
        if len(data) != crypto.KEY_SIZE:
            raise KeyStoreError(f"{path} holds {len(data)} bytes, expected {crypto.KEY_SIZE}")
        return data

    def current(self) -> tuple[int, bytes]:
        gens = self.generations()
        if not gens:  # first use: generation 1 (if another process made it first, theirs wins)
            from imaging_lifecycle.secretfiles import write_private_file

            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private_file(self._path(1), crypto.generate_key())
            gens = [1]
        return gens[-1], self._read(gens[-1])

    def get(self, generation: int) -> bytes:
        try:
            return self._read(generation)
        except FileNotFoundError:
            gens = self.generations()
            if gens and generation < gens[-1]:
                raise KeyDestroyed(f"master-key generation {generation} was destroyed") from None
            raise KeyNotFound(f"no master-key generation {generation}") from None

    def advance(self) -> tuple[int, bytes]:
        gens = self.generations() or [self.current()[0]]
        generation = gens[-1] + 1
        key = crypto.generate_key()
        _write_new_private(self._path(generation), key)
        return generation, self._read(generation)

    def retire(self, below: int) -> int:
        n = 0
        for generation in self.generations():
            if generation < below:
                _shred_file(self._path(generation))
                n += 1
        # A temporary file a crashed write of an old generation's key left behind (write_private_file's).
        for stale in self.directory.glob(f"{self.name}*.key.*.tmp"):
            tail = stale.name[len(self.name):].split(".key.", 1)[0]
            generation = 1 if tail == "" else int(tail[1:]) if tail[1:].isdigit() else None
            if generation is not None and generation < below:
                _shred_file(stale)
        return n


def _write_new_private(path: Path, data: bytes) -> None:
    from imaging_lifecycle.secretfiles import write_private_file

    if path.exists():
        raise KeyStoreError(f"{path} exists already; refusing to overwrite a master key")
    write_private_file(path, data)


def _shred_file(path: Path) -> None:
    """Overwrite, fsync and unlink (on copy-on-write or journalling media the overwrite is best effort)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, os.urandom(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _masters(master: bytes | MasterKeys) -> MasterKeys:
    return FixedMasterKey(master) if isinstance(master, (bytes, bytearray)) else master


# -- where the sealed blob lives ---------------------------------------------------------------------
#
# The key store's logic (below) needs four things of the place its sealed blob lives: read the committed
# blob cheaply when unchanged (a signature), an exclusive lock across every process and host that
# writes it, one write at the end of a locked transaction, and the removal of leftovers after a re-seal.


class SealedFile:
    """The embedded default: one 0600 file, ``flock`` on a lock file beside it, atomic rename, fsyncs.

    The signature of a read is the file's identity (device, inode, size, mtime) plus its header
    (which holds a random write id), so an unchanged file costs one ``fstat`` and a 36-byte read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @property
    def label(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"SealedFile({str(self.path)!r})"

    def read(self, known: object) -> tuple[object, bytes | None] | None:
        """None if there is no key store; ``(sig, None)`` if its signature is ``known``; else ``(sig, blob)``."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return None
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_mode & 0o077:
                raise KeyStoreError(
                    f"key store {self.path} is accessible by others (mode {st.st_mode & 0o777:o}); expected 0600"
                )
            prefix = fh.read(_PREFIX_SIZE)
            sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, prefix)
            if sig == known:
                return sig, None
            return sig, prefix + fh.read()

    def exists(self) -> bool:
        return self.path.exists()

    def blob(self) -> bytes:
        return self.path.read_bytes() if self.path.exists() else b""

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock_fd)  # releases the flock

    def write(self, blob: bytes) -> object:
        """Put ``blob`` in place: temporary file, fsync, rename, fsync of the folder; returns its signature."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        st = os.stat(self.path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, blob[:_PREFIX_SIZE]

    def sweep_leftovers(self) -> None:
        """Shred temporary files a crashed write left (they hold the content under an old generation)."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            _shred_file(stale)


#: The shape of the catalog's ``keystore_state`` table (``catalog/schema.py`` defines it and the catalog's
#: ``ensure_schema`` creates it). Repeated here because the key store sits below the catalog layer and
#: may not import it; ``tests/test_kms.py`` checks the two definitions agree.
_STATE_TABLE_NAME = "keystore_state"
_state_metadata = sa.MetaData()
_state_table = sa.Table(
    _STATE_TABLE_NAME,
    _state_metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("blob", sa.LargeBinary, nullable=False),
    sa.Column("write_id", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),  # naive UTC, as the catalog's UTCDateTime stores it
)
_KS_WRITE = "il_keystore_write"
#: PostgreSQL advisory lock keys: the catalog's schema creator (``catalog/db.py``), and ours per row.
_PG_SCHEMA_LOCK = 727001
_PG_ROW_LOCK = 727002
_SQLITE_BUSY_TIMEOUT = 60.0


def _write_id(blob: bytes) -> str:
    """The random write id of a sealed blob's header, as hex (what the ``write_id`` column holds)."""
    if blob[: len(FILE_MAGIC)] == FILE_MAGIC and len(blob) >= _PREFIX_SIZE:
        return blob[len(FILE_MAGIC) + _GEN_SIZE:_PREFIX_SIZE].hex()
    if blob[: len(FILE_MAGIC_V1)] == FILE_MAGIC_V1 and len(blob) >= _PREFIX_SIZE_V1:
        return blob[len(FILE_MAGIC_V1):_PREFIX_SIZE_V1].hex()
    import hashlib

    return hashlib.sha256(blob).hexdigest()[:32]


def _sqlite_wal(cur) -> None:  # noqa: ANN001 (a sqlite3 cursor)
    """Switch a SQLite database to WAL, once. Several processes opening a brand-new database at once can
    get "database is locked" from the switch itself (SQLite does not wait on the busy timeout there):
    retry for a while rather than fail the first key store write of a fresh platform."""
    import sqlite3
    import time

    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class CatalogSealedState:
    """The sealed key store as one row of the catalog's ``keystore_state`` table, shared by every host.

    Same blob format as the file (so DR exports, ``restore_from`` and ``reseal`` are unchanged).
    A transaction serializes writers across hosts: PostgreSQL takes a per-name advisory lock (it also
    covers the first write, when there is no row yet to lock) and then the row with ``SELECT ... FOR
    UPDATE``; SQLite ``BEGIN IMMEDIATE``. Inside, the row is re-read and written once at the end, and
    the commit happens when the lock is released. A read outside a transaction is one ``SELECT`` of the
    write id (the blob is fetched only when it changed).

    The catalog URL may hold a password: it never appears in a repr or a message. On SQLite the row
    shares the database's single write lock with the catalog: a key store write made inside an open
    catalog write transaction on SQLite waits for that transaction (use PostgreSQL for several hosts).
    """

    def __init__(self, catalog_url: str, name: str = "default") -> None:
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise ValueError("a key store name is a non-empty str of at most 64 characters")
        self._url = catalog_url
        self.name = name
        self.path = None  # not a file (for callers that show where the key store lives)
        self._engine: sa.Engine | None = None
        self._pid = os.getpid()
        self._conn: sa.Connection | None = None  # the locked transaction's connection
        self._table_ok = False

    @property
    def label(self) -> str:
        return f"catalog key store {self.name!r}"

    def __repr__(self) -> str:
        return f"CatalogSealedState({self.name!r})"

    # -- the engine -------------------------------------------------------

    def _make_engine(self) -> sa.Engine:
        url = sa.engine.make_url(self._url)
        if url.get_backend_name() != "sqlite":
            return sa.create_engine(url, hide_parameters=True, pool_pre_ping=True)
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, hide_parameters=True, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001 (the catalog's own SQLite settings, catalog/db.py)
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_TIMEOUT * 1000)}")
            _sqlite_wal(cur)
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_KS_WRITE) else "BEGIN")

        return engine

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = self._make_engine()
        elif os.getpid() != self._pid:  # after a fork: drop the parent's pooled connections, unclosed
            self._engine.dispose(close=False)
        self._pid = os.getpid()
        return self._engine

    @property
    def _pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _ensure_table(self) -> None:
        """Create ``keystore_state`` if the catalog has not yet (the catalog's ``ensure_schema`` normally has)."""
        if self._table_ok:
            return
        with self.engine.connect() as c:
            present = sa.inspect(c).has_table(_STATE_TABLE_NAME)
        if not present:
            try:
                with self.engine.connect() as c:
                    c.execution_options(**{_KS_WRITE: True})
                    with c.begin():
                        if self._pg:
                            c.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
                        _state_table.create(c, checkfirst=True)
            except sa.exc.SQLAlchemyError as exc:
                raise KeyStoreError(f"the catalog has no {_STATE_TABLE_NAME} table and it cannot be created here "
                                    f"({type(exc).__name__}): run 'imaging-lifecycle init' as the owner") from None
        self._table_ok = True

    # -- the location interface -------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        if self._conn is not None:
            yield self._conn
            return
        self._ensure_table()
        with self.engine.connect() as c:
            yield c

    def read(self, known: object) -> tuple[object, bytes | None] | None:
        t = _state_table
        with self._reading() as c:
            write_id = c.execute(sa.select(t.c.write_id).where(t.c.name == self.name)).scalar()
            if write_id is None:
                return None
            if write_id == known:
                return write_id, None
            row = c.execute(sa.select(t.c.write_id, t.c.blob).where(t.c.name == self.name)).first()
        if row is None:  # deleted in between (by hand): as if lost
            return None
        return row.write_id, bytes(row.blob)

    def exists(self) -> bool:
        return self.read(None) is not None

    def blob(self) -> bytes:
        found = self.read(None)
        return found[1] if found is not None else b""

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self._conn is not None:
            raise KeyStoreError("the catalog key store's lock is already held by this instance")
        self._ensure_table()
        t = _state_table
        with self.engine.connect() as c:
            c.execution_options(**{_KS_WRITE: True})  # SQLite: BEGIN IMMEDIATE (the write lock, first)
            with c.begin():
                if self._pg:
                    c.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:n))"),
                              {"k": _PG_ROW_LOCK, "n": self.name})
                    c.execute(sa.select(t.c.write_id).where(t.c.name == self.name).with_for_update())
                self._conn = c
                try:
                    yield
                finally:
                    self._conn = None

    def write(self, blob: bytes) -> object:
        """Stage ``blob`` in the locked transaction (committed when the lock is released); its signature."""
        c = self._conn
        if c is None:
            raise KeyStoreError("the catalog key store is written only inside its locked transaction")
        t = _state_table
        values = {"blob": bytes(blob), "write_id": _write_id(blob),
                  "updated_at": datetime.now(timezone.utc).replace(tzinfo=None)}
        if c.execute(sa.update(t).where(t.c.name == self.name).values(**values)).rowcount == 0:
            c.execute(sa.insert(t).values(name=self.name, **values))
        return values["write_id"]

    def sweep_leftovers(self) -> None:
        """Nothing to shred here: older row versions (dead tuples, WAL, backups) are sealed under the
        generations that ``reseal`` just destroyed in the KMS, which is what makes them unreadable."""


class LocalKeyStore:
    """``KeyStore`` in one sealed blob, safe for several processes (and, in the catalog, several hosts) at once.

    ``path`` is the file (``SealedFile``) or a blob location such as ``CatalogSealedState``.
    ``transaction()`` holds the location's exclusive lock and writes once at the end;
    every mutating method opens its own transaction when none is active.
    """

    def __init__(self, path: str | os.PathLike | SealedFile | CatalogSealedState,
                 master_key: bytes | MasterKeys) -> None:
        self.location = SealedFile(path) if isinstance(path, str | os.PathLike) else path
        #: The key store file (None when the blob lives in the catalog).
        self.path: Path | None = self.location.path
        self._masters = _masters(master_key)
        #: The generation the last read blob was sealed under (a new one: the current one).
        self._gen: int | None = None
        self._tlock = threading.RLock()
        self._cache: tuple[object, dict] | None = None  # (blob signature, state)
        self._txn: dict | None = None
        self._dirty = False
        #: Number of times this instance rewrote the blob (observability, tests).
        self.write_count = 0

    def __repr__(self) -> str:
        return f"LocalKeyStore({self.location.label!r})"

    # -- blob I/O ---------------------------------------------------------

    def _load(self) -> dict:
        """Current committed state, from cache while the blob is unchanged."""
        found = self.location.read(self._cache[0] if self._cache is not None else None)
        if found is None:
            self._cache = None
            return _empty_state()
        sig, blob = found
        if blob is None:  # unchanged since the cached read
            return self._cache[1]  # type: ignore[index]
        self._gen, state = _decode_file(blob, self._masters, self.location.label)
        self._cache = (sig, state)
        return state

    def _seal(self, state: dict, generation: int) -> bytes:
        master = self._masters.get(generation)
        prefix = FILE_MAGIC + generation.to_bytes(_GEN_SIZE, "big") + os.urandom(_WRITE_ID_SIZE)
        return prefix + crypto.seal(master, json.dumps(state, separators=(",", ":")).encode(), aad=prefix)

    def _write(self, state: dict) -> None:
        generation = self._gen if self._gen is not None and self.location.exists() else self._masters.current()[0]
        blob = self._seal(state, generation)
        sig = self.location.write(blob)
        self._gen = generation
        self._cache = (sig, state)
        self.write_count += 1

    def _install(self, blob: bytes) -> None:
        """Put ``blob`` in place as the key store (inside a transaction)."""
        self.location.write(blob)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group mutations: one exclusive lock, one re-read, one write (if anything changed).

        An exception inside (or a failed commit of the catalog row) discards every change made in the block.
        """
        with self._tlock:
            if self._txn is not None:  # nested: join the outer transaction
                yield
                return
            try:
                with self.location.locked():
                    self._txn = self._load()
                    self._dirty = False
                    try:
                        yield
                        if self._dirty:
                            self._write(self._txn)
                    finally:
                        self._txn = None
                        self._dirty = False
            except BaseException:
                self._cache = None  # the cached dict may hold uncommitted changes
                raise

    @contextlib.contextmanager
    def _mutate(self) -> Iterator[dict]:
        with self.transaction():
            yield self._txn  # type: ignore[misc]
            self._dirty = True

    def _state(self) -> dict:
        return self._txn if self._txn is not None else self._load()

    # -- lookups ----------------------------------------------------------

    @staticmethod
    def _kek(state: dict, kek_id: str) -> dict:
        try:
            return state["keks"][kek_id]
        except (KeyError, TypeError):
            raise KeyNotFound(f"no KEK {kek_id!r} in the key store") from None

    @staticmethod
    def _all_destroyed(kek: dict) -> bool:
        return all(v["key"] is None for v in kek["versions"].values())

    def _key_bytes(self, state: dict, ref: KekRef) -> bytes:
        kek = self._kek(state, ref.kek_id)
        entry = kek["versions"].get(str(ref.version))
        if entry is None:
            raise KeyNotFound(f"KEK {ref} does not exist")
        if entry["key"] is None:
            raise KeyDestroyed(f"KEK {ref} was destroyed; data it protected cannot be decrypted")
        return base64.b64decode(entry["key"])

    def _current_key(self, state: dict, ref: KekRef) -> bytes:
        key = self._key_bytes(state, ref)
        if state["keks"][ref.kek_id]["current"] != ref.version:
            raise StaleKeyVersion(f"KEK {ref} is no longer current; new keys are wrapped under the current version")
        return key

    # -- KeyStore ---------------------------------------------------------

    def current(self, scope_id: str) -> KekRef | None:
        _check_scope(scope_id)
        with self._tlock:
            state = self._state()
            kek_id = state["scopes"].get(scope_id)
            if kek_id is None:
                return None
            kek = state["keks"][kek_id]
            if self._all_destroyed(kek):
                return None
            return KekRef(kek_id, kek["current"])

    def _existing(self, state: dict, scope_id: str) -> KekRef | None:
        kek_id = state["scopes"].get(scope_id)
        if kek_id is None:
            return None
        kek = state["keks"][kek_id]
        if self._all_destroyed(kek):
            raise KeyDestroyed("the scope's KEK was destroyed (crypto-shredded); it gets no new key")
        return KekRef(kek_id, kek["current"])

    def create_kek(self, scope_id: str) -> KekRef:
        _check_scope(scope_id)
        with self._tlock:
            if self._txn is None and (ref := self._existing(self._load(), scope_id)) is not None:
                return ref  # the common case: no lock, no write
            with self.transaction():  # re-check under the lock: another process may have won
                state = self._txn
                if (ref := self._existing(state, scope_id)) is not None:
                    return ref
                kek_id = f"kek-{uuid.uuid4().hex}"
                state["scopes"][scope_id] = kek_id
                state["keks"][kek_id] = {"scope": scope_id, "current": 1, "versions": {"1": self._new_version()}}
                self._dirty = True
                return KekRef(kek_id, 1)

    @staticmethod
    def _new_version() -> dict:
        return {"key": base64.b64encode(crypto.generate_key()).decode(), "created": _now(), "destroyed": None}

    def rotate(self, scope_id: str) -> KekRef:
        _check_scope(scope_id)
        with self._mutate() as state:
            kek_id = state["scopes"].get(scope_id)
            if kek_id is None:
                raise KeyNotFound("the scope has no KEK to rotate; call create_kek first")
            kek = state["keks"][kek_id]
            if self._all_destroyed(kek):
                raise KeyDestroyed("the scope's KEK was destroyed (crypto-shredded); it cannot be rotated")
            version = max(int(v) for v in kek["versions"]) + 1
            kek["versions"][str(version)] = self._new_version()
            kek["current"] = version
            return KekRef(kek_id, version)

    def destroy(self, kek_id: str, version: int | None = None) -> None:
        with self._mutate() as state:
            kek = self._kek(state, kek_id)
            if version is None:
                targets = list(kek["versions"].values())
            else:
                entry = kek["versions"].get(str(version))
                if entry is None:
                    raise KeyNotFound(f"KEK {KekRef(kek_id, version)} does not exist")
                if version == kek["current"] and not self._all_destroyed(kek):
                    raise KeyStoreError(
                        f"refusing to destroy {KekRef(kek_id, version)}: it is the current version; "
                        "rotate first, or destroy the whole KEK"
                    )
                targets = [entry]
            for entry in targets:
                if entry["key"] is not None:
                    entry["key"] = None
                    entry["destroyed"] = _now()
                    state["unsealed_destructions"] = True  # cleared by the next reseal()

    def versions(self, kek_id: str) -> list[KekRef]:
        with self._tlock:
            kek = self._kek(self._state(), kek_id)
            return [KekRef(kek_id, v) for v in sorted(int(v) for v in kek["versions"])]

    def is_destroyed(self, kek_id: str, version: int | None = None) -> bool:
        with self._tlock:
            kek = self._kek(self._state(), kek_id)
            if version is None:
                return self._all_destroyed(kek)
            entry = kek["versions"].get(str(version))
            if entry is None:
                raise KeyNotFound(f"KEK {KekRef(kek_id, version)} does not exist")
            return entry["key"] is None

    def wrap(self, ref: KekRef, dek: bytes) -> bytes:
        _check_ref(ref)
        with self._tlock:
            kek = self._current_key(self._state(), ref)
        return crypto.wrap_key(kek, dek)

    def unwrap(self, ref: KekRef, wrapped: bytes) -> bytes:
        _check_ref(ref)
        with self._tlock:
            kek = self._key_bytes(self._state(), ref)
        return crypto.unwrap_key(kek, wrapped)

    def rewrap(self, wrapped: bytes, old_ref: KekRef, new_ref: KekRef) -> bytes:
        _check_ref(old_ref)
        _check_ref(new_ref)
        with self._tlock:
            state = self._state()
            old = self._key_bytes(state, old_ref)
            new = self._current_key(state, new_ref)
        if old_ref == new_ref:
            crypto.unwrap_key(old, wrapped)  # still prove it is valid under that KEK
            return bytes(wrapped)
        return crypto.wrap_key(new, crypto.unwrap_key(old, wrapped))

    # -- local extras -----------------------------------------------------

    def scope_of(self, kek_id: str) -> str:
        """The scope a KEK belongs to (for the rotation DAG and audit lines)."""
        with self._tlock:
            return self._kek(self._state(), kek_id)["scope"]

    @property
    def needs_reseal(self) -> bool:
        """Whether key material was destroyed since the last ``reseal`` (survives a crash in between)."""
        with self._tlock:
            return bool(self._state().get("unsealed_destructions"))

    @property
    def generation(self) -> int:
        """The master-key generation the file is sealed under now."""
        with self._tlock:
            self._load()
            return self._gen if self._gen is not None else self._masters.current()[0]

    def reseal(self) -> dict:
        """Seal the store under a new master-key generation, then destroy every older generation.

        Run after destroying KEKs: a copy of the file from before (a backup, a DR export) is then
        sealed under a generation that no longer exists. Crash-safe: the new generation's key is
        durable before the file is rewritten; old generations (and any temporary file a crashed
        write left) are destroyed under the same lock, and only then is the "destroyed since the
        last re-seal" mark cleared, so a crash anywhere leaves the mark and the next re-seal
        finishes the work. Returns ``{"generation", "retired"}``.
        """
        with self._tlock:
            if self._txn is not None:
                raise KeyStoreError("reseal cannot run inside a transaction")
            with self.transaction():
                generation, _ = self._masters.advance()
                self._gen = generation
                self._dirty = True  # the same content, written under the new generation
            with self.transaction():  # the lock again: no other process is writing a temporary file now
                retired = self._masters.retire(below=generation)
                self.location.sweep_leftovers()  # e.g. a temporary file a crashed write left
                if self._txn.pop("unsealed_destructions", None):
                    self._dirty = True
            return {"generation": generation, "retired": retired}

    def sealed_bytes(self) -> bytes:
        """The file as it is on disk (for a DR export: it is already sealed under the current generation)."""
        with self.transaction():
            return self.location.blob()

    def restore_from(self, blob: bytes, *, replace: bool = False) -> int:
        """Install a DR export as the key store, after proving it opens; returns the number of KEKs in it.

        Only an export sealed under the *current* master-key generation is taken: an older one
        (from before a re-seal) could bring destroyed keys back, so it is refused even if its
        generation's key were still at hand.
        """
        generation, state = _decode_file(blob, self._masters, Path("<DR export>"))
        current = self._masters.current()[0]
        if generation != current:
            raise KeyStoreUnreadable(f"the export is sealed under master-key generation {generation}, not the "
                                     f"current {current}: only the latest export may be restored")
        with self.transaction():
            if self.location.exists() and not replace:
                raise KeyStoreError(f"{self.location.label} exists; restore a DR export only over a lost key store")
            self._dirty = False
            self._install(blob)
            self._cache = None
        return len(state["keks"])

    def rekey(self, new_master_key: bytes) -> None:
        """Re-seal under an explicitly given master key (an injected key being replaced by hand).

        The caller must then provide the new key where ``load_master_key`` finds it.
        """
        new = FixedMasterKey(new_master_key)
        with self._tlock:
            if self._txn is not None:
                raise KeyStoreError("rekey cannot run inside a transaction")
            old, old_gen = self._masters, self._gen
            try:
                with self.transaction():
                    self._masters, self._gen = new, 1
                    self._dirty = True
            except BaseException:
                self._masters, self._gen = old, old_gen
                raise


#: The key store's logic is the same wherever its blob lives; ``LocalKeyStore`` is its historical name.
SealedKeyStore = LocalKeyStore


def load_master_key(settings: Settings | None = None) -> bytes:
    """The key store's master key: ``IL_MASTER_KEY`` (base64, 32 bytes) or the current generation's 0600 file."""
    env = os.environ.get(MASTER_KEY_ENV)
    if not env:
        from imaging_lifecycle.settings import load_settings

        return MasterKeyFiles((settings or load_settings()).secrets_dir).current()[1]
    if env:
        try:
            key = base64.b64decode(env, validate=True)
        except (binascii.Error, ValueError):
            raise KeyStoreError(f"{MASTER_KEY_ENV} is not valid base64") from None
        if len(key) != crypto.KEY_SIZE:
            raise KeyStoreError(f"{MASTER_KEY_ENV} must decode to {crypto.KEY_SIZE} bytes, got {len(key)}")
        return key
    raise AssertionError("unreachable")


def master_keys(settings: Settings, keystore_path: Path | None = None) -> MasterKeys:
    """``IL_MASTER_KEY`` as one fixed generation, else the key store's own generation files.

    The default key store's are ``<state>/secrets/master[-n].key``; a key store elsewhere
    (``IL_KEYSTORE_PATH``) keeps ``<file name>.master[-n].key`` beside it.
    """
    if os.environ.get(MASTER_KEY_ENV):
        return FixedMasterKey(load_master_key(settings))
    default = settings.secrets_dir / "keystore.sealed"
    if keystore_path is None or Path(keystore_path) == default:
        return MasterKeyFiles(settings.secrets_dir)
    return MasterKeyFiles(Path(keystore_path).parent, f"{Path(keystore_path).name}.master")


#: The catalog row of the default key store when it lives in the catalog.
CATALOG_KEYSTORE_NAME = "default"


def open_default_keystore(settings: Settings) -> LocalKeyStore:
    """The platform's key store.

    With a KMS (``settings.kmip``, from ``IL_KMIP_*``): the sealed blob in the catalog's
    ``keystore_state`` table and the master-key generations in the KMS, so every host that shares
    the catalog and the KMS shares the KEKs. Otherwise the embedded file: ``IL_KEYSTORE_PATH`` or
    ``<state>/secrets/keystore.sealed``, its master key from ``IL_MASTER_KEY`` or the 0600 files.
    """
    if settings.kmip is not None:
        if os.environ.get(MASTER_KEY_ENV):
            raise KeyStoreError(f"both {MASTER_KEY_ENV} and IL_KMIP_* are set: the master key comes from "
                                "one place; unset one of them")
        from imaging_lifecycle.kms import KmipClient, KmipMasterKeys

        return LocalKeyStore(CatalogSealedState(settings.catalog_url, CATALOG_KEYSTORE_NAME),
                             KmipMasterKeys(KmipClient(settings.kmip)))
    path = Path(os.environ.get(KEYSTORE_PATH_ENV) or settings.secrets_dir / "keystore.sealed")
    return LocalKeyStore(path, master_keys(settings, path))
