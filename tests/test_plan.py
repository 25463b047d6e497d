"""The cost model of `python -m fipo plan` (fipo/plan.py), checked against numbers worked out by hand."""

import dataclasses
import subprocess
import sys

import pytest

from fipo.experiment import EvaluationSpec, load_experiment
from fipo.plan import (MODELS, Assumptions, ModelFacts, PlanError, estimate, event_count, model_facts, plan,
                       render, total)

GIB = 2**30


def qwen2_parameters(layers, hidden, mlp, heads, kv_heads, vocab, tied):
    """Qwen2 from its config.json: q/k/v projections with bias, o without, a gate/up/down MLP, two RMSNorms per
    layer, the embedding (and a separate LM head unless tied), a final RMSNorm."""
    kv = kv_heads * hidden // heads
    attention = (hidden * hidden + hidden) + 2 * (hidden * kv + kv) + hidden * hidden
    per_layer = attention + 3 * hidden * mlp + 2 * hidden
    return layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden


@pytest.mark.parametrize("path, config, card", [
    ("Qwen/Qwen2.5-32B", (64, 5120, 27648, 40, 8, 152064, False), 32.5e9),
    ("Qwen/Qwen2.5-Math-7B", (28, 3584, 18944, 28, 4, 152064, False), 7.61e9),
    ("Qwen/Qwen2.5-Math-1.5B", (28, 1536, 8960, 12, 2, 151936, True), 1.54e9),
    ("Qwen/Qwen2.5-0.5B-Instruct", (24, 896, 4864, 14, 2, 151936, True), 0.49e9),
])
def test_parameter_counts_follow_from_each_models_config(path, config, card):
    assert MODELS[path].params == qwen2_parameters(*config)
    assert MODELS[path].params == pytest.approx(card, rel=0.01)  # the model card's rounded figure


def test_every_gpu_presets_model_has_a_row():
    for preset in ("qwen2.5-32b", "qwen2.5-7b-math", "qwen2.5-math-1.5b", "qwen2.5-0.5b"):
        assert model_facts(load_experiment(preset, "fipo").model.path).params > 0


@pytest.mark.parametrize("total_steps, every, at_start, count", [
    (1000, 5, True, 201),  # validation: before training, then steps 5, 10, ..., 1000
    (1000, 10, False, 100),  # checkpoints at 10, ..., 1000
    (7, 5, False, 2),  # step 5 and the last step, 7
    (7, 5, True, 3),
    (3, 5, False, 1),  # only the last step
])
def test_event_count_is_verls_every_n_steps_and_the_last(total_steps, every, at_start, count):
    assert event_count(total_steps, every, at_start) == count


FACTS = ModelFacts(params=1_000_000, decode_tokens_per_s=100.0, source="made up")
ASSUME = Assumptions(response_fraction=0.5, prompt_tokens=10, keep_fraction=0.5, mfu=0.5, peak_flops=1e12,
                     gpu_memory_gib=10.0)
EVALUATION = EvaluationSpec(benchmarks=["aime2024", "aime2025"], n=4, max_tokens=200)


def small_experiment(**changes):
    """The 1.5B preset's DAPO run with made-up small numbers; ``changes``: section -> {field: value}."""
    exp = load_experiment("qwen2.5-math-1.5b", "dapo")
    sections = {
        "data": {"max_prompt_length": 50, "max_response_length": 100, "train_batch_size": 4, "val": ["aime2024"]},
        "rollout": {"n": 2},
        "validation": {"n": 2, "test_freq": 5, "before_train": True},
        "trainer": {"total_training_steps": 10, "save_freq": 5, "nnodes": 1, "n_gpus_per_node": 2},
        "algorithm": {"filter_groups": True},
    }
    for section, values in changes.items():
        if section != "engine":
            sections.setdefault(section, {}).update(values)
    exp = dataclasses.replace(exp, **{s: dataclasses.replace(getattr(exp, s), **v) for s, v in sections.items()})
    engine = {"actor_rollout_ref.rollout.gpu_memory_utilization": 0.5} | changes.get("engine", {})
    return dataclasses.replace(exp, engine=engine)


def test_a_dapo_run_worked_out_by_hand():
    e = estimate(small_experiment(), EVALUATION, ASSUME, FACTS)
    # response 0.5 x 100 = 50 tokens, prompt min(10, 50) = 10; 4 / 0.5 = 8 prompts x 2 responses per step, 10 steps
    assert e.generated_tokens == 10 * 8 * 2 * 50 == 8000
    assert e.trained_tokens == 10 * 4 * 2 * (10 + 50) == 4800
    assert e.rollout_gpu_hours == pytest.approx(8000 / 100 / 3600)
    # (6N + 2N for the old log-probs) per token, at 0.5 x 1e12 FLOP/s
    assert e.update_gpu_hours == pytest.approx(4800 * 8e6 / 5e11 / 3600)
    # validations before step 1, at 5 and at 10: 3 x 30 AIME-2024 problems x 2 samples x 50 tokens; one evaluation:
    # 60 problems x 4 samples x 0.5 x 200 tokens
    assert e.eval_gpu_hours == pytest.approx((3 * 30 * 2 * 50 + 60 * 4 * 100) / 100 / 3600)
    assert e.gpu_hours == pytest.approx((8000 + 9000 + 24000) / 100 / 3600 + 4800 * 8e6 / 5e11 / 3600)
    assert e.wall_days == pytest.approx(e.gpu_hours / 2 / 24)
    # 16 bytes per parameter over 2 GPUs, + half of the 10 GiB for vLLM
    assert e.peak_memory_gib == pytest.approx(16e6 / 2 / GIB + 5.0)
    assert (e.checkpoints, e.checkpoint_bytes) == (2, 2 * 12e6)  # steps 5 and 10, model + optimizer
    assert e.dump_bytes == 4800 * 4


def test_without_dynamic_sampling_with_offload_a_kl_loss_two_epochs_and_a_checkpoint_limit():
    exp = small_experiment(
        algorithm={"filter_groups": False}, policy={"kl_loss_coef": 0.1, "ppo_epochs": 2},
        validation={"before_train": False}, trainer={"rollout_dump": False, "total_training_steps": 12},
        engine={"actor_rollout_ref.actor.fsdp_config.param_offload": True,
                "actor_rollout_ref.actor.fsdp_config.optimizer_offload": True, "trainer.max_actor_ckpt_to_keep": 1})
    e = estimate(exp, EVALUATION, ASSUME, FACTS)
    assert e.generated_tokens == 12 * 4 * 2 * 50  # every prompt generated once
    assert e.trained_tokens == 2 * 12 * 4 * 2 * 60  # two epochs
    # 6N per epoch x 2 + 2N old log-probs + 2N reference log-probs, over one pass of the sequences
    assert e.update_gpu_hours == pytest.approx(12 * 4 * 2 * 60 * 16e6 / 5e11 / 3600)
    assert e.eval_gpu_hours == pytest.approx((3 * 30 * 2 * 50 + 24000) / 100 / 3600)  # at 5, 10 and 12
    assert e.peak_memory_gib == pytest.approx(5.0)  # every training state on the CPU: only vLLM's share
    assert (e.checkpoints, e.checkpoint_bytes, e.dump_bytes) == (1, 12e6, 0.0)  # 3 saved, 1 kept; no dumps


def test_only_the_optimizer_offloaded_keeps_weights_and_gradients():
    exp = small_experiment(engine={"actor_rollout_ref.actor.fsdp_config.optimizer_offload": True})
    assert estimate(exp, EVALUATION, ASSUME, FACTS).peak_memory_gib == pytest.approx(8e6 / 2 / GIB + 5.0)


def test_assumptions_change_the_estimate_as_stated():
    base = estimate(small_experiment(), EVALUATION, ASSUME, FACTS)
    longer = estimate(small_experiment(), EVALUATION, dataclasses.replace(ASSUME, response_fraction=1.0), FACTS)
    assert longer.generated_tokens == 2 * base.generated_tokens
    faster = estimate(small_experiment(), EVALUATION, dataclasses.replace(ASSUME, decode_tokens_per_s=400.0), FACTS)
    assert faster.rollout_gpu_hours == pytest.approx(base.rollout_gpu_hours / 4)
    keep_all = estimate(small_experiment(), EVALUATION, dataclasses.replace(ASSUME, keep_fraction=1.0), FACTS)
    assert keep_all.generated_tokens == base.generated_tokens / 2


def test_paper_presets_memory_reflects_their_offload_and_vllm_share():
    a = Assumptions()
    big = estimate(load_experiment("qwen2.5-32b", "fipo"), EvaluationSpec(), a)
    assert big.peak_memory_gib == pytest.approx(0.8 * 80)  # params and optimizer offloaded (DAPO recipe)
    seven = estimate(load_experiment("qwen2.5-7b-math", "fipo"), EvaluationSpec(), a)
    assert seven.peak_memory_gib == pytest.approx(16 * 7_615_616_512 / 32 / GIB + 0.8 * 80)
    one = estimate(load_experiment("qwen2.5-0.5b", "fipo"), EvaluationSpec(), a)
    assert one.peak_memory_gib == pytest.approx(16 * 494_032_768 / GIB + 0.5 * 80) and one.peak_memory_gib < 80


def test_a_cpu_preset_and_an_unknown_model_are_refused_naming_the_key():
    with pytest.raises(PlanError, match=r"preset 'tiny' trains on the CPU \(trainer.device: cpu\)"):
        estimate(load_experiment("tiny", "fipo"), EvaluationSpec())
    exp = dataclasses.replace(load_experiment("qwen2.5-0.5b", "fipo"),
                              model=dataclasses.replace(load_experiment("qwen2.5-0.5b", "fipo").model, path="org/x"))
    with pytest.raises(PlanError, match=r"model.path 'org/x' has no parameter count .*fipo.plan.MODELS"):
        estimate(exp, EvaluationSpec())


def test_the_total_sums_the_runs_and_keeps_the_largest_peak():
    runs = plan("qwen2.5-0.5b")
    t = total(runs)
    assert t.gpu_hours == pytest.approx(sum(e.gpu_hours for e in runs))
    assert t.checkpoint_bytes == sum(e.checkpoint_bytes for e in runs)
    assert t.peak_memory_gib == max(e.peak_memory_gib for e in runs)
    assert t.wall_days == pytest.approx(t.gpu_hours / 24)  # one GPU, the runs one after another


def test_render_labels_every_number_as_an_estimate_and_states_the_assumptions():
    text = render("qwen2.5-math-1.5b", plan("qwen2.5-math-1.5b"))
    lines = text.splitlines()
    assert "ESTIMATES" in lines[0] and "not measured" in lines[0] and "1 node x 8 GPUs" in lines[0]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| experiment")]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "grpo", "dapo", "fipo", "fipo-raw", "fipo-fclip-1.0-1.2", "fipo-tau8", "fipo-tau128", "fipo-tau256",
        "total (8 runs, one after another)"]
    assert "| 100 x 18.5 GB = 1.85 TB |" in rows[0]  # 1000 steps / save_freq 10, 12 bytes x 1.54e9 parameters
    assert "Qwen/Qwen2.5-Math-1.5B: N = 1,543,714,304" in text and "(assumed)" in text
    assert "keeps 0.5 of the groups" in text and "over the GPU's" not in text
    small = Assumptions(gpu_memory_gib=10.0)  # 0.5B: 7.4 GiB of states + half of 10 GiB for vLLM
    assert "| 12.4 GiB (over the GPU's) |" in render("qwen2.5-0.5b", plan("qwen2.5-0.5b", ["fipo"], small), small)


def fipo(*args):
    return subprocess.run([sys.executable, "-m", "fipo", *args], capture_output=True, text=True, timeout=300)


def test_plan_command_prints_the_estimate_of_one_experiment():
    out = fipo("plan", "--preset", "qwen2.5-0.5b", "--experiment", "fipo", "--response-fraction", "0.6")
    assert out.returncode == 0, out.stderr
    expected = estimate(load_experiment("qwen2.5-0.5b", "fipo"), EvaluationSpec(
        benchmarks=["aime2024", "aime2025"], max_tokens=5120), Assumptions(response_fraction=0.6))
    row = next(line for line in out.stdout.splitlines() if line.startswith("| fipo |"))
    assert row.startswith(f"| fipo | 1 | {expected.gpu_hours:,.0f} (")
    assert "| total (" not in out.stdout and "mean response = 0.6 x max_response_length" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--preset", "qwen3"], "unknown preset 'qwen3'"),
    (["--preset", "qwen2.5-0.5b", "--experiment", "fipo-tau9"],
     "unknown experiment 'fipo-tau9' in preset 'qwen2.5-0.5b'"),
    (["--preset", "tiny"], "fipo plan estimates GPU presets only"),
    (["--preset", "qwen2.5-0.5b", "--keep-fraction", "0"], "--keep-fraction: must be in (0, 1]"),
    (["--preset", "qwen2.5-0.5b", "--decode-tokens-per-s", "-1"], "--decode-tokens-per-s: must be a finite number > 0"),
])
def test_plan_command_refuses_bad_input_in_one_line(args, message):
    out = fipo("plan", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == ""
