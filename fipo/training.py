"""Run one verl training attempt as a child process: environment, a hang guard, a tree that dies with us.

The run folder's lifecycle (lock, fingerprint, attempts, resume point, record) is :mod:`fipo.run_folder`'s;
this module only starts and stops ``python -m verl.trainer.main_ppo``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from fipo.spec import Experiment
from fipo.hydra_values import hydra_value
from fipo.run_folder import RunFolder
from fipo.stall_guard import Stalled, wait_while_progressing
from fipo.verl_command import VERL_ENTRY, command_line, verl_environment

RAY_ADDRESS_KEY = "+ray_kwargs.ray_init.address"
RUNTIME_ENV_VARS = "ray_kwargs.ray_init.runtime_env.env_vars"

TIMEOUT_EXIT_CODE = 124
_PR_SET_PDEATHSIG = 1


def run_training(exp: Experiment, run: RunFolder, overrides: list[str], timeout_s: float | None = None,
                 lock_fd: int | None = None) -> int:
    """Start verl on ``run`` (whose lock the caller holds: ``lock_fd`` is handed to verl, so that the folder stays
    locked for as long as verl lives). verl resumes from the latest checkpoint by itself (resume_mode=auto).
    ``timeout_s``: the hang guard (trainer.timeout_s, --timeout); the attempt is stopped once nothing in the run
    folder (metrics, rollout dumps, checkpoints, Hydra's outputs) has changed for that long, however long it has
    run: a slow machine only makes a step slower, a hung trainer stops writing.
    Each attempt logs to its own file; ``metrics.jsonl`` is re-merged after it ends, however it ends (and before
    it starts, so that a crash of this process loses nothing either)."""
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.merge_attempts()
    overrides = run.resume_point(overrides, log=log)
    attempt = run.new_attempt()
    verl_env = verl_environment(run, exp, metrics_path=attempt)
    env = {**os.environ, **verl_env}
    if any(o.startswith(RAY_ADDRESS_KEY + "=") for o in overrides):
        # On an existing Ray cluster verl's TaskRunner (its file logger included) and workers run in processes the
        # raylets start, with the environment of `ray start`, not ours: hand them ours through the job's runtime_env.
        overrides = [*overrides, *(f"+{RUNTIME_ENV_VARS}.{key}={hydra_value(value)}" for key, value in verl_env.items())]
    log(f"[fipo] {exp.run_id}: {command_line(overrides)}")
    start = time.monotonic()
    # A session of its own, so that a timeout can stop the whole tree (driver, Ray, workers); the run folder as
    # working directory, so that Hydra's outputs/ land there (every path in the overrides is absolute). The
    # driver dies with this process even when it is killed with SIGKILL (the parent-death signal), and Ray's
    # processes die with the driver (Ray starts them fate-shared): a killed job leaves no trainer behind.
    process = subprocess.Popen(
        [sys.executable, *VERL_ENTRY[1:], *overrides], env=env, start_new_session=True, cwd=run.run_dir,
        pass_fds=(lock_fd,) if lock_fd is not None else (), preexec_fn=_die_with_parent(os.getpid()),
    )
    # Snakemake (and Slurm) stop a job with SIGTERM: the verl tree, in its own session, must go with us.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = wait_while_progressing(process, [run.run_dir], timeout_s)
    except Stalled as stalled:
        _stop_tree(process)
        log(f"[fipo] {exp.run_id}: stopped after {stalled.elapsed_s:.0f} s: nothing in {run.run_dir} changed for "
            f"{timeout_s:.0f} s (trainer.timeout_s or --timeout); rerun the same command to resume from the last "
            f"checkpoint")
        code = TIMEOUT_EXIT_CODE
    except KeyboardInterrupt:
        _stop_tree(process)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        run.merge_attempts()
    log(f"[fipo] {exp.run_id}: exit {code} after {time.monotonic() - start:.0f} s")
    return code


def _die_with_parent(parent_pid: int):
    """preexec_fn: SIGKILL this child when its parent dies (Linux prctl; elsewhere the timeout and signal
    handlers above are all there is)."""

    def preexec():
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return preexec


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
