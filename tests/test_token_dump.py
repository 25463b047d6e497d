"""Per-token dumps carry token ids, prompt group and global step read from the actor's micro-batch
(fipo.integrations.verl_micro_batch), and the analysis decodes them. The real verl path (engine forward step ->
ppo_loss -> this loss) is exercised by the smoke pipeline (tests/test_pipeline.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict

from fipo.analysis import tokens
from fipo.analysis.errors import MissingRunError
from fipo.integrations import verl_micro_batch
from fipo.token_dump import TokenDumper


def micro_batch(rows=3, length=6, step=7):
    """A micro-batch as verl 0.9.1's engine holds it: padded ids, per-row non-tensor step and uid."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    responses = torch.randint(3, 50, (rows, length), generator=gen)
    td = TensorDict({"responses": responses, "response_mask": torch.ones(rows, length)}, batch_size=[rows])
    td["global_steps"] = NonTensorStack.from_list([NonTensorData(step) for _ in range(rows)])
    td["uid"] = NonTensorStack.from_list([NonTensorData(f"u{i // 2}") for i in range(rows)])
    return td


def loss_like_call(rows, length):
    """Stands in for verl's ppo_loss -> policy loss: the lookup starts above this frame."""
    return verl_micro_batch.find(rows, length, start_depth=2)


def test_the_micro_batch_of_a_calling_frame_is_found_by_content():
    engine_local = micro_batch()  # noqa: F841 - the engine's forward step holds it in a local variable
    decoy = TensorDict({"responses": torch.zeros(5, 6)}, batch_size=[5])  # noqa: F841 - other rows: not it
    view = loss_like_call(3, 6)
    assert view is not None
    assert torch.equal(view.responses, engine_local["responses"])
    assert view.global_steps == [7, 7, 7] and view.uids == ["u0", "u0", "u1"]


def test_response_ids_are_cut_to_the_loss_length():
    engine_local = micro_batch(rows=2, length=8)  # noqa: F841
    view = loss_like_call(2, 5)
    assert view.responses.shape == (2, 5)


def test_without_a_micro_batch_the_lookup_returns_none_and_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(verl_micro_batch, "_warned", False)
    with caplog.at_level(logging.WARNING):
        assert loss_like_call(4, 6) is None
        assert loss_like_call(4, 6) is None
    warnings = [r for r in caplog.records if "without token ids" in r.getMessage()]
    assert len(warnings) == 1


def test_dump_records_token_ids_steps_and_uids_aligned_with_the_values(tmp_path):
    td = micro_batch(rows=3, length=6, step=12)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False  # a shorter response
    values = {k: torch.randn(3, 6) for k in ("log_ratio", "future_kl", "influence_weights", "advantages")}
    dumper = TokenDumper(str(tmp_path / "token_dump.jsonl"), every=1, responses=2, max_tokens=100, max_bytes=10**6)
    view = verl_micro_batch.MicroBatchView(td["responses"], [12, 12, 12], ["a", "a", "b"])
    assert dumper.maybe_dump(context=lambda: view, mask=mask, **values)
    record = json.loads(next(tmp_path.glob("token_dump*.jsonl")).read_text())
    assert record["global_step"] == 12
    short = record["responses"][1]
    assert short["token_ids"] == td["responses"][1, :4].tolist()
    assert len(short["influence_weight"]) == len(short["token_ids"]) == short["length"] == 4
    assert short["uid"] == "a" and short["global_step"] == 12


def test_dump_without_a_view_keeps_the_values_and_nulls_ids(tmp_path):
    dumper = TokenDumper(str(tmp_path / "d.jsonl"), every=2, responses=1, max_tokens=100, max_bytes=10**6)
    values = {k: torch.randn(1, 3) for k in ("log_ratio", "future_kl", "influence_weights", "advantages")}
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert not dumper.maybe_dump(context=lambda: pytest.fail("looked up on a call that does not dump"), mask=mask,
                                 **values)
    assert dumper.maybe_dump(context=lambda: None, mask=mask, **values)
    record = json.loads((tmp_path / "d.jsonl").read_text())
    assert record["global_step"] is None and record["responses"][0]["token_ids"] is None


class CharTokenizer:
    """id i <-> chr(i + 60): enough to check that pieces line up with values."""

    def decode(self, ids):
        return "".join(chr(i + 60) for i in ids)


def write_dumps(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token_dump.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def response(ids, f, step, uid="g"):
    return {"row": 0, "uid": uid, "global_step": step, "length": len(ids), "token_ids": ids,
            "log_ratio": [0.0] * len(ids), "future_kl": list(np.log(f)), "influence_weight": f,
            "advantage": [1.0] * len(ids)}


def test_loader_orders_by_global_step_and_decodes_token_text(tmp_path):
    run = tmp_path / "run"
    # written out of step order (two ranks' interleaving, or clocks): steps decide
    write_dumps(run, [
        {"call": 8, "global_step": 3, "time": 1.0, "responses": [response([1, 2, 3], [1.1, 1.0, 0.9], 3)]},
        {"call": 4, "global_step": 1, "time": 2.0, "responses": [response([2, 2], [1.2, 1.2], 1)]},
    ])
    frame = tokens.load_token_dumps(run)
    assert frame.attrs["progress_unit"] == "global step"
    assert list(frame["global_step"]) == [1, 3] and list(frame["progress"]) == [0.0, 1.0]
    decoded = tokens.decode(frame, CharTokenizer())
    assert decoded["tokens"][1] == ["=", ">", "?"] and decoded["text"][1] == "=>?"
    by_token = tokens.weight_by_token(decoded, min_count=1)
    assert by_token.iloc[0]["token"] == ">" and by_token.iloc[0]["mean_f"] == pytest.approx((1.2 + 1.2 + 1.0) / 3)
    q = tokens.quantiles_over_training(frame, bins=10)
    assert list(q["x"]) == [1.0, 3.0] and list(q["tokens"]) == [2, 3]


def test_loader_refuses_ids_that_do_not_match_the_values(tmp_path):
    run = tmp_path / "run"
    bad = response([1, 2, 3], [1.0, 1.0, 1.0], 1)
    bad["token_ids"] = [1, 2]
    write_dumps(run, [{"call": 1, "global_step": 1, "time": 1.0, "responses": [bad]}])
    with pytest.raises(Exception, match="line 1: per-token arrays of different lengths"):
        tokens.load_token_dumps(run)


def test_tokenizer_source_reads_the_run_provenance(tmp_path):
    run, results = tmp_path / "results" / "tiny" / "runs" / "fipo", tmp_path / "results"
    run.mkdir(parents=True)
    model = results / "tiny" / "base_model"
    (run / "provenance.json").write_text(json.dumps({"model": {"path": "${results_dir}/tiny/base_model"}}))
    with pytest.raises(MissingRunError, match="no tokenizer found .*base_model"):
        tokens.tokenizer_source(run, results)
    model.mkdir(parents=True)
    (model / "tokenizer_config.json").write_text("{}")
    assert tokens.tokenizer_source(run, results) == str(model)
    (run / "provenance.json").write_text(json.dumps({"model": {"path": "Qwen/Qwen2.5-32B"}}))
    assert tokens.tokenizer_source(run, results) == "Qwen/Qwen2.5-32B"


def test_a_resumed_run_keeps_only_the_last_attempt_of_each_step(tmp_path):
    """Attempt 1 (pid 10) dumped steps 1 and 2 and was stopped after checkpoint 1; attempt 2 (pid 11) trained
    step 2 again, then 3: the first attempt's step-2 records describe responses the run no longer has."""
    run = tmp_path / "run"
    write_dumps(run, [
        {"call": 4, "pid": 10, "global_step": 1, "time": 1.0, "responses": [response([1], [1.0], 1, uid="a1")]},
        {"call": 8, "pid": 10, "global_step": 2, "time": 2.0, "responses": [response([2], [1.0], 2, uid="a2")]},
        {"call": 4, "pid": 11, "global_step": 2, "time": 3.0, "responses": [response([3], [1.0], 2, uid="b2")]},
        {"call": 8, "pid": 11, "global_step": 3, "time": 4.0, "responses": [response([4], [1.0], 3, uid="b3")]},
    ])
    frame = tokens.load_token_dumps(run)
    assert list(frame["uid"]) == ["a1", "b2", "b3"] and list(frame["attempt"]) == [0, 1, 1]
    # same pid reused by the next attempt: the restarted call counter still tells them apart
    write_dumps(run, [
        {"call": 4, "pid": 10, "global_step": 2, "time": 2.0, "responses": [response([2], [1.0], 2, uid="a2")]},
        {"call": 4, "pid": 10, "global_step": 2, "time": 3.0, "responses": [response([3], [1.0], 2, uid="b2")]},
    ])
    assert list(tokens.load_token_dumps(run)["uid"]) == ["b2"]
