"""The review queue: objects a gate or the de-identification engine held back, waiting for a person.

What is in it, by flag:

* ``BURNED_IN`` and other engine reasons (``DEID_<code>``): no derivative was
  made; the original is stored and backed up as usual;
* ``DEID_GATE``: a derivative was made but its own gate row failed, so it was
  never released to the research zone;
* ``GATE_CLASSIFIED`` / ``GATE_CLOSING``: the object failed a per-object
  protect gate and no later step takes it.

Entries name catalog ids, states, flags, tiers and SOP classes, never a
patient identifier. (Deciding an item, a human-in-the-loop review DAG, is
the review workflow still to come.)
"""

from __future__ import annotations

from imaging_lifecycle.services import Services


def queue(svc: Services, *, limit: int = 1000) -> list[dict]:
    """The review queue, oldest first (what ``imaging-lifecycle review list --json`` prints)."""
    return [{"catalog_id": o.id, "state": o.state, "flag": o.flagged, "tier": o.tier, "sop_class_uid": o.sop_class_uid,
             "derived": bool(o.source and o.source.startswith("derived:"))}
            for o in svc.catalog.flagged_objects(limit=limit)]
