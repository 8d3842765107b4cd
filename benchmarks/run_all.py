"""``make bench``: run every benchmarks/bench_*.py in turn and collect what each prints.

Each benchmark reports ratios taken within its own run (ours against a
baseline on the same data, same machine, same moment), because absolute
numbers on these shared 2-core machines are noisy.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    only = set(sys.argv[1:])
    failed = 0
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, str(path)], cwd=HERE.parent)
        print(f"({name}: {time.perf_counter() - t:.0f} s, exit {r.returncode})", flush=True)
        failed += r.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
