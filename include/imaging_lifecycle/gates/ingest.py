"""The ingest gate: one row per object the batch registered (quarantined ones are already dealt with).

It expects what issue #3 asks of a batch manifest -- a catalog id, a SHA-256,
UIDs present, unique SOP Instance UIDs, size > 0 -- plus what "durably stored"
means here: the object is VALIDATED, with a ciphertext hash and a data key.
UIDs are represented by their keyed digests, so the table holds no identifier.
"""

from __future__ import annotations

from imaging_lifecycle.gates import Expectation, GateResult, run_gate

SHA256 = r"^[0-9a-f]{64}$"
COLUMNS = ["catalog_id", "sha256", "sop_key", "study_key", "series_key", "sop_class_uid", "size", "state",
           "ciphertext_sha256", "key_id"]

SUITE = [
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "catalog_id"}),
    Expectation("ExpectColumnValuesToBeUnique", {"column": "catalog_id"}),
    Expectation("ExpectColumnValuesToMatchRegex", {"column": "sha256", "regex": SHA256}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "sha256"}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "sop_key"}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "study_key"}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "series_key"}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "sop_class_uid"}),
    Expectation("ExpectColumnValuesToBeUnique", {"column": "sop_key"}),
    Expectation("ExpectColumnValuesToBeBetween", {"column": "size", "min_value": 1}),
    Expectation("ExpectColumnValuesToBeInSet", {"column": "state", "value_set": ["VALIDATED"]}),
    Expectation("ExpectColumnValuesToMatchRegex", {"column": "ciphertext_sha256", "regex": SHA256}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "ciphertext_sha256"}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "key_id"}),
]


def rows_for(catalog, batch_id: str) -> list[dict]:
    return [
        {"catalog_id": o.id, "sha256": o.sha256, "sop_key": o.sop_key, "study_key": o.study_key,
         "series_key": o.series_key, "sop_class_uid": o.sop_class_uid, "size": o.size, "state": o.state,
         "ciphertext_sha256": o.ciphertext_sha256, "key_id": o.key_id}
        for o in catalog.objects(batch_id=batch_id)
        if o.quarantine_reason is None
    ]


def check(rows: list[dict]) -> GateResult:
    return run_gate("ingest", rows, SUITE, columns=COLUMNS)


def check_batch(catalog, batch_id: str) -> GateResult:
    return check(rows_for(catalog, batch_id))
