# Helpers shared by the rule files (config validation, the experiment spec, the file names of every step).
# Everything about a run comes from the spec (fipo.experiment) and every figure's needs from fipo.analysis.catalog,
# so the DAG and the notebooks cannot disagree.
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from fipo import data as fipo_data
from fipo.analysis import catalog
from fipo.experiment import SpecError, ablations, evaluation, list_experiments, list_presets, load_all

validate(config, schema="../schemas/config.schema.yaml")

PRESET = config["preset"]
RESULTS = config["results_dir"]
DATA = config["data_dir"]
PYTHON = shlex.quote(sys.executable)  # the interpreter snakemake runs in: the project's environment


def _fail(message):
    raise WorkflowError(f"config error: {message}")


if PRESET not in list_presets():
    _fail(f"preset: unknown preset {PRESET!r}; allowed: {', '.join(list_presets())}")
try:
    # Validates every experiment of the preset (types, ranges such as fipo.tau > 0) before any job starts.
    SPECS = {exp.name: exp for exp in load_all(PRESET)}
    EVAL = evaluation(PRESET)
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
EVAL_N = (config.get("eval") or {}).get("n") or EVAL.n



# ------------------------------------------------------------------------------------ file names


def run_dir(experiment):
    return f"{RESULTS}/{PRESET}/runs/{experiment}"


def run_record(experiment):
    """Written by `fipo train --record` only after verl exits 0: the run is complete."""
    return f"{run_dir(experiment)}/run.json"


def dataset_files(names):
    return [str(fipo_data.dataset_path(name, DATA)) for name in names]


def train_inputs(wildcards):
    spec = SPECS[wildcards.experiment]
    inputs = dataset_files([spec.data.train, *spec.data.val])
    if "${results_dir}" in spec.model.path:  # a model the pipeline makes (tiny)
        inputs.append(f"{RESULTS}/tiny/base_model/tiny_model.json")
    return inputs


def eval_summary(experiment, benchmark):
    return f"{RESULTS}/{PRESET}/eval/{experiment}/{benchmark}/summary.json"


def all_eval_summaries(experiments=None):
    return [eval_summary(e, b) for e in experiments or EXPERIMENTS for b in EVAL.benchmarks]


def artifact_files(artifact_id):
    art = catalog.ARTIFACTS[artifact_id]
    return [str(p) for p in catalog.outputs(RESULTS, PRESET, art)]


def artifact_inputs(wildcards):
    """What an artifact's notebook reads: the runs it compares, their length statistics, their evaluations."""
    art = catalog.ARTIFACTS[wildcards.artifact]
    inputs = [str(catalog.notebook_path(art.id))]
    inputs += [run_record(e) for e in art.experiments]
    if "lengths" in art.needs:
        inputs += [f"{run_dir(e)}/length_stats.csv" for e in art.experiments]
    if "eval" in art.needs:
        inputs += all_eval_summaries(art.experiments)
    return inputs


def index_html():
    return f"{RESULTS}/{PRESET}/index.html"


def gpu_resources(spec):
    """Slurm resources of a training run: the whole verl job (driver + Ray) on nnodes × n_gpus_per_node."""
    if spec.trainer.device == "cpu":
        return {"mem_mb": 8000, "runtime": 60, "gpu": 0, "nodes": 1}
    if TRAIN.get("ray_address"):  # multi-node: the job is only the driver; the Ray cluster holds the GPUs
        return {"mem_mb": 32000, "runtime": TRAIN.get("runtime_min") or 3 * 24 * 60, "gpu": 0, "nodes": 1}
    return {"mem_mb": 400_000, "runtime": TRAIN.get("runtime_min") or 3 * 24 * 60,
            "gpu": spec.trainer.n_gpus_per_node, "nodes": spec.trainer.nnodes, "cpus_per_task": 32}


def cli(*parts):
    return " ".join([PYTHON, "-m", "fipo", *parts])


# ------------------------------------------------------------------------------------ command lines

def train_params(wildcards):
    parts = ["--preset", PRESET, "--experiment", wildcards.experiment, "--results-dir", RESULTS,
             "--data-dir", DATA, "--record", run_record(wildcards.experiment)]
    if TRAIN.get("timeout_s"):
        parts += ["--timeout", str(TRAIN["timeout_s"])]
    if TRAIN.get("ray_address"):
        parts += ["--ray-address", TRAIN["ray_address"]]
    for override in TRAIN.get("overrides") or []:
        parts += ["--override", override]
    return cli("train", *map(shlex.quote, parts))



def eval_params(wildcards, input, output):
    return cli(
        "eval", "--model", input[0], "--benchmark", wildcards.benchmark, "--backend", EVAL.backend,
        "--scorer", EVAL.scorer, "--n", str(EVAL_N), "--temperature", str(EVAL.temperature), "--top-p", str(EVAL.top_p),
        "--max-tokens", str(EVAL.max_tokens), "--tensor-parallel-size", str(EVAL.tensor_parallel_size),
        "--data-dir", DATA, "--out", str(Path(output[0]).parent),
    )



def papermill(wildcards, input, output):
    notebook = str(catalog.notebook_path(wildcards.artifact))
    out_dir = str(Path(output[0]).parent)
    return " ".join([PYTHON, "-m", "papermill", "--kernel", "python3", "--log-output", notebook, output[-1],
                     "-p", "preset", PRESET, "-p", "results_dir", RESULTS, "-p", "out_dir", out_dir])
