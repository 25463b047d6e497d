"""The experiment spec: every experiment resolves, no value is written twice, bad input names its key."""

import shutil
from pathlib import Path

import pytest
import yaml

from fipo.experiment import (
    CONFIG_DIR,
    SpecError,
    ablations,
    experiment_layers,
    list_experiments,
    list_presets,
    load_all,
    load_experiment,
)

PAPER_EXPERIMENTS = {"dapo", "grpo", "fipo", "fipo-raw"}


def test_presets_and_their_experiments():
    assert {"qwen2.5-32b", "qwen2.5-7b-math"} <= set(list_presets())
    assert PAPER_EXPERIMENTS <= set(list_experiments("qwen2.5-32b"))
    assert PAPER_EXPERIMENTS <= set(list_experiments("qwen2.5-7b-math"))
    assert {"fipo-tau8", "fipo-tau128", "fipo-tau256", "fipo-fclip-1.0-1.2"} <= set(list_experiments("qwen2.5-7b-math"))
    assert {"fipo-cliphigh-1.4", "fipo-maxlen-25k", "fipo-minibatch32", "fipo-minibatch32-nooverlong"} <= set(
        list_experiments("qwen2.5-32b")
    )


@pytest.mark.parametrize("preset", ["qwen2.5-32b", "qwen2.5-7b-math"])
def test_every_experiment_resolves_and_ablation_families_name_real_runs(preset):
    experiments = {e.name: e for e in load_all(preset)}
    for family, members in ablations(preset).items():
        assert family.startswith("ablation_") and set(members) <= set(experiments)


def test_ablations_change_exactly_their_keys():
    base = load_experiment("qwen2.5-7b-math", "fipo")
    assert load_experiment("qwen2.5-7b-math", "fipo-tau8").fipo.tau == 8.0
    assert load_experiment("qwen2.5-7b-math", "fipo-tau8").policy == base.policy
    big = load_experiment("qwen2.5-32b", "fipo")
    maxlen = load_experiment("qwen2.5-32b", "fipo-maxlen-25k")
    assert maxlen.reward.overlong_buffer_len == 0.2 * maxlen.data.max_response_length
    assert maxlen.policy == big.policy and maxlen.fipo == big.fipo
    nooverlong = load_experiment("qwen2.5-32b", "fipo-minibatch32-nooverlong")
    assert nooverlong.policy.ppo_mini_batch_size == 32 and nooverlong.reward.overlong_buffer is False
    assert load_experiment("qwen2.5-32b", "fipo-cliphigh-1.4").policy.clip_ratio_high == pytest.approx(0.4)


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("preset", ["qwen2.5-32b", "qwen2.5-7b-math"])
def test_no_value_is_written_twice(preset):
    """No layer of an experiment sets a key to the value an earlier layer already gave it."""
    for name in list_experiments(preset):
        effective = {}
        for where, settings in experiment_layers(preset, name):
            for key, value in _leaves(settings):
                assert effective.get(key, object()) != value, f"{preset}/{name}: {key}={value!r} repeated in {where}"
                effective[key] = value


@pytest.fixture
def config_copy(tmp_path):
    target = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, target)
    return target


def edit_preset(config_dir: Path, preset: str, edit):
    path = config_dir / "presets" / f"{preset}.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["defaults"]["fipo"].update(tau=0), "fipo.tau"),
        (lambda d: d["defaults"]["fipo"].update(tau=-4.0), "fipo.tau"),
        (lambda d: d["defaults"]["fipo"].update(f_clip_range=[1.2, 1.0]), "fipo.f_clip_range.*low 1.2 > high 1.0"),
        (lambda d: d["defaults"]["policy"].update(clip_ratio_c=-1.0), "policy.clip_ratio_c"),
        (lambda d: d["experiments"]["fipo"].update(set={"policy": {"clip_ratio_low": -0.2}}), "policy.clip_ratio_low"),
        (lambda d: d["experiments"]["fipo"].update(set={"policy": {"clip_ratio_high": -0.1}}), "policy.clip_ratio_high"),
        (lambda d: d["defaults"]["fipo"].update(taux=32), r"unknown key\(s\) \['taux'\].*allowed: .*'tau'"),
        (lambda d: d["defaults"]["fipo"].update(safety_mode="zero"), "fipo.safety_mode.*allowed: reset, clamp"),
        (lambda d: d["defaults"]["rollout"].update(n="16"), "rollout.n: expected an integer"),
        (lambda d: d["methods"]["fipo"]["policy"].update(ppo_mini_batch_size=100), "ppo_mini_batch_size.*must divide"),
        (lambda d: d["experiments"]["fipo"].update(method="ppo"), "unknown method 'ppo'.*allowed: dapo, grpo, fipo"),
        (lambda d: d["experiments"]["fipo"].update(sett={}), r"unknown key\(s\) \['sett'\]"),
        (lambda d: d["defaults"].update(optimizer={}), r"unknown section\(s\) \['optimizer'\]"),
    ],
)
def test_bad_values_fail_naming_the_key(config_copy, edit, message):
    edit_preset(config_copy, "qwen2.5-32b", edit)
    with pytest.raises(SpecError, match=message):
        load_experiment("qwen2.5-32b", "fipo", config_dir=config_copy)


def test_unknown_preset_and_experiment_list_the_allowed_values():
    with pytest.raises(SpecError, match="unknown preset 'qwen3'.*allowed: .*qwen2.5-32b"):
        load_experiment("qwen3", "fipo")
    with pytest.raises(SpecError, match="unknown experiment 'fipo-tau9'.*allowed: .*fipo-tau8"):
        load_experiment("qwen2.5-7b-math", "fipo-tau9")


def test_a_cycle_in_the_base_chain_is_reported(config_copy):
    edit_preset(config_copy, "qwen2.5-32b", lambda d: d["experiments"]["fipo"].update(base="fipo-raw"))
    with pytest.raises(SpecError, match="inherits from itself"):
        load_experiment("qwen2.5-32b", "fipo-raw", config_dir=config_copy)
