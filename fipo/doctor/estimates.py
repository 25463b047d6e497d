"""Rough sizes the doctor compares the machine with: peak GPU memory per device and the size of one checkpoint.

The facts come from :mod:`fipo.plan` (parameter counts, checkpoint bytes per parameter); the memory formulas
differ from ``fipo plan``'s on purpose. The planner budgets a typical peak on an assumed 80 GiB GPU; the doctor
needs a lower bound on the real GPU (what must fit at the very least), so that a check that fails on it fails for
certain, and one that passes may still run out of memory on a detail not counted. Nothing else in the doctor knows
how these are computed.

* vLLM (rollouts during training, and evaluation) reserves ``gpu_memory_utilization`` of every GPU; the weights'
  tensor-parallel shard (bf16: 2 bytes/parameter) and the KV cache of one sequence of the longest length must fit
  inside that share.
* verl's FSDP actor (while vLLM sleeps): fp32 weights, fp32 gradients and two fp32 Adam moments, 16 bytes/parameter
  sharded over every GPU (2 with parameter and optimizer offload: the bf16 shard in flight), plus the activations
  kept by gradient checkpointing (one bf16 hidden state per layer and token) and the fp32 logits of the tokens of
  one micro-batch (their gradient too: ×2).
* A checkpoint (verl's default save_contents: model, optimizer, extra) holds the fp32 weights and both Adam
  moments: 12 bytes/parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fipo.spec import EvaluationSpec, Experiment
from fipo.plan import MODELS, Assumptions, engine_value

GIB = 1 << 30
CUDA_OVERHEAD_BYTES = 2 * GIB  # CUDA context, NCCL buffers, allocator slack
CHECKPOINT_BYTES_PER_PARAM = Assumptions().checkpoint_bytes  # fp32 weights + Adam moments, as fipo plan
EVAL_GPU_MEMORY_UTILIZATION = 0.9  # fipo.eval.sampling.VLLMSampler's default
EVAL_PROMPT_TOKENS = 1024  # an AIME problem with the DAPO instruction and chat template: a few hundred tokens
# Printed under the memory check, so that a user who has seen fipo plan's peak knows why the two differ (the other
# half: fipo.plan.Assumptions.memory_note)
MEMORY_NOTE = ("memory vs fipo plan: this is a lower bound of what must fit (the larger of vLLM's weight shard and "
               "one longest sequence's KV cache inside its gpu_memory_utilization share and, in training, the FSDP "
               f"actor's states and activations while vLLM sleeps; + {CUDA_OVERHEAD_BYTES // GIB} GiB); `fipo plan` "
               f"budgets a typical peak on an assumed GPU instead ({Assumptions().gpu_memory_gib:g} GiB unless "
               "--gpu-memory-gib: FSDP states + vLLM's share of it, both resident), so its figure differs")


@dataclass(frozen=True)
class ModelShape:
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16


# The presets' models, from their config.json on the hub (used when no config.json is at hand); parameter counts
# from fipo.plan.MODELS, the one table of them
_QWEN25_32B = ModelShape(params=MODELS["Qwen/Qwen2.5-32B"].params, layers=64, hidden=5120, kv_heads=8, head_dim=128,
                         vocab=152064)
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-32B": _QWEN25_32B,
    "QwenPilot/FIPO_32B": _QWEN25_32B,  # FIPO trained from Qwen2.5-32B-Base: the same architecture
    "Qwen/Qwen2.5-Math-7B": ModelShape(params=MODELS["Qwen/Qwen2.5-Math-7B"].params, layers=28, hidden=3584,
                                       kv_heads=4, head_dim=128, vocab=152064),
    "Qwen/Qwen2.5-Math-1.5B": ModelShape(params=MODELS["Qwen/Qwen2.5-Math-1.5B"].params, layers=28, hidden=1536,
                                         kv_heads=2, head_dim=128, vocab=151936),
    "Qwen/Qwen2.5-0.5B-Instruct": ModelShape(params=MODELS["Qwen/Qwen2.5-0.5B-Instruct"].params, layers=24,
                                             hidden=896, kv_heads=2, head_dim=64, vocab=151936),
}


def shape_from_config(config: dict) -> Optional[ModelShape]:
    """A decoder-only transformer's shape from its Hugging Face config.json (Qwen2/Llama field names)."""
    try:
        hidden, layers, vocab = int(config["hidden_size"]), int(config["num_hidden_layers"]), int(config["vocab_size"])
        inter, heads = int(config["intermediate_size"]), int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    params = embeddings + layers * (attention + 3 * hidden * inter)
    return ModelShape(float(params), layers, hidden, kv_heads, head_dim, vocab)


def model_shape(model: str, config: Optional[dict]) -> Optional[ModelShape]:
    """From the model's config.json when the probe found one, else from KNOWN_SHAPES; None when neither knows."""
    return (shape_from_config(config) if config else None) or KNOWN_SHAPES.get(model)


def vllm_gpu_bytes(shape: ModelShape, tensor_parallel: int, max_tokens: int, utilization: float) -> float:
    """The GPU memory vLLM needs so that its share (``utilization``) holds the weight shard and one sequence's KV."""
    kv_shards = min(tensor_parallel, shape.kv_heads)  # KV heads are split over the ranks, at most one head each
    needed = shape.params * 2 / tensor_parallel + shape.kv_bytes_per_token * max_tokens / kv_shards
    return needed / utilization


def training_gpu_bytes(exp: Experiment, shape: ModelShape) -> float:
    """Peak memory per GPU of a verl run of ``exp``: the larger of the vLLM rollout and the FSDP actor update."""
    sequence = exp.data.max_prompt_length + exp.data.max_response_length
    rollout = vllm_gpu_bytes(
        shape,
        int(engine_value(exp, "actor_rollout_ref.rollout.tensor_model_parallel_size", 2)),  # verl's defaults
        sequence,
        float(engine_value(exp, "actor_rollout_ref.rollout.gpu_memory_utilization", 0.5)),
    )
    world = exp.trainer.nnodes * exp.trainer.n_gpus_per_node
    offload = all(engine_value(exp, f"actor_rollout_ref.actor.fsdp_config.{k}_offload", False) for k in ("param", "optimizer"))
    state = shape.params * (2 if offload else 16) / world
    if engine_value(exp, "actor_rollout_ref.actor.use_dynamic_bsz", False):
        tokens = int(engine_value(exp, "actor_rollout_ref.actor.ppo_max_token_len_per_gpu", 16384))
    else:
        tokens = int(engine_value(exp, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", 1)) * sequence
    tokens = max(tokens, sequence) // int(engine_value(exp, "actor_rollout_ref.actor.ulysses_sequence_parallel_size", 1))
    activations = tokens * shape.hidden * shape.layers * 2 + tokens * shape.vocab * 4 * 2
    return max(rollout, state + activations) + CUDA_OVERHEAD_BYTES


def eval_gpu_bytes(spec: EvaluationSpec, shape: ModelShape, prompt_tokens: int = EVAL_PROMPT_TOKENS) -> float:
    """Peak memory per GPU of ``fipo eval`` with vLLM at the evaluation's tensor parallelism."""
    rollout = vllm_gpu_bytes(shape, spec.tensor_parallel_size, prompt_tokens + spec.max_tokens,
                             EVAL_GPU_MEMORY_UTILIZATION)
    return rollout + CUDA_OVERHEAD_BYTES


def checkpoint_bytes(shape: ModelShape) -> float:
    """One saved verl checkpoint of the actor (global_step_N/actor)."""
    return shape.params * CHECKPOINT_BYTES_PER_PARAM
