"""The tiny preset's world: task, tokenizer, warm-started base model."""

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.utils.reward_score import default_compute_score

from fipo.tiny import SPLITS, Problem, chat_prompt, split_problems


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
