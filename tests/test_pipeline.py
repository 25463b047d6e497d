"""The Snakemake pipeline: planned jobs for every preset and target, config errors before any job, lint, and
the whole tiny DAG end to end in the smoke configuration (interrupted once mid-training, then finished)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from fipo.analysis import catalog
from fipo.experiment import ablations, list_experiments

ROOT = Path(__file__).resolve().parent.parent
TRAINING_METRICS = [
    "response_length/mean", "response_length/min", "response_length/max", "critic/score/mean",
    "critic/advantages/mean", "actor/ppo_kl", "actor/entropy", "actor/grad_norm", "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower", "timing_s/step",
]
FIPO_METRICS = ["actor/influence_weights_mean", "actor/influence_weights_min", "actor/influence_weights_max",
                "actor/IW_overall_clip_ratio", "actor/future_kl_mean"]


def snakemake(*args, results=None, config=(), env=None, timeout=120, **popen):
    """``--config`` may be given once only (a second one replaces the first): pass its items as ``config``."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    items = [*config, *([f"results_dir={results}"] if results is not None else [])]
    if items:
        cmd += ["--config", *items]
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})}, **popen)
    out.stderr = out.stdout  # snakemake prints errors to either stream: check both together
    return out


def planned(*args, results, config=()) -> list[tuple[str, str]]:
    """(rule, first output) of every job `snakemake -n` plans."""
    out = snakemake("-n", *args, results=results, config=config)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs, rule = [], None
    for line in out.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s*output: (\S+?),?(\s|$)", line)):
            jobs.append((rule, m.group(1)))
            rule = None
        elif rule and line.strip().startswith("jobid:"):  # a target rule: no output
            jobs.append((rule, ""))
            rule = None
    return jobs


def trained(jobs) -> set[str]:
    return {Path(out).parent.name for rule, out in jobs if rule == "train"}


def made(jobs, rule) -> set[str]:
    return {Path(out).stem for r, out in jobs if r == rule}


# ------------------------------------------------------------------------------------ plans


@pytest.mark.parametrize("preset", ["tiny", "qwen2.5-32b", "qwen2.5-7b-math"])
def test_dry_run_plans_every_run_evaluation_figure_and_table(preset, tmp_path):
    start = time.monotonic()
    jobs = planned(results=tmp_path, config=[f"preset={preset}"])
    seconds = time.monotonic() - start
    experiments = set(list_experiments(preset))
    assert trained(jobs) == experiments
    assert {Path(out).parent.parent.name for r, out in jobs if r == "evaluate"} == experiments
    assert {Path(out).parent.parent.name for r, out in jobs if r == "convert"} == experiments
    artifacts = {a.id for a in catalog.artifacts_for(preset)}
    assert made(jobs, "figure") | made(jobs, "table") == artifacts
    assert ("index", f"{tmp_path}/{preset}/index.html") in jobs
    benchmarks = {Path(out).parent.name for r, out in jobs if r == "evaluate"}
    assert benchmarks == ({"tiny-test"} if preset == "tiny" else {"aime2024", "aime2025"})
    if preset == "qwen2.5-32b":
        assert seconds <= 10, f"snakemake -n for the 32B preset took {seconds:.1f} s"


def test_gpu_rules_declare_their_resources(tmp_path):
    out = snakemake("-n", results=tmp_path, config=["preset=qwen2.5-32b"])
    blocks = out.stdout.split("\n\n")
    train = next(b for b in blocks if "rule train:" in b and "runs/fipo/run.json" in b)
    assert re.search(r"gpu=8\b", train) and re.search(r"nodes=16\b", train) and "runtime=4320" in train
    evaluate = next(b for b in blocks if "rule evaluate:" in b)
    assert re.search(r"gpu=4\b", evaluate)  # vLLM with tensor parallelism 4 for the 32B model


def test_multi_node_runs_join_an_existing_ray_cluster(tmp_path):
    out = snakemake("-n", "-p", "ablation_maxlen", results=tmp_path,
                    config=["preset=qwen2.5-32b", 'train={ray_address: "10.0.0.1:6379"}'])
    assert out.returncode == 0, out.stdout[-3000:]
    commands = [line for line in out.stdout.splitlines() if " -m fipo train " in line]
    assert len(commands) == 2 and all("--ray-address 10.0.0.1:6379" in c for c in commands)
    train = next(b for b in out.stdout.split("\n\n") if "rule train:" in b)
    assert re.search(r"gpu=0\b", train)  # only verl's driver runs in the job; the Ray cluster has the GPUs


@pytest.mark.parametrize("family", sorted(ablations("tiny")))
def test_each_ablation_target_plans_only_its_runs(family, tmp_path):
    members = set(ablations("tiny")[family])
    jobs = planned(family, results=tmp_path)
    assert trained(jobs) == members
    figures = made(jobs, "figure") | made(jobs, "table")
    expected = {a.id for a in catalog.ARTIFACTS.values() if a.experiments and set(a.experiments) <= members}
    assert figures == expected


def test_single_artifact_and_single_run_targets(tmp_path):
    jobs = planned("fig03", results=tmp_path)
    assert trained(jobs) == {"dapo", "fipo"} and made(jobs, "figure") == {"fig03"}
    assert {Path(out).parent.name for r, out in jobs if r == "lengths"} == {"dapo", "fipo"}
    jobs = planned("table5", results=tmp_path)
    assert trained(jobs) == {"fipo-fclip-1.0-1.2", "fipo-raw", "fipo"} and made(jobs, "table") == {"table5"}
    jobs = planned(f"{tmp_path}/tiny/runs/fipo-tau8/run.json", results=tmp_path)
    assert trained(jobs) == {"fipo-tau8"} and not made(jobs, "figure")
    jobs = planned("figures", results=tmp_path)
    assert made(jobs, "figure") == {a for a in catalog.ARTIFACTS if catalog.ARTIFACTS[a].kind == "figure"}


def test_lint_is_clean():
    out = snakemake("--lint")
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout[-3000:]


# ------------------------------------------------------------------------------------ bad config


def test_unknown_preset_stops_before_any_job(tmp_path):
    out = snakemake(results=tmp_path, config=["preset=qwen3-235b"])
    assert out.returncode != 0
    assert "preset: unknown preset 'qwen3-235b'" in out.stderr and "allowed: qwen2.5-32b" in out.stderr
    assert not tmp_path.joinpath("logs").exists()


def test_wrong_type_is_refused_by_the_schema(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("eval:\n  n: many\n")
    out = snakemake("--configfile", str(config), results=tmp_path / "r")
    assert out.returncode != 0
    assert "'many' is not of type" in out.stderr and "['eval']['properties']['n']" in out.stderr
    out = snakemake(results=tmp_path / "r", config=["experiments=[fipo,fipo-tau1000]"])
    assert "experiments: ['fipo-tau1000'] not in preset 'tiny'" in out.stderr
    assert not (tmp_path / "r").exists()


def test_non_positive_tau_stops_before_any_job_naming_the_key(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    preset = config / "presets" / "tiny.yaml"
    preset.write_text(preset.read_text().replace("set:\n      fipo: {tau: 8.0}", "set:\n      fipo: {tau: 0.0}"))
    out = snakemake("-n", results=tmp_path / "r", env={"FIPO_CONFIG_DIR": str(config)})
    assert out.returncode != 0
    assert "fipo-tau8" in out.stderr and "fipo.tau" in out.stderr and "> 0" in out.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------ smoke run, end to end


def verl_processes(ray_dir: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["name", "environ"]):
        try:
            if (p.info["environ"] or {}).get("RAY_TMPDIR") == ray_dir:
                found.append(p.info["name"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, ray_dir):
    """`snakemake --cores all --configfile config/smoke.yaml`, interrupted (SIGINT, as Ctrl-C) while the second
    training run is past its first checkpoint, then run again to the end."""
    root = tmp_path_factory.mktemp("smoke")
    results, data = root / "results", root / "data"
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir)}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "all", "--configfile", "config/smoke.yaml",
           "--config", f"results_dir={results}", f"data_dir={data}"]
    log = open(root / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    runs = results / "tiny" / "runs"
    deadline, victim = time.monotonic() + 900, None
    while victim is None:
        assert first.poll() is None, (root / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no second run reached a checkpoint in 15 minutes"
        done = list(runs.glob("*/run.json"))
        for marker in runs.glob("*/checkpoints/latest_checkpointed_iteration.txt"):
            run_dir = marker.parent.parent
            if done and not (run_dir / "run.json").exists() and marker.read_text().strip() == "1":
                victim = run_dir
        time.sleep(0.5)
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/run.json")}
    model_mtime = (results / "tiny" / "base_model" / "tiny_model.json").stat().st_mtime_ns
    os.killpg(first.pid, signal.SIGINT)
    first.wait(timeout=180)
    log.close()
    time.sleep(5)
    after_interrupt = {
        "leftover_processes": verl_processes(str(ray_dir)),
        "victim_record": (victim / "run.json").exists(),
        "temp_files": [str(p) for p in results.rglob("*.tmp")],
    }
    start = time.monotonic()
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    (root / "second.log").write_text(second.stdout + second.stderr)
    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]
    return {"root": root, "results": results, "data": data, "victim": victim, "finished_before": finished_before,
            "model_mtime": model_mtime, "after_interrupt": after_interrupt, "log": second.stdout + second.stderr,
            "cmd": cmd, "env": env, "rerun_s": time.monotonic() - start}


@pytest.mark.slow
def test_smoke_pipeline_writes_every_figure_table_and_the_index(smoke):
    results = smoke["results"]
    for art in catalog.artifacts_for("tiny"):
        for path in catalog.outputs(results, "tiny", art):
            assert path.is_file() and path.stat().st_size > 0, path
        executed = json.loads((results / "tiny" / "notebooks" / f"{art.id}.ipynb").read_text())
        errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, (art.id, errors)
    index = (results / "tiny" / "index.html").read_text()
    links = re.findall(r"(?:href|src)='([^']+)'", index)
    assert len(links) >= 3 * len(catalog.ARTIFACTS)
    assert all((results / "tiny" / link).resolve().is_file() for link in links), links
    for experiment in list_experiments("tiny"):
        summary = json.loads((results / "tiny" / "eval" / experiment / "tiny-test" / "summary.json").read_text())
        assert summary["samples_per_problem"] == 4 and summary["problems"] == 64
    table1 = (results / "tiny" / "tables" / "table1.md").read_text()
    assert "| FIPO | Avg@4 | 56.0 | 43.0 |" in table1  # the paper's value beside the reproduced one


@pytest.mark.slow
def test_smoke_runs_log_what_the_figures_need(smoke):
    from fipo.run_log import read_steps

    for experiment in list_experiments("tiny"):
        run = smoke["results"] / "tiny" / "runs" / experiment
        steps = read_steps(run / "metrics.jsonl")
        assert sorted(steps) == [0, 1, 2], experiment
        needed = TRAINING_METRICS + (FIPO_METRICS if experiment != "dapo" and experiment != "grpo" else [])
        for step in (1, 2):
            missing = [m for m in needed if m not in steps[step]]
            assert not missing, (experiment, step, missing)
        assert "val-core/math_dapo/acc/mean@2" in steps[0] and "val-core/math_dapo/acc/mean@2" in steps[2]
        assert sorted(int(p.stem) for p in (run / "rollouts").glob("*.jsonl")) == [1, 2]


@pytest.mark.slow
def test_length_quantiles_agree_with_verls_own_length_metrics(smoke):
    """Lengths re-counted from the decoded rollout dumps: the mean matches verl's response_length/mean."""
    import pandas as pd
    from fipo.run_log import read_steps

    for experiment in ("dapo", "fipo", "fipo-cliphigh-1.4", "fipo-maxlen-25k"):
        run = smoke["results"] / "tiny" / "runs" / experiment
        stats = pd.read_csv(run / "length_stats.csv").set_index("step")
        steps = read_steps(run / "metrics.jsonl")
        for step, row in stats.iterrows():
            assert row["responses"] == 16 * 8
            assert abs(row["mean"] - steps[step]["response_length/mean"]) <= 0.25, (experiment, step)
            assert row["min"] <= row["q25"] <= row["median"] <= row["q75"] <= row["max"]


@pytest.mark.slow
def test_interrupted_run_resumes_and_finished_jobs_are_not_redone(smoke):
    state = smoke["after_interrupt"]
    assert state["leftover_processes"] == []  # Ctrl-C took the whole verl tree down
    assert state["victim_record"] is False  # an interrupted run is never marked complete
    assert state["temp_files"] == []
    victim = smoke["victim"]
    attempts = sorted(victim.glob("metrics.attempt-*.jsonl"))
    assert len(attempts) == 2
    from fipo.run_log import read_steps

    first, resumed = read_steps(attempts[0]), read_steps(attempts[1])
    assert "actor/entropy" in first[1] and "actor/entropy" not in resumed.get(1, {})  # step 1: from its checkpoint
    if "actor/entropy" not in first.get(2, {}):  # stopped before step 2 was logged: the resumed attempt trained it
        assert "actor/entropy" in resumed[2]
    runs = smoke["results"] / "tiny" / "runs"
    for name, mtime in smoke["finished_before"].items():
        assert (runs / name / "run.json").stat().st_mtime_ns == mtime, f"{name} was trained again"
        assert len(list((runs / name).glob("metrics.attempt-*.jsonl"))) == 1
    assert (smoke["results"] / "tiny" / "base_model" / "tiny_model.json").stat().st_mtime_ns == smoke["model_mtime"]


@pytest.mark.slow
def test_only_jobs_whose_inputs_changed_rerun(smoke):
    out = subprocess.run([*smoke["cmd"], "-n"], cwd=ROOT, env=smoke["env"], capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-2000:]
    # Snakemake reruns on changed content (a touched file with the same checksum does not count)
    notebook = ROOT / "notebooks" / "fig05.ipynb"
    original = notebook.read_bytes()
    try:
        edited = json.loads(original)
        edited["cells"][0]["source"] += "\n"
        notebook.write_text(json.dumps(edited, indent=1) + "\n")
        out = subprocess.run([*smoke["cmd"], "-n"], cwd=ROOT, env=smoke["env"], capture_output=True, text=True, timeout=120)
    finally:
        notebook.write_bytes(original)
    jobs = Counter(re.findall(r"^(?:local)?rule (\w+):$", out.stdout, re.M))
    assert jobs == Counter({"figure": 1, "index": 1, "all": 1}), out.stdout[-3000:]


@pytest.mark.slow
def test_a_notebook_without_a_needed_metric_fails_naming_run_and_metric(smoke, tmp_path):
    results = tmp_path / "results"
    for experiment in ("fipo", "fipo-raw"):
        source = smoke["results"] / "tiny" / "runs" / experiment / "metrics.jsonl"
        target = results / "tiny" / "runs" / experiment / "metrics.jsonl"
        target.parent.mkdir(parents=True)
        lines = [json.loads(line) for line in source.read_text().splitlines()]
        if experiment == "fipo-raw":  # a log from before the FIPO metrics existed
            for record in lines:
                record["data"].pop("actor/influence_weights_mean", None)
        target.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = subprocess.run([sys.executable, "-m", "papermill", "--kernel", "python3", str(ROOT / "notebooks" / "fig09.ipynb"),
                          str(tmp_path / "fig09.ipynb"), "-p", "preset", "tiny", "-p", "results_dir", str(results),
                          "-p", "out_dir", str(tmp_path / "figures")], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "run tiny/fipo-raw has no metric 'actor/influence_weights_mean' needed by fig09" in out.stderr
    assert not (tmp_path / "figures").exists()  # no partial output
