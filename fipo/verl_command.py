"""Render an experiment spec to the stock verl command: ``python -m verl.trainer.main_ppo`` + Hydra overrides.

Every key below exists in verl 0.9.1's ppo_trainer config tree, except those written with ``+`` (verl has no
slot for them: the FIPO knobs on our PolicyLossConfig subclass, the dapo reward manager's kwargs, the model's
config overrides). tests/test_verl_command.py composes every paper experiment against the installed verl's own
config tree and instantiates the actor config, so a misspelt key fails there, not on a cluster.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from fipo.data import dataset_path
from fipo.determines import NOTHING, declarations
from fipo.hydra_values import hydra_value
from fipo.integrations.cpu_run import cpu_environment, sampler_overrides
from fipo.run_folder import RunFolder
from fipo.spec import SECTIONS, Experiment
from fipo.verl_keys import POLICY_LOSS, SPEC_KEYS

VERL_ENTRY = ("python", "-m", "verl.trainer.main_ppo")
FIPO_CONFIG_TARGET = "fipo.verl_plugin.FIPOPolicyLossConfig"


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


def spec_stage(key: str) -> str:
    """The stage a dotted spec key determines (fipo.determines)."""
    section, field = key.split(".")
    return declarations(SECTIONS[section])[field]


# Rendered keys whose spec key determines nothing a run computes (fipo.determines: trackers, their project), and
# the run's name: in a run's identity as a placeholder, so that changing them keeps the run.
UNCOMPUTED_KEYS = ("trainer.experiment_name",
                   *(key for key, spec in SPEC_KEYS.items() if spec_stage(spec) == NOTHING))


def portable_overrides(exp: Experiment) -> list[str]:
    """The overrides with the run, results and data folders as ``${run_dir}``, ``${results_dir}``, ``${data_dir}``
    and the values of :data:`UNCOMPUTED_KEYS` as ``${uncomputed}``: what identifies a run wherever it lies
    (fipo.run_folder.run_provenance)."""
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

    items = [(key, "${uncomputed}" if key in UNCOMPUTED_KEYS else value) for key, value in items]
    return [f"{key}={portable(value)!r}" for key, value in items if key not in MACHINE_KEYS]


def spec_value(exp: Experiment, key: str) -> Any:
    """The value of a dotted spec key (``policy.lr``) of ``exp``."""
    section, field = key.split(".")
    return getattr(getattr(exp, section), field)


def verl_items(
    exp: Experiment, *, data_dir: Path, run: RunFolder, results_dir: Path = Path("results"), ray_address: str | None = None
) -> list[tuple[str, Any]]:
    """(key, value) of every override, in order: the spec's keys (fipo.verl_keys.SPEC_KEYS), the keys computed
    from them (DERIVED), the workbench's own (FIXED), then the spec's ``engine:`` entries (none of those)."""
    seed = exp.trainer.seed
    items: list[tuple[str, Any]] = [(key, spec_value(exp, spec)) for key, spec in SPEC_KEYS.items()]
    items += [
        ("algorithm.use_kl_in_reward", False),
        ("data.train_files", [str(dataset_path(exp.data.train, data_dir))]),
        ("data.val_files", [str(dataset_path(name, data_dir)) for name in exp.data.val]),
        ("data.prompt_key", "prompt"),
        ("data.truncation", "left"),
        ("data.seed", seed),
        ("actor_rollout_ref.model.path", model_path(exp, results_dir)),
        ("actor_rollout_ref.actor.use_kl_loss", exp.policy.kl_loss_coef > 0),
        ("actor_rollout_ref.actor.data_loader_seed", seed),
        ("actor_rollout_ref.rollout.seed", seed),
        ("actor_rollout_ref.rollout.val_kwargs.do_sample", True),
        ("+reward.reward_kwargs.overlong_buffer_cfg.log", False),
        ("+reward.reward_kwargs.max_resp_len", exp.data.max_response_length),
        ("trainer.experiment_name", exp.run_id),
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
        metric = exp.algorithm.filter_metric if exp.algorithm.filter_groups else None
        items += sampler_overrides(metric, exp.data.train_batch_size, exp.data.gen_batch_size, exp.trainer.seed).items()
    items += sorted(exp.engine.items())
    return items


def verl_environment(run: RunFolder, exp: Experiment, metrics_path: Path | None = None) -> dict[str, str]:
    """Environment of the verl driver: where its `file` logger writes, and for CPU runs the CPU support."""
    env = {"VERL_FILE_LOGGER_PATH": str(metrics_path or run.metrics)}
    if "tensorboard" in exp.trainer.loggers:
        env["TENSORBOARD_DIR"] = str(run.tensorboard)
    if exp.trainer.device == "cpu":
        env.update(cpu_environment())
    return env


def command_line(overrides: list[str]) -> str:
    """One shell line: ``python -m verl.trainer.main_ppo`` followed by the overrides, shell-quoted."""
    return " ".join(shlex.quote(part) for part in (*VERL_ENTRY, *overrides))
