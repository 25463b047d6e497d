"""The verl plugin: found by a plain `import verl` in a fresh process, accepted by verl's ActorConfig, and
numerically the core loss aggregated by verl's agg_loss."""

import json
import subprocess
import sys

import pytest
import torch
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn

from fipo.loss import FIPOParams, fipo_policy_loss
from fipo.verl_plugin import FIPOPolicyLossConfig, params_from_actor_config, standalone_actor_config


def test_fresh_process_import_verl_registers_the_loss_through_the_entry_point():
    code = (
        "import sys, verl\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "fn = get_policy_loss_fn('fipo'); alias = get_policy_loss_fn('future_kl')\n"
        "print(fn.__module__, fn is alias, 'fipo.verl_plugin' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["fipo.verl_plugin", "True", "True"]


def test_without_the_plugin_verl_does_not_know_the_loss():
    """Control for the test above: the registration really comes from the entry point."""
    code = "import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn\nget_policy_loss_fn('fipo')\n"
    env = {"VERL_USE_EXTERNAL_PLUGINS": "none", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "fipo" in out.stderr


def actor_config(**policy_loss):
    """clip 0.2 / 0.28, c = 10 (FIPOParams' defaults) with the FIPO policy-loss config."""
    return standalone_actor_config(policy_loss=FIPOPolicyLossConfig(loss_mode="fipo", **policy_loss))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_registered_loss_with_actor_config_matches_the_core(mode):
    config = actor_config(tau=8.0, f_clip_low=0.2, f_clip_high=0.2, safety_mode="clamp")
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    old = -torch.rand(4, 30, generator=gen) * 3
    new = old + torch.randn(4, 30, generator=gen) * 0.5
    adv = torch.randn(4, 1, generator=gen).expand(4, 30).contiguous()
    mask = torch.arange(30)[None, :] < torch.tensor([[30], [12], [1], [25]])
    loss, metrics = get_policy_loss_fn("fipo")(
        old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, loss_agg_mode=mode, config=config
    )
    params = FIPOParams(tau=8.0, f_clip_low=0.2, f_clip_high=0.2, safety_mode="clamp")
    core = fipo_policy_loss(old, new, adv, mask, params)
    assert torch.equal(loss, agg_loss(core.loss_mat, core.loss_mask, mode))
    assert metrics == core.metrics
    assert params_from_actor_config(config) == params


def test_actor_config_rejects_bad_fipo_values_and_unknown_keys():
    with pytest.raises(ValueError, match="tau"):
        FIPOPolicyLossConfig(loss_mode="fipo", tau=-1.0)
    with pytest.raises(ValueError, match="safety_mode"):
        FIPOPolicyLossConfig(loss_mode="fipo", safety_mode="zero")
    with pytest.raises(TypeError):
        FIPOPolicyLossConfig(loss_mode="fipo", tua=32.0)


def test_fipo_mode_without_the_fipo_config_class_is_a_clear_error():
    from verl.workers.config import PolicyLossConfig

    config = standalone_actor_config(policy_loss=PolicyLossConfig(loss_mode="fipo"))
    x = torch.zeros(1, 3)
    with pytest.raises(TypeError, match="FIPOPolicyLossConfig"):
        get_policy_loss_fn("fipo")(old_log_prob=x, log_prob=x, advantages=x, response_mask=x > -1, config=config)


def test_token_dumps_are_written_every_n_calls_and_bounded(tmp_path):
    path = tmp_path / "dump.jsonl"
    config = actor_config(tau=8.0, dump_path=str(path), dump_every=2, dump_responses=2, dump_max_bytes=20_000)
    old = -torch.rand(3, 50)
    new = old + 0.1 * torch.randn(3, 50)
    adv = torch.ones(3, 50)
    mask = torch.ones(3, 50, dtype=torch.bool)
    fn = get_policy_loss_fn("fipo")
    for _ in range(3):
        fn(old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, config=config)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["call"] for r in records] == [2]
    response = records[0]["responses"][0]
    assert len(records[0]["responses"]) == 2 and response["length"] == 50
    assert set(response) >= {"log_ratio", "future_kl", "influence_weight", "advantage"}
    assert response["log_ratio"][0] == pytest.approx((new - old)[0, 0].item(), abs=1e-5)
    for _ in range(40):
        fn(old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask, config=config)
    assert path.stat().st_size <= 20_000
