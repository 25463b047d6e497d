"""`fipo eval` end to end with the transformers backend on the tiny model; the vLLM backend around its calls."""

import json
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest

from fipo.data import prepare_aime
from fipo.eval import sampling
from fipo.eval.runner import evaluate, load_benchmark, read_finished
from fipo.eval.sampling import HFSampler, SamplingSettings, samples_from_vllm_outputs

SETTINGS = SamplingSettings(n=4, temperature=1.0, top_p=0.7, max_tokens=48, seed=3)


class CountingSampler:
    """Wraps a real sampler: counts the prompts it samples, and can fail after some chunks (a crash)."""

    def __init__(self, inner, fail_after_chunks=None):
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.prompts, self.chunks, self.fail_after = 0, 0, fail_after_chunks

    def sample(self, prompts, settings, seed_offsets):
        if self.fail_after is not None and self.chunks >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.chunks += 1
        self.prompts += len(prompts)
        return self.inner.sample(prompts, settings, seed_offsets)


@pytest.fixture(scope="module")
def hf_sampler(tiny_world):
    return HFSampler(str(tiny_world["model"]))


def test_tiny_evaluation_writes_samples_and_summary_and_resumes(tiny_world, hf_sampler, tmp_path):
    out = tmp_path / "eval"
    crashing = CountingSampler(hf_sampler, fail_after_chunks=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(tiny_world["model"]), "tiny-test", out, SETTINGS, backend="hf", data_dir=tiny_world["data"],
                 sampler=crashing, log=lambda m: None)
    done = read_finished(out / "samples.jsonl", SETTINGS.n)
    assert len(done) == 3 * 8  # three chunks of 8 problems survived the crash

    resumed = CountingSampler(hf_sampler)
    summary = evaluate(str(tiny_world["model"]), "tiny-test", out, SETTINGS, backend="hf", data_dir=tiny_world["data"],
                       sampler=resumed, log=lambda m: None)
    assert resumed.prompts == 64 - 24  # finished problems were not sampled again

    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 64 * 4
    assert set(records[0]) == {"problem_id", "sample_index", "response", "extracted_answer", "correct", "length",
                               "finish_reason"}
    assert summary["problems"] == 64 and summary["samples_per_problem"] == 4
    assert 0 < summary["avg@4"] < 100  # the warm-started model: right sometimes, not always
    assert summary["avg@4"] == pytest.approx(100 * sum(r["correct"] for r in records) / len(records))
    assert summary["pass@4"] >= summary["avg@4"]
    assert 0 <= summary["truncated_fraction"] <= 1 and summary["mean_response_length"] > 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["avg@4"] == summary["avg@4"] and (out / "summary.csv").read_text().startswith("problem_id,")

    # the same seed gives the same samples: a fresh evaluation reproduces the resumed one
    again = evaluate(str(tiny_world["model"]), "tiny-test", tmp_path / "again", SETTINGS, backend="hf",
                     data_dir=tiny_world["data"], sampler=hf_sampler, log=lambda m: None)
    assert again["avg@4"] == summary["avg@4"]


def test_other_settings_into_the_same_folder_are_refused(tiny_world, hf_sampler, tmp_path):
    one = SamplingSettings(n=1, max_tokens=8)
    evaluate(str(tiny_world["model"]), "tiny-test", tmp_path, one, backend="hf", data_dir=tiny_world["data"],
             sampler=hf_sampler, log=lambda m: None)
    with pytest.raises(ValueError, match="other settings.*n"):
        evaluate(str(tiny_world["model"]), "tiny-test", tmp_path, SamplingSettings(n=2, max_tokens=8), backend="hf",
                 data_dir=tiny_world["data"], sampler=hf_sampler, log=lambda m: None)


def test_aime_benchmarks_load_with_ids_and_answers(tmp_path):
    prepare_aime(tmp_path)
    problems = load_benchmark("aime2025", tmp_path)
    assert len(problems) == 30 and problems[0]["problem_id"] == "2025-I-1" and problems[0]["ground_truth"] == "70"
    assert problems[0]["messages"][0]["content"].startswith("Solve the following math problem")
    with pytest.raises(ValueError, match="allowed: aime2024, aime2025, tiny-test"):
        load_benchmark("gsm8k", tmp_path)


def test_vllm_sampling_params_carry_n_seed_and_the_aime_settings(monkeypatch):
    recorded = []
    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: recorded.append(kw) or kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    params = sampling.vllm_sampling_params(SamplingSettings(n=32, temperature=1.0, top_p=0.7, max_tokens=20480, seed=7), 4)
    assert params == {"n": 32, "temperature": 1.0, "top_p": 0.7, "max_tokens": 20480, "seed": 11}


def test_vllm_output_shapes_are_parsed():
    def completion(text, tokens, reason):
        return SimpleNamespace(text=text, token_ids=list(range(tokens)), finish_reason=reason, index=0)

    outputs = [
        SimpleNamespace(request_id="0", outputs=[completion("Answer: 1", 5, "stop"), completion("...", 9, "length")]),
        SimpleNamespace(request_id="1", outputs=[completion("Answer: 2", 3, "stop"), completion("Answer: 2", 4, "stop")]),
    ]
    parsed = samples_from_vllm_outputs(outputs)
    assert [[(s.text, s.num_tokens, s.finish_reason) for s in p] for p in parsed] == [
        [("Answer: 1", 5, "stop"), ("...", 9, "length")],
        [("Answer: 2", 3, "stop"), ("Answer: 2", 4, "stop")],
    ]


def test_cli_eval_on_the_tiny_model(tiny_world, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fipo", "eval", "--model", str(tiny_world["model"]), "--benchmark", "tiny-test",
         "--backend", "hf", "--n", "2", "--max-tokens", "48", "--data-dir", str(tiny_world["data"]),
         "--out", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tiny-test: Avg@2 ") and (tmp_path / "cli" / "summary.json").is_file()


def test_bad_sampling_settings_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="n=0"):
        SamplingSettings(n=0)


def test_checkpoint_selection_last_and_best(tmp_path):
    import json as _json

    from fipo.eval.checkpoints import checkpoint_steps, merge_command, select_step

    for step in (5, 10, 15):
        (tmp_path / "ckpt" / f"global_step_{step}" / "actor").mkdir(parents=True)
    (tmp_path / "ckpt" / "global_step_20").mkdir()  # no actor: not a usable checkpoint
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(_json.dumps({"step": s, "data": {"val/acc": v}}) + "\n"
                               for s, v in [(0, 0.1), (5, 0.4), (10, 0.4), (12, 0.9), (15, 0.3)]))
    assert checkpoint_steps(tmp_path / "ckpt") == [5, 10, 15]
    assert select_step(tmp_path / "ckpt") == 15
    assert select_step(tmp_path / "ckpt", "best", metrics, "val/acc") == 5  # step 12 has no checkpoint; tie -> earlier
    with pytest.raises(ValueError, match="no 'val/other'"):
        select_step(tmp_path / "ckpt", "best", metrics, "val/other")
    with pytest.raises(FileNotFoundError):
        select_step(tmp_path / "nothing")
    command = merge_command(tmp_path / "ckpt" / "global_step_5" / "actor", tmp_path / "hf")
    assert command[1:5] == ["-m", "verl.model_merger", "merge", "--backend"] and command[5] == "fsdp"
