"""The audit trail on a real PostgreSQL: append-only against UPDATE, DELETE and TRUNCATE.

The session's PostgreSQL server (``conftest.pg_server``: the machine's own binaries, a private
port and socket, run as ``postgres``) serves these tests, as it serves the catalog and audit
suites, which run on both databases. Where there is no PostgreSQL they are skipped with that reason.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def pg_url(pg_server):
    """A database of this module's own on the session's PostgreSQL server (``conftest.pg_server``)."""
    from conftest import new_pg_database

    return new_pg_database(pg_server)


@pytest.mark.parametrize("statement", ["TRUNCATE audit_records", "TRUNCATE audit_records CASCADE",
                                       "DELETE FROM audit_records", "UPDATE audit_records SET actor = 'x'"])
def test_the_audit_trail_refuses_truncate_delete_and_update_on_postgresql(pg_url, statement):
    from sqlalchemy import text

    from imaging_lifecycle.catalog import Catalog

    cat = Catalog(pg_url)
    cat.register(actor="test", source="landing", quarantine_reason="NOT_DICOM")
    before = len(cat.audit.records())
    with pytest.raises(Exception, match="append-only"):  # noqa: B017 - psycopg2's RaiseException
        with cat.engine.begin() as conn:  # the pipeline's own engine, not a side door
            conn.execute(text(statement))
    assert len(cat.audit.records()) == before and cat.audit.verify().ok


def test_an_older_catalog_without_the_truncate_trigger_gets_it_on_open(pg_url):
    from sqlalchemy import text

    from imaging_lifecycle.catalog import Catalog

    cat = Catalog(pg_url)
    with cat.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_records_no_truncate ON audit_records"))
    cat = Catalog(pg_url)  # opening it again adds what is missing
    with pytest.raises(Exception, match="append-only"):  # noqa: B017 - psycopg2's RaiseException
        with cat.engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_records"))


def test_the_pipeline_role_owns_nothing_and_can_only_append_to_the_audit_trail(pg_url):
    """The compose layout: an owner role migrates; the pipeline connects as a role that owns nothing."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from imaging_lifecycle.catalog import Catalog

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("CREATE ROLE catalog_owner LOGIN"))
        c.execute(text("CREATE ROLE il_pipeline LOGIN"))
        c.execute(text("CREATE DATABASE roles_catalog OWNER catalog_owner"))
    admin.dispose()
    base = make_url(pg_url).set(database="roles_catalog")
    owner = Catalog(base.set(username="catalog_owner").render_as_string(hide_password=False))  # migrations
    owner.db.grant_pipeline_role("il_pipeline")
    cat = Catalog(base.set(username="il_pipeline").render_as_string(hide_password=False))
    oid = cat.register(actor="test", source="landing", quarantine_reason="NOT_DICOM").object.id  # it works
    assert cat.get(oid) is not None and cat.audit.verify().ok
    before = len(cat.audit.records())
    attacks = ["UPDATE audit_records SET actor = 'x'", "DELETE FROM audit_records", "TRUNCATE audit_records",
               "ALTER TABLE audit_records DISABLE TRIGGER ALL",
               "DROP TRIGGER audit_records_append_only ON audit_records",
               "DROP TABLE audit_records CASCADE", "CREATE TABLE sneaky (x int)",
               "ALTER TABLE audit_head ADD COLUMN x int", "DELETE FROM audit_head", "TRUNCATE audit_head"]
    for statement in attacks:
        with pytest.raises(Exception, match="permission denied|must be owner|append-only"):  # noqa: B017
            with cat.engine.begin() as conn:
                conn.execute(text(statement))
    assert len(cat.audit.records()) == before and cat.audit.verify().ok


def test_a_pipeline_role_that_owns_something_is_refused_its_grants(pg_url):
    """An older deployment made the pipeline's role the owner; init says so instead of granting around it."""
    from sqlalchemy import create_engine, text

    from imaging_lifecycle.catalog import Catalog, DatabaseUsageError

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("CREATE ROLE old_pipeline LOGIN"))
        c.execute(text("CREATE TABLE owned_by_old (x int)"))
        c.execute(text("ALTER TABLE owned_by_old OWNER TO old_pipeline"))
    admin.dispose()
    with pytest.raises(DatabaseUsageError, match="REASSIGN OWNED BY old_pipeline"):
        Catalog(pg_url).db.grant_pipeline_role("old_pipeline")
