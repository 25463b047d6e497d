"""Reference implementations that the tests, the benchmarks and ``benchmarks/device_check.py`` compare against.

Kept apart from the production code so that each reference exists once, importable without pytest:

* :func:`future_kl_magnitude`: the Future-KL oracle applied to ``|delta|``, the scale each output is a sum of
  (for tolerances relative to the terms summed, not to a sum that may cancel).
* :func:`paper_loss_float64`: PAPER.md Eq. 3-8 written out directly in float64, with the O(L^2) Future-KL
  oracle (or any float64 Future-KL passed in, e.g. Listing 1 for lengths where L x L matrices do not fit).
* :func:`vanilla_ppo_loss`: verl's vanilla PPO policy loss (clip, dual clip, token-mean) restated in plain
  torch from its definition, so that the loss can be timed against it where verl is not installed (a GPU
  machine with torch alone). ``tests/test_references.py`` checks it against verl's own function.
"""

from __future__ import annotations

from typing import Callable

import torch

from fipo.future_kl import future_kl_reference
from fipo.loss import FIPOParams

__all__ = ["future_kl_magnitude", "paper_loss_float64", "token_mean", "vanilla_ppo_loss"]

FutureKLFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]

# Written here as the paper, verl and the official code state them, not imported from fipo.loss: a reference
# that shared the production constants would agree with a wrong one.
LOG_RATIO_CLAMP = 20.0  # |logp - old_logp| is clamped to this before exp() (verl, official code)
SAFETY_CLAMP = (0.8, 1.0)  # the official code's clamp of f under the safety rule (safety_mode="clamp")


def future_kl_magnitude(
    delta: torch.Tensor, mask: torch.Tensor | None, tau: float, fkl: FutureKLFn = future_kl_reference
) -> torch.Tensor:
    """``fkl`` applied to |delta| in float64: sum_{k>=t} M_k gamma^(k-t) |delta_k|, for relative tolerances."""
    return fkl(delta.detach().double().abs(), mask, tau)


def paper_loss_float64(
    old: torch.Tensor,
    log_prob: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    p: FIPOParams,
    fkl_fn: FutureKLFn = future_kl_reference,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PAPER.md Eq. 3-8 in float64: (per-token loss, influence weight f, FutureKL).

    ``log_prob`` may require grad: the loss is differentiable through the ratio only, f being a constant
    (stop-gradient, as in the paper and verl's use of it), so autograd on the result gives the reference gradient.
    """
    old, log_prob, adv = old.double(), log_prob.double(), adv.double()
    mask = mask.to(torch.bool)
    delta = (log_prob - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = delta.exp()
    r = ratio.detach()
    m = mask & (r <= p.effective_filter_threshold) if p.filter_ratio else mask
    fkl = fkl_fn(delta.detach(), m, p.tau)
    f = fkl.exp().clamp(1 - p.f_clip_low, 1 + p.f_clip_high)
    unsafe = (adv < 0) & (r > p.safety_threshold)
    f = torch.where(unsafe, torch.ones_like(f) if p.safety_mode == "reset" else f.clamp(*SAFETY_CLAMP), f)
    a = adv * f
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - p.clip_ratio_low, 1 + p.clip_ratio_high) * a)
    dual = torch.maximum(surrogate, p.clip_ratio_c * a)  # negative advantages: bounded below by c * A~
    objective = torch.where(adv < 0, dual, surrogate)
    return -objective, f, fkl


def token_mean(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked sum over the micro-batch's token count (verl's token-mean with one rank and no global count).
    An empty mask gives 0: verl divides by the global batch's token count, which a real step never has at 0."""
    maskf = mask.to(loss_mat.dtype)
    return (loss_mat * maskf).sum() / maskf.sum().clamp(min=1)


def vanilla_ppo_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO clipped objective with dual clip, token-mean aggregated, and its three metrics on the host.

    With r = exp(clamp(logp - old_logp, +-20)) and A the advantage, per token:
      loss = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))        (clipped surrogate)
      A < 0: loss = min(loss, -A c)                                   (dual clip: at most c |A|)
    Metrics: the share of tokens where the clip is active (actor/pg_clipfrac), the mean of old_logp - logp
    (actor/ppo_kl), the share of A < 0 tokens where the dual clip is active (actor/pg_clipfrac_lower), each over
    the response tokens and each read to the host as its own scalar, as verl's vanilla loss reads them.
    """
    mask = response_mask.to(log_prob.dtype)
    count = mask.sum() + 1e-8
    log_ratio = (log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    surrogate = torch.maximum(unclipped, clipped)
    dual_bound = -advantages * clip_ratio_c
    negative = advantages < 0
    per_token = torch.where(negative, torch.minimum(surrogate, dual_bound), surrogate)
    loss = (per_token * mask).sum() / mask.sum()
    with torch.no_grad():
        clipfrac = ((clipped > unclipped).to(mask.dtype) * mask).sum() / count
        ppo_kl = (-log_ratio * mask).sum() / count
        clipfrac_lower = ((surrogate > dual_bound) & negative).to(mask.dtype).mul(mask).sum() / count
    metrics = {
        "actor/pg_clipfrac": clipfrac.item(),
        "actor/ppo_kl": ppo_kl.item(),
        "actor/pg_clipfrac_lower": clipfrac_lower.item(),
    }
    return loss, metrics
