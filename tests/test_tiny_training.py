"""End to end on CPU: the real verl trainer (`python -m verl.trainer.main_ppo`, via `python -m fipo train`) runs
the tiny preset for a few steps, logs what the figures need, checkpoints, and resumes after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

COMMON_METRICS = [
    "response_length/mean",
    "response_length/max",
    "response_length/min",
    "response_length/clip_ratio",
    "critic/score/mean",
    "critic/rewards/mean",
    "critic/advantages/mean",
    "actor/ppo_kl",
    "actor/entropy",
    "actor/grad_norm",
    "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower",
    "actor/pg_loss",
    "timing_s/step",
]
FIPO_METRICS = [
    "actor/influence_weights_mean",
    "actor/influence_weights_min",
    "actor/influence_weights_max",
    "actor/IW_overall_clip_ratio",
    "actor/IW_upper_clip_ratio",
    "actor/IW_lower_clip_ratio",
    "actor/future_kl_mean",
]
VAL_METRIC = "val-core/math_dapo/acc/mean@8"


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


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["fipo", "dapo"])
def test_three_step_run_logs_what_the_figures_need_and_checkpoints(tiny_world, experiment):
    output = finish(fipo_train(tiny_world, experiment, "trainer.total_training_steps=3", "trainer.save_freq=3",
                               "trainer.test_freq=3"))
    assert "Training Progress" in output  # progress reaches the console
    records = read_metrics(tiny_world, experiment)
    steps = [r["step"] for r in records]
    assert steps == [0, 1, 2, 3]  # validation before training, then each step once
    train = [r["data"] for r in records if r["step"] > 0]
    expected = COMMON_METRICS + (FIPO_METRICS if experiment == "fipo" else [])
    for name in expected:
        assert all(name in d for d in train), f"{name} missing from {experiment} metrics"
    assert any("training/filter_groups/evicted_samples" in d for d in train)  # DAPO dynamic sampling
    assert VAL_METRIC in records[0]["data"] and VAL_METRIC in records[-1]["data"]
    checkpoint = tiny_world["results"] / "tiny" / "runs" / experiment / "checkpoints"
    assert (checkpoint / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (checkpoint / "global_step_3" / "actor").is_dir()
    if experiment == "fipo":
        weights = [(d["actor/influence_weights_min"], d["actor/influence_weights_max"]) for d in train]
        assert any(lo < 1.0 or hi > 1.0 for lo, hi in weights), weights  # f leaves 1 from the 2nd mini-batch
        check_conversion_and_evaluation(tiny_world, checkpoint)
    else:
        assert not any(name in train[0] for name in FIPO_METRICS)


def check_conversion_and_evaluation(world, checkpoint):
    """verl's model merger turns the checkpoint into a Hugging Face folder that `fipo eval` can sample."""
    target = world["root"] / "hf_fipo_step3"
    out = subprocess.run([sys.executable, "-m", "fipo", "convert", "--preset", "tiny", "--experiment", "fipo",
                          "--results-dir", str(world["results"]), "--out", str(target)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file()
    out = subprocess.run([sys.executable, "-m", "fipo", "eval", "--model", str(target), "--benchmark", "tiny-test",
                          "--backend", "hf", "--n", "2", "--max-tokens", "48", "--data-dir", str(world["data"]),
                          "--out", str(world["root"] / "eval_step3")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("tiny-test: Avg@2 ")


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
    deadline = time.monotonic() + 600
    while not (marker.exists() and marker.read_text().strip() == "2"):
        assert first.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5)
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
