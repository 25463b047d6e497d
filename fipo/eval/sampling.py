"""Sampling backends with one interface: vLLM on GPUs, transformers ``generate`` on CPU.

``sample(prompts, params)`` takes chat-formatted prompt strings and returns, per prompt, ``params.n``
:class:`Sample` objects (text, token count, finish reason: ``stop`` or ``length``). Both check the model folder's
JSON files before loading it (:func:`fipo.eval.models.check_model_folder`): a damaged one is one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from fipo.eval.models import check_model_folder

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


def vllm_sampling_params(settings: SamplingSettings, seed_offset: int = 0):
    """vLLM SamplingParams for one prompt; seed + the problem's index makes its n samples reproducible
    whatever the batching."""
    from vllm import SamplingParams

    return SamplingParams(
        n=settings.n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=settings.seed + seed_offset,
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


class VLLMSampler:
    def __init__(self, model_path: str, tensor_parallel_size: int = 1, max_model_len: Optional[int] = None,
                 gpu_memory_utilization: float = 0.9, seed: int = 0):
        check_model_folder(model_path)
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def sample(self, prompts: list[str], settings: SamplingSettings, seed_offsets: list[int]) -> list[list[Sample]]:
        params = [vllm_sampling_params(settings, offset) for offset in seed_offsets]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return samples_from_vllm_outputs(outputs)


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
        torch.manual_seed(settings.seed + seed_offset)
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
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            for ids in out[:, batch["input_ids"].shape[1] :].tolist():
                stopped = eos in ids
                ids = ids[: ids.index(eos) + 1] if stopped else ids
                samples.append(Sample(tok.decode(ids, skip_special_tokens=True), len(ids), "stop" if stopped else "length"))
        return samples


def make_sampler(backend: str, model_path: str, tensor_parallel_size: int = 1, seed: int = 0) -> Sampler:
    if backend == "vllm":
        return VLLMSampler(model_path, tensor_parallel_size=tensor_parallel_size, seed=seed)
    if backend == "hf":
        return HFSampler(model_path)
    raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
