"""Named crash points, for tests that prove a kill at the worst moment loses nothing.

``IL_CRASH_AT=<point>`` makes the process die at that point with
``os._exit`` -- no cleanup, no exception handlers, no flushing -- exactly as a
kill -9 or a power cut would. Unset (always, in production), a point costs
one or two dictionary lookups.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86


#: ``IL_FAULT_PAUSES=1``: a point also holds while ``<IL_STATE_DIR>/faults/<point>`` exists (one host's
#: state folder, so a test can stop one worker mid-task and kill it there); it first writes ``<point>.hit``.
PAUSES_ENV = "IL_FAULT_PAUSES"
MAX_PAUSE_SECONDS = 600.0


def point(name: str) -> None:
    if os.environ.get("IL_CRASH_AT") == name:
        os._exit(CRASH_EXIT_CODE)
    if os.environ.get(PAUSES_ENV) == "1":
        _pause(name)


def _pause(name: str) -> None:
    import time

    folder = os.path.join(os.environ.get("IL_STATE_DIR", ""), "faults")
    hold = os.path.join(folder, name)
    if not os.path.exists(hold):
        return
    with open(hold + ".hit", "a") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + MAX_PAUSE_SECONDS
    while os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.2)
