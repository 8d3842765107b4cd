"""Retention durations as policy authors write them: ``72h``, ``30d``, ``15y``.

A year is 365 days. Retention is a legal promise, so the grammar is tiny and
strict: one positive integer and one unit, nothing else ("1.5y", "-3d",
"30 days" are all rejected). A typo must fail the policy load, not become a
surprising number.
"""

from __future__ import annotations

import re
from datetime import timedelta

#: unit -> length of one unit
UNITS: dict[str, timedelta] = {
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "y": timedelta(days=365),
}

_DURATION = re.compile(r"^([1-9][0-9]{0,5})([a-z])$")


def parse_duration(text: object) -> timedelta:
    """``"72h"`` -> ``timedelta(hours=72)``; raises ``ValueError`` naming the accepted form."""
    if isinstance(text, timedelta):
        if text <= timedelta(0):
            raise ValueError("duration must be positive")
        return text
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '72h', '30d' or '15y', not {type(text).__name__}")
    m = _DURATION.match(text.strip())
    if not m or m.group(2) not in UNITS:
        raise ValueError(
            f"duration {text!r} is not <positive integer><unit> with unit one of {', '.join(UNITS)} "
            "(e.g. 72h, 30d, 15y)"
        )
    return int(m.group(1)) * UNITS[m.group(2)]


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of ``value`` in the policy grammar (for messages and dumps)."""
    for unit in ("y", "w", "d", "h"):
        n, rest = divmod(value, UNITS[unit])
        if not rest and n:
            return f"{n}{unit}"
    return str(value)
