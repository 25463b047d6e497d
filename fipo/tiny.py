"""The ``tiny`` preset's world, made locally (no download): a verifiable arithmetic task, a byte-level BPE
tokenizer with a Qwen-style chat template, a small Qwen2-architecture model built from a config, and a short
supervised warm start that turns the random model into a "base model" with a non-zero but imperfect reward.

The task: add two or three numbers. Each prompt asks for a final ``Answer: N`` line, so verl's math_dapo rule
grades responses exactly as it grades AIME; the dataset rows are in the same verl parquet format (data_source
``math_dapo``). The warm-start target shows the partial sums before the answer, so responses have a length that
the policy can change.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fipo.data import dataset_path, verl_row, write_parquet_atomic
from fipo.files import current_umask

TINY_DATA_SOURCE = "math_dapo"  # routed by verl's default_compute_score to the math_dapo rule
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPLITS = {"train": 2000, "val": 64, "test": 64}
# Single-digit terms, two to four of them: after a 10 s warm start a 240k-parameter model gets about a
# third of them right, which leaves RL something to improve.
MAX_TERM = 9
TERM_COUNTS = (2, 3, 4)


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.terms)

    @property
    def question(self) -> str:
        return "+".join(map(str, self.terms))

    def prompt(self) -> str:
        return f"Add {self.question}. End with the line Answer: N"

    def worked_solution(self) -> str:
        """The warm-start target: running partial sums, then the final answer line."""
        lines, total = [], self.terms[0]
        for term in self.terms[1:]:
            lines.append(f"{total}+{term}={total + term}")
            total += term
        return "\n".join(lines) + f"\nAnswer: {total}"


def make_problems(count: int, seed: int) -> list[Problem]:
    """``count`` distinct seeded problems."""
    rng = random.Random(seed)
    problems, seen = [], set()
    while len(problems) < count:
        terms = tuple(rng.randint(1, MAX_TERM) for _ in range(rng.choice(TERM_COUNTS)))
        if terms not in seen:
            seen.add(terms)
            problems.append(Problem(terms))
    return problems


def split_problems(seed: int = 0) -> dict[str, list[Problem]]:
    """Disjoint train / val / test sets (no question in two splits), drawn under one seed."""
    problems = make_problems(sum(SPLITS.values()), seed)
    out, start = {}, 0
    for split, count in SPLITS.items():
        out[split] = problems[start : start + count]
        start += count
    return out


def prepare_tiny_data(data_dir: Path, seed: int = 0) -> list[Path]:
    """train / val / test parquet files of the tiny task, in verl's format."""
    written = []
    for split, problems in split_problems(seed).items():
        rows = [
            verl_row(data_source=TINY_DATA_SOURCE, problem="", answer=str(p.answer), index=i, split=split)
            | {"prompt": [{"role": "user", "content": p.prompt()}]}
            for i, p in enumerate(problems)
        ]
        written.append(write_parquet_atomic(pd.DataFrame(rows), dataset_path(f"tiny-{split}", data_dir)))
    return written


def load_problems(path: Path) -> list[tuple[str, str]]:
    """(prompt text, ground truth) pairs from a tiny parquet file."""
    frame = pd.read_parquet(path)
    return [(p[0]["content"], rm["ground_truth"]) for p, rm in zip(frame.prompt, frame.reward_model)]


# ------------------------------------------------------------------------------------------ tokenizer


QWEN2_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 384):
    """A byte-level BPE trained on the task's own text, saved as a Hugging Face fast tokenizer.

    Byte-level so that every string (including "\\n", which verl needs as exactly one token) round-trips.
    Trained with Qwen2's own pre-tokenization (digits one by one), which transformers applies when it loads the
    folder as a Qwen2Tokenizer: otherwise the vocabulary holds merges ("17", "=1") that re-encoding a decoded
    response can never produce, and token counts of decoded text (Figure 3's lengths) would be wrong.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


# -------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 96
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    warmup_steps: int = 360  # supervised steps: ~14 s on 2 cores, ~38 % test accuracy (non-zero, imperfect)
    warmup_batch: int = 32
    warmup_lr: float = 3e-3
    seed: int = 0


def build_model(tokenizer, spec: TinyModelSpec):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def chat_prompt(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def warm_start(model, tokenizer, problems: list[Problem], spec: TinyModelSpec, log=print) -> list[float]:
    """Supervised fine-tuning on worked solutions (loss on the response tokens only). Returns the losses."""
    import torch

    gen = random.Random(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.warmup_lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(spec.warmup_steps):
        batch = gen.sample(problems, spec.warmup_batch)
        ids, labels = [], []
        for p in batch:
            prompt_ids = tokenizer(chat_prompt(tokenizer, p.prompt()), add_special_tokens=False)["input_ids"]
            response_ids = tokenizer(p.worked_solution(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids.append(prompt_ids + response_ids)
            labels.append([-100] * len(prompt_ids) + response_ids)
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        label_ids = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=label_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == spec.warmup_steps - 1:
            log(f"[tiny warm start] step {step + 1}/{spec.warmup_steps} loss {loss.item():.3f}")
    model.eval()
    return losses


def build_tiny_base_model(out_dir: Path, spec: TinyModelSpec = TinyModelSpec(), log=print) -> Path:
    """Tokenizer + model + warm start, saved as a Hugging Face folder. Written to a temporary folder and
    renamed, so a crash never leaves a half-made model where the pipeline would take it for finished."""
    out_dir = Path(out_dir)
    train = split_problems(spec.seed)["train"]
    texts = [chat_prompt_text(p) for p in train]
    start = time.time()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".tiny-model-"))
    try:
        trained = train_tokenizer(texts, tmp)
        model = build_model(trained, spec)
        # Train with the tokenizer exactly as verl will load it. Once the folder holds a qwen2 config.json,
        # transformers 5 loads the tokenizer as Qwen2Tokenizer, whose pre-tokenizer (digits split one by one)
        # tokenizes differently from the object just trained: a warm start with the latter learns token
        # sequences the model never sees again.
        model.config.save_pretrained(tmp)
        tokenizer = load_tokenizer(tmp)
        if (len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id) != (
            len(trained), trained.eos_token_id, trained.pad_token_id
        ):
            raise RuntimeError("the reloaded tiny tokenizer differs from the trained one in vocabulary or specials")
        if any(tokenizer.encode(t, add_special_tokens=False) != trained.encode(t, add_special_tokens=False) for t in texts[:200]):
            raise RuntimeError("the reloaded tiny tokenizer tokenizes differently from the trained one")
        losses = warm_start(model, tokenizer, train, spec, log=log)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "tiny_model.json").write_text(
            json.dumps({"spec": spec.__dict__, "final_loss": losses[-1], "seconds": round(time.time() - start, 1)})
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700 whatever the umask
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def chat_prompt_text(p: Problem) -> str:
    """Text the tokenizer is trained on: the chat-formatted prompt and its worked solution."""
    return f"<|im_start|>user\n{p.prompt()}<|im_end|>\n<|im_start|>assistant\n{p.worked_solution()}<|im_end|>\n"
