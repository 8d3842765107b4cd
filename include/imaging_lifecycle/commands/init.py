"""``imaging-lifecycle init``: create the storage zones and the catalog tables (idempotent).

Run as the owners: the object stores' admin identity creates the buckets, and ``IL_CATALOG_URL``
is the catalog owner's connection; with ``IL_CATALOG_PIPELINE_ROLE`` (PostgreSQL) that role is
then granted what the pipeline needs and no more.

``platform up`` does this for the embedded platform; a deployment such as
docker-compose runs it once before the Airflow components start.
"""

from __future__ import annotations

HELP = "create the storage zones (buckets) and the lifecycle catalog's tables; safe to run again"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    import os

    from imaging_lifecycle.services import Services
    from imaging_lifecycle.settings import admin_settings
    from imaging_lifecycle.storage import ObjectStore

    placeholders = sorted(k for k, v in os.environ.items() if v == "CHANGE_ME")
    if placeholders:  # .env.example copied without filling in the secrets
        print(f"refusing to start: replace CHANGE_ME in .env for {', '.join(placeholders)}")
        return 2
    svc = Services.open()
    # Buckets are made by the object stores' admin identity; the pipeline's own cannot create them.
    created = ObjectStore(admin_settings(svc.settings)).ensure_zones()
    svc.guard("init", actor="system:init")  # creates the catalog's tables and records the platform's policy
    role = os.environ.get("IL_CATALOG_PIPELINE_ROLE")
    if role:  # init runs as the catalog's owner; the pipeline connects as this role, which owns nothing
        svc.catalog.db.grant_pipeline_role(role)
        print(f"catalog: role {role} may read and write the catalog, and only append to the audit trail")
    print(f"storage zones ready ({len(created)} created); catalog ready; policy {svc.policy.fingerprint[:12]}")
    return 0
