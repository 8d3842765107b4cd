"""``imaging-lifecycle policy show|adopt``: which policy this process and the platform run under.

The catalog records the fingerprint of the policy the platform runs under.
A process whose policy differs (another ``IL_POLICY_FILE``, or the file was
edited) refuses every guarded action. A policy change is itself guarded:
``adopt --request ID`` makes this process's policy the platform's only under
an APPROVED ``policy_change`` request whose requester is the logged-in person
and whose target is exactly this policy's fingerprint (two approvals, audited
``policy.adopt`` with both fingerprints).
"""

from __future__ import annotations

import json
import sys

HELP = "show the policy in force and the platform's recorded policy, or adopt this one under an approved request"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["show", "adopt"])
    parser.add_argument("--request", help="adopt: the approved policy_change access request")


def run(args) -> int:
    from imaging_lifecycle.catalog import NotApproved
    from imaging_lifecycle.commands._identity import NotLoggedIn, person
    from imaging_lifecycle.policy import PolicyError
    from imaging_lifecycle.services import Services

    svc = Services.open()
    try:
        policy = svc.policy
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "adopt":
        try:
            svc.adopt_policy(request_id=args.request, actor=person(svc))
        except (NotApproved, NotLoggedIn) as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 3
    recorded = svc.catalog.platform_policy()
    print(json.dumps({"process_policy": policy.fingerprint, "source": policy.source, "name": policy.name,
                      "platform_policy": recorded, "in_force": recorded in (None, policy.fingerprint)}))
    return 0 if recorded in (None, policy.fingerprint) else 1
