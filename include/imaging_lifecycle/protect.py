"""Protect: from a staged original to a classified, (de-identified,) encrypted, stored object.

The ``protect`` DAG runs these steps, each a plain function over catalog ids
that takes the :class:`~imaging_lifecycle.services.Services` of its task:

* :func:`pending_chunks` lists what is still to protect, from batches whose
  ingest gate passed.

* :func:`classify_objects` decrypts each staged original (headers only),
  classifies it under the policy (fail closed) and records tier and rule.
* :func:`deidentify_objects` makes the de-identified derivative for tiers
  whose policy asks for one. A derivative is an object of its own (tier of
  de-identified data, research zone); images that may carry burned-in text
  are held in NEEDS_REVIEW instead, visibly, and never released unreviewed.
* :func:`store_objects` re-encrypts the original when its tier differs from
  the staging tier (the tier is bound into the ciphertext), reads it back,
  and moves the object to STORED with its retention deadline.
* :func:`backup_objects` replicates what the tier's policy wants backed up.
* :func:`classified_gate` and :func:`closing_gate` stand between them, and
  the de-identification gate runs inside :func:`deidentify_objects`, before
  anything is released. Every gate audits its verdict and judges **each
  object alone**: one that fails is held back (flagged, or NEEDS_REVIEW for
  de-identification) and waits for review, and the rest of the run goes on.
  The closing gate wants every object STORED with a key id and ciphertext
  hash, and no stored copy that starts like DICOM.

Plaintext exists only in memory or in 0600 temporary files under the state
folder, removed in ``finally`` blocks.
"""

from __future__ import annotations

import datetime as dt
import io
from contextlib import contextmanager

from imaging_lifecycle.catalog import states
from imaging_lifecycle.dicomfile import UnreadableDicom, read_dataset, read_header
from imaging_lifecycle.services import Services
from imaging_lifecycle.staging import private_tmp

RESEARCH_ZONE = "research"
REID_PREFIX = "reid/"
CHUNK = 100  # at most, per mapped task; chunks are made even (services.even_chunks)


class NoArchiveCopy(LookupError):
    """An object to be read back has no live copy of its content in the archive (names ids only)."""


def originals(svc: Services, objs: list) -> dict:
    """Each object's archived original as (copy, sealed): its own content in the archive (not its
    re-identification map beside it), and what reads it back. Two catalog reads for all of them."""
    found = svc.catalog.content_copies_of(objs, ("archive", RESEARCH_ZONE))
    missing = [o.id for o in objs if not found[o.id]]
    if missing:
        raise NoArchiveCopy(f"{len(missing)} object(s) have no archive copy, e.g. {missing[0]}")
    sealed = svc.catalog.sealed_many([(found[o.id][0], o.sha256, o.size) for o in objs])
    return {o.id: (found[o.id][0], sd) for o, sd in zip(objs, sealed, strict=True)}


@contextmanager
def plaintext_file(svc: Services, obj, sealed=None):  # noqa: ANN001
    """The object's original, decrypted and verified into a private temp file, removed afterwards.

    ``sealed``: its archive copy as :func:`originals` read it for a whole chunk (else read here)."""
    sealed = sealed or originals(svc, [obj])[obj.id][1]
    # restore_to decrypts into an exclusive 0600 temp file and renames it here only once the content verified.
    path = private_tmp(svc.settings, ".dcm")
    try:
        svc.encrypted.restore_to(sealed, obj.id, path)
        yield path
    finally:
        path.unlink(missing_ok=True)


def sender(obj) -> str | None:  # noqa: ANN001
    """The sending AE title of an object our C-STORE receiver took in, else None."""
    from imaging_lifecycle.classify import sender_of

    return sender_of(obj.source)


def classify_objects(svc: Services, ids: list[str], *, actor: str) -> dict:
    """Classify each VALIDATED original under the policy in force (fail closed); records tier, rule and policy."""
    from imaging_lifecycle.classify import Classification, classify

    svc.guard("classify", actor=actor)
    policy = svc.policy
    counts: dict[str, int] = {}
    decided = []
    objs = svc.catalog.get_many(ids)
    for oid in ids:
        obj = objs.get(oid) or svc.catalog.get(oid)  # an unknown id raises UnknownObject
        if obj.state != states.VALIDATED:
            continue  # done by an earlier attempt
        if obj.tier is not None and obj.rule_id and obj.policy_fingerprint == policy.fingerprint:
            # Ingest classified it from the header it parsed, under this very policy: nothing to read again.
            result = Classification(obj.tier, obj.rule_id)
        else:  # another policy (or an object ingested before ingest classified): from the stored copy
            with plaintext_file(svc, obj) as path:
                try:
                    ds = read_header(path)
                except UnreadableDicom:
                    ds = None  # unreadable now: classify fails closed to the highest tier
                result = classify(ds, policy, source=sender(obj))
        decided.append((oid, result))
    if decided:
        with svc.catalog.transaction() as conn:  # one commit for the chunk; each change audited in it
            svc.catalog.transition_many(states.CLASSIFIED, [
                (oid, {"tier": r.tier, "rule_id": r.rule_id, "policy_fingerprint": policy.fingerprint},
                 {"tier": r.tier, "rule": r.rule_id, "policy": policy.fingerprint}) for oid, r in decided],
                actor=actor, session=conn)
        for _oid, result in decided:
            counts[f"tier{result.tier}"] = counts.get(f"tier{result.tier}", 0) + 1
    return counts


def store_objects(svc: Services, ids: list[str], *, actor: str, now: dt.datetime | None = None) -> dict:
    """Bound to the object's settled tier (re-encrypted only if ingest bound it to another), STORED with a deadline."""
    svc.guard("store", actor=actor)
    policy = svc.policy
    now = now or dt.datetime.now(dt.timezone.utc)

    objs = svc.catalog.get_many(ids)
    # NEEDS_REVIEW holds back the derivative, never the original: it is stored all the same.
    due = [o for o in (objs.get(oid) or svc.catalog.get(oid) for oid in ids)
           if not held(o) and o.state in (states.CLASSIFIED, states.DEIDENTIFIED, states.NEEDS_REVIEW,
                                          states.PROTECTED)]
    found = originals(svc, due)

    def ready(obj):  # noqa: ANN001, ANN202
        """(object, its archive copy) once bound to the object's tier, re-encrypting if need be."""
        copy, sealed = found[obj.id]
        if sealed.tier != obj.tier:
            copy = _reencrypt(svc, obj, copy, sealed, actor=actor)  # S3-bound: a few objects at once
        return obj, copy

    todo = svc.map(ready, due)
    if todo:
        with svc.catalog.transaction() as conn:  # one commit for the chunk; each change audited in it
            svc.catalog.transition_many(states.PROTECTED, [
                (obj.id, {"ciphertext_sha256": copy.ciphertext_sha256, "key_id": copy.key_id}, None)
                for obj, copy in todo if obj.state != states.PROTECTED], actor=actor, session=conn)
            svc.catalog.transition_many(states.STORED, [
                (obj.id, {"zone": "archive", "retention_deadline": now + policy.retention_for(obj.tier, "archive")},
                 None) for obj, _copy in todo], actor=actor, session=conn)
    return {"stored": len(todo)}


def _reencrypt(svc: Services, obj, old_copy, old_sealed, *, actor: str):
    """Encrypt the original again, bound to its real tier; retire the staged version and its key."""
    with plaintext_file(svc, obj, old_sealed) as path:
        sealed = svc.encrypted.put(path, catalog_id=obj.id, zone="archive", tier=obj.tier,
                               scope_id=f"study:{obj.study_key}", key=old_copy.key)
    new_copy = svc.encrypted.record(svc.catalog, obj.id, sealed, actor=actor)
    svc.encrypted.store.purge("archive", [(old_copy.key, old_copy.version_id)])
    svc.catalog.mark_copy_deleted(old_copy.id, actor=actor)
    svc.catalog.destroy_data_key(old_sealed.dek_id, actor=actor, object_id=obj.id)
    return new_copy


def closing_rows(svc: Services, ids: list[str]) -> list[dict]:
    """One row per object for the closing gate, including whether any stored copy looks like plaintext."""
    objs, copies = svc.catalog.get_many(ids), svc.catalog.copies_of(ids)

    def looks_like_dicom(c) -> bool:  # noqa: ANN001 (a 132-byte ranged GET: latency-bound, several at once)
        with svc.encrypted.store.open(c.zone, c.key, c.version_id, length=132) as r:
            head = r.read()  # read to its end: the connection is reused
        return head.startswith(b"DICM") or head[128:132] == b"DICM"

    heads = iter(svc.map(looks_like_dicom, [c for oid in ids for c in copies[oid]]))
    rows = []
    for oid in ids:
        obj = objs[oid]
        plaintext = any([next(heads) for _ in copies[oid]])  # a list: every copy's answer is consumed
        rows.append({"catalog_id": oid, "state": obj.state, "key_id": obj.key_id,
                     "ciphertext_sha256": obj.ciphertext_sha256, "looks_like_dicom": plaintext})
    return rows


# -- de-identification -------------------------------------------------------------


def deidentify_objects(svc: Services, ids: list[str], *, actor: str) -> dict:
    """Make, gate and only then release the de-identified derivative of every object whose tier asks for one.

    Per object, in this order:

    1. The engine de-identifies the original in memory. Images that may carry
       burned-in text, and input the engine refuses, go to NEEDS_REVIEW with a
       reason code; no derivative is made.
    2. The de-identification gate runs over the step's (original, derivative)
       pairs in one GX validation, with a verdict **per object**.
    3. Only a derivative whose own row passed is registered as an object of
       its own (source ``derived:<parent id>``, tier of de-identified data)
       and stored encrypted in the research zone, with the pseudonym map
       stored at the highest tier beside the original. An object whose row
       failed goes to NEEDS_REVIEW, flagged ``DEID_GATE`` with the failed
       checks' names, and waits for a reviewer: it is not retried, and the
       rest of the step goes on. Its original is stored and backed up as usual.
    """
    from imaging_lifecycle.deid import Deidentifier, DeidError
    from imaging_lifecycle.gates import deid as suite
    from imaging_lifecycle.gates import record
    from imaging_lifecycle.secretfiles import load_or_create_secret

    svc.guard("deidentify", actor=actor)
    policy = svc.policy
    engine = Deidentifier(policy, load_or_create_secret("deid-hmac", settings=svc.settings))
    counts: dict[str, int] = {}

    def count(k: str) -> None:
        counts[k] = counts.get(k, 0) + 1

    def hold(oid: str, reason: str, detail: dict) -> None:
        svc.catalog.transition(oid, states.NEEDS_REVIEW, actor=actor, flagged=reason[:64], detail=detail)
        count("needs_review")

    objs = svc.catalog.get_many(ids)
    todo = [o for o in (objs.get(oid) or svc.catalog.get(oid) for oid in ids)
            if o.state == states.CLASSIFIED and not held(o) and policy.tier(o.tier).handling.deidentify]
    sealed = {oid: sd for oid, (_copy, sd) in originals(svc, todo).items()}

    def made_from(obj) -> tuple:  # noqa: ANN001 (several at once: the GET and AES-GCM release the GIL)
        """(object, original dataset, engine result), or (object, the engine's reason code, None)."""
        with plaintext_file(svc, obj, sealed[obj.id]) as path:
            try:
                original = read_dataset(path)
                return obj, original, engine.deidentify(original, source=sender(obj), in_place=False)
            except (DeidError, UnreadableDicom) as exc:  # reason codes only: pydicom's messages quote values
                return obj, exc.reason, None

    made = []  # (object, original dataset, engine result): nothing released yet
    for obj, original, result in svc.map(made_from, todo):
        if result is None:
            hold(obj.id, f"DEID_{original}", {"reason": original})
        elif result.needs_review:
            hold(obj.id, result.review_reason or "BURNED_IN", {"reason": result.review_reason or "BURNED_IN"})
        else:
            made.append((obj, original, result))
    if not made:
        return counts
    verdict = record(svc.catalog, suite.check([(o.id, orig, r.dataset) for o, orig, r in made], policy),
                     actor=actor)
    for obj, _original, _result in made:
        if not verdict.passed(obj.id):
            hold(obj.id, "DEID_GATE", {"reason": "DEID_GATE", "checks": sorted(set(verdict.failed.get(obj.id, ())))})

    passed = [m for m in made if verdict.passed(m[0].id)]
    from imaging_lifecycle.keystore import batched

    with batched(svc.keystore):  # the chunk's studies' map KEKs, made in one key-store write
        for study_key in sorted({obj.study_key for obj, _original, _result in passed}):
            svc.encrypted.kek_for(reid_scope(study_key))
    if passed:
        release_derivatives(svc, [(obj, result) for obj, _original, result in passed], policy, actor=actor,
                            advance=True)
    for _ in passed:
        count("deidentified")
    return counts


def release_derivatives(svc: Services, items: list, policy, *, actor: str, advance: bool = False) -> None:  # noqa: ANN001
    """Store each gated derivative in research and its pseudonym map beside its original.

    ``items``: (original object, engine result) pairs whose gate passed. Done for all of them at once,
    in three steps, so the catalog commits twice per call rather than three times per object:

    1. one commit registers every derivative, validated and classified, each step audited. Registration
       comes before any upload; a derivative's UIDs are deterministic, so a rerun finds it;
    2. the uploads, several at once and outside any transaction: each derivative into research, each
       map at the highest tier beside its original (what an earlier attempt recorded is not redone);
    3. one commit records every copy, moves each derivative to PROTECTED and STORED, and (``advance``,
       protect's step) each original to DEIDENTIFIED. A reviewer's release comes later, when the
       original has moved on.

    A crash between the steps leaves derivatives CLASSIFIED without a copy and originals where they
    were: the rerun registers nothing twice and uploads only what is unrecorded.
    """
    from imaging_lifecycle.classify import classify
    from imaging_lifecycle.crypto import sha256_file
    from imaging_lifecycle.deid import write_dataset

    paths = [private_tmp(svc.settings, ".deid.dcm") for _ in items]  # named first: all removed in the end
    try:
        svc.map(lambda job: write_dataset(job[0][1].dataset, job[1]), list(zip(items, paths, strict=True)))
        with svc.catalog.transaction() as conn:  # 1. registered, validated and classified: one commit
            derived = []
            for (parent, result), path in zip(items, paths, strict=True):
                ds = result.dataset
                derived.append(svc.catalog.register(
                    actor=actor, source=f"derived:{parent.id}", sha256=sha256_file(path), size=path.stat().st_size,
                    sop_instance_uid=str(ds.SOPInstanceUID), study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                    batch_id=parent.batch_id, session=conn,
                ).object)
            derived = _moved(derived, svc.catalog.transition_many(
                states.VALIDATED, [(d.id, {}, None) for d in derived if d.state == states.RECEIVED],
                actor=actor, session=conn))
            proposed = {d.id: classify(result.dataset, policy, deidentified=True)
                        for d, (_parent, result) in zip(derived, items, strict=True) if d.state == states.VALIDATED}
            derived = _moved(derived, svc.catalog.transition_many(states.CLASSIFIED, [
                (oid, {"tier": c.tier, "rule_id": c.rule_id, "policy_fingerprint": policy.fingerprint},
                 {"tier": c.tier, "rule": c.rule_id, "policy": policy.fingerprint}) for oid, c in proposed.items()],
                actor=actor, session=conn))
        have = svc.catalog.copies_of([d.id for d in derived] + [p.id for p, _r in items])

        def uploaded(job) -> tuple:  # noqa: ANN001 (2. the uploads: S3-bound, several at once)
            (parent, result), path, d = job
            research = next((c for c in have[d.id] if c.zone == RESEARCH_ZONE), None)
            sealed = None
            if research is None and d.state == states.CLASSIFIED:
                sealed = svc.encrypted.put(path, catalog_id=d.id, zone=RESEARCH_ZONE, tier=d.tier,
                                           scope_id=f"study:{d.study_key}", key=f"{RESEARCH_ZONE}/{d.id}")
            sealed_map = None
            if not any(c.key.startswith(REID_PREFIX) for c in have[parent.id]):
                data = result.reid.to_bytes()
                sealed_map = svc.encrypted.put(io.BytesIO(data), catalog_id=parent.id, zone="archive",
                                               tier=policy.highest_tier, scope_id=reid_scope(parent.study_key),
                                               key=f"{REID_PREFIX}{parent.id}", size=len(data))
            return research, sealed, sealed_map

        done = svc.map(uploaded, list(zip(items, paths, derived, strict=True)))
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
    with svc.catalog.transaction() as conn:  # 3. recorded, PROTECTED, STORED and DEIDENTIFIED: one commit
        cat, now = svc.catalog, dt.datetime.now(dt.timezone.utc)
        due = [(d, copy if sealed is None else svc.encrypted.record(cat, d.id, sealed, actor=actor, session=conn))
               for d, (copy, sealed, _map) in zip(derived, done, strict=True)
               if d.state in (states.CLASSIFIED, states.PROTECTED)]  # else stored by an earlier attempt
        cat.transition_many(states.PROTECTED, [
            (d.id, {"ciphertext_sha256": copy.ciphertext_sha256, "key_id": copy.key_id}, None)
            for d, copy in due if d.state == states.CLASSIFIED], actor=actor, session=conn)
        cat.transition_many(states.STORED, [
            (d.id, {"zone": RESEARCH_ZONE, "retention_deadline": now + policy.retention_for(d.tier, RESEARCH_ZONE)},
             None) for d, _copy in due], actor=actor, session=conn)
        for (parent, _result), (_copy, _sealed, sealed_map) in zip(items, done, strict=True):
            if sealed_map is not None:
                svc.encrypted.record(cat, parent.id, sealed_map, actor=actor, session=conn)
        if advance:
            cat.transition_many(states.DEIDENTIFIED, [(parent.id, {}, None) for parent, _result in items],
                                actor=actor, session=conn)


def _moved(objs: list, moved: list) -> list:
    """``objs`` with each one that ``moved`` holds replaced by its new record, in order."""
    new = {o.id: o for o in moved}
    return [new.get(o.id, o) for o in objs]


def reid_scope(study_key: str) -> str:
    """The key scope of a study's pseudonym maps: one KEK per study, apart from the study's data KEK.

    Each map has a DEK of its own, so deleting one original shreds its map alone (the DEK is
    destroyed in the catalog); the KEK goes when the study's last map does, as a study's data KEK
    does. Maps stored before this had a KEK per original (``reid:<catalog id>``); their DEK rows name
    that KEK, so they stay readable and are destroyed the same way.
    """
    return f"reid:study:{study_key}"


def reidentify(svc: Services, catalog_id: str, *, request_id: str | None, actor: str):  # noqa: ANN201
    """The re-identification map (pseudonym -> original) of ``catalog_id`` or of the original it derives from.

    Only for the requester of an APPROVED ``reidentify`` request naming the
    object (audited either way, ``access.reidentify``: counts, never values).
    Returns a :class:`~imaging_lifecycle.deid.reid.ReidMap`, which refuses to
    be logged, pickled or sent through XCom.
    """
    from imaging_lifecycle.deid.reid import ReidMap

    svc.guard("reidentify", actor=actor)
    svc.catalog.approved_request(request_id, action="reidentify", actor=actor, object_id=catalog_id)
    obj = svc.catalog.get(catalog_id)
    parent_id = obj.source.removeprefix("derived:") if (obj.source or "").startswith("derived:") else obj.id
    stored = [c for c in svc.catalog.copies(parent_id) if c.key.startswith(REID_PREFIX)]
    if not stored:
        svc.catalog.audit.append(actor, "access.reidentify", object_ref=catalog_id, outcome="failure",
                                 detail={"request": request_id, "reason": "NO_REID_MAP"})
        raise LookupError(f"object {catalog_id} has no re-identification map (it was never de-identified)")
    sealed = svc.catalog.sealed(stored[-1], None)
    with svc.encrypted.open(sealed, parent_id) as reader:
        reid = ReidMap.from_bytes(reader.read())
    svc.catalog.audit.append(actor, "access.reidentify", object_ref=catalog_id,
                             detail={"request": request_id, "entries": len(reid)})
    return reid


# -- what the DAG calls ---------------------------------------------------------------

#: Flags of objects a per-object gate held back: no later step takes them; they wait for review.
HELD_CLASSIFIED = "GATE_CLASSIFIED"
HELD_CLOSING = "GATE_CLOSING"


def held(obj) -> bool:  # noqa: ANN001
    """Did a per-object gate hold this object back?"""
    return obj.flagged in (HELD_CLASSIFIED, HELD_CLOSING)


#: Objects still on their way through protect, oldest first, from any batch
#: (a run that died leaves work that the next run picks up).
PENDING_STATES = (states.VALIDATED, states.CLASSIFIED, states.DEIDENTIFIED, states.NEEDS_REVIEW, states.PROTECTED)


def pending_chunks(svc: Services, chunk: int = CHUNK) -> list[list[str]]:
    """Ids to protect, in chunks: only from batches whose ingest gate passed (INGESTED).

    An object of a batch still being ingested, or whose gate failed, is VALIDATED
    too; taking it here would let it past the gate.
    """
    passed: dict[str, bool] = {}

    def gated(batch_id: str | None) -> bool:
        if batch_id not in passed:
            batch = svc.catalog.get_batch(batch_id) if batch_id else None
            passed[batch_id] = batch is not None and batch.state == "INGESTED"
        return passed[batch_id]

    ids = [o.id for st in PENDING_STATES for o in svc.catalog.objects(state=st)
           if o.quarantine_reason is None and not held(o) and gated(o.batch_id)]
    from imaging_lifecycle.services import even_chunks

    return even_chunks(ids, chunk)


def backup_objects(svc: Services, ids: list[str], *, actor: str) -> dict:
    """Replicate the STORED objects whose tier's policy requires a backup copy."""
    from imaging_lifecycle import backup

    policy = svc.policy
    wanted = [o.id for o in map(svc.catalog.get, ids)
              if o.state == states.STORED and not held(o) and policy.tier(o.tier).handling.backup_required]
    return backup.replicate(svc.catalog, svc.store, wanted, actor=actor, encrypted=svc.encrypted) if wanted else {}


# -- the gates between the steps --------------------------------------------------------


def _ids(chunks: list[list[str]]) -> list[str]:
    return [i for c in chunks for i in c]


def _hold_failed(svc: Services, verdict, flag: str, *, actor: str) -> int:  # noqa: ANN001
    """Flag each object whose own row failed a per-object gate; later steps pass it by. Returns how many."""
    for oid, checks in sorted(verdict.failed.items()):
        svc.catalog.flag(oid, flag, actor=actor, detail={"reason": flag, "checks": sorted(set(checks))})
    return len(verdict.failed)


def classified_gate(svc: Services, chunks: list[list[str]], *, actor: str) -> dict:
    """Every object has a tier of the policy and the rule that decided it; one that has not is held alone."""
    from imaging_lifecycle.gates import record
    from imaging_lifecycle.gates.protect import check_classified

    # A VALIDATED object's tier and rule are only ingest's proposal: it was not classified.
    rows = [{"catalog_id": o.id, "tier": None if o.state == states.VALIDATED else o.tier,
             "rule_id": None if o.state == states.VALIDATED else o.rule_id}
            for o in map(svc.catalog.get, _ids(chunks)) if not held(o)]
    verdict = record(svc.catalog, check_classified(rows, svc.policy.highest_tier), actor=actor) if rows else None
    return {"gate": "classified", "rows": len(rows),
            "held": _hold_failed(svc, verdict, HELD_CLASSIFIED, actor=actor) if verdict else 0}


def closing_gate(svc: Services, chunks: list[list[str]], *, actor: str) -> dict:
    """Each object (and derivative) of the run is STORED, keyed, hashed, with no plaintext copy; else held alone.

    An object held here is not backed up and raises a security alert: a
    stored copy that starts like DICOM is plaintext in the object store.
    """
    from imaging_lifecycle.gates import record
    from imaging_lifecycle.gates.protect import check_closing

    ids = [o.id for o in map(svc.catalog.get, _ids(chunks)) if not held(o)]
    rows = closing_rows(svc, ids + derivatives_of(svc, ids))
    verdict = record(svc.catalog, check_closing(rows), actor=actor) if rows else None
    n = _hold_failed(svc, verdict, HELD_CLOSING, actor=actor) if verdict else 0
    if n:
        svc.catalog.audit.append(actor, "security.alert", outcome="major_failure",
                                 detail={"reason": "CLOSING_GATE_FAILED", "objects": n})
    return {"gate": "protect-closing", "rows": len(rows), "held": n}


def derivatives_of(svc: Services, ids: list[str]) -> list[str]:
    return [o.id for o in svc.catalog.objects(sources=[f"derived:{i}" for i in ids])] if ids else []
