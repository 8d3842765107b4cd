"""The audit chain's head, anchored in the object-locked bucket, catches a truncated tail."""

from __future__ import annotations

import sqlite3

import pytest


@pytest.fixture
def cat(object_store_settings, tmp_path):
    from imaging_lifecycle.catalog import Catalog

    return Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")


def test_anchor_is_write_once_and_detects_a_truncated_tail(cat, store, tmp_path):
    from imaging_lifecycle import anchor

    for i in range(6):
        cat.audit.append("test/anchor", "catalog.query", detail={"n": i})
    written = anchor.write_anchor(cat, store, actor="test/anchor")
    assert anchor.latest_anchor(store) == (written["seq"], written["hash"])
    assert anchor.verify_with_latest_anchor(cat, store).ok

    # The anchor object cannot be deleted while its retention runs.
    (v,) = [v for v in store.versions("audit-anchor", anchor.PREFIX) if written["hash"] in v.key]
    assert store.purge("audit-anchor", [(v.key, v.version_id)])[0][2] == "AccessDenied"

    # Cut the tail the way an insider with database access would: drop the
    # append-only triggers, delete the newest records and rewind the head.
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.execute("DROP TRIGGER audit_records_no_delete")
    seq = written["seq"]
    db.execute("DELETE FROM audit_records WHERE seq >= ?", (seq - 2,))
    prev = db.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
    db.execute("UPDATE audit_head SET seq = ?, hash = ?", prev)
    db.commit()
    db.close()
    assert cat.audit.verify().ok  # the chain alone looks intact ...
    result = anchor.verify_with_latest_anchor(cat, store)
    assert not result.ok  # ... the anchor does not
    assert result.code in ("ANCHOR_MISSING", "ANCHOR_MISMATCH")
