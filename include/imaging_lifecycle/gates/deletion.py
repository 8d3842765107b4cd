"""The safety gate of the sweeper: nothing is deleted unless every candidate may be.

One row per candidate (an object to delete whole, or one expired copy). The
suite fails the *whole* run, deleting nothing, if any candidate

* is not past its deadline (``overdue_seconds`` null or negative),
* is under legal hold,
* lacks a backup its tier requires (an object whose history is wrong must be
  looked at by a person, not erased), or
* is in a state that forbids deletion (``kind_state`` = ``<kind>:<state>``
  outside :data:`DELETABLE`).

The rows carry catalog ids, states, booleans and second counts only.
"""

from __future__ import annotations

from imaging_lifecycle.catalog.states import DELETED, DELETING, EXPIRABLE, EXPIRED, TRANSITIONS
from imaging_lifecycle.gates import Expectation, GateResult, run_gate

#: ``kind:state`` pairs the sweeper may act on. Whole objects: those that may
#: expire, or whose deletion already started. A single expired copy (a cache
#: working copy) or a grant: any object that still exists.
DELETABLE: list[str] = sorted(
    [f"object:{s}" for s in EXPIRABLE | {EXPIRED, DELETING}]
    + [f"{kind}:{s}" for kind in ("copy", "grant") for s in TRANSITIONS if s != DELETED]
)

COLUMNS = ["ref", "kind_state", "overdue_seconds", "legal_hold", "backup_ok"]
SUITE = [
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "ref"}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "overdue_seconds"}),
    Expectation("ExpectColumnValuesToBeBetween", {"column": "overdue_seconds", "min_value": 0}),
    Expectation("ExpectColumnValuesToBeInSet", {"column": "legal_hold", "value_set": [False]}),
    Expectation("ExpectColumnValuesToBeInSet", {"column": "backup_ok", "value_set": [True]}),
    Expectation("ExpectColumnValuesToBeInSet", {"column": "kind_state", "value_set": DELETABLE}),
]


def check(rows: list[dict]) -> GateResult:
    return run_gate("deletion-safety", rows, SUITE, columns=COLUMNS)
