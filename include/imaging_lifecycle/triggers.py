"""Async event sources for Airflow's triggerer (event-driven scheduling).

:class:`LandingBatchTrigger` is used in an ``AssetWatcher``: it fires once
per complete batch in the landing folder, so one DAG run handles a whole
batch instead of one run per file. It must be importable by the triggerer
process, which is why it lives in the installed package and not in dags/.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from imaging_lifecycle.landing import snapshot


class LandingBatchTrigger(BaseEventTrigger):
    """Fire when the landing folder holds files and nothing changed for ``quiet_seconds``.

    After firing it waits for the folder to change (ingest removes the files,
    or new ones arrive) before it can fire again, so one batch gives one event.
    The event carries only counts: never a file name, which could hold an
    identifier.
    """

    def __init__(self, landing_dir: str, quiet_seconds: float = 10.0, poll_seconds: float = 1.0):
        super().__init__()
        self.landing_dir = landing_dir
        self.quiet_seconds = float(quiet_seconds)
        self.poll_seconds = float(poll_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"landing_dir": self.landing_dir, "quiet_seconds": self.quiet_seconds, "poll_seconds": self.poll_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        landing = Path(self.landing_dir)
        last_digest, stable_since, fired_digest = None, time.monotonic(), None
        while True:
            snap = await asyncio.to_thread(snapshot, landing)
            now = time.monotonic()
            if snap.digest != last_digest:
                last_digest, stable_since = snap.digest, now
            elif (
                not snap.empty
                and snap.digest != fired_digest
                and now - stable_since >= self.quiet_seconds
            ):
                fired_digest = snap.digest
                yield TriggerEvent({"files": snap.count, "bytes": snap.total_size, "batch": snap.digest[:16]})
            await asyncio.sleep(self.poll_seconds)
