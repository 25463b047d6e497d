"""The `python -m fipo` command line, run as users run it (subprocesses)."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest


def fipo(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "fipo", *args], capture_output=True, text=True, timeout=300, **kwargs)


def test_dry_run_prints_the_full_verl_command_as_one_line():
    out = fipo("train", "--preset", "qwen2.5-32b", "--experiment", "fipo", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m verl.trainer.main_ppo ")
    words = shlex.split(lines[0])
    assert "actor_rollout_ref.actor.policy_loss.loss_mode=fipo" in words
    assert "+actor_rollout_ref.actor.policy_loss.tau=32.0" in words
    # absolute paths: Ray workers do not share the launching shell's working directory
    assert f"VERL_FILE_LOGGER_PATH={Path.cwd()}/results/qwen2.5-32b/runs/fipo/metrics.jsonl" in out.stderr
    assert f"trainer.default_local_dir={Path.cwd()}/results/qwen2.5-32b/runs/fipo/checkpoints" in words


def test_experiments_lists_one_name_per_line():
    out = fipo("experiments", "--preset", "qwen2.5-7b-math")
    assert out.returncode == 0
    assert out.stdout.splitlines()[:3] == ["grpo", "dapo", "fipo"]
    assert "fipo-tau256" in out.stdout.splitlines()


def test_unknown_names_fail_with_the_allowed_values():
    out = fipo("train", "--preset", "qwen2.5-32b", "--experiment", "fipo-tau8", "--dry-run")
    assert out.returncode == 2 and "allowed: dapo, grpo, fipo" in out.stderr
    out = fipo("experiments", "--preset", "llama")
    assert out.returncode == 2 and "unknown preset 'llama'" in out.stderr


def test_train_without_data_fails_before_starting_verl(tmp_path):
    out = fipo("train", "--preset", "qwen2.5-32b", "--experiment", "dapo", "--data-dir", str(tmp_path),
               "--results-dir", str(tmp_path / "results"))
    assert out.returncode == 2
    assert "dapo-math-17k" in out.stderr and "python -m fipo data dapo" in out.stderr
    assert not (tmp_path / "results").exists()


def test_tables_command_writes_the_spec_tables(tmp_path):
    out = fipo("tables", "--out", str(tmp_path))
    assert out.returncode == 0
    assert (tmp_path / "table2.md").is_file() and (tmp_path / "table3.csv").is_file()


def test_the_hang_guards_limit_must_be_a_positive_number_of_seconds():
    for bad in ("0", "-5", "nan", "inf", "soon"):
        out = fipo("train", "--preset", "tiny", "--experiment", "fipo", "--timeout", bad, "--dry-run")
        assert out.returncode == 2 and "--timeout" in out.stderr and repr(bad) in out.stderr, (bad, out.stderr)
    assert fipo("train", "--preset", "tiny", "--experiment", "fipo", "--timeout", "600", "--dry-run").returncode == 0


def test_eval_failures_are_one_line_not_a_traceback(tmp_path):
    """A model folder that does not exist, a backend this machine lacks: one 'fipo: error:' line, no traceback,
    and nothing written to the output folder (the corrected command must run there)."""
    from fipo.data import prepare_aime

    prepare_aime(tmp_path / "data")
    out = fipo("eval", "--model", str(tmp_path / "no-such-model"), "--benchmark", "aime2024", "--backend", "hf",
               "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "eval"))
    assert out.returncode == 2 and out.stderr.startswith("fipo: error:") and "Traceback" not in out.stderr
    assert "no-such-model" in out.stderr
    assert not (tmp_path / "eval" / "settings.json").exists()


def test_the_cpu_machine_has_no_vllm_and_says_so(tmp_path):
    from fipo.data import prepare_aime

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    prepare_aime(tmp_path / "data")
    out = fipo("eval", "--model", str(model), "--benchmark", "aime2024", "--backend", "vllm",
               "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "eval"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "vllm" in out.stderr.lower()
    assert not (tmp_path / "eval" / "settings.json").exists()


def test_a_seed_names_its_own_run_and_sets_every_verl_seed():
    out = fipo("train", "--preset", "tiny", "--experiment", "fipo", "--seed", "7", "--dry-run")
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    for key in ("data.seed", "actor_rollout_ref.actor.data_loader_seed", "actor_rollout_ref.rollout.seed"):
        assert f"{key}=7" in words
    # Hydra quotes a value holding '@' (tests/test_tiny_training.py starts verl on such a command)
    assert f"trainer.default_local_dir='{Path.cwd()}/results/tiny/runs/fipo@seed7/checkpoints'" in words
    assert "trainer.experiment_name='tiny-fipo@seed7'" in words
    assert "runs/fipo@seed7/metrics.jsonl" in out.stderr  # the environment line: verl's file logger
    plain = fipo("train", "--preset", "tiny", "--experiment", "fipo", "--dry-run")
    assert "data.seed=42" in shlex.split(plain.stdout) and "@seed" not in plain.stdout + plain.stderr
    for bad in ("-1", "x", "1.5", "4294967296"):
        out = fipo("train", "--preset", "tiny", "--experiment", "fipo", "--seed", bad, "--dry-run")
        assert out.returncode == 2 and "--seed: must be a non-negative integer" in out.stderr, out.stderr


def test_with_seed_changes_the_seed_the_name_and_the_fingerprint():
    from fipo.spec import SpecError, load_experiment, with_seed
    from fipo.run_folder import run_folder, spec_fingerprint
    from fipo.run_names import run_name

    exp = load_experiment("tiny", "fipo")
    assert with_seed(exp, None) is exp
    one, two = with_seed(exp, 1), with_seed(exp, 2)
    assert (one.name, one.trainer.seed, one.run_id) == ("fipo@seed1", 1, "tiny-fipo@seed1")
    assert one.fipo == exp.fipo and one.policy == exp.policy  # nothing else changes
    prints = {spec_fingerprint(e, "v") for e in (exp, one, two)}
    assert len(prints) == 3
    assert run_name("fipo") == "fipo" and run_name("fipo-tau8", 0) == "fipo-tau8@seed0"
    assert run_folder("r", "tiny", "fipo", 3).run_dir == Path("r/tiny/runs/fipo@seed3")
    assert run_folder("r", "tiny", "fipo").run_dir == Path("r/tiny/runs/fipo")
    for bad in (-1, True, 1.0, "1"):
        with pytest.raises(SpecError, match="seed: must be a non-negative integer"):
            with_seed(exp, bad)


@pytest.mark.parametrize("override, message", [
    ("trainer.save_freq=0", "trainer.save_freq: must be >= 1, got 0"),
    ("trainer.total_training_steps=2.0", "trainer.total_training_steps: expected an integer, got 2.0"),
    ("actor_rollout_ref.actor.ppo_mini_batch_size=64", "policy.ppo_mini_batch_size: must divide"),
    ("algorithm.rollout_correction.bypass_mode=true", "engine.algorithm.rollout_correction.bypass_mode: is on"),
    ("data.seed=3", "is computed from the spec's trainer.seed: set that instead"),
    ("trainer.default_local_dir=/tmp/elsewhere", "is set by the workbench itself"),
    ("notakeyvalue", "'notakeyvalue': expected KEY=VALUE"),
    ("~trainer.logger", "expected KEY=VALUE"),
])
def test_an_override_is_checked_like_the_spec_by_train_and_doctor(override, message):
    for command in (["train", "--dry-run"], ["doctor", "--stage", "train"]):
        out = fipo(*command, "--preset", "tiny", "--experiment", "fipo", "--override", override)
        assert out.returncode == 2 and message in out.stderr, (command, out.stderr[-2000:])


def test_an_override_of_a_spec_key_reaches_verl_as_the_checked_value():
    out = fipo("train", "--preset", "tiny", "--experiment", "fipo", "--dry-run",
               "--override", "trainer.total_training_steps=3", "--override", "+trainer.max_actor_ckpt_to_keep=2")
    words = shlex.split(out.stdout)
    assert out.returncode == 0, out.stderr
    assert words.count("trainer.total_training_steps=3") == 1  # one value, the checked one, not a second setting
    assert not any(w.startswith("trainer.total_training_steps=") and w != "trainer.total_training_steps=3" for w in words)
    assert "+trainer.max_actor_ckpt_to_keep=2" in words
