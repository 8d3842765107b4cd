"""Gates of the protect DAG.

* after classification: every object has a tier of the policy and the rule that decided it;
* closing: every object is STORED with a key id and a ciphertext hash, and no
  stored copy begins like a DICOM file (the object store never holds plaintext).
"""

from __future__ import annotations

from imaging_lifecycle.gates import Expectation, GateResult, run_gate

CLASSIFIED_COLUMNS = ["catalog_id", "tier", "rule_id"]


def classified_suite(highest_tier: int) -> list[Expectation]:
    """Every object has a tier of the policy (1..its highest) and the rule that decided it."""
    return [
        Expectation("ExpectColumnValuesToNotBeNull", {"column": "tier"}),
        Expectation("ExpectColumnValuesToBeBetween", {"column": "tier", "min_value": 1, "max_value": highest_tier}),
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


def check_classified(rows: list[dict], highest_tier: int) -> GateResult:
    """Per object (keyed by catalog id): a row that fails holds back that object only."""
    return run_gate("classified", rows, classified_suite(highest_tier), columns=CLASSIFIED_COLUMNS, key="catalog_id")


def check_closing(rows: list[dict]) -> GateResult:
    """Per object (keyed by catalog id): a row that fails holds back that object only."""
    return run_gate("protect-closing", rows, CLOSING_SUITE, columns=CLOSING_COLUMNS, key="catalog_id")
