"""Connections to the catalog database, set up for many writers at once.

Airflow's LocalExecutor runs tasks in parallel OS processes that all write to
the catalog and append to the one audit chain. What makes that safe:

* SQLite: WAL journal (readers never block the writer), a busy timeout
  (a writer waits for the lock instead of failing at once), and
  ``BEGIN IMMEDIATE`` for write transactions, so a writer takes the write
  lock *before* it reads the chain head: concurrent writers queue up rather
  than read the same head and then fail (or fork the chain) at commit. The
  sqlite3 driver's own transaction handling is switched off so SQLAlchemy
  emits our BEGIN (the recipe from SQLAlchemy's SQLite documentation).
* PostgreSQL: every write transaction starts with ``SELECT ... FOR UPDATE``
  on the one-row ``audit_head`` table. Taking that lock first, always, both
  serializes audit appends and rules out lock-order deadlocks between object
  rows and the head. Read transactions use REPEATABLE READ so ``verify`` sees
  one snapshot.

``hide_parameters=True`` keeps bound values (content hashes, keyed digests)
out of SQLAlchemy's exception messages and logs.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import make_url

from imaging_lifecycle.catalog.schema import PG_NO_TRUNCATE, audit_head, audit_records, metadata

#: How long (seconds) a SQLite writer waits for the write lock before failing.
BUSY_TIMEOUT = 60.0
HEAD_ID = 1
ZERO_HASH = "0" * 64
_WRITE = "il_write"
_PENDING = "il_before_commit"
_configured: weakref.WeakSet[Engine] = weakref.WeakSet()


class DatabaseUsageError(RuntimeError):
    """A connection was used for something it was not opened for."""


def before_commit(conn: Connection, key: str, make):  # noqa: ANN001, ANN201 (any object with flush(conn))
    """The write transaction's own state under ``key``, made by ``make()`` on first use.

    Its ``flush(conn)`` runs inside the transaction just before it commits, never after a
    rollback. The audit chain keeps a transaction's records there, so that they go to the table
    in one statement and the head moves once (:meth:`AuditLog.append`).
    """
    pending = conn.info.get(_PENDING)
    if pending is None:
        raise DatabaseUsageError("catalog writes need the connection of Catalog.transaction()")
    if key not in pending:
        pending[key] = make()
    return pending[key]


def _configure(engine: Engine) -> Engine:
    if engine in _configured:
        return engine
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            # Every commit reaches the disk before it returns (about 3 ms here, against 0.08 ms with NORMAL):
            # under NORMAL a power cut could roll back a committed DEK destruction or audit records.
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

        engine.dispose()  # pooled connections made before the hooks must not be reused
    _configured.add(engine)
    return engine


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the concurrency settings above."""
    parsed = make_url(url)
    kwargs: dict = {"hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT}
    else:
        kwargs["pool_pre_ping"] = True
    return _configure(create_engine(parsed, **kwargs))


class Database:
    """An engine plus the two ways of using it: :meth:`write` and :meth:`read`."""

    def __init__(self, target: str | Engine):
        self.engine = _configure(target) if isinstance(target, Engine) else make_engine(target)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._pid = os.getpid()

    def _fork_guard(self) -> None:
        """After a fork, drop the parent's pooled connections (without closing them under its feet)."""
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def write(self, conn: Connection | None = None, *, _lock_head: bool = True) -> Iterator[Connection]:
        """A write transaction, committed on normal exit and rolled back on error.

        With ``conn`` (a connection from an enclosing :meth:`write`), joins
        that transaction instead: the caller commits.
        """
        if conn is not None:
            if not conn.in_transaction() or not conn.get_execution_options().get(_WRITE):
                raise DatabaseUsageError("catalog writes need the connection of Catalog.transaction()")
            yield conn
            return
        self._fork_guard()
        with self.engine.connect() as c:
            c.execution_options(**{_WRITE: True})
            c.info[_PENDING] = pending = {}  # the DBAPI connection's info outlives this checkout: cleared below
            try:
                with c.begin():
                    if _lock_head and not self.is_sqlite:
                        c.execute(select(audit_head.c.seq).where(audit_head.c.id == HEAD_ID).with_for_update())
                    yield c
                    for state in pending.values():  # not reached on an exception: the transaction rolls back
                        state.flush(c)
            finally:
                c.info.pop(_PENDING, None)

    @contextmanager
    def read(self, conn: Connection | None = None) -> Iterator[Connection]:
        """A read-only transaction on one consistent snapshot (or the given connection's)."""
        if conn is not None:
            yield conn
            return
        self._fork_guard()
        with self.engine.connect() as c:
            if not self.is_sqlite:
                c.execution_options(isolation_level="REPEATABLE READ")
            with c.begin() as tx:
                yield c
                tx.rollback()

    def ensure_schema(self) -> None:
        """Create missing tables and the chain head row; safe to run from many processes at once."""
        with self.write(_lock_head=False) as c:
            if self.engine.dialect.name == "postgresql":
                c.execute(text("SELECT pg_advisory_xact_lock(727001)"))  # one creator at a time
            metadata.create_all(c)
            _add_missing_columns(c)
            if self.engine.dialect.name == "postgresql":
                c.execute(text(PG_NO_TRUNCATE))
            has_head = c.execute(select(audit_head.c.id).where(audit_head.c.id == HEAD_ID)).first()
            if has_head is None and c.execute(select(audit_records.c.seq).limit(1)).first() is None:
                # Only an empty trail gets a fresh head: a missing head with
                # records present is damage that verify must report, and
                # appends must fail on, not paper over.
                c.execute(insert(audit_head).values(id=HEAD_ID, seq=0, hash=ZERO_HASH))

    def grant_pipeline_role(self, role: str) -> None:
        """PostgreSQL: let ``role`` use the catalog, owning nothing (run as the owner, after ``ensure_schema``).

        The pipeline connects as ``role``: it reads and writes the catalog's tables, but on the audit
        trail it may only SELECT and INSERT; not being the owner, it can neither drop nor alter a table,
        disable or drop the append-only triggers, nor truncate. The owner role runs migrations.
        """
        if self.engine.dialect.name != "postgresql":
            raise DatabaseUsageError("database roles exist on PostgreSQL only")
        if not _ROLE.fullmatch(role or ""):
            raise ValueError("a role name is lower-case letters, digits and underscores")
        quote = self.engine.dialect.identifier_preparer.quote
        r = quote(role)
        with self.write(_lock_head=False) as c:
            owned = c.execute(text(
                "SELECT count(*) FROM pg_class k JOIN pg_roles o ON o.oid = k.relowner WHERE o.rolname = :r "
                "UNION ALL SELECT count(*) FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner "
                "WHERE o.rolname = :r UNION ALL SELECT count(*) FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner "
                "WHERE o.rolname = :r UNION ALL SELECT count(*) FROM pg_database d JOIN pg_roles o "
                "ON o.oid = d.datdba WHERE o.rolname = :r"), {"r": role}).scalars().all()
            if any(owned):
                # An older deployment made the pipeline's role the owner: it could disable the triggers.
                raise DatabaseUsageError(
                    f"role {role} owns database objects; as the owner run REASSIGN OWNED BY {role} TO "
                    "<owner role> (and ALTER DATABASE ... OWNER TO <owner role>), then init again")
            c.execute(text(f"REVOKE ALL ON SCHEMA public FROM {r}"))
            c.execute(text(f"GRANT USAGE ON SCHEMA public TO {r}"))
            for table in metadata.sorted_tables:
                t = quote(table.name)
                c.execute(text(f"REVOKE ALL ON {t} FROM {r}"))
                grant = {audit_records.name: "SELECT, INSERT",  # append-only, by grant and by trigger
                         audit_head.name: "SELECT, UPDATE"}.get(table.name, "SELECT, INSERT, UPDATE, DELETE")
                c.execute(text(f"GRANT {grant} ON {t} TO {r}"))
            c.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {r}"))

    def ping(self) -> bool:
        self._fork_guard()
        try:
            with self.engine.connect() as c:
                c.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()


_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _add_missing_columns(conn: Connection) -> None:
    """Add the nullable columns a newer schema has and an older catalog lacks (``ALTER TABLE ... ADD COLUMN``).

    Only nullable columns without server defaults are added this way, so old
    rows stay valid as they are; anything else is a migration to write.
    """
    from sqlalchemy import inspect as sa_inspect

    insp = sa_inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in present:
                continue
            if not col.nullable or col.server_default is not None:
                raise RuntimeError(f"catalog table {table.name} lacks column {col.name}: it needs a migration")
            quote = conn.dialect.identifier_preparer.quote
            ddl = col.type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(col.name)} {ddl}"))
