"""DICOM de-identification per PS3.15 Annex E (Basic Profile and options), driven by the policy.

``Deidentifier(policy, key).deidentify(ds)`` returns a :class:`DeidResult`:
the de-identified dataset, whether it needs review (burned-in text), the
re-identification map (in memory only, for the caller to encrypt) and counts
of what was done.
"""

from imaging_lifecycle.deid.engine import (
    Deidentifier,
    DeidError,
    DeidResult,
    output_name,
    write_dataset,
)
from imaging_lifecycle.deid.reid import ReidEntry, ReidMap
from imaging_lifecycle.deid.table import TABLE_EDITION, TABLE_SOURCE, effective_actions, load_table

__all__ = [
    "TABLE_EDITION",
    "TABLE_SOURCE",
    "DeidError",
    "DeidResult",
    "Deidentifier",
    "ReidEntry",
    "ReidMap",
    "effective_actions",
    "load_table",
    "output_name",
    "write_dataset",
]
