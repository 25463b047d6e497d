"""`fipo eval` end to end with the transformers backend on the tiny model; the vLLM backend around its calls."""

import json
import os
import re
import subprocess
import sys
import types
from dataclasses import asdict
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


def test_hf_sampling_is_top_p_alone_without_transformers_default_top_k(tiny_world):
    """A model whose next-token distribution is nearly flat (every weight zero but small random embeddings, tied to
    the output): top-p 0.7 keeps about 70 % of the vocabulary, and 1,024 samples draw well over 50 distinct first
    tokens (117 with this seed; 23 with transformers' default top-k of 50, which generate() adds unless the
    sampler turns it off; vLLM and the official evaluation apply none)."""
    import torch

    sampler = HFSampler(str(tiny_world["model"]), batch_size=1024)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in sampler.model.parameters():
            parameter.zero_()
        sampler.model.model.norm.weight.fill_(1.0)
        embeddings = sampler.model.get_input_embeddings().weight
        embeddings.copy_(0.01 * torch.randn(embeddings.shape, generator=generator))
    prompt = sampler.tokenizer.apply_chat_template([{"role": "user", "content": "Add 1+2."}], tokenize=False,
                                                   add_generation_prompt=True)
    samples = sampler.sample([prompt], SamplingSettings(n=1024, top_p=0.7, max_tokens=1), [0])[0]
    assert len({s.text for s in samples}) > 60  # distinct texts: at most the distinct tokens


def test_tiny_evaluation_writes_samples_and_summary_and_resumes(tiny_world, hf_sampler, tmp_path):
    out = tmp_path / "eval"
    crashing = CountingSampler(hf_sampler, fail_after_chunks=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(tiny_world["model"]), "tiny-test", out, SETTINGS, backend="hf", data_dir=tiny_world["data"],
                 sampler=crashing, log=lambda m: None)
    ids = [p["problem_id"] for p in load_benchmark("tiny-test", tiny_world["data"])]
    done = read_finished(out / "samples.jsonl", SETTINGS.n, ids)
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
    assert params == {"n": 32, "temperature": 1.0, "top_p": 0.7, "max_tokens": 20480,
                      "seed": sampling.problem_seed(7, 4)}


def test_no_two_problems_or_seeds_share_a_samples_random_numbers():
    """vLLM seeds sample i of a request with the request's seed + i: the n seeds of every problem of an
    evaluation, and of evaluations with nearby seeds, must not overlap (with seed + index they do: problem p's
    sample 1 would be problem p+1's sample 0)."""
    n, taken = 64, {}
    for seed in range(4):
        for problem in range(200):
            first = sampling.problem_seed(seed, problem)
            assert 0 <= first < 2**31 and first == sampling.problem_seed(seed, problem)  # reproducible
            for s in range(first, first + n):
                assert s not in taken, (seed, problem, taken.get(s))
                taken[s] = (seed, problem)


TINY_GEOMETRY = {"head_dim": 32, "kv_heads": 2, "layers": 2, "max_len": 512, "dtype": "float32"}
CPU_HEADS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def test_vllm_on_a_gpu_keeps_vllms_defaults():
    assert sampling.vllm_engine_args(TINY_GEOMETRY, SamplingSettings(), 8, on_cpu=False) == {}


def test_vllm_on_a_cpu_turns_chunked_prefill_off_keeps_float32_and_sizes_the_kv_cache():
    settings = SamplingSettings(n=32, max_tokens=80)
    args = sampling.vllm_engine_args(TINY_GEOMETRY, settings, 8, on_cpu=True, memory_bytes=24 * 2**30,
                                     supported_head_sizes=CPU_HEADS)
    # 8 prompts x 32 samples x 512 positions x (K and V x 2 layers x 2 KV heads x 32 x 4 bytes)
    assert args == {"enable_chunked_prefill": False, "dtype": "float32", "kv_cache_memory_bytes": 8 * 32 * 512 * 1024}
    bf16 = sampling.vllm_engine_args({**TINY_GEOMETRY, "dtype": "bfloat16"}, settings, 8, on_cpu=True,
                                     memory_bytes=24 * 2**30)
    assert "dtype" not in bf16 and bf16["kv_cache_memory_bytes"] == 8 * 32 * 512 * 512


def test_vllm_on_a_cpu_caps_the_kv_cache_at_a_share_of_memory_and_keeps_a_floor():
    big = {"head_dim": 128, "kv_heads": 4, "layers": 28, "max_len": 32768, "dtype": "bfloat16"}  # a 7B
    args = sampling.vllm_engine_args(big, SamplingSettings(n=32), 8, on_cpu=True, memory_bytes=24 * 2**30)
    assert args["kv_cache_memory_bytes"] == int(sampling.CPU_KV_CACHE_SHARE * 24 * 2**30)
    small = sampling.vllm_engine_args(TINY_GEOMETRY, SamplingSettings(n=1), 1, on_cpu=True, memory_bytes=2**30)
    assert small["kv_cache_memory_bytes"] == sampling.CPU_KV_CACHE_FLOOR


def test_vllm_on_a_cpu_refuses_a_head_size_its_attention_lacks_before_starting():
    with pytest.raises(ValueError, match=r"head sizes 32, 64.*this model's is 24 .*--backend hf"):
        sampling.vllm_engine_args({**TINY_GEOMETRY, "head_dim": 24}, SamplingSettings(), 8, on_cpu=True,
                                  memory_bytes=2**34, supported_head_sizes=CPU_HEADS)


def test_model_geometry_reads_head_size_from_config_json(tiny_world):
    config = json.loads((tiny_world["model"] / "config.json").read_text())
    geometry = sampling.model_geometry(config)
    assert geometry["head_dim"] == config["hidden_size"] // config["num_attention_heads"]
    assert (geometry["kv_heads"], geometry["layers"], geometry["dtype"]) == (
        config["num_key_value_heads"], config["num_hidden_layers"], "float32")
    assert sampling.model_geometry({**config, "head_dim": 64})["head_dim"] == 64  # an explicit head_dim wins


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

    from fipo.eval.checkpoints import merge_command, select_step
    from fipo.checkpoint_steps import checkpoint_steps

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


# ------------------------------------------------------------------------------------ resume, keys, refusals
# These run without a real model: a fake sampler, and a "model" folder whose content is a few bytes (an
# evaluation is keyed on that content).


class FakeSampler:
    """Answers every prompt with n fixed responses; counts the prompts it was asked for."""

    tokenizer = SimpleNamespace(apply_chat_template=lambda messages, **kw: messages[-1]["content"])

    def __init__(self):
        self.prompts = 0

    def sample(self, prompts, settings, seed_offsets):
        self.prompts += len(prompts)
        return [[sampling.Sample(f"Answer: {k}", 3 + k, "stop") for k in range(settings.n)] for _ in prompts]


FAST = SamplingSettings(n=3, max_tokens=8)


@pytest.fixture
def bench(tmp_path):
    """The tiny-test benchmark (64 problems) and a model folder of its own."""
    from fipo.tiny import prepare_tiny_data

    data = tmp_path / "data"
    prepare_tiny_data(data)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(os.urandom(64))
    (model / "config.json").write_text("{}")
    ids = [p["problem_id"] for p in load_benchmark("tiny-test", data)]
    return SimpleNamespace(data=data, model=model, ids=ids, out=tmp_path / "eval")


def run_eval(bench, sampler=None, **kw):
    kw.setdefault("log", lambda m: None)
    return evaluate(str(kw.pop("model", bench.model)), "tiny-test", kw.pop("out", bench.out), kw.pop("settings", FAST),
                    backend="hf", data_dir=bench.data, sampler=sampler, **kw)


def sample_lines(pid, n, indices=None):
    return [json.dumps({"problem_id": pid, "sample_index": k, "response": "Answer: 1", "extracted_answer": "1",
                        "correct": False, "length": 3, "finish_reason": "stop"}) + "\n"
            for k in (range(n) if indices is None else indices)]


def test_a_failed_start_claims_nothing_and_the_corrected_call_runs(bench, monkeypatch):
    from fipo.eval import runner

    with pytest.raises(FileNotFoundError, match="model folder not found: .*no-such-model"):
        run_eval(bench, model=bench.model.parent / "no-such-model")  # a typo in --model
    assert not (bench.out / "settings.json").exists()

    def backend_cannot_start(*args, **kw):
        raise RuntimeError("CUDA out of memory")

    broken = bench.model.parent / "other-model"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(os.urandom(64))
    monkeypatch.setattr(runner, "make_sampler", backend_cannot_start)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        run_eval(bench, model=broken)
    assert not (bench.out / "settings.json").exists() and not (bench.out / "samples.jsonl").exists()

    summary = run_eval(bench, FakeSampler())  # another model, other settings: the folder was not claimed
    assert summary["problems"] == 64
    saved = json.loads((bench.out / "settings.json").read_text())
    from fipo.provenance import folder_digest

    assert saved["model_sha256"] == folder_digest(bench.model) and saved["model"] == str(bench.model)
    assert len(saved["benchmark_sha256"]) == 64 and saved["n"] == FAST.n


def test_resume_rewrites_the_sample_file_atomically(bench, monkeypatch):
    import pathlib
    import random

    from fipo.eval import runner

    rng = random.Random()
    n = FAST.n
    done = rng.randint(1, 20)
    lines = [line for pid in bench.ids[:done] for line in sample_lines(pid, n)]
    tail = "".join(sample_lines(bench.ids[done], n, range(rng.randint(0, n - 1))))
    tail += sample_lines(bench.ids[done], n)[0][: rng.randint(1, 40)]  # the line a SIGKILL tore
    bench.out.mkdir()
    key = runner.evaluation_key(bench.model, "tiny-test", bench.data, "math_dapo", FAST)
    (bench.out / "settings.json").write_text(json.dumps(key))
    original = "".join(lines) + tail
    (bench.out / "samples.jsonl").write_text(original)

    # killed while serializing the kept records, then while writing them: the old file is untouched
    real_dumps, calls, die_after = json.dumps, [], rng.randint(0, len(lines) - 1)

    def dumps_then_die(*a, **kw):
        calls.append(1)
        if len(calls) > die_after:
            raise KeyboardInterrupt("SIGKILL")
        return real_dumps(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(json, "dumps", dumps_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_eval(bench, FakeSampler())
    assert (bench.out / "samples.jsonl").read_text() == original

    real_write_text = pathlib.Path.write_text

    def write_half_then_die(self, text, *a, **kw):
        real_write_text(self, text[: len(text) // 2], *a, **kw)
        raise KeyboardInterrupt("SIGKILL")

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", write_half_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_eval(bench, FakeSampler())
    assert (bench.out / "samples.jsonl").read_text() == original
    assert sorted(p.name for p in bench.out.iterdir()) == ["samples.jsonl", "settings.json"]  # no temporary file

    logged = []
    sampler = FakeSampler()
    run_eval(bench, sampler, log=logged.append)
    assert sampler.prompts == 64 - done  # the finished problems were kept, the torn one sampled again
    assert any("torn last line" in m for m in logged)
    assert read_finished(bench.out / "samples.jsonl", n, bench.ids).keys() == set(bench.ids)


def test_inconsistent_sample_files_are_refused_with_file_and_line(bench):
    import random

    from fipo.files import MalformedLineError

    rng = random.Random()
    n = rng.randint(2, 5)
    pids = rng.sample(bench.ids, 6)
    path = bench.out / "samples.jsonl"
    path.parent.mkdir()

    def refused(lines, line, reason):
        path.write_text("".join(lines))
        with pytest.raises(MalformedLineError, match=rf"samples.jsonl:{line}: .*{reason}"):
            read_finished(path, n, bench.ids)

    head = [line for pid in pids[:3] for line in sample_lines(pid, n)]
    at = len(head) + 1  # the first line after three complete problems
    refused(head + sample_lines("not-a-benchmark-problem", n), at, "not in the benchmark")
    k = rng.randrange(n)
    refused(head + sample_lines(pids[3], n, [k, k]), at + 1, f"duplicate sample_index {k} of problem {pids[3]!r}")
    refused(head + sample_lines(pids[3], n, [n]), at, rf"sample_index {n} .*outside \[0, {n}\)")
    refused(head + sample_lines(pids[3], n, [-1]), at, "outside")
    refused(head + sample_lines(pids[3], n) + sample_lines(pids[3], n, [0]), at + n, f"more than n={n}")
    short = rng.randint(1, n - 1)
    refused(head + sample_lines(pids[3], n, range(short)) + sample_lines(pids[4], n), at,
            f"has {short} of n={n} samples but is not the last problem")
    refused(head + sample_lines(pids[0], n), at, "appears again")
    refused(head + ["not json\n"] + sample_lines(pids[3], n), at, "malformed sample line")

    # what a crash leaves (the last problem short, a torn last line) is dropped with a log line
    logged = []
    path.write_text("".join(head + sample_lines(pids[3], n, range(short))) + '{"problem_id": "')
    assert list(read_finished(path, n, bench.ids, logged.append)) == pids[:3]
    assert any(f"{short} of n={n} samples of problem {pids[3]!r}" in m for m in logged)
    assert any("torn last line" in m for m in logged)


def test_records_of_other_problems_do_not_enter_the_summary(bench):
    """Before, a sample file with problems outside the benchmark was accepted and changed the mean length."""
    run_eval(bench, FakeSampler())
    path = bench.out / "samples.jsonl"
    path.write_text(path.read_text() + "".join(sample_lines("stray", FAST.n)))
    with pytest.raises(ValueError, match=rf"samples.jsonl:{64 * FAST.n + 1}: problem 'stray' is not in the benchmark"):
        run_eval(bench, FakeSampler())


def test_an_evaluation_is_keyed_on_the_models_content_not_its_path(bench):
    first = run_eval(bench, FakeSampler())
    old_samples = (bench.out / "samples.jsonl").read_text()

    moved = bench.model.parent / "moved-model"
    bench.model.rename(moved)  # same content elsewhere: every sample is reused
    sampler = FakeSampler()
    assert run_eval(bench, sampler, model=moved)["avg@3"] == first["avg@3"] and sampler.prompts == 0
    assert json.loads((bench.out / "settings.json").read_text())["model"] == str(moved)  # information only
    old_settings = (bench.out / "settings.json").read_text()

    (moved / "model.safetensors").write_bytes(os.urandom(64))  # retrained in place
    with pytest.raises(ValueError, match=rf"{re.escape(str(bench.out))} holds an evaluation with other settings "
                                         r"\(model_sha256: \w{12} -> \w{12}\).*--on-change restart"):
        run_eval(bench, FakeSampler(), model=moved)
    assert (bench.out / "samples.jsonl").read_text() == old_samples  # refusing touches nothing

    logged = []
    sampler = FakeSampler()
    run_eval(bench, sampler, model=moved, on_change="restart", log=logged.append)
    assert sampler.prompts == 64  # started afresh
    old_sha = json.loads(old_settings)["model_sha256"]
    [aside] = (bench.out / "superseded").iterdir()
    assert aside.name.endswith("-" + old_sha[:12]) and any(str(aside) in m for m in logged)
    assert sorted(p.name for p in aside.iterdir()) == ["samples.jsonl", "settings.json", "summary.csv", "summary.json"]
    assert (aside / "samples.jsonl").read_text() == old_samples
    assert (aside / "settings.json").read_text() == old_settings
    from fipo.provenance import folder_digest

    assert json.loads((bench.out / "settings.json").read_text())["model_sha256"] == folder_digest(moved)

    # a settings.json from before content keys (no model_sha256) is another evaluation too
    legacy = {"model": str(moved), "benchmark": "tiny-test", "scorer": "math_dapo", **asdict(FAST)}
    (bench.out / "settings.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match=r"benchmark_sha256: \(absent\) -> \w+; model_sha256: \(absent\)"):
        run_eval(bench, FakeSampler(), model=moved)
    with pytest.raises(ValueError, match="on_change='later'; allowed: refuse, restart"):
        run_eval(bench, FakeSampler(), model=moved, on_change="later")


def test_a_changed_benchmark_file_is_another_evaluation(bench):
    import pandas as pd

    from fipo.data import dataset_path

    run_eval(bench, FakeSampler())
    path = dataset_path("tiny-test", bench.data)
    pd.read_parquet(path).iloc[:-1].to_parquet(path)  # one problem less, under the same name
    with pytest.raises(ValueError, match=r"other settings \(benchmark_sha256: "):
        run_eval(bench, FakeSampler())


class HalfSureSampler:
    """n - 1 samples without an answer, then the right one: Cons@n is 0 when the unanswered vote, 100 when they
    abstain."""

    tokenizer = FakeSampler.tokenizer

    def __init__(self, bench):
        self.truth = {p["messages"][-1]["content"]: p["ground_truth"] for p in load_benchmark("tiny-test", bench.data)}
        self.prompts = 0

    def sample(self, prompts, settings, seed_offsets):
        self.prompts += len(prompts)
        return [[sampling.Sample("I do not know", 3, "stop")] * (settings.n - 1)
                + [sampling.Sample(f"Answer: {self.truth[p]}", 3, "stop")] for p in prompts]


def test_the_cons_rule_is_in_the_key_and_a_change_recomputes_the_summary_from_the_samples(bench):
    from fipo.eval.metrics import SUMMARY_VERSION

    sampler = HalfSureSampler(bench)
    vote = run_eval(bench, sampler)  # default: samples without an answer vote (verl's maj@N convention)
    assert vote["cons@3"] == 0.0 and vote["avg@3"] == pytest.approx(100 / 3) and vote["pass@3"] == 100.0
    saved = json.loads((bench.out / "settings.json").read_text())
    assert saved["cons_unanswered"] == "vote" and saved["summary_version"] == SUMMARY_VERSION
    assert vote["cons_unanswered"] == "vote" and "no answer" in vote["cons_rule"]

    logs = []
    abstain = run_eval(bench, sampler, cons_unanswered="abstain", log=logs.append)
    assert sampler.prompts == 64  # the samples were kept: only the summary was recomputed
    assert abstain["cons@3"] == 100.0 and abstain["avg@3"] == vote["avg@3"]
    assert json.loads((bench.out / "settings.json").read_text())["cons_unanswered"] == "abstain"
    assert json.loads((bench.out / "summary.json").read_text())["cons_unanswered"] == "abstain"
    assert any("cons_unanswered: vote -> abstain" in line for line in logs)

    # a settings.json from before the rule (no cons_unanswered, no summary_version) keeps its samples too
    key = json.loads((bench.out / "settings.json").read_text())
    for name in ("cons_unanswered", "summary_version"):
        del key[name]
    (bench.out / "settings.json").write_text(json.dumps(key))
    assert run_eval(bench, sampler)["cons@3"] == 0.0 and sampler.prompts == 64

    with pytest.raises(ValueError, match="allowed: vote, abstain"):
        run_eval(bench, sampler, cons_unanswered="skip")
    # the scorer decides each sample's answer and correctness: a change is another evaluation
    with pytest.raises(ValueError, match=r"other settings \(scorer: math_dapo -> math_dapo_strict\)"):
        run_eval(bench, sampler, scorer="math_dapo_strict")


# ------------------------------------------------------------------------------------ checkpoint selection


def checkpoints_with_metrics(tmp_path, values, extra_lines=""):
    """Checkpoints at every step of ``values`` ({step: validation value}) and a metrics file logging them."""
    for step in values:
        (tmp_path / "ckpt" / f"global_step_{step}" / "actor").mkdir(parents=True)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "data": {"val/acc": v}}) + "\n" for s, v in values.items())
                       + extra_lines)
    return tmp_path / "ckpt", metrics


def test_best_checkpoint_ignores_non_finite_scores(tmp_path):
    import math
    import random

    from fipo.eval.checkpoints import select_step

    rng = random.Random()
    steps = sorted(rng.sample(range(1, 200), rng.randint(3, 8)))
    values = {s: rng.random() for s in steps}
    # One step after the first keeps a finite score; the others may be NaN/inf, and the first is NaN (NaN first is
    # what max() picked before).
    keep = rng.choice(steps[1:])
    others = [s for s in steps[1:] if s != keep]
    for s in rng.sample(others, rng.randint(0, len(others))):
        values[s] = rng.choice([math.nan, math.inf, -math.inf])
    values[steps[0]] = math.nan
    finite = {s: v for s, v in values.items() if math.isfinite(v)}
    ckpt, metrics = checkpoints_with_metrics(tmp_path, values)
    assert select_step(ckpt, "best", metrics, "val/acc") == max(finite, key=lambda s: (finite[s], -s)), values

    ckpt, metrics = checkpoints_with_metrics(tmp_path / "all-bad", {s: math.nan for s in steps[:2]})
    with pytest.raises(ValueError, match=rf"metrics.jsonl: 'val/acc' is not finite \(NaN/inf\) at every checkpointed "
                                         rf"step that logged it: \[{steps[0]}, {steps[1]}\]"):
        select_step(ckpt, "best", metrics, "val/acc")


def test_best_checkpoint_reads_metrics_past_a_torn_line_and_names_a_bad_one(tmp_path):
    from fipo.eval.checkpoints import select_step
    from fipo.files import MalformedLineError

    ckpt, metrics = checkpoints_with_metrics(tmp_path, {5: 0.2, 10: 0.6}, extra_lines='{"step": 15, "da')
    assert select_step(ckpt, "best", metrics, "val/acc") == 10  # the line a crash tore is skipped
    metrics.write_text('{"step": 5, "data": {"val/acc": 0.2}}\n{"step": 10\n{"step": 10, "data": {"val/acc": 0.6}}\n')
    with pytest.raises(MalformedLineError, match=r"metrics.jsonl:2: malformed metrics line"):
        select_step(ckpt, "best", metrics, "val/acc")


def test_latest_checkpointed_step(tmp_path):
    from fipo.checkpoint_steps import latest_checkpointed_step

    assert latest_checkpointed_step(tmp_path) is None
    marker = tmp_path / "latest_checkpointed_iteration.txt"
    marker.write_text("40\n")
    assert latest_checkpointed_step(tmp_path) == 40
    for content in ("", "  \n", "abc", "-3", "12.5"):
        marker.write_text(content)
        with pytest.raises(ValueError, match=rf"latest_checkpointed_iteration.txt: expected the step number .*found "
                                             rf"{re.escape(repr(content.strip()))}"):
            latest_checkpointed_step(tmp_path)


# ------------------------------------------------------------------------------------ what enters is checked


def edit_benchmark(bench, edit):
    """Rewrite the tiny-test parquet as ``edit(frame)`` returns it; returns its path."""
    import pandas as pd

    from fipo.data import dataset_path

    path = dataset_path("tiny-test", bench.data)
    edit(pd.read_parquet(path)).to_parquet(path)
    return path


def set_cell(frame, column, row, value):
    values = list(frame[column])
    values[row] = value
    return frame.assign(**{column: values})


def test_a_benchmark_with_two_rows_of_one_problem_id_is_refused(bench):
    """Before, the second problem was scored with the first one's samples (they share the key of samples.jsonl)."""
    import random

    from fipo.eval.runner import BenchmarkFileError

    first, second = sorted(random.Random().sample(range(64), 2))
    path = edit_benchmark(bench, lambda f: set_cell(f, "extra_info", second, dict(f.extra_info[first])))
    message = (rf"^{re.escape(str(path))}: rows {first} and {second} \(counting from 0\) have the same problem_id "
               rf"'{bench.ids[first]}'; each problem needs its own id$")
    with pytest.raises(BenchmarkFileError, match=message):
        load_benchmark("tiny-test", bench.data)
    with pytest.raises(ValueError, match=message):  # the CLI prints a ValueError as one line
        run_eval(bench, FakeSampler())
    assert not bench.out.exists()


@pytest.mark.parametrize("reward_model, problem", [
    (None, "no reward_model"),
    ({"style": "rule", "ground_truth": None}, "no reward_model.ground_truth"),
    ({"style": "rule", "ground_truth": ""}, "an empty ground truth \\(''\\)"),
    ({"style": "rule", "ground_truth": "  "}, "an empty ground truth \\('  '\\)"),
])
def test_a_benchmark_row_without_a_ground_truth_is_refused(bench, reward_model, problem):
    """Before, such a row was scored against the text "None" (or against nothing)."""
    import random

    from fipo.eval.runner import BenchmarkFileError

    row = random.Random().randrange(64)
    path = edit_benchmark(bench, lambda f: set_cell(f, "reward_model", row, reward_model))
    with pytest.raises(BenchmarkFileError, match=rf"^{re.escape(str(path))}: row {row} \(counting from 0\) has "
                                                 rf"{problem}; every problem needs its answer$"):
        load_benchmark("tiny-test", bench.data)


def test_a_benchmark_without_answers_at_all_is_refused_at_its_first_row(bench):
    from fipo.eval.runner import BenchmarkFileError

    path = edit_benchmark(bench, lambda f: f.drop(columns="reward_model"))
    with pytest.raises(BenchmarkFileError, match=rf"^{re.escape(str(path))}: row 0 \(counting from 0\) has no "
                                                 r"reward_model;"):
        load_benchmark("tiny-test", bench.data)
    # a reward_model without the ground_truth field in every row: parquet stores it as a struct without it
    path = edit_benchmark(bench, lambda f: f.assign(reward_model=[{"style": "rule"}] * len(f)))
    with pytest.raises(BenchmarkFileError, match=r"row 0 \(counting from 0\) has no reward_model.ground_truth"):
        load_benchmark("tiny-test", bench.data)


def test_cli_prints_a_bad_benchmark_as_one_line(bench):
    path = edit_benchmark(bench, lambda f: set_cell(f, "reward_model", 5, None))
    out = subprocess.run([sys.executable, "-m", "fipo", "eval", "--model", str(bench.model), "--benchmark", "tiny-test",
                          "--backend", "hf", "--data-dir", str(bench.data), "--out", str(bench.out)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr == f"fipo: error: {path}: row 5 (counting from 0) has no reward_model; " \
                                                 "every problem needs its answer\n", out.stderr


def damage_json(path):
    """Put an '@' before the first quote of a random indented line of a pretty-printed JSON file; returns the
    (line, column) where a parser stops."""
    import random

    lines = path.read_text().split("\n")
    candidates = [i for i, line in enumerate(lines) if i > 0 and line.lstrip().startswith('"')]
    i = random.Random().choice(candidates)
    column = lines[i].index('"')
    lines[i] = lines[i][:column] + "@" + lines[i][column:]
    path.write_text("\n".join(lines))
    return i + 1, column + 1


@pytest.fixture
def tiny_model_copy(tiny_world, tmp_path):
    import shutil

    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_world["model"], copy)
    return copy


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_a_damaged_json_file_of_the_model_is_named_with_its_line_and_column(tiny_world, tiny_model_copy, tmp_path,
                                                                            name):
    from fipo.eval.models import ModelFolderError, check_model_folder

    line, column = damage_json(tiny_model_copy / name)
    path = re.escape(str(tiny_model_copy / name))
    message = rf"^{path}:{line}:{column}: not valid JSON \(.*\); the model folder is damaged"
    with pytest.raises(ModelFolderError, match=message):
        check_model_folder(tiny_model_copy)
    with pytest.raises(ModelFolderError, match=message):  # before transformers reads anything
        HFSampler(str(tiny_model_copy))
    with pytest.raises(ValueError, match=message):  # and before an evaluation claims its folder
        evaluate(str(tiny_model_copy), "tiny-test", tmp_path / "eval", SETTINGS, backend="hf",
                 data_dir=tiny_world["data"], log=lambda m: None)
    assert not (tmp_path / "eval" / "settings.json").exists()


def test_cli_prints_a_damaged_tokenizer_as_one_line(tiny_world, tiny_model_copy, tmp_path):
    """Before, a truncated tokenizer.json was a traceback from inside transformers and tokenizers."""
    path = tiny_model_copy / "tokenizer.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # a copy cut short
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as err:
        where = f"{err.lineno}:{err.colno}"
    out = subprocess.run([sys.executable, "-m", "fipo", "eval", "--model", str(tiny_model_copy), "--benchmark",
                          "tiny-test", "--backend", "hf", "--n", "1", "--data-dir", str(tiny_world["data"]), "--out",
                          str(tmp_path / "eval")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert re.fullmatch(rf"fipo: error: {re.escape(str(path))}:{where}: not valid JSON \(.*\); the model folder is "
                        r"damaged: copy, download or convert it again\n", out.stderr), out.stderr


def test_model_json_files_must_be_utf8_json_objects(tmp_path):
    from fipo.eval.models import ModelFolderError, check_model_folder

    (tmp_path / "model.safetensors").write_bytes(b"not JSON, not checked")
    (tmp_path / "provenance.json").write_text("{ not read by any loader")  # the project's own: not checked
    check_model_folder(tmp_path)
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(ModelFolderError, match=r"config.json:1:1: expected a JSON object, found an array"):
        check_model_folder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "generation_config.json").write_bytes(b'{"a": 1,\n "b": "\xff"}')
    with pytest.raises(ModelFolderError, match=r"generation_config.json:2:8: not UTF-8 text \(byte 0xff\)"):
        check_model_folder(tmp_path)
    (tmp_path / "generation_config.json").write_text("")  # a copy that wrote nothing
    with pytest.raises(ModelFolderError, match=r"generation_config.json:1:1: not valid JSON \(Expecting value\)"):
        check_model_folder(tmp_path)


# ------------------------------------------------------------------------------------ one writer per folder

# Runs an evaluation of the bench whose sampler never returns: a first `fipo eval` in the middle of its work.
STUCK_EVALUATION = """
import sys, time
from types import SimpleNamespace
from fipo.eval.runner import evaluate
from fipo.eval.sampling import SamplingSettings

class Stuck:
    tokenizer = SimpleNamespace(apply_chat_template=lambda messages, **kw: messages[-1]["content"])

    def sample(self, prompts, settings, seed_offsets):
        print("sampling", flush=True)
        time.sleep(600)

model, out, data = sys.argv[1:]
evaluate(model, "tiny-test", out, SamplingSettings(n=3, max_tokens=8), backend="hf", data_dir=data, sampler=Stuck(),
         log=lambda m: None)
"""


def test_a_second_evaluation_into_one_folder_is_refused_naming_the_first(bench):
    """Before, both ran and appended to one samples.jsonl (every problem twice)."""
    from fipo.folder_lock import FolderBusy

    first = subprocess.Popen([sys.executable, "-c", STUCK_EVALUATION, str(bench.model), str(bench.out),
                              str(bench.data)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "sampling\n"
        sampler = FakeSampler()
        with pytest.raises(FolderBusy, match=rf"^{re.escape(str(bench.out))} is in use by fipo eval of "
                                             rf"{re.escape(str(bench.model))} on tiny-test \(pid {first.pid} on .*"
                                             rf"\(lock: .*\.eval\.lock\)$"):
            run_eval(bench, sampler)
        assert sampler.prompts == 0 and not (bench.out / "samples.jsonl").exists()
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock
        first.wait()
        first.stdout.close()
    sampler = FakeSampler()
    assert run_eval(bench, sampler)["problems"] == 64 and sampler.prompts == 64
    assert len((bench.out / "samples.jsonl").read_text().splitlines()) == 64 * FAST.n


def test_a_second_conversion_into_one_target_is_refused_and_leaves_the_first_ones_files(tmp_path, monkeypatch):
    from test_folder_lock import held_by_another_process

    from fipo.eval import checkpoints
    from fipo.folder_lock import FolderBusy

    (tmp_path / "ckpt" / "global_step_5" / "actor").mkdir(parents=True)
    target = tmp_path / "hf" / "global_step_5"
    in_flight = target.with_name(".global_step_5.tmp-1")  # the holder's merger writes there
    in_flight.mkdir(parents=True)
    merges = []

    def fake_merger(actor, tmp):  # writes a one-file "model" where verl's merger would
        merges.append(tmp)
        return [sys.executable, "-c", "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(); "
                "(p / 'model.safetensors').write_bytes(b'weights')", str(tmp)]

    monkeypatch.setattr(checkpoints, "merge_command", fake_merger)
    with held_by_another_process(target, "fipo convert of a run") as holder:
        with pytest.raises(FolderBusy, match=rf"global_step_5 is in use by fipo convert of a run \(pid {holder.pid} "):
            checkpoints.convert(tmp_path / "ckpt", 5, target)
        assert merges == [] and in_flight.is_dir()  # the holder's half-made folder was not taken for a stale one
    assert checkpoints.convert(tmp_path / "ckpt", 5, target) == target
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((target / "provenance.json").read_text())["step"] == 5
    assert not in_flight.exists()  # now it is stale: its conversion is gone
