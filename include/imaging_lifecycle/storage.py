"""The storage adapter: the only module that talks to S3.

Zones are buckets (see :data:`imaging_lifecycle.settings.ZONES`). Everything
here is plain S3 through the minio SDK, so MinIO, SeaweedFS or Ceph all serve;
nothing relies on one server's extensions. Callers hand in ciphertext: this
module never encrypts and never sees plaintext by design of the callers.

Every bucket is versioned, so a plain delete only adds a delete marker;
:meth:`ObjectStore.purge` removes every version and marker, which is what
deletion must mean here.

An upload may carry the SHA-256 of its bytes (``x-amz-checksum-sha256``, plain
S3 since 2022). A store that checks it refuses an upload whose bytes differ, so
the upload itself proves integrity; :meth:`ObjectStore.proves_checksums` probes
once per site whether it does (SeaweedFS, MinIO and Ceph do; one that ignores
the header is read back by the callers instead).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from minio import Minio
from minio.commonconfig import ENABLED, GOVERNANCE
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.retention import Retention
from minio.versioningconfig import VersioningConfig

from imaging_lifecycle.settings import LOCKED_ZONES, ZONES, S3Endpoint, Settings

#: S3 answers that mean "no such object or version".
_MISSING = {"NoSuchKey", "NoSuchVersion", "NoSuchObject", "ResourceNotFound"}
PART_SIZE = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """An object-store call failed; the message names zone and key only; ``code`` is S3's error code."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PutResult:
    zone: str
    bucket: str
    key: str
    version_id: str | None
    etag: str


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str | None
    is_delete_marker: bool
    size: int | None


def client_for(endpoint: S3Endpoint, *, timeout: float | None = None) -> Minio:
    http_client = None
    if timeout is not None or endpoint.ca_file:
        import urllib3

        kwargs: dict = {}
        if timeout is not None:
            kwargs.update(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=urllib3.Retry(total=0))
        else:  # what the SDK's own default pool uses
            kwargs.update(timeout=urllib3.Timeout(connect=300, read=300), maxsize=10,
                          retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
        if endpoint.ca_file:
            kwargs.update(cert_reqs="CERT_REQUIRED", ca_certs=endpoint.ca_file)
        http_client = urllib3.PoolManager(**kwargs)
    return Minio(
        endpoint.endpoint,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        secure=endpoint.secure,
        http_client=http_client,
    )


class ObjectStore:
    """Zone-addressed access to the primary and backup sites."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._clients: dict[str, Minio] = {}
        self._proves: dict[str, bool] = {}  # endpoint -> does it refuse a wrong x-amz-checksum-sha256?

    # -- plumbing -------------------------------------------------------
    def client(self, zone: str) -> Minio:
        ep = self.settings.endpoint_for(zone)
        if ep.endpoint not in self._clients:
            self._clients[ep.endpoint] = client_for(ep)
        return self._clients[ep.endpoint]

    def bucket(self, zone: str) -> str:
        return self.settings.bucket(zone)

    def ensure_zones(self) -> list[str]:
        """Create every zone's bucket if missing: versioned, object-locked where the design needs it."""
        created = []
        for zone in ZONES:
            c, b = self.client(zone), self.bucket(zone)
            if not c.bucket_exists(b):
                c.make_bucket(b, object_lock=zone in LOCKED_ZONES)
                created.append(b)
            if zone not in LOCKED_ZONES:  # object lock already implies versioning
                c.set_bucket_versioning(b, VersioningConfig(ENABLED))
        return created

    # -- objects --------------------------------------------------------
    def put(
        self,
        zone: str,
        key: str,
        data: BinaryIO | bytes,
        length: int | None = None,
        *,
        metadata: dict[str, str] | None = None,
        retain_until: dt.datetime | None = None,
        legal_hold: bool = False,
        lock_mode: str | None = None,
        sha256: str | None = None,
    ) -> PutResult:
        """Upload one object; with ``retain_until``, object-lock it in ``lock_mode`` (default GOVERNANCE).

        ``sha256``: the hex SHA-256 of exactly these bytes, sent as ``x-amz-checksum-sha256`` (single-part
        uploads only, below :data:`PART_SIZE`). A store that checks it (:meth:`proves_checksums`) refuses
        different bytes: :class:`StorageError` ``BadDigest``, and nothing is stored.
        """
        if isinstance(data, bytes):
            length, data = len(data), io.BytesIO(data)
        retention = Retention(lock_mode or GOVERNANCE, retain_until) if retain_until else None
        if sha256 is not None:
            if length is None or length < 0 or length >= PART_SIZE:
                raise ValueError("a checksum goes with a single-part upload of known length below PART_SIZE")
            metadata = {**(metadata or {}), "x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(sha256)).decode()}
        try:
            r = self.client(zone).put_object(
                self.bucket(zone),
                key,
                data,
                length if length is not None else -1,
                part_size=PART_SIZE,
                metadata=metadata,
                retention=retention,
                legal_hold=legal_hold,
            )
        except S3Error as exc:
            raise StorageError(f"put {zone}/{key} failed: {exc.code}", exc.code) from None
        return PutResult(zone, self.bucket(zone), key, r.version_id, r.etag)

    def proves_checksums(self, zone: str) -> bool:
        """Does the site of ``zone`` refuse an upload whose ``x-amz-checksum-sha256`` differs from its bytes?

        Probed once per site and process, never assumed: one 1-byte upload with the checksum of
        other bytes. Refused with ``BadDigest``: the site checks, and an upload that carries the
        checksum is proven intact by the site's answer. Stored (a store that ignores the header) or
        refused for any other reason: the probe object is purged and the answer is False, so
        callers read back instead.
        """
        endpoint = self.settings.endpoint_for(zone).endpoint
        if endpoint not in self._proves:
            key, wrong = f"_probe/checksum/{uuid.uuid4().hex}", "00" * 32
            try:
                put = self.put(zone, key, b"\0", sha256=wrong)
            except StorageError as exc:
                self._proves[endpoint] = exc.code == "BadDigest"
            else:
                self.purge(zone, [(key, put.version_id)])
                self._proves[endpoint] = False
        return self._proves[endpoint]

    def get(self, zone: str, key: str, version_id: str | None = None) -> bytes:
        with self.open(zone, key, version_id) as resp:
            return resp.read()

    def open(self, zone: str, key: str, version_id: str | None = None, *, length: int | None = None):
        """A streaming response; use as a context manager and ``.read(n)`` / ``.stream()``.

        ``length``: only the first ``length`` bytes (a ranged GET). Read a response to its end: one closed
        early closes its connection too, and the next request pays a new TLS handshake.
        """
        try:
            resp = self.client(zone).get_object(self.bucket(zone), key, version_id=version_id, length=length or 0)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise FileNotFoundError(f"{zone}/{key}") from None
            raise StorageError(f"get {zone}/{key} failed: {exc.code}") from None
        return _Response(resp)

    def size(self, zone: str, key: str, version_id: str | None = None) -> int:
        """The stored size of one version, in bytes (FileNotFoundError if it does not exist)."""
        try:
            return self.client(zone).stat_object(self.bucket(zone), key, version_id=version_id).size
        except S3Error as exc:
            if exc.code in _MISSING:
                raise FileNotFoundError(f"{zone}/{key}") from None
            raise StorageError(f"stat {zone}/{key} failed: {exc.code}") from None

    def exists(self, zone: str, key: str, version_id: str | None = None) -> bool:
        try:
            self.client(zone).stat_object(self.bucket(zone), key, version_id=version_id)
            return True
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise StorageError(f"stat {zone}/{key} failed: {exc.code}") from None

    def versions(self, zone: str, prefix: str = "") -> Iterator[Version]:
        """Every version and delete marker under ``prefix``."""
        for o in self.client(zone).list_objects(
            self.bucket(zone), prefix=prefix, recursive=True, include_version=True
        ):
            yield Version(o.object_name, o.version_id, bool(o.is_delete_marker), o.size)

    def purge(self, zone: str, targets: Iterable[tuple[str, str | None]]) -> list[tuple[str, str | None, str]]:
        """Delete the given (key, version_id) pairs in batches of up to 1,000 (DeleteObjects).

        Returns the failures as (key, version_id, error code); an empty list
        means every one is gone. Locked versions fail with AccessDenied and
        stay listed, so a later sweep can retry them once the lock allows.
        """
        errors = self.client(zone).remove_objects(
            self.bucket(zone), (DeleteObject(k, v) for k, v in targets)
        )
        return [(e.name, e.version_id, e.code) for e in errors]

    def set_legal_hold(self, zone: str, key: str, version_id: str | None, held: bool) -> None:
        c = self.client(zone)
        fn = c.enable_object_legal_hold if held else c.disable_object_legal_hold
        fn(self.bucket(zone), key, version_id=version_id)


class _Response:
    """Closes and releases the HTTP connection however the caller leaves."""

    def __init__(self, resp):
        self._resp = resp

    def read(self, n: int | None = None) -> bytes:
        return self._resp.read(n) if n is not None else self._resp.read()

    def stream(self, amt: int = 1024 * 1024):
        return self._resp.stream(amt)

    def close(self) -> None:
        self._resp.close()
        self._resp.release_conn()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ping(endpoint: S3Endpoint, timeout: float = 2.0) -> tuple[bool, str]:
    """Is this S3 endpoint up and do our credentials work? Returns (up, detail)."""
    try:
        client_for(endpoint, timeout=timeout).list_buckets()
        return True, "ok"
    except S3Error as exc:
        return False, f"answered {exc.code}"
    except Exception as exc:  # connection refused, timeout, DNS
        return False, type(exc).__name__
