"""Do tiny verl runs finish sooner one after another or side by side? Both, measured in one invocation.

It is the measurement behind the pipeline's default of two CPU trainings at once on 2 cores (config
train.cpu_side_by_side, fipo/scheduling.py). A tiny run keeps 2 cores busy only part of the time (Snakemake's benchmark of a
default tiny training: 118 s of CPU time in 87 s of wall time; its start-up is a chain of Ray actors that each import
verl), so two side by side may finish sooner than two in a row. This benchmark trains the same experiments both
ways, each run in a fresh results folder with the same tiny data and base model (made first, outside the
timing), and prints the wall times, their ratio and each run's peak resident memory (the sum over its process
tree, sampled every 0.5 s; pages shared between processes count in each: an upper bound on what a run needs).

    python benchmarks/bench_parallel_runs.py [--experiments dapo grpo] [--steps 8]

The last line is machine-readable: SUMMARY sequential=<s> parallel=<s> ratio=<parallel/sequential>.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench_startup import ROOT, ensure_inputs


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def start(experiment: str, steps: int, results: Path, data: Path, log: Path, extra: list[str] = ()) -> subprocess.Popen:
    """``fipo train`` of one tiny experiment for ``steps`` steps; ``extra``: more of its arguments (--seed, --override)."""
    cmd = [sys.executable, "-m", "fipo", "train", "--preset", "tiny", "--experiment", experiment,
           "--results-dir", str(results), "--data-dir", str(data),
           "--override", f"trainer.total_training_steps={steps}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_all(processes: list[subprocess.Popen]) -> list[int]:
    """Wait for every process; return each one's peak tree RSS in bytes."""
    peaks = [0] * len(processes)
    handles = [psutil.Process(p.pid) for p in processes]
    while any(p.poll() is None for p in processes):
        for i, handle in enumerate(handles):
            if processes[i].poll() is None:
                peaks[i] = max(peaks[i], tree_rss(handle))
        time.sleep(0.5)
    return peaks


def run_batch(experiments, steps, model: Path, data: Path, root: Path, side_by_side: bool,
              extra: list[str] = ()) -> tuple[float, list[int]]:
    folders = []
    for index, experiment in enumerate(experiments):
        # numbered, so one experiment can be named twice (the same spec trained twice each way)
        results = root / ("parallel" if side_by_side else "sequential") / f"{index}-{experiment}"
        shutil.copytree(model, results / "tiny" / "base_model")
        folders.append((experiment, results))
    began, peaks, processes = time.monotonic(), [], []
    for experiment, results in folders:
        p = start(experiment, steps, results, data, results / "train.log", extra)
        if side_by_side:
            processes.append(p)
        else:
            peaks += wait_all([p])
            processes.append(p)
    if side_by_side:
        peaks = wait_all(processes)
    elapsed = time.monotonic() - began
    for (experiment, results), p in zip(folders, processes):
        if p.returncode != 0:
            sys.exit(f"{experiment} failed (exit {p.returncode}); log: {results / 'train.log'}")
    return elapsed, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=["dapo", "grpo"])
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (the tiny preset's: 8)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fipo-parallel-"))
    inputs, data = root / "inputs", root / "data"
    ensure_inputs(inputs, data)
    model = inputs / "tiny" / "base_model"
    print(f"{len(args.experiments)} tiny runs ({', '.join(args.experiments)}), {args.steps} steps each; "
          f"{psutil.cpu_count()} cores; logs under {root}")
    sequential, seq_peaks = run_batch(args.experiments, args.steps, model, data, root, side_by_side=False)
    parallel, par_peaks = run_batch(args.experiments, args.steps, model, data, root, side_by_side=True)
    gib = 1 << 30
    print(f"  one after another: {sequential:6.1f} s   peak RSS per run: "
          + ", ".join(f"{p / gib:.1f} GiB" for p in seq_peaks))
    print(f"  side by side:      {parallel:6.1f} s   peak RSS per run: "
          + ", ".join(f"{p / gib:.1f} GiB" for p in par_peaks))
    print(f"SUMMARY sequential={sequential:.1f} parallel={parallel:.1f} ratio={parallel / sequential:.3f}")


if __name__ == "__main__":
    main()
