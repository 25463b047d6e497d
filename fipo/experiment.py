"""The experiment spec: one YAML file per preset (model scale) under config/presets/, scale-free method
definitions in config/methods.yaml. An experiment resolves as the deep merge of, in order:

    methods.yaml[method] (following its ``base:``)  ->  preset ``defaults``  ->  preset ``methods[method]``
    ->  the experiment's ``base:`` chain (each one's ``set:``)  ->  the experiment's own ``set:``

and is then validated into frozen (pydantic) dataclasses: every unknown key, wrong type or out-of-range value raises
:class:`SpecError` naming the key path, what is allowed and the layer (file and part) that wrote the value,
before anything runs. Spec files are read refusing duplicate keys, and every preset, method, experiment and
ablation family name is checked (NAME_PATTERN, FAMILY_PATTERN) before anything uses it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import field
from functools import lru_cache, partial
from pathlib import Path
from typing import Annotated, Any, Optional

import pydantic
import yaml

from fipo.checkpoint_steps import SELECTIONS
from fipo.data import DATASETS
from fipo.determines import CONVERT, EVALUATE, NOTHING, REPORT, SCOPE, TRAIN
from fipo.eval import BENCHMARKS
from fipo.eval.metrics import UNANSWERED_RULES
from fipo.eval.models import HUB_REVISION, is_hub_id
from fipo.eval.sampling import BACKENDS
from fipo.eval.scoring import SCORERS
from fipo.loss_params import FIPOParams
from fipo.run_names import run_name
from fipo.verl_keys import refusal, spec_key

# The spec folder (methods.yaml, presets/); FIPO_CONFIG_DIR points every tool, the pipeline included, elsewhere.
CONFIG_DIR = Path(os.environ.get("FIPO_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "config")


class SpecError(ValueError):
    """Bad experiment spec: names the file, the key and the allowed values."""


# Preset, method and experiment names become folder names (results/<preset>/runs/<experiment>), Snakemake
# wildcards and words of shell commands: letters, digits, '.', '_' and '-' only, and never a leading '.' or '-'
# (no '..', nothing a command line would take for an option).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Ablation families become Snakemake rule names, which must be Python identifiers.
FAMILY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# A run folder's name is <experiment>@study-seed<N> and its lock file .<that>.lock: 100 characters leave room
# under the 255 bytes a file name may have, with the paths Snakemake's logs and benchmarks add.
MAX_NAME_LENGTH = 100


def check_name(kind: str, name: Any, where: str, pattern: re.Pattern = NAME_PATTERN) -> str:
    """``name`` if it matches ``pattern`` (NAME_PATTERN unless told) and is at most MAX_NAME_LENGTH characters,
    else SpecError naming ``where``, the name and the rule. fullmatch, not match: ``$`` alone would let a
    trailing newline through."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise SpecError(f"{where}: {kind} name {name!r} is not allowed; names must match {pattern.pattern}")
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"{where}: {kind} name {name[:20]}... is {len(name)} characters; at most {MAX_NAME_LENGTH}")
    return name


# ---------------------------------------------------------------------------------------------- schema

# The sections are pydantic dataclasses: constructing one checks every value's type. Strict: YAML's true is not 1,
# "8" is not 8 and 1.5 is not an integer (an int is a float, as YAML writes 1 for 1.0). Finite floats only: NaN
# slips through every field without a range check (weight_decay, grad_clip, rope_theta...) and inf through every
# "> 0" one; neither is a setting anyone means to write, and both surface in verl as a NaN loss or an overflow hours
# later. Unknown keys are refused. _build_section turns pydantic's errors into messages that name the key path and
# the layer that wrote it.
SECTION_CONFIG = pydantic.ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
section = partial(pydantic.dataclasses.dataclass, frozen=True, config=SECTION_CONFIG)


@section
class ModelSpec:
    path: Annotated[str, TRAIN]  # Hugging Face hub id or local folder
    max_position_embeddings: Annotated[Optional[int], TRAIN] = None  # context extension (7B: 4096 -> 32768)
    rope_theta: Annotated[Optional[float], TRAIN] = None


@section
class DataSpec:
    train: Annotated[str, TRAIN]  # dataset name, see fipo.data.DATASETS
    val: Annotated[list[str], TRAIN]
    max_prompt_length: Annotated[int, TRAIN]
    max_response_length: Annotated[int, TRAIN]
    train_batch_size: Annotated[int, TRAIN]  # prompts per training step
    gen_batch_size: Annotated[Optional[int], TRAIN] = None  # prompts per generation batch (dynamic sampling)


@section
class RewardSpec:
    manager: Annotated[str, TRAIN] = "dapo"
    overlong_buffer: Annotated[bool, TRAIN] = True  # DAPO overlong reward shaping
    overlong_buffer_len: Annotated[int, TRAIN] = 4096
    overlong_penalty: Annotated[float, TRAIN] = 1.0


@section
class AlgorithmSpec:
    adv_estimator: Annotated[str, TRAIN] = "grpo"
    norm_adv_by_std: Annotated[bool, TRAIN] = True
    filter_groups: Annotated[bool, TRAIN] = True  # DAPO dynamic sampling
    filter_metric: Annotated[str, TRAIN] = "acc"
    max_num_gen_batches: Annotated[int, TRAIN] = 10


@section
class PolicySpec:
    loss: Annotated[str, TRAIN]  # "vanilla" (DAPO/GRPO) or "fipo"
    lr: Annotated[float, TRAIN]
    lr_warmup_steps: Annotated[int, TRAIN]
    weight_decay: Annotated[float, TRAIN]
    grad_clip: Annotated[float, TRAIN]
    ppo_mini_batch_size: Annotated[int, TRAIN]  # prompts per PPO update
    clip_ratio_low: Annotated[float, TRAIN]
    clip_ratio_high: Annotated[float, TRAIN]
    clip_ratio_c: Annotated[float, TRAIN]
    loss_agg_mode: Annotated[str, TRAIN]
    ppo_epochs: Annotated[int, TRAIN] = 1
    lr_scheduler: Annotated[str, TRAIN] = "constant"
    kl_loss_coef: Annotated[float, TRAIN] = 0.0  # 0: no KL loss (DAPO, FIPO)
    entropy_coeff: Annotated[float, TRAIN] = 0.0


@section
class FIPOSpec:
    tau: Annotated[float, TRAIN] = 32.0
    # [low, high] bounds of f
    f_clip_range: Annotated[list[float], TRAIN] = field(default_factory=lambda: [1.0, 1.2])
    filter_ratio: Annotated[bool, TRAIN] = True
    filter_threshold: Annotated[Optional[float], TRAIN] = None  # None: the dual-clip constant c
    safety_threshold: Annotated[float, TRAIN] = 10.0
    safety_mode: Annotated[str, TRAIN] = "reset"
    drop_multi_dual_clip: Annotated[bool, TRAIN] = False
    chunk_size: Annotated[int, TRAIN] = 32
    dump_every: Annotated[int, TRAIN] = 0  # per-token dumps every N loss calls per worker (0: off)
    # FIPO updated on-policy (one update per rollout batch, or verl's bypass_mode) has f = 1 everywhere: it is
    # DAPO. Refused unless this says it is meant (a control run, a test of the plumbing). Decides whether a spec
    # is accepted, not what a run computes.
    allow_on_policy: Annotated[bool, NOTHING] = False


@section
class RolloutSpec:
    n: Annotated[int, TRAIN]  # group size G
    temperature: Annotated[float, TRAIN] = 1.0
    top_p: Annotated[float, TRAIN] = 1.0
    engine: Annotated[str, TRAIN] = "vllm"


@section
class ValidationSpec:
    n: Annotated[int, TRAIN] = 32
    temperature: Annotated[float, TRAIN] = 1.0
    top_p: Annotated[float, TRAIN] = 0.7
    test_freq: Annotated[int, TRAIN] = 5
    before_train: Annotated[bool, TRAIN] = True


@section
class TrainerSpec:
    total_training_steps: Annotated[int, TRAIN]
    save_freq: Annotated[int, TRAIN]
    nnodes: Annotated[int, TRAIN]
    n_gpus_per_node: Annotated[int, TRAIN]
    seed: Annotated[int, TRAIN] = 42
    # verl's tracker project: where the curves also go, not what the run computes
    project_name: Annotated[str, NOTHING] = "fipo-workbench"
    device: Annotated[str, TRAIN] = "cuda"
    timeout_s: Annotated[Optional[int], NOTHING] = None  # hang guard: stop an attempt whose run folder is unchanged this long
    # verl's rollout dumps (every response of every step, decoded): the length quantiles of Figures 3 and 8.
    # About 0.3 GB per step at 32B scale (8192 responses of ~10k tokens); false saves the disk.
    rollout_dump: Annotated[bool, TRAIN] = True
    # verl's experiment trackers (trainer.logger), project trainer.project_name, run <preset>-<experiment>. "file"
    # is required: metrics.jsonl is what the figures read. tensorboard writes to the run folder's tensorboard/.
    # Where the curves also go does not change what the run computes.
    loggers: Annotated[list[str], NOTHING] = field(default_factory=lambda: ["console", "file"])


@section
class EvaluationSpec:
    """How the pipeline evaluates each run of a preset (``fipo eval``): AIME practice is n = 32 samples per
    problem at temperature 1.0, top-p 0.7 (INTEGRATION.md)."""

    # which evaluations exist: each benchmark is a job of its own, added or dropped, never redone
    benchmarks: Annotated[list[str], SCOPE] = field(default_factory=lambda: ["aime2024", "aime2025"])
    checkpoint: Annotated[str, CONVERT] = "last"  # "last" or "best" (by the validation metric)
    n: Annotated[int, EVALUATE] = 32
    temperature: Annotated[float, EVALUATE] = 1.0
    top_p: Annotated[float, EVALUATE] = 0.7
    max_tokens: Annotated[int, EVALUATE] = 20480
    backend: Annotated[str, EVALUATE] = "vllm"
    # vLLM's tensor parallelism changes the order of floating-point sums, so the samples
    tensor_parallel_size: Annotated[int, EVALUATE] = 1
    # fipo.eval.scoring: math_dapo (verl 0.9.1), math_dapo_strict (the official recipe's)
    scorer: Annotated[str, EVALUATE] = "math_dapo"
    # Cons@n: samples without an answer vote as one class (verl's maj@N) or abstain
    cons_unanswered: Annotated[str, EVALUATE] = "vote"


@section
class ReleasedSpec:
    """A checkpoint the paper's authors released (a preset's ``released:`` section). The pipeline's ``released``
    target evaluates it with the preset's evaluation settings and writes it beside the paper's numbers, so that
    the evaluation harness can be checked against the paper before anything is trained."""

    model: Annotated[str, EVALUATE]  # Hugging Face hub id, owner/name
    # the paper's Table 1 row it is compared with (a key of fipo.analysis.paper.TABLE1)
    paper_row: Annotated[str, REPORT]
    # a branch, tag or commit of the hub repository (a commit pins the files)
    revision: Annotated[str, EVALUATE] = "main"
    description: Annotated[str, NOTHING] = ""


# The rows of the paper's Table 1 a released model can be compared with (the numbers themselves are
# fipo.analysis.paper.TABLE1; tests/test_released.py keeps the two in step).
PAPER_ROWS = ("dapo", "fipo")
# verl 0.9.1's trackers (verl.utils.tracking.Tracking) that this project passes through and documents
LOGGERS = ("console", "file", "tensorboard", "wandb", "mlflow", "swanlab")

EVAL_CHOICES = {"benchmarks": BENCHMARKS, "checkpoint": SELECTIONS, "backend": BACKENDS, "scorer": SCORERS,
                "cons_unanswered": UNANSWERED_RULES}


@dataclasses.dataclass(frozen=True)
class Experiment:
    # A run's names: its folder and its label, not its content (an experiment renamed is a new run folder).
    preset: Annotated[str, NOTHING]
    name: Annotated[str, NOTHING]
    method: Annotated[str, NOTHING]
    description: Annotated[str, NOTHING]
    model: ModelSpec
    data: DataSpec
    reward: RewardSpec
    algorithm: AlgorithmSpec
    policy: PolicySpec
    fipo: FIPOSpec
    rollout: RolloutSpec
    validation: ValidationSpec
    trainer: TrainerSpec
    # verl keys for parallelism/memory at this scale, passed through as overrides
    engine: Annotated[dict[str, Any], TRAIN]

    @property
    def run_id(self) -> str:
        return f"{self.preset}-{self.name}"

    def fipo_loss_knobs(self) -> dict[str, Any]:
        """The FIPO knobs as fipo.loss.FIPOParams / FIPOPolicyLossConfig fields."""
        low, high = self.fipo.f_clip_range
        return {
            "tau": self.fipo.tau,
            "f_clip_low": round(1.0 - low, 12),
            "f_clip_high": round(high - 1.0, 12),
            "filter_ratio": self.fipo.filter_ratio,
            "filter_threshold": self.fipo.filter_threshold,
            "safety_threshold": self.fipo.safety_threshold,
            "safety_mode": self.fipo.safety_mode,
            "drop_multi_dual_clip": self.fipo.drop_multi_dual_clip,
            "chunk_size": self.fipo.chunk_size,
        }


SECTIONS = {
    "model": ModelSpec,
    "data": DataSpec,
    "reward": RewardSpec,
    "algorithm": AlgorithmSpec,
    "policy": PolicySpec,
    "fipo": FIPOSpec,
    "rollout": RolloutSpec,
    "validation": ValidationSpec,
    "trainer": TrainerSpec,
}
CHOICES = {
    "policy.loss": ("vanilla", "fipo"),
    "policy.loss_agg_mode": (
        "token-mean",
        "token-sum",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    ),
    "fipo.safety_mode": ("reset", "clamp"),
    "policy.lr_scheduler": ("constant", "cosine"),
    "algorithm.filter_metric": ("acc", "score", "seq_reward", "seq_final_reward"),
    "algorithm.adv_estimator": ("grpo",),
    "reward.manager": ("dapo", "naive"),
    "rollout.engine": ("vllm", "sglang", "hf"),
    "trainer.device": ("cuda", "cpu"),
}
EXPERIMENT_KEYS = {"method", "base", "description", "set"}
PRESET_KEYS = {"description", "paper_table", "defaults", "methods", "experiments", "ablations", "evaluation",
               "released"}


# ------------------------------------------------------------------------------------ loading & merging


def _show(path: Path) -> str:
    """A spec file as the user knows it: relative to the working directory when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _SpecLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (PyYAML keeps the last one silently: an
    experiment defined twice trained with the second body under the first one's label), two ``<<:`` merge keys in
    one mapping (the same, for what they merge), and a key YAML reads as something other than a string (``no:``
    is False, ``123:`` a number: never a name or a setting)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        merges = []
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' may appear next to overrides
                merges.append(line)
                if len(merges) > 1:
                    raise _DuplicateKey("<<", line, merges[0])
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _NotAString(getattr(key_node, "value", key), key, line)
            first = seen.get(key)
            if first is not None:
                raise _DuplicateKey(key, line, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _NotAString(Exception):
    def __init__(self, written: Any, read: Any, line: int):
        super().__init__(written, read, line)
        self.written, self.read, self.line = written, read, line


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"spec file not found: {_show(path)}")
    try:
        data = yaml.load(path.read_text(), Loader=_SpecLoader)
    except _DuplicateKey as e:
        raise SpecError(
            f"{_show(path)}:{e.line}: duplicate key {e.key!r} (first written at line {e.first}); "
            "YAML would keep only the last one, so remove or rename one of them"
        ) from None
    except _NotAString as e:
        raise SpecError(
            f"{_show(path)}:{e.line}: key {e.written!r} is read by YAML as {e.read!r} ({type(e.read).__name__}), not "
            f"a name; quote it ('{e.written}')"
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"{_show(path)}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{_show(path)}: expected a mapping at the top level")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def list_presets(config_dir: Path = CONFIG_DIR) -> list[str]:
    files = sorted((Path(config_dir) / "presets").glob("*.yaml"))
    return [check_name("preset", p.stem, _show(p)) for p in files]


def _file_stamp(path: Path):
    """What says a spec file changed: a long-lived process (a notebook kernel, a Snakemake run) rereads an
    edited file instead of keeping the version it read first."""
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _load_preset(name: str, config_dir: Path) -> dict:
    """The preset file, its structure and every name in it checked: all entry points go through here, so
    no bad name gets as far as a file path or a command line. Parsed once per version of the file."""
    config_dir = Path(config_dir)
    check_name("preset", name, _show(config_dir / "presets"))
    return _parse_preset(name, config_dir, _file_stamp(config_dir / "presets" / f"{name}.yaml"))


@lru_cache(maxsize=None)
def _parse_preset(name: str, config_dir: Path, stamp) -> dict:
    presets = list_presets(config_dir)
    if name not in presets:
        raise SpecError(f"unknown preset {name!r}; allowed: {', '.join(presets)}")
    path = config_dir / "presets" / f"{name}.yaml"
    data = _read_yaml(path)
    shown = _show(path)
    unknown = set(data) - PRESET_KEYS
    if unknown:
        raise SpecError(f"{shown}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    for key in ("defaults", "experiments"):
        if not isinstance(data.get(key), dict):
            raise SpecError(f"{shown}: '{key}' must be a mapping")
    for key in ("methods", "ablations", "evaluation", "released"):
        if not isinstance(data.get(key) or {}, dict):
            raise SpecError(f"{shown}: '{key}' must be a mapping")
    for experiment, entry in data["experiments"].items():
        check_name("experiment", experiment, f"{shown}: experiments")
        if not isinstance(entry or {}, dict):
            raise SpecError(f"{shown}: experiments.{experiment} must be a mapping, got {entry!r}")
    for family, members in (data.get("ablations") or {}).items():
        check_name("ablation family", family, f"{shown}: ablations", FAMILY_PATTERN)
        if not (isinstance(members, list) and all(isinstance(m, str) for m in members)):
            raise SpecError(f"{shown}: ablations.{family} must be a list of experiment names, got {members!r}")
    return data


def _load_methods(config_dir: Path) -> dict:
    return _parse_methods(Path(config_dir), _file_stamp(Path(config_dir) / "methods.yaml"))


@lru_cache(maxsize=None)
def _parse_methods(config_dir: Path, stamp) -> dict:
    path = Path(config_dir) / "methods.yaml"
    methods = _read_yaml(path)
    for method, body in methods.items():
        check_name("method", method, _show(path))
        if not isinstance(body, dict):
            raise SpecError(f"{_show(path)}: method {method!r} must be a mapping, got {body!r}")
    return methods


def list_experiments(preset: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    return list(_load_preset(preset, Path(config_dir))["experiments"])


def _method_layers(method: str, config_dir: Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    methods = _load_methods(config_dir)
    if not isinstance(method, str) or method not in methods:
        raise SpecError(f"config/methods.yaml: unknown method {method!r}; allowed: {', '.join(methods)}")
    if method in seen:
        raise SpecError(f"config/methods.yaml: method {method!r} inherits from itself")
    body = dict(methods[method])
    base = body.pop("base", None)
    layers = _method_layers(base, config_dir, seen + (method,)) if base else []
    return layers + [(f"methods.yaml:{method}", body)]


def _experiment_chain(preset: dict, preset_name: str, name: str, seen: tuple = ()) -> list[tuple[str, dict]]:
    """[(layer name, experiment entry)] from the root of the ``base:`` chain down to ``name``."""
    experiments = preset["experiments"]
    if not isinstance(name, str) or name not in experiments:
        raise SpecError(
            f"unknown experiment {name!r} in preset {preset_name!r}; allowed: {', '.join(experiments)}"
        )
    if name in seen:
        raise SpecError(f"preset {preset_name!r}: experiment {name!r} inherits from itself")
    entry = experiments[name] or {}
    unknown = set(entry) - EXPERIMENT_KEYS
    if unknown:
        raise SpecError(
            f"preset {preset_name!r}, experiment {name!r}: unknown key(s) {sorted(unknown)}; "
            f"allowed: {sorted(EXPERIMENT_KEYS)}"
        )
    chain = _experiment_chain(preset, preset_name, entry["base"], seen + (name,)) if "base" in entry else []
    return chain + [(f"{preset_name}:experiments.{name}", entry)]


def experiment_layers(preset: str, name: str, config_dir: Path = CONFIG_DIR) -> list[tuple[str, dict]]:
    """Every settings layer of an experiment, in merge order, as (where it is written, settings)."""
    config_dir = Path(config_dir)
    data = _load_preset(preset, config_dir)
    chain = _experiment_chain(data, preset, name)
    method = next((entry["method"] for _, entry in reversed(chain) if "method" in entry), None)
    if method is None:
        raise SpecError(f"preset {preset!r}, experiment {name!r}: no 'method' (here or in its base chain)")
    layers = _method_layers(method, config_dir)
    overrides = data.get("methods") or {}
    unknown = [m for m in overrides if m not in _load_methods(config_dir)]
    if unknown:  # a misspelt method here would be ignored without a word
        raise SpecError(f"{_show(config_dir / 'presets' / f'{preset}.yaml')}: methods: unknown method(s) {unknown}")
    layers.append((f"{preset}:defaults", data["defaults"]))
    if method in overrides:
        layers.append((f"{preset}:methods.{method}", overrides[method]))
    layers += [(where, entry.get("set") or {}) for where, entry in chain]
    return layers


def describe_layer(layer: str, config_dir: Path = CONFIG_DIR) -> str:
    """An experiment_layers() name as the file and the part of it: 'tiny:defaults' ->
    'config/presets/tiny.yaml, defaults', 'methods.yaml:fipo' -> 'config/methods.yaml, fipo'."""
    source, _, part = layer.partition(":")  # names cannot hold ':' (NAME_PATTERN)
    path = Path(config_dir) / (source if source == "methods.yaml" else f"presets/{source}.yaml")
    return f"{_show(path)}, {part}"


def _leaf_paths(value: Any, path: tuple) -> list[tuple]:
    if isinstance(value, dict) and value:
        return [leaf for key, sub in value.items() for leaf in _leaf_paths(sub, path + (key,))]
    return [path]


def _note_origins(origins: dict, current: dict, update: dict, layer: str, prefix: tuple = ()) -> None:
    """Record ``layer`` for every leaf ``update`` writes, mirroring deep_merge: a mapping over a mapping is
    merged key by key, anything else replaces the whole subtree (and so forgets its origins)."""
    for key, value in update.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            _note_origins(origins, current[key], value, layer, path)
            continue
        for old in [p for p in origins if p[: len(path)] == path]:
            del origins[old]
        origins.update(dict.fromkeys(_leaf_paths(value, path), layer))


@dataclasses.dataclass(frozen=True)
class Origins:
    """Which layer wrote each leaf of a merged spec last: the merged values alone cannot say whether a bad
    fipo.tau came from the preset's defaults or from one experiment, and that is what the user must edit."""

    layers: dict[tuple, str]  # key path -> experiment_layers() name
    config_dir: Path

    def _layers_under(self, path: tuple) -> list[str]:
        found = [layer for p, layer in self.layers.items() if p[: len(path)] == path]
        return list(dict.fromkeys(found))

    def note(self, *keys: str | tuple) -> str:
        """' (set in FILE, PART)' for the first key path (dotted, or a tuple when a key may hold a dot),
        '; KEY set in FILE, PART' for each further one written elsewhere; '' for keys no layer wrote (defaults)."""
        parts, first = [], None
        for i, key in enumerate(keys):
            path = key if isinstance(key, tuple) else tuple(key.split("."))
            key = ".".join(map(str, path))
            layers = self._layers_under(path)
            if i == 0:
                first = layers
            elif not layers or layers == first:
                continue
            if layers:
                text = " and ".join(describe_layer(layer, self.config_dir) for layer in layers)
                parts.append(f"set in {text}" if i == 0 else f"{key} set in {text}")
        return f" ({'; '.join(parts)})" if parts else ""

    def within(self, section: str, *fields: Any) -> str:
        """note() for fields of one section; the section itself when no field is named."""
        return self.note(*[(section, f) for f in fields] or [(section,)])


def merge_layers(layers: list[tuple[str, dict]], where: str, config_dir: Path = CONFIG_DIR) -> tuple[dict, Origins]:
    """Deep-merge experiment_layers() in order: the settings and the Origins of each leaf."""
    merged: dict = {}
    origins: dict[tuple, str] = {}
    for layer, settings in layers:
        if not isinstance(settings, dict):
            raise SpecError(
                f"{where}: settings must be a mapping, got {settings!r} ({describe_layer(layer, config_dir)})"
            )
        _note_origins(origins, merged, settings, layer)
        merged = deep_merge(merged, settings)
    return merged, Origins(origins, Path(config_dir))


# ------------------------------------------------------------------------------------------ validation


# pydantic's error type -> what the message says was expected (the words this project's errors always used)
_EXPECTED = {
    "int_type": "an integer", "float_type": "a finite number", "finite_number": "a finite number",
    "bool_type": "true/false", "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
}


def _no_note(*fields: str) -> str:
    return ""


def _key_path(where: str, loc: tuple) -> str:
    """``where`` and pydantic's error location as the spec writes it: ``fipo.f_clip_range[1]``."""
    return where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _build_section(cls: type, values: Any, where: str, note=_no_note):
    """The section ``cls`` (a :data:`section` dataclass) from ``values``, or SpecError naming the key, what was
    expected and where it was written: ``note(*fields)`` says where those fields were written (Origins.within),
    ``note()`` the section."""
    if not isinstance(values, dict):
        raise SpecError(f"{where}: expected a mapping, got {values!r}{note()}")
    names = sorted(f.name for f in dataclasses.fields(cls))
    not_words = sorted((k for k in values if not isinstance(k, str)), key=str)  # YAML allows 1: or true: as keys
    if not_words:
        raise SpecError(f"{where}: unknown key(s) {not_words}; allowed: {names}")
    try:
        return cls(**values)
    except pydantic.ValidationError as e:
        errors = e.errors()
    unknown = sorted(str(err["loc"][0]) for err in errors if err["type"] == "unexpected_keyword_argument")
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {names}{note(*unknown)}") from None
    missing = [str(err["loc"][0]) for err in errors if err["type"] == "missing"]
    if missing:
        raise SpecError(f"{where}: missing required key(s) {missing}") from None
    err = errors[0]
    expected = _EXPECTED.get(err["type"])
    problem = f"expected {expected}, got {err['input']!r}" if expected else f"{err['msg']}, got {err['input']!r}"
    raise SpecError(f"{_key_path(where, err['loc'])}: {problem}{note(str(err['loc'][0]))}") from None


def _require(ok: bool, where: str, message: str, note: str = "") -> None:
    if not ok:
        raise SpecError(f"{where}: {message}{note}")


def _validate_values(exp: Experiment, where: str, origins: Optional[Origins] = None) -> None:
    def need(ok: bool, key: str, message: str, *related: str) -> None:
        """``key`` is what the message is about; ``related`` the other keys of a cross-key rule."""
        _require(ok, f"{where}: {key}", message, origins.note(key, *related) if origins else "")

    for key, allowed in CHOICES.items():
        section, attr = key.split(".")
        value = getattr(getattr(exp, section), attr)
        need(value in allowed, key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
    p, f, d = exp.policy, exp.fipo, exp.data
    # Names, not files: the files are checked (fipo.data.require_datasets) when a run starts.
    for key, names in (("data.train", [d.train]), ("data.val", d.val)):
        bad = [n for n in names if n not in DATASETS]
        need(not bad, key, f"unknown dataset(s) {bad}; allowed: {', '.join(DATASETS)}")
    need(p.clip_ratio_low >= 0, "policy.clip_ratio_low", f"must be >= 0, got {p.clip_ratio_low}")
    need(p.clip_ratio_low < 1, "policy.clip_ratio_low", f"must be < 1, got {p.clip_ratio_low}")
    need(p.clip_ratio_high >= 0, "policy.clip_ratio_high", f"must be >= 0, got {p.clip_ratio_high}")
    need(p.clip_ratio_c > 1, "policy.clip_ratio_c", f"the dual-clip constant must be > 1, got {p.clip_ratio_c}")
    need(p.lr > 0, "policy.lr", f"must be > 0, got {p.lr}")
    need(p.kl_loss_coef >= 0, "policy.kl_loss_coef", "must be >= 0")
    need(f.tau > 0, "fipo.tau", f"the half-life must be > 0, got {f.tau}")
    need(len(f.f_clip_range) == 2, "fipo.f_clip_range", "must be [low, high]")
    low, high = f.f_clip_range
    need(low <= high, "fipo.f_clip_range", f"low {low} > high {high}")
    need(0 <= low <= 1 <= high, "fipo.f_clip_range", f"need 0 <= low <= 1 <= high, got [{low}, {high}]")
    if f.filter_threshold is not None:
        need(f.filter_threshold > 0, "fipo.filter_threshold", "must be > 0 or null (= clip_ratio_c)")
    need(f.safety_threshold > 0, "fipo.safety_threshold", "must be > 0")
    need(f.chunk_size >= 2, "fipo.chunk_size", "must be >= 2")
    need(f.dump_every >= 0, "fipo.dump_every", "must be >= 0")
    for key in ("max_prompt_length", "max_response_length", "train_batch_size"):
        need(getattr(d, key) > 0, f"data.{key}", "must be > 0")
    if d.gen_batch_size is not None:
        need(
            d.gen_batch_size >= d.train_batch_size, "data.gen_batch_size", "must be >= train_batch_size",
            "data.train_batch_size",
        )
        # verl 0.9.1's v1 trainer (sync mode) sets gen_batch_size to 1 under dynamic sampling; without it, it fetches
        # each step's train_batch_size prompts in whole gen_batch_size chunks and raises at the first step otherwise.
        need(
            exp.algorithm.filter_groups or d.train_batch_size % d.gen_batch_size == 0, "data.gen_batch_size",
            f"{d.gen_batch_size} without dynamic sampling: verl 0.9.1 fetches each step's train_batch_size="
            f"{d.train_batch_size} prompts in whole gen_batch_size chunks and stops at the first step unless it "
            "divides train_batch_size; leave it unset (null) here, or set it only where algorithm.filter_groups is on",
            "data.train_batch_size", "algorithm.filter_groups",
        )
    need(len(d.val) > 0, "data.val", "needs at least one validation set")
    need(
        0 < p.ppo_mini_batch_size <= d.train_batch_size and d.train_batch_size % p.ppo_mini_batch_size == 0,
        "policy.ppo_mini_batch_size",
        f"must divide data.train_batch_size={d.train_batch_size}, got {p.ppo_mini_batch_size}",
        "data.train_batch_size",
    )
    if exp.reward.overlong_buffer:
        need(
            0 < exp.reward.overlong_buffer_len <= d.max_response_length,
            "reward.overlong_buffer_len",
            f"must be in (0, max_response_length={d.max_response_length}]",
            "data.max_response_length",
        )
    need(exp.rollout.n >= 2, "rollout.n", "GRPO needs a group of at least 2 responses")
    for key in ("temperature", "top_p"):
        need(getattr(exp.rollout, key) > 0, f"rollout.{key}", "must be > 0")
        need(getattr(exp.validation, key) > 0, f"validation.{key}", "must be > 0")
    for section in ("rollout", "validation"):
        top_p = getattr(exp, section).top_p
        need(top_p <= 1, f"{section}.top_p", f"a probability mass must be in (0, 1], got {top_p}")
    # numpy's and verl's generators take seeds in [0, 2**32)
    need(0 <= exp.trainer.seed < SEED_LIMIT, "trainer.seed", f"must be in [0, 2**32), got {exp.trainer.seed}")
    need(exp.validation.n >= 1, "validation.n", "must be >= 1")
    # verl reads test_freq <= 0 as "never validate" (no validation curve, no best checkpoint) and
    # save_freq <= 0 as "never save" (nothing to convert after the whole training): both are mistakes here.
    need(exp.validation.test_freq >= 1, "validation.test_freq", f"must be >= 1, got {exp.validation.test_freq}")
    need(exp.trainer.save_freq >= 1, "trainer.save_freq", f"must be >= 1, got {exp.trainer.save_freq}")
    if exp.trainer.timeout_s is not None:
        timeout = exp.trainer.timeout_s
        need(timeout > 0, "trainer.timeout_s", f"must be > 0 or null (no limit), got {timeout}")
    for key in ("total_training_steps", "nnodes", "n_gpus_per_node"):
        need(getattr(exp.trainer, key) >= 1, f"trainer.{key}", "must be >= 1")
    loggers = exp.trainer.loggers
    bad = [x for x in loggers if x not in LOGGERS]
    need(not bad, "trainer.loggers", f"unknown logger(s) {bad}; allowed: {', '.join(LOGGERS)}")
    need("file" in loggers, "trainer.loggers", "must include 'file': metrics.jsonl is what the figures read")
    need(len(set(loggers)) == len(loggers), "trainer.loggers", f"a logger is listed twice: {loggers}")
    if exp.policy.loss == "fipo" and not f.allow_on_policy:
        _refuse_on_policy_fipo(exp, need)
    if exp.policy.loss == "fipo":
        # The loss validates the knobs once more with its own rules; surface its message here, early.
        try:
            FIPOParams(
                clip_ratio_low=p.clip_ratio_low, clip_ratio_high=p.clip_ratio_high, clip_ratio_c=p.clip_ratio_c,
                **exp.fipo_loss_knobs(),
            )
        except ValueError as e:
            raise SpecError(f"{where}: {e}") from None


SEED_LIMIT = 2**32

ON_POLICY_HINT = ("; set fipo.allow_on_policy: true to run it anyway (e.g. as a control that must equal DAPO)")


def _refuse_on_policy_fipo(exp: Experiment, need) -> None:
    """FIPO's weights come from log pi - log pi_old over a response's future. With one PPO update per rollout batch
    the policy has not moved when the loss runs (log pi = log pi_old), and under verl's bypass_mode pi_old is the
    rollout engine's: either way Future-KL measures nothing FIPO means and f = 1 (or engine noise)."""
    p, d = exp.policy, exp.data
    need(
        not (p.ppo_mini_batch_size == d.train_batch_size and p.ppo_epochs == 1),
        "policy.ppo_mini_batch_size",
        f"= data.train_batch_size ({d.train_batch_size}) with ppo_epochs 1: one on-policy update per step, where "
        "log pi = log pi_old, so Delta logp = 0, Future-KL = 0 and f = 1 on every token: this FIPO run is DAPO. "
        "Use a smaller mini-batch (Table 2: 8 or 16 updates per step) or ppo_epochs > 1" + ON_POLICY_HINT,
        "data.train_batch_size", "policy.ppo_epochs",
    )
    bypass = [k for k, v in exp.engine.items() if k.endswith("rollout_correction.bypass_mode") and v]
    need(
        not bypass, f"engine.{bypass[0]}" if bypass else "engine",
        "is on: the old log-probs are the rollout engine's, so Future-KL would measure the mismatch between the "
        "rollout engine and the trainer, not the policy update FIPO weighs" + ON_POLICY_HINT,
    )


def with_seed(exp: Experiment, seed: int | None, study: bool = False) -> Experiment:
    """``exp`` trained under ``seed`` (verl's data, data-loader and rollout seeds: ``trainer.seed``), named as its
    run (:func:`fipo.run_names.run_name`: ``fipo@seed1``, or ``fipo@study-seed1`` for the study's) so that the
    run's trackers and logs tell seeds apart. ``None``: ``exp`` itself, at the spec's seed."""
    if seed is None:
        return exp
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise SpecError(f"seed: must be a non-negative integer below 2**32, got {seed!r}")
    return dataclasses.replace(exp, name=run_name(exp.name, seed, study), trainer=dataclasses.replace(exp.trainer, seed=seed))


def load_experiment(preset: str, name: str, config_dir: Path = CONFIG_DIR) -> Experiment:
    """Resolve and validate one experiment. Raises SpecError naming the key, and the layer that wrote it,
    on any problem."""
    config_dir = Path(config_dir)
    layers = experiment_layers(preset, name, config_dir)
    where = f"preset {preset!r}, experiment {name!r}"
    merged, origins = merge_layers(layers, where, config_dir)
    unknown = sorted(set(merged) - set(SECTIONS) - {"engine"}, key=str)
    if unknown:
        raise SpecError(
            f"{where}: unknown section(s) {unknown}; allowed: {sorted(SECTIONS) + ['engine']}"
            f"{origins.note(*[(k,) for k in unknown])}"
        )
    sections = {
        key: _build_section(cls, merged.get(key, {}), f"{where}: {key}", partial(origins.within, key))
        for key, cls in SECTIONS.items()
    }
    engine = merged.get("engine") or {}
    note = origins.note("engine")
    _require(isinstance(engine, dict), f"{where}: engine", f"expected a mapping, got {engine!r}", note)
    engine = flatten(engine)
    for key in engine:
        owner, why = spec_key(key), refusal(key)
        _require(owner is None, f"{where}: engine.{key}",
                 f"the spec's {owner} writes this verl key; set {owner} instead", note)
        _require(why is None, f"{where}: engine.{key}", f"this verl key {why}", note)
    chain = _experiment_chain(_load_preset(preset, config_dir), preset, name)
    exp = Experiment(
        preset=preset,
        name=name,
        method=next(entry["method"] for _, entry in reversed(chain) if "method" in entry),
        description=chain[-1][1].get("description", ""),
        engine=engine,
        **sections,
    )
    _validate_values(exp, where, origins)
    return exp


def parse_override(text: Any, source: str = "--override") -> tuple[str, Any]:
    """(key as written, value) of one Hydra override ``key=value``, read with Hydra's own parser (what verl
    will read); SpecError naming ``source`` for anything else (no '=', a sweep, a deletion)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    if not isinstance(text, str) or "=" not in text:
        raise SpecError(f"{source} {text!r}: expected KEY=VALUE (a verl Hydra override)")
    try:
        override = OverridesParser.create().parse_override(text)
    except HydraException as e:
        raise SpecError(f"{source} {text!r}: not a Hydra override: {e}") from None
    if override.is_sweep_override() or override.type == OverrideType.DEL:
        raise SpecError(f"{source} {text!r}: sweeps and deletions are not runs of one experiment; set a value")
    return override.get_key_element(), override.value()


def with_overrides(exp: Experiment, overrides: list[str] | tuple[str, ...], source: str = "--override") -> Experiment:
    """``exp`` with verl Hydra overrides applied the way verl would read them, then checked like the spec: an
    override of a key the spec writes (fipo.verl_keys.SPEC_KEYS, e.g. trainer.total_training_steps) sets that
    spec key; one of a key the spec computes or the workbench fixes is refused, naming what to set instead; any
    other key joins ``engine``. So every rule (types, ranges, the on-policy trap) and every fingerprint sees
    what verl gets, and nothing overrides a checked value behind the spec's back."""
    if not overrides:
        return exp
    sections = {name: {f.name: getattr(getattr(exp, name), f.name) for f in dataclasses.fields(cls)}
                for name, cls in SECTIONS.items()}
    engine = dict(exp.engine)
    for text in overrides:
        key, value = parse_override(text, source)
        owner, why = spec_key(key), refusal(key)
        if owner is not None:
            section_name, field_name = owner.split(".")
            sections[section_name][field_name] = value
        elif why is not None:
            raise SpecError(f"{source} {text!r}: this verl key {why}")
        else:
            engine[key] = value
    where = f"preset {exp.preset!r}, experiment {exp.name!r} with {source} {list(overrides)}"
    built = {name: _build_section(cls, sections[name], f"{where}: {name}") for name, cls in SECTIONS.items()}
    result = dataclasses.replace(exp, engine=engine, **built)
    _validate_values(result, where)
    return result


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: leaf} (a ``+`` key adds a whole node, so its value stays whole)."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not dotted.startswith("+"):  # a '+' key adds a whole node
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def load_all(preset: str, config_dir: Path = CONFIG_DIR) -> list[Experiment]:
    return [load_experiment(preset, name, config_dir) for name in list_experiments(preset, config_dir)]


def ablations(preset: str, config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """Ablation families of a preset (e.g. ablation_tau) -> the experiments each compares, baseline included."""
    data = _load_preset(preset, Path(config_dir))  # family names checked there (FAMILY_PATTERN)
    families = data.get("ablations") or {}
    known = set(data["experiments"])
    for family, members in families.items():
        bad = [m for m in members if m not in known]
        if bad:
            raise SpecError(f"preset {preset!r}: ablations.{family} names unknown experiment(s) {bad}")
    return {family: list(members) for family, members in families.items()}


PAPER_SCALES = {2: "32b", 3: "7b"}  # a preset's paper_table (the paper's table of its settings) -> its scale


def preset_info(preset: str, config_dir: Path = CONFIG_DIR) -> dict:
    """The preset's own keys: description and paper_table (2: the 32B setup, 3: the 7B one, absent: tiny)."""
    data = _load_preset(preset, Path(config_dir))
    return {"description": data.get("description", ""), "paper_table": data.get("paper_table")}


def preset_scale(preset: str, config_dir: Path = CONFIG_DIR) -> str | None:
    """"32b" or "7b" for a paper preset; None for a preset at no paper scale (tiny, the one-node and one-GPU
    presets), whose artifacts mark the paper's values as not comparable."""
    return PAPER_SCALES.get(preset_info(preset, config_dir).get("paper_table"))


def evaluation(preset: str, config_dir: Path = CONFIG_DIR) -> EvaluationSpec:
    """The preset's ``evaluation:`` section, validated like the experiment sections."""
    config_dir = Path(config_dir)
    where = f"preset {preset!r}: evaluation"
    section = _load_preset(preset, config_dir).get("evaluation") or {}
    # One layer, the section itself under its own key, so errors name it as they do experiment values.
    _, origins = merge_layers([(f"{preset}:evaluation", {"evaluation": section})], where, config_dir)
    note = partial(origins.within, "evaluation")
    spec = _build_section(EvaluationSpec, section, where, note)
    for key, allowed in EVAL_CHOICES.items():
        values = getattr(spec, key)
        for value in values if isinstance(values, list) else [values]:
            message = f"{value!r} is not allowed; allowed: {', '.join(allowed)}"
            _require(value in allowed, f"{where}.{key}", message, note(key))
    _require(len(spec.benchmarks) > 0, f"{where}.benchmarks", "needs at least one benchmark", note("benchmarks"))
    for key in ("n", "max_tokens", "tensor_parallel_size"):
        _require(getattr(spec, key) >= 1, f"{where}.{key}", "must be >= 1", note(key))
    _require(spec.temperature >= 0, f"{where}.temperature", "must be >= 0", note("temperature"))
    _require(0 < spec.top_p <= 1, f"{where}.top_p", "must be in (0, 1]", note("top_p"))
    return spec


def released(preset: str, config_dir: Path = CONFIG_DIR) -> Optional[ReleasedSpec]:
    """The preset's ``released:`` section, validated; None when the preset declares no released model."""
    config_dir = Path(config_dir)
    section = _load_preset(preset, config_dir).get("released")
    if section is None:
        return None
    where = f"preset {preset!r}: released"
    _, origins = merge_layers([(f"{preset}:released", {"released": section})], where, config_dir)
    note = partial(origins.within, "released")
    spec = _build_section(ReleasedSpec, section, where, note)
    _require(is_hub_id(spec.model), f"{where}.model", f"{spec.model!r} is not a Hugging Face hub id (owner/name)",
             note("model"))
    _require(bool(HUB_REVISION.fullmatch(spec.revision)), f"{where}.revision",
             f"{spec.revision!r} is not a branch, tag or commit name", note("revision"))
    _require(spec.paper_row in PAPER_ROWS, f"{where}.paper_row",
             f"{spec.paper_row!r} is not a row of the paper's Table 1; allowed: {', '.join(PAPER_ROWS)}",
             note("paper_row"))
    return spec
