"""The policy the platform runs under: one recorded fingerprint, adopted and audited."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from imaging_lifecycle.catalog.base import CatalogBase, _now
from imaging_lifecycle.catalog.checks import _sha256
from imaging_lifecycle.catalog.schema import platform_policy

_ROW = 1


class PlatformPolicyMixin(CatalogBase):
    """Which policy fingerprint is in force for the platform (``services.Services.guard`` compares against it)."""

    def platform_policy(self, *, adopt: str | None = None, actor: str | None = None) -> str | None:
        """The recorded fingerprint; with ``adopt``, record that one first if none is recorded yet (audited)."""
        if adopt is None:
            with self.db.read() as conn:
                return conn.execute(select(platform_policy.c.fingerprint).where(platform_policy.c.id == _ROW)).scalar()
        fingerprint = _sha256("policy_fingerprint", adopt)
        with self.db.write() as conn:
            current = conn.execute(select(platform_policy.c.fingerprint).where(platform_policy.c.id == _ROW)).scalar()
            if current is None:
                conn.execute(insert(platform_policy).values(id=_ROW, fingerprint=fingerprint, adopted_at=_now(),
                                                            adopted_by=actor or "system"))
                self.audit.append(actor or "system", "policy.adopt", session=conn,
                                  detail={"policy": fingerprint, "previous": None, "how": "first_use"})
                current = fingerprint
        return current

    def adopt_policy(self, fingerprint: str, *, actor: str, source: str | None = None) -> None:
        """Make ``fingerprint`` the platform's policy (audited with the one it replaces)."""
        fingerprint = _sha256("policy_fingerprint", fingerprint)
        with self.db.write() as conn:
            current = conn.execute(select(platform_policy.c.fingerprint).where(platform_policy.c.id == _ROW)).scalar()
            values = {"fingerprint": fingerprint, "adopted_at": _now(), "adopted_by": actor,
                      "source": (source or "")[:512] or None}
            if current is None:
                conn.execute(insert(platform_policy).values(id=_ROW, **values))
            else:
                conn.execute(update(platform_policy).where(platform_policy.c.id == _ROW).values(**values))
            self.audit.append(actor, "policy.adopt", session=conn,
                              detail={"policy": fingerprint, "previous": current, "how": "adopted"})
