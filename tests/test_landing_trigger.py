"""The landing trigger: one event per complete batch, and again if files are left behind."""

from __future__ import annotations

import asyncio

from imaging_lifecycle.triggers import LandingBatchTrigger


async def _events(trigger, seconds: float) -> list[dict]:
    out = []

    async def collect():
        async for ev in trigger.run():
            out.append(ev.payload)

    try:
        await asyncio.wait_for(collect(), seconds)
    except TimeoutError:
        pass
    return out


def test_fires_once_per_quiet_batch_never_while_files_are_written(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x" * 10)
    (tmp_path / "b.part").write_bytes(b"in progress")  # ignored: still being written
    trig = LandingBatchTrigger(str(tmp_path), quiet_seconds=0.5, poll_seconds=0.1, refire_seconds=60)
    events = asyncio.run(_events(trig, 2.0))
    from imaging_lifecycle import landing

    # The triggerer runs on the landing host: the folder gets its identity, and each event names it.
    assert events == [{"files": 1, "bytes": 10, "batch": events[0]["batch"], "landing": landing.identity(tmp_path)}]
    assert "a.dcm" not in str(events)  # counts only, never names


def test_fires_again_when_the_same_files_stay(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x")
    trig = LandingBatchTrigger(str(tmp_path), quiet_seconds=0.2, poll_seconds=0.1, refire_seconds=0.8)
    assert len(asyncio.run(_events(trig, 2.2))) >= 2


def test_an_empty_or_missing_folder_never_fires(tmp_path):
    trig = LandingBatchTrigger(str(tmp_path / "missing"), quiet_seconds=0.1, poll_seconds=0.05)
    assert asyncio.run(_events(trig, 0.8)) == []


def test_serialize_round_trips(tmp_path):
    trig = LandingBatchTrigger(str(tmp_path), quiet_seconds=3)
    path, kwargs = trig.serialize()
    assert path == "imaging_lifecycle.triggers.LandingBatchTrigger"
    assert LandingBatchTrigger(**kwargs).serialize() == (path, kwargs)
