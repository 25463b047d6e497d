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
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml

from fipo.analysis import catalog
from fipo.spec import ablations, list_experiments, list_presets

ROOT = Path(__file__).resolve().parent.parent
TRAINING_METRICS = [
    "response_length/mean", "response_length/min", "response_length/max", "critic/score/mean",
    "critic/advantages/mean", "actor/ppo_kl", "actor/entropy", "actor/grad_norm", "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower", "timing_s/step",
]
# The smoke configuration trains five of the tiny preset's twelve experiments (config/smoke.yaml says why); the
# artifacts of the other seven are made from the five by test_notebooks_of_the_other_artifacts_run_on_the_smoke_runs.
SMOKE_EXPERIMENTS = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["experiments"]
SMOKE_ARTIFACTS = [a for a in catalog.artifacts_for("tiny") if set(a.experiments) <= set(SMOKE_EXPERIMENTS)]
OTHER_ARTIFACTS = [a for a in catalog.artifacts_for("tiny") if a not in SMOKE_ARTIFACTS]
FIPO_METRICS = ["actor/influence_weights_mean", "actor/influence_weights_min", "actor/influence_weights_max",
                "actor/IW_overall_clip_ratio", "actor/future_kl_mean", "actor/influence_weights_mean_raw",
                "actor/neg_is_max", "actor/pos_is_median", "actor/neg_ratio_2_3", "actor/pos_mini_frac"]


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


def notebook_errors(executed: dict) -> list[dict]:
    """The error outputs of an executed notebook (as nbformat JSON)."""
    return [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def trained(jobs) -> set[str]:
    return {Path(out).parent.name for rule, out in jobs if rule == "train"}


def made(jobs, rule) -> set[str]:
    return {Path(out).stem for r, out in jobs if r == rule}


# ------------------------------------------------------------------------------------ plans


@pytest.mark.parametrize("preset", ["tiny", "qwen2.5-32b", "qwen2.5-7b-math"])
def test_dry_run_plans_every_run_evaluation_figure_and_table(preset, tmp_path):
    jobs = planned(results=tmp_path, config=[f"preset={preset}"])
    experiments = set(list_experiments(preset))
    assert trained(jobs) == experiments
    assert {Path(out).parent.parent.name for r, out in jobs if r == "evaluate"} == experiments
    assert {Path(out).parent.parent.name for r, out in jobs if r == "convert"} == experiments
    artifacts = {a.id for a in catalog.artifacts_for(preset)}
    assert made(jobs, "figure") | made(jobs, "table") == artifacts
    assert ("index", f"{tmp_path}/{preset}/index.html") in jobs
    benchmarks = {Path(out).parent.name for r, out in jobs if r == "evaluate"}
    assert benchmarks == ({"tiny-test"} if preset == "tiny" else {"aime2024", "aime2025"})


def test_the_smoke_configuration_plans_its_runs_and_only_the_artifacts_they_make(tmp_path):
    jobs = planned("--configfile", "config/smoke.yaml", results=tmp_path)
    assert trained(jobs) == set(SMOKE_EXPERIMENTS) < set(list_experiments("tiny"))
    assert made(jobs, "figure") | made(jobs, "table") == {a.id for a in SMOKE_ARTIFACTS}
    assert ("index", f"{tmp_path}/tiny/index.html") in jobs


def test_gpu_rules_declare_their_resources(tmp_path):
    out = snakemake("-n", results=tmp_path, config=["preset=qwen2.5-32b"])
    blocks = out.stdout.split("\n\n")
    train = next(b for b in blocks if "rule train:" in b and "runs/fipo/run.json" in b)
    assert re.search(r"gpu=8\b", train) and re.search(r"nodes=16\b", train) and "runtime=4320" in train
    evaluate = next(b for b in blocks if "rule evaluate:" in b)
    assert re.search(r"gpu=4\b", evaluate)  # vLLM with tensor parallelism 4 for the 32B model
    assert re.search(r"mem_mb=400000\b", train) and re.search(r"cpus_per_task=32\b", train)
    # one GPU asks a one-GPU share of a node's memory and cores, not a whole 8-GPU node's
    out = snakemake("-n", results=tmp_path, config=["preset=qwen2.5-0.5b"])
    train = next(b for b in out.stdout.split("\n\n") if "rule train:" in b and "runs/fipo/run.json" in b)
    assert re.search(r"gpu=1\b", train) and re.search(r"nodes=1\b", train)
    assert re.search(r"mem_mb=50000\b", train) and re.search(r"cpus_per_task=4\b", train)


def train_threads(out) -> set[int]:
    blocks = [b for b in out.stdout.split("\n\n") if "rule train:" in b]
    assert blocks, out.stdout[-3000:]
    return {int(m.group(1)) if (m := re.search(r"^\s*threads: (\d+)$", b, re.M)) else 1 for b in blocks}


def test_cpu_trainings_share_the_cores_as_configured(tmp_path):
    """train.cpu_side_by_side = N gives each CPU training cores / N threads, so that Snakemake runs N at once;
    the default takes two where the machine has the cores and the memory (fipo/scheduling.py)."""
    from fipo.scheduling import cpu_training_threads, machine_memory_mb

    for setting, threads in [(1, 4), (2, 2), (4, 1), (8, 1)]:
        out = snakemake("-n", "--cores", "4", results=tmp_path, config=[f"train={{cpu_side_by_side: {setting}}}"])
        assert out.returncode == 0, out.stdout[-3000:]
        assert train_threads(out) == {threads}, (setting, out.stdout[-3000:])
    out = snakemake("-n", "--cores", "2", results=tmp_path)
    assert train_threads(out) == {cpu_training_threads(None, 2, machine_memory_mb())}
    for bad in ["0", "two"]:
        out = snakemake("-n", results=tmp_path / "r", config=[f"train={{cpu_side_by_side: {bad}}}"])
        assert out.returncode != 0 and "cpu_side_by_side" in out.stderr, out.stderr[-3000:]
        assert not (tmp_path / "r").exists()


def test_multi_node_runs_join_an_existing_ray_cluster(tmp_path):
    out = snakemake("-n", "-p", "ablation_maxlen", results=tmp_path,
                    config=["preset=qwen2.5-32b", 'train={ray_address: "10.0.0.1:6379"}'])
    assert out.returncode == 0, out.stdout[-3000:]
    commands = [line for line in out.stdout.splitlines() if " -m fipo train " in line]
    assert len(commands) == 2 and all("--ray-address 10.0.0.1:6379" in c for c in commands)
    train = next(b for b in out.stdout.split("\n\n") if "rule train:" in b)
    assert re.search(r"gpu=0\b", train)  # only verl's driver runs in the job; the Ray cluster has the GPUs


def job_blocks(out: str) -> dict[tuple[str, str], str]:
    """(rule, first output) -> the job's block of `snakemake -n -p` output (input, resources, shell command...)."""
    blocks = {}
    for block in out.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):$", block, re.M)
        output = re.search(r"^\s*output: (\S+?),?(\s|$)", block, re.M)
        if rule and output:
            blocks[(rule.group(1), output.group(1))] = block
    return blocks


def test_every_gpu_job_waits_for_a_doctor_of_its_own(tmp_path):
    """Training and vLLM evaluation of a GPU preset each wait for the marker `fipo doctor` writes for that very job;
    the tiny CPU preset plans no doctor."""
    out = snakemake("-n", "-p", results=tmp_path, config=["preset=qwen2.5-32b"])
    assert out.returncode == 0, out.stdout[-3000:]
    blocks = job_blocks(out.stdout)
    doctors = {path: block for (rule, path), block in blocks.items() if rule == "doctor"}
    gpu_jobs = [(rule, path, block) for (rule, path), block in blocks.items() if rule in ("train", "evaluate")]
    assert len(gpu_jobs) == 8 + 16 and len(doctors) == len(gpu_jobs)
    for rule, path, block in gpu_jobs:
        job = (f"train/{Path(path).parent.name}" if rule == "train"
               else f"eval/{Path(path).parent.parent.name}/{Path(path).parent.name}")
        marker = f"{tmp_path}/qwen2.5-32b/doctor/{job}.ok"
        assert marker in block.split("output:")[0], (rule, path)
        doctor = doctors[marker]
        stage, experiment = job.split("/")[:2]
        assert f"-m fipo doctor --preset qwen2.5-32b --stage {stage} " in doctor
        assert f"--experiment {experiment} " in doctor and f"--marker {marker} " in doctor
        assert re.search(r"gpu=8\b" if stage == "train" else r"gpu=4\b", doctor) and re.search(r"nodes=1\b", doctor)
        assert f"{tmp_path}/logs/qwen2.5-32b/doctor/{job}.log" in doctor
    assert "Would remove temporary output" in out.stdout  # markers do not outlive their job
    tiny = planned(results=tmp_path / "tiny")
    assert not [job for job in tiny if job[0] == "doctor"]


def test_released_target_plans_the_doctor_the_evaluation_and_the_table(tmp_path):
    out = snakemake("-n", "-p", "released", results=tmp_path, config=["preset=qwen2.5-32b"])
    assert out.returncode == 0, out.stdout[-3000:]
    blocks = job_blocks(out.stdout)
    results = f"{tmp_path}/qwen2.5-32b"
    assert set(blocks) == {
        ("aime_data", "data/aime2024.parquet"),
        ("released_model", f"{results}/released/model.json"),
        ("doctor", f"{results}/doctor/released/aime2024.ok"), ("doctor", f"{results}/doctor/released/aime2025.ok"),
        ("evaluate_released", f"{results}/released/eval/aime2024/summary.json"),
        ("evaluate_released", f"{results}/released/eval/aime2025/summary.json"),
        ("released_table", f"{results}/tables/released.csv"),
    }
    assert "-m fipo fetch-model QwenPilot/FIPO_32B --revision main --record " in out.stdout
    for benchmark in ("aime2024", "aime2025"):
        block = blocks[("evaluate_released", f"{results}/released/eval/{benchmark}/summary.json")]
        assert f"{results}/doctor/released/{benchmark}.ok" in block and f"{results}/released/model.json" in block
        command = block.split("Shell command: ", 1)[1].split(" > ")[0]
        assert command.split(" -m fipo ", 1)[1] == (
            f"eval --model QwenPilot/FIPO_32B --revision main --benchmark {benchmark} --backend vllm --scorer math_dapo "
            "--cons-unanswered vote --n 32 --temperature 1.0 --top-p 0.7 --max-tokens 20480 --tensor-parallel-size 4 "
            f"--data-dir data --out {results}/released/eval/{benchmark} --on-change restart")
        assert re.search(r"gpu=4\b", block)
        doctor = blocks[("doctor", f"{results}/doctor/released/{benchmark}.ok")]
        assert f"fipo doctor --preset qwen2.5-32b --stage released --results-dir {tmp_path} --data-dir data " \
               f"--benchmark {benchmark} --marker {results}/doctor/released/{benchmark}.ok" in doctor
    assert f"-m fipo released-table --preset qwen2.5-32b --results-dir {tmp_path} >" in out.stdout


def test_released_target_is_refused_where_no_released_model_is_declared(tmp_path):
    out = snakemake("-n", "released", results=tmp_path)
    assert out.returncode != 0
    assert ("target released: preset 'tiny' declares no released model (a 'released:' section in "
            "config/presets/tiny.yaml); presets that do: qwen2.5-32b") in out.stdout
    assert not (tmp_path / "tiny").exists()


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


def test_the_default_profile_is_loaded(tmp_path):
    """workflow/profiles/default is found only beside the Snakefile (workflow/Snakefile): rerun-incomplete."""
    out = snakemake("-n", results=tmp_path)
    assert "Using workflow specific profile workflow/profiles/default" in out.stdout, out.stdout[:2000]
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "default" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True


def test_lint_is_clean():
    out = snakemake("--lint")
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout[-3000:]


def test_snakefmt_is_clean():
    """The Snakemake catalog's formatting convention (line length from pyproject's [tool.snakefmt])."""
    out = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "workflow/"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_names_the_environment_yml_environment_and_sdm_conda_runs_its_python(tmp_path):
    """Rules name the conda environment environment.yml creates (by name: Snakemake copies an environment *file*
    under .snakemake/conda/, where its `-e .` would not resolve), under --sdm conda only (a named environment is
    otherwise still exported for each job's metadata, which fails without conda: the smoke run checks that).
    Under --sdm conda the commands run that environment's python, otherwise the interpreter Snakemake runs on.
    (Conda itself is not on this machine.)"""
    rules = {p.name: p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk") if p.name != "common.smk"}
    for name, text in rules.items():
        for block in text.split("\nrule ")[1:]:
            if "    shell:" in block:  # a rule that runs something (target rules only collect inputs)
                assert "    conda:\n        conda_env" in block, (name, block.split(":")[0])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert 'CONDA_ENV = "' + environment["name"] + '"' in (ROOT / "workflow" / "rules" / "common.smk").read_text()
    def interpreters(*args):
        out = snakemake("-n", "-p", *args, results=tmp_path / "r").stdout
        return {line.split("Shell command: ", 1)[-1].split()[0] for line in out.splitlines() if " -m fipo " in line}

    assert interpreters("--sdm", "conda") == {"python"}
    assert interpreters() == {sys.executable}


# ------------------------------------------------------------------------------------ bad config


def test_unknown_preset_stops_before_any_job(tmp_path):
    out = snakemake(results=tmp_path, config=["preset=qwen3-235b"])
    assert out.returncode != 0
    assert "preset: unknown preset 'qwen3-235b'" in out.stderr and f"allowed: {', '.join(list_presets())}" in out.stderr
    assert "qwen2.5-32b" in list_presets()
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


def test_config_values_on_the_command_line_are_typed(tmp_path):
    """Snakemake reads --config values as strings: {timeout_s: 600} must still be a number."""
    out = snakemake("-n", "-p", results=tmp_path, config=["train={timeout_s: 600}", "eval={n: 4}"])
    assert out.returncode == 0, out.stdout[-3000:]
    trains = [line for line in out.stdout.splitlines() if " -m fipo train " in line]
    evals = [line for line in out.stdout.splitlines() if " -m fipo eval " in line]
    assert trains and all("--timeout 600 " in line for line in trains)
    assert evals and all(" --n 4 " in line for line in evals)
    out = snakemake("-n", results=tmp_path, config=["train={timeout_s: 0}"])
    assert out.returncode != 0 and "timeout_s" in out.stderr


@pytest.mark.parametrize("config, message", [
    ("eval={n: 2.0}", "config.eval.n: expected an integer, got 2.0"),
    ("seeds=[1.0]", "config.seeds[0]: expected an integer, got 1.0"),
    ("train={cpu_side_by_side: 1.0}", "config.train.cpu_side_by_side: expected an integer, got 1.0"),
    ("train={timeout_s: .inf}", "config.train.timeout_s: expected a finite number, got inf"),
    ("seeds=[4294967296]", "4294967296 is greater than the maximum of 4294967295"),
    ("results_dir=.", "results_dir: '.' is the working directory itself"),
    ("results_dir=res{1}", "results_dir: 'res{1}' holds a brace"),
    ("train={overrides: [trainer.save_freq=0]}", "trainer.save_freq: must be >= 1, got 0"),
    ("train={overrides: [data.seed=1]}", "is computed from the spec's trainer.seed"),
])
def test_bad_config_values_fail_before_any_job_naming_the_key(tmp_path, config, message):
    out = snakemake("-n", config=[config])
    assert out.returncode != 0 and message in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "InputFunctionException" not in out.stderr


def test_a_results_dir_under_home_is_expanded(tmp_path):
    home = tmp_path / "home"
    out = snakemake("-n", config=["results_dir=~/fipo-results"], env={"HOME": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{home}/fipo-results/tiny/index.html" in out.stdout and not (ROOT / "~").exists()


@pytest.mark.parametrize("spelling", ["{}/", "{}/.", "{}//", "{}/../{}"])
def test_results_dir_spellings_name_one_folder(spelling, tmp_path):
    results = spelling.format(tmp_path, tmp_path.name)
    jobs = planned(results=results)
    assert ("index", f"{tmp_path}/tiny/index.html") in jobs


@pytest.mark.parametrize("name", ["x`touch PWNED`", "../../../x", "a+b", "x y", "$(touch PWNED)", "é"])
def test_unsafe_experiment_names_are_refused_before_any_job(name, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    preset = config / "presets" / "tiny.yaml"
    text = preset.read_text().replace("experiments:\n  dapo:", f"experiments:\n  {json.dumps(name)}:\n    method: dapo\n  dapo:")
    preset.write_text(text)
    before = set(os.listdir(ROOT))
    out = snakemake(results=tmp_path / "r", env={"FIPO_CONFIG_DIR": str(config)})
    assert out.returncode != 0
    assert repr(name) in out.stderr and "names must match ^[A-Za-z0-9][A-Za-z0-9._-]*$" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert set(os.listdir(ROOT)) == before and not (tmp_path / "r").exists()
    assert not list(tmp_path.rglob("PWNED"))


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


def verl_processes_after(ray_dir: str, timeout_s: float = 60.0) -> list[str]:
    """The verl processes still alive ``timeout_s`` after their job ended ([] as soon as none is). The driver dies
    with its wrapper at once; Ray's workers follow it by fate-sharing, which on 2 busy cores can take seconds."""
    deadline = time.monotonic() + timeout_s
    while (left := verl_processes(ray_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, ray_dir):
    """`snakemake --cores all --configfile config/smoke.yaml`, interrupted (SIGINT, as Ctrl-C) while the second
    training run is past its first checkpoint, then run again to the end."""
    root = tmp_path_factory.mktemp("smoke")
    # A space, non-ASCII and '#' in every path: each reaches a shell, Hydra and verl, and must arrive intact.
    # (Given in a config file: on the command line, Snakemake's YAML reading of --config would drop ' #...'.)
    results, data = root / "résultats #1" / "results", root / "résultats #1" / "data"
    paths = root / "paths.yaml"
    paths.write_text(yaml.safe_dump({"results_dir": str(results), "data_dir": str(data)}, allow_unicode=True))
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir)}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "all", "--configfile", "config/smoke.yaml", str(paths)]
    log = open(root / "first.log", "w")
    # SIGINT as the terminal sends it: with its default action, whatever the test runner inherited (a shell's
    # background job starts with SIGINT ignored, and an ignored SIGINT stays ignored across exec).
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = results / "tiny" / "runs"
    deadline, victim = time.monotonic() + 1800, None  # a guard against a hang, not a speed requirement
    while victim is None:
        assert first.poll() is None, (root / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no second run reached a checkpoint in 30 minutes: hung?"
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
    after_interrupt = {
        "leftover_processes": verl_processes_after(str(ray_dir)),
        "victim_record": (victim / "run.json").exists(),
        "temp_files": [str(p) for p in results.rglob("*.tmp")],
    }
    start = time.monotonic()
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    (root / "second.log").write_text(second.stdout + second.stderr)
    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]
    return {"root": root, "results": results, "data": data, "victim": victim, "finished_before": finished_before,
            "model_mtime": model_mtime, "after_interrupt": after_interrupt, "log": second.stdout + second.stderr,
            "cmd": cmd, "env": env, "rerun_s": time.monotonic() - start}


@pytest.mark.slow
def test_smoke_pipeline_writes_every_figure_table_and_the_index(smoke):
    results = smoke["results"]
    assert {a.kind for a in SMOKE_ARTIFACTS} == {"figure", "table"} and OTHER_ARTIFACTS
    for art in SMOKE_ARTIFACTS:
        for path in catalog.outputs(results, "tiny", art):
            assert path.is_file() and path.stat().st_size > 0, path
        executed = json.loads((results / "tiny" / "notebooks" / f"{art.id}.ipynb").read_text())
        errors = notebook_errors(executed)
        assert not errors, (art.id, errors)
    index = (results / "tiny" / "index.html").read_text()
    links = re.findall(r"(?:href|src)='([^']+)'", index)
    assert len(links) >= 3 * len(SMOKE_ARTIFACTS)
    assert all((results / "tiny" / link).resolve().is_file() for link in links), links
    for art in OTHER_ARTIFACTS:  # not selected: listed as missing, never linked
        assert not any(p.exists() for p in catalog.outputs(results, "tiny", art)), art.id
        section = index.split(f"<h2 id='{art.id}'>", 1)[1].split("<h2 ", 1)[0]
        assert "(missing)" in section, art.id
    for experiment in SMOKE_EXPERIMENTS:
        summary = json.loads((results / "tiny" / "eval" / experiment / "tiny-test" / "summary.json").read_text())
        assert summary["samples_per_problem"] == 4 and summary["problems"] == 64
    for experiment in SMOKE_EXPERIMENTS:  # each run's fingerprint, as its run.json says
        record = json.loads((results / "tiny" / "runs" / experiment / "run.json").read_text())
        assert record["fingerprint"][:12] in index
    assert index.count("inputs fingerprint ") == len(catalog.artifacts_for("tiny"))
    table1 = (results / "tiny" / "tables" / "table1.md").read_text()
    # the paper's values in their own, labelled columns: a toy task is not AIME at 32B
    assert "paper, AIME 2024, 32B (not comparable to preset tiny)" in table1
    assert re.search(r"^\| FIPO \| Avg@4 \|.*\| 56\.0 \| 43\.0 \|$", table1, re.M), table1
    assert "Spec(" not in index and "preset tiny" in index
    fig08 = json.loads((results / "tiny" / "notebooks" / "fig08.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in fig08["cells"] for o in c.get("outputs", []))
    assert "paper: Figure 8, 32B" in printed


@pytest.mark.slow
def test_snakemake_report_holds_every_figure_and_table_with_its_caption(smoke, tmp_path):
    import zipfile

    out = tmp_path / "report.zip"
    made = subprocess.run([*smoke["cmd"], "--report", str(out)], cwd=ROOT, env=smoke["env"], capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
    names = zipfile.ZipFile(out).namelist()
    text = "".join(zipfile.ZipFile(out).read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    for art in SMOKE_ARTIFACTS:
        suffix = ".png" if art.kind == "figure" else ".csv"
        assert any(n.endswith(f"/{art.id}{suffix}") for n in names), art.id
        heading = art.heading("tiny")  # its caption; the report stores captions in JSON (non-ASCII escaped)
        assert heading in text or json.dumps(heading)[1:-1] in text, art.id


# FIPO runs of the smoke configuration, for the notebooks whose own runs it does not train: all of those compare
# FIPO variants (influence-weight panels need FIPO metrics); one comparing four runs gets these three
STAND_INS = ["fipo", "fipo-cliphigh-1.4", "fipo-maxlen-25k"]


@pytest.mark.slow
@pytest.mark.parametrize("art", OTHER_ARTIFACTS, ids=lambda a: a.id)
def test_notebooks_of_the_other_artifacts_run_on_the_smoke_runs(art, smoke, tmp_path):
    """The notebook of each artifact the smoke DAG does not make, on real smoke runs given as its ``experiments``
    parameter (as a user compares other runs): every cell runs and it writes its outputs. The pairing of these
    notebooks with their own runs is checked by the plans above (test_each_ablation_target_plans_only_its_runs)."""
    assert set(STAND_INS) <= set(SMOKE_EXPERIMENTS)
    stand_ins = STAND_INS[:len(art.experiments)]
    executed = run_notebook(ROOT / "notebooks" / f"{art.id}.ipynb", ROOT, preset="tiny",
                            results_dir=str(smoke["results"]), out_dir=str(tmp_path), experiments=stand_ins)
    assert not notebook_errors(executed)
    suffixes = (".png", ".pdf") if art.kind == "figure" else (".csv", ".md", ".tex")
    for suffix in suffixes:
        assert (tmp_path / f"{art.id}{suffix}").stat().st_size > 0, (art.id, suffix)


def run_notebook(path, cwd, **parameters):
    """Run all cells as JupyterLab does (the kernel starts in ``cwd``); papermill injects ``parameters``."""
    from fipo.analysis.execute import execute

    # the executed copy goes to a folder of its own: never into the source tree (cwd may be notebooks/)
    out = Path(tempfile.mkdtemp(prefix="fipo-rerun-")) / Path(path).name
    execute(path, out, parameters, cwd=cwd)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_notebooks_rerun_from_their_own_folder_and_follow_a_moved_results_folder(smoke, tmp_path):
    results = smoke["results"]
    # the source notebook, from notebooks/ (JupyterLab's working directory), results_dir relative to the project
    relative = os.path.relpath(results, ROOT)
    out = tmp_path / "source-run"
    out.mkdir()
    run_notebook(ROOT / "notebooks" / "fig03.ipynb", ROOT / "notebooks", preset="tiny", results_dir=relative,
                 out_dir=str(out))
    assert (out / "fig03.png").is_file()
    # the executed copies, unchanged (their injected results_dir is the pipeline's), after the results folder moved
    moved = tmp_path / "archive" / "moved results"
    shutil.copytree(results, moved, ignore=shutil.ignore_patterns("checkpoints", "hf", "base_model"))
    shutil.copytree(results / "tiny" / "base_model", moved / "tiny" / "base_model")
    real = Path(results)
    real.rename(real.with_name("away"))  # the old location is gone, as after a move
    try:
        executed = moved / "tiny" / "notebooks"
        written = {"fig03": "figures/fig03.png", "table1": "tables/table1.csv", "influence": "figures/influence.png",
                   "index": "index.html"}
        for name, output in written.items():
            before = (moved / "tiny" / output).stat().st_mtime_ns
            run_notebook(executed / f"{name}.ipynb", executed)
            assert (moved / "tiny" / output).stat().st_mtime_ns > before, f"{name} did not rewrite {output}"
        assert not real.exists(), "a notebook wrote to the old location"
    finally:
        real.with_name("away").rename(real)


def jupyterlab_listing(results: Path, tmp: Path) -> dict:
    """Start JupyterLab on ``results`` as a user would (`jupyter lab` in that folder, no browser), ask it over HTTP
    what it serves, stop it. Returns the lab page and the contents API's answers."""
    import socket
    import urllib.request

    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "fipo-test-token"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    log = open(tmp / "jupyterlab.log", "w")
    server = subprocess.Popen(
        # --allow-root: CI (and this project's machines) run as root, where Jupyter refuses to start without it
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={results}"],
        cwd=results, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(path: str):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = answer.read().decode()
            return json.loads(body) if answer.headers.get_content_type() == "application/json" else body

    try:
        deadline = time.monotonic() + 180  # a guard against a hang (first start builds nothing: lab is prebuilt)
        while True:
            assert server.poll() is None, (tmp / "jupyterlab.log").read_text()[-3000:]
            try:
                get("/api/status")
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp / "jupyterlab.log").read_text()[-3000:]
                time.sleep(0.5)
        return {"lab": get("/lab"), "folder": get("/api/contents/tiny/notebooks"),
                "fig03": get("/api/contents/tiny/notebooks/fig03.ipynb"),
                "figure": get("/api/contents/tiny/figures/fig03.png?content=0")}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        log.close()


def check_jupyterlab_serves(results: Path, tmp: Path) -> None:
    listing = jupyterlab_listing(results, tmp)
    assert "JupyterLab" in listing["lab"]
    served = {item["name"] for item in listing["folder"]["content"]}
    assert {f"{art.id}.ipynb" for art in SMOKE_ARTIFACTS} <= served
    assert not {f"{art.id}.ipynb" for art in OTHER_ARTIFACTS} & served  # not selected, so never executed there
    notebook = listing["fig03"]
    assert notebook["type"] == "notebook" and notebook["content"]["cells"]
    assert any(c.get("outputs") for c in notebook["content"]["cells"]) and not notebook_errors(notebook["content"])
    assert listing["figure"]["type"] == "file" and listing["figure"]["size"] > 0


@pytest.mark.slow
def test_jupyterlab_starts_and_serves_the_results_folder(smoke, tmp_path):
    """README, 'Opening the notebooks': JupyterLab itself, not only a kernel, on the pipeline's results."""
    check_jupyterlab_serves(smoke["results"], tmp_path)


@pytest.mark.slow
def test_smoke_runs_log_what_the_figures_need(smoke):
    from fipo.run_folder import read_steps

    for experiment in SMOKE_EXPERIMENTS:
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
def test_token_dumps_hold_the_ids_and_step_of_responses_the_rollout_dumps_show(smoke):
    """The ids read from the actor's micro-batch decode to a response verl generated at that step, in the
    prompt group (uid) the dump names."""
    from transformers import AutoTokenizer

    from fipo.analysis import tokens

    run = smoke["results"] / "tiny" / "runs" / "fipo"
    frame = tokens.load_token_dumps(run)
    assert frame.attrs["progress_unit"] == "global step" and set(frame["global_step"]) <= {1, 2}
    tokenizer = AutoTokenizer.from_pretrained(tokens.tokenizer_source(run, smoke["results"]))
    for _, dumped in frame.iterrows():
        assert dumped["token_ids"] is not None and len(dumped["token_ids"]) == dumped["length"]
        text = tokenizer.decode(dumped["token_ids"], skip_special_tokens=True)
        rollouts = [json.loads(line) for line in (run / "rollouts" / f"{int(dumped['global_step'])}.jsonl").open()]
        same_group = [r["output"] for r in rollouts if r["uid"].startswith(dumped["uid"] + "_")]
        assert text in same_group, (text, same_group[:3])


@pytest.mark.slow
def test_tensorboard_event_files_hold_what_the_figures_read(smoke):
    """The tiny preset also logs to TensorBoard (trainer.loggers), offline, in the run folder: the same values
    as metrics.jsonl for the metrics the figures use."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fipo.run_folder import read_steps

    runs = smoke["results"] / "tiny" / "runs"
    run = next(runs / e for e in ("fipo", "fipo-cliphigh-1.4") if runs / e != smoke["victim"])  # one attempt: one event file
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = read_steps(run / "metrics.jsonl")
    for metric in TRAINING_METRICS + FIPO_METRICS:
        logged = {e.step: e.value for e in events.Scalars(metric)}
        expected = {step: data[metric] for step, data in steps.items() if metric in data}
        assert logged.keys() == expected.keys(), metric
        assert all(logged[s] == pytest.approx(v, rel=1e-6, abs=1e-7) for s, v in expected.items()), metric


@pytest.mark.slow
def test_length_quantiles_agree_with_verls_own_length_metrics(smoke):
    """Lengths re-counted from the decoded rollout dumps: the mean matches verl's response_length/mean."""
    import pandas as pd
    from fipo.run_folder import read_steps

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
    from fipo.run_folder import read_steps

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


def plans_after_editing(smoke, module: Path) -> tuple[str, str]:
    """The smoke DAG's dry run after a comment and blank lines are appended to ``module``, then after a new
    function is; the module is restored whatever happens."""
    original = module.read_bytes()

    def plan() -> str:
        out = subprocess.run([*smoke["cmd"], "-n"], cwd=ROOT, env=smoke["env"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout + out.stderr

    try:
        module.write_bytes(original + b"\n# a comment, and layout:\n\n\n")
        commented = plan()
        module.write_bytes(original + b"\n\ndef _changed():\n    return 1\n")
        return commented, plan()
    finally:
        module.write_bytes(original)


@pytest.mark.slow
def test_a_change_to_analysis_code_redoes_the_artifacts_that_import_it(smoke):
    """fipo.analysis.tokens is imported by the influence figure's notebook only (through fipo.code_digest's
    closure of its imports): a changed function there redoes that figure and the index; a comment does not.
    (The module is edited in place and restored: Snakemake, run from the repository, imports the package from its
    working directory before any PYTHONPATH copy.)"""
    commented, changed = plans_after_editing(smoke, ROOT / "fipo" / "analysis" / "tokens.py")
    assert "Nothing to be done" in commented, commented[-3000:]
    assert job_counts(changed) == Counter({"figure": 1, "index": 1, "all": 1}), changed[-3000:]
    assert "artifact=influence" in changed  # the one figure job (fig01.png appears too: as an input of the index)


@pytest.mark.slow
def test_a_change_to_the_fipo_loss_retrains_the_fipo_runs_and_no_baseline(smoke):
    """A train job's params carry the digest of the code that computes its run (fipo.run_folder.training_code):
    a changed function in fipo/loss.py (reached from the verl plugin) retrains the three FIPO runs of the smoke
    DAG and everything made from them, not DAPO or GRPO, which run verl's own losses; a comment changes nothing.
    (Edited in place and restored, as above.)"""
    commented, changed = plans_after_editing(smoke, ROOT / "fipo" / "loss.py")
    assert "Nothing to be done" in commented, commented[-3000:]
    assert job_counts(changed)["train"] == 3, changed[-3000:]
    train_jobs = re.findall(r"^(?:local)?rule train:\n(.*?)(?:\n\n|\Z)", changed, re.M | re.S)
    retrained = {re.search(r"run=([^,\s]+)", job).group(1) for job in train_jobs}
    assert retrained == {"fipo", "fipo-cliphigh-1.4", "fipo-maxlen-25k"}, changed[-3000:]
    assert all("Params have changed" in job for job in train_jobs), changed[-3000:]


@pytest.mark.slow
def test_a_notebook_without_a_needed_metric_fails_naming_run_and_metric(smoke, tmp_path):
    results = tmp_path / "results"
    # fig09's runs, fipo and fipo-raw, with fipo-cliphigh-1.4's log standing in for fipo-raw's (not trained here)
    for experiment, trained in (("fipo", "fipo"), ("fipo-raw", "fipo-cliphigh-1.4")):
        source = smoke["results"] / "tiny" / "runs" / trained / "metrics.jsonl"
        target = results / "tiny" / "runs" / experiment / "metrics.jsonl"
        target.parent.mkdir(parents=True)
        lines = [json.loads(line) for line in source.read_text().splitlines()]
        if experiment == "fipo-raw":  # a log from before the FIPO metrics existed
            for record in lines:
                record["data"].pop("actor/influence_weights_mean", None)
        target.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = subprocess.run([sys.executable, "-m", "fipo.analysis.execute", str(ROOT / "notebooks" / "fig09.ipynb"),
                          str(tmp_path / "fig09.ipynb"), "-r", "preset", "tiny", "-r", "results_dir", str(results),
                          "-r", "out_dir", str(tmp_path / "figures")], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "run tiny/fipo-raw has no metric 'actor/influence_weights_mean' needed by fig09" in out.stderr
    assert not (tmp_path / "figures").exists()  # no partial output


# ------------------------------------------------------------------------------------ provenance and faults

# ------------------------------------------------------------------------------------ what a setting reruns

# The compute jobs each stage's change reruns (the figures, tables and index after them follow their inputs).
RERUN_BY_STAGE = {
    "nothing": set(),
    "evaluate": {"evaluate"},
    "convert": {"convert", "evaluate"},
    "train": {"train", "lengths", "convert", "evaluate"},
}
COMPUTE_RULES = {"tiny_data", "tiny_model", "train", "lengths", "convert", "evaluate"}
# A representative change of each pipeline config key (workflow/schemas/config.schema.yaml declares its stage),
# or why the finished smoke DAG cannot show it.
CONFIG_CHANGES = {
    "train.timeout_s": "train={timeout_s: 1234}",
    "train.ray_address": "train={ray_address: auto}",
    "train.runtime_min": "train={runtime_min: 77}",
    "train.cpu_side_by_side": "train={cpu_side_by_side: 1}",
    "eval.runtime_min": "eval={runtime_min: 99}",
    "eval.n": "eval={n: 3}",
}
NOT_SHOWN = {
    "preset": "scope: another preset is another DAG", "experiments": "scope: selects jobs", "seeds": "scope",
    "study.experiments": "scope", "study.seeds": "scope",
    "study.overrides": "the smoke DAG has no study runs", "study.window": "the smoke DAG has no study report",
    "dapo_source": "the tiny preset reads no DAPO data",
    "train.overrides": "the smoke config sets them: test_an_override_reruns_the_training_it_determines",
    "results_dir": "the smoke config sets it: test_another_spelling_of_the_same_folders_reruns_nothing",
    "data_dir": "as results_dir",
}


def dry_run(smoke, *args, env=None) -> str:
    out = subprocess.run([*smoke["cmd"], "-n", *args], cwd=ROOT, env={**smoke["env"], **(env or {})},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def compute_jobs(plan: str) -> set[str]:
    return set(job_counts(plan)) & COMPUTE_RULES


def test_every_pipeline_config_key_is_shown_or_says_why_not():
    from fipo.determines import schema_declarations

    declared = schema_declarations(yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    assert set(declared) == set(CONFIG_CHANGES) | set(NOT_SHOWN)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(CONFIG_CHANGES))
def test_a_pipeline_setting_reruns_exactly_the_stage_it_declares(smoke, key):
    from fipo.determines import schema_declarations

    stage = schema_declarations(yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))[key]
    # --config replaces the smoke file's sections it names: keep their other keys
    smoke_config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    section, _, _ = key.partition(".")
    change = yaml.safe_load(CONFIG_CHANGES[key].split("=", 1)[1])
    merged = {**(smoke_config.get(section) or {}), **change}
    plan = dry_run(smoke, "--config", f"{section}={json.dumps(merged)}")
    if stage == "nothing":
        assert "Nothing to be done" in plan, (key, plan[-3000:])
    else:
        assert compute_jobs(plan) == RERUN_BY_STAGE[stage], (key, plan[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("key, value, stage", [
    ("evaluation.checkpoint", "best", "convert"),
    ("evaluation.max_tokens", 48, "evaluate"),
    ("evaluation.temperature", 0.9, "evaluate"),
    ("evaluation.scorer", "math_dapo_strict", "evaluate"),
    ("defaults.trainer.timeout_s", 1200, "nothing"),
    ("defaults.trainer.loggers", ["console", "file"], "nothing"),
    ("defaults.fipo.allow_on_policy", True, "nothing"),
    ("defaults.trainer.project_name", "renamed", "nothing"),
])
def test_a_spec_setting_reruns_exactly_the_stage_it_declares(smoke, tmp_path, key, value, stage):
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    preset = config / "presets" / "tiny.yaml"
    spec = yaml.safe_load(preset.read_text())
    *parents, leaf = key.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    preset.write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = dry_run(smoke, env={"FIPO_CONFIG_DIR": str(config)})
    if stage == "nothing":
        assert "Nothing to be done" in plan, (key, plan[-3000:])
    else:
        assert compute_jobs(plan) == RERUN_BY_STAGE[stage], (key, plan[-3000:])
        runs = len(SMOKE_EXPERIMENTS)
        assert job_counts(plan)[stage] == runs, plan[-3000:]  # every run's, and only once


@pytest.mark.slow
def test_an_override_reruns_the_training_it_determines(smoke):
    smoke_train = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["train"]
    train = {**smoke_train, "overrides": [*smoke_train["overrides"], "actor_rollout_ref.actor.optim.weight_decay=0.05"]}
    plan = dry_run(smoke, "--config", f"train={json.dumps(train)}")
    assert compute_jobs(plan) == RERUN_BY_STAGE["train"], plan[-3000:]
    assert job_counts(plan)["train"] == len(SMOKE_EXPERIMENTS)
    # an override that only spells the spec's own value again changes nothing
    same = {**smoke_train, "overrides": [*smoke_train["overrides"], "trainer.save_freq=1"]}
    assert "Nothing to be done" in dry_run(smoke, "--config", f"train={json.dumps(same)}")


@pytest.mark.slow
def test_another_spelling_of_the_same_folders_reruns_nothing(smoke, tmp_path):
    paths = tmp_path / "paths.yaml"  # relative where the smoke config gave absolute paths
    paths.write_text(yaml.safe_dump({"results_dir": os.path.relpath(smoke["results"], ROOT) + "/",
                                     "data_dir": os.path.relpath(smoke["data"], ROOT) + "/."}, allow_unicode=True))
    cmd = [*smoke["cmd"][:-1], str(paths), "-n"]
    out = subprocess.run(cmd, cwd=ROOT, env=smoke["env"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]


@pytest.mark.slow
def test_a_finished_run_is_never_trained_further(smoke):
    """`fipo train` of a finished run with the same fingerprint does nothing and says so, even after the
    pipeline removed its run.json (as Snakemake does before it reruns a job): verl 0.9.1 would resume from the last
    checkpoint and train on past total_training_steps."""
    from fipo.provenance import folder_digest

    run = smoke["results"] / "tiny" / "runs" / "grpo"
    checkpoints = run / "checkpoints"
    before = {"steps": sorted(p.name for p in checkpoints.glob("global_step_*")),
              "latest": (checkpoints / "latest_checkpointed_iteration.txt").read_text(),
              "model": folder_digest(checkpoints), "metrics": (run / "metrics.jsonl").read_text()}
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").unlink()
    overrides = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["train"]["overrides"]
    cmd = [sys.executable, "-m", "fipo", "train", "--preset", "tiny", "--experiment", "grpo", "--results-dir",
           str(smoke["results"]), "--data-dir", str(smoke["data"]), "--record", str(run / "run.json"),
           *[arg for o in overrides for arg in ("--override", o)]]
    out = subprocess.run(cmd, cwd=ROOT, env=smoke["env"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "nothing to train" in out.stderr, out.stderr[-3000:]
    after = {"steps": sorted(p.name for p in checkpoints.glob("global_step_*")),
             "latest": (checkpoints / "latest_checkpointed_iteration.txt").read_text(),
             "model": folder_digest(checkpoints), "metrics": (run / "metrics.jsonl").read_text()}
    assert after == before
    assert json.loads((run / "run.json").read_text())["fingerprint"] == record["fingerprint"]
    assert "Nothing to be done" in dry_run(smoke)  # the record is back: the DAG is finished as before


EDITED = "fipo-maxlen-25k"  # its artifact (Figure 8) reads length statistics: every kind of job reruns


def job_counts(dry_run_output: str) -> Counter:
    return Counter(re.findall(r"^(?:local)?rule (\w+):$", dry_run_output, re.M))


def files_with_mtimes(results: Path) -> dict[str, int]:
    return {str(p.relative_to(results)): p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}


def may_change(relative: str, affected: set[str]) -> bool:
    """What an edit of EDITED's spec may rewrite: its run, evaluation and artifacts, the index, logs."""
    parts = Path(relative).parts
    if parts[0] in ("logs", "benchmarks"):
        return True
    if parts[:3] in (("tiny", "runs", EDITED), ("tiny", "eval", EDITED)) or parts[:2] == ("tiny", "superseded"):
        return True
    if parts[:2] == ("tiny", "runs") and parts[2].startswith(f".{EDITED}.lock"):
        return True
    if parts[1] in ("figures", "tables", "notebooks") and Path(parts[-1]).stem in affected | {"index"}:
        return True
    return relative == "tiny/index.html"


FAULT_KINDS = {  # job kind -> its process's command line
    "train": " -m fipo train ",
    "convert": " -m fipo convert ",
    "lengths": " -m fipo lengths ",
    "evaluate": " -m fipo eval ",
    "notebook": " -m fipo.analysis.execute ",
    "index": "notebooks/index.ipynb",
}


@pytest.mark.slow
def test_an_edited_spec_reruns_only_its_run_and_survives_kill_9_of_every_kind_of_job(smoke, tmp_path, ray_dir):
    """Edit one experiment's spec (fipo-maxlen-25k's learning rate: 3e-4 -> 1.5e-4) after a finished pipeline:
    only that run retrains,
    from scratch (the old run moved aside, never resumed into), and only its evaluation and the artifacts that
    show it are redone. On the way, kill -9 Snakemake's whole process group once in each kind of job and rerun
    the same command: everything completes, nothing complete is recomputed, no half-written file is kept, no
    process is left behind. While the training runs, a second `fipo train` of the same run is refused; after its
    kill -9 (a crash: no clean shutdown) it resumes from its checkpoint with every step logged once."""
    results = smoke["results"]
    run, evaluation = results / "tiny" / "runs" / EDITED, results / "tiny" / "eval" / EDITED / "tiny-test"
    affected = {a.id for a in catalog.artifacts_for("tiny") if EDITED in a.experiments}
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    preset = config / "presets" / "tiny.yaml"
    text = preset.read_text()
    # An edit that must change the trained weights: a seeded run samples the same batches, so an edit that changes
    # no reward (e.g. a shorter overlong buffer that no 2-step response reaches) retrains to a bit-identical model,
    # whose evaluation is then rightly found already done, and there is no evaluation left to kill.
    edited_block = "reward: {overlong_buffer_len: 16}"
    assert text.count(edited_block) == 1
    preset.write_text(text.replace(edited_block, edited_block + "\n      policy: {lr: 1.5e-4}"))
    env = {**smoke["env"], "FIPO_CONFIG_DIR": str(config)}

    # the plan: the edited run and exactly what depends on it
    out = subprocess.run([*smoke["cmd"], "-n"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    needs_lengths = any("lengths" in catalog.ARTIFACTS[a].needs for a in affected)
    expected = Counter({"train": 1, "convert": 1, "evaluate": 1, "index": 1, "all": 1,
                        "figure": sum(catalog.ARTIFACTS[a].kind == "figure" for a in affected),
                        "table": sum(catalog.ARTIFACTS[a].kind == "table" for a in affected)})
    assert needs_lengths
    expected["lengths"] = 1
    assert job_counts(out.stdout) == expected, out.stdout[-4000:]
    train_block = next(b for b in out.stdout.split("\n\n") if "rule train:" in b)
    assert f"runs/{EDITED}/run.json" in train_block and "params" in train_block.lower(), train_block

    old_fingerprint = json.loads((run / "provenance.json").read_text())["fingerprint"]
    old_model = json.loads((evaluation / "settings.json").read_text())["model_sha256"]
    before = files_with_mtimes(results)

    def ready(kind: str) -> bool:
        if kind == "train":  # mid-training: the new run has checkpointed its first step
            marker = run / "checkpoints" / "latest_checkpointed_iteration.txt"
            provenance = run / "provenance.json"
            return (marker.is_file() and marker.read_text().strip() == "1" and provenance.is_file()
                    and json.loads(provenance.read_text())["fingerprint"] != old_fingerprint)
        if kind == "evaluate":  # mid-sampling of the new model: some problems written, not all
            settings, samples = evaluation / "settings.json", evaluation / "samples.jsonl"
            return (settings.is_file() and json.loads(settings.read_text())["model_sha256"] != old_model
                    and samples.is_file() and len(samples.read_text().splitlines()) >= 4)
        return True

    killed, logs = [], []
    for attempt in range(len(FAULT_KINDS) + 2):
        log = open(tmp_path / f"attempt-{attempt}.log", "w")
        process = subprocess.Popen(smoke["cmd"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        victim = None
        while victim is None and process.poll() is None:
            try:
                lines = [" ".join(p.cmdline()) + " " for p in psutil.Process(process.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                lines = []
            for kind, marker in FAULT_KINDS.items():
                if kind not in killed and any(marker in line and (kind != "notebook" or "index.ipynb" not in line)
                                              for line in lines) and ready(kind):
                    victim = kind
                    break
            time.sleep(0.02)
        if victim is None:
            break
        if victim == "train":  # one trainer per run folder: a second one, from another directory, is refused
            second = subprocess.run([sys.executable, "-m", "fipo", "train", "--preset", "tiny", "--experiment", EDITED,
                                     "--data-dir", str(smoke["data"]), "--results-dir", str(results)],
                                    cwd="/", env=env, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and f"{run} is in use by fipo train" in second.stderr, second.stderr[-3000:]
            assert process.poll() is None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        killed.append(victim)
        # the verl tree goes with its wrapper (parent-death signal, Ray fate-sharing)
        assert verl_processes_after(str(ray_dir)) == [], f"left behind after kill -9 during {victim}"
    log.close()
    final = (tmp_path / f"attempt-{attempt}.log").read_text()
    assert process.returncode == 0, final[-5000:]
    from fipo.provenance import folder_digest

    same_model = folder_digest(run / "hf" / "selected") == old_model  # then its evaluation is rightly already done
    assert sorted(killed) == sorted(FAULT_KINDS), f"killed during {killed} only; the same model again: {same_model}"

    # the old run was moved aside, kept and named; the new one started from scratch and was resumed only once
    (moved,) = (results / "tiny" / "superseded").glob(f"{EDITED}-*")
    assert moved.name.endswith(old_fingerprint[:12]) and (moved / "checkpoints").is_dir()
    provenance = json.loads((run / "provenance.json").read_text())
    record = json.loads((run / "run.json").read_text())
    assert provenance["fingerprint"] != old_fingerprint == json.loads((moved / "provenance.json").read_text())["fingerprint"]
    assert record["fingerprint"] == provenance["fingerprint"] and record["last_step"] == 2
    assert len(list(run.glob("metrics.attempt-*.jsonl"))) == 2  # the killed attempt and its resume
    # every step logged once in the merged log of the killed attempt and its resume
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in logged) == [0, 1, 2], [r["step"] for r in logged]
    assert all("actor/influence_weights_mean" in r["data"] for r in logged if r["step"] > 0)
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    # the evaluation is of the new checkpoint (its content, not its path), resumed after the kill
    settings = json.loads((evaluation / "settings.json").read_text())
    assert settings["model_sha256"] == folder_digest(run / "hf" / "selected") != old_model
    assert list((evaluation / "superseded").iterdir())  # the old model's samples, kept
    eval_log = (results / "logs" / "tiny" / "eval" / f"{EDITED}-tiny-test.log").read_text()
    assert re.search(r"64 problems, ([1-9]\d*) already done", eval_log), eval_log[-2000:]
    # nothing complete was recomputed; nothing half-written kept
    after = files_with_mtimes(results)
    changed = {f for f in before if before[f] != after.get(f)}
    assert not {f for f in changed if not may_change(f, affected)}
    assert not [f for f in after if f.endswith(".tmp") or any(".tmp" in part for part in Path(f).parts)]
    for artifact in affected | {"index"}:
        executed = json.loads((results / "tiny" / "notebooks" / f"{artifact}.ipynb").read_text())
        assert not notebook_errors(executed)
    rerun = subprocess.run([*smoke["cmd"], "-n"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr, rerun.stdout[-3000:]


# ------------------------------------------------------------------------------------ seeds


def test_seeds_run_every_experiment_once_per_seed_through_every_step(tmp_path):
    jobs = planned(results=tmp_path, config=["seeds=[1, 2]", "experiments=[dapo, fipo]"])
    runs = {f"{e}@seed{s}" for e in ("dapo", "fipo") for s in (1, 2)}
    assert trained(jobs) == runs
    assert {Path(out).parent.name for r, out in jobs if r == "lengths"} == runs
    assert {Path(out).parent.parent.name for r, out in jobs if r == "convert"} == runs
    assert {Path(out).parent.parent.name for r, out in jobs if r == "evaluate"} == runs
    assert made(jobs, "figure") | made(jobs, "table") == {a.id for a in catalog.artifacts_for("tiny")
                                                          if set(a.experiments) <= {"dapo", "fipo"}}
    # the study's runs at the same seeds are other runs (they train longer)
    assert trained(planned("study", results=tmp_path, config=["seeds=[1, 2]"])) == {
        f"{e}@study-seed{s}" for e in ("dapo", "grpo", "fipo") for s in (1, 2, 3)}


def test_each_seed_is_trained_evaluated_and_handed_to_the_notebooks_with_its_seed(tmp_path):
    out = snakemake("-n", "-p", "fig01", "index", results=tmp_path, config=["seeds=[4, 0]", "experiments=[dapo, fipo]"])
    assert out.returncode == 0, out.stdout[-3000:]
    assert "--experiment fipo --seed 0 --results-dir" in out.stdout
    assert "--experiment dapo --seed 4 --which" in out.stdout  # convert
    assert f"--out {tmp_path}/tiny/eval/fipo@seed0/tiny-test" in out.stdout
    assert "-r seeds 4,0" in out.stdout  # the figures' and the index's notebooks
    assert "--seed" not in snakemake("-n", "-p", "fig01", results=tmp_path).stdout  # no seeds: the spec's seed


@pytest.mark.parametrize("seeds, message", [
    ("[1, 1]", "non-unique elements"),
    ("[-1]", "-1 is less than the minimum of 0"),
    ("[x]", "'x' is not of type 'integer'"),
    ("3", "3 is not of type 'array'"),
])
def test_bad_seeds_fail_before_any_job_naming_the_key(tmp_path, seeds, message):
    out = snakemake("-n", results=tmp_path, config=[f"seeds={seeds}"])
    assert out.returncode != 0 and message in out.stdout and "seeds" in out.stdout, out.stdout[-2000:]
    assert not (tmp_path / "tiny").exists()


# ------------------------------------------------------------------------------------ the study target


def test_the_study_plans_each_experiment_at_each_seed(tmp_path):
    jobs = planned("study", results=tmp_path)
    assert trained(jobs) == {f"{e}@study-seed{s}" for e in ("dapo", "grpo", "fipo") for s in (1, 2, 3)}
    assert ("study", f"{tmp_path}/tiny/study.md") in jobs and not made(jobs, "figure")
    jobs = planned("study", results=tmp_path, config=["study={seeds: [7], experiments: [fipo, dapo]}"])
    assert trained(jobs) == {"fipo@study-seed7", "dapo@study-seed7"}
    assert trained(planned(results=tmp_path)) == set(list_experiments("tiny"))  # the default target has no seeds


@pytest.mark.parametrize("study, message", [
    ("{seeds: [1, 1]}", "non-unique elements"),
    ("{seeds: [-1]}", "-1 is less than the minimum of 0"),
    ("{seeds: [x]}", "'x' is not of type 'integer'"),
    ("{experiments: [grpo, fipo]}", "study.experiments: ['grpo', 'fipo'] lacks ['dapo']"),
    ("{experiments: [dapo, fipo, nope]}", "study.experiments: ['nope'] not in preset 'tiny'"),
])
def test_bad_study_settings_fail_before_any_job(tmp_path, study, message):
    out = snakemake("-n", "study", results=tmp_path, config=[f"study={study}"])
    assert out.returncode != 0 and message in out.stdout, out.stdout[-2000:]
    assert "study" in out.stdout and not (tmp_path / "tiny").exists()


@pytest.mark.slow
def test_the_study_trains_every_seed_and_reports_the_claims(tiny_world, tmp_path, ray_dir):
    """Two experiments at two seeds, two steps each: the real train jobs of runs <experiment>@seed<N>, then the
    report. Two steps give no trend worth a verdict; the test checks the plumbing, not FIPO. The data and the base
    model are the session's (copied in as a finished pipeline leaves them: the smoke test builds them through the
    pipeline), which spares a build of about 100 s."""
    study = ("study={seeds: [1, 2], experiments: [dapo, fipo], window: 1, overrides: "
             "[trainer.total_training_steps=2, trainer.test_freq=2, trainer.save_freq=2]}")
    shutil.copytree(tiny_world["data"], tmp_path / "data")
    shutil.copytree(tiny_world["model"], tmp_path / "results" / "tiny" / "base_model")
    config = [study, f"data_dir={tmp_path / 'data'}"]
    assert not {"tiny_data", "tiny_model"} & {rule for rule, _ in planned("study", results=tmp_path / "results", config=config)}
    out = snakemake("--cores", "all", "study", results=tmp_path / "results", config=config,
                    env={"RAY_TMPDIR": str(ray_dir)}, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:]
    runs = tmp_path / "results" / "tiny" / "runs"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [
        "dapo@study-seed1", "dapo@study-seed2", "fipo@study-seed1", "fipo@study-seed2"]
    seeds = {json.loads((runs / f"fipo@study-seed{s}" / "provenance.json").read_text())["fingerprint"] for s in (1, 2)}
    assert len(seeds) == 2  # the seed is part of what a run is
    report = (tmp_path / "results" / "tiny" / "study.md").read_text()
    assert "2 methods (dapo, fipo) x 2 seeds (1, 2)" in report and "| fipo | 2 |" in report
    assert "FIPO's responses grow longer than DAPO's" in report and "over 2 seeds" in report
    assert "nothing to be done" in snakemake("-n", "study", results=tmp_path / "results", config=config).stdout.lower()


def python_descendants(pid: int) -> list[tuple[psutil.Process, str]]:
    """(process, command line) of the Python processes below ``pid`` (not the shells that run them)."""
    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            if child.name().startswith("python"):
                found.append((child, " ".join(child.cmdline()) + " "))
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.slow
def test_a_snakemake_killed_alone_leaves_one_writer_and_the_next_waits_for_it(smoke, tmp_path, ray_dir):
    """kill -9 of Snakemake's own pid (not its process group) orphans the running job. The next Snakemake, even a
    dry run, refuses to start while that job lives, naming its pid, instead of starting a second writer beside
    it; once it has finished, a run completes without training past the run's end or sampling anything twice.
    Once during training, once during evaluation. (fipo-maxlen-25k's learning rate edited once more: 1e-4.)"""
    results = smoke["results"]
    run, evaluation = results / "tiny" / "runs" / EDITED, results / "tiny" / "eval" / EDITED / "tiny-test"
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    preset = config / "presets" / "tiny.yaml"
    block = "reward: {overlong_buffer_len: 16}"
    preset.write_text(preset.read_text().replace(block, block + "\n      policy: {lr: 1.0e-4}"))
    env = {**smoke["env"], "FIPO_CONFIG_DIR": str(config)}
    old_fingerprint = json.loads((run / "provenance.json").read_text())["fingerprint"]
    old_model = json.loads((evaluation / "settings.json").read_text())["model_sha256"]

    def ready(kind: str) -> bool:
        if kind == "train":
            provenance = run / "provenance.json"
            return provenance.is_file() and json.loads(provenance.read_text())["fingerprint"] != old_fingerprint
        settings, samples = evaluation / "settings.json", evaluation / "samples.jsonl"
        return (settings.is_file() and json.loads(settings.read_text())["model_sha256"] != old_model
                and samples.is_file() and len(samples.read_text().splitlines()) >= 4)

    refusals = []
    for kind, marker in (("train", " -m fipo train "), ("evaluate", " -m fipo eval ")):
        log = open(tmp_path / f"{kind}.log", "w")
        process = subprocess.Popen(smoke["cmd"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        orphan = None
        while orphan is None:
            assert process.poll() is None, (tmp_path / f"{kind}.log").read_text()[-3000:]
            jobs = [p for p, line in python_descendants(process.pid) if marker in line and EDITED in line]
            if jobs and ready(kind):
                orphan = jobs[0]
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # Snakemake alone: its job goes on
        process.wait(timeout=60)
        log.close()
        assert orphan.is_running()
        for args in ([], ["-n"]):
            refused = subprocess.run([*smoke["cmd"], *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                     timeout=1800)
            text = refused.stdout + refused.stderr
            if "still running" not in text and not orphan.is_running():  # it finished first: nothing to refuse
                break
            assert refused.returncode != 0 and f"pid {orphan.pid}" in text and "still running" in text, text[-3000:]
            refusals.append(kind)
        orphan.wait(timeout=900)
    assert "train" in refusals, refusals  # a 2-step training outlives two Snakemake starts
    final = subprocess.run(smoke["cmd"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert final.returncode == 0, (final.stdout + final.stderr)[-5000:]
    train_log = (results / "logs" / "tiny" / "train" / f"{EDITED}.log").read_text()
    assert "nothing to train" in train_log, train_log[-2000:]  # the orphan had finished the run: not trained on
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2] and len(list(run.glob("metrics.attempt-*.jsonl"))) == 1  # one trainer, once
    samples = [json.loads(line) for line in (evaluation / "samples.jsonl").read_text().splitlines()]
    keys = [(s["problem_id"], s["sample_index"]) for s in samples]
    assert len(keys) == len(set(keys)) == 64 * 4  # one writer: every sample once
    assert verl_processes_after(str(ray_dir)) == []
    rerun = subprocess.run([*smoke["cmd"], "-n"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr, rerun.stdout[-3000:]
