"""Validation gates: Great Expectations suites that stand between lifecycle stages.

A gate runs a suite over a table (one row per object) and either passes or
raises :class:`GateFailed`. What a gate reports -- the failed expectation, the
column and the count -- never includes a cell value, because cells can hold
patient data. Great Expectations puts sample values in
``partial_unexpected_list``; :func:`run_gate` throws those away.

Each stage's suite lives in its own module here (``ingest``, ``deid``, ...),
built from :class:`Expectation` rows, so a suite reads as data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expectation:
    """One row of a suite: a GX expectation class name and its keyword arguments."""

    kind: str  # e.g. "ExpectColumnValuesToNotBeNull"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    expectation: str  # snake_case GX type, e.g. expect_column_values_to_not_be_null
    column: str | None
    unexpected_count: int | None


@dataclass(frozen=True)
class GateResult:
    gate: str
    success: bool
    rows: int
    failures: tuple[Failure, ...] = ()
    #: For a gate run with a ``key`` column: key (a catalog id) -> the columns its row failed on.
    failed: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe summary for XCom, logs and audit: names, counts and catalog ids only."""
        return {
            "gate": self.gate,
            "success": self.success,
            "rows": self.rows,
            "failures": [asdict(f) for f in self.failures],
            "held": sorted(self.failed),
        }

    def passed(self, key: str) -> bool:
        """Did the row of ``key`` pass every expectation? (Needs a gate run with ``key``.)"""
        return self.rows > 0 and key not in self.failed


class GateFailed(RuntimeError):
    """A gate failed; the message names the expectations and counts, no values."""

    def __init__(self, result: GateResult):
        self.result = result
        parts = ", ".join(
            f"{f.expectation}({f.column or '-'}): {f.unexpected_count} unexpected" for f in result.failures
        )
        super().__init__(f"gate {result.gate!r} failed over {result.rows} rows: {parts or 'no rows'}")


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, ctx


def run_gate(name: str, rows: list[dict[str, Any]], suite: Iterable[Expectation], *, columns: list[str],
             key: str | None = None) -> GateResult:
    """Validate ``rows`` (one dict per object) against ``suite``.

    ``columns`` fixes the table's shape so that an empty batch, or rows missing
    a key, still validates against the columns the suite names. An empty batch
    fails: a gate that saw nothing must not let anything through.

    With ``key`` (a column of catalog ids), the result also says which rows
    failed which expectations (:attr:`GateResult.failed`), so a stage can hold
    back just those objects and let the rest go on. Only the key column is
    kept from GX's unexpected rows; the other cells are thrown away.
    """
    import pandas as pd

    if not rows:
        return GateResult(name, False, 0, (Failure("expect_table_row_count_to_be_between", None, 0),))
    df = pd.DataFrame(rows, columns=columns)
    gx, ctx = _context()
    batch = (
        ctx.data_sources.add_pandas(f"{name}-source")
        .add_dataframe_asset(f"{name}-asset")
        .add_batch_definition_whole_dataframe(f"{name}-batch")
        .get_batch(batch_parameters={"dataframe": df})
    )
    gx_suite = gx.ExpectationSuite(name=name)
    for exp in suite:
        gx_suite.add_expectation(getattr(gx.expectations, exp.kind)(**exp.kwargs))
    result_format: Any = "SUMMARY"
    if key is not None:
        result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [key],
                         "return_unexpected_index_query": False, "partial_unexpected_count": 0}
    outcome = batch.validate(gx_suite, result_format=result_format)
    failures = tuple(
        Failure(
            r.expectation_config.type,
            r.expectation_config.kwargs.get("column"),
            (r.result or {}).get("unexpected_count"),
        )
        for r in outcome.results
        if not r.success
    )
    failed: dict[str, tuple[str, ...]] = {}
    if key is not None:
        for r in outcome.results:
            if r.success:
                continue
            column = r.expectation_config.kwargs.get("column") or r.expectation_config.type
            for index in (r.result or {}).get("unexpected_index_list") or ():
                k = str(index.get(key))
                failed[k] = (*failed.get(k, ()), column)
    result = GateResult(name, bool(outcome.success), len(df), failures, failed)
    log.info("gate %s: %s", name, result.summary())
    return result


def enforce(result: GateResult) -> GateResult:
    """Raise :class:`GateFailed` unless the gate passed."""
    if not result.success:
        raise GateFailed(result)
    return result


def record(catalog, result: GateResult, *, actor: str, session=None) -> GateResult:  # noqa: ANN001
    """Audit a gate's verdict (``gate.run``, success or failure): name, rows, failed checks and held objects."""
    catalog.audit.append(actor, "gate.run", outcome="success" if result.success else "failure",
                         detail={"gate": result.gate, "ok": result.success, "rows": result.rows,
                                 "failed": len(result.failures), "held": len(result.failed)}, session=session)
    return result


def enforce_recorded(catalog, result: GateResult, *, actor: str, session=None) -> GateResult:  # noqa: ANN001
    """A whole-batch gate: audit its verdict, then raise :class:`GateFailed` unless it passed."""
    return enforce(record(catalog, result, actor=actor, session=session))
