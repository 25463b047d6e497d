"""Where a tiny verl run's wall time goes: start-up phases, training steps, shut-down, measured in one run.

Runs ``python -m fipo train --preset tiny`` for ``--steps`` steps on a fresh run folder (the tiny data and model
are made first if missing, outside the timing) and reads the phase boundaries from the trainer's own log lines:
verl's INFO lines carry a wall-clock timestamp of the process that wrote them (Ray relays worker output late and
in bursts, so the time a line arrives says little); lines without one are timed on arrival. Each phase is the
time from the previous boundary, so the column sums to the total.

    python benchmarks/bench_startup.py [--steps 2] [--results DIR] [--ray-address ADDR] [--override KEY=VALUE]

The last line is machine-readable: SUMMARY startup=<s> (launch to the end of verl's initialisation, "ready to
fit") steps=<s> total=<s>.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3})")
# (phase name, what ends it): the first log line that matches, after the previous boundary
PHASES = (
    ("fipo CLI + verl driver import, Hydra", re.compile(r"^(?!.*\(pid=).*Platform override from VERL_PLATFORM")),
    ("config validation, Ray start/connect", re.compile(r"Started a local Ray instance|Connected to Ray cluster")),
    ("TaskRunner process: spawn + import", re.compile(r"\(pid=\d+\).*Platform override from VERL_PLATFORM")),
    ("TaskRunner: datasets, TransferQueue", re.compile(r"create worker group")),
    ("actor/ref workers: spawn, import, model", re.compile(r"actor and ref model engine initialized")),
    ("reward loop, rollout servers", re.compile(r"all initialize finished, ready to fit")),
    ("agent loop workers, initial validation", re.compile(r"Initial validation metrics")),
    ("training steps", re.compile(r"Saving checkpoint to .*global_step_(\d+)")),
    ("checkpoint, shut-down", re.compile(r"\[fipo\] .*: exit \d+ after")),
)
STARTUP_PHASES = 6  # up to "ready to fit"


def ensure_inputs(results: Path, data: Path) -> None:
    from fipo.data import dataset_path

    if not dataset_path("tiny-train", data).exists():
        subprocess.run([sys.executable, "-m", "fipo", "data", "tiny", "--data-dir", str(data)], cwd=ROOT, check=True)
    if not (results / "tiny" / "base_model").is_dir():
        subprocess.run([sys.executable, "-m", "fipo", "tiny-model", "--results-dir", str(results)], cwd=ROOT, check=True)


def timed_lines(cmd: list[str]) -> tuple[list[tuple[float, str]], int, float]:
    """(epoch seconds, line) for every output line, the exit code, and the launch time."""
    start = time.time()
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        arrived = time.time()
        match = STAMP.search(line)
        stamped = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if match else arrived
        lines.append((stamped, line.rstrip("\n")))
    return lines, process.wait(), start


def phase_times(lines: list[tuple[float, str]], start: float) -> list[tuple[str, float]]:
    """Seconds of each phase; a phase whose end never appeared is reported as missing (None)."""
    out, previous, index = [], start, 0
    for name, pattern in PHASES:
        found = None
        for i in range(index, len(lines)):
            if pattern.search(lines[i][1]):
                found = i
                if name == "training steps":  # the last checkpoint ends the steps
                    for j in range(i + 1, len(lines)):
                        if pattern.search(lines[j][1]):
                            found = j
                break
        if found is None:
            out.append((name, None))
            continue
        at = max(lines[found][0], previous)
        out.append((name, at - previous))
        previous, index = at, found + 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: a temporary one)")
    parser.add_argument("--experiment", default="dapo")
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra verl Hydra override for the run (repeatable), to compare settings")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fipo-startup-"))
    results, data = (args.results or root / "results").resolve(), root / "data"
    ensure_inputs(results, data)
    run_dir = results / "tiny" / "runs" / args.experiment
    if run_dir.exists():
        sys.exit(f"{run_dir} exists: give a fresh --results folder (a resumed run skips work)")
    cmd = [sys.executable, "-u", "-m", "fipo", "train", "--preset", "tiny", "--experiment", args.experiment,
           "--results-dir", str(results), "--data-dir", str(data), "--override",
           f"trainer.total_training_steps={args.steps}", "--override", f"trainer.save_freq={args.steps}"]
    if args.ray_address:
        cmd += ["--ray-address", args.ray_address]
    for override in args.override:
        cmd += ["--override", override]
    lines, code, start = timed_lines(cmd)
    (root / "train.log").write_text("\n".join(line for _, line in lines) + "\n")
    if code != 0:
        sys.exit(f"training failed (exit {code}); log: {root / 'train.log'}")
    phases = phase_times(lines, start)
    print(f"tiny/{args.experiment}, {args.steps} steps (log: {root / 'train.log'})")
    for name, seconds in phases:
        print(f"  {name:<44} {'missing' if seconds is None else f'{seconds:6.1f} s'}")
    known = [s for _, s in phases if s is not None]
    startup = sum(s or 0.0 for _, s in phases[:STARTUP_PHASES])
    steps = phases[STARTUP_PHASES + 1][1] or 0.0
    print(f"SUMMARY startup={startup:.1f} steps={steps:.1f} total={sum(known):.1f}")


if __name__ == "__main__":
    main()
