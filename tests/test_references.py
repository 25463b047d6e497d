"""The references in fipo/references.py against what they restate: verl's own vanilla loss, and the paper's
stop-gradient on the influence weight."""

import pytest
import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from fipo.loss import FIPOParams
from fipo.references import paper_loss_float64, token_mean, vanilla_ppo_loss
from fipo.verl_plugin import standalone_actor_config


def fresh_batch(batch=5, length=300, dtype=torch.float32):
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)  # fresh inputs each run
    old = -torch.rand(batch, length, generator=gen, dtype=dtype) * 4
    log_prob = old + torch.randn(batch, length, generator=gen, dtype=dtype)
    adv = torch.randn(batch, 1, generator=gen, dtype=dtype).expand(batch, length).clone()
    adv[0] = -1.0  # at least one response with A < 0, so that the dual clip can bite
    log_prob[0, :3] = old[0, :3] + 3.0  # ratio e^3 > c = 10: dual-clipped
    mask = torch.arange(length)[None, :] < torch.randint(1, length + 1, (batch, 1), generator=gen)
    mask[0, :3] = True
    return old, log_prob, adv, mask


@pytest.mark.parametrize("clips", [(0.2, 0.28, 10.0), (0.2, 0.2, 3.0)])
def test_vanilla_replica_equals_verls_vanilla_loss(clips):
    low, high, c = clips
    old, log_prob, adv, mask = fresh_batch()
    config = standalone_actor_config(FIPOParams(clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c))

    lp_verl = log_prob.clone().requires_grad_()
    loss_verl, metrics_verl = get_policy_loss_fn("vanilla")(
        old_log_prob=old, log_prob=lp_verl, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
        config=config,
    )
    loss_verl.backward()
    lp_ours = log_prob.clone().requires_grad_()
    loss_ours, metrics_ours = vanilla_ppo_loss(old, lp_ours, adv, mask, low, high, c)
    loss_ours.backward()

    assert torch.allclose(loss_ours, loss_verl, rtol=1e-6, atol=1e-8)
    assert torch.allclose(lp_ours.grad, lp_verl.grad, rtol=1e-6, atol=1e-10)
    assert metrics_ours.keys() == metrics_verl.keys()
    for key, value in metrics_verl.items():
        assert metrics_ours[key] == pytest.approx(value, rel=1e-6, abs=1e-8), key
    # both clips were active, or the comparison would not cover them
    assert metrics_verl["actor/pg_clipfrac"] > 0 and metrics_verl["actor/pg_clipfrac_lower"] > 0


def test_paper_reference_treats_the_influence_weight_as_a_constant():
    """The reference's gradient is the vanilla gradient with A replaced by the constant A * f (Eq. 7)."""
    params = FIPOParams(tau=8.0, f_clip_low=0.2, f_clip_high=0.2, clip_ratio_c=10.0)
    old, log_prob, adv, mask = fresh_batch(dtype=torch.float64)
    lp = log_prob.clone().requires_grad_()
    loss_mat, f, _ = paper_loss_float64(old, lp, adv, mask, params)
    token_mean(loss_mat, mask).backward()
    assert not f.requires_grad and (f[mask] != 1).any()

    lp_vanilla = log_prob.clone().requires_grad_()
    loss, _ = vanilla_ppo_loss(old, lp_vanilla, adv * f, mask, 0.2, 0.28, 10.0)
    loss.backward()
    assert torch.allclose(lp.grad, lp_vanilla.grad, rtol=1e-12, atol=1e-15)


def test_token_mean_of_an_empty_mask_is_zero():
    loss = torch.randn(2, 5)
    assert token_mean(loss, torch.zeros(2, 5, dtype=torch.bool)).item() == 0.0
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert token_mean(loss, mask).item() == pytest.approx(loss[mask].mean().item())
