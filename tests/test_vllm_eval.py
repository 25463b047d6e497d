"""Both evaluation backends on one small model, vLLM's CPU build run for real (`make test-vllm`, in .venv-vllm).

The model is the tiny preset's with head size 32 (96 / 3 heads), a size vLLM's CPU attention supports (the tiny
default's 24 is not); the benchmark is the tiny test set (64 problems); the sampling settings are the tiny preset's
evaluation (n = 32, temperature 1, top-p 0.7, 80 tokens). vLLM is run as a user runs it, `fipo eval --backend
vllm`, killed (its whole process group, engine included) once it has written its first problems, then run again.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from fipo.eval.runner import SAMPLE_KEYS, evaluate, load_benchmark
from fipo.eval.sampling import SamplingSettings
from fipo.spec import evaluation
from fipo.tiny import TinyModelSpec, build_tiny_base_model, prepare_tiny_data

pytestmark = pytest.mark.vllm

VLLM_MODEL = TinyModelSpec(heads=3, kv_heads=1)  # head size 32; otherwise the tiny preset's model
BENCHMARK = "tiny-test"
_TINY = evaluation("tiny")
SETTINGS = SamplingSettings(n=_TINY.n, temperature=_TINY.temperature, top_p=_TINY.top_p, max_tokens=_TINY.max_tokens)
KILL_AFTER_S = 600  # the first problems are written within this (engine start included) or the test fails


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import vllm  # noqa: F401  (the marker promises vLLM: without it these tests fail, they do not skip)

    root = tmp_path_factory.mktemp("vllm_world")
    prepare_tiny_data(root / "data")
    model = build_tiny_base_model(root / "model", VLLM_MODEL, log=lambda message: None, report=False)
    return {"root": root, "data": root / "data", "model": model}


def eval_command(world, out):
    return [sys.executable, "-m", "fipo", "eval", "--model", str(world["model"]), "--benchmark", BENCHMARK,
            "--backend", "vllm", "--n", str(SETTINGS.n), "--temperature", str(SETTINGS.temperature),
            "--top-p", str(SETTINGS.top_p), "--max-tokens", str(SETTINGS.max_tokens), "--seed", str(SETTINGS.seed),
            "--data-dir", str(world["data"]), "--out", str(out)]


def run_until_first_problems(command) -> tuple[list[str], float]:
    """Start `fipo eval` in a session of its own, read its log until it has written its first problems, then
    SIGKILL the whole session (vLLM's engine core is a child process). Returns the log lines and the wall time."""
    start, lines = time.time(), []
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        for line in process.stderr:
            lines.append(line.rstrip())
            if "problems sampled" in line or time.time() - start > KILL_AFTER_S:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert any("problems sampled" in line for line in lines), "\n".join(lines[-30:])
    return lines, time.time() - start


@pytest.fixture(scope="module")
def vllm_run(world):
    """A vLLM evaluation killed after its first problems, then resumed to the end."""
    out = world["root"] / "eval-vllm"
    killed_log, killed_s = run_until_first_problems(eval_command(world, out))
    kept = (out / "samples.jsonl").read_text().splitlines()
    start = time.time()
    done = subprocess.run(eval_command(world, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\nvLLM: killed after {killed_s:.0f} s with {len(kept)} sample lines; "
          f"resumed run {time.time() - start:.0f} s")
    return {"out": out, "kept": kept, "killed_log": killed_log, "resumed_log": done.stderr,
            "summary": json.loads((out / "summary.json").read_text())}


@pytest.fixture(scope="module")
def hf_run(world):
    out = world["root"] / "eval-hf"
    start = time.time()
    summary = evaluate(str(world["model"]), BENCHMARK, out, SETTINGS, backend="hf", data_dir=world["data"],
                       log=lambda message: None)
    print(f"\ntransformers: {time.time() - start:.0f} s")
    return {"out": out, "summary": summary}


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_a_killed_vllm_evaluation_resumes_from_its_finished_problems(vllm_run, world):
    kept = vllm_run["kept"]
    assert kept and len(kept) % SETTINGS.n == 0  # whole problems only: n lines each, written in one write
    finished = len(kept) // SETTINGS.n
    total = len(load_benchmark(BENCHMARK, world["data"]))
    assert f"{total} problems, {finished} already done, {total - finished} to sample" in vllm_run["resumed_log"]
    lines = (vllm_run["out"] / "samples.jsonl").read_text().splitlines()
    assert lines[: len(kept)] == kept  # the finished problems were kept as written, not sampled again
    assert vllm_run["summary"]["backend"] == "vllm" and vllm_run["summary"]["settings"] == asdict(SETTINGS)


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_every_sample_record_is_whole(backend, vllm_run, hf_run, world):
    out = (vllm_run if backend == "vllm" else hf_run)["out"]
    problems = load_benchmark(BENCHMARK, world["data"])
    by_problem: dict[str, list[dict]] = {}
    for record in records(out):
        assert set(record) == set(SAMPLE_KEYS)
        by_problem.setdefault(record["problem_id"], []).append(record)
    assert sorted(by_problem) == sorted(p["problem_id"] for p in problems)
    for rows in by_problem.values():
        assert sorted(r["sample_index"] for r in rows) == list(range(SETTINGS.n))
    rows = [r for group in by_problem.values() for r in group]
    for r in rows:
        assert r["finish_reason"] in ("stop", "length")
        assert 1 <= r["length"] <= SETTINGS.max_tokens
        # truncated exactly at the limit; a stopped one ends with its EOS token, counted in its length
        assert (r["finish_reason"] == "length") == (r["length"] == SETTINGS.max_tokens)
        assert isinstance(r["correct"], bool) and isinstance(r["response"], str)
    assert sum(r["finish_reason"] == "stop" for r in rows) > len(rows) / 2  # the model answers, it does not ramble


def test_stopped_lengths_count_the_response_tokens_and_the_eos(vllm_run, world):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    stopped = [r for r in records(vllm_run["out"]) if r["finish_reason"] == "stop"]
    matches = sum(len(tokenizer(r["response"], add_special_tokens=False)["input_ids"]) + 1 == r["length"]
                  for r in stopped)
    assert matches == len(stopped), f"{len(stopped) - matches} of {len(stopped)} lengths differ"


def test_the_two_backends_agree_on_avg_at_32_within_their_intervals(vllm_run, hf_run):
    """Same model, prompts and sampling settings, different random streams: Avg@32 are two draws of one quantity.
    Each summary's rerun interval resamples the samples within the fixed 64 problems (what differs between the
    two); the difference's 95 % half-width is the two half-widths added in quadrature."""
    key = f"avg@{SETTINGS.n}"
    values, halves = {}, {}
    for name, run in (("vllm", vllm_run), ("hf", hf_run)):
        low, high = run["summary"][f"{key}_rerun_ci95"]
        values[name], halves[name] = run["summary"][key], (high - low) / 2
    allowed = math.hypot(halves["vllm"], halves["hf"])
    print(f"\n{key}: vLLM {values['vllm']:.2f} ± {halves['vllm']:.2f}, transformers {values['hf']:.2f} ± "
          f"{halves['hf']:.2f} (rerun intervals); difference {values['vllm'] - values['hf']:+.2f}, "
          f"allowed ±{allowed:.2f}")
    # a model that is always right or always wrong has no sampling noise to compare: the check must see 3 points
    assert 0 < allowed <= 3, "the comparison cannot tell the backends apart"
    assert abs(values["vllm"] - values["hf"]) <= allowed


def mean_and_rerun_se(out) -> tuple[float, float]:
    """Mean response length and its standard error over samples within the fixed problems (the rerun interval's
    resampling): the per-problem variances of the n lengths, over n, summed, over the number of problems squared."""
    by_problem: dict[str, list[int]] = {}
    for r in records(out):
        by_problem.setdefault(r["problem_id"], []).append(r["length"])
    means = [sum(x) / len(x) for x in by_problem.values()]
    variances = [sum((v - m) ** 2 for v in x) / len(x) for x, m in zip(by_problem.values(), means)]
    problems = len(by_problem)
    return sum(means) / problems, math.sqrt(sum(v / SETTINGS.n for v in variances)) / problems


def test_the_two_backends_agree_on_the_mean_length(vllm_run, hf_run):
    """The same two draws, on the mean length: within 3 standard errors of their difference (a 0.3 % chance of
    failing for backends that sample the same distribution). A backend whose random numbers are shared between
    problems, or that samples another distribution, moves the length by more."""
    (v, v_se), (h, h_se) = mean_and_rerun_se(vllm_run["out"]), mean_and_rerun_se(hf_run["out"])
    allowed = 3 * math.hypot(v_se, h_se)
    print(f"\nmean length: vLLM {v:.2f} ± {v_se:.2f}, transformers {h:.2f} ± {h_se:.2f} (standard errors); "
          f"difference {v - h:+.2f}, allowed ±{allowed:.2f}")
    assert abs(v - h) <= allowed


def test_both_backends_draw_the_first_token_as_the_models_probabilities_say(vllm_run, hf_run, world):
    """The first token decides the answer's form (``Answer:`` at once, or a worked sum). Its expected count over
    all samples follows from the model's own next-token probabilities under top-p (computed here in float64):
    each backend's count must be within 4 standard deviations of it. Random numbers shared between problems, a
    top-k, or another precision shift it by more."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    model = AutoModelForCausalLM.from_pretrained(world["model"], dtype=torch.float32).eval()
    direct = tokenizer("Answer", add_special_tokens=False)["input_ids"][0]
    expected = variance = 0.0
    for problem in load_benchmark(BENCHMARK, world["data"]):
        prompt = tokenizer.apply_chat_template(problem["messages"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[0, -1].double(), dim=-1)
        ordered, order = torch.sort(probs, descending=True)
        kept = (torch.cumsum(ordered, 0) - ordered) < SETTINGS.top_p  # the smallest set reaching top_p
        p = float(ordered[kept][order[kept] == direct].sum() / ordered[kept].sum())
        expected, variance = expected + SETTINGS.n * p, variance + SETTINGS.n * p * (1 - p)
    counts = {name: sum(r["response"].startswith("Answer") for r in records(run["out"]))
              for name, run in (("vllm", vllm_run), ("hf", hf_run))}
    print(f"\nfirst token 'Answer': expected {expected:.0f} ± {math.sqrt(variance):.0f}, drawn {counts}")
    for name, count in counts.items():
        assert abs(count - expected) <= 4 * math.sqrt(variance), (name, count, expected)
