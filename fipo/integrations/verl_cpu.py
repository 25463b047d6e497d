"""CPU support for stock verl 0.9.1: a CPU platform and a transformers rollout named ``hf``.

verl has no CPU platform and only vLLM/SGLang/TRT-LLM rollouts, so ``python -m verl.trainer.main_ppo`` cannot
train without a GPU. This module fills both gaps through verl's own hooks, for laptops and CI:

* ``PlatformCPU`` registered with ``PlatformRegistry`` and selected with ``VERL_PLATFORM=cpu``;
* a rollout replica registered with ``RolloutReplicaRegistry`` under ``hf``: a Ray actor that samples with
  transformers ``generate`` and returns per-token log-probs, and the trainer-side adapter (``("hf", "async")``)
  that copies the FSDP2 actor's full weights into that actor on every weight sync.

It is loaded only when a run asks for it (``VERL_USE_EXTERNAL_MODULES=fipo.integrations.verl_cpu``, set by
:func:`fipo.integrations.cpu_run.cpu_environment`), in the driver and in every Ray worker. Every contact with
verl internals that have no public hook lives here and nowhere else:

1. ``verl.workers.rollout.base._ROLLOUT_REGISTRY`` — a private dict with no register function;
2. verl's process-group init asks for ``cpu:gloo,<device>:<backend>``, which on a CPU platform names the cpu
   device twice; ``torch.distributed.init_process_group`` is wrapped to collapse the duplicate;
3. the sync trainer's replay buffer polls for finished rollouts every 2 s, a fixed interval verl does not
   expose: a tiny CPU step generates in well under a second, so 2-6 s of every step were waiting. The
   ``QuickPollReplayBuffer`` below is plugged in through verl's custom-sampler hook and polls every 50 ms.

Both tie this module to verl 0.9.1: importing it under any other verl version raises at once (and CI imports
it), rather than letting a run hang on a changed internal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import random
import time
import uuid
from types import SimpleNamespace
from typing import Any, NamedTuple, Optional

import ray
import torch
import verl
from transformers import LogitsProcessor, LogitsProcessorList
from verl.plugin.platform import PlatformBase, PlatformRegistry
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

# The values `fipo train` hands verl live in cpu_run (no verl import there); re-exported for the tests and users.
from fipo.integrations.cpu_run import CPU_SUPPORT_MODULE, QUICK_POLL_SAMPLER, cpu_environment, sampler_overrides  # noqa: F401
from fipo.provenance import digest_of

SUPPORTED_VERL = "0.9.1"
ROLLOUT_NAME = "hf"
MODULE = __name__

if verl.__version__ != SUPPORTED_VERL:
    raise RuntimeError(
        f"fipo's CPU support for verl touches verl internals checked against verl {SUPPORTED_VERL}; "
        f"found verl {verl.__version__}. Re-check fipo/integrations/verl_cpu.py before using this version."
    )


# ------------------------------------------------------------------------------------------ platform


def _meminfo_bytes(field: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _noop(*args, **kwargs):
    return None


def _zero(*args, **kwargs):
    return 0


class _CPUDeviceModule(SimpleNamespace):
    """The ``torch.cuda``-like module verl calls on its platform: torch.cpu plus the memory and device
    queries that have no CPU meaning (answered with zeros, or /proc/meminfo for free memory)."""

    def __getattr__(self, name: str):
        return getattr(torch.cpu, name)


CPU_DEVICE_MODULE = _CPUDeviceModule(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: "cpu",
    set_device=_noop,
    synchronize=_noop,
    empty_cache=_noop,
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    get_rng_state=torch.get_rng_state,  # checkpoint resume restores the "device" RNG: on a CPU, torch's own
    set_rng_state=torch.set_rng_state,
    memory_allocated=_zero,
    memory_reserved=_zero,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    reset_peak_memory_stats=_noop,
    mem_get_info=lambda *a: (_meminfo_bytes("MemAvailable"), _meminfo_bytes("MemTotal")),
    get_device_name=lambda *a: "cpu",
    is_initialized=lambda: True,
)


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl's platform interface answered for a CPU-only machine (gloo collectives, no device memory)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Never picked by auto-detection: only an explicit VERL_PLATFORM=cpu selects it.
        return False

    def current_device(self) -> str:
        # verl moves modules with .to(device=get_device_id()); an int there means "accelerator N".
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # verl's resource pools count GPUs only: a CPU run declares logical GPUs to Ray (num_gpus).
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


def _collapse_duplicate_backends(init_process_group):
    """verl asks for ``cpu:gloo,cpu:gloo`` on a CPU platform; torch rejects the repeated device type."""

    @functools.wraps(init_process_group)
    def wrapper(*args, backend=None, **kwargs):
        if isinstance(backend, str) and "," in backend:
            parts = list(dict.fromkeys(p.strip() for p in backend.split(",")))
            backend = ",".join(parts)
        return init_process_group(*args, backend=backend, **kwargs)

    wrapper.__fipo_cpu_wrapped__ = True
    return wrapper


if not getattr(torch.distributed.init_process_group, "__fipo_cpu_wrapped__", False):
    torch.distributed.init_process_group = _collapse_duplicate_backends(torch.distributed.init_process_group)


# ------------------------------------------------------------------------------------------- rollout


def _server_name(replica_rank: int) -> str:
    return f"fipo_hf_rollout_{replica_rank}"


class _SeededSampler(LogitsProcessor):
    """Samples each row's next token from its own generator (temperature, top-k, then top-p, as vLLM orders
    them) and returns scores whose only finite entry is that token."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, top_k: int):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            drop = probs.cumsum(-1) - probs > self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(logits, dim=-1)
        chosen = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen[:, None], 0.0)


class _Request(NamedTuple):
    """One response asked of the server, waiting for its batch."""

    prompt: list[int]
    params: dict
    seed: int
    future: asyncio.Future


class HFRolloutServer:
    """Ray actor: holds a transformers copy of the policy and samples from it.

    The agent loop sends one request per response (n requests per prompt, concurrently); requests that arrive
    together are generated as one left-padded batch in a worker thread.

    Each response draws its tokens from its own random generator, seeded by (seed, training step, prompt, how
    many responses to that prompt were asked for before it at this step): which requests share a batch depends
    on timing, and with one shared generator that made every run of one spec and seed sample differently (its
    step-0 validation accuracy differed between two runs). Now a response depends on timing only through the
    float rounding of a batch's shape.
    """

    def __init__(self, model_path: str, prompt_length: int, response_length: int, seed: int, batch_window_s: float):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.seed = int(seed)
        self._asked: dict[tuple[int, ...], int] = {}  # prompt -> responses asked for at this step
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.prompt_length, self.response_length = prompt_length, response_length
        self.global_steps = 0
        self.batch_window_s = batch_window_s
        self._pending: list[_Request] = []
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock = asyncio.Lock()

    async def ready(self) -> bool:
        return True

    async def generate(
        self, prompt_ids: list[int], sampling_params: dict, request_id: str, image_data=None, video_data=None, **kwargs
    ) -> TokenOutput:
        if image_data is not None or video_data is not None:
            raise ValueError("the hf CPU rollout serves text only")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(prompt_ids), dict(sampling_params), self._response_seed(prompt_ids), future))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._drain())
        return await future

    def _response_seed(self, prompt_ids) -> int:
        """The seed of one response; called in arrival order, which is the submission order of each agent-loop
        worker (Ray keeps one caller's calls in order), so the k-th response to a prompt keeps its seed."""
        prompt = tuple(int(t) for t in prompt_ids)
        k = self._asked.get(prompt, 0)
        self._asked[prompt] = k + 1
        return int(digest_of([self.seed, self.global_steps, list(prompt), k])[:16], 16) >> 1  # < 2**63

    async def _drain(self) -> None:
        await asyncio.sleep(self.batch_window_s)  # let the other n-1 samples of the group arrive
        while self._pending:
            batch, self._pending = self._pending, []
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(self._sampling_key(item.prompt, item.params), []).append(item)
            for key, items in groups.items():
                try:
                    async with self._model_lock:
                        outputs = await asyncio.to_thread(
                            self._generate_batch, [i.prompt for i in items], key, [i.seed for i in items]
                        )
                    for item, output in zip(items, outputs):
                        item.future.set_result(output)
                except Exception as e:  # surface the failure on every waiting request
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(e)

    def _sampling_key(self, prompt_ids: list[int], params: dict) -> tuple:
        temperature = float(params.get("temperature", 1.0))
        top_p = float(params.get("top_p", 1.0))
        top_k = int(params.get("top_k", -1) or -1)
        limit = params.get("max_tokens", params.get("max_new_tokens"))
        if limit is None:  # vLLM's default in verl: what is left of prompt + response length
            limit = min(self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        return temperature, top_p, top_k, max(1, int(limit))

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], key: tuple, seeds: list[int]) -> list[TokenOutput]:
        temperature, top_p, top_k, max_new = key
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        # Every batch is left-padded to the longest prompt verl allows, not to its own longest: which requests
        # share a batch depends on when they arrive, and a row's log-probs moved in the last bits with the length
        # of the prompts beside it. (With the number of rows they still do: ~1e-6, docs/seeds-and-study.md.)
        width = max(self.prompt_length, *map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        greedy = temperature <= 0
        # Sampling happens in _SeededSampler (one generator per response); generate() then takes the argmax of
        # what it returns, the sampled token.
        sampler = [] if greedy else [_SeededSampler(seeds, temperature, top_p, top_k)]
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=LogitsProcessorList(sampler),
            pad_token_id=pad,
            eos_token_id=eos,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new_tokens = out.sequences[:, width:]
        # Log-prob of each sampled token under the raw logits at the sampling temperature: what vLLM reports
        # (processed_logprobs) and what the actor recomputes.
        logits = torch.stack(out.logits, dim=1).float() / (1.0 if greedy else temperature)
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        results = []
        for ids, lps in zip(new_tokens.tolist(), log_probs.tolist()):
            n = ids.index(eos) + 1 if eos in ids else len(ids)
            results.append(
                TokenOutput(
                    token_ids=ids[:n],
                    log_probs=lps[:n],
                    stop_reason="completed",
                    extra_fields={"global_steps": self.global_steps},
                )
            )
        return results

    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        async with self._model_lock:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise RuntimeError(f"hf rollout: weights the model does not have: {unexpected[:5]}")
            self.model.tie_weights()
        if global_steps is not None:
            if int(global_steps) != self.global_steps:
                self._asked.clear()
            self.global_steps = int(global_steps)
        return len(state)

    # The replica's control calls (sleep/wake-up between rollout and training, KV-cache management, profiling)
    # have nothing to do for a CPU model that never leaves memory.
    async def sleep(self):
        return None

    async def wake_up(self):
        return None

    async def abort_all_requests(self, reject_request: bool = False):
        return None

    async def resume_generation(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFRolloutReplica(RolloutReplica):
    """One transformers server per replica, in the hybrid mode verl's default trainer uses."""

    async def launch_servers(self):
        cfg = self.config
        server = (
            ray.remote(HFRolloutServer)
            .options(name=_server_name(self.replica_rank), num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(
                model_path=str(self.model_config.path),
                prompt_length=int(cfg.prompt_length),
                response_length=int(cfg.response_length),
                seed=int(cfg.seed) + self.replica_rank,
                batch_window_s=0.05,
            )
        )
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{ROLLOUT_NAME}-{self.replica_rank}"  # a unique key; there is no HTTP server


class HFRolloutAdapter(rollout_base.BaseRollout):
    """Trainer side of the ``hf`` rollout, inside each FSDP worker: forwards the synced weights to the server.

    The weight generator gathers full tensors collectively, so every rank drains it in order; the replica's
    leader rank also copies them to the server.
    """

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        cfg = self.config
        world = cfg.tensor_model_parallel_size * cfg.data_parallel_size * cfg.pipeline_model_parallel_size
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank, self.is_leader = rank // world, rank % world == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:  # the adapter is built before the replica launches its server
            self._server = ray.get_actor(_server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout: weight wire format {wire_format!r}")
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        if self.is_leader:
            start = time.perf_counter()
            await self._server_handle().update_weights.remote(state, kwargs.get("global_steps"))
            self.last_sync_seconds = time.perf_counter() - start


# ------------------------------------------------------------------------------------- replay buffer


# Imported only now: importing verl's trainer modules resolves the platform, which must be registered first.
import transfer_queue as tq  # noqa: E402
from verl.trainer.ppo.v1 import trainer_base  # noqa: E402
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer  # noqa: E402


def seed_prompt_uids(seed: int) -> None:
    """Name the prompts verl's trainer dispatches from a generator seeded by the run's seed instead of uuid4.

    The trainer names each prompt ``str(uuid.uuid4())`` (``trainer_base``: no hook), and the names order what the
    replay buffer sees: two DAPO runs of one spec and seed, with the same samples in their first batch, logged
    entropies 1.5e-8 apart at step 1 with random names and equal ones with seeded names. The names stay unique:
    128 random bits each, and TransferQueue starts empty with every attempt of a run."""
    generator = random.Random(seed)
    trainer_base.uuid = SimpleNamespace(uuid4=lambda: uuid.UUID(int=generator.getrandbits(128), version=4))


def _response_tokens(partition_id: str, keys: list[str]) -> list[tuple[int, ...]]:
    """The response tokens of each trajectory in ``keys``, as tuples (a sort key)."""
    if not keys:
        return []
    data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["responses"])
    return [tuple(int(t) for t in row.tolist()) for row in data["responses"]]


def _trajectory_position(key: str, prompt_position: dict[str, int], response: tuple[int, ...] = ()) -> tuple:
    """Where trajectory ``{uid}_{session_id}_{index}`` (verl's key format) goes in a batch: after the trajectories
    of the prompts selected before its own, then by its response tokens, then by session and index.

    Not by session first: a group's responses are sampled with the seeds of its prompt (:class:`HFRolloutServer`),
    but which session receives which of them follows the order its requests reached the server, which the agent
    loop's tasks and the load balancer decide. Two runs gave one group's sessions 2 and 3 each other's responses."""
    uid, *rest = key.split("_")
    return prompt_position[uid], response, tuple((0, int(part)) if part.isdigit() else (1, part) for part in rest)


class QuickPollReplayBuffer(ReplayBuffer):
    """verl's sync replay buffer, polling every ``poll_interval`` seconds instead of 2, with a batch whose order
    does not depend on timing.

    verl's custom-sampler hook passes only the generic arguments; the DAPO filtering arguments that verl
    derives for its built-in buffer arrive here through ``trainer.v1.sampler.sampler_kwargs``, rendered from
    the same experiment spec by :func:`fipo.integrations.cpu_run.sampler_overrides`.

    **Order.** verl 0.9.1 orders a batch by when things happened: its prompts by the step they were dispatched
    at, ties (every prompt, in sync training) in the iteration order of a set of random uuid4 keys, and its
    trajectories in the order TransferQueue first saw them, i.e. the order they finished generating. The order
    decides which responses share a PPO mini-batch: two GRPO runs of one spec and seed sampled the same
    responses at steps 1 and 2 but logged different losses from step 1 on, and sampled differently from step 3.
    Here ties fall in dispatch order (TransferQueue lists keys in the order they were first written, and the
    trainer writes prompts as the seeded dataloader gives them) and each prompt's trajectories follow it by
    sample number.

    **Refills.** With DAPO's group filtering, verl's loop looks at whatever groups have finished at each poll: it
    dispatches two refill prompts per filtered group at once, and stops dispatching when enough groups have passed.
    How many refills it dispatched therefore depended on which groups had finished by which poll: the surplus is
    discarded but taken from the dataloader, so later steps' prompts differed between two runs of one spec and
    seed. Here, while a training batch is being filled under filtering, the loop sees the queue only when nothing
    is in flight: every decision is taken on complete rounds (the first prompts, then each round of refills), so
    the number of refills, and the prompts the dataloader hands out after them, follow from the samples alone.
    The cost is the overlap of a round's refills with its slowest groups, which on a CPU (one rollout server,
    batching what arrives together) is small.
    """

    _settling: str | None = None  # the partition whose batch is being filled under DAPO filtering

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        self._settling = partition_id if partition_id != "val" and self.filter_groups_metric is not None else None
        try:
            return super().sample(global_steps, partition_id, batch_size)
        finally:
            self._settling = None

    def _sync_metadata_from_transfer_queue(self):
        super()._sync_metadata_from_transfer_queue()
        partition = self._settling
        while partition is not None and (self.pending_keys[partition] or self.running_keys[partition]):
            time.sleep(self.poll_interval)  # generation goes on in the agent-loop workers meanwhile
            super()._sync_metadata_from_transfer_queue()

    def _select_prompt_uids(self, partition_id: str, sampleable_keys: set[str], batch_size: int):
        steps = self.prompt_global_steps[partition_id]
        dispatched = {key: i for i, key in enumerate(steps)}
        ordered = sorted(sampleable_keys, key=lambda key: (steps.get(key, 0), dispatched.get(key, len(dispatched))))
        selected = ordered[:batch_size]
        _, partition_snapshot, steps_snapshot = super()._select_prompt_uids(partition_id, set(selected), batch_size)
        return selected, partition_snapshot, steps_snapshot

    def _materialize_batch(self, partition_id: str, selected_prompt_uids: list[str], partition_snapshot: dict):
        batch = super()._materialize_batch(partition_id, selected_prompt_uids, partition_snapshot)
        position = {uid: i for i, uid in enumerate(selected_prompt_uids)}
        responses = _response_tokens(partition_id, batch.keys)
        order = sorted(range(len(batch.keys)), key=lambda i: _trajectory_position(batch.keys[i], position, responses[i]))
        return dataclasses.replace(batch, keys=[batch.keys[i] for i in order], tags=[batch.tags[i] for i in order])

    def __init__(self, *, sampler_kwargs=None, **kwargs):
        options = dict(sampler_kwargs or {})
        metric = options.pop("filter_groups_metric", None)
        train_batch_size = int(options.pop("train_batch_size"))
        if "uid_seed" in options:
            seed_prompt_uids(int(options.pop("uid_seed")))
        super().__init__(
            sampler_kwargs=options,
            poll_interval=float(options.pop("poll_interval", 0.05)),
            filter_groups_metric=metric,
            train_batch_size=train_batch_size,
            # what verl's trainer passes its built-in buffer: prompt-by-prompt refills when filtering
            gen_batch_size=1 if metric else int(options.pop("gen_batch_size", train_batch_size)),
            max_inflight_gen_batches=int(options.pop("max_inflight_gen_batches", 1)) if metric else 1,
            **kwargs,
        )


rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{MODULE}.HFRolloutAdapter"
RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFRolloutReplica)


def registered() -> dict[str, Any]:
    """What this module registered, for tests and diagnostics."""
    return {
        "platform": PlatformRegistry.get("cpu"),
        "rollout_adapter": rollout_base.get_rollout_class(ROLLOUT_NAME, "async"),
        "rollout_replica": RolloutReplicaRegistry.get(ROLLOUT_NAME),
    }
