"""``imaging-lifecycle ingest``: ingest what is settled in the landing folder now, without Airflow.

The same stage functions the ingest DAG runs, in one process, batch after batch: for operators
who need files in before the scheduler is back, and for tests.
"""

from __future__ import annotations

import json

HELP = "ingest the settled files of the landing folder now (batch by batch, same steps as the DAG)"


def add_arguments(parser) -> None:
    parser.add_argument("--quiet-seconds", type=float, default=0.0,
                        help="only files unchanged for this long (default 0: everything complete)")


def run(args) -> int:
    from imaging_lifecycle import ingest, landing
    from imaging_lifecycle.commands._identity import system
    from imaging_lifecycle.gates import GateFailed
    from imaging_lifecycle.services import Services

    svc = Services.open()
    # Run here by hand, so this is the landing host: its folder gets an identity if it had none.
    landing.ensure_identity(svc.settings.landing_dir)
    # Batch after batch (a claim takes at most ingest.BATCH_FILES), one JSON summary line each, until a
    # claim finds nothing settled; exit 1 if any batch's gate failed (the others still go in).
    failed, batches = False, 0
    while True:
        claim = ingest.claim_batch(svc, quiet_seconds=args.quiet_seconds, actor=system("ingest"))
        if not claim.files:
            break
        batches += 1
        results = [ingest.run_chunk(svc, claim.batch_id, c, actor=system("ingest")) for c in claim.chunks]
        try:
            print(json.dumps(ingest.close_batch(svc, results, actor=system("ingest"))), flush=True)
        except GateFailed as exc:
            print(json.dumps({"batch_id": claim.batch_id, "gate": exc.result.summary()}), flush=True)
            failed = True
    if not batches:
        print(json.dumps({"batch_id": None, "files": 0}))
    return 1 if failed else 0
