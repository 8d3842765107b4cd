"""``imaging-lifecycle audit``: check the tamper-evident audit trail, or read its tail.

``verify`` walks the whole hash chain and checks it against the newest
validly signed anchor on the backup site (``anchor.py``): it exits 0 if both
hold, 1 naming the first bad record, a mismatching anchor, or any unsigned or
wrongly signed anchor object, and 2 if there is nothing to check. A re-hashed
chain therefore fails even though every hash links. ``--anchor-seq/--anchor-hash``
checks against a head you hold yourself instead; ``--no-anchor`` checks the
chain alone. ``public-key`` prints the anchors' Ed25519 public key, to verify
them anywhere.

Using the trail is itself audited (PS3.15 "Audit Log Used"): each run appends
one record saying who verified or read it and what came out. The record is
appended *after* the check, so it never affects the result.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

HELP = "verify the tamper-evident audit trail (exit 1 on tampering) or show its latest records"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="check the whole hash chain; exit 0 if intact, 1 if not")
    verify.add_argument("--anchor-seq", type=int, help="seq of an anchored head (with --anchor-hash)")
    verify.add_argument("--anchor-hash", help="hash of the anchored head (with --anchor-seq)")
    verify.add_argument("--no-anchor", action="store_true", help="check the chain alone (no signed anchor)")
    sub.add_parser("public-key", help="print the Ed25519 public key that signs the audit anchors (base64)")
    show = sub.add_parser("show", help="print the latest records")
    show.add_argument("--limit", type=int, default=20, help="how many records (default 20)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    head = sub.add_parser("head", help="print the chain head (seq and hash) as JSON, for anchoring")
    for p in (verify, show, head):
        p.add_argument("--catalog-url", help="catalog database URL (default: the settings' catalog_url)")
        p.add_argument("--no-record", action="store_true",
                       help="do not append an 'audit log used' record (for read-only database access)")


def _actor() -> str:
    """Who read the trail: the local account (``os:<name>``); reading it changes nothing, so no login is asked."""
    try:
        name = getpass.getuser()
    except Exception:  # no passwd entry in a container, no LOGNAME
        name = ""
    from imaging_lifecycle.catalog.audit import UnsafeAuditValue, check_actor

    try:
        return check_actor(f"os:{name}") if name else f"os:uid:{os.getuid()}"
    except UnsafeAuditValue:
        return f"os:uid:{os.getuid()}"


def _open(url: str | None):  # noqa: ANN202
    """The audit log of an existing catalog, without creating anything; else an exit code.

    A missing database is a usage error (2). A database without the audit
    tables is a broken trail (1): creating them afresh would make a deleted
    trail look like an empty, intact one.
    """
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from imaging_lifecycle.catalog.audit import AuditLog
    from imaging_lifecycle.catalog.db import Database

    if url is None:
        from imaging_lifecycle.settings import load_settings

        url = load_settings().catalog_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            print(f"no catalog database at {parsed.database}", file=sys.stderr)
            return 2
    db = Database(url)
    missing = {"audit_records", "audit_head"} - set(inspect(db.engine).get_table_names())
    if missing:
        print(f"audit chain BROKEN: the catalog database has no table {', '.join(sorted(missing))}")
        db.dispose()
        return 1
    return AuditLog(db)


def _signed_anchors():  # noqa: ANN202
    """The signed anchors on the backup site (``anchor.Found``), or exit code 2 if they cannot be read."""
    from imaging_lifecycle.anchor import latest_anchor
    from imaging_lifecycle.services import Services

    try:
        return latest_anchor(Services.open())
    except Exception as exc:  # no S3 credentials, site down: say so; --no-anchor checks the chain alone
        print(f"cannot read the signed anchors ({type(exc).__name__}); use --no-anchor to check the chain alone",
              file=sys.stderr)
        return 2


def _record(log, args, action: str, outcome: str, detail: dict) -> None:  # noqa: ANN001
    if args.no_record:
        return
    try:
        log.append(_actor(), action, outcome=outcome, detail=detail)
    except Exception as exc:  # the check's result must reach the operator regardless
        print(f"warning: could not record this use of the audit log ({type(exc).__name__})", file=sys.stderr)


def run(args) -> int:
    if args.audit_command == "verify" and (args.anchor_seq is None) != (args.anchor_hash is None):
        print("--anchor-seq and --anchor-hash go together", file=sys.stderr)
        return 2
    if args.audit_command == "public-key":
        import base64

        from imaging_lifecycle.anchor import public_key
        from imaging_lifecycle.services import Services

        key = base64.b64encode(public_key(Services.open())).decode()
        print(json.dumps({"algorithm": "Ed25519", "public_key": key}))
        return 0
    log = _open(args.catalog_url)
    if isinstance(log, int):
        return log
    try:
        if args.audit_command == "verify":
            anchor = None if args.anchor_seq is None else (args.anchor_seq, args.anchor_hash.strip().lower())
            problems: list[dict] = []
            found = None
            if anchor is None and not args.no_anchor:
                found = _signed_anchors()
                if isinstance(found, int):
                    return found
                anchor, problems = found.newest, found.problems
                for p in problems:
                    print(f"anchor {p['object']}: {p['problem']}")
            if found is not None:
                from imaging_lifecycle.anchor import verify_log

                result = verify_log(log, found)  # the newest anchor, and every older signed one
            else:
                result = log.verify(expected_head=anchor)
            detail = {"records": result.count, "check": result.code, "anchored": anchor is not None,
                      "bad_anchors": len(problems)}
            if result.first_bad_seq is not None:
                detail["first_bad_seq"] = result.first_bad_seq
            _record(log, args, "audit.verify", "success" if result.ok else "failure", detail)
            if result.ok and not problems:
                anchored = f", contains anchored head seq {anchor[0]}" if anchor else ""
                print(f"audit chain intact: {result.count} records, head {result.head_hash}{anchored}")
                if anchor is not None and result.count > anchor[0]:
                    print(f"  records after seq {anchor[0]} are protected by the chain only, until the next anchor")
                return 0
            if result.ok:
                print(f"audit chain links, but {len(problems)} anchor object(s) are forged or unsigned")
                return 1
            where = f"record seq {result.first_bad_seq}" if result.first_bad_seq is not None else "anchor"
            print(f"audit chain BROKEN at {where} [{result.code}]: {result.reason}")
            return 1
        if args.audit_command == "head":
            seq, digest = log.head()
            print(json.dumps({"seq": seq, "hash": digest}))
            return 0
        records = log.records(last=max(0, args.limit))
        for r in records:
            if args.json:
                print(json.dumps(r.public()))
            else:
                print(f"{r.seq:>8} {r.ts} {r.action:<26} {r.event_id or '-':>6} {r.outcome:<13} "
                      f"{r.object_ref or '-'} {r.actor} {json.dumps(r.detail, sort_keys=True)}")
        _record(log, args, "audit.show", "success", {"records": len(records)})
        return 0
    finally:
        log.db.dispose()
