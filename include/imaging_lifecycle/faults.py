"""Named crash points, for tests that prove a kill at the worst moment loses nothing.

``IL_CRASH_AT=<point>`` makes the process die at that point with
``os._exit`` -- no cleanup, no exception handlers, no flushing -- exactly as a
kill -9 or a power cut would. Unset (always, in production), a point costs
one dictionary lookup.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86


def point(name: str) -> None:
    if os.environ.get("IL_CRASH_AT") == name:
        os._exit(CRASH_EXIT_CODE)
