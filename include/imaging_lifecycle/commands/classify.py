"""``imaging-lifecycle classify PATH... [--policy FILE] [--json]``: the tier of each file and the rule that
decided it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

HELP = "print the sensitivity tier of DICOM files and the policy rule that decided it (fails closed)"


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders to walk")
    parser.add_argument("--policy", metavar="FILE",
                        help="policy YAML (default: $IL_POLICY_FILE, else the packaged default)")
    parser.add_argument("--json", action="store_true", help='one JSON object per file: {"path", "tier", "rule"}')
    parser.add_argument("--source", metavar="AE", help="sending AE title or source name, for source rules")
    parser.add_argument("--deidentified", action="store_true", help="the files are our de-identified derivatives")


def policy_of(args):  # noqa: ANN001, ANN201
    """The policy in force, or the one ``--policy`` names instead (loaded the same way, through Services)."""
    from dataclasses import replace

    from imaging_lifecycle.services import Services
    from imaging_lifecycle.settings import load_settings

    settings = load_settings()
    if args.policy:
        settings = replace(settings, policy_file=Path(args.policy).resolve())
    return Services.open(settings).policy


def iter_files(paths: list[str]) -> Iterator[Path]:
    """Files named, and files under folders named (sorted); a missing path is yielded so it is reported."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        else:
            yield p


def run(args) -> int:
    from imaging_lifecycle.classify import classify_path
    from imaging_lifecycle.policy import PolicyError
    from imaging_lifecycle.settings import SettingsError

    try:
        policy = policy_of(args)
    except (PolicyError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in iter_files(args.paths):
        c = classify_path(path, policy, source=args.source, deidentified=args.deidentified)
        if args.json:
            print(json.dumps({"path": str(path), "tier": c.tier, "rule": c.rule_id}), flush=True)
        else:
            print(f"{policy.tier(c.tier).name:4} tier={c.tier} {c.rule_id:32} {path}", flush=True)
    return 0
