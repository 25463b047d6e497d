"""Which of verl's config keys the experiment spec owns, and through which spec key.

The workbench renders every run's verl command from its spec (fipo.verl_command). A key it renders must not be
set a second time behind the spec's back: an ``engine:`` entry or an ``--override`` that did so reached verl after
the checked value, past every rule of the spec (the on-policy trap, save_freq >= 1, ranges) and past the run's
fingerprint. So every rendered key is one of:

- :data:`SPEC_KEYS`: written value for value from one spec key. An override of it is read as that spec key
  (:func:`fipo.spec.with_overrides`) and checked like it; an ``engine:`` entry is refused, naming it.
- :data:`DERIVED`: computed from spec keys (a dataset's file, the seed of three generators, the FIPO knobs'
  spelling): refused, naming the spec key to set instead.
- :data:`FIXED`: the workbench's own (where the run lies, how it resumes, the CPU sampler): refused.

tests/test_verl_command.py checks that every key rendered for every experiment of every preset is listed here.
"""

from __future__ import annotations

POLICY_LOSS = "actor_rollout_ref.actor.policy_loss"
ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
OVERLONG = "+reward.reward_kwargs.overlong_buffer_cfg"

# verl key -> spec key, in the order the command is rendered
SPEC_KEYS: dict[str, str] = {
    # algorithm: GRPO advantages, DAPO dynamic sampling
    "algorithm.adv_estimator": "algorithm.adv_estimator",
    "algorithm.norm_adv_by_std_in_grpo": "algorithm.norm_adv_by_std",
    "algorithm.filter_groups.enable": "algorithm.filter_groups",
    "algorithm.filter_groups.metric": "algorithm.filter_metric",
    "algorithm.filter_groups.max_num_gen_batches": "algorithm.max_num_gen_batches",
    # data
    "data.max_prompt_length": "data.max_prompt_length",
    "data.max_response_length": "data.max_response_length",
    "data.train_batch_size": "data.train_batch_size",
    "data.gen_batch_size": "data.gen_batch_size",
    # actor
    f"{ACTOR}.optim.lr": "policy.lr",
    f"{ACTOR}.optim.lr_warmup_steps": "policy.lr_warmup_steps",
    f"{ACTOR}.optim.lr_scheduler_type": "policy.lr_scheduler",
    f"{ACTOR}.optim.weight_decay": "policy.weight_decay",
    f"{ACTOR}.optim.clip_grad": "policy.grad_clip",
    f"{ACTOR}.ppo_mini_batch_size": "policy.ppo_mini_batch_size",
    f"{ACTOR}.ppo_epochs": "policy.ppo_epochs",
    f"{ACTOR}.clip_ratio_low": "policy.clip_ratio_low",
    f"{ACTOR}.clip_ratio_high": "policy.clip_ratio_high",
    f"{ACTOR}.clip_ratio_c": "policy.clip_ratio_c",
    f"{ACTOR}.loss_agg_mode": "policy.loss_agg_mode",
    f"{ACTOR}.kl_loss_coef": "policy.kl_loss_coef",
    f"{ACTOR}.entropy_coeff": "policy.entropy_coeff",
    f"{POLICY_LOSS}.loss_mode": "policy.loss",
    # rollout (training samples) and validation sampling
    f"{ROLLOUT}.name": "rollout.engine",
    f"{ROLLOUT}.n": "rollout.n",
    f"{ROLLOUT}.temperature": "rollout.temperature",
    f"{ROLLOUT}.top_p": "rollout.top_p",
    f"{ROLLOUT}.val_kwargs.n": "validation.n",
    f"{ROLLOUT}.val_kwargs.temperature": "validation.temperature",
    f"{ROLLOUT}.val_kwargs.top_p": "validation.top_p",
    # reward: rule-based math_dapo scoring with DAPO's overlong shaping
    "reward.reward_manager.name": "reward.manager",
    f"{OVERLONG}.enable": "reward.overlong_buffer",
    f"{OVERLONG}.len": "reward.overlong_buffer_len",
    f"{OVERLONG}.penalty_factor": "reward.overlong_penalty",
    # trainer
    "trainer.logger": "trainer.loggers",
    "trainer.project_name": "trainer.project_name",
    "trainer.nnodes": "trainer.nnodes",
    "trainer.n_gpus_per_node": "trainer.n_gpus_per_node",
    "trainer.device": "trainer.device",
    "trainer.total_training_steps": "trainer.total_training_steps",
    "trainer.test_freq": "validation.test_freq",
    "trainer.val_before_train": "validation.before_train",
    "trainer.save_freq": "trainer.save_freq",
}

# The FIPO knobs on the plugin's PolicyLossConfig (fipo.spec.Experiment.fipo_loss_knobs) -> their spec key
FIPO_KNOBS = {
    "tau": "fipo.tau",
    "f_clip_low": "fipo.f_clip_range",
    "f_clip_high": "fipo.f_clip_range",
    "filter_ratio": "fipo.filter_ratio",
    "filter_threshold": "fipo.filter_threshold",
    "safety_threshold": "fipo.safety_threshold",
    "safety_mode": "fipo.safety_mode",
    "drop_multi_dual_clip": "fipo.drop_multi_dual_clip",
    "chunk_size": "fipo.chunk_size",
    "dump_path": "fipo.dump_every",
    "dump_every": "fipo.dump_every",
}

# verl key -> the spec key it is computed from
DERIVED: dict[str, str] = {
    "data.train_files": "data.train",
    "data.val_files": "data.val",
    "data.seed": "trainer.seed",
    f"{ACTOR}.data_loader_seed": "trainer.seed",
    f"{ROLLOUT}.seed": "trainer.seed",
    "actor_rollout_ref.model.path": "model.path",
    "+actor_rollout_ref.model.override_config.max_position_embeddings": "model.max_position_embeddings",
    "+actor_rollout_ref.model.override_config.rope_theta": "model.rope_theta",
    f"{ACTOR}.use_kl_loss": "policy.kl_loss_coef",
    "+reward.reward_kwargs.max_resp_len": "data.max_response_length",
    "trainer.rollout_data_dir": "trainer.rollout_dump",
    f"{POLICY_LOSS}._target_": "policy.loss",
    **{f"+{POLICY_LOSS}.{knob}": key for knob, key in FIPO_KNOBS.items()},
}

# The workbench's own keys: what no spec setting should change
FIXED = (
    "algorithm.use_kl_in_reward",  # DAPO and FIPO have no KL in the reward (policy.kl_loss_coef is the loss's)
    "data.prompt_key",  # the column fipo.data writes
    "data.truncation",
    f"{ROLLOUT}.val_kwargs.do_sample",  # validation samples, as AIME practice does
    f"{OVERLONG}.log",
    "trainer.experiment_name",  # the run's name: <preset>-<run>
    "trainer.default_local_dir",  # the run folder's checkpoints
    "trainer.resume_mode",  # the run folder decides where an attempt resumes (fipo.run_folder)
    "trainer.resume_from_path",
    "+ray_kwargs.ray_init.address",  # the Ray cluster: `fipo train --ray-address`
    "trainer.v1.sampler.custom_sampler.path",  # the CPU support's sampler (fipo.integrations.cpu_run)
    "trainer.v1.sampler.custom_sampler.name",
    "++trainer.v1.sampler.sampler_kwargs",
)


def bare(key: str) -> str:
    """A Hydra key without its ``+``/``++``/``~`` prefix: ``+a.b`` and ``a.b`` are one key of verl's config."""
    return key.lstrip("+~")


_SPEC = {bare(k): v for k, v in SPEC_KEYS.items()}
_DERIVED = {bare(k): v for k, v in DERIVED.items()}
_FIXED = {bare(k) for k in FIXED}


def spec_key(verl_key: str) -> str | None:
    """The spec key an override of ``verl_key`` stands for, None when the spec does not write it one to one."""
    return _SPEC.get(bare(verl_key))


def refusal(verl_key: str) -> str | None:
    """Why ``verl_key`` may not be set by an override or ``engine:`` entry (a key the spec computes or the
    workbench fixes), None when it may."""
    key = bare(verl_key)
    if key in _DERIVED:
        return f"is computed from the spec's {_DERIVED[key]}: set that instead"
    if key in _FIXED:
        return "is set by the workbench itself (where the run lies, how it resumes, its name or sampler)"
    for prefix in [*_SPEC, *_DERIVED, *_FIXED]:  # a parent node would replace the keys below it wholesale
        if prefix.startswith(key + "."):
            return f"holds {prefix}, which the spec writes: set the spec's keys one by one instead"
    return None
