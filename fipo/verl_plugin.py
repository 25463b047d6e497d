"""The FIPO loss as a verl plugin: registered through the ``verl.plugins`` entry point (pyproject.toml), so a
plain ``import verl`` in any process — the driver and every Ray worker — registers it. Nothing in verl is
copied or patched: this module only uses verl's public registry, its config base class, ``agg_loss`` and
``masked_sum``.

Select it with::

    actor_rollout_ref.actor.policy_loss.loss_mode=fipo
    actor_rollout_ref.actor.policy_loss._target_=fipo.verl_plugin.FIPOPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.tau=32 ...

``future_kl`` is registered as an alias, for configs written for the official code. The PPO clip range and
the dual-clip constant come from verl's own actor keys (clip_ratio_low/high, clip_ratio_c), as for vanilla.

verl loads entry points inside a try/except that only logs at debug level, so this module must import cleanly
on any machine (CPU, no vLLM): it imports only torch, the core loss and verl's CPU-safe modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
from verl.utils.torch_functional import masked_sum
from verl.workers.config import PolicyLossConfig

from fipo.integrations import verl_micro_batch
from fipo.loss import FIPOLossOutput, FIPOParams, fipo_policy_loss
from fipo.token_dump import TokenDumper

__all__ = [
    "FIPOPolicyLossConfig",
    "compute_policy_loss_fipo",
    "LOSS_NAMES",
    "params_from_actor_config",
    "standalone_actor_config",
]

LOSS_NAMES = ("fipo", "future_kl")
_DEFAULTS = FIPOParams()


@dataclass
class FIPOPolicyLossConfig(PolicyLossConfig):
    """verl's PolicyLossConfig plus the FIPO knobs (see fipo.loss.FIPOParams; defaults are the 32B run's).

    ``dump_*``: optional per-token dumps (Δlogp, Future-KL, f, advantage) for analysis, off by default.
    """

    tau: float = _DEFAULTS.tau
    f_clip_low: float = _DEFAULTS.f_clip_low
    f_clip_high: float = _DEFAULTS.f_clip_high
    filter_ratio: bool = _DEFAULTS.filter_ratio
    filter_threshold: Optional[float] = _DEFAULTS.filter_threshold
    safety_threshold: float = _DEFAULTS.safety_threshold
    safety_mode: str = _DEFAULTS.safety_mode
    drop_multi_dual_clip: bool = _DEFAULTS.drop_multi_dual_clip
    chunk_size: int = _DEFAULTS.chunk_size
    dump_path: Optional[str] = None  # JSONL file; None disables dumping
    dump_every: int = 0  # dump on every N-th loss call of a worker (0: off)
    dump_responses: int = 2  # responses per dump
    dump_max_tokens: int = 4096  # tokens per response kept in a dump
    dump_max_bytes: int = 64 * 2**20  # the file never grows past this

    def __post_init__(self):
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()
        # Fail at config instantiation (driver start-up), not at the first loss call hours later.
        self.to_params(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=10.0)

    def to_params(self, *, clip_ratio_low: float, clip_ratio_high: float, clip_ratio_c: float) -> FIPOParams:
        knobs = {f.name: getattr(self, f.name) for f in dataclasses.fields(FIPOParams) if hasattr(self, f.name)}
        knobs.update(clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c)
        return FIPOParams(**knobs)


def params_from_actor_config(config: Any) -> FIPOParams:
    """FIPOParams from verl's ActorConfig, reading the clip keys exactly as verl's vanilla loss does."""
    policy_loss = config.policy_loss
    if not isinstance(policy_loss, FIPOPolicyLossConfig):
        raise TypeError(
            f"loss_mode={policy_loss.get('loss_mode')!r} needs the FIPO knobs: set "
            "actor_rollout_ref.actor.policy_loss._target_=fipo.verl_plugin.FIPOPolicyLossConfig "
            f"(got {type(policy_loss).__module__}.{type(policy_loss).__name__})"
        )
    clip_ratio = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio
    return policy_loss.to_params(clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=config.get("clip_ratio_c", 3.0))


def standalone_actor_config(
    params: FIPOParams = _DEFAULTS, policy_loss: Optional[PolicyLossConfig] = None, loss_agg_mode: str = "token-mean"
):
    """A verl ActorConfig with ``params``' PPO clip values, for calling verl's registered policy losses outside a
    trainer (benchmarks, tests). ``policy_loss`` defaults to verl's own (loss_mode vanilla)."""
    from verl.workers.config import ActorConfig

    extra = {} if policy_loss is None else {"policy_loss": policy_loss}
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=params.clip_ratio_low,
        clip_ratio_high=params.clip_ratio_high,
        clip_ratio_c=params.clip_ratio_c,
        loss_agg_mode=loss_agg_mode,
        **extra,
    )


_dumpers: dict[str, TokenDumper] = {}


def _dumper(cfg: FIPOPolicyLossConfig) -> TokenDumper | None:
    if not cfg.dump_path or cfg.dump_every <= 0:
        return None
    if cfg.dump_path not in _dumpers:
        _dumpers[cfg.dump_path] = TokenDumper(
            cfg.dump_path, cfg.dump_every, cfg.dump_responses, cfg.dump_max_tokens, cfg.dump_max_bytes
        )
    return _dumpers[cfg.dump_path]


def compute_policy_loss_fipo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """verl's policy-loss calling convention around :func:`fipo.loss.fipo_policy_loss`."""
    if config is None:
        raise ValueError("the FIPO policy loss needs verl's ActorConfig (config=...)")
    out = fipo_policy_loss(
        old_log_prob, log_prob, advantages, response_mask, params_from_actor_config(config), rollout_is_weights
    )
    loss = _aggregate(out, loss_agg_mode, config.global_batch_info)
    dumper = _dumper(config.policy_loss)
    if dumper is not None:
        dumper.maybe_dump(
            context=lambda: verl_micro_batch.find(*log_prob.shape, start_depth=3),
            log_ratio=(log_prob - old_log_prob).detach(),
            future_kl=out.future_kl,
            influence_weights=out.influence_weights,
            advantages=advantages,
            mask=out.loss_mask,
        )
    return loss, out.metrics


# agg_loss's key for the denominator of each mode that has one; without it agg_loss counts the loss mask itself.
_DENOMINATOR_KEYS = {
    "token-mean": "batch_num_tokens",
    "seq-mean-token-sum": "global_batch_size",
    "seq-mean-token-sum-norm": "global_batch_size",
    "seq-mean-token-mean": "global_batch_size",
}


def _denominator_counts_dropped(loss_agg_mode: str, global_batch_info: dict) -> bool:
    """Whether verl 0.9.1's agg_loss divides by a count that still includes the responses the drop rule removed.

    With the trainer's global batch info it divides by the mini-batch's token (or response) count, taken before
    the loss ran, so the dropped responses are in it. Without it (the standalone actor config, benchmarks,
    another trainer) it divides by the count of ``loss_mask``, which the drop rule has already cleared: the
    denominator is already the kept count, and rescaling it again would divide by the kept count twice."""
    key = _DENOMINATOR_KEYS.get(loss_agg_mode)
    return key is not None and global_batch_info.get(key) is not None


def _aggregate(out: FIPOLossOutput, loss_agg_mode: str, global_batch_info: dict) -> torch.Tensor:
    """verl's agg_loss over the kept tokens, normalised by what the drop rule kept as the official code does."""
    if out.kept_tokens == 0:
        # Nothing left (an empty micro-batch, or every response dropped): it adds nothing to the loss, as in the
        # official code. agg_loss would divide 0 by a local count of 0 here, and a NaN loss poisons every
        # gradient of the step. The masked sum is that zero, still attached to the graph.
        return masked_sum(out.loss_mat, out.loss_mask)
    loss = agg_loss(loss_mat=out.loss_mat, loss_mask=out.loss_mask, loss_agg_mode=loss_agg_mode, **global_batch_info)
    if _denominator_counts_dropped(loss_agg_mode, global_batch_info):
        loss = loss * out.drop_rule_rescale(loss_agg_mode)
    return loss


for _name in LOSS_NAMES:
    register_policy_loss(_name)(compute_policy_loss_fipo)
