"""Every paper experiment's rendered overrides compose against the installed verl's own config tree, the
actor config instantiates as verl's workers do, and the composed values are the spec's."""

import os
from pathlib import Path

import pytest
import verl
from hypothesis import given
from hypothesis import strategies as st
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from verl.utils.config import omega_conf_to_dataclass, validate_config

from fipo.data import dataset_path
from fipo.spec import list_experiments, list_presets, load_experiment
from fipo.run_folder import RunFolder
from fipo.verl_command import command_line, verl_overrides
from fipo.hydra_values import hydra_value
from fipo.verl_plugin import FIPOPolicyLossConfig

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
# Every preset that trains on GPUs (all but the CPU one), found rather than listed: a new preset is covered by the
# tests below without anyone remembering to add it.
GPU_PRESETS = [p for p in list_presets() if load_experiment(p, list_experiments(p)[0]).trainer.device == "cuda"]
CASES = [(preset, name) for preset in GPU_PRESETS for name in list_experiments(preset)]
RUN = RunFolder(Path("/runs/x"))


@pytest.fixture(scope="module")
def hydra():
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        yield


def compose_overrides(overrides):
    return compose(config_name="ppo_trainer", overrides=overrides)


@pytest.mark.parametrize("preset, name", CASES)
def test_experiment_composes_and_instantiates_with_its_values(hydra, preset, name):
    exp = load_experiment(preset, name)
    cfg = compose_overrides(verl_overrides(exp, data_dir=Path("/data"), run=RUN))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # what verl's workers do
    validate_config(cfg, use_reference_policy=False, use_critic=False)  # what main_ppo does

    loss = actor.policy_loss
    assert loss.loss_mode == exp.policy.loss
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (
        exp.policy.clip_ratio_low,
        exp.policy.clip_ratio_high,
        exp.policy.clip_ratio_c,
    )
    assert actor.ppo_mini_batch_size == exp.policy.ppo_mini_batch_size
    assert actor.loss_agg_mode == exp.policy.loss_agg_mode
    assert actor.optim.lr == exp.policy.lr and actor.optim.clip_grad == exp.policy.grad_clip
    assert actor.use_kl_loss is False
    if exp.policy.loss == "fipo":
        assert isinstance(loss, FIPOPolicyLossConfig)
        assert loss.tau == exp.fipo.tau
        assert (1 - loss.f_clip_low, 1 + loss.f_clip_high) == pytest.approx(tuple(exp.fipo.f_clip_range))
        assert loss.filter_ratio == exp.fipo.filter_ratio
        assert loss.safety_threshold == exp.fipo.safety_threshold
    else:
        assert not isinstance(loss, FIPOPolicyLossConfig)

    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.n == exp.rollout.n and rollout.name == "vllm"
    assert (rollout.temperature, rollout.top_p) == (1.0, 1.0)
    assert (rollout.val_kwargs.n, rollout.val_kwargs.temperature, rollout.val_kwargs.top_p) == (32, 1.0, 0.7)
    assert rollout.val_kwargs.do_sample is True
    assert cfg.data.max_prompt_length == exp.data.max_prompt_length
    assert cfg.data.max_response_length == exp.data.max_response_length
    assert list(cfg.data.val_files) == ["/data/aime2024.parquet"]
    assert cfg.reward.reward_manager.name == "dapo"
    overlong = cfg.reward.reward_kwargs.overlong_buffer_cfg
    assert overlong.enable == exp.reward.overlong_buffer and overlong.len == exp.reward.overlong_buffer_len
    assert cfg.reward.reward_kwargs.max_resp_len == exp.data.max_response_length
    assert cfg.algorithm.filter_groups.enable == (exp.method != "grpo")
    assert cfg.algorithm.filter_groups.metric == "acc"
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.use_kl_in_reward is False
    assert list(cfg.trainer.logger) == ["console", "file"]
    assert cfg.trainer.default_local_dir == "/runs/x/checkpoints"
    assert cfg.trainer.resume_mode == "auto"
    assert (cfg.trainer.test_freq, cfg.trainer.save_freq) == (exp.validation.test_freq, exp.trainer.save_freq)
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (exp.trainer.nnodes, exp.trainer.n_gpus_per_node)
    assert cfg.data.seed == exp.trainer.seed == cfg.actor_rollout_ref.rollout.seed


def test_every_gpu_preset_is_covered():
    assert {"qwen2.5-32b", "qwen2.5-7b-math", "qwen2.5-math-1.5b", "qwen2.5-0.5b"} <= set(GPU_PRESETS)
    assert "tiny" not in GPU_PRESETS


# The GPUs each preset's name (and README) promises, and the parallel layout that must fit them.
LAYOUTS = {"qwen2.5-math-1.5b": (1, 8), "qwen2.5-0.5b": (1, 1), "qwen2.5-7b-math": (4, 8), "qwen2.5-32b": (16, 8)}


@pytest.mark.parametrize("preset", sorted(LAYOUTS))
def test_each_preset_runs_on_the_gpus_it_promises(hydra, preset):
    nodes, per_node = LAYOUTS[preset]
    for name in list_experiments(preset):
        cfg = compose_overrides(verl_overrides(load_experiment(preset, name), data_dir=Path("d"), run=RUN))
        assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (nodes, per_node), name
        gpus = nodes * per_node
        actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
        sp, tp = actor.ulysses_sequence_parallel_size, rollout.tensor_model_parallel_size
        assert gpus % sp == 0 and gpus % tp == 0 and tp <= per_node, (name, sp, tp)  # a vLLM engine within a node
        # every data-parallel rank gets whole responses of a PPO mini-batch
        assert actor.ppo_mini_batch_size * rollout.n % (gpus // sp) == 0, name


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_fipo_updates_off_policy_and_dapo_as_its_baseline(hydra, preset):
    """FIPO's weights leave 1 only from a step's second PPO update on (REPRODUCTION_NOTES): every FIPO run of every
    GPU preset takes several updates per step, as composed for verl (Table 2/3: FIPO 8, DAPO 16)."""
    for name in list_experiments(preset):
        exp = load_experiment(preset, name)
        cfg = compose_overrides(verl_overrides(exp, data_dir=Path("d"), run=RUN))
        updates = cfg.data.train_batch_size // cfg.actor_rollout_ref.actor.ppo_mini_batch_size
        if exp.policy.loss == "fipo":
            assert updates * cfg.actor_rollout_ref.actor.ppo_epochs > 1 and not exp.fipo.allow_on_policy, name
        if name in ("fipo", "dapo"):  # the paper's updates per step, which the smaller presets keep
            assert updates == {"fipo": 8, "dapo": 16}[name], (preset, name, updates)


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_runs_without_dynamic_sampling_get_their_prompts_from_verls_sync_trainer(hydra, preset):
    """verl 0.9.1's v1 trainer (sync mode) keeps data.gen_batch_size when dynamic sampling is off and fetches each
    step's train_batch_size prompts in whole gen_batch_size chunks: its own check, run on the composed config."""
    from types import SimpleNamespace

    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    class Fetched(Exception):
        pass

    def fetch():
        raise Fetched  # the divisibility check passed; no data needed beyond this point

    for name in list_experiments(preset):
        cfg = compose_overrides(verl_overrides(load_experiment(preset, name), data_dir=Path("d"), run=RUN))
        if cfg.algorithm.filter_groups.enable:
            continue  # verl sets gen_batch_size to 1 and refills exactly
        assert cfg.trainer.v1.trainer_mode == "sync", name
        with pytest.raises(Fetched):
            PPOTrainer._next_train_batch(SimpleNamespace(config=cfg, _fetch_one_gen_batch=fetch))


def test_paper_values_of_the_key_runs(hydra):
    big = compose_overrides(verl_overrides(load_experiment("qwen2.5-32b", "fipo"), data_dir=Path("d"), run=RUN))
    assert big.actor_rollout_ref.actor.ppo_mini_batch_size == 64 and big.data.train_batch_size == 512
    assert big.actor_rollout_ref.actor.policy_loss.f_clip_low == 0.0  # [1.0, 1.2]
    assert big.reward.reward_kwargs.overlong_buffer_cfg.len == 4096
    dapo = compose_overrides(verl_overrides(load_experiment("qwen2.5-32b", "dapo"), data_dir=Path("d"), run=RUN))
    assert dapo.actor_rollout_ref.actor.ppo_mini_batch_size == 32
    seven = compose_overrides(verl_overrides(load_experiment("qwen2.5-7b-math", "fipo"), data_dir=Path("d"), run=RUN))
    assert seven.actor_rollout_ref.rollout.n == 32 and seven.data.max_response_length == 10240
    assert seven.actor_rollout_ref.model.override_config.max_position_embeddings == 32768
    assert seven.actor_rollout_ref.actor.policy_loss.f_clip_low == pytest.approx(0.2)  # [0.8, 1.2]
    assert seven.actor_rollout_ref.actor.policy_loss.safety_threshold == 3.0
    raw = compose_overrides(verl_overrides(load_experiment("qwen2.5-32b", "fipo-raw"), data_dir=Path("d"), run=RUN))
    assert raw.actor_rollout_ref.actor.policy_loss.filter_ratio is False


def test_a_misspelt_verl_key_fails_to_compose(hydra):
    overrides = verl_overrides(load_experiment("qwen2.5-32b", "fipo"), data_dir=Path("d"), run=RUN)
    compose_overrides(overrides)  # the real list composes...
    bad = [o.replace("actor_rollout_ref.actor.clip_ratio_high=", "actor_rollout_ref.actor.clip_ratio_hihg=") for o in overrides]
    assert bad != overrides
    with pytest.raises(ConfigCompositionException, match="clip_ratio_hihg"):
        compose_overrides(bad)  # ... a misspelt one does not


def test_a_misspelt_fipo_knob_fails_at_instantiation(hydra):
    overrides = verl_overrides(load_experiment("qwen2.5-32b", "fipo"), data_dir=Path("d"), run=RUN)
    bad = [o.replace("policy_loss.tau=", "policy_loss.tua=") for o in overrides]
    cfg = compose_overrides(bad)  # '+' keys compose whatever their name...
    with pytest.raises(Exception, match="tua"):
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # ... the dataclass rejects the unknown field


def test_command_line_is_one_shell_line_that_round_trips():
    import shlex

    overrides = verl_overrides(load_experiment("qwen2.5-32b", "fipo"), data_dir=Path("my data"), run=RUN)
    line = command_line(overrides)
    assert "\n" not in line and line.startswith("python -m verl.trainer.main_ppo ")
    assert shlex.split(line)[3:] == overrides


def test_ray_address_for_an_existing_cluster(hydra):
    exp = load_experiment("qwen2.5-32b", "fipo")
    cfg = compose_overrides(verl_overrides(exp, data_dir=Path("d"), run=RUN, ray_address="10.0.0.1:6379"))
    assert cfg.ray_kwargs.ray_init.address == "10.0.0.1:6379"


@pytest.mark.parametrize(
    "value, text",
    [(True, "true"), (None, "null"), (1e-6, "1e-06"), (["a", "b"], "[a,b]"), ("Qwen/Qwen2.5-32B", "Qwen/Qwen2.5-32B"),
     ("a b", "'a b'"), ("x=y", "'x=y'")],
)
def test_hydra_value_formatting(value, text):
    assert hydra_value(value) == text


@given(st.text())
def test_any_string_survives_hydra_and_omegaconf(text):
    """Paths with spaces, non-ASCII, '#', quotes, backslashes or '${' reach verl exactly as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    (override,) = OverridesParser.create().parse_overrides([f"a.b={hydra_value(text)}"])
    assert OmegaConf.create({"k": override.value()}).k == text


def test_odd_paths_compose_into_verls_config(hydra):
    odd = Path("/tmp/x y/résultats #1/${oops}/it's")
    exp = load_experiment("qwen2.5-32b", "fipo")
    cfg = compose_overrides(verl_overrides(exp, data_dir=odd / "data", run=RunFolder(odd / "run")))
    assert cfg.trainer.default_local_dir == str(odd / "run" / "checkpoints")
    assert list(cfg.data.train_files) == [str(dataset_path("dapo-math-17k", odd / "data"))]


def test_portable_overrides_ignore_where_a_run_lies_but_not_what_it_computes():
    from fipo.spec import with_overrides
    from fipo.verl_command import portable_overrides

    fipo, tau8 = load_experiment("tiny", "fipo"), load_experiment("tiny", "fipo-tau8")
    portable = portable_overrides(fipo)
    assert not any("/@" in o for o in portable)  # every machine path became a placeholder
    assert any("${run_dir}/checkpoints" in o for o in portable) and any("${data_dir}" in o for o in portable)
    assert portable_overrides(fipo) == portable  # deterministic
    assert portable_overrides(tau8) != portable
    assert portable_overrides(with_overrides(fipo, ["trainer.total_training_steps=2"])) != portable
    rendered = verl_overrides(fipo, data_dir=Path("/a/data"), run=RunFolder(Path("/a/r/tiny/runs/fipo")),
                              results_dir=Path("/a/r"), ray_address="10.0.0.1:6379")
    assert len(rendered) == len(portable) + 1  # the same keys, but the Ray address (machine-specific)


def test_trackers_are_selectable_and_do_not_change_a_runs_identity(tmp_path):
    import dataclasses

    from fipo.spec import load_experiment
    from fipo.run_folder import RunFolder, spec_fingerprint
    from fipo.verl_command import portable_overrides, verl_environment, verl_items

    tracked = load_experiment("tiny", "fipo")  # the tiny preset logs to TensorBoard too
    assert tracked.trainer.loggers == ["console", "file", "tensorboard"]
    exp = dataclasses.replace(tracked, trainer=dataclasses.replace(tracked.trainer, loggers=["console", "file"]))
    run = RunFolder(tmp_path / "run")
    items = dict(verl_items(tracked, data_dir=tmp_path, run=run, results_dir=tmp_path))
    assert items["trainer.logger"] == ["console", "file", "tensorboard"]
    assert items["trainer.project_name"] == exp.trainer.project_name and items["trainer.experiment_name"] == exp.run_id
    assert verl_environment(run, tracked)["TENSORBOARD_DIR"] == str(run.tensorboard)
    assert "TENSORBOARD_DIR" not in verl_environment(run, exp)
    assert portable_overrides(tracked) == portable_overrides(exp)
    assert spec_fingerprint(tracked, "v") == spec_fingerprint(exp, "v")


@pytest.mark.parametrize("loggers, message", [(["console"], "must include 'file'"),
                                               (["file", "neptune"], r"unknown logger\(s\) \['neptune'\]"),
                                               (["file", "file"], "listed twice")])
def test_bad_tracker_lists_are_refused_naming_the_key(tmp_path, loggers, message):
    import shutil

    import yaml

    from fipo.spec import CONFIG_DIR, SpecError, load_experiment

    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    preset = config / "presets" / "tiny.yaml"
    data = yaml.safe_load(preset.read_text())
    data["defaults"].setdefault("trainer", {})["loggers"] = loggers
    preset.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=rf"trainer.loggers: .*{message}"):
        load_experiment("tiny", "fipo", config_dir=config)
