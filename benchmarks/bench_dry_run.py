"""How long the pipeline takes to plan: `snakemake -n` for each preset, measured in this one run.

Planning time is what a user waits for before any job starts (and what every target, lint and test of the
DAG pays). It used to be asserted in a test (≤ 10 s for the 32B preset), which made CI fail at random on a
slower machine; it is measured here instead. Printed: the median of --repeat runs per preset, and each
preset's time as a ratio of the tiny preset's, measured in the same run.

    python benchmarks/bench_dry_run.py [--repeat 3]

The last line is machine-readable: SUMMARY tiny=<s> qwen2.5-7b-math=<s> qwen2.5-32b=<s>
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("tiny", "qwen2.5-7b-math", "qwen2.5-32b")


def plan_seconds(preset: str, results: Path) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "all", "--config", f"preset={preset}",
                          f"results_dir={results}"], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"snakemake -n failed for {preset}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            times = [plan_seconds(preset, Path(tmp) / "results") for _ in range(args.repeat)]
            medians[preset] = statistics.median(times)
            print(f"{preset:>16}: snakemake -n  median {medians[preset]:6.2f} s  "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times)})  ×{medians[preset] / medians['tiny']:.2f} of tiny")
    print("SUMMARY " + " ".join(f"{p}={medians[p]:.2f}" for p in PRESETS))


if __name__ == "__main__":
    main()
