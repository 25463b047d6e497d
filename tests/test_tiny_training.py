"""`python -m fipo train` on CPU, the real verl trainer: a run killed outright (a crash, no clean shutdown)
resumes from its checkpoint with every step logged once, and the wall-clock limit stops the whole tree.
What a finished run logs, checkpoint conversion and evaluation are checked on the pipeline's smoke run
(tests/test_pipeline.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest


def fipo_train(world, experiment, *overrides, **popen):
    cmd = [sys.executable, "-m", "fipo", "train", "--preset", "tiny", "--experiment", experiment,
           "--data-dir", str(world["data"]), "--results-dir", str(world["results"])]
    for override in overrides:
        cmd += ["--override", override]
    env = {**os.environ, "RAY_TMPDIR": str(world["ray"])}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-5000:]
    return output


def read_metrics(world, experiment):
    path = world["results"] / "tiny" / "runs" / experiment / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_tree(process):
    tree = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)


@pytest.mark.slow
def test_killed_run_resumes_to_the_end_with_every_step_logged_once(tiny_world):
    overrides = ["trainer.total_training_steps=4", "trainer.save_freq=2", "trainer.test_freq=100",
                 "trainer.val_before_train=false"]
    run_dir = tiny_world["results"] / "tiny" / "runs" / "fipo-tau8"
    marker = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    first = fipo_train(tiny_world, "fipo-tau8", *overrides)
    deadline = time.monotonic() + 1800  # a guard against a hang, not a speed requirement
    while not (marker.exists() and marker.read_text().strip() == "2"):
        assert first.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 30 minutes: hung?"
        time.sleep(0.5)
    # one trainer per run folder: a second one (another working directory) is refused, naming the holder
    second = fipo_train(tiny_world, "fipo-tau8", *overrides, cwd="/")
    refused = second.communicate(timeout=120)[0]
    assert second.returncode == 2 and f"{run_dir} is in use by fipo train" in refused, refused[-3000:]
    assert first.poll() is None
    kill_tree(first)  # a crash: no clean shutdown, no merge by the launcher

    finish(fipo_train(tiny_world, "fipo-tau8", *overrides))
    records = read_metrics(tiny_world, "fipo-tau8")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("actor/influence_weights_mean" in r["data"] for r in records)
    assert len(list(run_dir.glob("metrics.attempt-*.jsonl"))) == 2
    assert marker.read_text().strip() == "4"


@pytest.mark.slow
def test_wall_clock_limit_stops_the_run_with_a_clear_message(tiny_world):
    cmd = [sys.executable, "-m", "fipo", "train", "--preset", "tiny", "--experiment", "grpo", "--timeout", "20",
           "--data-dir", str(tiny_world["data"]), "--results-dir", str(tiny_world["results"])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_TMPDIR": str(tiny_world["ray"])})
    assert out.returncode == 124
    assert "stopped after the wall-clock limit of 20 s" in out.stderr
    leftovers = [p.info["name"] for p in psutil.process_iter(["name", "environ"])
                 if (p.info["environ"] or {}).get("RAY_TMPDIR") == str(tiny_world["ray"])
                 and p.info["name"] in ("raylet", "gcs_server")]
    assert leftovers == []  # the whole tree went with it
