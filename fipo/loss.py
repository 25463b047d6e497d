"""The FIPO policy loss (PAPER.md Eq. 3-8), pure torch: per-token loss, final token mask and metrics.

Aggregation to a scalar is left to the caller (the verl plugin uses verl's own ``agg_loss`` with the global
batch info), so that there is exactly one implementation of token-mean & co. in a training run.

Per token, with A the (DAPO/GRPO) advantage and r = exp(clamp(logp - old_logp, -20, 20)):

1. M = response_mask & (r <= filter_threshold)             (ratio filter; off: M = response_mask)
2. FutureKL = sum_{k>=t} M_k gamma^(k-t) delta_k, gamma = 2^(-1/tau)   (fipo.future_kl, detached input)
3. f = clip(exp(FutureKL), 1 - f_clip_low, 1 + f_clip_high), detached
4. safety rule where A < 0 and r > safety_threshold: f = 1 (``reset``, paper) or clamp(f, 0.8, 1) (``clamp``,
   official code)
5. A~ = A * f goes into the PPO clip (clip_ratio_low, clip_ratio_high) with dual clip c for A < 0,
   exactly as verl's ``vanilla`` loss does with A.
6. optional (official code, off by default): drop every response with more than one dual-clipped token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

try:
    import numpy as np
except ImportError:  # torch alone (benchmarks/device_check.py's GPU machines): _official_host_statistics_torch
    np = None

from fipo.future_kl import discounted_reverse_cumsum
from fipo.loss_params import SAFETY_CLAMP_RANGE, SAFETY_MODES, FIPOParams, gamma_from_tau

__all__ = ["FIPOParams", "FIPOLossOutput", "NonFiniteInputError", "fipo_policy_loss", "METRIC_NAMES"]

# verl's vanilla loss clamps the log-ratio to this range before exp(); so does the official FIPO code.
LOG_RATIO_CLAMP = 20.0


class NonFiniteInputError(ValueError):
    """Raised when a log-prob or advantage on a response token is NaN or infinite."""


# Metric names: verl's names for verl's quantities (actor/pg_clipfrac, actor/ppo_kl, actor/pg_clipfrac_lower); the
# official FIPO code's names for its quantities, with its definitions (core_algos.py compute_policy_loss_future_kl
# at ee25452, see REPRODUCTION_NOTES.md "The official code's metrics and knobs"); names starting with actor/fipo_
# or actor/future_kl_ for what only this loss logs.
OFFICIAL_IS_QUANTILES = {  # name -> quantile of r over the tokens with A < 0 (neg) or A > 0 (pos), linear
    "actor/neg_is_p75": ("neg", 0.75),
    "actor/neg_is_p995": ("neg", 0.995),
    "actor/neg_is_p999": ("neg", 0.999),
    "actor/pos_is_p25": ("pos", 0.25),
    "actor/pos_is_median": ("pos", 0.5),
    "actor/pos_is_p75": ("pos", 0.75),
    "actor/pos_is_p995": ("pos", 0.995),
    "actor/pos_is_p999": ("pos", 0.999),
}
_NEG_NAMES = [k for k, (side, _) in OFFICIAL_IS_QUANTILES.items() if side == "neg"]
_POS_NAMES = [k for k, (side, _) in OFFICIAL_IS_QUANTILES.items() if side == "pos"]
_NEG_QUANTILES = [OFFICIAL_IS_QUANTILES[k][1] for k in _NEG_NAMES]
_POS_QUANTILES = [OFFICIAL_IS_QUANTILES[k][1] for k in _POS_NAMES]
# the order _official_host_statistics returns them in
_ORDER_STATISTIC_NAMES = ["actor/neg_is_max", *_NEG_NAMES, "actor/pos_is_min", *_POS_NAMES, "actor/pos_is_max"]
# The official code's tolerance when it counts influence weights at a bound.
OFFICIAL_BOUND_TOLERANCE = 1e-7
# r below this on a positive-advantage token: "extremely small IS" (official actor/pos_mini_frac).
OFFICIAL_MINI_RATIO = 1e-3

METRIC_NAMES = (
    # verl's vanilla-loss metrics, same definitions
    "actor/pg_clipfrac",  # policy (PPO) clip fraction
    "actor/ppo_kl",  # policy KL: mean of old_logp - logp
    "actor/pg_clipfrac_lower",  # dual-clip fraction
    # the official FIPO code's metrics, same definitions
    "actor/influence_weights_mean",  # final f (after clipping and the safety rule)
    "actor/influence_weights_min",
    "actor/influence_weights_max",
    "actor/influence_weights_mean_raw",  # exp(FutureKL) before clipping (saturates at float32 max)
    "actor/raw_influence_weights_min",
    "actor/raw_influence_weights_max",
    "actor/IW_overall_clip_ratio",  # upper + lower
    "actor/IW_upper_clip_ratio",  # final f >= upper bound - 1e-7
    "actor/IW_lower_clip_ratio",  # final f <= lower bound + 1e-7 (clip-high-only: every token with FutureKL <= 0)
    "actor/neg_ratio_2_3",  # share of response tokens with A < 0 and r in [2, 3)
    "actor/neg_ratio_3_4",  # ... r in [3, 4)
    "actor/neg_ratio_4_10",  # ... r in [4, c) (c = clip_ratio_c, whatever its value)
    "actor/neg_is_max",  # max of r over A < 0 tokens (0.0 if none)
    *_NEG_NAMES,
    "actor/pos_is_min",  # min of r over A > 0 tokens (0.0 if none)
    *_POS_NAMES,
    "actor/pos_is_max",
    "actor/pos_mini_frac",  # share of response tokens with A > 0 and r < 1e-3
    # this loss only
    "actor/fipo_raw_weight_above_frac",  # share of tokens whose exp(FutureKL) is above the f bounds (before safety)
    "actor/fipo_raw_weight_below_frac",  # ... below them
    "actor/future_kl_mean",
    "actor/fipo_filtered_frac",  # share of response tokens removed from Future-KL by the ratio filter
    "actor/fipo_safety_frac",  # share of response tokens hit by the safety rule
    "actor/fipo_dropped_seq_frac",  # share of responses dropped by the dual-clip rule
    "actor/fipo_kept_token_frac",  # share of response tokens left in the loss after the drop rule
)


@dataclass
class FIPOLossOutput:
    loss_mat: torch.Tensor  # (batch, length) per-token loss, to aggregate over ``loss_mask``
    loss_mask: torch.Tensor  # (batch, length) bool: response mask less dropped responses
    metrics: dict[str, float]
    influence_weights: torch.Tensor  # (batch, length) f, detached (for per-token dumps)
    future_kl: torch.Tensor  # (batch, length) FutureKL, detached
    tokens: int = 0  # response tokens in the micro-batch
    kept_tokens: int = 0  # ... left by the drop rule (= tokens when it is off)
    responses: int = 0  # responses with at least one token
    kept_responses: int = 0  # ... left by the drop rule

    def drop_rule_rescale(self, loss_agg_mode: str) -> float:
        """Factor from a mean over all response tokens (or responses) to the official code's mean over what the
        drop rule kept: total / kept. Only for an aggregate whose denominator still counts the dropped
        responses (verl's agg_loss given the trainer's global batch info); an aggregate that divides by the
        count of ``loss_mask`` already divides by the kept ones and needs no factor (fipo.verl_plugin decides).
        1.0 when nothing was dropped, or for token-sum."""
        if loss_agg_mode == "token-mean":
            kept, total = self.kept_tokens, self.tokens
        elif loss_agg_mode.startswith("seq-mean"):
            kept, total = self.kept_responses, self.responses
        else:
            return 1.0
        return total / kept if kept and kept != total else 1.0


def fipo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    params: FIPOParams = FIPOParams(),
    rollout_is_weights: torch.Tensor | None = None,
) -> FIPOLossOutput:
    """The FIPO per-token policy loss. All tensors are (batch, response_length); the mask is bool or 0/1.

    Gradients flow through ``log_prob`` via the importance ratio only; the influence weight is detached.
    Raises :class:`NonFiniteInputError` if a log-prob or advantage is NaN or infinite (padding included:
    verl pads with finite values, and a non-finite pad would poison the masked sums).
    """
    shape = log_prob.shape
    for name, t in (("old_log_prob", old_log_prob), ("advantages", advantages), ("response_mask", response_mask)):
        if t.shape != shape:
            raise ValueError(f"FIPO loss: {name} has shape {tuple(t.shape)}, log_prob has {tuple(shape)}")
    if log_prob.dim() != 2:
        raise ValueError(f"FIPO loss: tensors must be (batch, response_length), got shape {tuple(shape)}")
    mask = response_mask.to(torch.bool)
    # On CPU, boolean kernels (where, masked_fill, bool*float) cost 5-20x a float multiply in this torch build,
    # so masks are applied by multiplication and counted with count_nonzero (benchmarks/bench_future_kl.py
    # measures the loss against verl's vanilla loss).
    maskf = mask.to(torch.float32)

    log_ratio_unclamped = log_prob - old_log_prob
    log_ratio = torch.clamp(log_ratio_unclamped, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    log_ratio_d, ratio_d = log_ratio.detach().float(), ratio.detach().float()

    # Future-KL over the tokens that pass the ratio filter (Eq. 5-6).
    if params.filter_ratio:
        keep = mask & (ratio_d <= params.effective_filter_threshold)
        keepf = keep.to(torch.float32)
    else:
        keep, keepf = mask, maskf
    fkl = discounted_reverse_cumsum(log_ratio_d * keepf, gamma_from_tau(params.tau), params.chunk_size)
    raw_weight = torch.exp(fkl)  # may overflow to inf for an unfiltered runaway future: clamp() handles it
    low, high = params.f_bounds
    weight = raw_weight.clamp(min=low, max=high)

    # Safety rule for negative-advantage tokens with an excessive ratio (Eq. 7 and the text after it).
    # lerp with a 0/1 weight returns exactly one of its ends.
    negative = advantages < 0  # f > 0, so this is also the sign of A~; verl tests A
    unsafe = negative & (ratio_d > params.safety_threshold) & mask
    target = torch.ones_like(weight) if params.safety_mode == "reset" else weight.clamp(*SAFETY_CLAMP_RANGE)
    weight = torch.lerp(weight, target, unsafe.to(weight.dtype))
    weighted_adv = advantages * weight.to(advantages.dtype)  # the weight is a weight, never a gradient path

    # PPO clip with dual clip, term for term as verl's vanilla loss with A replaced by A~.
    lo, hi = 1 - params.clip_ratio_low, 1 + params.clip_ratio_high
    pg_losses1 = -weighted_adv * ratio
    pg_losses2 = -weighted_adv * torch.clamp(ratio, lo, hi)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -weighted_adv * params.clip_ratio_c
    pg_losses = torch.where(negative, torch.minimum(pg_losses3, clip_pg_losses1), clip_pg_losses1)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights

    with torch.no_grad():
        dual_clipped = (clip_pg_losses1 > pg_losses3) & negative & mask
        loss_mask, dropped_rows = mask, None
        if params.drop_multi_dual_clip:
            dropped_rows = dual_clipped.sum(dim=-1) > 1
            loss_mask = mask & ~dropped_rows.unsqueeze(-1)
        flat_mask = maskf.view(-1)
        sums = torch.stack(
            # Masked sums as dot products: no temporaries (allocation dominates at these sizes on CPU).
            [torch.dot(t.reshape(-1), flat_mask) for t in (log_ratio_d, weight, raw_weight.clamp(max=_FLOAT32_MAX), fkl)]
            # NaN/inf anywhere in the inputs makes one of these two sums non-finite.
            + [log_ratio_unclamped.detach().sum().float(), advantages.detach().sum().float()]
        )
        counts = torch.stack(
            [
                torch.count_nonzero(t)
                for t in (
                    mask,
                    keep,
                    unsafe,
                    dual_clipped,
                    (pg_losses2 > pg_losses1) & mask,
                    (raw_weight > high) & mask,
                    (raw_weight < low) & mask,
                    loss_mask,
                )
            ]
        )
        extremes = _masked_extremes(maskf, weight, raw_weight)
        dropped = _dropped_sequences(mask, dropped_rows)
        values = torch.cat((sums, counts.float(), extremes, dropped)).tolist()
    if not (math.isfinite(values[4]) and math.isfinite(values[5])):
        raise NonFiniteInputError(
            _describe_nonfinite(mask, log_prob=log_prob, old_log_prob=old_log_prob, advantages=advantages)
        )
    values += _official_host_statistics(ratio_d, weight, advantages, mask, low, high, params.clip_ratio_c)
    n_tokens, kept_tokens, n_dropped, n_rows = int(values[6]), int(values[13]), int(values[18]), int(values[19])
    return FIPOLossOutput(
        pg_losses, loss_mask, _metrics_dict(values), weight.detach(), fkl,
        tokens=n_tokens, kept_tokens=kept_tokens, responses=n_rows if dropped_rows is not None else 0,
        kept_responses=n_rows - n_dropped if dropped_rows is not None else 0,
    )  # fmt: skip




def _official_host_statistics(ratio: torch.Tensor, weight: torch.Tensor, advantages: torch.Tensor,
                               mask: torch.Tensor, low: float, high: float, c: float) -> list[float]:
    """The official code's counts and IS diagnostics, on the host in numpy: [final f at the upper bound, at the
    lower bound (tolerance 1e-7); A < 0 and r in [2, 3), [3, 4), [4, c); A > 0 and r < 1e-3; neg max, neg
    quantiles..., pos min, pos quantiles..., pos max] (torch.quantile's linear interpolation; 0.0 for a side
    without tokens, as there). One sort per side gives the quantiles and, by searchsorted, the bin counts.

    Host-side whatever the device: a (batch, length) copy is cheap next to a training step, and torch 2.13's CPU
    sort and boolean kernels are several times slower than numpy's at these sizes (a 32k-float sort: 1.9 ms vs
    0.05 ms). See benchmarks/bench_future_kl.py for what these diagnostics cost. Without numpy, the same numbers
    in torch (_official_host_statistics_torch)."""
    if np is None:
        return _official_host_statistics_torch(ratio, weight, advantages, mask, low, high, c)
    r, w = ratio.cpu().numpy(), weight.detach().float().cpu().numpy()
    on, a = mask.cpu().numpy(), advantages.detach().float().cpu().numpy()
    at_bounds = [np.count_nonzero((w >= high - OFFICIAL_BOUND_TOLERANCE) & on),
                 np.count_nonzero((w <= low + OFFICIAL_BOUND_TOLERANCE) & on)]
    stats, counts = [], []
    for subset_mask, quantiles, ends in (((a < 0) & on, _NEG_QUANTILES, ("max",)),
                                         ((a > 0) & on, _POS_QUANTILES, ("min", "max"))):
        ordered = np.sort(r[subset_mask])
        n = ordered.size
        if ends == ("max",):  # values < b are the first searchsorted(b) of the sorted ones
            counts += np.diff(np.searchsorted(ordered, [2.0, 3.0, 4.0, max(c, 4.0)])).tolist()
        else:
            counts.append(int(np.searchsorted(ordered, OFFICIAL_MINI_RATIO)))
        if n == 0:
            stats += [0.0] * (len(ends) + len(quantiles))
            continue
        # torch.quantile(x, q, interpolation="linear"): position h = (n - 1) q between its two neighbours
        h = np.asarray(quantiles) * (n - 1)
        lo = np.floor(h).astype(np.int64)
        q = ordered[lo] + (h - lo) * (ordered[np.minimum(lo + 1, n - 1)] - ordered[lo])
        first, last = float(ordered[0]), float(ordered[-1])
        stats += [last, *q.tolist()] if ends == ("max",) else [first, *q.tolist(), last]
    return [float(x) for x in at_bounds + counts] + stats


def _official_host_statistics_torch(ratio: torch.Tensor, weight: torch.Tensor, advantages: torch.Tensor,
                                     mask: torch.Tensor, low: float, high: float, c: float) -> list[float]:
    """_official_host_statistics where numpy is not installed (benchmarks/device_check.py runs the loss on GPU
    machines with torch alone), in the same arithmetic: float32 comparisons with the bounds, float64 bin edges
    and interpolation, so the same numbers (tests/test_device_check.py compares the two). Slower on the host,
    which is why training keeps numpy's."""
    r, w = ratio.detach().float().cpu(), weight.detach().float().cpu()
    on, a = mask.cpu(), advantages.detach().float().cpu()
    at_bounds = [torch.count_nonzero((w >= high - OFFICIAL_BOUND_TOLERANCE) & on).item(),
                 torch.count_nonzero((w <= low + OFFICIAL_BOUND_TOLERANCE) & on).item()]
    stats, counts = [], []
    for subset_mask, quantiles, ends in (((a < 0) & on, _NEG_QUANTILES, ("max",)),
                                         ((a > 0) & on, _POS_QUANTILES, ("min", "max"))):
        ordered = torch.sort(r[subset_mask]).values
        n = ordered.numel()
        if ends == ("max",):  # float64 edges, as numpy's searchsorted compares
            edges = torch.tensor([2.0, 3.0, 4.0, max(c, 4.0)], dtype=torch.float64)
            counts += torch.diff(torch.searchsorted(ordered, edges)).tolist()
        else:
            counts.append(int(torch.searchsorted(ordered, torch.tensor([OFFICIAL_MINI_RATIO], dtype=torch.float64))))
        if n == 0:
            stats += [0.0] * (len(ends) + len(quantiles))
            continue
        h = torch.tensor(quantiles, dtype=torch.float64) * (n - 1)
        lo = h.floor().long()
        q = ordered[lo] + (h - lo) * (ordered[(lo + 1).clamp(max=n - 1)] - ordered[lo])
        first, last = float(ordered[0]), float(ordered[-1])
        stats += [last, *q.tolist()] if ends == ("max",) else [first, *q.tolist(), last]
    return [float(x) for x in at_bounds + counts] + stats


_FLOAT32_MAX = torch.finfo(torch.float32).max


def _masked_extremes(maskf: torch.Tensor, weight: torch.Tensor, raw_weight: torch.Tensor) -> torch.Tensor:
    """[max f, max exp(FKL), min f, min exp(FKL)] over response tokens, without boolean selects.

    Both are >= 0, so padding multiplied to 0 never wins a max; padding pushed up by float32's max never wins
    a min. A runaway exp(FutureKL) is reported as float32's max, not inf.
    """
    flat = maskf.view(-1)
    if flat.numel() == 0:  # no positions at all (batch or response length 0): as if every token were padding
        return torch.tensor([0.0, 0.0, _FLOAT32_MAX, _FLOAT32_MAX], device=maskf.device)
    pad_push = (1 - flat) * _FLOAT32_MAX
    pair = (weight.reshape(-1), raw_weight.reshape(-1).clamp(max=_FLOAT32_MAX))
    return torch.stack([(t * flat).amax() for t in pair] + [(t + pad_push).amin() for t in pair])


def _dropped_sequences(mask: torch.Tensor, dropped_rows: torch.Tensor | None) -> torch.Tensor:
    """[responses dropped by the dual-clip rule, responses with at least one token]."""
    if dropped_rows is None:
        return torch.zeros(2, device=mask.device)
    has_tokens = mask.any(dim=-1)
    return torch.stack((torch.count_nonzero(dropped_rows & has_tokens), torch.count_nonzero(has_tokens))).float()


def _metrics_dict(values: list[float]) -> dict[str, float]:
    """Turn the single host transfer into verl-style metrics. Means use verl's convention:
    sum / (count + 1e-8), so an empty micro-batch gives 0 rather than NaN."""
    (lr_s, w_s, raw_s, fkl_s, _probe_lr, _probe_adv,
     n, kept, unsafe, dual, clipped, raw_above, raw_below, n_loss,
     w_max, raw_max, w_min, raw_min, n_dropped, n_rows,
     at_upper, at_lower, neg_2_3, neg_3_4, neg_4_c, pos_mini, *ratio_stats) = values  # fmt: skip
    denom = n + 1e-8
    metrics = {
        "actor/pg_clipfrac": clipped / denom,
        "actor/ppo_kl": -lr_s / denom,
        "actor/pg_clipfrac_lower": dual / denom,
        "actor/influence_weights_mean": w_s / denom,
        "actor/influence_weights_min": w_min,
        "actor/influence_weights_max": w_max,
        "actor/influence_weights_mean_raw": raw_s / denom,
        "actor/raw_influence_weights_min": raw_min,
        "actor/raw_influence_weights_max": raw_max,
        "actor/IW_overall_clip_ratio": (at_upper + at_lower) / denom,
        "actor/IW_upper_clip_ratio": at_upper / denom,
        "actor/IW_lower_clip_ratio": at_lower / denom,
        "actor/neg_ratio_2_3": neg_2_3 / denom,
        "actor/neg_ratio_3_4": neg_3_4 / denom,
        "actor/neg_ratio_4_10": neg_4_c / denom,
        "actor/pos_mini_frac": pos_mini / denom,
        "actor/fipo_raw_weight_above_frac": raw_above / denom,
        "actor/fipo_raw_weight_below_frac": raw_below / denom,
        "actor/future_kl_mean": fkl_s / denom,
        "actor/fipo_filtered_frac": (n - kept) / denom,
        "actor/fipo_safety_frac": unsafe / denom,
        "actor/fipo_dropped_seq_frac": n_dropped / (n_rows + 1e-8),
        "actor/fipo_kept_token_frac": n_loss / denom if n else 1.0,
    }
    metrics.update(zip(_ORDER_STATISTIC_NAMES, ratio_stats))
    if n == 0:
        # No response token in this micro-batch: report the neutral weight, not the padding sentinels (the
        # official code would fail on .min() of an empty tensor here).
        for key in ("influence_weights", "raw_influence_weights"):
            metrics[f"actor/{key}_min"] = metrics[f"actor/{key}_max"] = 1.0
    return {name: metrics[name] for name in METRIC_NAMES}


def _describe_nonfinite(mask: torch.Tensor, **tensors: torch.Tensor) -> str:
    """The error path only: count NaN/inf per input, on response tokens and on padding."""
    parts = []
    for name, t in tensors.items():
        bad = ~torch.isfinite(t)
        on_tokens, on_padding = int((bad & mask).sum()), int((bad & ~mask).sum())
        if on_tokens or on_padding:
            parts.append(f"{name}: {on_tokens} response tokens, {on_padding} padding positions")
    return "FIPO loss: NaN/inf in the inputs (" + "; ".join(parts) + "); refusing to compute the loss"
