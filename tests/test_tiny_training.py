"""`python -m fipo train` on CPU, the real verl trainer: the wall-clock limit stops the whole tree.
What a finished run logs, checkpoint conversion and evaluation, a second trainer refused on a busy run folder,
and a run killed outright (kill -9, no clean shutdown) resuming with every step logged once are checked on the
pipeline's smoke run (tests/test_pipeline.py, the edited-spec test), where the same training is paid for once."""

import os
import subprocess
import sys

import psutil
import pytest


@pytest.mark.slow
def test_the_hang_guard_stops_the_run_with_a_clear_message(tiny_world):
    """--timeout 20: verl's start-up writes nothing to the run folder for longer than that after Hydra's outputs, so
    the guard stops it as it would a hung trainer. At an explicit seed, so that verl (Hydra) also reads the quoted
    run paths holding '@seed' back."""
    cmd = [sys.executable, "-m", "fipo", "train", "--preset", "tiny", "--experiment", "grpo", "--seed", "5", "--timeout", "20",
           "--data-dir", str(tiny_world["data"]), "--results-dir", str(tiny_world["results"])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_TMPDIR": str(tiny_world["ray"])})
    assert out.returncode == 124
    run = tiny_world["results"] / "tiny" / "runs" / "grpo@seed5"
    assert f"nothing in {run} changed for 20 s (trainer.timeout_s or --timeout)" in out.stderr, out.stderr[-3000:]
    assert "[fipo] tiny-grpo@seed5:" in out.stderr and "Platform override from VERL_PLATFORM" in out.stdout + out.stderr
    assert (tiny_world["results"] / "tiny" / "runs" / "grpo@seed5" / "provenance.json").is_file()
    leftovers = [p.info["name"] for p in psutil.process_iter(["name", "environ"])
                 if (p.info["environ"] or {}).get("RAY_TMPDIR") == str(tiny_world["ray"])
                 and p.info["name"] in ("raylet", "gcs_server")]
    assert leftovers == []  # the whole tree went with it
