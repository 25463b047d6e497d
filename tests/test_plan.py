"""The cost model of `python -m fipo plan` (fipo/plan.py), checked against numbers worked out by hand."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fipo.doctor.checks import check_gpu_memory, report
from fipo.doctor.estimates import KNOWN_SHAPES, training_gpu_bytes
from fipo.doctor.needs import Needs
from fipo.doctor.probe import Gpu
from fipo.spec import EvaluationSpec, evaluation, load_experiment
from fipo.plan import (HEADER, MODELS, PAPER_RESPONSE_LENGTHS, Assumptions, ModelFacts, PlanError, estimate,
                       event_count, model_facts, plan, problem_count, render, total)

GIB = 2**30
SHARED_PAPER = Path(__file__).resolve().parents[2] / "shared" / "PAPER.md"


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


# ------------------------------------------------------------------------------- response lengths from the paper


RESPONSE = HEADER.index("mean response tokens (from)")


def table_row(text: str, experiment: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| {experiment} |"))
    return row.strip("| ").split(" | ")


def test_32b_dapo_and_fipo_take_the_papers_mean_response_over_the_run():
    # PAPER.md §4: "Mean response length DAPO ≈ 4,000 tokens (plateau) vs FIPO > 10,000". DAPO: the plateau all run;
    # FIPO: linear from DAPO's plateau to 10,000, so 7,000 on average over the steps, and 10,000 for the evaluation
    # of the last checkpoint
    ev = evaluation("qwen2.5-32b")
    dapo, fipo = (estimate(load_experiment("qwen2.5-32b", m), ev) for m in ("dapo", "fipo"))
    assert (dapo.response.train, dapo.response.evaluate) == (4_000, 4_000)
    assert (fipo.response.train, fipo.response.evaluate) == (7_000, 10_000)
    # 1000 steps x 512 / 0.5 prompts (dynamic sampling) x 16 responses
    assert dapo.generated_tokens == 1000 * 1024 * 16 * 4_000
    assert fipo.generated_tokens == 1000 * 1024 * 16 * 7_000
    # 201 validations of 30 problems x 32 samples at the run's mean; one evaluation of 60 problems x 32 at its end
    assert problem_count("aime2024") == 30 and ev.benchmarks == ["aime2024", "aime2025"]
    evaluated = 60 * 32 * 10_000
    assert fipo.eval_gpu_hours == pytest.approx((201 * 30 * 32 * 7_000 + evaluated) / 1_000 / 3600)

    text = render("qwen2.5-32b", plan("qwen2.5-32b"))
    assert table_row(text, "dapo")[RESPONSE] == "4,000 (paper Fig. 1 [1])"
    assert table_row(text, "fipo")[RESPONSE] == "7,000 (paper Fig. 1 [2])"
    assert table_row(text, "fipo-minibatch32")[RESPONSE] == "7,000 (paper Fig. 1 [2])"  # the FIPO run's length
    notes = text.split("Mean response lengths from the paper")[1].split("\nAssumptions")[0]
    assert "[1] 4,000 tokens over the run, 4,000 at its end. 32B DAPO: PAPER.md §4" in notes
    assert "[2] 7,000 tokens over the run, 10,000 at its end. 32B FIPO: PAPER.md §4" in notes
    assert "the run's mean is the midpoint" in notes


def test_7b_baselines_take_figure_6s_length():
    text = render("qwen2.5-7b-math", plan("qwen2.5-7b-math", ["grpo", "dapo", "fipo", "fipo-tau8"]))
    for experiment in ("grpo", "dapo", "fipo", "fipo-tau8"):
        assert table_row(text, experiment)[RESPONSE] == "1,200 (paper Fig. 6b [1])"
    assert '[1] 1,200 tokens over the run, 1,200 at its end. PAPER.md §5, Figure 6(b)' in text
    fipo = estimate(load_experiment("qwen2.5-7b-math", "fipo"), evaluation("qwen2.5-7b-math"))
    assert fipo.generated_tokens == 1000 * 1024 * 32 * 1_200  # G = 32


@pytest.mark.parametrize("preset, experiment, max_response", [
    ("qwen2.5-32b", "grpo", 20480),  # GRPO: not run at 32B in the paper
    ("qwen2.5-0.5b", "fipo", 5120),  # no paper scale
    ("qwen2.5-math-1.5b", "dapo", 8192),
])
def test_without_a_paper_length_the_fraction_rule_is_used_and_said(preset, experiment, max_response):
    ev = evaluation(preset)
    e = estimate(load_experiment(preset, experiment), ev)
    assert e.response.paper is None
    assert (e.response.train, e.response.evaluate) == (0.3 * max_response, 0.3 * ev.max_tokens)
    text = render(preset, plan(preset, [experiment]))
    expected = f"{0.3 * max_response:,.0f} (0.3 x max_response_length)"
    assert table_row(text, experiment)[RESPONSE] == expected
    assert "Mean response lengths from the paper" not in text  # no paper value used: no notes
    assert "else 0.3 x max_response_length (assumed)" in text


def test_a_fraction_set_by_hand_replaces_the_papers_lengths_everywhere():
    a = Assumptions(response_fraction=0.5)
    fipo = estimate(load_experiment("qwen2.5-32b", "fipo"), evaluation("qwen2.5-32b"), a)
    assert (fipo.response.train, fipo.response.paper) == (0.5 * 20480, None)
    text = render("qwen2.5-32b", plan("qwen2.5-32b", ["fipo"], a), a)
    assert table_row(text, "fipo")[RESPONSE] == "10,240 (0.5 x max_response_length)"
    assert "mean response = 0.5 x max_response_length for every experiment" in text


def test_a_paper_length_over_the_experiments_max_response_is_capped_and_said():
    exp = load_experiment("qwen2.5-32b", "fipo")
    short = dataclasses.replace(exp, data=dataclasses.replace(exp.data, max_response_length=5000))
    e = estimate(short, EvaluationSpec(benchmarks=["aime2024"], max_tokens=6000))
    assert (e.response.train, e.response.evaluate, e.response.capped) == (5000, 6000, True)


def test_the_paper_lengths_quote_paper_md():
    """Each quoted sentence is PAPER.md's (where ../shared/PAPER.md is beside this checkout)."""
    if not SHARED_PAPER.is_file():
        pytest.skip("../shared/PAPER.md is not beside this checkout")
    paper = " ".join(SHARED_PAPER.read_text().split())
    for length in set(PAPER_RESPONSE_LENGTHS.values()):
        quotes = re.findall(r'"([^"]+)"', length.source)
        assert quotes and all(q in paper for q in quotes), length.source
        assert f"{length.end:,.0f}" in paper or f"{length.end:.0f}" in paper  # the value at the end, as printed


# ------------------------------------------------------------------------- plan's and doctor's memory figures


class OneH100:
    def gpus(self):
        return [Gpu("NVIDIA H100 80GB HBM3", 80 * GIB)]


def test_plan_and_doctor_each_say_why_their_memory_figures_differ():
    exp = load_experiment("qwen2.5-0.5b", "fipo")
    planned = render("qwen2.5-0.5b", plan("qwen2.5-0.5b", ["fipo"]))
    assert table_row(planned, "fipo")[HEADER.index("peak memory per GPU")] == "47.4 GiB"
    (line,) = [line for line in planned.splitlines() if "fipo doctor" in line]
    assert line.startswith("- peak memory vs fipo doctor: this is a typical peak to budget on an assumed 80 GiB GPU")
    assert "vLLM's gpu_memory_utilization share" in line and "`fipo doctor` prints a lower bound" in line

    doctor_bytes = training_gpu_bytes(exp, KNOWN_SHAPES[exp.model.path])
    needs = Needs(cuda=True, gpu_bytes=doctor_bytes, gpu_note="verl rollout (vLLM) or FSDP actor")
    text = report([check_gpu_memory(needs, OneH100())], "preset qwen2.5-0.5b, train fipo")
    lines = text.splitlines()
    assert lines[1].startswith("ok    gpu memory") and "needs ≈26 GiB per GPU" in lines[1]
    assert lines[2].strip().startswith("memory vs fipo plan: this is a lower bound of what must fit")
    assert "`fipo plan` budgets a typical peak on an assumed GPU instead (80 GiB unless --gpu-memory-gib" in lines[2]
    assert lines[3] == "all 1 checks passed"
