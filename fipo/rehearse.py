"""Rehearse a GPU preset's experiment on the CPU: the real verl trainer, 2 steps, at toy scale.

A GPU preset is composed against verl's config tree in the tests but runs only on a cluster, where a setting that
fails at run time (batch and micro-batch divisibility, dynamic batch sizes and token limits, dynamic-sampling
refills, the overlong buffer, checkpoint and validation frequencies) costs a queue wait and hours. A rehearsal
runs the experiment through ``fipo train``'s own code path (:func:`fipo.training.run_training` on
:func:`fipo.verl_command.verl_overrides`) with every setting unchanged except:

- the model, data and device: the tiny preset's warm-started model, tiny-train / tiny-val, and the CPU support
  that config/presets/tiny.yaml provides (trainer.device cpu, the hf rollout, its ``engine:`` keys). A GPU-only
  engine key (parallel sizes above 1, flash-attention's remove-padding) takes the value one CPU device can run;
- the sizes, scaled by three stated factors of the preset (:class:`Scale`) that keep their ratios;
- the length of the run: 2 steps, with validation and checkpoint frequencies mapped into them.

Every change is a :class:`Change` (setting, preset value, rehearsal value, why), printed as a table before verl
starts. The rehearsal's Experiment is validated by :func:`fipo.spec.with_overrides` like any spec.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fipo import data as data_mod
from fipo.spec import (CONFIG_DIR, SECTIONS, Experiment, SpecError, list_experiments, list_presets, load_all,
                             load_experiment, with_overrides)
from fipo.checkpoint_steps import checkpoint_steps
from fipo.run_folder import LOGGED_STEP_MARKER, read_steps, RunFolder
from fipo.tiny import build_tiny_base_model, prepare_tiny_data
from fipo.tiny_spec import TinyModelSpec
from fipo.training import run_training
from fipo.verl_command import absolute_path, model_path, verl_overrides
from fipo.verl_keys import bare

STEPS = 2
CPU_PRESET = "tiny"  # whose model, data and engine: section make verl run on a CPU
TINY_CONTEXT = TinyModelSpec().max_position_embeddings
# The tiny task's chat-formatted prompts take 21-27 tokens: a shorter prompt limit would cut them (verl truncates
# from the left), the model could not answer, and dynamic sampling would find no group worth training on.
TINY_PROMPT_TOKENS = 27
# Trackers that need nothing outside this machine: a rehearsal must not log into a team's wandb project.
OFFLINE_LOGGERS = ("console", "file", "tensorboard")
VERL_DEFAULT = "(verl default)"
REHEARSAL_DIR = "rehearsal"
REHEARSAL_TIMEOUT_S = 900  # when the tiny preset sets none: a wrong CPU setup hangs rather than failing

ULYSSES = "ulysses_sequence_parallel_size"
# GPU-only engine settings, by the last part of the verl key: the value one CPU device runs, and why.
CPU_VALUES: dict[str, tuple[Any, str]] = {
    "tensor_model_parallel_size": (1, "one CPU device: no tensor parallelism"),
    "pipeline_model_parallel_size": (1, "one CPU device: no pipeline parallelism"),
    "context_parallel_size": (1, "one CPU device: no context parallelism"),
    ULYSSES: (1, "one CPU device: no sequence parallelism (token limits below keep the "
                                          "sequence-parallel group's budget)"),
    "use_remove_padding": (False, "needs flash-attn's variable-length kernels (CUDA)"),
    "attn_implementation": ("sdpa", "flash-attention is CUDA-only"),
}
# Per-GPU token budgets of verl's FSDP engine: per GPU of a sequence-parallel group, which shares
# max_token_len_per_gpu x ulysses_sequence_parallel_size tokens (verl.workers.engine.utils).
FSDP_TOKEN_LIMIT = "max_token_len_per_gpu"
# vLLM's token limits: the hf rollout does not read them; scaled all the same, as lengths.
ROLLOUT_TOKEN_LIMITS = ("max_num_batched_tokens", "max_model_len")
MICRO_BATCH = "micro_batch_size_per_gpu"  # tiny's fixed micro-batches, in samples per GPU
DYNAMIC_BSZ = "actor_rollout_ref.actor.use_dynamic_bsz"


@dataclass(frozen=True)
class Scale:
    """The factors a preset's sizes are divided by, the same for all its experiments so that ablations stay
    comparable: ``prompts`` (prompts per step, per mini-batch, per generation batch), ``samples`` (responses per
    prompt, in training and validation) and ``length`` (prompt and response lengths, the overlong buffer, token
    limits)."""

    prompts: int
    samples: int
    length: int


@dataclass(frozen=True)
class Change:
    setting: str  # a spec key (data.train_batch_size) or engine.<verl key>
    preset: Any
    rehearsal: Any
    why: str


@dataclass(frozen=True)
class Rehearsal:
    source: Experiment  # the preset's experiment
    experiment: Experiment  # what the rehearsal runs, validated like any spec
    scale: Scale
    changes: tuple[Change, ...]


# ------------------------------------------------------------------------------------------------ factors


def gpu_presets(config_dir: Path = CONFIG_DIR) -> list[str]:
    """The presets that train on GPUs (found, not listed: a new one is rehearsed without anyone adding it)."""
    return [p for p in list_presets(config_dir)
            if load_experiment(p, list_experiments(p, config_dir)[0], config_dir).trainer.device != "cpu"]


def prompt_counts(exp: Experiment) -> list[int]:
    d = exp.data
    return [d.train_batch_size, exp.policy.ppo_mini_batch_size] + ([d.gen_batch_size] if d.gen_batch_size else [])


def scaled_length(value: int, factor: int) -> int:
    """Lengths round down (at least 1): a sum that fit a limit still fits it (floor(a) + floor(b) <= floor(a + b))."""
    return max(1, value // factor)


def preset_scale(preset: str, config_dir: Path = CONFIG_DIR) -> Scale:
    """The preset's :class:`Scale`.

    - prompts: the largest factor dividing every prompt count of every experiment (train, mini-batch and
      generation batch sizes): the smallest rehearsal whose updates per step and refill ratios stay exact;
    - samples: the prompts factor where every group size divides by it and the smallest group keeps 2 responses
      (GRPO's minimum), else its largest divisor that does (group sizes keep their ratios);
    - length: the smallest power of two that fits every experiment's prompt and response into the tiny model's
      context (a power of two divides the presets' round lengths exactly).
    """
    exps = load_all(preset, config_dir)
    prompts = math.gcd(*[count for exp in exps for count in prompt_counts(exp)])
    groups = [exp.rollout.n for exp in exps]
    samples = max(d for d in range(1, prompts + 1)
                  if prompts % d == 0 and all(n % d == 0 for n in groups) and min(groups) // d >= 2)
    longest = [(exp.data.max_prompt_length, exp.data.max_response_length) for exp in exps]
    length = 1
    while max(scaled_length(p, length) + scaled_length(r, length) for p, r in longest) > TINY_CONTEXT:
        length *= 2
    short = min(scaled_length(p, length) for p, _ in longest)
    if short < TINY_PROMPT_TOKENS:
        raise SpecError(f"preset {preset!r}: the length factor {length} that fits its responses into the tiny model's "
                        f"{TINY_CONTEXT}-token context leaves {short}-token prompts, shorter than the tiny task's "
                        f"({TINY_PROMPT_TOKENS}): no rehearsal keeps this prompt/response ratio")
    return Scale(prompts=prompts, samples=samples, length=length)


# ------------------------------------------------------------------------------------------------ changes


def _divided(value: int, factor: int, name: str) -> tuple[int, str]:
    """``value / factor`` and the why-text; rounded (to at least 1) where it does not divide, saying so."""
    exact = value / factor
    result = max(1, round(exact))
    why = f"/ {factor} ({name})"
    return result, why if result == exact else f"{why}; {exact:g} rounded to {result}"


def _length(value: int, scale: Scale, what: str = "a length") -> tuple[int, str]:
    result = scaled_length(value, scale.length)
    why = f"{what} / {scale.length} (length factor)"
    return result, why if result * scale.length == value else f"{why}; rounded down from {value / scale.length:g}"


def size_changes(exp: Experiment, scale: Scale) -> list[Change]:
    """Prompts per step and per (mini-/generation) batch, responses per prompt, lengths."""
    d, out = exp.data, []

    def add(setting: str, before: Any, value_why: tuple[Any, str]) -> None:
        out.append(Change(setting, before, *value_why))

    add("data.train_batch_size", d.train_batch_size, _divided(d.train_batch_size, scale.prompts, "prompts factor"))
    updates = d.train_batch_size // exp.policy.ppo_mini_batch_size
    add("policy.ppo_mini_batch_size", exp.policy.ppo_mini_batch_size,
        _divided(exp.policy.ppo_mini_batch_size, scale.prompts, f"prompts factor: {updates} updates per step kept"))
    if d.gen_batch_size is not None:
        add("data.gen_batch_size", d.gen_batch_size,
            _divided(d.gen_batch_size, scale.prompts, "prompts factor: generation/train batch ratio kept"))
    add("rollout.n", exp.rollout.n, _divided(exp.rollout.n, scale.samples, "samples factor"))
    add("validation.n", exp.validation.n, _divided(exp.validation.n, scale.samples, "samples factor"))
    add("data.max_prompt_length", d.max_prompt_length, _length(d.max_prompt_length, scale))
    add("data.max_response_length", d.max_response_length, _length(d.max_response_length, scale))
    add("reward.overlong_buffer_len", exp.reward.overlong_buffer_len,
        _length(exp.reward.overlong_buffer_len, scale, "a length (its share of the response kept)"))
    if exp.model.max_position_embeddings is not None:
        add("model.max_position_embeddings", exp.model.max_position_embeddings,
            _length(exp.model.max_position_embeddings, scale, "the context extension, a length"))
    return out


def frequencies(test_freq: int, save_freq: int) -> tuple[int, int]:
    """(test_freq, save_freq) within 2 steps, in the preset's order: the more frequent of the two every step, the
    other every 2nd step (every step when they are equal)."""
    return (1 if test_freq <= save_freq else STEPS), (1 if save_freq <= test_freq else STEPS)


def _frequency_why(mine: int, other: int, other_name: str) -> str:
    if mine == other:
        return f"= {other_name}: both every step"
    more = mine < other
    return (f"{'more' if more else 'less'} frequent than {other_name} ({other}): "
            f"{'every step' if more else f'every {STEPS}nd step'}")


def run_changes(exp: Experiment, cpu: Experiment) -> list[Change]:
    """Model, data, device, the run's length and when it validates, saves and dumps."""
    test_freq, save_freq = exp.validation.test_freq, exp.trainer.save_freq
    test, save = frequencies(test_freq, save_freq)
    out = [
        Change("model.path", exp.model.path, cpu.model.path, "the tiny preset's warm-started model"),
        Change("data.train", exp.data.train, cpu.data.train, "tiny data (the preset's cannot be downloaded here)"),
        Change("data.val", exp.data.val, cpu.data.val, "tiny data: validation on tiny-val"),
        Change("rollout.engine", exp.rollout.engine, cpu.rollout.engine, "the CPU support's transformers rollout"),
        Change("trainer.device", exp.trainer.device, cpu.trainer.device, "CPU support (fipo/integrations/verl_cpu.py)"),
        Change("trainer.nnodes", exp.trainer.nnodes, 1, "one CPU machine"),
        Change("trainer.n_gpus_per_node", exp.trainer.n_gpus_per_node, 1, "one CPU device, as the tiny preset"),
        Change("trainer.total_training_steps", exp.trainer.total_training_steps, STEPS, "a rehearsal"),
        Change("validation.test_freq", test_freq, test, _frequency_why(test_freq, save_freq, "save_freq")),
        Change("trainer.save_freq", save_freq, save, _frequency_why(save_freq, test_freq, "test_freq")),
        Change("trainer.timeout_s", exp.trainer.timeout_s, cpu.trainer.timeout_s or REHEARSAL_TIMEOUT_S,
               "a wrong CPU setup hangs instead of failing"),
    ]
    if exp.model.rope_theta is not None:
        out.append(Change("model.rope_theta", exp.model.rope_theta, None, "the replaced model's: the tiny model's own"))
    loggers = [x for x in exp.trainer.loggers if x in OFFLINE_LOGGERS]
    out.append(Change("trainer.loggers", exp.trainer.loggers, loggers, "offline trackers only"))
    if exp.policy.loss == "fipo" and exp.fipo.dump_every > 0:
        # each PPO mini-batch is at least one loss call: a dump within the first step
        every = exp.data.train_batch_size // exp.policy.ppo_mini_batch_size * exp.policy.ppo_epochs
        out.append(Change("fipo.dump_every", exp.fipo.dump_every, every,
                          "loss calls: one dump per step at least (PPO updates per step)"))
    return out


def _sequence_parallel(engine: dict[str, Any], key: str) -> int:
    """The ulysses size of the FSDP engine that reads token limit ``key``: the reference model's own where set;
    everything else (rollout log-probs included) runs on the actor's."""
    sizes = {bare(k): v for k, v in engine.items() if bare(k).endswith(ULYSSES)}
    actor = sizes.get(f"actor_rollout_ref.actor.{ULYSSES}", 1)
    if bare(key).startswith("actor_rollout_ref.ref."):
        return sizes.get(f"actor_rollout_ref.ref.{ULYSSES}", actor)
    return actor


def _engine_change(key: str, value: Any, engine: dict[str, Any], scale: Scale) -> Change | None:
    leaf = bare(key).rsplit(".", 1)[-1]
    if leaf in CPU_VALUES and value != CPU_VALUES[leaf][0]:
        return Change(f"engine.{key}", value, *CPU_VALUES[leaf])
    if leaf.endswith(FSDP_TOKEN_LIMIT) and isinstance(value, int):
        sp = _sequence_parallel(engine, key)
        result, why = _length(value * sp, scale, "a token limit")
        return Change(f"engine.{key}", value, result, why if sp == 1 else f"x {sp} (sequence-parallel size), {why}")
    if leaf in ROLLOUT_TOKEN_LIMITS and isinstance(value, int):
        result, why = _length(value, scale, "vLLM's token limit (the hf rollout ignores it)")
        return Change(f"engine.{key}", value, result, why)
    return None


def engine_changes(exp: Experiment, cpu: Experiment, scale: Scale) -> list[Change]:
    """The preset's GPU-only engine keys replaced, its token limits scaled, and the tiny preset's CPU-support keys
    it does not set added (except tiny's fixed micro-batches where the preset sizes them dynamically)."""
    dynamic = any(bare(k) == DYNAMIC_BSZ and v for k, v in exp.engine.items())
    preset_micro = [k for k in exp.engine if bare(k).endswith(MICRO_BATCH)]
    if not dynamic or preset_micro:
        raise SpecError(f"preset {exp.preset!r}, experiment {exp.name!r}: the rehearsal scales token limits "
                        f"(engine.{DYNAMIC_BSZ}: true); it has no rule for per-GPU micro-batch sizes "
                        f"{preset_micro or '(verl needs them without dynamic batch sizes)'}")
    out = [c for key, value in exp.engine.items() if (c := _engine_change(key, value, exp.engine, scale))]
    ours = {bare(k) for k in exp.engine}
    for key, value in cpu.engine.items():
        if bare(key) in ours or bare(key).endswith(MICRO_BATCH):
            continue
        out.append(Change(f"engine.{key}", VERL_DEFAULT, value, "CPU support (config/presets/tiny.yaml engine:)"))
    return out


def plan(exp: Experiment, cpu: Experiment, scale: Scale) -> list[Change]:
    """Every change of the rehearsal, values that stay as they were left out."""
    changes = size_changes(exp, scale) + run_changes(exp, cpu) + engine_changes(exp, cpu, scale)
    return [c for c in changes if c.preset != c.rehearsal]


def apply(exp: Experiment, changes: list[Change]) -> Experiment:
    """``exp`` with ``changes``, checked by :func:`fipo.spec.with_overrides` like any spec with an override:
    types, ranges and every cross-key rule (mini-batch divides the batch, the overlong buffer fits the response,
    FIPO's off-policy updates...)."""
    fields: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    engine = dict(exp.engine)
    for change in changes:
        section, _, key = change.setting.partition(".")
        if section == "engine":
            engine[key] = change.rehearsal
        else:
            fields[section][key] = change.rehearsal
    sections = {name: dataclasses.replace(getattr(exp, name), **values) for name, values in fields.items() if values}
    changed = dataclasses.replace(exp, engine=engine, **sections)
    # the step count once more as an override: with_overrides validates only when given one
    return with_overrides(changed, [f"trainer.total_training_steps={STEPS}"], source="the rehearsal (fipo/rehearse.py)")


def rehearsal(preset: str, experiment: str, config_dir: Path = CONFIG_DIR) -> Rehearsal:
    source = load_experiment(preset, experiment, config_dir)
    if source.trainer.device == "cpu":
        raise SpecError(f"preset {preset!r} already runs on the CPU: train it (python -m fipo train)")
    cpu = load_experiment(CPU_PRESET, list_experiments(CPU_PRESET, config_dir)[0], config_dir)
    scale = preset_scale(preset, config_dir)
    changes = plan(source, cpu, scale)
    return Rehearsal(source, apply(source, changes), scale, tuple(changes))


# ------------------------------------------------------------------------------------------------ printout


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _table(title: str, rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Aligned columns; a value wider than COLUMN (a mapping) pushes its row's later cells right."""
    rows = [("setting", "preset", "rehearsal", "why"), *rows]
    widths = [max(len(row[0]) for row in rows)] + [min(COLUMN, max(len(row[i]) for row in rows)) for i in (1, 2)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3] for row in rows]
    return [title, *lines[:1], "  ".join("-" * w for w in widths) + "  ---", *lines[1:]]


COLUMN = 20


def render(r: Rehearsal) -> str:
    """The factors and every change, as printed before verl starts."""
    s, src = r.scale, r.source
    samples = "" if s.samples == s.prompts else f" (not / {s.prompts}: a group keeps at least 2 responses)"
    head = [f"Rehearsal of {src.preset} / {src.name}: {STEPS} steps of the real verl trainer on the CPU.",
            f"Factors of preset {src.preset}: prompts / {s.prompts}, samples per prompt / {s.samples}{samples}, "
            f"lengths / {s.length}.", "Every setting not listed is the preset's.", ""]
    spec = [(c.setting, _shown(c.preset), _shown(c.rehearsal), c.why) for c in r.changes
            if not c.setting.startswith("engine.")]
    engine = [(c.setting.removeprefix("engine."), _shown(c.preset), _shown(c.rehearsal), c.why) for c in r.changes
              if c.setting.startswith("engine.")]
    tables = _table("Spec:", spec) + [""] + _table("verl engine keys (the spec's engine:):", engine)
    return "\n".join(head + tables) + "\n"


# ------------------------------------------------------------------------------------------------ checks


def expected_steps(freq: int, last: int = STEPS) -> list[int]:
    """Steps verl acts at with frequency ``freq``: every ``freq``-th and the last."""
    return [s for s in range(1, last + 1) if s % freq == 0 or s == last]


def validation_steps(exp: Experiment) -> list[int]:
    """Steps verl validates at: before training (step 0) when asked, then with ``test_freq``."""
    return [0] * exp.validation.before_train + expected_steps(exp.validation.test_freq)


def check_run(run: RunFolder, exp: Experiment) -> list[str]:
    """What the finished rehearsal should have left, as problems (none: it passed)."""
    steps = read_steps(run.metrics) if run.metrics.is_file() else {}
    found = {
        f"trained steps logged in {run.metrics}:": (
            sorted(s for s, data in steps.items() if LOGGED_STEP_MARKER in data), list(range(1, STEPS + 1))),
        "validations logged at steps": (
            sorted(s for s, data in steps.items() if any(k.startswith("val-core/") for k in data)),
            validation_steps(exp)),
        f"checkpoints in {run.checkpoints} at": (
            checkpoint_steps(run.checkpoints), expected_steps(exp.trainer.save_freq)),
    }
    problems = [f"{what} {got}, expected {want}" for what, (got, want) in found.items() if got != want]
    if exp.trainer.rollout_dump and not all((run.rollouts / f"{s}.jsonl").is_file() for s in range(1, STEPS + 1)):
        problems.append(f"rollout dumps missing under {run.rollouts}")
    if exp.policy.loss == "fipo" and exp.fipo.dump_every > 0 and not list(run.run_dir.glob("token_dump*.jsonl")):
        problems.append(f"no FIPO token dump in {run.run_dir}")
    return problems


# ------------------------------------------------------------------------------------------------ the run


def rehearsal_folder(results_dir: Path, preset: str, experiment: str) -> RunFolder:
    """``<results>/rehearsal/<preset>/<experiment>/``: apart from the preset's real runs."""
    return RunFolder(Path(results_dir) / REHEARSAL_DIR / preset / experiment)


def prepare_tiny_inputs(exp: Experiment, results_dir: Path, data_dir: Path, log: Callable[[str], None]) -> None:
    """The tiny data and model, made when missing, as the tiny preset's pipeline makes them."""
    if not all(data_mod.dataset_path(n, data_dir).is_file() for n in [exp.data.train, *exp.data.val]):
        log(f"[rehearse] making the tiny data in {data_dir}")
        prepare_tiny_data(data_dir)
    model = Path(model_path(exp, results_dir))
    if not (model / "tiny_model.json").is_file():  # written last: the folder is complete
        log(f"[rehearse] building the tiny model in {model} (about a minute)")
        build_tiny_base_model(model, log=log)


def rehearse(preset: str, experiment: str, results_dir: Path, data_dir: Path, timeout_s: float | None = None) -> int:
    """Print the scaling table, run verl for 2 steps into a fresh rehearsal folder, check what it left.
    0: passed; verl's exit code (124: stopped by the hang guard) or 1 (the run left too little) otherwise."""
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    r = rehearsal(preset, experiment)
    print(render(r), flush=True)
    results_dir, data_dir = absolute_path(results_dir), absolute_path(data_dir)
    exp = r.experiment
    prepare_tiny_inputs(exp, results_dir, data_dir, log)
    run = rehearsal_folder(results_dir, preset, experiment)
    start = time.monotonic()
    with run.lock(f"fipo rehearse --preset {preset} --experiment {experiment}") as lock_fd:
        shutil.rmtree(run.run_dir, ignore_errors=True)  # a rehearsal always starts from scratch
        overrides = verl_overrides(exp, data_dir=data_dir, run=run, results_dir=results_dir)
        code = run_training(exp, run, overrides, timeout_s=timeout_s or exp.trainer.timeout_s, lock_fd=lock_fd)
    wall = time.monotonic() - start
    where = f"{preset} / {experiment} ({run.run_dir})"
    if code != 0:
        log(f"[rehearse] FAILED: verl exited with {code} after {wall:.0f} s; its error is in the output above. {where}")
        return code
    problems = check_run(run, exp)
    if problems:
        log(f"[rehearse] FAILED after {wall:.0f} s, verl exited 0 but: " + "; ".join(problems) + f". {where}")
        return 1
    print(f"[rehearse] passed in {wall:.0f} s: {STEPS} steps, validation at steps {validation_steps(exp)}, "
          f"checkpoints at {expected_steps(exp.trainer.save_freq)}. {where}", flush=True)
    return 0
