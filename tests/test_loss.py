"""The FIPO loss: against verl's own vanilla loss, against a float64 restatement of PAPER.md Eq. 3-8, and
the behaviour of every switch."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn

from fipo.future_kl import future_kl_reference
from fipo.loss import METRIC_NAMES, FIPOParams, NonFiniteInputError, fipo_policy_loss
from fipo.references import paper_loss_float64
from fipo.verl_plugin import standalone_actor_config as actor_config

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def random_batch(seed, batch=6, length=40, shift=0.5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen, dtype=dtype) * 4
    log_prob = old + torch.randn(batch, length, generator=gen, dtype=dtype) * shift
    # GRPO-style: one advantage per response, broadcast over its tokens, some exactly zero
    adv = torch.randn(batch, 1, generator=gen, dtype=dtype).round(decimals=1).expand(batch, length).clone()
    lengths = torch.randint(1, length + 1, (batch, 1), generator=gen)
    mask = torch.arange(length)[None, :] < lengths
    return old, log_prob, adv, mask


PARAMS = st.builds(
    FIPOParams,
    clip_ratio_low=st.sampled_from([0.2, 0.1]),
    clip_ratio_high=st.sampled_from([0.28, 0.4]),
    clip_ratio_c=st.sampled_from([3.0, 10.0]),
    tau=st.sampled_from([0.5, 8.0, 32.0, 256.0, 1e6]),
    f_clip_low=st.sampled_from([0.0, 0.2]),
    f_clip_high=st.sampled_from([0.0, 0.2]),
    filter_ratio=st.booleans(),
    safety_threshold=st.sampled_from([1.5, 3.0, 10.0]),
    safety_mode=st.sampled_from(["reset", "clamp"]),
    chunk_size=st.sampled_from([2, 5, 32]),
)


@given(params=PARAMS, seed=st.integers(0, 2**32 - 1), shift=st.sampled_from([0.05, 0.5, 2.0]))
def test_per_token_loss_matches_float64_restatement_of_the_paper(params, seed, shift):
    old, log_prob, adv, mask = random_batch(seed, shift=shift)
    out = fipo_policy_loss(old, log_prob, adv, mask, params)
    expected, f, fkl = paper_loss_float64(old, log_prob, adv, mask, params)
    assert torch.allclose(out.future_kl.double()[mask], fkl[mask], rtol=1e-5, atol=1e-5)
    # f sits on clip bounds for most tokens: compare where exp(FKL) is not within float32 noise of a bound
    assert torch.allclose(out.influence_weights.double()[mask], f[mask], rtol=1e-4, atol=1e-5)
    assert torch.allclose(out.loss_mat.double()[mask], expected[mask], rtol=1e-4, atol=1e-5)
    assert torch.equal(out.loss_mask, mask)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_f_forced_to_one_equals_verls_vanilla_loss(mode, seed):
    seed = seed * 7919 + torch.seed() % 1000  # fresh inputs each run, three of them
    params = FIPOParams(f_clip_low=0.0, f_clip_high=0.0, clip_ratio_c=3.0, safety_threshold=2.0)
    old, log_prob, adv, mask = random_batch(seed, shift=1.0)
    adv[0], log_prob[0, 0] = -1.0, old[0, 0] + 2.0  # at least one dual-clipped token (ratio e^2 > c = 3)
    cfg = actor_config(params, loss_agg_mode=mode)

    lp_v = log_prob.clone().requires_grad_()
    loss_v, metrics_v = get_policy_loss_fn("vanilla")(
        old_log_prob=old, log_prob=lp_v, advantages=adv, response_mask=mask, loss_agg_mode=mode, config=cfg
    )
    loss_v.backward()

    lp_f = log_prob.clone().requires_grad_()
    out = fipo_policy_loss(old, lp_f, adv, mask, params)
    loss_f = agg_loss(out.loss_mat, out.loss_mask, mode)
    loss_f.backward()

    assert torch.allclose(loss_f, loss_v, rtol=1e-6, atol=1e-7)
    assert torch.allclose(lp_f.grad, lp_v.grad, rtol=1e-6, atol=1e-8)
    for key, value in metrics_v.items():
        assert out.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert metrics_v["actor/pg_clipfrac"] > 0 and metrics_v["actor/pg_clipfrac_lower"] > 0  # both paths hit


def test_gradient_flows_through_the_ratio_and_not_through_f():
    """FIPO's gradient is exactly vanilla's gradient with the advantage replaced by the constant A * f."""
    params = FIPOParams(tau=8.0, f_clip_low=0.2, f_clip_high=0.2)
    old, log_prob, adv, mask = random_batch(torch.seed() % 2**32, shift=0.3)
    lp = log_prob.clone().requires_grad_()
    out = fipo_policy_loss(old, lp, adv, mask, params)
    agg_loss(out.loss_mat, out.loss_mask, "token-mean").backward()
    assert not out.influence_weights.requires_grad and not out.future_kl.requires_grad
    assert (out.influence_weights[mask] != 1).any()  # f really varies, or this test would prove nothing

    lp_ref = log_prob.clone().requires_grad_()
    weighted = adv * out.influence_weights
    loss_ref, _ = get_policy_loss_fn("vanilla")(
        old_log_prob=old,
        log_prob=lp_ref,
        advantages=weighted,
        response_mask=mask,
        loss_agg_mode="token-mean",
        config=actor_config(params),
    )
    loss_ref.backward()
    assert torch.allclose(lp.grad, lp_ref.grad, rtol=1e-6, atol=1e-9)


def crafted_batch():
    """One response, hand-placed tokens: an extreme-ratio token with A < 0 and one with A > 0."""
    length = 12
    old = torch.full((2, length), -2.0)
    log_prob = old + 0.1
    log_prob[:, 4] = old[:, 4] + math.log(20.0)  # ratio 20 > c = 10: filtered, and > safety threshold
    adv = torch.tensor([[-1.0] * length, [1.0] * length])
    mask = torch.ones(2, length, dtype=torch.bool)
    return old, log_prob, adv, mask


def test_safety_rule_changes_exactly_the_unsafe_tokens():
    old, log_prob, adv, mask = crafted_batch()
    base = FIPOParams(tau=4.0, f_clip_low=0.2, f_clip_high=0.2)
    off = fipo_policy_loss(old, log_prob, adv, mask, dataclasses.replace(base, safety_threshold=1e9))
    reset = fipo_policy_loss(old, log_prob, adv, mask, dataclasses.replace(base, safety_mode="reset"))
    clamp = fipo_policy_loss(old, log_prob, adv, mask, dataclasses.replace(base, safety_mode="clamp"))
    unsafe = torch.zeros_like(mask)
    unsafe[0, 4] = True  # A < 0 and ratio 20 > 10; row 1 has the same ratio but A > 0
    assert off.influence_weights[0, 4] == pytest.approx(1.2)  # exp(FKL) >> 1.2 there: clipped high
    assert reset.influence_weights[0, 4] == 1.0
    assert clamp.influence_weights[0, 4] == 1.0  # clamp(1.2, 0.8, 1.0)
    for out in (reset, clamp):
        assert torch.equal(out.influence_weights[~unsafe], off.influence_weights[~unsafe])
        assert out.metrics["actor/fipo_safety_frac"] == pytest.approx(1 / 24)
    # clamp keeps f where it is already inside [0.8, 1]
    low = fipo_policy_loss(old, log_prob - 0.5, adv, mask, dataclasses.replace(base, safety_mode="clamp"))
    assert 0.8 <= low.influence_weights[0, 4] <= 1.0


def test_ratio_filter_switch_changes_exactly_the_future_kl_of_tokens_at_or_before_the_filtered_one():
    old, log_prob, adv, mask = crafted_batch()
    base = FIPOParams(tau=4.0, f_clip_low=0.2, f_clip_high=0.2, safety_threshold=1e9)
    on = fipo_policy_loss(old, log_prob, adv, mask, base)
    off = fipo_policy_loss(old, log_prob, adv, mask, dataclasses.replace(base, filter_ratio=False))
    delta = (log_prob - old).double()
    keep = mask.clone()
    keep[:, 4] = False
    assert torch.allclose(on.future_kl.double(), future_kl_reference(delta, keep, 4.0), atol=1e-6)
    assert torch.allclose(off.future_kl.double(), future_kl_reference(delta, mask, 4.0), atol=1e-6)
    changed = (on.future_kl - off.future_kl).abs() > 1e-6
    assert changed[:, :5].all() and not changed[:, 5:].any()
    assert on.metrics["actor/fipo_filtered_frac"] == pytest.approx(2 / 24)
    assert off.metrics["actor/fipo_filtered_frac"] == 0.0
    # a separate filter threshold, looser than c, lets the token back in
    loose = fipo_policy_loss(old, log_prob, adv, mask, dataclasses.replace(base, filter_threshold=25.0))
    assert torch.equal(loose.future_kl, off.future_kl)


def test_sequence_drop_rule_removes_only_responses_with_two_or_more_dual_clipped_tokens():
    length = 10
    old = torch.full((3, length), -1.0)
    log_prob = old.clone()
    log_prob[0, [2, 6]] += math.log(50.0)  # two dual-clipped tokens: dropped
    log_prob[1, 3] += math.log(50.0)  # one: kept
    adv = torch.full((3, length), -1.0)
    mask = torch.ones(3, length, dtype=torch.bool)
    params = FIPOParams(clip_ratio_c=10.0, f_clip_low=0.0, f_clip_high=0.0)
    kept = fipo_policy_loss(old, log_prob, adv, mask, params)
    dropped = fipo_policy_loss(old, log_prob, adv, mask, dataclasses.replace(params, drop_multi_dual_clip=True))
    assert torch.equal(kept.loss_mask, mask)
    assert torch.equal(dropped.loss_mask[0], torch.zeros(length, dtype=torch.bool))
    assert torch.equal(dropped.loss_mask[1:], mask[1:])
    assert torch.equal(dropped.loss_mat, kept.loss_mat)
    assert dropped.metrics["actor/fipo_dropped_seq_frac"] == pytest.approx(1 / 3)
    assert kept.metrics["actor/fipo_dropped_seq_frac"] == 0.0
    assert kept.metrics["actor/pg_clipfrac_lower"] == pytest.approx(3 / 30)


def test_metrics_against_direct_float64_computation():
    params = FIPOParams(tau=16.0, f_clip_low=0.2, f_clip_high=0.2, clip_ratio_c=3.0, safety_threshold=2.5)
    old, log_prob, adv, mask = random_batch(torch.seed() % 2**32, batch=8, length=64, shift=0.8)
    out = fipo_policy_loss(old, log_prob, adv, mask, params)
    _, f, fkl = paper_loss_float64(old, log_prob, adv, mask, params)
    ratio = (log_prob - old).double().exp()
    raw = fkl.exp()
    on = mask
    expected = {
        "actor/ppo_kl": (old - log_prob).double()[on].mean(),
        "actor/influence_weights_mean": f[on].mean(),
        "actor/influence_weights_min": f[on].min(),
        "actor/influence_weights_max": f[on].max(),
        "actor/influence_weights_mean_raw": raw[on].mean(),
        "actor/raw_influence_weights_min": raw[on].min(),
        "actor/raw_influence_weights_max": raw[on].max(),
        "actor/fipo_raw_weight_above_frac": (raw[on] > 1.2).double().mean(),
        "actor/fipo_raw_weight_below_frac": (raw[on] < 0.8).double().mean(),
        "actor/future_kl_mean": fkl[on].mean(),
        "actor/fipo_filtered_frac": (ratio[on] > 3.0).double().mean(),
        "actor/fipo_safety_frac": ((adv < 0) & (ratio > 2.5))[on].double().mean(),
    }
    for key, value in expected.items():
        assert out.metrics[key] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key
    assert out.metrics["actor/IW_overall_clip_ratio"] == pytest.approx(
        out.metrics["actor/IW_upper_clip_ratio"] + out.metrics["actor/IW_lower_clip_ratio"]
    )
    # the official clip ratios count the final f at the bounds (tests/test_official_parity.py): at least the
    # tokens whose raw weight lies beyond a bound and that the safety rule left alone
    assert out.metrics["actor/IW_upper_clip_ratio"] >= (
        ((raw > 1.2) & ~((adv < 0) & (ratio > 2.5)))[on].double().mean().item() - 1e-6
    )
    assert set(out.metrics) == set(METRIC_NAMES)
    assert all(isinstance(v, float) for v in out.metrics.values())


def test_empty_mask_gives_zero_loss_and_neutral_finite_metrics():
    old, log_prob, adv, _ = random_batch(3)
    mask = torch.zeros_like(old, dtype=torch.bool)
    lp = log_prob.clone().requires_grad_()
    out = fipo_policy_loss(old, lp, adv, mask)
    # verl normalises by the global mini-batch token count, which an empty micro-batch does not make zero
    loss = agg_loss(out.loss_mat, out.loss_mask, "token-mean", batch_num_tokens=100)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(lp.grad == 0)
    assert all(math.isfinite(v) for v in out.metrics.values())
    assert out.metrics["actor/influence_weights_min"] == out.metrics["actor/influence_weights_max"] == 1.0


def test_runaway_future_kl_without_filter_saturates_instead_of_nan():
    old = torch.full((1, 400), -5.0)
    log_prob = old + 15.0  # every ratio e^15: raw Future-KL runs far past float32's exp range
    adv = torch.ones(1, 400)
    mask = torch.ones(1, 400, dtype=torch.bool)
    out = fipo_policy_loss(old, log_prob, adv, mask, FIPOParams(filter_ratio=False, tau=1e6))
    assert torch.isfinite(out.loss_mat).all()
    assert out.influence_weights.max().item() == pytest.approx(1.2)
    assert out.metrics["actor/raw_influence_weights_max"] == pytest.approx(torch.finfo(torch.float32).max)
    assert out.metrics["actor/fipo_raw_weight_above_frac"] == pytest.approx(1.0)
    assert out.metrics["actor/IW_upper_clip_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["log_prob", "old_log_prob", "advantages"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["token", "padding"])
def test_non_finite_inputs_raise_a_clear_error(name, bad, where):
    old, log_prob, adv, mask = random_batch(5)
    mask[0, -1] = False
    tensors = {"log_prob": log_prob, "old_log_prob": old, "advantages": adv}
    position = (0, 0) if where == "token" else (0, -1)
    tensors[name][position] = bad
    with pytest.raises(NonFiniteInputError, match=name):
        fipo_policy_loss(old, log_prob, adv, mask)


def test_rollout_importance_weights_multiply_the_per_token_loss():
    old, log_prob, adv, mask = random_batch(9)
    weights = torch.rand_like(old)
    plain = fipo_policy_loss(old, log_prob, adv, mask)
    weighted = fipo_policy_loss(old, log_prob, adv, mask, rollout_is_weights=weights)
    assert torch.allclose(weighted.loss_mat, plain.loss_mat * weights)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": -3.0}, "tau"),
        ({"clip_ratio_low": -0.1}, "clip_ratio_low"),
        ({"clip_ratio_low": 1.0}, "clip_ratio_low"),
        ({"clip_ratio_high": -0.2}, "clip_ratio_high"),
        ({"clip_ratio_c": 1.0}, "clip_ratio_c"),
        ({"f_clip_low": 1.5}, "f_clip_low"),
        ({"f_clip_high": -0.1}, "f_clip_high"),
        ({"filter_threshold": 0.0}, "filter_threshold"),
        ({"safety_threshold": -1.0}, "safety_threshold"),
        ({"safety_mode": "zero"}, "safety_mode"),
        ({"chunk_size": 1}, "chunk_size"),
    ],
)
def test_invalid_params_name_the_key(changes, key):
    with pytest.raises(ValueError, match=key):
        FIPOParams(**changes)


def test_shape_mismatch_is_rejected():
    old, log_prob, adv, mask = random_batch(1)
    with pytest.raises(ValueError, match="advantages"):
        fipo_policy_loss(old, log_prob, adv[:, :-1], mask)


@pytest.mark.parametrize("shape", [(3, 0), (0, 7)])
def test_no_positions_at_all_is_the_all_padding_case(shape):
    """A micro-batch with response length 0 (or no rows) gives what an all-padding one of the same batch gives:
    zero loss, a gradient of zeros, the same metrics (amax over an empty tensor used to raise)."""
    zeros = torch.zeros(shape)
    log_prob = torch.zeros(shape, requires_grad=True)
    out = fipo_policy_loss(zeros, log_prob, zeros, torch.zeros(shape, dtype=torch.bool))
    out.loss_mat.sum().backward()
    assert log_prob.grad.shape == shape and out.tokens == 0
    padded = fipo_policy_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 4), torch.zeros(2, 4, dtype=torch.bool))
    assert out.metrics.keys() == padded.metrics.keys()
    for key, value in padded.metrics.items():
        assert out.metrics[key] == pytest.approx(value, nan_ok=True), key
