"""``imaging-lifecycle policy show|adopt``: which policy this process and the platform run under.

The catalog records the fingerprint of the policy the platform runs under.
A process whose policy differs (another ``IL_POLICY_FILE``, or the file was
edited) refuses every guarded action. ``adopt`` makes this process's policy
the platform's, audited as ``policy.adopt`` with both fingerprints. (Putting
``adopt`` behind two approvals is the access issue's work.)
"""

from __future__ import annotations

import getpass
import json
import sys

HELP = "show the policy in force and the platform's recorded policy, or adopt this one (audited)"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["show", "adopt"])
    parser.add_argument("--actor", default=None, help="who adopts (default: the OS user)")


def run(args) -> int:
    from imaging_lifecycle.policy import PolicyError
    from imaging_lifecycle.services import Services

    svc = Services.open()
    try:
        policy = svc.policy
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "adopt":
        svc.catalog.adopt_policy(policy.fingerprint, actor=args.actor or getpass.getuser(), source=policy.source)
    recorded = svc.catalog.platform_policy()
    print(json.dumps({"process_policy": policy.fingerprint, "source": policy.source, "name": policy.name,
                      "platform_policy": recorded, "in_force": recorded in (None, policy.fingerprint)}))
    return 0 if recorded in (None, policy.fingerprint) else 1
