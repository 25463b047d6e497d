"""The tiny preset's world: task, tokenizer, warm-started base model."""

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.utils.reward_score import default_compute_score

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from fipo.tiny import (
    FORM_REPORT, FORMS, REPORT_PROBLEMS, SPLITS, TERM_COUNTS, Problem, TinyModelSpec, chat_prompt, format_form_report, held_out_problems,
    _warmup_factor, form_report, response_form, split_problems, warm_start,
)
from fipo.eval.sampling import Sample


def test_splits_are_disjoint_seeded_and_sized():
    a, b = split_problems(0), split_problems(0)
    assert a == b
    assert {k: len(v) for k, v in a.items()} == SPLITS
    seen = [set(p.terms for p in problems) for problems in a.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert split_problems(1)["train"] != a["train"]


def test_worked_solution_is_graded_correct_by_verls_math_dapo_rule():
    p = Problem((7, 5, 9))
    assert p.worked_solution() == "7+5=12\n12+9=21\nAnswer: 21"
    assert default_compute_score("math_dapo", p.worked_solution(), str(p.answer))["score"] == 1.0
    assert default_compute_score("math_dapo", "7+5=12\nAnswer: 12", str(p.answer))["score"] == -1.0


def test_both_forms_are_graded_by_math_dapo_and_told_apart():
    p = Problem((7, 5, 9))
    assert p.solution("direct") == "Answer: 21" and p.solution("worked") == p.worked_solution()
    for form in FORMS:
        assert default_compute_score("math_dapo", p.solution(form), "21")["score"] == 1.0
        assert response_form(p.solution(form)) == form
    assert response_form("7+5=12") == "worked" and response_form("") == "direct"
    with pytest.raises(ValueError, match="unknown response form 'long'"):
        p.solution("long")


def test_held_out_problems_are_in_no_split():
    in_splits = {p.terms for problems in split_problems(0).values() for p in problems}
    held = held_out_problems(100, 0)
    assert len({p.terms for p in held}) == 100 and not in_splits & {p.terms for p in held}
    assert {len(p.terms) for p in held} <= set(TERM_COUNTS)


class _CharTokenizer:
    """One id per character, so that a recorded batch decodes back to its text."""

    eos_token_id, pad_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return messages[0]["content"]


class _RecordingModel(torch.nn.Module):
    """Records the batches the warm start trains on; its loss is a trivial function of one parameter."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches = []

    def forward(self, input_ids, attention_mask, labels):
        self.batches.append((input_ids, attention_mask, labels))
        return type("Output", (), {"loss": (self.weight - 1.0).pow(2).sum()})()


def test_warm_start_draws_each_form_by_a_coin_that_ignores_the_problem():
    model, problems = _RecordingModel(), split_problems(0)["train"]
    spec = TinyModelSpec(warmup_steps=150, warmup_batch=32, seed=random.randint(0, 10**6))
    warm_start(model, _CharTokenizer(), problems, spec, log=lambda msg: None)
    counts = {(n, form): 0 for n in TERM_COUNTS for form in FORMS}
    for input_ids, attention, labels in model.batches:
        for ids, mask, row in zip(input_ids.tolist(), attention.tolist(), labels.tolist()):
            prompt = "".join(chr(i) for i, m, l in zip(ids, mask, row) if m and l == -100)
            target = "".join(chr(t) for t in row if t not in (-100, 0))
            problem = Problem(tuple(map(int, prompt.split("Add ")[1].split(".")[0].split("+"))))
            assert prompt == problem.prompt() and target == problem.solution(response_form(target))
            counts[len(problem.terms), response_form(target)] += 1
    assert sum(counts.values()) == spec.warmup_steps * spec.warmup_batch
    for n in TERM_COUNTS:  # about half worked at every number of terms: within 4 binomial sigmas
        total = counts[n, "worked"] + counts[n, "direct"]
        assert total > 50 and abs(counts[n, "worked"] / total - spec.worked_share) < 4 * (0.25 / total) ** 0.5, counts


class _ScriptedSampler:
    """Answers each prompt with scripted responses (the sampler interface of fipo.eval.sampling)."""

    tokenizer = _CharTokenizer()

    def __init__(self, responses):
        self.responses = responses  # prompt text -> responses

    def sample(self, prompts, settings, seed_offsets):
        return [[Sample(text, len(text) + 1, "stop") for text in self.responses[p][: settings.n]] for p in prompts]


def test_form_report_counts_each_form_by_terms_and_grades_with_math_dapo():
    two, four = Problem((3, 4)), Problem((1, 2, 3, 4))
    responses = {
        two.prompt(): ["Answer: 7", "Answer: 8", two.worked_solution(), "3+4=7\nAnswer: 6"],
        four.prompt(): [four.worked_solution()] * 3 + ["Answer: 10"],
    }
    report = form_report(_ScriptedSampler(responses), [two, four], n=4)
    assert report["by_terms"]["2"] == {"direct": {"samples": 2, "accuracy": 0.5}, "worked": {"samples": 2, "accuracy": 0.5}}
    assert report["by_terms"]["4"] == {"direct": {"samples": 1, "accuracy": 1.0}, "worked": {"samples": 3, "accuracy": 1.0}}
    assert report["by_terms"]["3"] == {"direct": {"samples": 0, "accuracy": None}, "worked": {"samples": 0, "accuracy": None}}
    assert report["forms"]["direct"]["share"] == 3 / 8 and report["forms"]["worked"]["share"] == 5 / 8
    direct_lengths = report["forms"]["direct"]["length_quantiles"]
    assert (direct_lengths["min"], direct_lengths["max"]) == (len("Answer: 7") + 1, len("Answer: 10") + 1)
    text = format_form_report(report)
    assert "    3 | " in text and "accuracy    -" in text and "direct: share 0.38" in text


def test_form_report_of_the_base_model(tiny_world):
    """`fipo tiny-model` writes the report beside the model. The default warm start is the task's premise: the base
    model answers in both forms, and the worked (longer) form is the more accurate one."""
    report = json.loads((tiny_world["model"] / FORM_REPORT).read_text())
    assert set(report["by_terms"]) == {str(n) for n in TERM_COUNTS} and report["problems"] == REPORT_PROBLEMS
    samples = sum(c["samples"] for forms in report["by_terms"].values() for c in forms.values())
    assert samples == report["problems"] * report["samples_per_problem"]
    assert 0.3 < report["forms"]["worked"]["share"] < 0.7, report["forms"]
    assert report["forms"]["worked"]["length_quantiles"]["median"] > 3 * report["forms"]["direct"]["length_quantiles"]["median"]

    def pooled(form):  # accuracy over every size, weighted by samples
        cells = [forms[form] for forms in report["by_terms"].values() if forms[form]["samples"]]
        return sum(c["accuracy"] * c["samples"] for c in cells) / sum(c["samples"] for c in cells)

    # Measured at seed 0: 0.72 against 0.52 over 1200 samples (a 0.03 standard error each).
    assert 0.1 < pooled("direct") < pooled("worked") - 0.1 < 0.9, report["by_terms"]


def test_warm_start_learning_rate_ramps_up_then_decays_to_zero():
    # Ramps no longer than 6 % of the steps, as the default's 30 of 600: longer ones peak after the ramp's end.
    spec = TinyModelSpec(warmup_steps=random.randint(500, 1000), warmup_ramp=random.randint(1, 30))
    factors = [_warmup_factor(k, spec) for k in range(1, spec.warmup_steps + 1)]
    top = factors.index(max(factors)) + 1
    assert top == spec.warmup_ramp and factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert factors[0] == pytest.approx(1.0 / spec.warmup_ramp * 0.5 * (1 + math.cos(math.pi / spec.warmup_steps)))
    assert all(a < b for a, b in zip(factors[: top - 1], factors[1:top]))
    assert all(a > b for a, b in zip(factors[top - 1 : -1], factors[top:]))
    no_ramp = TinyModelSpec(warmup_steps=10, warmup_ramp=0)
    assert _warmup_factor(1, no_ramp) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))


def test_parquet_files_are_in_verls_format(tiny_world):
    frame = pd.read_parquet(tiny_world["data"] / "tiny" / "train.parquet")
    assert len(frame) == SPLITS["train"] and set(frame.data_source) == {"math_dapo"}
    first = frame.iloc[0]
    assert first.prompt[0]["role"] == "user" and "Answer: N" in first.prompt[0]["content"]
    assert first.reward_model["style"] == "rule"


def test_tokenizer_has_single_newline_token_chat_template_eos_and_pad(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world["model"])
    assert len(tok.encode("\n", add_special_tokens=False)) == 1  # verl requires it
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    text = chat_prompt(tok, "Add 1+2.")
    assert text == "<|im_start|>user\nAdd 1+2.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok.encode("12+9=21\nAnswer: 21", add_special_tokens=False)) == "12+9=21\nAnswer: 21"


def test_warm_started_model_scores_above_zero_and_below_one(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world["model"])
    model = AutoModelForCausalLM.from_pretrained(tiny_world["model"]).eval()
    problems = split_problems(0)["val"]
    tok.padding_side = "left"
    batch = tok([chat_prompt(tok, p.prompt()) for p in problems], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=48, do_sample=True, num_return_sequences=4,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    answers = [str(p.answer) for p in problems for _ in range(4)]
    accuracy = sum(default_compute_score("math_dapo", t, a)["acc"] for t, a in zip(texts, answers)) / len(texts)
    assert 0.0 < accuracy < 1.0, accuracy


def test_fingerprints_change_with_what_makes_the_data_and_the_model(monkeypatch, tmp_path):
    """The pipeline's tiny_data and tiny_model jobs carry these as params: a changed task, spec or warm-start code
    must change them (Snakemake then remakes the data or the model), and nothing else may."""
    import fipo.tiny as tiny

    data, model = tiny.data_fingerprint(), tiny.model_fingerprint()
    assert (data, model) == (tiny.data_fingerprint(), tiny.model_fingerprint())  # stable
    assert tiny.model_fingerprint(TinyModelSpec(warmup_steps=601)) != model
    assert tiny.model_fingerprint(TinyModelSpec(worked_share=0.4)) != model
    assert tiny.data_fingerprint(seed=1) != data
    monkeypatch.setattr(tiny, "REPORT_PROBLEMS", 301)
    assert tiny.model_fingerprint() != model and tiny.data_fingerprint() == data  # the report is the model's only
    monkeypatch.setattr(tiny, "REPORT_PROBLEMS", REPORT_PROBLEMS)
    monkeypatch.setattr(tiny, "TERM_COUNTS", (2, 3, 4))
    assert tiny.data_fingerprint() != data and tiny.model_fingerprint() != model
    monkeypatch.setattr(tiny, "TERM_COUNTS", TERM_COUNTS)
    monkeypatch.setattr(Problem, "prompt", lambda self: f"Sum {self.question}. End with the line Answer: N")
    assert tiny.data_fingerprint() != data and tiny.model_fingerprint() != model
    monkeypatch.undo()
    # an edit to the warm start's code, in a copy of the package: a comment is no change, a statement is, and so is
    # one in a module tiny.py imports
    copy = tmp_path / "fipo"
    shutil.copytree(Path(tiny.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert tiny.model_fingerprint(code_root=copy) == model
    source = (copy / "tiny.py").read_text()
    assert source.count("def _warmup_factor(") == 1
    (copy / "tiny.py").write_text(source.replace("def _warmup_factor(", "# a comment\ndef _warmup_factor("))
    assert tiny.model_fingerprint(code_root=copy) == model
    (copy / "tiny.py").write_text(source.replace("def _warmup_factor(", "WARMUP_EDITED = 1\n\n\ndef _warmup_factor("))
    assert tiny.model_fingerprint(code_root=copy) != model and tiny.data_fingerprint() == data
    (copy / "tiny.py").write_text(source)
    (copy / "data.py").write_text((copy / "data.py").read_text() + "\nDATA_EDITED = 1\n")
    assert tiny.model_fingerprint(code_root=copy) != model


def test_a_second_build_into_one_folder_is_refused_before_it_trains(tmp_path):
    """Before, both trained (~40 s each) and the second deleted the folder the first had renamed into place."""
    import re
    import time

    from test_folder_lock import held_by_another_process

    from fipo.folder_lock import FolderBusy
    from fipo.tiny import build_tiny_base_model

    out = tmp_path / "tiny" / "base_model"
    logged = []
    with held_by_another_process(out, "fipo tiny-model (seed 0)") as holder:
        start = time.time()
        with pytest.raises(FolderBusy, match=rf"^{re.escape(str(out))} is in use by fipo tiny-model \(seed 0\) "
                                             rf"\(pid {holder.pid} on "):
            build_tiny_base_model(out, log=logged.append)
        assert time.time() - start < 5 and logged == []
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [".base_model.lock"]  # no temporary model folder


def test_a_build_without_the_report_writes_the_model_and_says_so(tmp_path):
    """report=False (the device check, the vLLM test): the model folder, complete, with no form report in it and its
    record saying there is none, so no one takes it for a pipeline build."""
    from fipo.tiny import build_tiny_base_model

    out = build_tiny_base_model(tmp_path / "model", TinyModelSpec(warmup_steps=2), log=lambda msg: None, report=False)
    record = json.loads((out / "tiny_model.json").read_text())
    assert record["form_report"] is False and "report_seconds" not in record and record["spec"]["warmup_steps"] == 2
    assert not (out / FORM_REPORT).exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
