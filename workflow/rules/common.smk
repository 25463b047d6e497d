# Helpers shared by the rule files (config validation, the experiment spec, the file names of every step).
# Everything about a run comes from the spec (fipo.spec) and every figure's needs from fipo.analysis.catalog,
# so the DAG and the notebooks cannot disagree.
import dataclasses
import fcntl
import math
import os
import re
import shlex
import sys

from snakemake.settings.types import DeploymentMethod
from pathlib import Path

import yaml
from snakemake.utils import validate

from fipo import data as fipo_data
from fipo import tiny
from fipo.analysis import catalog
from fipo.spec import (
    SpecError,
    ablations,
    evaluation,
    list_experiments,
    list_presets,
    load_all,
    released,
    with_overrides,
    with_seed,
)
from fipo.code_digest import code_digest
from fipo.folder_lock import held_locks
from fipo.determines import CONVERT, EVALUATE, REPORT, config_material, fingerprint
from fipo.provenance import project_version
from fipo.run_folder import spec_fingerprint
from fipo.run_names import parse_run_name, run_name, run_seeds
from fipo.scheduling import CPU_EVALUATION_MEM_MB, CPU_TRAINING_MEM_MB, cpu_training_threads, machine_memory_mb

SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"


def typed_cli_values(value, schema):
    """`--config 'train={timeout_s: 600}'` reaches us as {'timeout_s': '600'} (Snakemake reads --config values
    with YAML's BaseLoader, all strings): read such strings as YAML where the schema expects no string."""
    if isinstance(value, dict) and "properties" in schema:
        return {k: typed_cli_values(v, schema["properties"].get(k, {})) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [typed_cli_values(v, schema["items"]) for v in value]
    types = schema.get("type", [])
    if isinstance(value, str) and types and "string" not in (types if isinstance(types, list) else [types]):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # the schema's message names the key
    return value


def _fail(message):
    raise WorkflowError(f"config error: {message}")


def strict_config_errors(value, schema, path="config"):
    """What JSON Schema lets through and this pipeline must not: a float where an integer belongs (JSON Schema
    takes 2.0 for an integer, and `seeds=[1.0]` or `eval={n: 2.0}` then fails inside a job), and a non-finite
    number (`.inf` passes every minimum)."""
    if isinstance(value, dict) and "properties" in schema:
        return [
            e for k, v in value.items() for e in strict_config_errors(v, schema["properties"].get(k, {}), f"{path}.{k}")
        ]
    if isinstance(value, list) and "items" in schema:
        return [e for i, v in enumerate(value) for e in strict_config_errors(v, schema["items"], f"{path}[{i}]")]
    types = schema.get("type", [])
    types = types if isinstance(types, list) else [types]
    if isinstance(value, float) and "number" not in types:
        return [f"{path}: expected an integer, got {value!r}"]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: expected a finite number, got {value!r}"]
    return []


def folder_setting(key):
    """results_dir/data_dir as a folder: `~` expanded, normalised (`results/`, `./results`, `results` and its
    absolute path are one folder), and refused where Snakemake or this pipeline cannot use it: braces (Snakemake
    reads them as wildcards) or the working directory itself (the repository's files would sit among results)."""
    path = os.path.abspath(os.path.expanduser(config[key]))
    if "{" in path or "}" in path:
        _fail(f"{key}: {config[key]!r} holds a brace, which Snakemake reads as a wildcard; name another folder")
    if path == os.getcwd():
        _fail(f"{key}: {config[key]!r} is the working directory itself; name a folder of its own (e.g. results)")
    # One spelling per folder, whichever the user wrote: relative under the working directory, else absolute
    # (a job's outputs are known to Snakemake by their path: another spelling would be another job).
    inside = os.path.commonpath([path, os.getcwd()]) == os.getcwd()
    return os.path.relpath(path) if inside else path


def release_stale_locks(state_dir=Path(".snakemake")):
    """A Snakemake killed with SIGKILL (or by a power loss) leaves its locks behind, and the next run refuses to
    start until `snakemake --unlock`. Every Snakemake of this pipeline holds a shared flock on one file for its
    lifetime (the kernel drops it however the process dies): one that gets it exclusively is the only one alive
    here, so any lock left in .snakemake/locks is stale and is removed, as --unlock would. Returns whether this
    Snakemake is alone (False where another runs, or where the file system has no flock)."""
    global PIPELINE_ALIVE_FD
    state_dir.mkdir(exist_ok=True)
    fd = os.open(state_dir / "fipo-pipeline.alive", os.O_RDWR | os.O_CREAT, 0o666)
    alone = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
        stale = sorted((state_dir / "locks").glob("*.lock"))
        for path in stale:
            path.unlink()
        if stale:
            print(f"fipo: removed {len(stale)} stale Snakemake lock(s) left by a killed run", file=sys.stderr)
    except BlockingIOError:
        pass  # another Snakemake of this pipeline is running: its locks are live
    except OSError:  # a file system without flock: leave the locks to `snakemake --unlock`, as without us
        os.close(fd)
        return False
    fcntl.flock(fd, fcntl.LOCK_SH)
    PIPELINE_ALIVE_FD = fd  # held (shared) until this process ends
    return alone


ALONE = release_stale_locks()  # no other Snakemake of this pipeline is alive
SCHEMA_TREE = yaml.safe_load(SCHEMA.read_text())
config.update(typed_cli_values(dict(config), SCHEMA_TREE))
validate(config, schema=str(SCHEMA))
for _error in strict_config_errors(config, SCHEMA_TREE):
    _fail(_error)

PRESET = config["preset"]
# One spelling per folder (folder_setting), so that every rule's output and every target the user names match;
# any other character is allowed, every shell use is quoted.
RESULTS = folder_setting("results_dir")
DATA = folder_setting("data_dir")
# With no other Snakemake of this pipeline alive, a held folder lock is a job that outlived its Snakemake (killed
# alone: its jobs go on) or a fipo command started by hand: the same job started again would be a second writer.
_held = held_locks(RESULTS) if ALONE else []
if _held:
    raise WorkflowError(
        "a job is still running in the results folder, with no Snakemake of this pipeline alive (one killed "
        "alone leaves its jobs running): " + "; ".join(_held) + ". Wait for it to finish or stop it (kill PID), "
        "then run Snakemake again"
    )
# The project's environment. Run inside it (venv or `conda activate fipo-workbench`), every rule uses the
# interpreter snakemake runs on. With `--sdm conda`, Snakemake activates the named environment CONDA_ENV
# (made once from environment.yml; named, so nothing is copied or built under .snakemake/conda/) in each job,
# and the rules run that environment's `python`.
CONDA_ENV = "fipo-workbench"
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else sys.executable


def conda_env(wildcards):
    """The rules' `conda:`. Only under --sdm conda: otherwise Snakemake would still ask conda to export a named
    environment for every job's metadata, and fail where conda is not installed."""
    return CONDA_ENV if USE_CONDA else None


VERSION = project_version()


try:
    if PRESET not in list_presets():
        _fail(f"preset: unknown preset {PRESET!r}; allowed: {', '.join(list_presets())}")
    # Validates every experiment of the preset (types, ranges such as fipo.tau > 0) before any job starts.
    SPECS = {exp.name: exp for exp in load_all(PRESET)}
    EVAL = evaluation(PRESET)
    ABLATIONS = ablations(PRESET)
    RELEASED = released(PRESET)  # the authors' released checkpoint, if the preset declares one (target `released`)
except SpecError as err:
    _fail(str(err))
unknown = [e for e in config.get("experiments") or [] if e not in SPECS]
if unknown:
    _fail(f"experiments: {unknown} not in preset {PRESET!r}; allowed: {', '.join(SPECS)}")
EXPERIMENTS = list(config.get("experiments") or SPECS)
ARTIFACTS = [a for a in catalog.artifacts_for(PRESET) if set(a.experiments) <= set(EXPERIMENTS)]
FIGURES = [a.id for a in ARTIFACTS if a.kind == "figure"]
TABLES = [a.id for a in ARTIFACTS if a.kind == "table"]
TRAIN = config.get("train") or {}
TRAIN_OVERRIDES = list(TRAIN.get("overrides") or [])
if (config.get("eval") or {}).get("n"):  # the evaluation as run: the preset's, with the config's n
    EVAL = dataclasses.replace(EVAL, n=config["eval"]["n"])
# The seed dimension: every experiment once per seed (runs/<experiment>@seed<N>/), or once at the spec's seed.
SEEDS = list(config.get("seeds") or [])
# The study target (workflow/rules/study.smk): its experiments at each seed, runs/<experiment>@study-seed<N>/.
STUDY = config.get("study") or {}
STUDY_EXPERIMENTS = list(STUDY.get("experiments") or [e for e in ("dapo", "grpo", "fipo") if e in SPECS])
STUDY_SEEDS = list(STUDY.get("seeds") or [1, 2, 3])
STUDY_OVERRIDES = list(STUDY.get("overrides") or [])
STUDY_WINDOW = STUDY.get("window") or 5
unknown = [e for e in STUDY_EXPERIMENTS if e not in SPECS]
if unknown:
    _fail(f"study.experiments: {unknown} not in preset {PRESET!r}; allowed: {', '.join(SPECS)}")
missing = [e for e in ("fipo", "dapo") if e not in STUDY_EXPERIMENTS]
if missing:
    _fail(f"study.experiments: {STUDY_EXPERIMENTS} lacks {missing}: the study's claims compare fipo with dapo")
STUDY_REPORT = f"{RESULTS}/{PRESET}/{catalog.STUDY_REPORT}"  # linked from the index once made
STUDY_RUNS = [run_name(e, seed, study=True) for e in STUDY_EXPERIMENTS for seed in STUDY_SEEDS]


def runs_of(experiment):
    """The pipeline's runs of an experiment: one per seed of ``seeds``, or the spec's own."""
    return [run_name(experiment, seed) for seed in run_seeds(SEEDS)]


def runs_of_all(experiments):
    return [run for e in experiments for run in runs_of(e)]


RUNS = list(dict.fromkeys([*SPECS, *runs_of_all(SPECS), *STUDY_RUNS]))  # every run folder a train job may make


def one_of(names):
    """A wildcard constraint matching exactly these names (escaped: a name is text, not a pattern)."""
    return "|".join(re.escape(name) for name in names)


def run_experiment(run):
    """The experiment a run trains, as verl gets it: at its seed, with its overrides applied and checked
    (fipo.spec.with_overrides)."""
    if run not in RUN_EXPERIMENTS:
        experiment, seed, study = parse_run_name(run)
        RUN_EXPERIMENTS[run] = with_overrides(
            with_seed(SPECS[experiment], seed, study), run_overrides(run), "train.overrides/study.overrides"
        )
    return RUN_EXPERIMENTS[run]


RUN_EXPERIMENTS = {}


def run_arguments(run):
    """The `--experiment E [--seed N [--study]]` of the fipo commands that find this run's folder."""
    experiment, seed, study = parse_run_name(run)
    return [
        "--experiment",
        experiment,
        *(["--seed", str(seed)] if seed is not None else []),
        *(["--study"] if study else []),
    ]


def run_spec(wildcards):
    """The experiment a train job's run belongs to (the spec at its own seed: resources do not depend on it)."""
    return SPECS[parse_run_name(wildcards.run)[0]]


def run_overrides(run):
    """The user's overrides of every run, then the study's for a study run."""
    return TRAIN_OVERRIDES + (STUDY_OVERRIDES if parse_run_name(run)[2] else [])


def run_fingerprint(wildcards):
    """What a run computes (fipo.run_folder.spec_fingerprint, from the settings declared to determine training):
    a train job whose fingerprint changed reruns (Snakemake's params trigger), and `fipo train` moves the old run
    aside instead of resuming it. Timeouts, trackers and paths are not in it."""
    return spec_fingerprint(run_experiment(wildcards.run), VERSION)


def convert_fingerprint(wildcards):
    """Which checkpoint is evaluated (evaluation.checkpoint) and the code that converts it."""
    return fingerprint(CONVERT, EVAL, code=code_digest("fipo.eval.checkpoints"))


def eval_fingerprint(wildcards):
    """What an evaluation computes: the settings declared to determine it (the preset's evaluation, the config's
    eval.n) and the code that samples and scores."""
    return fingerprint(EVALUATE, EVAL, code=code_digest("fipo.eval.runner"))


def report_settings(wildcards):
    """The pipeline config's keys declared to determine a report (study.window)."""
    return fingerprint(
        REPORT, code=code_digest("fipo.analysis.study"), config=config_material(config, SCHEMA_TREE, REPORT)
    )


try:  # every run's overrides, applied and checked before any job starts
    for _run in RUNS:
        run_experiment(_run)
except SpecError as err:
    _fail(str(err))


# ------------------------------------------------------------------------------------ file names


def run_dir(run):
    return f"{RESULTS}/{PRESET}/runs/{run}"


def run_record(run):
    """Written by `fipo train --record` only after verl exits 0: the run is complete."""
    return f"{run_dir(run)}/run.json"


def dataset_files(names):
    return [str(fipo_data.dataset_path(name, DATA)) for name in names]


def train_inputs(wildcards):
    spec = run_spec(wildcards)
    inputs = dataset_files([spec.data.train, *spec.data.val])
    if "${results_dir}" in spec.model.path:  # a model the pipeline makes (tiny)
        inputs.append(f"{RESULTS}/tiny/base_model/tiny_model.json")
    if spec.trainer.device == "cuda":
        inputs.append(doctor_marker(f"train/{parse_run_name(wildcards.run)[0]}"))  # a seed needs no other machine
    return inputs


def doctor_marker(job):
    """The marker `fipo doctor` writes when this machine can run `job` (train/E, eval/E/B, released/B): only
    GPU jobs of GPU presets wait for one (workflow/rules/doctor.smk)."""
    return f"{RESULTS}/{PRESET}/doctor/{job}.ok"


def eval_doctor(job):
    """The doctor marker an evaluation waits for: with vLLM only (the transformers backend runs on the CPU)."""
    return [doctor_marker(job)] if EVAL.backend == "vllm" else []


def eval_summary(run, benchmark):
    return f"{RESULTS}/{PRESET}/eval/{run}/{benchmark}/summary.json"


def all_eval_summaries(experiments=None):
    """The evaluations of every run (each seed's) of these experiments (default: the selected ones)."""
    return [eval_summary(run, b) for run in runs_of_all(experiments or EXPERIMENTS) for b in EVAL.benchmarks]


def artifact_files(artifact_id):
    art = catalog.ARTIFACTS[artifact_id]
    return [str(p) for p in catalog.outputs(RESULTS, PRESET, art)]


def artifact_inputs(wildcards):
    """What an artifact's notebook reads: the runs it compares, their length statistics, their evaluations."""
    art = catalog.ARTIFACTS[wildcards.artifact]
    inputs = [str(catalog.notebook_path(art.id))]
    inputs += [run_record(run) for run in runs_of_all(art.experiments)]
    if "lengths" in art.needs:
        inputs += [f"{run_dir(run)}/length_stats.csv" for run in runs_of_all(art.experiments)]
    if "eval" in art.needs:
        inputs += all_eval_summaries(art.experiments)
    return inputs


def index_html():
    return f"{RESULTS}/{PRESET}/index.html"


def train_threads(wildcards):
    """A CPU run's share of the cores, so that train.cpu_side_by_side of them run at once (on Slurm, the CPUs it
    asks for: `train={cpu_side_by_side: 1}` asks for all). GPU runs ask 1 (their CPUs are cpus_per_task)."""
    if run_spec(wildcards).trainer.device != "cpu":
        return 1
    return cpu_training_threads(TRAIN.get("cpu_side_by_side"), workflow.cores, machine_memory_mb())


def gpu_resources(spec):
    """Slurm resources of a training run: the whole verl job (driver + Ray) on nnodes × n_gpus_per_node."""
    if spec.trainer.device == "cpu":
        return {"mem_mb": CPU_TRAINING_MEM_MB, "runtime": 60, "gpu": 0, "nodes": 1}
    if TRAIN.get("ray_address"):  # multi-node: the job is only the driver; the Ray cluster holds the GPUs
        return {"mem_mb": 32000, "runtime": TRAIN.get("runtime_min") or 3 * 24 * 60, "gpu": 0, "nodes": 1}
    gpus = spec.trainer.n_gpus_per_node
    return {  # per node, in proportion to its GPUs: 400 GB and 32 cores for 8 (a one-GPU job asks 50 GB and 4)
        "mem_mb": 50_000 * gpus,
        "runtime": TRAIN.get("runtime_min") or 3 * 24 * 60,
        "gpu": gpus,
        "nodes": spec.trainer.nnodes,
        "cpus_per_task": 4 * gpus,
    }


def shell_line(*parts):
    """One shell command line, every part quoted: no text from a config file or a name reaches a shell bare."""
    return " ".join(shlex.quote(str(part)) for part in parts)


def cli(*parts):
    return shell_line(PYTHON, "-m", "fipo", *parts)


# ------------------------------------------------------------------------------------ command lines


def train_params(wildcards, output):
    """`fipo train` of a run (a function of the output: Snakemake keeps it out of the params it compares, so that
    a timeout or a folder's spelling reruns nothing; run_fingerprint is what it compares)."""
    parts = [
        "--preset",
        PRESET,
        *run_arguments(wildcards.run),
        "--results-dir",
        RESULTS,
        "--data-dir",
        DATA,
        "--record",
        output[0],
    ]
    if TRAIN.get("timeout_s"):
        parts += ["--timeout", str(TRAIN["timeout_s"])]
    if TRAIN.get("ray_address"):
        parts += ["--ray-address", TRAIN["ray_address"]]
    for override in run_overrides(wildcards.run):
        parts += ["--override", override]
    return cli("train", *parts)


def eval_params(wildcards, input, output):
    return eval_command(wildcards.benchmark, Path(output[0]).parent, "--model", input[0])


def eval_command(benchmark, out_dir, *model):
    """`fipo eval` of a model (``model``: its arguments) at the preset's evaluation settings."""
    return cli(
        "eval",
        *model,
        "--benchmark",
        benchmark,
        "--backend",
        EVAL.backend,
        "--scorer",
        EVAL.scorer,
        "--cons-unanswered",
        EVAL.cons_unanswered,
        "--n",
        str(EVAL.n),
        "--temperature",
        str(EVAL.temperature),
        "--top-p",
        str(EVAL.top_p),
        "--max-tokens",
        str(EVAL.max_tokens),
        "--tensor-parallel-size",
        str(EVAL.tensor_parallel_size),
        "--data-dir",
        DATA,
        "--out",
        str(out_dir),
        "--on-change",
        "restart",
    )


def artifact_caption(wildcards):
    """The caption `snakemake --report` shows: what this preset ran, the paper's wording, the notebook."""
    art = catalog.ARTIFACTS[wildcards.artifact]
    runs = ", ".join(art.experiments) or "the spec"
    return (
        f"{art.heading(wildcards.preset)}. {art.paper_note[0].upper()}{art.paper_note[1:]}. "
        f"Made by notebooks/{art.id}.ipynb from: {runs}."
    )


def artifact_code(wildcards):
    """The digest of the code that makes an artifact: its notebook and every fipo module it imports
    (fipo.code_digest). Not used by the command: a changed module reruns the artifact (Snakemake's params trigger)."""
    return code_digest(str(catalog.notebook_path(wildcards.artifact)))


def papermill(wildcards, input, output):
    notebook = str(catalog.notebook_path(wildcards.artifact))
    out_dir = str(Path(output[0]).parent)
    return shell_line(
        PYTHON,
        "-m",
        "fipo.analysis.execute",
        notebook,
        output[-1],
        "-r",
        "preset",
        PRESET,
        "-r",
        "results_dir",
        RESULTS,
        "-r",
        "out_dir",
        out_dir,
        "-r",
        "seeds",
        seeds_parameter(),
    )


def seeds_parameter():
    """The notebooks' `seeds` parameter: "1,2,3", or "" for the spec's seed (papermill's raw strings)."""
    return ",".join(map(str, SEEDS))


# ------------------------------------------------------------------------------------ doctor, released model


def doctor_job(wildcards):
    """(kind, experiment or None, benchmark or None) of a doctor marker's job: train/E, eval/E/B, released/B."""
    kind, *rest = wildcards.job.split("/")
    if kind == "train":
        return kind, rest[0], None
    if kind == "eval":
        return kind, rest[0], rest[1]
    return kind, None, rest[0]


def doctor_inputs(wildcards):
    """What the job's check reads that the pipeline makes first: its datasets (and the released model's download)."""
    kind, experiment, benchmark = doctor_job(wildcards)
    if kind == "train":
        spec = SPECS[experiment]
        return dataset_files([spec.data.train, *spec.data.val])
    return dataset_files([benchmark]) + ([released_record()] if kind == "released" else [])


def doctor_params(wildcards, output):
    kind, experiment, benchmark = doctor_job(wildcards)
    parts = ["--preset", PRESET, "--stage", kind, "--results-dir", RESULTS, "--data-dir", DATA]
    parts += ["--experiment", experiment] if experiment else []
    parts += ["--benchmark", benchmark] if benchmark else []
    if kind == "train":
        parts += ["--ray-address", TRAIN["ray_address"]] if TRAIN.get("ray_address") else []
        for override in TRAIN_OVERRIDES:
            parts += ["--override", override]
    return cli("doctor", *parts, "--marker", output[0])


def doctor_gpus(wildcards):
    """The GPUs of one node of the job it checks (a multi-node run's other nodes are counted through Ray)."""
    kind, experiment, _ = doctor_job(wildcards)
    return gpu_resources(SPECS[experiment])["gpu"] if kind == "train" else EVAL.tensor_parallel_size


def released_record():
    """Written by `fipo fetch-model`: the released model's snapshot is in the Hugging Face cache."""
    return f"{RESULTS}/{PRESET}/released/model.json"


def released_tables():
    return [f"{RESULTS}/{PRESET}/tables/released{suffix}" for suffix in (".csv", ".md", ".tex")]


def no_released_model(wildcards):
    presets = [p for p in list_presets() if released(p)]
    raise WorkflowError(
        f"config error: target released: preset {PRESET!r} declares no released model (a 'released:' section in "
        f"config/presets/{PRESET}.yaml); presets that do: {', '.join(presets) or 'none'}"
    )
