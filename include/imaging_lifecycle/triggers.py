"""Async event sources for Airflow's triggerer (event-driven scheduling).

:class:`LandingBatchTrigger` is used in an ``AssetWatcher``: it fires once
per complete batch in the landing folder, so one DAG run handles a whole
batch instead of one run per file. It must be importable by the triggerer
process, which is why it lives in the installed package and not in dags/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from imaging_lifecycle.landing import ensure_identity, snapshot


class LandingBatchTrigger(BaseEventTrigger):
    """Fire when the landing folder holds files and nothing changed for ``quiet_seconds``.

    After firing it waits for the folder to change (ingest removes the files,
    or new ones arrive) before it can fire again, so one batch gives one event.
    If the same files are still there ``refire_seconds`` later (the run
    failed, or they have a future mtime), it fires again: files are never
    left waiting for an event that will not come.
    The event carries only counts and the landing folder's identity (the
    triggerer runs on the landing host, so it gives the folder one if it has
    none): never a file name, which could hold an identifier. The claim checks
    that identity, so a claim on another host fails instead of finding nothing.
    """

    def __init__(self, landing_dir: str, quiet_seconds: float = 10.0, poll_seconds: float = 1.0,
                 refire_seconds: float | None = None):
        super().__init__()
        self.landing_dir = landing_dir
        self.quiet_seconds = float(quiet_seconds)
        self.poll_seconds = float(poll_seconds)
        self.refire_seconds = float(refire_seconds if refire_seconds is not None else max(120.0, 10 * quiet_seconds))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"landing_dir": self.landing_dir, "quiet_seconds": self.quiet_seconds, "poll_seconds": self.poll_seconds,
             "refire_seconds": self.refire_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        landing = Path(self.landing_dir)
        await asyncio.to_thread(ensure_identity, landing)
        last_digest, stable_since, fired_digest, fired_at = None, time.monotonic(), None, 0.0
        while True:
            snap = await asyncio.to_thread(snapshot, landing)
            now = time.monotonic()
            if snap.digest != last_digest:
                last_digest, stable_since = snap.digest, now
            elif (
                not snap.empty
                and now - stable_since >= self.quiet_seconds
                and (snap.digest != fired_digest or now - fired_at >= self.refire_seconds)
            ):
                fired_digest, fired_at = snap.digest, now
                landing_id = await asyncio.to_thread(ensure_identity, landing)  # read again: the folder may be new
                yield TriggerEvent({"files": snap.count, "bytes": snap.total_size, "batch": snap.digest[:16],
                                    "landing": landing_id})
            await asyncio.sleep(self.poll_seconds)
