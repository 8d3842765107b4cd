"""Deletion certificates: stored in the catalog and written to the audit chain together."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import Connection, insert, select

from imaging_lifecycle.catalog.audit import canonical_json
from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import _check_id, _label
from imaging_lifecycle.catalog.schema import certificates


class CertificatesMixin(CatalogBase):
    """Deletion certificates: issue and list."""

    def add_certificate(self, object_id: str, *, scope: str, body: dict, actor: str,
                        session: Connection | None = None) -> str:
        """Store a deletion certificate and write it to the audit chain (same transaction). Returns its id."""
        (cert_id,) = self.add_certificates([(object_id, scope, body)], actor=actor, session=session)
        return cert_id

    def add_certificates(self, certs: list[tuple[str, str, dict]], *, actor: str,
                         session: Connection | None = None) -> list[str]:
        """:meth:`add_certificate` for many ``(object_id, scope, body)``: one insert, then each one's audit record."""
        rows, records = [], []
        for object_id, scope, body in certs:
            _check_id(object_id)
            cert_id = uuid.uuid4().hex
            issued = _now()
            stored = {**body, "certificate_id": cert_id, "issued_at": issued.isoformat().replace("+00:00", "Z")}
            rows.append({"id": cert_id, "object_id": object_id, "scope": _label("scope", scope),
                         "body": canonical_json(stored), "issued_at": issued})
            # The audit record carries the certificate minus its times and actor (the record's own
            # ts and actor fields hold those; date-like strings are refused in audit detail by design).
            records.append((object_id, {k: v for k, v in stored.items() if not k.endswith("_at") and k != "actor"}))
        with self.db.write(session) as conn:
            if rows:
                conn.execute(insert(certificates), rows)
            for object_id, chained in records:
                self.audit.append(actor, "deletion.certificate", object_ref=object_id, detail=chained, session=conn)
        return [r["id"] for r in rows]

    def certificates(self, object_id: str) -> list[dict]:
        """The object's deletion certificates, oldest first (each the stored JSON body)."""
        _check_id(object_id)
        with self.db.read() as conn:
            rows = conn.execute(select(certificates.c.body).where(certificates.c.object_id == object_id)
                                .order_by(certificates.c.issued_at, certificates.c.id)).all()
        return [json.loads(r.body) for r in rows]
