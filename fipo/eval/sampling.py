"""Sampling backends with one interface: vLLM on GPUs, transformers ``generate`` on CPU.

``sample(prompts, params)`` takes chat-formatted prompt strings and returns, per prompt, ``params.n``
:class:`Sample` objects (text, token count, finish reason: ``stop`` or ``length``). Both check the model folder's
JSON files before loading it (:func:`fipo.eval.models.check_model_folder`): a damaged one is one line naming it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from fipo.eval.models import check_model_folder
from fipo.files import read_json

BACKENDS = ("vllm", "hf")


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 32
    temperature: float = 1.0
    top_p: float = 0.7
    max_tokens: int = 20480
    seed: int = 0

    def __post_init__(self):
        for key, ok in (("n", self.n >= 1), ("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p <= 1),
                        ("max_tokens", self.max_tokens >= 1)):
            if not ok:
                raise ValueError(f"sampling: {key}={getattr(self, key)!r} is out of range")


@dataclass(frozen=True)
class Sample:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS) or "length" (truncated at max_tokens)


class Sampler(Protocol):
    tokenizer: object

    def sample(self, prompts: list[str], settings: SamplingSettings, seed_offsets: list[int]) -> list[list[Sample]]: ...


def problem_seed(seed: int, problem_index: int) -> int:
    """The seed of one problem's n samples, in [0, 2**31): a hash of the evaluation's seed and the problem's index,
    so that results do not depend on batching and no two problems share random numbers.

    Not ``seed + problem_index``: vLLM seeds a request's i-th sample with the request's seed + i, so with
    consecutive seeds problem p's sample i would draw the same numbers as problem p+1's sample i-1 (and an
    evaluation with seed s+1 the same as one with seed s). Same numbers drive the same choice wherever two
    problems' next-token distributions are alike, and the samples of one evaluation are then not independent."""
    digest = hashlib.sha256(f"fipo-eval/{seed}/{problem_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def vllm_sampling_params(settings: SamplingSettings, seed_offset: int = 0):
    """vLLM SamplingParams for one prompt, seeded by :func:`problem_seed` (vLLM seeds the i-th of its n samples
    with that seed + i)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=settings.n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=problem_seed(settings.seed, seed_offset),
    )


def samples_from_vllm_outputs(outputs) -> list[list[Sample]]:
    """vLLM ``RequestOutput`` objects (one per prompt, ``.outputs`` with n completions) -> samples."""
    return [
        [
            Sample(text=c.text, num_tokens=len(c.token_ids), finish_reason="length" if c.finish_reason == "length" else "stop")
            for c in request.outputs
        ]
        for request in outputs
    ]


# On a CPU, vLLM's attention takes only some head sizes (vllm.v1.attention.backends.cpu_attn); a model with
# another one fails minutes into the engine's start, so it is checked from config.json first.
CPU_KV_CACHE_SHARE = 0.25  # at most this share of the machine's memory for the KV cache on a CPU
CPU_KV_CACHE_FLOOR = 64 * 2**20  # bytes: vLLM needs room for at least one whole sequence


def model_geometry(config: dict) -> dict:
    """What the engine's settings depend on, from a Hugging Face config.json: head size, KV heads, layers,
    context length and the checkpoint's dtype."""
    text = config.get("text_config", config)  # multimodal configs nest the language model's
    heads = text["num_attention_heads"]
    return {
        "head_dim": text.get("head_dim") or text["hidden_size"] // heads,
        "kv_heads": text.get("num_key_value_heads") or heads,
        "layers": text["num_hidden_layers"],
        "max_len": text.get("max_position_embeddings"),
        "dtype": str(text.get("dtype") or text.get("torch_dtype") or config.get("torch_dtype") or ""),
    }


def vllm_engine_args(geometry: dict, settings: SamplingSettings, concurrent_prompts: int, on_cpu: bool,
                     memory_bytes: int = 0, supported_head_sizes: tuple = ()) -> dict:
    """The engine arguments that depend on where vLLM runs; on a GPU none (vLLM's defaults).

    On a CPU:
    * ``enable_chunked_prefill=False``: with chunked prefill, seeded requests crash the CPU engine once a batch's
      prompts pass 4,096 tokens (``CPU Generator does not use offset``), and the evaluation seeds every request.
    * ``dtype="float32"`` for a float32 checkpoint: vLLM's ``auto`` would run it in half precision, the
      transformers backend runs it as stored; both backends then sample the same distribution.
    * ``kv_cache_memory_bytes``: room for the sequences one chunk of the evaluation runs at once
      (``concurrent_prompts`` x n, each up to the context length), between a floor and a share of the machine's
      memory; vLLM's own default on a CPU is most of the machine's memory. ``VLLM_CPU_KVCACHE_SPACE`` (GiB), when
      set, still wins: vLLM reads it after these arguments.
    """
    if not on_cpu:
        return {}
    if supported_head_sizes and geometry["head_dim"] not in supported_head_sizes:
        raise ValueError(f"vLLM's CPU attention supports head sizes {', '.join(map(str, supported_head_sizes))}; "
                         f"this model's is {geometry['head_dim']} (config.json): evaluate it with --backend hf")
    dtype_bytes = 4 if "float32" in geometry["dtype"] else 2
    per_token = 2 * geometry["layers"] * geometry["kv_heads"] * geometry["head_dim"] * dtype_bytes  # K and V
    context = geometry["max_len"] or settings.max_tokens
    wanted = concurrent_prompts * settings.n * context * per_token
    ceiling = int(CPU_KV_CACHE_SHARE * memory_bytes) if memory_bytes else wanted
    args = {"enable_chunked_prefill": False,
            "kv_cache_memory_bytes": max(CPU_KV_CACHE_FLOOR, min(wanted, ceiling))}
    if "float32" in geometry["dtype"]:
        args["dtype"] = "float32"
    return args


class VLLMSampler:
    """vLLM's offline engine; on a CPU (the vllm-cpu build) with :func:`vllm_engine_args`' settings."""

    def __init__(self, model_path: str, settings: SamplingSettings = SamplingSettings(), tensor_parallel_size: int = 1,
                 max_model_len: Optional[int] = None, gpu_memory_utilization: float = 0.9,
                 concurrent_prompts: int = 8):
        check_model_folder(model_path)
        from vllm import LLM

        engine_args = vllm_engine_args(model_geometry(read_json(Path(model_path) / "config.json")), settings,
                                       concurrent_prompts, **_vllm_platform())
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=settings.seed,
            **engine_args,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def sample(self, prompts: list[str], settings: SamplingSettings, seed_offsets: list[int]) -> list[list[Sample]]:
        params = [vllm_sampling_params(settings, offset) for offset in seed_offsets]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return samples_from_vllm_outputs(outputs)


def _vllm_platform() -> dict:
    """Where the installed vLLM runs: the ``on_cpu``, ``memory_bytes`` and ``supported_head_sizes`` arguments
    of :func:`vllm_engine_args`."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {"on_cpu": False}
    import psutil
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return {"on_cpu": True, "memory_bytes": psutil.virtual_memory().total,
            "supported_head_sizes": tuple(CPUAttentionBackend.get_supported_head_sizes())}


class HFSampler:
    """transformers ``generate`` on CPU (or any torch device): for the tiny model and small checks."""

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 64):
        check_model_folder(model_path)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
        self.device, self.batch_size = device, batch_size

    def sample(self, prompts: list[str], settings: SamplingSettings, seed_offsets: list[int]) -> list[list[Sample]]:
        return [self._sample_one(p, settings, offset) for p, offset in zip(prompts, seed_offsets)]

    def _sample_one(self, prompt: str, settings: SamplingSettings, seed_offset: int) -> list[Sample]:
        """The n samples of one prompt, seeded by the problem's index (reproducible whatever the batching)."""
        torch, tok = self.torch, self.tokenizer
        torch.manual_seed(problem_seed(settings.seed, seed_offset))
        eos, pad = tok.eos_token_id, tok.pad_token_id
        flat = [prompt] * settings.n
        samples: list[Sample] = []
        for start in range(0, len(flat), self.batch_size):
            batch = tok(flat[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            greedy = settings.temperature == 0
            with torch.no_grad():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=settings.max_tokens,
                    do_sample=not greedy,
                    temperature=None if greedy else settings.temperature,
                    top_p=None if greedy else settings.top_p,
                    # 0: no top-k. Left None, generate() fills in transformers' global default (50), which vLLM
                    # and the official evaluation do not apply.
                    top_k=None if greedy else 0,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            for ids in out[:, batch["input_ids"].shape[1] :].tolist():
                stopped = eos in ids
                ids = ids[: ids.index(eos) + 1] if stopped else ids
                samples.append(Sample(tok.decode(ids, skip_special_tokens=True), len(ids), "stop" if stopped else "length"))
        return samples


def make_sampler(backend: str, model_path: str, settings: SamplingSettings, tensor_parallel_size: int = 1,
                 concurrent_prompts: int = 8) -> Sampler:
    if backend == "vllm":
        return VLLMSampler(model_path, settings, tensor_parallel_size=tensor_parallel_size,
                           concurrent_prompts=concurrent_prompts)
    if backend == "hf":
        return HFSampler(model_path)
    raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
