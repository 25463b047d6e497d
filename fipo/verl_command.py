"""Render an experiment spec to the stock verl command: ``python -m verl.trainer.main_ppo`` + Hydra overrides.

Every key below exists in verl 0.9.1's ppo_trainer config tree, except those written with ``+`` (verl has no
slot for them: the FIPO knobs on our PolicyLossConfig subclass, the dapo reward manager's kwargs, the model's
config overrides). tests/test_verl_command.py composes every paper experiment against the installed verl's own
config tree and instantiates the actor config, so a misspelt key fails there, not on a cluster.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from fipo.data import dataset_path
from fipo.experiment import Experiment
from fipo.run_folder import RunFolder

VERL_ENTRY = ("python", "-m", "verl.trainer.main_ppo")
FIPO_CONFIG_TARGET = "fipo.verl_plugin.FIPOPolicyLossConfig"
POLICY_LOSS = "actor_rollout_ref.actor.policy_loss"


# Written bare only when Hydra reads it back as this very string (not a number, bool, null or interpolation).
_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./+-]*")
_BARE_KEYWORDS = {"true", "false", "null", "none", "inf", "nan"}


def hydra_value(value: Any) -> str:
    """A Python value as Hydra override syntax that Hydra and OmegaConf read back unchanged (any path works:
    spaces, non-ASCII, ``#``, quotes, backslashes, ``${``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() not in _BARE_KEYWORDS:
        return text
    return hydra_quote(text)


def hydra_quote(text: str) -> str:
    """A single-quoted Hydra string. OmegaConf reads ``${`` as an interpolation: ``\\${`` is a literal one
    (backslashes right before it double). Hydra, inside quotes, escapes the quote and doubles the backslashes
    that precede a quote or the closing quote."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return "'" + text + "'"


def model_path(exp: Experiment, results_dir: Path) -> str:
    """The model path with ``${results_dir}`` resolved (the tiny preset's model is made by the pipeline)."""
    return exp.model.path.replace("${results_dir}", str(absolute_path(results_dir)))


def absolute_path(path) -> Path:
    """An absolute path without resolving symlinks or placeholders (Ray workers do not share our cwd)."""
    return Path(os.path.abspath(path))


def verl_overrides(
    exp: Experiment, *, data_dir: Path, run: RunFolder, results_dir: Path = Path("results"), ray_address: str | None = None
) -> list[str]:
    """The Hydra overrides that run ``exp`` with stock verl (one ``key=value`` string each)."""
    return render(verl_items(exp, data_dir=data_dir, run=run, results_dir=results_dir, ray_address=ray_address))


def render(items: list[tuple[str, Any]]) -> list[str]:
    return [f"{key}={hydra_value(value)}" for key, value in items]


# Where a run lies and which Ray cluster it joins do not change what it computes: kept out of its fingerprint.
MACHINE_KEYS = ("+ray_kwargs.ray_init.address",)
# Where a run's curves also go does not change what it computes: its identity always records verl's default pair,
# whatever trackers are chosen (which also keeps the fingerprints of runs made before trackers were selectable).
IDENTITY_LOGGERS = ["console", "file"]


def portable_overrides(exp: Experiment, extra: list[str] = ()) -> list[str]:
    """The overrides with the run, results and data folders as ``${run_dir}``, ``${results_dir}``, ``${data_dir}``:
    what identifies a run wherever it lies (fipo.run_folder.run_provenance). ``extra``: the user's own
    overrides (``--override``), which are part of what the run computes."""
    folders = {"run": "/@run_dir@", "results": "/@results_dir@", "data": "/@data_dir@"}
    items = verl_items(exp, data_dir=Path(folders["data"]), run=RunFolder(Path(folders["run"])),
                       results_dir=Path(folders["results"]))

    def portable(value):
        if isinstance(value, str):
            for name, marker in folders.items():
                value = value.replace(marker, "${%s_dir}" % name)
            return value
        if isinstance(value, (list, tuple)):
            return [portable(v) for v in value]
        return value

    items = [(key, IDENTITY_LOGGERS if key == "trainer.logger" else value) for key, value in items]
    return [f"{key}={portable(value)!r}" for key, value in items if key not in MACHINE_KEYS] + list(extra)


def verl_items(
    exp: Experiment, *, data_dir: Path, run: RunFolder, results_dir: Path = Path("results"), ray_address: str | None = None
) -> list[tuple[str, Any]]:
    """(key, value) of every override, in order."""
    seed = exp.trainer.seed
    items: list[tuple[str, Any]] = [
        # algorithm: GRPO advantages, no KL in the reward, DAPO dynamic sampling
        ("algorithm.adv_estimator", exp.algorithm.adv_estimator),
        ("algorithm.norm_adv_by_std_in_grpo", exp.algorithm.norm_adv_by_std),
        ("algorithm.use_kl_in_reward", False),
        ("algorithm.filter_groups.enable", exp.algorithm.filter_groups),
        ("algorithm.filter_groups.metric", exp.algorithm.filter_metric),
        ("algorithm.filter_groups.max_num_gen_batches", exp.algorithm.max_num_gen_batches),
        # data
        ("data.train_files", [str(dataset_path(exp.data.train, data_dir))]),
        ("data.val_files", [str(dataset_path(name, data_dir)) for name in exp.data.val]),
        ("data.prompt_key", "prompt"),
        ("data.max_prompt_length", exp.data.max_prompt_length),
        ("data.max_response_length", exp.data.max_response_length),
        ("data.train_batch_size", exp.data.train_batch_size),
        ("data.gen_batch_size", exp.data.gen_batch_size),
        ("data.truncation", "left"),
        ("data.seed", seed),
        # model
        ("actor_rollout_ref.model.path", model_path(exp, results_dir)),
        # actor
        ("actor_rollout_ref.actor.optim.lr", exp.policy.lr),
        ("actor_rollout_ref.actor.optim.lr_warmup_steps", exp.policy.lr_warmup_steps),
        ("actor_rollout_ref.actor.optim.lr_scheduler_type", exp.policy.lr_scheduler),
        ("actor_rollout_ref.actor.optim.weight_decay", exp.policy.weight_decay),
        ("actor_rollout_ref.actor.optim.clip_grad", exp.policy.grad_clip),
        ("actor_rollout_ref.actor.ppo_mini_batch_size", exp.policy.ppo_mini_batch_size),
        ("actor_rollout_ref.actor.ppo_epochs", exp.policy.ppo_epochs),
        ("actor_rollout_ref.actor.clip_ratio_low", exp.policy.clip_ratio_low),
        ("actor_rollout_ref.actor.clip_ratio_high", exp.policy.clip_ratio_high),
        ("actor_rollout_ref.actor.clip_ratio_c", exp.policy.clip_ratio_c),
        ("actor_rollout_ref.actor.loss_agg_mode", exp.policy.loss_agg_mode),
        ("actor_rollout_ref.actor.use_kl_loss", exp.policy.kl_loss_coef > 0),
        ("actor_rollout_ref.actor.kl_loss_coef", exp.policy.kl_loss_coef),
        ("actor_rollout_ref.actor.entropy_coeff", exp.policy.entropy_coeff),
        ("actor_rollout_ref.actor.data_loader_seed", seed),
        (f"{POLICY_LOSS}.loss_mode", exp.policy.loss),
        # rollout (training samples) and validation sampling (AIME: n = 32, temperature 1.0, top-p 0.7)
        ("actor_rollout_ref.rollout.name", exp.rollout.engine),
        ("actor_rollout_ref.rollout.n", exp.rollout.n),
        ("actor_rollout_ref.rollout.temperature", exp.rollout.temperature),
        ("actor_rollout_ref.rollout.top_p", exp.rollout.top_p),
        ("actor_rollout_ref.rollout.seed", seed),
        ("actor_rollout_ref.rollout.val_kwargs.n", exp.validation.n),
        ("actor_rollout_ref.rollout.val_kwargs.temperature", exp.validation.temperature),
        ("actor_rollout_ref.rollout.val_kwargs.top_p", exp.validation.top_p),
        ("actor_rollout_ref.rollout.val_kwargs.do_sample", True),
        # reward: rule-based math_dapo scoring with DAPO's overlong shaping
        ("reward.reward_manager.name", exp.reward.manager),
        ("+reward.reward_kwargs.overlong_buffer_cfg.enable", exp.reward.overlong_buffer),
        ("+reward.reward_kwargs.overlong_buffer_cfg.len", exp.reward.overlong_buffer_len),
        ("+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor", exp.reward.overlong_penalty),
        ("+reward.reward_kwargs.overlong_buffer_cfg.log", False),
        ("+reward.reward_kwargs.max_resp_len", exp.data.max_response_length),
        # trainer: metrics to console + JSONL (path via VERL_FILE_LOGGER_PATH), checkpoints, resume
        ("trainer.logger", list(exp.trainer.loggers)),
        ("trainer.project_name", exp.trainer.project_name),
        ("trainer.experiment_name", exp.run_id),
        ("trainer.nnodes", exp.trainer.nnodes),
        ("trainer.n_gpus_per_node", exp.trainer.n_gpus_per_node),
        ("trainer.device", exp.trainer.device),
        ("trainer.total_training_steps", exp.trainer.total_training_steps),
        ("trainer.test_freq", exp.validation.test_freq),
        ("trainer.val_before_train", exp.validation.before_train),
        ("trainer.save_freq", exp.trainer.save_freq),
        ("trainer.default_local_dir", str(run.checkpoints)),
        ("trainer.resume_mode", "auto"),
    ]
    if exp.trainer.rollout_dump:  # raw responses: the length quantiles of Figures 3 and 8 need them
        items.append(("trainer.rollout_data_dir", str(run.rollouts)))
    if exp.model.max_position_embeddings is not None:
        items.append(("+actor_rollout_ref.model.override_config.max_position_embeddings", exp.model.max_position_embeddings))
    if exp.model.rope_theta is not None:
        items.append(("+actor_rollout_ref.model.override_config.rope_theta", exp.model.rope_theta))
    if exp.policy.loss == "fipo":
        items.append((f"{POLICY_LOSS}._target_", FIPO_CONFIG_TARGET))
        items += [(f"+{POLICY_LOSS}.{key}", value) for key, value in exp.fipo_loss_knobs().items()]
        if exp.fipo.dump_every > 0:
            items += [(f"+{POLICY_LOSS}.dump_path", str(run.token_dump)), (f"+{POLICY_LOSS}.dump_every", exp.fipo.dump_every)]
    if ray_address:
        items.append(("+ray_kwargs.ray_init.address", ray_address))
    if exp.trainer.device == "cpu":
        from fipo.integrations.cpu_run import sampler_overrides

        metric = exp.algorithm.filter_metric if exp.algorithm.filter_groups else None
        items += sampler_overrides(metric, exp.data.train_batch_size, exp.data.gen_batch_size).items()
    items += sorted(exp.engine.items())
    return items


def verl_environment(run: RunFolder, exp: Experiment, metrics_path: Path | None = None) -> dict[str, str]:
    """Environment of the verl driver: where its `file` logger writes, and for CPU runs the CPU support."""
    env = {"VERL_FILE_LOGGER_PATH": str(metrics_path or run.metrics)}
    if "tensorboard" in exp.trainer.loggers:
        env["TENSORBOARD_DIR"] = str(run.tensorboard)
    if exp.trainer.device == "cpu":
        from fipo.integrations.cpu_run import cpu_environment

        env.update(cpu_environment())
    return env


def command_line(overrides: list[str]) -> str:
    """One shell line: ``python -m verl.trainer.main_ppo`` followed by the overrides, shell-quoted."""
    return " ".join(shlex.quote(part) for part in (*VERL_ENTRY, *overrides))
