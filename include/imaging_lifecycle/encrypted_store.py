"""The only way plaintext goes into or comes out of a bucket: encrypted on the way in, verified on the way out.

:meth:`EncryptedStore.put` encrypts a file under a fresh data key (DEK) with the
object's associated data, wraps the DEK under the KEK of the object's key
scope and uploads the ciphertext, verified before it reports success. Only then
may a caller treat the content as durably stored (and, for ingest, remove the
local file). Verified means one of two things:

* **by the store**, where the store proves it (:meth:`ObjectStore.proves_checksums`,
  probed, never assumed) and the object is single-part (below ``PART_SIZE``;
  a CT slice is 512 KB): the ciphertext is made in memory, its SHA-256 goes
  with the upload, and the store refuses any other bytes. No read-back;
* **by reading it back** otherwise (larger objects stream through, and a store
  that ignores the checksum): the whole object downloaded, authenticated and
  its plaintext hash checked.

The wrapped DEK is *not* stored with the data: the caller records it in the
catalog (:class:`~imaging_lifecycle.catalog.records.Sealed` is exactly what to record). Destroying that record
or the KEK makes the ciphertext unreadable everywhere, backups included.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

from imaging_lifecycle import crypto
from imaging_lifecycle.catalog.records import Sealed
from imaging_lifecycle.crypto import AssociatedData, DecryptingReader, EncryptingReader
from imaging_lifecycle.keystore import KekRef, KeyDestroyed, KeyStore, StaleKeyVersion
from imaging_lifecycle.storage import PART_SIZE, ObjectStore


class EncryptedStore:
    def __init__(self, store: ObjectStore, keystore: KeyStore, *, chunk_size: int = crypto.DEFAULT_CHUNK_SIZE):
        self.store = store
        self.keystore = keystore
        self.chunk_size = chunk_size

    def kek_for(self, scope_id: str) -> KekRef:
        """The current KEK of a scope. A scope whose KEK was destroyed (a study crypto-shredded
        after deletion) stays shredded; new data for it -- the study sent again -- gets
        the next generation, ``<scope>#2``, ``#3``, ..."""
        for generation in range(1, 10_000):
            scope = scope_id if generation == 1 else f"{scope_id}#{generation}"
            try:
                return self.keystore.current(scope) or self.keystore.create_kek(scope)
            except KeyDestroyed:
                continue
        raise KeyDestroyed("no usable key generation left for this scope")

    def put(
        self,
        src: Path | BinaryIO,
        *,
        catalog_id: str,
        zone: str,
        tier: int,
        scope_id: str,
        key: str,
        size: int | None = None,
        retain_until: dt.datetime | None = None,
        verify: bool = True,
    ) -> Sealed:
        """Encrypt ``src`` into ``zone``/``key``; with ``verify``, proven by the store's checksum or read back."""
        dek, dek_id = crypto.generate_key(), crypto.new_key_id()
        kek = self.kek_for(scope_id)
        wrapped = self.keystore.wrap(kek, dek)
        aad = AssociatedData(catalog_id, zone, tier, dek_id)
        fh = open(src, "rb") if isinstance(src, Path) else src
        try:
            if size is None:
                size = os.fstat(fh.fileno()).st_size
            reader = EncryptingReader(fh, dek, aad, self.chunk_size, expected_size=size)
            if verify and reader.length < PART_SIZE and self.store.proves_checksums(zone):
                blob = reader.read()  # the whole ciphertext, so that its hash can go with the upload
                result = reader.result
                put = self.store.put(zone, key, blob, retain_until=retain_until, sha256=result.ciphertext_sha256)
                verify = False  # the store refused anything but these bytes: proven, nothing to read back
            else:
                put = self.store.put(zone, key, reader, reader.length, retain_until=retain_until)
                result = reader.result
        finally:
            if isinstance(src, Path):
                fh.close()
        sealed = Sealed(
            zone, put.bucket, key, put.version_id, dek_id, str(kek), wrapped, tier,
            result.plaintext_sha256, result.ciphertext_sha256, result.plaintext_size, result.ciphertext_size,
        )
        if verify:
            self.verify(sealed, catalog_id, dek=dek)
        return sealed

    def record(self, catalog, object_id: str, sealed: Sealed, *, actor: str,  # noqa: ANN001
               deadline: dt.datetime | None = None, session=None):  # noqa: ANN001
        """Record ``sealed`` in the catalog: refused if its KEK version was destroyed since it was wrapped.

        Key rotation destroys an old KEK version, inside a catalog write
        transaction, once no data key row names it. A copy wrapped under that
        version before the rotation but recorded after it would be unreadable
        from the start. The check here runs inside the recording's own write
        transaction, which the catalog serializes with rotation's: the row either
        lands first (and keeps the version alive) or is refused with
        :class:`~imaging_lifecycle.keystore.StaleKeyVersion`, and the caller's
        retry stores the content again under the current version.
        """
        ref = KekRef.parse(sealed.kek_ref)
        with (nullcontext(session) if session is not None else catalog.transaction()) as conn:
            if self.keystore.is_destroyed(ref.kek_id, ref.version):
                raise StaleKeyVersion(f"the KEK version of copy {sealed.key.rsplit('/', 1)[-1]} was destroyed "
                                      "after wrapping (a key rotation ran meanwhile); store it again")
            return catalog.record_sealed(object_id, sealed, actor=actor, deadline=deadline, session=conn)

    def dek(self, sealed: Sealed) -> bytes:
        """Unwrap the object's DEK (raises KeyUnavailable once its key was destroyed)."""
        return self.keystore.unwrap(KekRef.parse(sealed.kek_ref), sealed.wrapped_dek)

    def open(self, sealed: Sealed, catalog_id: str, *, dek: bytes | None = None) -> DecryptingReader:
        """A plaintext reader that checks every GCM tag and, at the end, the recorded SHA-256."""
        resp = self.store.open(sealed.zone, sealed.key, sealed.version_id)
        return _Closing(
            DecryptingReader(resp, dek or self.dek(sealed), sealed.aad(catalog_id), sealed.plaintext_sha256), resp
        )

    def verify(self, sealed: Sealed, catalog_id: str, *, dek: bytes | None = None) -> None:
        """Download, authenticate and hash the whole object; raises IntegrityError on any mismatch."""
        with self.open(sealed, catalog_id, dek=dek) as reader:
            while reader.read(4 << 20):
                pass

    def verify_blob(self, sealed: Sealed, catalog_id: str, blob: bytes) -> None:
        """:meth:`verify` over ciphertext already in memory (what is about to be copied elsewhere)."""
        reader = DecryptingReader(io.BytesIO(blob), self.dek(sealed), sealed.aad(catalog_id), sealed.plaintext_sha256)
        while reader.read(4 << 20):
            pass

    def restore_to(self, sealed: Sealed, catalog_id: str, path: Path) -> str:
        """Decrypt into a new 0600 file that appears only if everything verified."""
        resp = self.store.open(sealed.zone, sealed.key, sealed.version_id)
        try:
            return crypto.decrypt_to_path(resp, path, self.dek(sealed), sealed.aad(catalog_id), sealed.plaintext_sha256)
        finally:
            resp.close()


class _Closing:
    """A DecryptingReader that also closes the HTTP response under it."""

    def __init__(self, reader: DecryptingReader, resp):
        self._reader, self._resp = reader, resp

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)

    @property
    def plaintext_sha256(self) -> str:
        return self._reader.plaintext_sha256

    def close(self) -> None:
        self._resp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
