"""``imaging-lifecycle deidentify SRC DST [--policy FILE]``: de-identify a file or a folder into DST.

Outputs are named after their new SOP Instance UID (input names and folders
can hold patient names). Images that may carry burned-in text and could not
be masked go to ``DST/needs-review/``, so they cannot be mistaken for
releasable files. An input that cannot be de-identified is reported with a
reason code and not written, and the exit status is then 1; so is a second
input with the SOP Instance UID of one already written in the run.

The JSON summary on stdout names inputs by the paths given (the operator's
own paths); it holds no header values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from imaging_lifecycle.commands.classify import iter_files, policy_of

HELP = "de-identify DICOM files (PS3.15 Annex E, per policy) from SRC into DST; prints a JSON summary"
REVIEW_DIR = "needs-review"


def add_arguments(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="a DICOM file or a folder of them")
    parser.add_argument("dst", metavar="DST", help="output folder (created)")
    parser.add_argument("--policy", metavar="FILE",
                        help="policy YAML (default: $IL_POLICY_FILE, else the packaged default)")
    parser.add_argument("--source", metavar="AE", help="sending AE title or source name, for burned-in rules")


def run(args) -> int:
    from imaging_lifecycle.deid import TABLE_EDITION, Deidentifier, DeidError, output_name, write_dataset
    from imaging_lifecycle.dicomfile import UnreadableDicom, quiet_pydicom, read_dataset
    from imaging_lifecycle.policy import PolicyError
    from imaging_lifecycle.secretfiles import load_or_create_secret
    from imaging_lifecycle.settings import SettingsError

    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    if dst.exists() and not dst.is_dir():
        print(f"error: {dst} exists and is not a folder", file=sys.stderr)
        return 2
    if src.is_dir() and dst.resolve() == src.resolve():
        print("error: DST must not be SRC", file=sys.stderr)
        return 2
    try:
        policy = policy_of(args)
    except (PolicyError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = Deidentifier(policy, load_or_create_secret("deid-hmac"))

    dst_resolved = dst.resolve()
    inputs = [p for p in iter_files([str(src)]) if dst_resolved not in p.resolve().parents]
    files, totals = [], {"ok": 0, "needs-review": 0, "failed": 0}
    written: set[str] = set()
    for path in inputs:
        entry: dict = {"input": str(path), "output": None}
        try:
            try:
                with quiet_pydicom():
                    ds = read_dataset(path)
            except UnreadableDicom as e:
                raise DeidError(f"unreadable:{e.reason}") from None
            result = engine.deidentify(ds, source=args.source)
            folder = dst / REVIEW_DIR if result.needs_review else dst
            name = output_name(result.dataset)
            if name in written:  # two inputs claim one SOP Instance: never let one overwrite the other
                raise DeidError("duplicate-sop-instance-uid")
            out = folder / name
            write_dataset(result.dataset, out)
            written.add(name)
            entry.update(output=str(out), **result.summary())
        except DeidError as e:
            entry.update(status="failed", reason=e.reason)
        totals[entry["status"]] += 1
        files.append(entry)
    summary = {
        "policy": policy.fingerprint[:16],
        "table_edition": TABLE_EDITION,
        "inputs": len(inputs),
        "written": totals["ok"] + totals["needs-review"],
        "needs_review": totals["needs-review"],
        "failed": totals["failed"],
        "files": files,
    }
    print(json.dumps(summary, indent=1))
    return 1 if totals["failed"] else 0
