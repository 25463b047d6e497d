"""Does a tiny run's seed determine it? One experiment trained K times, compared step by step.

Trains the same tiny experiment (same spec, seed, data and base model) ``--repeats`` times (default 2), one after
the other (or all at once with ``--side-by-side``), each in a fresh results folder, optionally beside ``--hog N``
busy processes (a loaded machine), then compares every run with the first, step by step: whether the step's
batch had the same prompts, how many of its (prompt, response) pairs the runs share, and the validation accuracy
each logged. It ends with each run's final validation accuracy and their spread. It measures, it asserts
nothing (the mechanisms have unit tests in tests/test_verl_cpu.py).

    python benchmarks/check_reproducible.py [--experiment dapo] [--steps 8] [--side-by-side] [--hog 2]
    # the study's runs: 30 steps at a study seed
    python benchmarks/check_reproducible.py --experiment fipo --steps 30 --seed 1 \
        --override trainer.test_freq=10 --override trainer.save_freq=30

``--inputs DIR`` keeps the tiny data and base model between invocations (built there when missing).

Each step also says whether every metric verl logged (losses, entropy, grad norm, rewards, lengths...) is the same
bits in both runs, timing and the rollout engine's own log-prob diagnostics aside (their largest difference is
printed at the end).

The last line is machine-readable: SUMMARY same_steps=<steps whose batches are equal in every run> steps=<N>
same_metric_steps=<steps, validation-only ones included, whose metrics are the same bits>
first_difference=<step or none> final_accuracy=<each run's, comma-separated>.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench_parallel_runs import run_batch
from bench_startup import ensure_inputs

from fipo.analysis.rollouts import dump_files
from fipo.analysis.runs import validation_accuracy_match
from fipo.files import read_jsonl
from fipo.run_folder import read_steps, run_folder

def batch(path: Path) -> Counter:
    """The (prompt, response) pairs of one rollout dump, as a multiset (the order of a dump is not compared)."""
    return Counter((record["input"], record["output"]) for _, record in read_jsonl(path, "rollout-dump",
                                                                                  skip_blank=True))


def accuracy(data: dict) -> float | None:
    """The step's validation Avg@N (verl's ``val-core/<source>/acc/mean@N``), None where it did not validate."""
    return next((value for key, value in data.items() if validation_accuracy_match(key)), None)


# Metrics that measure time, not what was computed.
TIMING = ("timing_s/", "timing_per_token_ms/", "perf/", "actor/perf/")
# The rollout engine's own log-probs of its samples, against the actor's (verl's mismatch diagnostics): they
# feed no update here (no rollout correction, no bypass), and their last bits depend on the shape of the
# generation batch a response was sampled in.
ROLLOUT_DIAGNOSTICS = ("rollout_corr/", "training/rollout_")


def metric_differences(a: dict, b: dict) -> tuple[list[str], float]:
    """The metrics of one step that are not the same bits in two runs (timing and the rollout diagnostics
    aside), and the largest absolute difference among the rollout diagnostics."""
    keys = set(a) | set(b)
    differing = sorted(k for k in keys if not k.startswith(TIMING + ROLLOUT_DIAGNOSTICS) and a.get(k) != b.get(k))
    gaps = [abs(a[k] - b[k]) for k in keys if k.startswith(ROLLOUT_DIAGNOSTICS)
            and isinstance(a.get(k), (int, float)) and isinstance(b.get(k), (int, float))]
    return differing, max(gaps, default=0.0)


def compare(run_a: Path, run_b: Path) -> list[tuple]:
    """Per step: (step, same prompts, pairs in common, pairs in a, validation accuracy of a, of b, metrics that
    differ, largest rollout-diagnostic difference)."""
    dumps_a, dumps_b = dump_files(run_a / "rollouts"), dump_files(run_b / "rollouts")
    steps_a, steps_b = read_steps(run_a / "metrics.jsonl"), read_steps(run_b / "metrics.jsonl")
    rows = []
    for step in sorted(set(dumps_a) | set(dumps_b) | set(steps_a)):
        a = batch(dumps_a[step]) if step in dumps_a else Counter()
        b = batch(dumps_b[step]) if step in dumps_b else Counter()
        prompts_a, prompts_b = Counter(p for p, _ in a.elements()), Counter(p for p, _ in b.elements())
        differing, gap = metric_differences(steps_a.get(step, {}), steps_b.get(step, {}))
        rows.append((step, prompts_a == prompts_b, sum((a & b).values()), sum(a.values()),
                     accuracy(steps_a.get(step, {})), accuracy(steps_b.get(step, {})), differing, gap))
    return rows


def busy_processes(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep a core busy each (a loaded machine), stopped by the caller."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def final_accuracy(run: Path) -> float | None:
    steps = read_steps(run / "metrics.jsonl")
    return next((accuracy(steps[s]) for s in sorted(steps, reverse=True) if accuracy(steps[s]) is not None), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="grpo")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, help="the run's seed (default: the preset's)")
    parser.add_argument("--override", action="append", default=[], help="a spec override, as fipo train takes it")
    parser.add_argument("--repeats", type=int, default=2, help="how many times to train it (>= 2)")
    parser.add_argument("--side-by-side", action="store_true", help="train the runs at once, not in a row")
    parser.add_argument("--hog", type=int, default=0, help="busy processes beside the training (a loaded machine)")
    parser.add_argument("--inputs", type=Path, help="where the tiny data and base model are kept (default: a new folder)")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    root = Path(tempfile.mkdtemp(prefix="fipo-reproducible-"))
    inputs = args.inputs or root
    ensure_inputs(inputs / "inputs", inputs / "data")
    extra = [*(["--seed", str(args.seed)] if args.seed is not None else []),
             *(f"--override={o}" for o in args.override)]
    hogs = busy_processes(args.hog)
    try:
        elapsed, _ = run_batch([args.experiment] * args.repeats, args.steps, inputs / "inputs" / "tiny" / "base_model",
                               inputs / "data", root, side_by_side=args.side_by_side, extra=extra)
    finally:
        for hog in hogs:
            hog.kill()
    folder = root / ("parallel" if args.side_by_side else "sequential")
    runs = [run_folder(folder / f"{i}-{args.experiment}", "tiny", args.experiment, args.seed).run_dir
            for i in range(args.repeats)]
    how = "side by side" if args.side_by_side else "one after the other"
    print(f"tiny/{runs[0].name} trained {args.repeats} times, {args.steps} steps, {how}"
          f"{f', beside {args.hog} busy processes' if args.hog else ''} ({elapsed:.0f} s; runs under {folder})")
    equal_everywhere: dict[int, bool] = {}
    same_metrics: dict[int, bool] = {}
    first_difference = None
    largest_gap = 0.0
    for other in range(1, args.repeats):
        print(f"run 0 against run {other}:")
        for step, same_prompts, common, total, acc_a, acc_b, differing, gap in compare(runs[0], runs[other]):
            equal = total > 0 and same_prompts and common == total
            if total:
                equal_everywhere[step] = equal_everywhere.get(step, True) and equal
            same_metrics[step] = same_metrics.get(step, True) and not differing
            largest_gap = max(largest_gap, gap)
            if total and not equal and (first_difference is None or step < first_difference):
                first_difference = step
            shown = "" if acc_a is None and acc_b is None else f"   validation accuracy {acc_a} / {acc_b}"
            pairs = f"prompts {'same' if same_prompts else 'differ'}, {common}/{total} (prompt, response) pairs shared"
            metrics = (f"; metrics the same bits" if not differing else
                       f"; {len(differing)} metrics differ ({', '.join(differing[:3])}{', ...' if len(differing) > 3 else ''})")
            print(f"  step {step:3d}: {pairs if total else 'no batch (validation only)'}{metrics}{shown}")
    finals = [final_accuracy(run) for run in runs]
    known = [f for f in finals if f is not None]
    if len(known) >= 2:
        print(f"final validation accuracy: {', '.join(f'{f:.4f}' for f in known)}; range {max(known) - min(known):.4f}, "
              f"sd {statistics.stdev(known):.4f} over {len(known)} runs of one spec and seed")
    print(f"rollout diagnostics ({', '.join(ROLLOUT_DIAGNOSTICS)}*; no update reads them): largest difference "
          f"{largest_gap:.3g}")
    print(f"SUMMARY same_steps={sum(equal_everywhere.values())} steps={len(equal_everywhere)} "
          f"same_metric_steps={sum(same_metrics.values())} "
          f"first_difference={first_difference if first_difference is not None else 'none'} "
          f"final_accuracy={','.join('none' if f is None else f'{f:.4f}' for f in finals)}")


if __name__ == "__main__":
    main()
