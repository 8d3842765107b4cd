"""The review queue and a reviewer's decisions: release with a mask (re-gated), release, reject.

Stage functions against real S3 and a real catalog; the review DAG itself, end to end through
Airflow's REST API, is in test_platform_e2e.
"""

from __future__ import annotations

import pytest

from imaging_lifecycle.services import Services
from test_protect import protect_all

from conftest import catalog, ingest_now

REVIEWER = "dr-review"


@pytest.fixture
def held(env):
    """Three ultrasound images: a burned-in-text modality with no mask for their size, so all are held."""
    from imaging_lifecycle.synthetic import Patient, write_study

    write_study(env.landing_dir / "us", Patient("5150"), instances=3, modality="US", body_part="ABDOMEN")
    ingest_now(env)
    protect_all(env)
    from imaging_lifecycle import review

    ids = review.waiting(Services.open(env))
    assert len(ids) == 3
    return ids


def _research_pixels(env, oid):
    """The pixels of the derivative released for ``oid``, decrypted from the research zone."""
    import io

    import pydicom

    cat = catalog(env)
    (d,) = [o for o in cat.objects() if o.source == f"derived:{oid}"]
    (copy,) = cat.copies(d.id)
    svc = Services.open(env)
    with svc.encrypted.open(cat.sealed(copy, d.sha256, d.size), d.id) as r:
        return pydicom.dcmread(io.BytesIO(r.read())).pixel_array


def test_the_reviewer_sees_codes_and_a_thumbnail_of_the_deidentified_pixels(env, held):
    import base64
    import re
    import struct

    from imaging_lifecycle import review
    from imaging_lifecycle.synthetic import Patient

    item = review.describe(Services.open(env), held[0])
    assert held[0] in item.body and "burned-in" in item.body
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", item.body).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", png[16:24]) == (64, 64)
    for marker in Patient("5150").markers():  # never the original header
        assert marker not in item.body and marker not in item.subject


def test_release_with_a_mask_reject_and_release(env, held):
    from imaging_lifecycle import review

    masked, rejected, plain = held
    svc = Services.open(env)
    out = review.decide(svc, masked, choice=review.RELEASE_MASKED, masks=[[0, 0, 16, 8]], reviewer=REVIEWER)
    assert out["released"] is True
    pixels = _research_pixels(env, masked)
    assert not pixels[0:8, 0:16].any() and pixels[8:, 16:].any()  # blanked where asked, and only there
    assert review.decide(svc, rejected, choice=review.REJECT, masks=None, reviewer=REVIEWER)["released"] is False
    assert review.decide(svc, plain, choice=review.RELEASE, masks=None, reviewer=REVIEWER)["released"] is True
    cat = catalog(env)
    assert cat.get(masked).flagged is None and cat.get(plain).flagged is None
    assert cat.get(rejected).flagged == review.REJECTED
    assert not [o for o in cat.objects() if o.source == f"derived:{rejected}"]
    assert review.waiting(svc) == [] and review.queue(svc) == []
    decisions = [r for r in cat.audit.records() if r.action == "review.decision"]
    assert [(r.actor, r.object_ref, r.detail["choice"]) for r in decisions] == [
        (REVIEWER, masked, "release_with_mask"), (REVIEWER, rejected, "reject"), (REVIEWER, plain, "release")]
    # the released derivatives passed their own gate, recorded before their research copies
    gates = [r.seq for r in cat.audit.records() if r.action == "gate.run" and r.actor == REVIEWER]
    assert len(gates) == 2


@pytest.mark.parametrize("bad", ["unknown choice", "mask outside the image", "mask without rectangles",
                                 "not held"])
def test_bad_decisions_are_refused_and_change_nothing(env, held, bad):
    from imaging_lifecycle import review

    svc = Services.open(env)
    args = {"unknown choice": dict(choice="publish", masks=None),
            "mask outside the image": dict(choice=review.RELEASE_MASKED, masks=[[60, 60, 10, 10]]),
            "mask without rectangles": dict(choice=review.RELEASE_MASKED, masks=[]),
            "not held": dict(choice=review.RELEASE, masks=None)}[bad]
    target = held[0]
    if bad == "not held":
        review.decide(svc, target, choice=review.REJECT, masks=None, reviewer=REVIEWER)
        before = catalog(env).get(target).flagged
    else:
        before = catalog(env).get(target).flagged
    with pytest.raises(ValueError):
        review.decide(svc, target, reviewer=REVIEWER, **args)
    assert catalog(env).get(target).flagged == before
    assert not [o for o in catalog(env).objects() if o.source == f"derived:{target}"]


def test_a_decided_item_is_no_longer_waiting(env, held):
    """What a retried review request checks first, so a decision is never asked (or applied) twice."""
    from imaging_lifecycle import review

    svc = Services.open(env)
    assert review.is_waiting(svc, held[0])
    review.decide(svc, held[0], choice=review.REJECT, masks=None, reviewer=REVIEWER)
    assert not review.is_waiting(svc, held[0]) and review.is_waiting(svc, held[1])
