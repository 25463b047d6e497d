"""The spec's value rules: ranges, choices, and the rules that tie sections together (the on-policy FIPO trap, the
frequencies a run needs, the FIPO knobs checked once more by the loss's own rules)."""

from __future__ import annotations

from fipo.data import DATASETS
from fipo.loss_params import FIPOParams
from fipo.spec.schema import Experiment, SpecError, require
from fipo.spec.vocab import CHOICES, LOGGERS


def validate_values(exp: Experiment, where: str, origins=None) -> None:
    """Every value rule of ``exp``; ``origins`` (fipo.spec.loader.Origins), where known, says which layer wrote a
    bad value."""

    def need(ok: bool, key: str, message: str, *related: str) -> None:
        """``key`` is what the message is about; ``related`` the other keys of a cross-key rule."""
        require(ok, f"{where}: {key}", message, origins.note(key, *related) if origins else "")

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
        refuse_on_policy_fipo(exp, need)
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


def refuse_on_policy_fipo(exp: Experiment, need) -> None:
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
