"""Does a tiny run's seed determine it? One experiment trained twice, compared step by step.

Trains the same tiny experiment (same spec, seed, data and base model) twice, one after the other (or side by
side with ``--side-by-side``), each in a fresh results folder, then compares the two runs' rollout dumps step by
step: whether the step's batch had the same prompts, how many of its (prompt, response) pairs the runs share,
and the validation accuracy each logged. This is the measurement behind the README's "What a seed determines on
the CPU path"; it measures, it asserts nothing (the batch-order mechanism has a unit test in
tests/test_verl_cpu.py).

    python benchmarks/check_reproducible.py [--experiment grpo] [--steps 3] [--side-by-side]

The last line is machine-readable: SUMMARY same_steps=<steps whose batches were equal> steps=<N>
first_difference=<step or none>.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from bench_parallel_runs import run_batch
from bench_startup import ensure_inputs

from fipo.analysis.rollouts import dump_files
from fipo.analysis.runs import validation_accuracy_match
from fipo.files import read_jsonl
from fipo.run_folder import read_steps

def batch(path: Path) -> Counter:
    """The (prompt, response) pairs of one rollout dump, as a multiset (the order of a dump is not compared)."""
    return Counter((record["input"], record["output"]) for _, record in read_jsonl(path, "rollout-dump",
                                                                                  skip_blank=True))


def accuracy(data: dict) -> float | None:
    """The step's validation Avg@N (verl's ``val-core/<source>/acc/mean@N``), None where it did not validate."""
    return next((value for key, value in data.items() if validation_accuracy_match(key)), None)


def compare(run_a: Path, run_b: Path) -> list[tuple[int, bool, int, int, float | None, float | None]]:
    """Per step: (step, same prompts, pairs in common, pairs in a, validation accuracy of a, of b)."""
    dumps_a, dumps_b = dump_files(run_a / "rollouts"), dump_files(run_b / "rollouts")
    steps_a, steps_b = read_steps(run_a / "metrics.jsonl"), read_steps(run_b / "metrics.jsonl")
    rows = []
    for step in sorted(set(dumps_a) | set(dumps_b) | set(steps_a)):
        a = batch(dumps_a[step]) if step in dumps_a else Counter()
        b = batch(dumps_b[step]) if step in dumps_b else Counter()
        prompts_a, prompts_b = Counter(p for p, _ in a.elements()), Counter(p for p, _ in b.elements())
        rows.append((step, prompts_a == prompts_b, sum((a & b).values()), sum(a.values()),
                     accuracy(steps_a.get(step, {})), accuracy(steps_b.get(step, {}))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="grpo")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--side-by-side", action="store_true", help="train the two runs at once, not in a row")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fipo-reproducible-"))
    inputs, data = root / "inputs", root / "data"
    ensure_inputs(inputs, data)
    elapsed, _ = run_batch([args.experiment] * 2, args.steps, inputs / "tiny" / "base_model", data, root,
                           side_by_side=args.side_by_side)
    folder = root / ("parallel" if args.side_by_side else "sequential")
    runs = [folder / f"{i}-{args.experiment}" / "tiny" / "runs" / args.experiment for i in (0, 1)]
    print(f"tiny/{args.experiment} trained twice, {args.steps} steps, "
          f"{'side by side' if args.side_by_side else 'one after the other'} ({elapsed:.0f} s; runs under {folder})")
    rows = compare(*runs)
    same, first_difference = 0, None
    for step, same_prompts, common, total, acc_a, acc_b in rows:
        equal = total > 0 and same_prompts and common == total
        same += equal
        if total and not equal and first_difference is None:
            first_difference = step
        shown = "" if acc_a is None and acc_b is None else f"   validation accuracy {acc_a} / {acc_b}"
        pairs = f"prompts {'same' if same_prompts else 'differ'}, {common}/{total} (prompt, response) pairs shared"
        print(f"  step {step:3d}: {pairs if total else 'no batch (validation only)'}{shown}")
    steps = sum(1 for row in rows if row[3])
    print(f"SUMMARY same_steps={same} steps={steps} first_difference={first_difference or 'none'}")


if __name__ == "__main__":
    main()
