"""``imaging-lifecycle status``: is each component of the platform up?"""

from __future__ import annotations

import json
import os
from pathlib import Path

HELP = "report whether the object stores, the catalog and Airflow are up (exit 0 only if all are)"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def check() -> dict[str, dict]:
    from sqlalchemy import create_engine, text

    from imaging_lifecycle import embedded
    from imaging_lifecycle.embedded import airflow_health
    from imaging_lifecycle.settings import load_settings
    from imaging_lifecycle.storage import ping

    settings = load_settings()
    celery = embedded.recorded_executor(settings) == "celery"
    if celery and "IL_CATALOG_URL" not in os.environ and embedded.catalog_url_file(settings).exists():
        from dataclasses import replace

        # The celery mode's catalog is its PostgreSQL (the pipeline's role), not the SQLite default.
        settings = replace(settings, catalog_url=embedded.catalog_url_file(settings).read_text().strip())
    out: dict[str, dict] = {}
    for name, ep in (("object-store-primary", settings.primary), ("object-store-backup", settings.backup)):
        if ep is None:
            out[name] = {"up": False, "detail": "no credentials (platform never started, no AIRFLOW_CONN_ set)"}
        else:
            up, detail = ping(ep)
            out[name] = {"up": up, "detail": f"{ep.endpoint}: {detail}"}
    sqlite_path = (settings.catalog_url.split("sqlite:///", 1)[1] if settings.catalog_url.startswith("sqlite:///")
                   else None)
    try:
        if sqlite_path is not None and not Path(sqlite_path).exists():
            raise FileNotFoundError  # connecting would create an empty file; status must not
        engine = create_engine(settings.catalog_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        out["catalog"] = {"up": True, "detail": settings.catalog_url.split("@")[-1]}
    except Exception as exc:
        out["catalog"] = {"up": False, "detail": type(exc).__name__}
    if celery:  # the production shape: the broker and each worker (over the broker) too
        port = settings.port("redis")
        up = embedded.redis_ping(settings)
        out["broker"] = {"up": up, "detail": f"redis 127.0.0.1:{port}" + ("" if up else ": no answer to AUTH+PING")}
        broker = embedded.backends(settings).broker
        for name in embedded.WORKERS:
            up = embedded.celery_ping(broker, name)
            out[name] = {
                "up": up, "detail": f"celery@{name}: " + ("answers ping" if up else "no answer")}
    health = airflow_health(settings)
    if health is None:
        out["airflow"] = {"up": False, "detail": f"{settings.airflow_url}: no answer"}
    else:
        parts = {k: (v or {}).get("status") for k, v in health.items()}
        up = all(s == "healthy" for k, s in parts.items() if k in ("metadatabase", "scheduler"))
        out["airflow"] = {"up": up, "detail": ", ".join(f"{k}={v}" for k, v in parts.items())}
    return out


def run(args) -> int:
    result = check()
    if args.json:
        print(json.dumps(result))
    else:
        for name, r in result.items():
            print(f"{name:22} {'up' if r['up'] else 'DOWN':5} {r['detail']}")
    return 0 if all(r["up"] for r in result.values()) else 3
