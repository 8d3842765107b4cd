"""``imaging-lifecycle init``: create the storage zones and the catalog tables (idempotent).

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

    placeholders = sorted(k for k, v in os.environ.items() if v == "CHANGE_ME")
    if placeholders:  # .env.example copied without filling in the secrets
        print(f"refusing to start: replace CHANGE_ME in .env for {', '.join(placeholders)}")
        return 2
    svc = Services.open()
    created = svc.store.ensure_zones()
    svc.guard("init", actor="system:init")  # creates the catalog's tables and records the platform's policy
    print(f"storage zones ready ({len(created)} created); catalog ready; policy {svc.policy.fingerprint[:12]}")
    return 0
