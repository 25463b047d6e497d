"""The CPU rehearsal of a GPU preset's experiment (fipo/rehearse.py): the scaling rules for every experiment of every
GPU preset, checked against the rules themselves and against verl's own config tree; one real 2-step rehearsal."""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_verl_command import GPU_PRESETS, compose_overrides, hydra  # noqa: F401 (hydra: the fixture)
from verl.utils.config import omega_conf_to_dataclass, validate_config

from fipo import rehearse
from fipo.spec import CONFIG_DIR, SpecError, list_experiments, load_experiment
from fipo.rehearse import (CPU_VALUES, STEPS, TINY_CONTEXT, TINY_PROMPT_TOKENS, Scale, check_run, expected_steps,
                           frequencies, preset_scale, rehearsal_folder, render)
from fipo.rehearse import rehearsal as build_rehearsal
from fipo.run_folder import RunFolder
from fipo.verl_command import verl_overrides
from fipo.verl_keys import bare

CASES = [(preset, name) for preset in GPU_PRESETS for name in list_experiments(preset)]
RUN = RunFolder(Path("/results/rehearsal/p/e"))


@functools.lru_cache(maxsize=None)
def rehearsal(preset, name):
    """One build per experiment of the shipped presets (each loads its whole preset for the factors)."""
    return build_rehearsal(preset, name)


def test_the_rehearsed_presets_are_the_gpu_presets():
    assert rehearse.gpu_presets() == GPU_PRESETS


# Written down so that a change to a preset that changes its rehearsal is seen (and its cost thought about).
@pytest.mark.parametrize("preset, scale", [
    ("qwen2.5-0.5b", Scale(prompts=2, samples=2, length=16)),
    ("qwen2.5-math-1.5b", Scale(prompts=8, samples=8, length=32)),
    ("qwen2.5-7b-math", Scale(prompts=32, samples=8, length=32)),
    ("qwen2.5-32b", Scale(prompts=32, samples=8, length=64)),
])
def test_each_gpu_presets_factors(preset, scale):
    assert preset_scale(preset) == scale


def _token_limits(exp):
    """{bare verl key: value} of the FSDP engine's per-GPU token budgets."""
    return {bare(k): v for k, v in exp.engine.items() if bare(k).endswith(rehearse.FSDP_TOKEN_LIMIT)}


def _sequence_parallel(exp):
    return exp.engine.get("actor_rollout_ref.actor.ulysses_sequence_parallel_size", 1)


@pytest.mark.parametrize("preset, name", CASES)
def test_sizes_are_integers_that_keep_the_presets_ratios(preset, name):
    r = rehearsal(preset, name)  # validated like any spec (with_overrides) on the way
    src, exp, s = r.source, r.experiment, r.scale
    for value in (exp.data.train_batch_size, exp.policy.ppo_mini_batch_size, exp.rollout.n, exp.validation.n,
                  exp.data.max_prompt_length, exp.data.max_response_length, exp.reward.overlong_buffer_len):
        assert isinstance(value, int) and value >= 1
    # prompts: updates per step, the generation/train ratio and the epochs exactly the preset's
    assert exp.data.train_batch_size * s.prompts == src.data.train_batch_size
    assert exp.policy.ppo_mini_batch_size * s.prompts == src.policy.ppo_mini_batch_size
    assert exp.policy.ppo_epochs == src.policy.ppo_epochs
    if src.data.gen_batch_size is None:
        assert exp.data.gen_batch_size is None
    else:
        assert exp.data.gen_batch_size * s.prompts == src.data.gen_batch_size
    # samples per prompt, in training and validation; a group keeps at least 2
    assert exp.rollout.n * s.samples == src.rollout.n and exp.rollout.n >= 2
    assert exp.validation.n * s.samples == src.validation.n
    # lengths: every one exactly divided, so the response/buffer ratio is the preset's
    assert exp.data.max_prompt_length * s.length == src.data.max_prompt_length
    assert exp.data.max_response_length * s.length == src.data.max_response_length
    assert exp.reward.overlong_buffer_len * s.length == src.reward.overlong_buffer_len
    assert exp.reward.overlong_buffer == src.reward.overlong_buffer


@pytest.mark.parametrize("preset, name", CASES)
def test_lengths_fit_the_tiny_model_and_token_limits_keep_their_margin(preset, name):
    r = rehearsal(preset, name)
    src, exp, s = r.source, r.experiment, r.scale
    sequence = exp.data.max_prompt_length + exp.data.max_response_length
    assert sequence <= TINY_CONTEXT and exp.data.max_prompt_length >= TINY_PROMPT_TOKENS
    limits, source_limits = _token_limits(exp), _token_limits(src)
    assert limits.keys() == source_limits.keys() and limits
    sp = _sequence_parallel(src)
    for key, limit in limits.items():
        # one CPU device holds what a sequence-parallel group of sp GPUs held together
        assert limit * s.length == source_limits[key] * sp, key
        assert (limit >= sequence) == (source_limits[key] * sp >= src.data.max_prompt_length
                                       + src.data.max_response_length), key


@pytest.mark.parametrize("preset, name", CASES)
def test_two_steps_validate_and_save_and_the_run_is_on_the_cpu(preset, name):
    r = rehearsal(preset, name)
    exp = r.experiment
    assert exp.trainer.total_training_steps == STEPS
    assert 1 in expected_steps(min(exp.validation.test_freq, exp.trainer.save_freq))
    assert {exp.validation.test_freq, exp.trainer.save_freq} <= {1, STEPS}
    trainer = exp.trainer
    assert (trainer.device, exp.rollout.engine, trainer.nnodes, trainer.n_gpus_per_node) == ("cpu", "hf", 1, 1)
    assert (exp.data.train, exp.data.val) == ("tiny-train", ["tiny-val"])
    assert exp.model.path == load_experiment("tiny", "fipo").model.path
    for key, value in exp.engine.items():
        leaf = bare(key).rsplit(".", 1)[-1]
        if leaf in CPU_VALUES:
            assert value == CPU_VALUES[leaf][0], key


@pytest.mark.parametrize("preset, name", CASES)
def test_everything_not_listed_is_the_presets(preset, name):
    r = rehearsal(preset, name)
    listed = {c.setting for c in r.changes}
    for section in ("model", "data", "reward", "algorithm", "policy", "fipo", "rollout", "validation", "trainer"):
        for field, value in vars(getattr(r.source, section)).items():
            if f"{section}.{field}" not in listed:
                assert getattr(getattr(r.experiment, section), field) == value, f"{section}.{field}"
    for key, value in r.source.engine.items():
        if f"engine.{key}" not in listed:
            assert r.experiment.engine[key] == value, key
    for change in r.changes:  # and every listed change is what the rehearsal runs
        section, _, key = change.setting.partition(".")
        got = r.experiment.engine[key] if section == "engine" else getattr(getattr(r.experiment, section), key)
        assert got == change.rehearsal, change.setting


@pytest.mark.parametrize("preset, name", CASES)
def test_the_rehearsal_composes_and_instantiates_in_verls_config_tree(hydra, preset, name):  # noqa: F811
    exp = rehearsal(preset, name).experiment
    cfg = compose_overrides(verl_overrides(exp, data_dir=Path("/data"), run=RUN, results_dir=Path("/results")))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # what verl's workers do
    validate_config(cfg, use_reference_policy=False, use_critic=False)  # what main_ppo does
    assert actor.ppo_mini_batch_size == exp.policy.ppo_mini_batch_size and actor.use_dynamic_bsz
    assert actor.ulysses_sequence_parallel_size == 1 and cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 1
    assert cfg.trainer.device == "cpu" and cfg.actor_rollout_ref.rollout.name == "hf"
    assert cfg.actor_rollout_ref.model.path == "/results/tiny/base_model"
    assert list(cfg.data.train_files) == ["/data/tiny/train.parquet"]
    assert (cfg.trainer.total_training_steps, cfg.trainer.test_freq) == (STEPS, exp.validation.test_freq)
    sampler = cfg.trainer.v1.sampler.sampler_kwargs  # the CPU support's replay buffer, from the scaled sizes
    assert sampler.train_batch_size == exp.data.train_batch_size


def test_frequencies_keep_their_order_within_two_steps():
    assert frequencies(5, 10) == (1, 2)  # every validation, every other one saved
    assert frequencies(10, 5) == (2, 1)
    assert frequencies(5, 5) == (1, 1)
    assert expected_steps(1) == [1, 2] and expected_steps(2) == [2]


def test_the_cpu_values_are_the_tiny_presets_where_it_sets_them():
    tiny = load_experiment("tiny", "fipo").engine
    for key, value in tiny.items():
        leaf = bare(key).rsplit(".", 1)[-1]
        if leaf in CPU_VALUES:
            assert value == CPU_VALUES[leaf][0], key


def test_the_table_lists_every_change_with_its_reason():
    r = rehearsal("qwen2.5-0.5b", "fipo")
    text = render(r)
    assert "prompts / 2, samples per prompt / 2, lengths / 16" in text
    for change in r.changes:
        assert change.why and change.setting.removeprefix("engine.") in text
    row = next(line for line in text.splitlines() if line.startswith("policy.ppo_mini_batch_size"))
    assert row.split()[1:3] == ["4", "2"] and "8 updates per step kept" in row
    assert "use_remove_padding" in text and "flash-attn" in text


def test_the_tiny_preset_is_not_rehearsed():
    with pytest.raises(SpecError, match="already runs on the CPU"):
        build_rehearsal("tiny", "fipo")


@pytest.fixture
def config_copy(tmp_path):
    target = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, target)
    return target


def edit_preset(config_dir, preset, edit):
    path = config_dir / "presets" / f"{preset}.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_length_that_does_not_divide_is_rounded_down_and_said_so(config_copy):
    edit_preset(config_copy, "qwen2.5-0.5b", lambda d: d["defaults"]["data"].update(max_response_length=4000))
    r = build_rehearsal("qwen2.5-0.5b", "dapo", config_dir=config_copy)
    change = next(c for c in r.changes if c.setting == "data.max_response_length")
    assert change.rehearsal == 250 and "rounded down from" not in change.why  # 4000 / 16 = 250 exactly
    edit_preset(config_copy, "qwen2.5-0.5b", lambda d: d["defaults"]["data"].update(max_response_length=4001))
    change = next(c for c in build_rehearsal("qwen2.5-0.5b", "dapo", config_dir=config_copy).changes
                  if c.setting == "data.max_response_length")
    assert change.rehearsal == 250 and "rounded down from 250.062" in change.why


def test_a_prompt_the_length_factor_would_cut_is_refused(config_copy):
    edit_preset(config_copy, "qwen2.5-0.5b", lambda d: d["defaults"]["data"].update(max_prompt_length=512,
                                                                                   max_response_length=65536))
    with pytest.raises(SpecError, match="shorter than the tiny task's"):
        build_rehearsal("qwen2.5-0.5b", "dapo", config_dir=config_copy)


def test_fixed_micro_batches_are_refused_naming_the_key(config_copy):
    def fixed(d):
        actor = d["defaults"]["engine"]["actor_rollout_ref"]["actor"]
        actor["use_dynamic_bsz"] = False
        actor["ppo_micro_batch_size_per_gpu"] = 4

    edit_preset(config_copy, "qwen2.5-0.5b", fixed)
    with pytest.raises(SpecError, match="ppo_micro_batch_size_per_gpu"):
        build_rehearsal("qwen2.5-0.5b", "dapo", config_dir=config_copy)


def _fake_run(run: RunFolder, validated=(0, 1, 2), trained=(1, 2), saved=(2,)):
    lines = [{"step": s, "data": {"timing_s/step": 1.0}} for s in trained]
    lines += [{"step": s, "data": {"val-core/tiny/acc/mean@16": 0.5}} for s in validated]
    run.run_dir.mkdir(parents=True)
    run.metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for s in saved:
        (run.checkpoints / f"global_step_{s}" / "actor").mkdir(parents=True)
    run.rollouts.mkdir()
    for s in trained:
        (run.rollouts / f"{s}.jsonl").write_text("{}\n")
    (run.run_dir / "token_dump.rank0.jsonl").write_text("{}\n")


def test_the_checks_after_the_run(tmp_path):
    exp = rehearsal("qwen2.5-0.5b", "fipo").experiment  # validates at 0, 1, 2; saves at 2
    good = rehearsal_folder(tmp_path, "p", "good")
    _fake_run(good)
    assert check_run(good, exp) == []
    short = rehearsal_folder(tmp_path, "p", "short")
    _fake_run(short, validated=(0, 1), trained=(1,), saved=())
    problems = " ".join(check_run(short, exp))
    assert "trained steps logged" in problems and "validations logged at steps [0, 1]" in problems
    assert "at [], expected [2]" in problems


# The 7B preset: 4 nodes of 8 GPUs, dynamic batch sizes and gradient checkpointing brought down to one CPU, in about
# half the CPU time of the 0.5B preset's rehearsal (whose 16 validation samples per problem dominate it). `make
# rehearse` runs every experiment of every preset.
REHEARSED = ("qwen2.5-7b-math", "fipo")


@pytest.mark.slow
def test_a_gpu_presets_fipo_rehearses_end_to_end(tiny_world):
    """The real trainer, 2 steps: the table first, then verl, then the checks (which the command makes itself and
    this test makes again on the folder)."""
    preset, experiment = REHEARSED
    cmd = [sys.executable, "-m", "fipo", "rehearse", "--preset", preset, "--experiment", experiment,
           "--data-dir", str(tiny_world["data"]), "--results-dir", str(tiny_world["results"])]
    # The command's own hang guard (trainer.timeout_s, on progress in the run folder) stops a stalled run; this
    # limit only catches a hang of the command outside verl.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                         env={**os.environ, "RAY_TMPDIR": str(tiny_world["ray"])})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert out.stdout.index("policy.ppo_mini_batch_size") < out.stdout.index("[rehearse] passed")
    run = rehearsal_folder(tiny_world["results"], preset, experiment)
    assert check_run(run, rehearsal(preset, experiment).experiment) == []
    assert (run.checkpoints / "global_step_2" / "actor").is_dir()
    assert not (tiny_world["results"] / preset).exists()  # apart from the preset's real runs
