"""The loss and its metrics against a float64 restatement of the official FIPO code's definitions
(qwenpilot/FIPO at ee25452, verl/trainer/ppo/core_algos.py compute_policy_loss_future_kl; read in the public fork
vukrosic/FIPO). The restatement below is written from those definitions, not copied: where the official code
and the paper differ (safety clamp to [0.8, 1], the ratio filter always on at c, the multi-dual-clip drop always
on), the official behaviour is what is restated, and this loss is configured to match it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fipo.future_kl import future_kl_reference
from fipo.loss import METRIC_NAMES, FIPOParams, fipo_policy_loss
from fipo.verl_plugin import FIPOPolicyLossConfig, compute_policy_loss_fipo, standalone_actor_config

# The official launcher for 32B: clip high only ([1, 1.2]), safety 10, c = 10; and a 7B-like [0.8, 1.2] range.
OFFICIAL_SETTINGS = [
    dict(tau=32.0, f_clip_low=0.0, f_clip_high=0.2, clip_ratio_c=10.0, safety_threshold=10.0),
    dict(tau=8.0, f_clip_low=0.2, f_clip_high=0.2, clip_ratio_c=3.0, safety_threshold=2.0),
]


def official_terms(old, log_prob, adv, mask, *, tau, f_clip_low, f_clip_high, clip_ratio_c, safety_threshold,
                   clip_low=0.2, clip_high=0.28, drop=True):  # fmt: skip
    """The official per-token quantities in float64; ``drop``: its multi-dual-clip drop rule (always on there)."""
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
    kept = on & ~(dual.sum(-1, keepdim=True) > 1) if drop else on
    return SimpleNamespace(on=on, delta=delta, ratio=ratio, raw=raw, f=f, l1=l1, l2=l2, dual=dual,
                           per_token=per_token, kept=kept, lower=lower, upper=upper)  # fmt: skip


def kept_token_mean(terms):
    """The official aggregation: token-mean over the kept tokens of one micro-batch, 0 when none is kept."""
    return (terms.per_token * terms.kept).sum() / terms.kept.sum().clamp(min=1)


def official_loss_float64(old, log_prob, adv, mask, **settings):
    """The official loss alone (the metrics below need at least one response token)."""
    terms = official_terms(old, log_prob, adv, mask, **settings)
    return kept_token_mean(terms), terms.kept


def official_float64(old, log_prob, adv, mask, **settings):
    """The official loss (token-mean over the kept tokens of one micro-batch) and its metrics, in float64."""
    t = official_terms(old, log_prob, adv, mask, **settings)
    on, delta, ratio, raw, f, l1, l2, dual = t.on, t.delta, t.ratio, t.raw, t.f, t.l1, t.l2, t.dual
    lower, upper, adv, clip_ratio_c = t.lower, t.upper, adv.double(), settings["clip_ratio_c"]

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
    return kept_token_mean(t), {k: float(v) for k, v in metrics.items()}, t.kept


def batch(seed, rows=8, length=48, shift=0.9):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, length, generator=gen) * 4
    log_prob = old + torch.randn(rows, length, generator=gen) * shift
    log_prob[0, 5] = old[0, 5] - 9.0  # r ~ 1e-4: a "mini" ratio wherever A > 0
    adv = torch.randn(rows, 1, generator=gen).round(decimals=1).expand(rows, length).clone()
    adv[1] = 0.0  # a response with A = 0 belongs to neither side
    lengths = torch.randint(1, length + 1, (rows, 1), generator=gen)
    return old, log_prob, adv, torch.arange(length)[None, :] < lengths


def official_params(settings, drop=True) -> FIPOParams:
    return FIPOParams(**settings, safety_mode="clamp", drop_multi_dual_clip=drop)


def plugin_config(params: FIPOParams, **batch_info):
    """verl's ActorConfig with the FIPO knobs and ``batch_info`` as its global batch info (none: standalone)."""
    clip_keys = ("clip_ratio_low", "clip_ratio_high", "clip_ratio_c")
    knobs = {k: v for k, v in params.__dict__.items() if k not in clip_keys}
    config = standalone_actor_config(params, policy_loss=FIPOPolicyLossConfig(loss_mode="fipo", **knobs))
    config.global_batch_info.update(batch_info)
    return config


def no_batch_info(mask):
    """Outside verl's trainer (the standalone actor config, benchmarks, another trainer): no global batch info,
    so verl's agg_loss divides by what the loss mask keeps."""
    return {}


def trainer_batch_info(mask):
    """What verl 0.9.1's ppo_loss sets when this micro-batch is the whole mini-batch on one rank: the mini-batch's
    response tokens and responses, counted before the loss drops any."""
    return dict(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=mask.shape[0])


BATCH_INFO = {"standalone": no_batch_info, "trainer": trainer_batch_info}


def plugin_loss(old, log_prob, adv, mask, params, path, mode="token-mean"):
    """The registered loss through verl's calling convention, with a gradient through ``log_prob``."""
    log_prob = log_prob.clone().requires_grad_()
    config = plugin_config(params, **BATCH_INFO[path](mask))
    loss, metrics = compute_policy_loss_fipo(old, log_prob, adv, mask, mode, config)
    loss.backward()
    return loss.detach(), metrics, log_prob.grad


def random_case(seed, rows, length, shift, spike_rate, min_length=0):
    """Random responses; ``spike_rate`` of the tokens get r ~ 50, above any dual-clip bound, so that responses
    with two or more of them under a negative advantage are dropped. Length 0: a response of padding only."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, length, generator=gen) * 4
    log_prob = old + torch.randn(rows, length, generator=gen) * shift
    log_prob += (torch.rand(rows, length, generator=gen) < spike_rate) * math.log(50.0)
    adv = torch.randn(rows, 1, generator=gen).round(decimals=1).expand(rows, length).clone()
    lengths = torch.randint(min_length, length + 1, (rows, 1), generator=gen)
    return old, log_prob, adv, torch.arange(length)[None, :] < lengths


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


@given(
    path=st.sampled_from(sorted(BATCH_INFO)),
    drop=st.booleans(),
    settings=st.sampled_from(OFFICIAL_SETTINGS),
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 8),
    length=st.integers(1, 40),
    shift=st.sampled_from([0.05, 0.5, 1.5]),
    spike_rate=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_plugin_loss_equals_the_official_loss_with_and_without_batch_info(
    path, drop, settings, seed, rows, length, shift, spike_rate
):
    old, log_prob, adv, mask = random_case(seed, rows, length, shift, spike_rate)
    expected, _ = official_loss_float64(old, log_prob, adv, mask, **settings, drop=drop)
    loss, _, grad = plugin_loss(old, log_prob, adv, mask, official_params(settings, drop), path)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    assert torch.isfinite(grad).all()


def two_responses_one_dropped():
    """Response 0: A = -1 and two tokens at r = 50 > c, both dual-clipped, so the drop rule removes it;
    response 1: A = 1.335 at r = 1 on all four tokens, a per-token loss of -1.335."""
    old = torch.zeros(2, 4)
    log_prob = old.clone()
    log_prob[0, :2] = math.log(50.0)
    adv = torch.tensor([[-1.0], [1.335]]).expand(2, 4).clone()
    return old, log_prob, adv, torch.ones(2, 4, dtype=torch.bool)


@pytest.mark.parametrize("path", sorted(BATCH_INFO))
def test_two_responses_one_dropped_gives_the_token_mean_of_the_other(path):
    """Standalone, agg_loss already divides by the 4 kept tokens; rescaling that by 8/4 again gave -2.67. With the
    trainer's 8 tokens it divides by all 8 and the rescale is what makes it -1.335 rather than -0.6675."""
    old, log_prob, adv, mask = two_responses_one_dropped()
    params = FIPOParams(drop_multi_dual_clip=True, safety_mode="clamp")
    expected, kept = official_loss_float64(old, log_prob, adv, mask, **OFFICIAL_SETTINGS[0])
    assert expected.item() == pytest.approx(-1.335) and not kept[0].any()
    loss, metrics, _ = plugin_loss(old, log_prob, adv, mask, params, path)
    assert loss.item() == pytest.approx(-1.335, rel=1e-6)
    assert metrics["actor/fipo_kept_token_frac"] == pytest.approx(0.5)


@pytest.mark.parametrize("path", sorted(BATCH_INFO))
@pytest.mark.parametrize("settings", OFFICIAL_SETTINGS)
def test_with_one_response_dropped_the_plugin_loss_equals_the_official_loss(path, settings):
    seed = torch.seed() % 2**32
    old, log_prob, adv, mask = batch(seed, rows=6, length=30, shift=0.3)
    # Response 0: negative advantage, three tokens far above the dual-clip bound -> dropped.
    adv[0] = -1.0
    log_prob[0, :3] = old[0, :3] + math.log(50.0)
    mask[0, :3] = True
    expected, _, kept = official_float64(old, log_prob, adv, mask, **settings)
    assert not kept[0].any() and kept[1:].any(), "the crafted response must be the only one dropped"
    loss, _, _ = plugin_loss(old, log_prob, adv, mask, official_params(settings), path)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5), seed


def edge_case(name):
    """Fresh random log-probs and advantages, shaped as the named corner of the input space."""
    old, log_prob, adv, mask = random_case(torch.seed() % 2**32, rows=4, length=12, shift=0.5, spike_rate=0.0)
    spiked = log_prob.clone()
    spiked[:, :3] = old[:, :3] + math.log(50.0)  # three dual-clipped tokens wherever A < 0
    if name == "all dropped":
        return old, spiked, -adv.abs() - 0.1, torch.ones_like(mask)
    if name == "one response, dropped":
        return old[:1], spiked[:1], -adv[:1].abs() - 0.1, torch.ones_like(mask[:1])
    if name == "one response, kept":
        return old[:1], log_prob[:1], adv[:1], torch.ones_like(mask[:1])
    if name == "length-1 responses":  # one token cannot be dual-clipped twice: nothing is ever dropped
        return old, spiked, -adv.abs() - 0.1, (torch.arange(12)[None, :] < 1).expand(4, 12)
    if name == "padding-only responses among dropped ones":
        mask[:2], mask[2:] = True, False
        return old, spiked, -adv.abs() - 0.1, mask
    assert name == "empty mask"
    return old, spiked, adv, torch.zeros_like(mask)


EDGE_CASES = ["all dropped", "one response, dropped", "one response, kept", "length-1 responses",
              "padding-only responses among dropped ones", "empty mask"]  # fmt: skip


@pytest.mark.parametrize("path", sorted(BATCH_INFO))
@pytest.mark.parametrize("drop", [True, False])
@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_equal_the_official_loss_with_a_finite_gradient(path, drop, name):
    settings = OFFICIAL_SETTINGS[1]
    old, log_prob, adv, mask = edge_case(name)
    expected, _ = official_loss_float64(old, log_prob, adv, mask, **settings, drop=drop)
    loss, _, grad = plugin_loss(old, log_prob, adv, mask, official_params(settings, drop), path)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert torch.isfinite(grad).all()
    if not mask.any() or (drop and name.startswith(("all", "one response, dropped", "padding"))):
        assert loss.item() == 0.0 and torch.all(grad == 0)  # nothing kept: no contribution, not 0/0


AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@given(mode=st.sampled_from(AGG_MODES), seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 6),
       spike_rate=st.sampled_from([0.05, 0.2]))  # fmt: skip
def test_both_paths_give_the_same_loss_in_every_aggregation_mode(mode, seed, rows, spike_rate):
    """When the batch info describes just this micro-batch, the trainer path (denominator counts the dropped
    responses, then the rescale) and the standalone path (denominator counts only the kept ones) agree."""
    old, log_prob, adv, mask = random_case(seed, rows, 24, 0.5, spike_rate, min_length=1)
    params = official_params(OFFICIAL_SETTINGS[1])
    standalone, _, grad_s = plugin_loss(old, log_prob, adv, mask, params, "standalone", mode)
    trainer, _, grad_t = plugin_loss(old, log_prob, adv, mask, params, "trainer", mode)
    assert standalone.item() == pytest.approx(trainer.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(grad_s, grad_t, rtol=1e-5, atol=1e-7)


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
