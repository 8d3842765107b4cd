"""De-identification throughput: imaging-lifecycle's engine against dicognito, same files, same run.

Run: ``.venv/bin/python benchmarks/bench_deid.py [--seconds 8]``.

Each pass takes every file from memory through read -> de-identify -> write
(to memory), so both tools pay the same pydicom parsing and writing. Passes
alternate between the tools and the median pass counts, because these shared
machines are noisy. Our engine applies the full PS3.15 Annex E table
(621 attributes, options from the default policy, private tags, curves and
overlays, the identifier clean-up); dicognito applies its own, smaller rule
set. The goal is at least 2x dicognito in files/s and MB/s.

The corpus is pydicom's bundled test files (CT, MR, NM, RT, SR, ECG, overlay,
native and compressed, single and multi-frame) plus copies of some of them
with every Annex E attribute filled in, so the whole table is exercised.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import pydicom

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the marker-planting helper is shared with the tests

GOAL = 2.0
FILES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm",
    "rtplan.dcm", "rtstruct.dcm", "test-SR.dcm", "reportsi.dcm", "examples_overlay.dcm", "waveform_ecg.dcm",
)  # fmt: skip
PLANTED = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm")


def corpus() -> list[tuple[str, bytes]]:
    from imaging_lifecycle.deid import effective_actions
    from imaging_lifecycle.policy import load_policy

    from deid_fixtures import plant, read, sample_path, to_bytes

    out = [(name, sample_path(name).read_bytes()) for name in FILES]
    actions = effective_actions(load_policy().deid_options)
    for name in PLANTED:
        ds = read(name)
        plant(ds, actions)
        out.append((f"{name} (all attributes)", to_bytes(ds)))
    return out


def ours():
    from imaging_lifecycle.deid import Deidentifier
    from imaging_lifecycle.policy import load_policy

    engine = Deidentifier(load_policy(), bytes(range(32)))
    return lambda ds: engine.deidentify(ds)


def dicognito():
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    return lambda ds: anonymizer.anonymize(ds)


def baseline():
    return lambda ds: None


def one_file(fn, data: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    fn(ds)
    ds.save_as(io.BytesIO(), enforce_file_format=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="time budget per tool")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    files = corpus()
    tools = {"imaging-lifecycle (Annex E)": ours(), "dicognito": dicognito(), "read + write only": baseline()}
    skipped = []
    for name, data in list(files):  # only files every tool can handle, so all do the same work
        for label, fn in tools.items():
            try:
                one_file(fn, data)
            except Exception as e:
                skipped.append(f"{name} ({label}: {type(e).__name__})")
                files.remove((name, data))
                break
    mb = sum(len(d) for _, d in files) / 1e6
    times: dict[str, list[float]] = {label: [] for label in tools}
    deadline = time.perf_counter() + args.seconds * len(tools)
    while time.perf_counter() < deadline or min(len(v) for v in times.values()) < 3:
        for label, fn in tools.items():
            t0 = time.perf_counter()
            for _, data in files:
                one_file(fn, data)
            times[label].append(time.perf_counter() - t0)

    dicognito_files = len(files) / statistics.median(times["dicognito"])
    print(f"corpus: {len(files)} files, {mb:.2f} MB per pass; median of "
          f"{min(len(v) for v in times.values())}+ alternating passes")  # fmt: skip
    if skipped:
        print("skipped (a tool could not process them):", ", ".join(skipped))
    print(f"{'tool':30} {'files/s':>9} {'MB/s':>8} {'vs dicognito':>13}")
    ratio = 0.0
    for label, ts in times.items():
        t = statistics.median(ts)
        fps = len(files) / t
        print(f"{label:30} {fps:9.0f} {mb / t:8.2f} {fps / dicognito_files:12.2f}x")
        if label.startswith("imaging-lifecycle"):
            ratio = fps / dicognito_files  # same files per pass, so the MB/s ratio is the same
    verdict = "meets" if ratio >= GOAL else "MISSES"
    print(f"ratio imaging-lifecycle / dicognito: {ratio:.2f}x (files/s and MB/s); {verdict} the {GOAL:.0f}x goal")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
