"""The spec's schema: one frozen pydantic dataclass per section, each field annotated with the pipeline stage its
value determines (``fipo.determines``), and the :class:`Experiment` they make up.

Constructing a section checks every value's type (:func:`build_section` turns pydantic's errors into messages
that name the key path and the layer that wrote it); the value rules are in ``fipo.spec.rules``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from functools import partial
from typing import Annotated, Any, Optional

import pydantic

from fipo.determines import CONVERT, EVALUATE, NOTHING, REPORT, SCOPE, TRAIN
from fipo.spec.vocab import MAX_NAME_LENGTH, NAME_PATTERN


class SpecError(ValueError):
    """Bad experiment spec: names the file, the key and the allowed values."""


def check_name(kind: str, name: Any, where: str, pattern: re.Pattern = NAME_PATTERN) -> str:
    """``name`` if it matches ``pattern`` (NAME_PATTERN unless told) and is at most MAX_NAME_LENGTH characters,
    else SpecError naming ``where``, the name and the rule. fullmatch, not match: ``$`` alone would let a
    trailing newline through."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise SpecError(f"{where}: {kind} name {name!r} is not allowed; names must match {pattern.pattern}")
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"{where}: {kind} name {name[:20]}... is {len(name)} characters; at most {MAX_NAME_LENGTH}")
    return name


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


def build_section(cls: type, values: Any, where: str, note=_no_note):
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


def require(ok: bool, where: str, message: str, note: str = "") -> None:
    if not ok:
        raise SpecError(f"{where}: {message}{note}")
