"""The loss and its metrics against a float64 restatement of the official FIPO code's definitions
(qwenpilot/FIPO at ee25452, verl/trainer/ppo/core_algos.py compute_policy_loss_future_kl; read in the public fork
vukrosic/FIPO). The restatement below is written from those definitions, not copied: where the official code
and the paper differ (safety clamp to [0.8, 1], the ratio filter always on at c, the multi-dual-clip drop always
on), the official behaviour is what is restated, and this loss is configured to match it.
"""

from __future__ import annotations

import math

import pytest
import torch

from fipo.future_kl import future_kl_reference
from fipo.loss import METRIC_NAMES, FIPOParams, fipo_policy_loss
from fipo.verl_plugin import FIPOPolicyLossConfig, compute_policy_loss_fipo, standalone_actor_config

# The official launcher for 32B: clip high only ([1, 1.2]), safety 10, c = 10; and a 7B-like [0.8, 1.2] range.
OFFICIAL_SETTINGS = [
    dict(tau=32.0, f_clip_low=0.0, f_clip_high=0.2, clip_ratio_c=10.0, safety_threshold=10.0),
    dict(tau=8.0, f_clip_low=0.2, f_clip_high=0.2, clip_ratio_c=3.0, safety_threshold=2.0),
]


def official_float64(old, log_prob, adv, mask, *, tau, f_clip_low, f_clip_high, clip_ratio_c, safety_threshold,
                     clip_low=0.2, clip_high=0.28):  # fmt: skip
    """The official loss (token-mean over the kept tokens of one micro-batch) and its metrics, in float64."""
    old, log_prob, adv = old.double(), log_prob.double(), adv.double()
    on = mask.bool()
    delta = (log_prob - old).clamp(-20, 20)
    ratio = delta.exp()
    # Future-KL over tokens with delta <= ln c, current token included, no window, discount 2^(-1/tau).
    fkl = future_kl_reference(delta, on & (delta <= math.log(clip_ratio_c)), tau)
    lower, upper = 1.0 - f_clip_low, 1.0 + f_clip_high
    raw = fkl.exp()
    f = raw.clamp(lower, upper)
    unsafe = (adv < 0) & (ratio > safety_threshold)
    f = torch.where(unsafe, f.clamp(0.8, 1.0), f)
    a = adv * f
    l1 = -a * ratio
    l2 = -a * ratio.clamp(1 - clip_low, 1 + clip_high)
    clipped = torch.maximum(l1, l2)
    l3 = -a * clip_ratio_c
    per_token = torch.where(a < 0, torch.minimum(l3, clipped), clipped)
    dual = (adv < 0) & (clipped > l3) & on
    kept = on & ~(dual.sum(-1, keepdim=True) > 1)

    def share(x):
        return (x & on).double().sum() / on.sum()

    neg, pos = ratio[(adv < 0) & on], ratio[(adv > 0) & on]

    def quantile(x, q):
        return torch.quantile(x, q).item() if x.numel() else 0.0

    metrics = {
        "actor/pg_clipfrac": share(l2 > l1),
        "actor/ppo_kl": (-delta)[on].mean(),
        "actor/pg_clipfrac_lower": share(dual),
        "actor/influence_weights_mean": f[on].mean(),
        "actor/influence_weights_min": f[on].min(),
        "actor/influence_weights_max": f[on].max(),
        "actor/influence_weights_mean_raw": raw[on].mean(),
        "actor/raw_influence_weights_min": raw[on].min(),
        "actor/raw_influence_weights_max": raw[on].max(),
        "actor/IW_upper_clip_ratio": share(f >= upper - 1e-7),
        "actor/IW_lower_clip_ratio": share(f <= lower + 1e-7),
        "actor/neg_ratio_2_3": share((ratio >= 2) & (ratio < 3) & (adv < 0)),
        "actor/neg_ratio_3_4": share((ratio >= 3) & (ratio < 4) & (adv < 0)),
        "actor/neg_ratio_4_10": share((ratio >= 4) & (ratio < clip_ratio_c) & (adv < 0)),
        "actor/neg_is_max": neg.max().item() if neg.numel() else 0.0,
        "actor/neg_is_p75": quantile(neg, 0.75),
        "actor/neg_is_p995": quantile(neg, 0.995),
        "actor/neg_is_p999": quantile(neg, 0.999),
        "actor/pos_is_min": pos.min().item() if pos.numel() else 0.0,
        "actor/pos_is_p25": quantile(pos, 0.25),
        "actor/pos_is_median": quantile(pos, 0.5),
        "actor/pos_is_p75": quantile(pos, 0.75),
        "actor/pos_is_p995": quantile(pos, 0.995),
        "actor/pos_is_p999": quantile(pos, 0.999),
        "actor/pos_is_max": pos.max().item() if pos.numel() else 0.0,
        "actor/pos_mini_frac": share((ratio < 1e-3) & (adv > 0)),
    }
    metrics["actor/IW_overall_clip_ratio"] = metrics["actor/IW_upper_clip_ratio"] + metrics["actor/IW_lower_clip_ratio"]
    loss = (per_token * kept).sum() / kept.sum().clamp(min=1)
    return loss, {k: float(v) for k, v in metrics.items()}, kept


def batch(seed, rows=8, length=48, shift=0.9):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, length, generator=gen) * 4
    log_prob = old + torch.randn(rows, length, generator=gen) * shift
    log_prob[0, 5] = old[0, 5] - 9.0  # r ~ 1e-4: a "mini" ratio wherever A > 0
    adv = torch.randn(rows, 1, generator=gen).round(decimals=1).expand(rows, length).clone()
    adv[1] = 0.0  # a response with A = 0 belongs to neither side
    lengths = torch.randint(1, length + 1, (rows, 1), generator=gen)
    return old, log_prob, adv, torch.arange(length)[None, :] < lengths


def official_params(settings) -> FIPOParams:
    return FIPOParams(**settings, safety_mode="clamp", drop_multi_dual_clip=True)


def plugin_config(params: FIPOParams, batch_num_tokens: int, global_batch_size: int):
    """verl's ActorConfig with the FIPO knobs, and the global batch info verl 0.9.1's ppo_loss sets."""
    clip_keys = ("clip_ratio_low", "clip_ratio_high", "clip_ratio_c")
    knobs = {k: v for k, v in params.__dict__.items() if k not in clip_keys}
    config = standalone_actor_config(params, policy_loss=FIPOPolicyLossConfig(loss_mode="fipo", **knobs))
    config.global_batch_info.update(dp_size=1, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size)
    return config


@pytest.mark.parametrize("settings", OFFICIAL_SETTINGS)
@pytest.mark.parametrize("repeat", range(3))
def test_every_official_metric_has_the_official_definition(settings, repeat):
    seed = torch.seed() % 2**32
    old, log_prob, adv, mask = batch(seed)
    expected_loss, expected, _ = official_float64(old, log_prob, adv, mask, **settings)
    out = fipo_policy_loss(old, log_prob, adv, mask, official_params(settings))
    assert set(expected) <= set(out.metrics) == set(METRIC_NAMES)
    for key, value in expected.items():
        assert out.metrics[key] == pytest.approx(value, rel=2e-5, abs=1e-6), (key, seed)


def test_official_lower_clip_ratio_on_a_first_mini_batch_counts_every_token_with_clip_high_only():
    """Delta logp = 0 everywhere (first mini-batch): FutureKL = 0, f = 1 = the lower bound of [1, 1.2]."""
    old = -torch.rand(4, 20)
    adv = torch.randn(4, 1).expand(4, 20)
    mask = torch.ones(4, 20, dtype=torch.bool)
    out = fipo_policy_loss(old, old.clone(), adv, mask, official_params(OFFICIAL_SETTINGS[0]))
    assert out.metrics["actor/IW_lower_clip_ratio"] == pytest.approx(1.0)
    assert out.metrics["actor/IW_upper_clip_ratio"] == 0.0
    # this loss's own count of raw weights outside the bounds says what the official one does not
    assert out.metrics["actor/fipo_raw_weight_below_frac"] == 0.0


def test_is_diagnostics_are_zero_when_a_side_has_no_tokens():
    old = -torch.rand(2, 10)
    adv = torch.ones(2, 10)  # no negative advantages
    out = fipo_policy_loss(old, old + 0.1, adv, torch.ones(2, 10, dtype=torch.bool), FIPOParams())
    for key in ("actor/neg_is_max", "actor/neg_is_p75", "actor/neg_is_p995", "actor/neg_is_p999"):
        assert out.metrics[key] == 0.0
    assert out.metrics["actor/pos_is_median"] == pytest.approx(math.exp(0.1), rel=1e-6)


@pytest.mark.parametrize("settings", OFFICIAL_SETTINGS)
def test_with_the_drop_rule_the_trainer_loss_equals_the_official_loss(settings):
    """One micro-batch = the mini-batch (dp 1): verl 0.9.1 hands the loss the mini-batch's token count, which
    includes the dropped responses; the plugin renormalises to the kept tokens as the official code does."""
    seed = torch.seed() % 2**32
    old, log_prob, adv, mask = batch(seed, rows=6, length=30, shift=0.3)
    # Response 0: negative advantage, three tokens far above the dual-clip bound -> dropped.
    adv[0] = -1.0
    log_prob[0, :3] = old[0, :3] + math.log(50.0)
    mask[0, :3] = True
    expected, _, kept = official_float64(old, log_prob, adv, mask, **settings)
    assert not kept[0].any() and kept[1:].any(), "the crafted response must be the only one dropped"
    config = plugin_config(official_params(settings), int(mask.sum()), mask.shape[0])
    loss, _ = compute_policy_loss_fipo(old, log_prob, adv, mask, "token-mean", config)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5), seed


def test_the_issue_example_two_responses_one_dropped():
    """Two responses, the first dropped: the official loss is the token-mean of the second alone."""
    old = torch.zeros(2, 4)
    log_prob = old.clone()
    log_prob[0, :2] = math.log(50.0)  # two dual-clipped tokens in response 0
    adv = torch.tensor([[-1.0], [1.335]]).expand(2, 4).clone()
    mask = torch.ones(2, 4, dtype=torch.bool)
    params = FIPOParams(drop_multi_dual_clip=True, safety_mode="clamp")
    config = plugin_config(params, batch_num_tokens=8, global_batch_size=2)
    loss, metrics = compute_policy_loss_fipo(old, log_prob, adv, mask, "token-mean", config)
    assert loss.item() == pytest.approx(-1.335, rel=1e-6)  # not -0.6675 (divided by all 8 tokens)
    assert metrics["actor/fipo_kept_token_frac"] == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["token-sum", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_drop_rule_rescale_per_aggregation_mode(mode):
    old = torch.zeros(3, 4)
    log_prob = old.clone()
    log_prob[0, :2] = math.log(50.0)
    adv = torch.tensor([[-1.0], [0.5], [2.0]]).expand(3, 4).clone()
    mask = torch.arange(4)[None, :] < torch.tensor([[4], [2], [3]])
    out = fipo_policy_loss(old, log_prob, adv, mask, FIPOParams(drop_multi_dual_clip=True))
    expected = {"token-sum": 1.0, "seq-mean-token-mean": 3 / 2, "seq-mean-token-sum": 3 / 2}[mode]
    assert out.drop_rule_rescale(mode) == expected
    assert out.drop_rule_rescale("token-mean") == 9 / 5
    without = fipo_policy_loss(old, log_prob, adv, mask, FIPOParams())
    assert without.drop_rule_rescale("token-mean") == without.drop_rule_rescale(mode) == 1.0
