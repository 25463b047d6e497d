"""The ``tiny`` preset's world, made locally (no download): a verifiable arithmetic task, a byte-level BPE
tokenizer with a Qwen-style chat template, a small Qwen2-architecture model built from a config, and a short
supervised warm start that turns the random model into a "base model" with a non-zero but imperfect reward.

The task: add two to five single-digit numbers. Each prompt asks for a final ``Answer: N`` line, so verl's
math_dapo rule grades responses exactly as it grades AIME; the dataset rows are in the same verl parquet format
(data_source ``math_dapo``). A response takes one of two forms: *direct* (``Answer: N`` alone, 6 tokens) or
*worked* (the running partial sums, one line each, then the answer: about 30). The warm start's targets take
each form by a coin that ignores the problem (``TinyModelSpec.worked_share``), so that the base model uses both
on problems of every size and RL can find out which pays: the worked form is the more accurate one at every size
(:func:`form_report`, written beside the base model, says by how much, and the lengths of each form).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fipo.code_digest import PACKAGE_DIR, code_digest
from fipo.data import dataset_path, verl_row, write_parquet_atomic
from fipo.eval.sampling import HFSampler, SamplingSettings
from fipo.eval.scoring import score_math_dapo
from fipo.files import current_umask
from fipo.folder_lock import folder_lock
from fipo.tiny_spec import TinyModelSpec  # a module of its own, free of pandas: fipo.tiny_spec says why

TINY_DATA_SOURCE = "math_dapo"  # routed by verl's default_compute_score to the math_dapo rule
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPLITS = {"train": 2000, "val": 64, "test": 64}
# Single-digit terms, two to five of them: after a ~38 s warm start a 240k-parameter model gets about half of the
# direct answers and about 70 % of the worked ones right, which leaves RL something to find and to improve.
MAX_TERM = 9
TERM_COUNTS = (2, 3, 4, 5)
FORMS = ("direct", "worked")
# Held-out problems of the base model's form report (x 4 samples: ~8 s on 2 cores). Every 2-term problem (81 exist) and
# many 3-term ones are in the splits, so the report's problems have 3 to 5 terms.
REPORT_PROBLEMS = 300
FORM_REPORT = "form_report.json"  # in the base model's folder


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

    def direct_solution(self) -> str:
        """The short form: the answer line alone."""
        return f"Answer: {self.answer}"

    def solution(self, form: str) -> str:
        if form not in FORMS:
            raise ValueError(f"unknown response form {form!r}; allowed: {', '.join(FORMS)}")
        return self.worked_solution() if form == "worked" else self.direct_solution()

    def worked_solution(self) -> str:
        """The long form: running partial sums, then the final answer line."""
        lines, total = [], self.terms[0]
        for term in self.terms[1:]:
            lines.append(f"{total}+{term}={total + term}")
            total += term
        return "\n".join(lines) + f"\nAnswer: {total}"


def response_form(response: str) -> str:
    """The form a response takes: "worked" if it writes any partial sum (an ``=``), else "direct"."""
    return "worked" if "=" in response else "direct"


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


def held_out_problems(count: int, seed: int = 0) -> list[Problem]:
    """``count`` problems in none of the splits (drawn after them, under the same seed): the warm start's report."""
    total = sum(SPLITS.values())
    return make_problems(total + count, seed)[total:]


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
    """Supervised fine-tuning (loss on the response tokens only) on targets whose form, direct or worked, is a
    fair coin drawn for every example, whatever the problem: the base model must not learn that long problems call
    for long answers. Returns the losses."""
    import torch

    gen = random.Random(spec.seed)
    prompts = [tokenizer(chat_prompt(tokenizer, p.prompt()), add_special_tokens=False)["input_ids"] for p in problems]
    targets = {
        form: [tokenizer(p.solution(form), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p in problems]
        for form in FORMS
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.warmup_lr, weight_decay=0.0)
    # LambdaLR's factor k is the one of optimizer step k + 1 (it sets the first one at construction).
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: _warmup_factor(k + 1, spec))
    model.train()
    losses = []
    for step in range(spec.warmup_steps):
        ids, labels = [], []
        for i in gen.sample(range(len(problems)), spec.warmup_batch):
            # The coin only when both forms are in play: an all-worked warm start draws no coins, so its batches
            # (and its model) are those of a task with one form.
            worked = spec.worked_share >= 1.0 or (spec.worked_share > 0.0 and gen.random() < spec.worked_share)
            response = targets["worked" if worked else "direct"][i]
            ids.append(prompts[i] + response)
            labels.append([-100] * len(prompts[i]) + response)
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        label_ids = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=label_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == spec.warmup_steps - 1:
            log(f"[tiny warm start] step {step + 1}/{spec.warmup_steps} loss {loss.item():.3f}")
    model.eval()
    return losses


def _warmup_factor(step: int, spec: TinyModelSpec) -> float:
    """The warm start's learning rate at optimizer step ``step`` (1-based), as a share of its peak."""
    ramp = min(1.0, step / spec.warmup_ramp) if spec.warmup_ramp > 0 else 1.0
    return ramp * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / spec.warmup_steps)))


def form_report(sampler, problems: list[Problem], n: int = 4, temperature: float = 1.0,
                max_tokens: int = 64, seed: int = 0) -> dict:
    """How a model answers held-out problems, sampled as the rollouts sample (temperature 1): for each number of
    terms and each response form, the samples in that form and the share of them graded correct by verl's
    math_dapo (the training reward), and the response lengths (tokens, EOS included) of each form. ``sampler`` is
    a :class:`fipo.eval.sampling.Sampler` with a ``tokenizer`` (the HF one for the tiny model).

    A sample's form is what it wrote (:func:`response_form`), so the shares are conditional: "worked, 4 terms:
    0.8" reads "of the 4-term samples the model worked out, 80 % were right"."""
    settings = SamplingSettings(n=n, temperature=temperature, top_p=1.0, max_tokens=max_tokens, seed=seed)
    prompts = [chat_prompt(sampler.tokenizer, p.prompt()) for p in problems]
    cells: dict[tuple[int, str], list[bool]] = {}
    lengths: dict[str, list[int]] = {form: [] for form in FORMS}
    for problem, samples in zip(problems, sampler.sample(prompts, settings, list(range(len(problems))))):
        for sample in samples:
            form = response_form(sample.text)
            cells.setdefault((len(problem.terms), form), []).append(score_math_dapo(sample.text, str(problem.answer)).correct)
            lengths[form].append(sample.num_tokens)
    by_terms = {
        str(terms): {form: {"samples": len(cells.get((terms, form), [])),
                            "accuracy": (sum(cells[terms, form]) / len(cells[terms, form])) if cells.get((terms, form)) else None}
                     for form in FORMS}
        for terms in TERM_COUNTS
    }
    total = sum(map(len, lengths.values()))
    return {
        "problems": len(problems), "samples_per_problem": n, "temperature": temperature, "max_tokens": max_tokens,
        "reward": "math_dapo (verl 0.9.1)",
        "by_terms": by_terms,
        "forms": {form: {"share": len(v) / total if total else None,
                         "length_quantiles": _quantiles(v)} for form, v in lengths.items()},
    }


def _quantiles(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: float(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))])  # noqa: E731
    return {"min": float(ordered[0]), "p25": pick(0.25), "median": pick(0.5), "p75": pick(0.75), "max": float(ordered[-1]),
            "mean": sum(ordered) / len(ordered)}


def format_form_report(report: dict) -> str:
    """The report as a small text table (the tiny-model log and docs/tiny-preset.md)."""

    def cell(c: dict) -> str:
        accuracy = "-" if c["accuracy"] is None else f"{c['accuracy']:.2f}"
        return f"{c['samples']:4d} samples, accuracy {accuracy:>4}"

    lines = [f"held-out problems: {report['problems']} x {report['samples_per_problem']} samples, "
             f"temperature {report['temperature']}, reward {report['reward']}",
             f"{'terms':>5} | {'direct':<30} | worked"]
    for terms, forms in report["by_terms"].items():
        lines.append(f"{terms:>5} | {cell(forms['direct']):<30} | {cell(forms['worked'])}")
    for form, info in report["forms"].items():
        q = info["length_quantiles"]
        share = "-" if info["share"] is None else f"{info['share']:.2f}"
        length = "-" if q is None else f"median {q['median']:.0f} (p25 {q['p25']:.0f}, p75 {q['p75']:.0f}, max {q['max']:.0f})"
        lines.append(f"{form}: share {share}, length {length}")
    return "\n".join(lines)


def build_tiny_base_model(out_dir: Path, spec: TinyModelSpec = TinyModelSpec(), log=print, report: bool = True) -> Path:
    """Tokenizer + model + warm start, saved as a Hugging Face folder, with the warm start's form report beside it.
    Written to a temporary folder and renamed, so a crash never leaves a half-made model where the pipeline would
    take it for finished. One build per folder at a time (:func:`fipo.folder_lock.folder_lock`): a second is
    refused with :class:`fipo.folder_lock.FolderBusy` before it trains anything, rather than deleting the folder the
    first one has just renamed into place.

    ``report=False`` leaves the form report out (``"form_report": false`` in tiny_model.json): the same model, for
    checks that only need a model to sample from (the report samples 300 problems, about a third of the build's
    time)."""
    out_dir = Path(out_dir)
    with folder_lock(out_dir, f"fipo tiny-model (seed {spec.seed})"):
        return _build_tiny_base_model(out_dir, spec, log, report)


def _build_tiny_base_model(out_dir: Path, spec: TinyModelSpec, log, report: bool) -> Path:
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
        trained_s = time.time() - start
        record = {"spec": spec.__dict__, "final_loss": losses[-1], "seconds": round(trained_s, 1)}
        if report:
            forms = form_report(HFSampler(str(tmp)), held_out_problems(REPORT_PROBLEMS, spec.seed), seed=spec.seed)
            log("[tiny warm start] the base model on held-out problems:\n" + format_form_report(forms))
            (tmp / FORM_REPORT).write_text(json.dumps(forms, indent=1) + "\n")
            record["report_seconds"] = round(time.time() - start - trained_s, 1)
        else:
            record["form_report"] = False
        # Written last: the pipeline's marker that the folder is complete.
        (tmp / "tiny_model.json").write_text(json.dumps(record))
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


# ------------------------------------------------------------------------------------------ fingerprints


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(seed: int = 0) -> str:
    """What ``fipo data tiny`` writes, without writing it: every split's prompts and answers. The pipeline's
    tiny_data job carries it as a param, so a changed task (terms, splits, prompt wording) remakes the data."""
    return _digest({split: [(p.prompt(), p.answer) for p in problems] for split, problems in split_problems(seed).items()}
                   | {"data_source": TINY_DATA_SOURCE})


def model_fingerprint(spec: TinyModelSpec = TinyModelSpec(), code_root: Path | None = None) -> str:
    """What determines ``fipo tiny-model``'s base model and form report: the training problems and both response
    forms, the spec, the chat format, and the code that builds, trains and reports on it (this module and every
    `fipo` module it imports, as their syntax trees: fipo.code_digest, the digest the figures carry too). The
    pipeline's tiny_model job carries it as a param: a change to any of them remakes the model. ``code_root``: the
    package folder to read the code from (a test's edited copy)."""
    train = split_problems(spec.seed)["train"]
    return _digest({"problems": [(p.prompt(), p.solution("direct"), p.solution("worked")) for p in train],
                    "spec": spec.__dict__, "chat_template": CHAT_TEMPLATE, "special_tokens": SPECIAL_TOKENS,
                    "report_problems": REPORT_PROBLEMS, "code": code_digest(__name__, code_root or PACKAGE_DIR)})
