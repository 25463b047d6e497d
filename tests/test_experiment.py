"""The experiment spec: every experiment resolves, no value is written twice, bad input names its key."""

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fipo.spec import (
    CONFIG_DIR,
    FAMILY_PATTERN,
    NAME_PATTERN,
    SpecError,
    ablations,
    check_name,
    evaluation,
    experiment_layers,
    list_experiments,
    list_presets,
    load_all,
    load_experiment,
)

PAPER_EXPERIMENTS = {"dapo", "grpo", "fipo", "fipo-raw"}
GPU_PRESETS = ["qwen2.5-32b", "qwen2.5-7b-math", "qwen2.5-math-1.5b", "qwen2.5-0.5b"]
# The one-node and one-GPU presets mirror the 7B preset's runs and ablation families (Tables 4-6, Figures 6-7, 9-11).
SMALL_PRESETS = ["qwen2.5-math-1.5b", "qwen2.5-0.5b"]


def test_presets_and_their_experiments():
    assert {"qwen2.5-32b", "qwen2.5-7b-math"} <= set(list_presets())
    assert PAPER_EXPERIMENTS <= set(list_experiments("qwen2.5-32b"))
    assert PAPER_EXPERIMENTS <= set(list_experiments("qwen2.5-7b-math"))
    assert {"fipo-tau8", "fipo-tau128", "fipo-tau256", "fipo-fclip-1.0-1.2"} <= set(list_experiments("qwen2.5-7b-math"))
    assert {"fipo-cliphigh-1.4", "fipo-maxlen-25k", "fipo-minibatch32", "fipo-minibatch32-nooverlong"} <= set(
        list_experiments("qwen2.5-32b")
    )


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_every_experiment_resolves_and_ablation_families_name_real_runs(preset):
    experiments = {e.name: e for e in load_all(preset)}
    for family, members in ablations(preset).items():
        assert family.startswith("ablation_") and set(members) <= set(experiments)


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_small_presets_mirror_the_7b_runs_and_ablations(preset):
    assert list_experiments(preset) == list_experiments("qwen2.5-7b-math")
    assert ablations(preset) == ablations("qwen2.5-7b-math")
    assert evaluation(preset).benchmarks == ["aime2024", "aime2025"] and evaluation(preset).backend == "vllm"
    seven = {e.name: e for e in load_all("qwen2.5-7b-math")}
    for exp in load_all(preset):
        # the method and the ablated knobs are the 7B run's; only scale (model, lengths, batch, layout) differs
        same = seven[exp.name]
        assert (exp.method, exp.fipo, exp.rollout) == (same.method, same.fipo, same.rollout)
        assert exp.policy == dataclasses.replace(same.policy, ppo_mini_batch_size=exp.policy.ppo_mini_batch_size)
        assert exp.model.path != seven[exp.name].model.path
        # context: the model must hold prompt + response (Qwen2.5-Math-1.5B: 4096 natively, extended as at 7B)
        native = {"Qwen/Qwen2.5-Math-1.5B": 4096, "Qwen/Qwen2.5-0.5B-Instruct": 32768}[exp.model.path]
        context = exp.model.max_position_embeddings or native
        assert exp.data.max_prompt_length + exp.data.max_response_length <= context, exp.name
        assert evaluation(preset).max_tokens >= exp.data.max_response_length


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


@pytest.mark.parametrize("preset", GPU_PRESETS)
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
        (lambda d: d["defaults"]["rollout"].update(top_p=1.5), r"rollout.top_p: a probability mass must be in \(0, 1\]"),
        (lambda d: d["defaults"].setdefault("validation", {}).update(top_p=1.01), r"validation.top_p: a probability"),
        (lambda d: d["defaults"]["trainer"].update(seed=2**32), r"trainer.seed: must be in \[0, 2\*\*32\)"),
        (lambda d: d["defaults"]["trainer"].update(seed=-1), r"trainer.seed: must be in \[0, 2\*\*32\)"),
        # strict types: YAML's true is not 1, 16.0 is not a group size, 1 is not true, a word is not a list
        (lambda d: d["defaults"]["rollout"].update(n=True), "rollout.n: expected an integer, got True"),
        (lambda d: d["defaults"]["rollout"].update(n=16.0), "rollout.n: expected an integer, got 16.0"),
        (lambda d: d["defaults"]["reward"].update(overlong_buffer=1), "reward.overlong_buffer: expected true/false"),
        (lambda d: d["defaults"]["policy"].update(lr=True), "policy.lr: expected a finite number, got True"),
        (lambda d: d["defaults"]["data"].update(val="aime2024"), "data.val: expected a list, got 'aime2024'"),
        (lambda d: d["defaults"]["model"].update(path=7), "model.path: expected a string, got 7"),
        (lambda d: d["defaults"]["fipo"].update({1: 2}), r"qwen2.5-32b.yaml:\d+: key '1' is read by YAML as 1 \(int\)"),
        (lambda d: d["defaults"]["data"].pop("train_batch_size"),
         r"missing required key\(s\) \['train_batch_size'\]"),
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


# ------------------------------------------------------------------------------ duplicate keys, names, origins


def edit_text(path: Path, old: str, new: str):
    """Edit a spec file as text: duplicate keys do not survive a round trip through yaml."""
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    "file, old, new, key",
    [
        # the whole experiment twice: the second body (tau 0.5) trained under the label fipo-tau8
        ("presets/tiny.yaml", "  fipo-tau128:\n",
         "  fipo-tau8:  # dup\n    base: fipo\n    set:\n      fipo: {tau: 0.5}\n  fipo-tau128:\n", "fipo-tau8"),
        ("presets/tiny.yaml", "    tau: 32.0\n", "    tau: 32.0\n    tau: 0.5  # dup\n", "tau"),
        ("presets/tiny.yaml", "      fipo: {tau: 8.0}", "      fipo: {tau: 8.0, tau: 0.5}  # dup", "tau"),
        ("presets/tiny.yaml", "  checkpoint: last\n", "  checkpoint: last\n  checkpoint: best  # dup\n", "checkpoint"),
        ("methods.yaml", "    loss: fipo\n", "    loss: fipo\n    loss: vanilla  # dup\n", "loss"),
    ],
)
def test_duplicate_keys_are_refused_naming_file_line_and_key(config_copy, file, old, new, key):
    path = config_copy / file
    edit_text(path, old, new)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.endswith("# dup"))
    pattern = rf"{re.escape(str(path))}:{line}: duplicate key '{key}' \(first written at line \d+\)"
    loads = [list_experiments, load_all, ablations, evaluation] if file.startswith("presets/") else [load_all]
    for load in loads:
        with pytest.raises(SpecError, match=pattern):
            load("tiny", config_dir=config_copy)


BAD_NAMES = ["x`touch PWNED`", "../../../x", "a/b", "-rf", ".hidden", "two words", "x\n", "$(id)", "tau;ls", 8]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_experiment_names_are_refused_by_every_entry_point(config_copy, bad):
    edit_preset(config_copy, "tiny", lambda d: d["experiments"].update({bad: d["experiments"].pop("fipo-raw")}))
    message = (rf"tiny\.yaml: experiments: experiment name {re.escape(repr(bad))} is not allowed; names must match "
               rf"{re.escape(NAME_PATTERN.pattern)}" if isinstance(bad, str)
               else rf"tiny\.yaml:\d+: key '{bad}' is read by YAML as {bad} \(int\), not a name")
    for load in (list_experiments, load_all, ablations, evaluation):
        with pytest.raises(SpecError, match=message):
            load("tiny", config_dir=config_copy)
    assert not (Path.cwd() / "PWNED").exists()


@pytest.mark.parametrize("family", ["ablation-tau", "1ablation", "ablation tau", "x`id`"])
def test_ablation_family_names_must_be_rule_names(config_copy, family):
    edit_preset(config_copy, "tiny", lambda d: d["ablations"].update({family: d["ablations"].pop("ablation_tau")}))
    for load in (list_experiments, load_all, ablations):
        with pytest.raises(SpecError, match=rf"ablation family name {re.escape(repr(family))} is not allowed.*"
                                            + re.escape(FAMILY_PATTERN.pattern)):
            load("tiny", config_dir=config_copy)


def test_bad_preset_and_method_names_are_refused(config_copy):
    shutil.copy(config_copy / "presets" / "tiny.yaml", config_copy / "presets" / "x`id`.yaml")
    with pytest.raises(SpecError, match=r"x`id`\.yaml: preset name 'x`id`' is not allowed"):
        list_presets(config_copy)
    with pytest.raises(SpecError, match=r"preset name '\.\./tiny' is not allowed"):
        list_experiments("../tiny", config_dir=config_copy)
    (config_copy / "presets" / "x`id`.yaml").unlink()
    path = config_copy / "methods.yaml"
    path.write_text(path.read_text() + "\n'grpo$(id)':\n  base: grpo\n")
    with pytest.raises(SpecError, match=r"methods\.yaml: method name 'grpo\$\(id\)' is not allowed"):
        load_experiment("tiny", "fipo", config_dir=config_copy)


def test_check_name():
    assert check_name("experiment", "fipo-fclip-1.0-1.2", "here") == "fipo-fclip-1.0-1.2"
    assert NAME_PATTERN.fullmatch("qwen2.5-7b-math") and not NAME_PATTERN.fullmatch("..")
    with pytest.raises(SpecError, match=r"^here: experiment name '\.\.' is not allowed; names must match "):
        check_name("experiment", "..", "here")
    with pytest.raises(SpecError, match="ablation family name 'a-b'"):
        check_name("ablation family", "a-b", "here", FAMILY_PATTERN)


@pytest.mark.parametrize(
    "edit, message",
    [
        # a shared value is reported (from the first experiment) naming the layer it was written in
        (lambda d: d["defaults"]["fipo"].update(tau=0.0),
         r"experiment 'dapo': fipo.tau: the half-life must be > 0, got 0.0 \(set in .*tiny\.yaml, defaults\)$"),
        (lambda d: d["experiments"]["fipo-tau8"]["set"]["fipo"].update(tau=0.0),
         r"experiment 'fipo-tau8': fipo.tau: .*> 0.*\(set in .*tiny\.yaml, experiments\.fipo-tau8\)$"),
        # written by a base experiment, inherited by others: the base is named
        (lambda d: d["experiments"]["fipo"].update(set={"fipo": {"chunk_size": 1}}),
         r"experiment 'fipo': fipo.chunk_size: must be >= 2 \(set in .*tiny\.yaml, experiments\.fipo\)$"),
        (lambda d: d.setdefault("methods", {}).update(fipo={"rollout": {"n": 1}}),
         r"experiment 'fipo': rollout.n: .*\(set in .*tiny\.yaml, methods\.fipo\)$"),
        (lambda d: d["defaults"]["rollout"].update(n="8"),
         r"experiment 'dapo': rollout.n: expected an integer, got '8' \(set in .*tiny\.yaml, defaults\)$"),
        (lambda d: d["defaults"]["fipo"].update(f_clip_range=[0.8, "x"]),
         r"fipo.f_clip_range\[1\]: expected a finite number, got 'x' \(set in .*tiny\.yaml, defaults\)$"),
        (lambda d: d["experiments"]["fipo-raw"]["set"]["fipo"].update(taux=1),
         r"experiment 'fipo-raw': fipo: unknown key\(s\) \['taux'\].*\(set in .*tiny\.yaml, experiments\.fipo-raw\)$"),
        (lambda d: d["experiments"]["grpo"].update(set={"optimizer": {"lr": 1}}),
         r"unknown section\(s\) \['optimizer'\].*\(set in .*tiny\.yaml, experiments\.grpo\)$"),
        (lambda d: d["experiments"]["grpo"].update(set={"policy": 3}),
         r"experiment 'grpo': policy: expected a mapping, got 3 \(set in .*tiny\.yaml, experiments\.grpo\)$"),
        # a cross-key rule names both layers when they differ
        (lambda d: d["experiments"]["dapo"].update(set={"policy": {"ppo_mini_batch_size": 5}}),
         r"ppo_mini_batch_size: must divide .*\(set in .*tiny\.yaml, experiments\.dapo; "
         r"data\.train_batch_size set in .*tiny\.yaml, defaults\)$"),
    ],
)
def test_errors_name_the_layer_that_wrote_the_value(config_copy, edit, message):
    edit_preset(config_copy, "tiny", edit)
    with pytest.raises(SpecError, match=message):
        load_all("tiny", config_dir=config_copy)


def test_errors_in_methods_yaml_name_it(config_copy):
    path = config_copy / "methods.yaml"
    edit_text(path, "    clip_ratio_high: 0.28\n", "    clip_ratio_high: -0.28\n")
    with pytest.raises(SpecError, match=r"experiment 'dapo': policy.clip_ratio_high: must be >= 0, got -0.28 "
                                        r"\(set in .*methods\.yaml, dapo\)$"):
        load_all("tiny", config_dir=config_copy)


def test_a_value_overridden_later_is_blamed_on_the_later_layer(config_copy):
    edit_preset(config_copy, "tiny", lambda d: d["defaults"]["fipo"].update(tau=-1.0))
    edit_preset(config_copy, "tiny", lambda d: d["experiments"]["dapo"].update(set={"fipo": {"tau": -2.0}}))
    with pytest.raises(SpecError, match=r"got -2.0 \(set in .*tiny\.yaml, experiments\.dapo\)$"):
        load_experiment("tiny", "dapo", config_dir=config_copy)
    with pytest.raises(SpecError, match=r"got -1.0 \(set in .*tiny\.yaml, defaults\)$"):
        load_experiment("tiny", "grpo", config_dir=config_copy)


def test_evaluation_errors_name_the_section(config_copy):
    edit_preset(config_copy, "tiny", lambda d: d["evaluation"].update(top_p=float("nan")))
    with pytest.raises(SpecError, match=r"evaluation.top_p: expected a finite number, got nan "
                                        r"\(set in .*tiny\.yaml, evaluation\)$"):
        evaluation("tiny", config_dir=config_copy)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("trainer", "save_freq", 0, "trainer.save_freq: must be >= 1, got 0"),
        ("trainer", "save_freq", -1, "trainer.save_freq: must be >= 1"),
        ("validation", "test_freq", 0, "validation.test_freq: must be >= 1, got 0"),
        ("validation", "test_freq", -1, "validation.test_freq: must be >= 1"),
        ("trainer", "timeout_s", 0, r"trainer.timeout_s: must be > 0 or null"),
        ("trainer", "timeout_s", -60, r"trainer.timeout_s: must be > 0 or null"),
        ("data", "train", "tiny-trian", r"data.train: unknown dataset\(s\) \['tiny-trian'\]; allowed: .*tiny-train"),
        ("data", "val", ["tiny-val", "aime2026"],
         r"data.val: unknown dataset\(s\) \['aime2026'\]; allowed: .*aime2024"),
        ("policy", "lr", float("nan"), "policy.lr: expected a finite number, got nan"),
        ("policy", "weight_decay", float("inf"), "policy.weight_decay: expected a finite number, got inf"),
        ("fipo", "tau", float("nan"), "fipo.tau: expected a finite number, got nan"),
        ("fipo", "safety_threshold", float("inf"), "fipo.safety_threshold: expected a finite number"),
        ("fipo", "filter_threshold", float("nan"), "fipo.filter_threshold: expected a finite number"),
        ("fipo", "f_clip_range", [0.8, float("inf")], r"fipo.f_clip_range\[1\]: expected a finite number"),
        ("model", "rope_theta", float("-inf"), "model.rope_theta: expected a finite number, got -inf"),
    ],
)
def test_values_that_fail_late_are_refused_up_front(config_copy, section, key, value, message):
    edit_preset(config_copy, "tiny", lambda d: d["defaults"].setdefault(section, {}).update({key: value}))
    with pytest.raises(SpecError, match=rf"experiment 'dapo': {message}.*\(set in .*tiny\.yaml, defaults\)$"):
        load_all("tiny", config_dir=config_copy)


def test_nan_written_as_yaml_is_refused(config_copy):
    edit_text(config_copy / "presets" / "tiny.yaml", "    lr: 3.0e-4\n", "    lr: .nan\n")
    with pytest.raises(SpecError, match=r"policy.lr: expected a finite number, got nan \(set in .*, defaults\)"):
        load_all("tiny", config_dir=config_copy)


def test_a_null_timeout_is_still_allowed(config_copy):
    edit_preset(config_copy, "tiny", lambda d: d["defaults"]["trainer"].update(timeout_s=None))
    assert all(exp.trainer.timeout_s is None for exp in load_all("tiny", config_dir=config_copy))


def _on_policy(d):
    d["experiments"]["fipo"].setdefault("set", {})["policy"] = {"ppo_mini_batch_size": 512}


def _bypass(d):
    d["defaults"]["engine"]["algorithm"] = {"rollout_correction": {"bypass_mode": True}}


@pytest.mark.parametrize("edit, key", [(_on_policy, "policy.ppo_mini_batch_size"),
                                       (_bypass, "engine.algorithm.rollout_correction.bypass_mode")])
def test_on_policy_fipo_is_refused_unless_asked_for(config_copy, edit, key):
    """One update per rollout batch (or bypass_mode): f = 1 everywhere, FIPO would silently be DAPO."""
    edit_preset(config_copy, "qwen2.5-32b", edit)
    with pytest.raises(SpecError, match=rf"{re.escape(key)}.*(DAPO|rollout engine).*fipo.allow_on_policy: true"):
        load_experiment("qwen2.5-32b", "fipo", config_dir=config_copy)
    assert load_experiment("qwen2.5-32b", "dapo", config_dir=config_copy)  # DAPO is on-policy by design: fine

    def allow(d):
        d["experiments"]["fipo"].setdefault("set", {}).setdefault("fipo", {})["allow_on_policy"] = True

    allowed = config_copy.parent / "allowed"  # another folder: presets are cached per folder within a process
    shutil.copytree(config_copy, allowed)
    edit_preset(allowed, "qwen2.5-32b", allow)
    exp = load_experiment("qwen2.5-32b", "fipo", config_dir=allowed)
    assert exp.fipo.allow_on_policy


def test_a_generation_batch_that_would_stop_grpo_at_its_first_step_is_refused(config_copy):
    """verl 0.9.1 fetches a step's prompts in whole gen_batch_size chunks when dynamic sampling is off (GRPO): a
    generation batch written for DAPO in the preset's defaults stopped GRPO at its first step."""
    edit_preset(config_copy, "qwen2.5-32b", lambda d: d["defaults"]["data"].update(gen_batch_size=1536))
    with pytest.raises(SpecError, match=r"experiment 'grpo': data.gen_batch_size: 1536 without dynamic sampling: "
                                        r"verl 0.9.1 fetches .*train_batch_size=512 .*\(set in .*qwen2.5-32b.yaml, "
                                        r"defaults; algorithm.filter_groups set in .*methods.yaml, grpo\)$"):
        load_experiment("qwen2.5-32b", "grpo", config_dir=config_copy)
    assert load_experiment("qwen2.5-32b", "dapo", config_dir=config_copy).data.gen_batch_size == 1536


def test_allowing_on_policy_does_not_change_a_runs_fingerprint(config_copy):
    from fipo.run_folder import spec_fingerprint

    before = spec_fingerprint(load_experiment("qwen2.5-32b", "fipo", config_dir=config_copy), "v")
    allowed = config_copy.parent / "allowed"
    shutil.copytree(config_copy, allowed)
    edit_preset(allowed, "qwen2.5-32b",
                lambda d: d["experiments"]["fipo"].setdefault("set", {}).setdefault("fipo", {}).update(allow_on_policy=True))
    exp = load_experiment("qwen2.5-32b", "fipo", config_dir=allowed)
    assert exp.fipo.allow_on_policy and spec_fingerprint(exp, "v") == before


def test_planning_validates_every_fipo_experiment_without_importing_torch():
    """Snakemake validates every spec when it plans; torch there cost 3.5 s of each `snakemake -n`."""
    code = ("import sys; from fipo.spec import list_presets, load_all; from fipo.analysis import catalog; "
            "from fipo.run_folder import spec_fingerprint; "
            "n = sum(e.policy.loss == 'fipo' for p in list_presets() for e in load_all(p)); "
            "print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fipo_experiments, torch_imported = out.stdout.split()
    assert int(fipo_experiments) > 20 and torch_imported == "False"


def test_a_yaml_key_that_is_not_a_string_is_refused_as_written(config_copy):
    path = config_copy / "presets" / "tiny.yaml"
    path.write_text(path.read_text().replace("experiments:\n", "experiments:\n  no: {method: dapo}\n", 1))
    with pytest.raises(SpecError, match=r"tiny.yaml:\d+: key 'no' is read by YAML as False \(bool\), not a name; "
                                        r"quote it \('no'\)"):
        load_experiment("tiny", "dapo", config_dir=config_copy)


def test_two_merge_keys_in_one_mapping_are_refused(config_copy):
    path = config_copy / "presets" / "tiny.yaml"
    text = "anchors:\n  a: &a {x: 1}\n  b: &b {y: 2}\n  both:\n    <<: *a\n    <<: *b\n"
    path.write_text(text + path.read_text())
    with pytest.raises(SpecError, match=r"tiny.yaml:6: duplicate key '<<' \(first written at line 5\)"):
        load_experiment("tiny", "dapo", config_dir=config_copy)


def test_a_name_over_100_characters_is_refused_before_it_reaches_a_file_name(config_copy):
    name = "x" * 101
    edit_preset(config_copy, "tiny", lambda d: d["experiments"].update({name: {"method": "dapo"}}))
    with pytest.raises(SpecError, match=r"experiment name x{20}\.\.\. is 101 characters; at most 100"):
        load_experiment("tiny", "dapo", config_dir=config_copy)


@pytest.mark.parametrize("engine, message", [
    ({"trainer": {"save_freq": -1}}, r"engine.trainer.save_freq: the spec's trainer.save_freq writes this verl key; "
                                     r"set trainer.save_freq instead"),
    ({"actor_rollout_ref": {"actor": {"ppo_mini_batch_size": 32}}},
     r"engine.actor_rollout_ref.actor.ppo_mini_batch_size: the spec's policy.ppo_mini_batch_size writes"),
    ({"data": {"seed": 3}}, r"engine.data.seed: this verl key is computed from the spec's trainer.seed"),
    ({"trainer": {"resume_mode": "disable"}}, r"engine.trainer.resume_mode: this verl key is set by the workbench"),
    ({"+reward": {"reward_kwargs": {"overlong_buffer_cfg": {"len": 8}}}}, r"engine.\+reward: this verl key holds reward\."),
])
def test_an_engine_entry_cannot_shadow_a_key_the_spec_writes(config_copy, engine, message):
    edit_preset(config_copy, "tiny", lambda d: d["experiments"]["fipo"].setdefault("set", {}).update(engine=engine))
    with pytest.raises(SpecError, match=message):
        load_experiment("tiny", "fipo", config_dir=config_copy)


def test_every_key_rendered_for_every_experiment_is_owned_by_the_spec_the_workbench_or_engine():
    """fipo.verl_keys lists every key fipo.verl_command renders, and a spec key's value reaches verl unchanged."""
    from fipo.run_folder import RunFolder
    from fipo.verl_command import verl_items
    from fipo.verl_keys import DERIVED, FIXED, SPEC_KEYS, bare

    owned = {bare(k) for k in [*SPEC_KEYS, *DERIVED, *FIXED]}
    for preset in list_presets():
        for exp in load_all(preset):
            items = verl_items(exp, data_dir=Path("d"), run=RunFolder(Path("r")), ray_address="auto")
            unowned = [k for k, _ in items if bare(k) not in owned and k not in exp.engine]
            assert not unowned, (preset, exp.name, unowned)
            rendered = dict(items)
            for key, spec in SPEC_KEYS.items():
                section, field = spec.split(".")
                assert rendered[key] == getattr(getattr(exp, section), field), (preset, exp.name, key)
