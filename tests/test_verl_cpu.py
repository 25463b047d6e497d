"""CPU support for verl: registrations, the hf rollout server's sampling and log-probs, weight sync, the
version pin."""

import asyncio
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fipo.integrations import verl_cpu
from fipo.integrations.verl_cpu import HFRolloutServer, _collapse_duplicate_backends, cpu_environment
from fipo.tiny import chat_prompt


def test_fresh_process_with_the_cpu_environment_registers_platform_and_rollout():
    code = (
        "import verl\n"
        "from verl.utils.device import get_device_name, get_device_id, get_nccl_backend\n"
        "from verl.workers.rollout.base import get_rollout_class\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
        "print(get_device_name(), get_device_id(), get_nccl_backend(), get_rollout_class('hf').__name__,"
        " RolloutReplicaRegistry.get('hf').__name__)\n"
    )
    env = {**cpu_environment(), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["cpu", "cpu", "gloo", "HFRolloutAdapter", "HFRolloutReplica"]


def test_another_verl_version_fails_loudly():
    code = "import verl\nverl.__version__ = '0.10.0'\nimport fipo.integrations.verl_cpu\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "checked against verl 0.9.1" in out.stderr and "0.10.0" in out.stderr


def test_duplicate_backend_device_is_collapsed():
    calls = []
    wrapped = _collapse_duplicate_backends(lambda *a, backend=None, **k: calls.append(backend))
    wrapped(backend="cpu:gloo,cpu:gloo")
    wrapped(backend="cpu:gloo,cuda:nccl")
    assert calls == ["cpu:gloo", "cpu:gloo,cuda:nccl"]


@pytest.fixture(scope="module")
def server(tiny_world):
    return HFRolloutServer(str(tiny_world["model"]), prompt_length=64, response_length=24, seed=0, batch_window_s=0.01)


def prompt_ids(tokenizer, text="Add 3+4+5. End with the line Answer: N"):
    return tokenizer(chat_prompt(tokenizer, text), add_special_tokens=False)["input_ids"]


def _sample(server, prompts, params):
    async def run():
        return await asyncio.gather(*[server.generate(p, params, request_id=str(i)) for i, p in enumerate(prompts)])

    return [o.token_ids for o in asyncio.run(run())]


def test_concurrent_requests_return_tokens_with_their_own_log_probs(server):
    tok = server.tokenizer
    prompts = [prompt_ids(tok, f"Add {a}+{b}. End with the line Answer: N") for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}

    async def run():
        return await asyncio.gather(*[server.generate(p, params, request_id=str(i)) for i, p in enumerate(prompts * 2)])

    outputs = asyncio.run(run())
    model = AutoModelForCausalLM.from_pretrained(server.model.config._name_or_path).eval()
    for prompt, out in zip(prompts * 2, outputs):
        assert len(out.token_ids) == len(out.log_probs) >= 1
        assert len(out.token_ids) <= 24  # max tokens = response length
        assert tok.eos_token_id not in out.token_ids[:-1]  # nothing after the first EOS
        assert out.extra_fields == {"global_steps": 0} and out.stop_reason == "completed"
        # the reported log-probs are the model's own, recomputed with teacher forcing
        ids = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4)


def test_greedy_sampling_is_deterministic_and_respects_max_tokens(server):
    tok = server.tokenizer
    params = {"temperature": 0, "top_p": 1.0, "top_k": -1, "max_tokens": 5}
    outs = _sample(server, [prompt_ids(tok)] * 3, params)
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) <= 5


def test_a_response_depends_on_seed_step_prompt_and_rank_not_on_its_batch(tiny_world):
    """Two runs of one spec and seed sampled differently when responses shared one generator (which requests
    share a batch depends on timing); now each response has its own."""
    path = str(tiny_world["model"])
    tok = AutoTokenizer.from_pretrained(path)
    a, b, c = (prompt_ids(tok, f"Add {x}+{y}+{z}. End with the line Answer: N") for x, y, z in [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    # hot enough that two responses drawn from different generators are all but never equal (at 1.0 the tiny
    # model often answers a simple sum the same way every time, whatever the seeds)
    params = {"temperature": 3.0, "top_p": 1.0, "top_k": -1}

    def fresh(seed=0, window=0.01):
        return HFRolloutServer(path, prompt_length=64, response_length=24, seed=seed, batch_window_s=window)

    together = _sample(fresh(), [a, b, a, c, a], params)  # one batch
    apart = fresh(window=0.0)
    alone = _sample(apart, [c], params) + _sample(apart, [a, a], params) + _sample(apart, [b, a], params)
    assert sorted(map(tuple, together)) == sorted(map(tuple, alone))  # the same five responses
    by_prompt = lambda outs, prompts: [o for o, p in zip(outs, prompts) if p == a]
    assert by_prompt(together, [a, b, a, c, a]) == by_prompt(alone, [c, a, a, b, a])  # a's k-th is the k-th
    assert len({tuple(o) for o in by_prompt(together, [a, b, a, c, a])}) > 1  # the ranks differ from each other
    other = _sample(fresh(seed=1), [a, b, a, c, a], params)
    assert other != together
    next_step = fresh()
    asyncio.run(next_step.update_weights({}, global_steps=1))
    assert _sample(next_step, [a, b, a, c, a], params) != together


def test_a_responses_log_probs_do_not_depend_on_how_long_the_prompts_beside_it_are(server):
    """Which requests share a generation batch depends on when they arrive. Every batch is padded to the longest
    prompt verl allows, so a response's log-probs are the same bits beside short prompts or longer ones (with its
    batch's own longest prompt as the width they were not). How many rows share the batch still moves them in the
    last bits (docs/seeds-and-study.md)."""
    tok = server.tokenizer
    short = prompt_ids(tok, "Add 3+4. End with the line Answer: N")
    alike = [prompt_ids(tok, f"Add {a}+{b}. End with the line Answer: N") for a, b in [(5, 2), (6, 1)]]
    longer = [prompt_ids(tok, f"Add {a}+{b}+{c}+{d}+{e}. End with the line Answer: N")
              for a, b, c, d, e in [(1, 2, 3, 4, 5), (6, 7, 8, 9, 1)]]
    assert len(longer[0]) > len(short) == len(alike[0])
    params = {"temperature": 0, "max_tokens": 12}

    async def run(prompts):
        return await asyncio.gather(*[server.generate(p, params, request_id=str(i)) for i, p in enumerate(prompts)])

    beside_alike = asyncio.run(run([short, *alike]))[0]
    beside_longer = asyncio.run(run([short, *longer]))[0]
    assert beside_alike.token_ids == beside_longer.token_ids and beside_alike.log_probs == beside_longer.log_probs


def test_top_k_one_is_greedy_and_top_p_keeps_the_most_likely_token(server):
    tok = server.tokenizer
    greedy = _sample(server, [prompt_ids(tok)], {"temperature": 0, "max_tokens": 8})
    assert _sample(server, [prompt_ids(tok)] * 3, {"temperature": 1.0, "top_k": 1, "max_tokens": 8}) == greedy * 3
    assert _sample(server, [prompt_ids(tok)] * 3, {"temperature": 1.0, "top_p": 1e-6, "max_tokens": 8}) == greedy * 3


def test_weight_sync_replaces_the_weights_and_records_the_step(tiny_world):
    server = HFRolloutServer(str(tiny_world["model"]), prompt_length=64, response_length=8, seed=0, batch_window_s=0.0)
    state = {k: v + 0.5 for k, v in server.model.state_dict().items() if k != "lm_head.weight"}
    count = asyncio.run(server.update_weights(state, global_steps=7))
    assert count == len(state) and server.global_steps == 7
    assert torch.equal(server.model.state_dict()["model.norm.weight"], state["model.norm.weight"])
    assert server.model.lm_head.weight.data_ptr() == server.model.model.embed_tokens.weight.data_ptr()  # still tied
    with pytest.raises(RuntimeError, match="does not have"):
        asyncio.run(server.update_weights({"not.a.weight": torch.zeros(1)}))


def test_text_only():
    with pytest.raises(ValueError, match="text only"):
        asyncio.run(HFRolloutServer.generate(object.__new__(HFRolloutServer), [1], {}, "r", image_data=[1]))


def test_module_is_the_only_place_touching_verl_private_names():
    """Every contact with verl internals lives in fipo/integrations/verl_cpu.py."""
    from pathlib import Path

    root = Path(verl_cpu.__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "verl_cpu.py" and ("_ROLLOUT_REGISTRY" in p.read_text() or "init_process_group" in p.read_text())
    ]
    assert offenders == []


def test_the_values_fipo_train_hands_verl_name_this_module_and_need_no_verl_import():
    """`fipo train` builds a CPU run's environment and sampler keys without importing verl (4 s on 2 cores that
    every run's driver pays again), and what they name is what this module defines."""
    import subprocess
    import sys

    from fipo.integrations import cpu_run

    assert cpu_run.CPU_SUPPORT_MODULE == verl_cpu.__name__
    assert getattr(verl_cpu, cpu_run.QUICK_POLL_SAMPLER) is verl_cpu.QuickPollReplayBuffer
    keys = cpu_run.sampler_overrides("acc", 16, None, seed=3)
    assert keys["++trainer.v1.sampler.sampler_kwargs"]["uid_seed"] == 3
    assert keys["trainer.v1.sampler.custom_sampler.path"] == f"pkg://{verl_cpu.__name__}"
    code = ("import sys\nfrom fipo.spec import load_experiment\nfrom fipo.verl_command import verl_overrides, "
            "verl_environment\nfrom fipo.run_folder import run_folder\nexp = load_experiment('tiny', 'fipo')\n"
            "run = run_folder('/tmp/r', 'tiny', 'fipo')\nverl_overrides(exp, data_dir='/tmp/d', run=run, results_dir='/tmp/r')\n"
            "verl_environment(run, exp)\nprint(sorted(m for m in ('verl', 'ray', 'tensordict') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _buffer_with(dispatched: list[tuple[str, int]], finished_order: list[str], n: int, monkeypatch):
    """A QuickPollReplayBuffer whose TransferQueue snapshot holds ``dispatched`` prompts ((uid, step), in the order
    they were written) and their n trajectories each, written in ``finished_order`` of the prompts."""
    import verl.trainer.ppo.v1.replay_buffer as verl_buffer

    monkeypatch.setattr(verl_buffer.tq, "kv_clear", lambda **kwargs: None)
    # every response alike: the order below is by dispatch and sample number alone
    monkeypatch.setattr(verl_buffer.tq, "kv_batch_get", lambda keys, partition_id, select_fields: {
        "responses": [torch.tensor([0]) for _ in keys]})
    buffer = verl_cpu.QuickPollReplayBuffer(
        trainer_mode="sync", trainer_config=None, max_off_policy_threshold=None, max_off_policy_strategy="drop",
        sampler_kwargs={"train_batch_size": 4, "filter_groups_metric": None},
    )
    for uid, step in dispatched:
        buffer.prompt_global_steps["train"][uid] = step
    for uid in finished_order:
        for session in reversed(range(n)):  # a group's samples finish in any order too
            buffer.partitions["train"][f"{uid}_{session}_0"] = {"uid": uid, "session": session}
    return buffer


def test_a_batch_is_ordered_by_dispatch_and_sample_number_not_by_timing_or_random_keys(monkeypatch):
    """verl's sync buffer broke ties between prompts in the set order of random uuid4 keys and kept trajectories in
    the order they finished: two runs of one seed put other responses in one PPO mini-batch. The CPU sampler's batch
    is the oldest step's prompts first, then dispatch order, each prompt's samples by number, whatever the keys
    and whatever order generation finished in."""
    import random
    import uuid

    rng = random.Random()
    n, batch_size = 3, 4
    batches = set()
    for _ in range(6):  # fresh random keys and completion orders each time, as in separate runs
        uids = [str(uuid.uuid4()) for _ in range(7)]
        dispatched = [(uids[0], 1)] + [(uid, 2) for uid in uids[1:]]  # uids[0]: left over from the step before
        finished = uids[:]
        rng.shuffle(finished)
        buffer = _buffer_with(dispatched, finished, n, monkeypatch)
        sampleable = set(uids) - {uids[2]}  # one group filtered out; one more than a batch left
        selected, snapshot, _ = buffer._select_prompt_uids("train", sampleable, batch_size)
        assert selected == [uids[0], uids[1], uids[3], uids[4]]
        batch = buffer._materialize_batch("train", selected, snapshot)
        expected = [f"{uid}_{session}_0" for uid in selected for session in range(n)]
        assert batch.keys == expected and [t["session"] for t in batch.tags] == list(range(n)) * batch_size
        # what the batch means, with the random keys replaced by dispatch numbers: the same every time
        batches.add(tuple(uids.index(key.split("_")[0]) for key in batch.keys))
    assert batches == {(0, 0, 0, 1, 1, 1, 3, 3, 3, 4, 4, 4)}


def test_trajectory_keys_sort_by_number_not_by_text():
    position = {"a": 1, "b": 0}
    keys = ["a_10_0", "a_2_0", "b_1_1", "b_1_0", "a_2_1"]
    assert sorted(keys, key=lambda k: verl_cpu._trajectory_position(k, position)) == [
        "b_1_0", "b_1_1", "a_2_0", "a_2_1", "a_10_0"]


def test_a_groups_trajectories_are_ordered_by_their_responses_not_by_which_session_received_them(monkeypatch):
    """A group's responses are fixed by its prompt's seeds, but which session receives which follows the order the
    requests reached the rollout server. Two runs that dealt one group's responses to its sessions differently
    give one batch: the responses in one order."""
    import random

    import verl.trainer.ppo.v1.replay_buffer as verl_buffer

    monkeypatch.setattr(verl_buffer.tq, "kv_clear", lambda **kwargs: None)
    group = {"a": [(5, 1), (2, 9, 9), (2, 9)], "b": [(7,), (7,), (1, 2)]}  # b: two sessions wrote the same response
    rng = random.Random()
    batches = set()
    for _ in range(6):
        dealt = {uid: rng.sample(responses, len(responses)) for uid, responses in group.items()}
        received = {f"{uid}_{s}_0": response for uid, responses in dealt.items() for s, response in enumerate(responses)}

        def kv_batch_get(keys, partition_id, select_fields):
            assert select_fields == ["responses"] and partition_id == "train"
            return {"responses": [torch.tensor(received[k]) for k in keys]}

        monkeypatch.setattr(verl_cpu.tq, "kv_batch_get", kv_batch_get)
        buffer = verl_cpu.QuickPollReplayBuffer(
            trainer_mode="sync", trainer_config=None, max_off_policy_threshold=None, max_off_policy_strategy="drop",
            sampler_kwargs={"train_batch_size": 2, "filter_groups_metric": None})
        snapshot = {key: {"uid": key.split("_")[0]} for key in received}
        batch = buffer._materialize_batch("train", ["b", "a"], snapshot)
        batches.add(tuple(received[k] for k in batch.keys))
    assert batches == {((1, 2), (7,), (7,), (2, 9), (2, 9, 9), (5, 1))}


def test_prompt_names_come_from_the_runs_seed(monkeypatch):
    """verl names prompts by uuid4, and the names ordered what the replay buffer saw: a run's seed now draws them."""
    import uuid

    from verl.trainer.ppo.v1 import trainer_base

    monkeypatch.setattr(trainer_base, "uuid", trainer_base.uuid)  # restored after the test

    def names(seed, count=200):
        verl_cpu.seed_prompt_uids(seed)
        return [str(trainer_base.uuid.uuid4()) for _ in range(count)]

    first = names(1)
    assert names(1) == first and names(2) != first
    assert len(set(first)) == len(first)
    assert all(uuid.UUID(name).version == 4 for name in first)
    verl_cpu.QuickPollReplayBuffer(
        trainer_mode="sync", trainer_config=None, max_off_policy_threshold=None, max_off_policy_strategy="drop",
        sampler_kwargs={"train_batch_size": 2, "filter_groups_metric": None, "uid_seed": 1})
    assert [str(trainer_base.uuid.uuid4()) for _ in range(200)] == first


def test_under_filtering_the_training_batch_is_decided_only_when_nothing_is_in_flight(monkeypatch):
    """verl's loop decides how many refills to dispatch from what has finished at each poll, so the count (and the
    prompts the dataloader hands out after it) depended on timing. The CPU sampler's loop sees the training
    partition only once nothing there is pending or running; validation, and training without filtering, as
    verl does."""
    import verl.trainer.ppo.v1.replay_buffer as verl_buffer

    prompt = lambda status: {"is_prompt": True, "global_steps": 1, "status": status}  # noqa: E731
    snapshots = [{"train": {"a": prompt("running"), "b": prompt("pending")}},
                 {"train": {"a": prompt("finished"), "b": prompt("running")}},
                 {"train": {"a": prompt("finished"), "b": prompt("finished"), "a_0_0": {"uid": "a"}}}]
    reads = []
    monkeypatch.setattr(verl_buffer.tq, "kv_list", lambda: reads.append(1) or snapshots[min(len(reads), 3) - 1])

    def buffer(metric):
        return verl_cpu.QuickPollReplayBuffer(
            trainer_mode="sync", trainer_config=None, max_off_policy_threshold=None, max_off_policy_strategy="drop",
            refill_fn=lambda count: None,
            sampler_kwargs={"train_batch_size": 2, "filter_groups_metric": metric, "poll_interval": 0.001})

    filtering = buffer("acc")
    filtering._settling = "train"  # as sample() sets it for a training batch under filtering
    filtering._sync_metadata_from_transfer_queue()
    assert len(reads) == 3 and filtering.finished_keys["train"] == {"a", "b"} and not filtering.running_keys["train"]
    assert filtering.partitions["train"] == {"a_0_0": {"uid": "a"}}
    for settling in (None, "val"):  # not settling, or another partition: one read, as verl
        reads.clear()
        other = buffer(None if settling is None else "acc")
        other._settling = settling
        other._sync_metadata_from_transfer_queue()
        assert len(reads) == 1 and other.running_keys["train"] == {"a"} and other.pending_keys["train"] == {"b"}
    seen = []
    monkeypatch.setattr(verl_buffer.ReplayBuffer, "sample", lambda self, *args: seen.append(self._settling))
    filtering.sample(1, "train", 2), filtering.sample(1, "val", 2), buffer(None).sample(1, "train", 2)
    assert seen == ["train", None, None] and filtering._settling is None
