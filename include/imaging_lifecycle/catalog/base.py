"""The base every part of :class:`~imaging_lifecycle.catalog.Catalog` builds on.

:class:`CatalogBase` owns the database (``db``, ``engine``), the audit log
(``audit``), transactions and read sessions, and the keyed digests of UIDs
(``uid_key``). The responsibility mixins (objects, copies, batches, data
keys, grants, certificates) subclass it, so each of them can use ``self.db``
and ``self.audit``; the package ``__init__`` combines them into ``Catalog``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, select
from sqlalchemy.engine import make_url

from imaging_lifecycle.catalog.audit import AuditLog
from imaging_lifecycle.catalog.db import Database
from imaging_lifecycle.catalog.records import UnknownObject

#: Purpose strings of the keyed digests of UIDs (domain separation, see crypto.keyed_digest).
UID_PURPOSES: dict[str, str] = {
    "sop": "catalog-sop-instance-uid",
    "study": "catalog-study-instance-uid",
    "series": "catalog-series-instance-uid",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _live_rows(conn: Connection, table, ids: list[str], done, what: str) -> list:  # noqa: ANN001
    """The rows of ``table`` with these ids (each once, in the given order) whose ``done`` column is
    still unset: a batch call's work. Raises :class:`UnknownObject` naming the first unknown id."""
    rows = {r.id: r for r in conn.execute(select(table).where(table.c.id.in_(list(ids))))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise UnknownObject(f"no {what} {missing[0]}")
    return [rows[i] for i in dict.fromkeys(ids) if getattr(rows[i], done) is None]


class CatalogBase:
    """The database, its audit log, transactions and UID digests; see :class:`~imaging_lifecycle.catalog.Catalog`."""

    def __init__(self, url: str, *, ref_key: bytes | None = None):
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.db = Database(url)
        self.db.ensure_schema()
        self.audit = AuditLog(self)
        self._ref_key = ref_key

    @property
    def engine(self):  # noqa: ANN201
        return self.db.engine

    def ping(self) -> bool:
        """True if the database answers."""
        return self.db.ping()

    def dispose(self) -> None:
        """Close pooled connections (call before a process forks, or at the end)."""
        self.db.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: pass the connection as ``session=`` to group changes.

        Commits on normal exit, rolls back (catalog rows *and* audit records)
        on an exception. Write transactions are serialized across processes.
        """
        with self.db.write() as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """A read-only transaction on one consistent snapshot (for reads only)."""
        with self.db.read() as conn:
            yield conn

    # -- keyed digests ------------------------------------------------------

    def uid_key(self, kind: str, uid: str) -> str:
        """The catalog's keyed digest of a UID; ``kind`` is ``sop``, ``study`` or ``series``."""
        from imaging_lifecycle.crypto import keyed_digest

        if kind not in UID_PURPOSES:
            raise ValueError(f"kind must be one of {', '.join(UID_PURPOSES)}")
        if not isinstance(uid, str) or not uid:
            raise ValueError(f"{kind} UID must be a non-empty string")
        if self._ref_key is None:
            from imaging_lifecycle.secretfiles import load_or_create_secret

            self._ref_key = load_or_create_secret("ref-hmac")
        return keyed_digest(self._ref_key, UID_PURPOSES[kind], uid)
