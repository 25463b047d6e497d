"""The experiment spec: one YAML file per preset (model scale) under config/presets/, scale-free method
definitions in config/methods.yaml. An experiment resolves as the deep merge of, in order:

    methods.yaml[method] (following its ``base:``)  ->  preset ``defaults``  ->  preset ``methods[method]``
    ->  the experiment's ``base:`` chain (each one's ``set:``)  ->  the experiment's own ``set:``

and is then validated into frozen dataclasses: every unknown key, wrong type or out-of-range value raises
:class:`SpecError` naming the file, the key path and what is allowed, before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from fipo.eval import BENCHMARKS
from fipo.eval.checkpoints import SELECTIONS
from fipo.eval.sampling import BACKENDS
from fipo.eval.scoring import SCORERS

# The spec folder (methods.yaml, presets/); FIPO_CONFIG_DIR points every tool, the pipeline included, elsewhere.
CONFIG_DIR = Path(os.environ.get("FIPO_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "config")


class SpecError(ValueError):
    """Bad experiment spec: names the file, the key and the allowed values."""


# ---------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class ModelSpec:
    path: str  # Hugging Face hub id or local folder
    max_position_embeddings: Optional[int] = None  # context extension (7B: 4096 -> 32768)
    rope_theta: Optional[float] = None


@dataclass(frozen=True)
class DataSpec:
    train: str  # dataset name, see fipo.data.DATASETS
    val: list[str]
    max_prompt_length: int
    max_response_length: int
    train_batch_size: int  # prompts per training step
    gen_batch_size: Optional[int] = None  # prompts per generation batch (dynamic sampling)


@dataclass(frozen=True)
class RewardSpec:
    manager: str = "dapo"
    overlong_buffer: bool = True  # DAPO overlong reward shaping
    overlong_buffer_len: int = 4096
    overlong_penalty: float = 1.0


@dataclass(frozen=True)
class AlgorithmSpec:
    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True
    filter_groups: bool = True  # DAPO dynamic sampling
    filter_metric: str = "acc"
    max_num_gen_batches: int = 10


@dataclass(frozen=True)
class PolicySpec:
    loss: str  # "vanilla" (DAPO/GRPO) or "fipo"
    lr: float
    lr_warmup_steps: int
    weight_decay: float
    grad_clip: float
    ppo_mini_batch_size: int  # prompts per PPO update
    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio_c: float
    loss_agg_mode: str
    ppo_epochs: int = 1
    lr_scheduler: str = "constant"
    kl_loss_coef: float = 0.0  # 0: no KL loss (DAPO, FIPO)
    entropy_coeff: float = 0.0


@dataclass(frozen=True)
class FIPOSpec:
    tau: float = 32.0
    f_clip_range: list[float] = field(default_factory=lambda: [1.0, 1.2])  # [low, high] bounds of f
    filter_ratio: bool = True
    filter_threshold: Optional[float] = None  # None: the dual-clip constant c
    safety_threshold: float = 10.0
    safety_mode: str = "reset"
    drop_multi_dual_clip: bool = False
    chunk_size: int = 32
    dump_every: int = 0  # per-token dumps every N loss calls per worker (0: off)


@dataclass(frozen=True)
class RolloutSpec:
    n: int  # group size G
    temperature: float = 1.0
    top_p: float = 1.0
    engine: str = "vllm"


@dataclass(frozen=True)
class ValidationSpec:
    n: int = 32
    temperature: float = 1.0
    top_p: float = 0.7
    test_freq: int = 5
    before_train: bool = True


@dataclass(frozen=True)
class TrainerSpec:
    total_training_steps: int
    save_freq: int
    nnodes: int
    n_gpus_per_node: int
    seed: int = 42
    project_name: str = "fipo-workbench"
    device: str = "cuda"
    timeout_s: Optional[int] = None  # wall-clock limit of one training attempt
    # verl's rollout dumps (every response of every step, decoded): the length quantiles of Figures 3 and 8.
    # About 0.3 GB per step at 32B scale (8192 responses of ~10k tokens); false saves the disk.
    rollout_dump: bool = True


@dataclass(frozen=True)
class EvaluationSpec:
    """How the pipeline evaluates each run of a preset (``fipo eval``): AIME practice is n = 32 samples per
    problem at temperature 1.0, top-p 0.7 (INTEGRATION.md)."""

    benchmarks: list[str] = field(default_factory=lambda: ["aime2024", "aime2025"])
    checkpoint: str = "last"  # "last" or "best" (by the validation metric)
    n: int = 32
    temperature: float = 1.0
    top_p: float = 0.7
    max_tokens: int = 20480
    backend: str = "vllm"
    tensor_parallel_size: int = 1
    scorer: str = "math_dapo"


EVAL_CHOICES = {"benchmarks": BENCHMARKS, "checkpoint": SELECTIONS, "backend": BACKENDS, "scorer": SCORERS}


@dataclass(frozen=True)
class Experiment:
    preset: str
    name: str
    method: str
    description: str
    model: ModelSpec
    data: DataSpec
    reward: RewardSpec
    algorithm: AlgorithmSpec
    policy: PolicySpec
    fipo: FIPOSpec
    rollout: RolloutSpec
    validation: ValidationSpec
    trainer: TrainerSpec
    engine: dict[str, Any]  # verl keys for parallelism/memory at this scale, passed through as overrides

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
PRESET_KEYS = {"description", "paper_table", "defaults", "methods", "experiments", "ablations", "evaluation"}


# ------------------------------------------------------------------------------------ loading & merging


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
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
    return sorted(p.stem for p in (config_dir / "presets").glob("*.yaml"))


@lru_cache(maxsize=None)
def _load_preset(name: str, config_dir: Path) -> dict:
    presets = list_presets(config_dir)
    if name not in presets:
        raise SpecError(f"unknown preset {name!r}; allowed: {', '.join(presets)}")
    path = config_dir / "presets" / f"{name}.yaml"
    data = _read_yaml(path)
    unknown = set(data) - PRESET_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    for key in ("defaults", "experiments"):
        if not isinstance(data.get(key), dict):
            raise SpecError(f"{path}: '{key}' must be a mapping")
    return data


@lru_cache(maxsize=None)
def _load_methods(config_dir: Path) -> dict:
    return _read_yaml(config_dir / "methods.yaml")


def list_experiments(preset: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    return list(_load_preset(preset, config_dir)["experiments"])


def _method_layers(method: str, config_dir: Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    methods = _load_methods(config_dir)
    if method not in methods:
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
    if name not in experiments:
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
    data = _load_preset(preset, config_dir)
    chain = _experiment_chain(data, preset, name)
    method = next((entry["method"] for _, entry in reversed(chain) if "method" in entry), None)
    if method is None:
        raise SpecError(f"preset {preset!r}, experiment {name!r}: no 'method' (here or in its base chain)")
    layers = _method_layers(method, config_dir)
    layers.append((f"{preset}:defaults", data["defaults"]))
    if method in (data.get("methods") or {}):
        layers.append((f"{preset}:methods.{method}", data["methods"][method]))
    layers += [(where, entry.get("set") or {}) for where, entry in chain]
    return layers


# ------------------------------------------------------------------------------------------ validation


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # YAML's true is not 1


# scalar type -> (accepts, what the error says was expected, conversion)
_SCALARS = {
    bool: (lambda v: isinstance(v, bool), "true/false", bool),
    int: (lambda v: _is_number(v) and isinstance(v, int), "an integer", int),
    float: (_is_number, "a number", float),
    str: (lambda v: isinstance(v, str), "a string", str),
}


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation in _SCALARS:
        accepts, expected, convert = _SCALARS[annotation]
        if not accepts(value):
            raise SpecError(f"{where}: expected {expected}, got {value!r}")
        return convert(value)
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


def _build_section(cls: type, values: Any, where: str):
    if not isinstance(values, dict):
        raise SpecError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SpecError(f"{where}: missing required key(s) {missing}")
    checked = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**checked)


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise SpecError(f"{where}: {message}")


def _validate_values(exp: Experiment, where: str) -> None:
    for key, allowed in CHOICES.items():
        section, attr = key.split(".")
        value = getattr(getattr(exp, section), attr)
        _require(value in allowed, f"{where}: {key}", f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
    p, f, d = exp.policy, exp.fipo, exp.data
    _require(p.clip_ratio_low >= 0, f"{where}: policy.clip_ratio_low", f"must be >= 0, got {p.clip_ratio_low}")
    _require(p.clip_ratio_low < 1, f"{where}: policy.clip_ratio_low", f"must be < 1, got {p.clip_ratio_low}")
    _require(p.clip_ratio_high >= 0, f"{where}: policy.clip_ratio_high", f"must be >= 0, got {p.clip_ratio_high}")
    _require(p.clip_ratio_c > 1, f"{where}: policy.clip_ratio_c", f"the dual-clip constant must be > 1, got {p.clip_ratio_c}")
    _require(p.lr > 0, f"{where}: policy.lr", f"must be > 0, got {p.lr}")
    _require(p.kl_loss_coef >= 0, f"{where}: policy.kl_loss_coef", "must be >= 0")
    _require(f.tau > 0 and not math.isnan(f.tau), f"{where}: fipo.tau", f"the half-life must be > 0, got {f.tau}")
    _require(len(f.f_clip_range) == 2, f"{where}: fipo.f_clip_range", "must be [low, high]")
    low, high = f.f_clip_range
    _require(low <= high, f"{where}: fipo.f_clip_range", f"low {low} > high {high}")
    _require(0 <= low <= 1 <= high, f"{where}: fipo.f_clip_range", f"need 0 <= low <= 1 <= high, got [{low}, {high}]")
    if f.filter_threshold is not None:
        _require(f.filter_threshold > 0, f"{where}: fipo.filter_threshold", "must be > 0 or null (= clip_ratio_c)")
    _require(f.safety_threshold > 0, f"{where}: fipo.safety_threshold", "must be > 0")
    _require(f.chunk_size >= 2, f"{where}: fipo.chunk_size", "must be >= 2")
    _require(f.dump_every >= 0, f"{where}: fipo.dump_every", "must be >= 0")
    for key in ("max_prompt_length", "max_response_length", "train_batch_size"):
        _require(getattr(d, key) > 0, f"{where}: data.{key}", "must be > 0")
    if d.gen_batch_size is not None:
        _require(d.gen_batch_size >= d.train_batch_size, f"{where}: data.gen_batch_size", "must be >= train_batch_size")
    _require(len(d.val) > 0, f"{where}: data.val", "needs at least one validation set")
    _require(
        0 < p.ppo_mini_batch_size <= d.train_batch_size and d.train_batch_size % p.ppo_mini_batch_size == 0,
        f"{where}: policy.ppo_mini_batch_size",
        f"must divide data.train_batch_size={d.train_batch_size}, got {p.ppo_mini_batch_size}",
    )
    if exp.reward.overlong_buffer:
        _require(
            0 < exp.reward.overlong_buffer_len <= d.max_response_length,
            f"{where}: reward.overlong_buffer_len",
            f"must be in (0, max_response_length={d.max_response_length}]",
        )
    _require(exp.rollout.n >= 2, f"{where}: rollout.n", "GRPO needs a group of at least 2 responses")
    for key in ("temperature", "top_p"):
        _require(getattr(exp.rollout, key) > 0, f"{where}: rollout.{key}", "must be > 0")
        _require(getattr(exp.validation, key) > 0, f"{where}: validation.{key}", "must be > 0")
    _require(exp.validation.n >= 1, f"{where}: validation.n", "must be >= 1")
    for key in ("total_training_steps", "nnodes", "n_gpus_per_node"):
        _require(getattr(exp.trainer, key) >= 1, f"{where}: trainer.{key}", "must be >= 1")
    if exp.policy.loss == "fipo":
        # The loss validates the knobs once more with its own rules; surface its message here, early.
        from fipo.loss import FIPOParams

        try:
            FIPOParams(
                clip_ratio_low=p.clip_ratio_low, clip_ratio_high=p.clip_ratio_high, clip_ratio_c=p.clip_ratio_c,
                **exp.fipo_loss_knobs(),
            )
        except ValueError as e:
            raise SpecError(f"{where}: {e}") from None


def load_experiment(preset: str, name: str, config_dir: Path = CONFIG_DIR) -> Experiment:
    """Resolve and validate one experiment. Raises SpecError naming the key on any problem."""
    config_dir = Path(config_dir)
    layers = experiment_layers(preset, name, config_dir)
    merged: dict = {}
    for _, settings in layers:
        if not isinstance(settings, dict):
            raise SpecError(f"preset {preset!r}, experiment {name!r}: settings must be a mapping")
        merged = deep_merge(merged, settings)
    where = f"preset {preset!r}, experiment {name!r}"
    unknown = set(merged) - set(SECTIONS) - {"engine"}
    if unknown:
        raise SpecError(f"{where}: unknown section(s) {sorted(unknown)}; allowed: {sorted(SECTIONS) + ['engine']}")
    sections = {key: _build_section(cls, merged.get(key, {}), f"{where}: {key}") for key, cls in SECTIONS.items()}
    chain = _experiment_chain(_load_preset(preset, config_dir), preset, name)
    exp = Experiment(
        preset=preset,
        name=name,
        method=next(entry["method"] for _, entry in reversed(chain) if "method" in entry),
        description=chain[-1][1].get("description", ""),
        engine=_flatten(merged.get("engine") or {}),
        **sections,
    )
    _validate_values(exp, where)
    return exp


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not dotted.startswith("+"):  # a '+' key adds a whole node
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def load_all(preset: str, config_dir: Path = CONFIG_DIR) -> list[Experiment]:
    return [load_experiment(preset, name, config_dir) for name in list_experiments(preset, config_dir)]


def ablations(preset: str, config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """Ablation families of a preset (e.g. ablation_tau) -> the experiments each compares, baseline included."""
    data = _load_preset(preset, Path(config_dir))
    families = data.get("ablations") or {}
    known = set(data["experiments"])
    for family, members in families.items():
        bad = [m for m in members if m not in known]
        if bad:
            raise SpecError(f"preset {preset!r}: ablations.{family} names unknown experiment(s) {bad}")
    return {family: list(members) for family, members in families.items()}


def preset_info(preset: str, config_dir: Path = CONFIG_DIR) -> dict:
    """The preset's own keys: description and paper_table (2: the 32B setup, 3: the 7B one, absent: tiny)."""
    data = _load_preset(preset, Path(config_dir))
    return {"description": data.get("description", ""), "paper_table": data.get("paper_table")}


def evaluation(preset: str, config_dir: Path = CONFIG_DIR) -> EvaluationSpec:
    """The preset's ``evaluation:`` section, validated like the experiment sections."""
    where = f"preset {preset!r}: evaluation"
    spec = _build_section(EvaluationSpec, _load_preset(preset, Path(config_dir)).get("evaluation") or {}, where)
    for key, allowed in EVAL_CHOICES.items():
        values = getattr(spec, key)
        for value in values if isinstance(values, list) else [values]:
            _require(value in allowed, f"{where}.{key}", f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
    _require(len(spec.benchmarks) > 0, f"{where}.benchmarks", "needs at least one benchmark")
    for key in ("n", "max_tokens", "tensor_parallel_size"):
        _require(getattr(spec, key) >= 1, f"{where}.{key}", "must be >= 1")
    _require(spec.temperature >= 0, f"{where}.temperature", "must be >= 0")
    _require(0 < spec.top_p <= 1, f"{where}.top_p", "must be in (0, 1]")
    return spec
