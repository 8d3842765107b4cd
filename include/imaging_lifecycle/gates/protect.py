"""Gates of the protect DAG.

* after classification: every object has a tier (1..5) and the rule that decided it;
* closing: every object is STORED with a key id and a ciphertext hash, and no
  stored copy begins like a DICOM file (the object store never holds plaintext).
"""

from __future__ import annotations

from imaging_lifecycle.gates import Expectation, GateResult, run_gate

CLASSIFIED_COLUMNS = ["catalog_id", "tier", "rule_id"]
CLASSIFIED_SUITE = [
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "tier"}),
    Expectation("ExpectColumnValuesToBeBetween", {"column": "tier", "min_value": 1, "max_value": 5}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "rule_id"}),
]

CLOSING_COLUMNS = ["catalog_id", "state", "key_id", "ciphertext_sha256", "looks_like_dicom"]
CLOSING_SUITE = [
    Expectation("ExpectColumnValuesToBeInSet", {"column": "state", "value_set": ["STORED", "BACKED_UP"]}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "key_id"}),
    Expectation("ExpectColumnValuesToMatchRegex", {"column": "ciphertext_sha256", "regex": r"^[0-9a-f]{64}$"}),
    Expectation("ExpectColumnValuesToNotBeNull", {"column": "ciphertext_sha256"}),
    Expectation("ExpectColumnValuesToBeInSet", {"column": "looks_like_dicom", "value_set": [False]}),
]


def check_classified(rows: list[dict]) -> GateResult:
    return run_gate("classified", rows, CLASSIFIED_SUITE, columns=CLASSIFIED_COLUMNS)


def check_closing(rows: list[dict]) -> GateResult:
    return run_gate("protect-closing", rows, CLOSING_SUITE, columns=CLOSING_COLUMNS)
