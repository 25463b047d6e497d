"""Run one verl training attempt: environment, wall-clock timeout, metrics that survive crashes and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from fipo.experiment import Experiment
from fipo.files import write_text_atomic
from fipo.run_log import merge_attempts, next_attempt_path, read_steps
from fipo.verl_command import VERL_ENTRY, RunPaths, command_line, verl_environment

TIMEOUT_EXIT_CODE = 124


def run_training(exp: Experiment, run: RunPaths, overrides: list[str], timeout_s: float | None = None) -> int:
    """Start ``python -m verl.trainer.main_ppo``; verl resumes from the latest checkpoint by itself
    (resume_mode=auto). Each attempt logs to its own file; ``metrics.jsonl`` is re-merged after it ends,
    however it ends (and before it starts, so that a crash of this process loses nothing either)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    merge_attempts(run.run_dir)
    overrides = resume_point(run, overrides)
    attempt = next_attempt_path(run.run_dir)
    env = {**os.environ, **verl_environment(run, exp, metrics_path=attempt)}
    print(f"[fipo] {exp.run_id}: {command_line(overrides)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    # A session of its own, so that a timeout can stop the whole tree (driver, Ray, workers); the run folder as
    # working directory, so that Hydra's outputs/ land there (every path in the overrides is absolute).
    process = subprocess.Popen(
        [sys.executable, *VERL_ENTRY[1:], *overrides], env=env, start_new_session=True, cwd=run.run_dir
    )
    # Snakemake (and Slurm) stop a job with SIGTERM: without this the verl tree, in its own session, would
    # outlive us and keep training (and writing checkpoints) in the background.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_tree(process)
        print(
            f"[fipo] {exp.run_id}: stopped after the wall-clock limit of {timeout_s:.0f} s "
            f"(trainer.timeout_s or --timeout); rerun the same command to resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        code = TIMEOUT_EXIT_CODE
    except KeyboardInterrupt:
        _stop_tree(process)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        merge_attempts(run.run_dir)
    print(f"[fipo] {exp.run_id}: exit {code} after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return code


LOGGED_STEP_MARKER = "timing_s/step"  # verl logs it with every trained step's metrics


def resume_point(run: RunPaths, overrides: list[str]) -> list[str]:
    """Where this attempt resumes. verl saves a step's checkpoint before it logs that step's metrics, so a run
    stopped in between would resume after a step whose metrics are lost for good. Then resume from the
    checkpoint before it (or from scratch) and train that step again."""
    from fipo.eval.checkpoints import checkpoint_steps

    marker = run.checkpoints / "latest_checkpointed_iteration.txt"
    if not marker.is_file():
        return overrides
    latest = int(marker.read_text().strip())
    steps = read_steps(run.metrics) if run.metrics.is_file() else {}
    if LOGGED_STEP_MARKER in steps.get(latest, {}):
        return overrides
    earlier = [s for s in checkpoint_steps(run.checkpoints) if s < latest]
    resume = (["trainer.resume_mode=resume_path", f"trainer.resume_from_path={run.checkpoints / f'global_step_{earlier[-1]}'}"]
              if earlier else ["trainer.resume_mode=disable"])
    print(f"[fipo] checkpoint {latest} was saved but its metrics were never logged: "
          f"{'resuming from step ' + str(earlier[-1]) if earlier else 'starting over'} to train step {latest} again",
          file=sys.stderr, flush=True)
    kept = [o for o in overrides if not o.startswith(("trainer.resume_mode=", "trainer.resume_from_path="))]
    return kept + resume


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_tree(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def write_record(path, exp: Experiment, run: RunPaths, overrides: list[str], wall_s: float) -> None:
    """The completion record of a finished run (the pipeline's ``run.json``), written atomically and only after
    verl exited 0: its presence means the run is complete."""
    steps = read_steps(run.metrics) if run.metrics.is_file() else {}
    record = {"preset": exp.preset, "experiment": exp.name, "steps_logged": len(steps),
              "last_step": max(steps, default=None), "wall_s": round(wall_s, 1), "command": command_line(overrides)}
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
