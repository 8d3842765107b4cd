"""``make bench``: run every benchmarks/bench_*.py in turn, then write the scoreboard.

Each benchmark reports ratios taken within its own run (ours against a baseline on the same data,
same machine, same moment), because absolute numbers on these shared 2-core machines are noisy.
The scoreboard is ``bench/results.json`` (every figure, the machine, the versions, the corpus) and
``bench/REPORT.md`` with PNG plots beside it. ``python benchmarks/run_all.py pipeline store`` runs
only those.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE.parent / "bench"

#: What the corpus of each benchmark is (the report says it beside the figures).
CORPUS = {
    "pipeline": ("BENCH_PIPELINE_STUDY (latency), then BENCH_PIPELINE_N (throughput, overhead) synthetic CT slices, "
                 "512 x 512 16-bit (about 512 KB each)"),
    "store": "BENCH_STORE_N random 512 KB slices",
    "crypto": "random buffers (see bench_crypto.py)",
    "deid": "pydicom's and the project's real test files",
    "ingest": "BENCH_INGEST_N small synthetic CT files",
    "purge": "BENCH_PURGE_N expired 1 KB cache copies",
    "profile": "BENCH_PROFILE_SIZES CT slices of 512 KB, one drop per size into one catalog, stages in one process",
}

#: The issue's goals, on the figures they are read from: (figure, comparison, target).
GOALS = {
    "pipeline": [("ratio_end_to_end_vs_raw_upload", ">=", 0.5), ("latency_p95_s", "<=", 60.0),
                 ("airflow_overhead_fraction", "<", 0.2)],
    "profile": [("ratio_cost_per_file_last_vs_first", "<=", 1.1)],
    "purge": [("extrapolated_100k_s", "<=", 300.0)],
}


def _figures(stdout: str) -> dict:
    """``key value`` lines (and a JSON object, if the benchmark prints one) as a dict."""
    text = stdout.strip()
    start = text.find("{")
    if start >= 0:
        try:
            return json.loads(text[start:])
        except ValueError:
            pass
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z][\w./-]*)\s+(-?[\d.]+)\s*$", line.strip())
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _machine() -> dict:
    versions = {}
    for dist in ("apache-airflow", "pydicom", "cryptography", "minio", "great-expectations", "SQLAlchemy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "versions": versions,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _met(value, op: str, target: float) -> bool | None:
    if not isinstance(value, (int, float)):
        return None
    return {"<=": value <= target, ">=": value >= target, "<": value < target}[op]


def _plots(results: dict) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    ratios = [(f"{name}: {k.removeprefix('ratio_')}", v) for name, r in results["benchmarks"].items()
              for k, v in r["figures"].items() if k.startswith("ratio") and isinstance(v, (int, float))]
    if ratios:
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(ratios) + 1.2))
        ax.barh([n for n, _ in ratios], [v for _, v in ratios], color="#4c78a8")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("ratio to the baseline taken in the same run")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(OUT / "ratios.png", dpi=110)
        plt.close(fig)
        made.append("ratios.png")
    pipe = results["benchmarks"].get("pipeline", {}).get("figures", {})
    tasks = pipe.get("task_seconds") or {}
    if tasks:
        fig, ax = plt.subplots(figsize=(9, 0.4 * len(tasks) + 1.2))
        ax.barh(list(tasks), list(tasks.values()), color="#f58518")
        ax.set_xlabel(f"task seconds in the run (wall {pipe.get('wall_s')} s)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(OUT / "pipeline_stages.png", dpi=110)
        plt.close(fig)
        made.append("pipeline_stages.png")
    if pipe.get("latency_p50_s") is not None:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(["p50", "p95"], [pipe["latency_p50_s"], pipe["latency_p95_s"]], color="#54a24b")
        ax.axhline(60, color="red", lw=0.8, ls="--")
        ax.set_ylabel("arrival to BACKED_UP (s)")
        fig.tight_layout()
        fig.savefig(OUT / "pipeline_latency.png", dpi=110)
        plt.close(fig)
        made.append("pipeline_latency.png")
    timeline = pipe.get("timeline") or []
    if timeline:  # where the wall time goes: each task instance as a bar, gaps are scheduling
        rows = sorted({t[0] for t in timeline}, key=lambda k: min(t[2] for t in timeline if t[0] == k))
        fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.4))
        for task, index, start, end in timeline:  # two lanes per task, by map index: overlaps stay visible
            y = rows.index(task) + (0.2 if (index or 0) % 2 else -0.2) * (index is not None and index >= 0)
            ax.barh(y, max(end - start, 0.1), left=start, height=0.36, color="#72b7b2", edgecolor="#2f5f5c")
            if index is not None and index >= 0:
                ax.text(start + 0.05, y, str(index), va="center", fontsize=7)
        ax.set_xlim(left=0)
        ax.set_yticks(range(len(rows)), rows)
        ax.axvline(pipe.get("wall_s", 0), color="red", lw=0.8, ls="--")
        ax.set_xlabel("seconds after the first arrival (map index on each bar; red: last BACKED_UP)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(OUT / "pipeline_timeline.png", dpi=110)
        plt.close(fig)
        made.append("pipeline_timeline.png")
    return made


def _report(results: dict, plots: list[str]) -> str:
    m = results["machine"]
    lines = ["# Benchmark report", "",
             f"{m['date']} on {m['platform']} ({m['cpus']} CPUs), Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
             "Every ratio is against a baseline taken in the same run (see each benchmark's docstring).", ""]
    for name, r in results["benchmarks"].items():
        lines += [f"## {name}", "", f"Corpus: {r['corpus']}. Exit {r['exit']}, {r['seconds']} s.", ""]
        for goal in r.get("goals", []):
            verdict = {True: "met", False: "missed", None: "not measured"}[goal["met"]]
            lines.append(f"- goal {goal['figure']} {goal['op']} {goal['target']}: **{verdict}** ({goal['value']})")
        if r.get("goals"):
            lines.append("")
        flat = {k: v for k, v in r["figures"].items() if not isinstance(v, (dict, list))}  # lists: plotted
        if flat:
            lines += ["| figure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in flat.items()], ""]
        for k, v in r["figures"].items():
            if isinstance(v, dict):
                lines += [f"{k}:", "", "| | |", "|---|---|", *[f"| {a} | {b} |" for a, b in v.items()], ""]
        if r.get("table"):
            lines += ["```", *r["table"], "```", ""]
        if not r["figures"] and r.get("output"):  # a benchmark that prints a table of its own
            lines += ["```", *r["output"], "```", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def main() -> int:
    only = set(sys.argv[1:])
    failed = 0
    OUT.mkdir(exist_ok=True)
    previous = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    results = {"machine": _machine(), "benchmarks": dict(previous.get("benchmarks", {})) if only else {}}
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, str(path)], cwd=HERE.parent, capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr[-2000:] if r.returncode else "")
        seconds = round(time.perf_counter() - t)
        print(f"({name}: {seconds} s, exit {r.returncode})", flush=True)
        failed += r.returncode != 0
        figures = _figures(r.stdout)
        entry = {"corpus": CORPUS.get(name, ""), "exit": r.returncode, "seconds": seconds, "figures": figures,
                 "output": r.stdout.strip().splitlines()[-40:]}
        text = r.stdout.strip()
        if figures and text.find("\n{") > 0:  # a table printed before the figures' JSON goes in the report too
            entry["table"] = text[:text.find("\n{")].splitlines()
        entry["goals"] = [{"figure": f, "op": op, "target": tgt, "value": figures.get(f),
                           "met": _met(figures.get(f), op, tgt)} for f, op, tgt in GOALS.get(name, [])]
        results["benchmarks"][name] = entry
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    plots = _plots(results)
    (OUT / "REPORT.md").write_text(_report(results, plots))
    print(f"\nwrote {OUT / 'results.json'} and {OUT / 'REPORT.md'} ({len(plots)} plots)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
