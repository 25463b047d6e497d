"""Response lengths from verl's rollout dumps (``trainer.rollout_data_dir``: one ``<step>.jsonl`` per training
step with every decoded response), for the length quantiles of Figures 3 and 8 that verl does not log.

verl decodes with ``skip_special_tokens=True``, so the end-of-sequence token a finished response carries is
not in the text: a response whose re-encoded text is shorter than the maximum counts one token more. This is
exact when decoding round-trips (checked against verl's own response_length/{min,mean,max} in the tests).
Re-tokenizing a 32B run takes minutes, so it runs once per run (``python -m fipo lengths``) and the
notebooks read the cached ``length_stats.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from fipo.analysis.derived import length_quantiles
from fipo.analysis.errors import MalformedLogError, MissingRunError
from fipo.files import MalformedLineError, atomic_write, read_jsonl


def dump_files(rollout_dir: Path) -> dict[int, Path]:
    """step -> ``<step>.jsonl``; other files are ignored."""
    rollout_dir = Path(rollout_dir)
    if not rollout_dir.is_dir():
        raise MissingRunError(rollout_dir.parent.name, rollout_dir,
                              "rollout dumps are off (trainer.rollout_dump: false) or the run has not started")
    files = {int(p.stem): p for p in rollout_dir.glob("*.jsonl") if p.stem.isdigit()}
    if not files:
        raise MissingRunError(rollout_dir.parent.name, rollout_dir / "<step>.jsonl", "no rollout dumps yet")
    return files


def read_responses(path: Path) -> list[str]:
    """The decoded responses of one dump. A torn last line (a crash mid-write) is skipped, as by every reader of
    an append-only JSONL; a bad line elsewhere raises :class:`MalformedLogError` with the file and line."""
    texts = []
    try:
        for number, record in read_jsonl(path, "rollout-dump", skip_blank=True):
            if not isinstance(record, dict) or not isinstance(record.get("output"), str):
                raise MalformedLogError(path, number, "expected a JSON object with an 'output' field")
            texts.append(record["output"])
    except MalformedLineError as err:
        raise MalformedLogError(path, err.line, err.reason) from None
    return texts


def response_lengths(rollout_dir: Path, count_tokens: Callable[[list[str]], list[int]], max_response_length: int,
                     log: Optional[Callable[[str], None]] = None) -> dict[int, np.ndarray]:
    """step -> token count of every response of that step."""
    files = dump_files(rollout_dir)
    lengths = {}
    for done, step in enumerate(sorted(files), 1):
        counts = np.asarray(count_tokens(read_responses(files[step])), dtype=np.int64)
        lengths[step] = np.where(counts < max_response_length, counts + 1, max_response_length)
        if log and (done % 50 == 0 or done == len(files)):
            log(f"lengths: {done}/{len(files)} steps")
    return lengths


def tokenizer_counter(tokenizer_path: str) -> Callable[[list[str]], list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def write_length_stats(rollout_dir: Path, out: Path, tokenizer_path: str, max_response_length: int,
                       log: Optional[Callable[[str], None]] = None) -> Path:
    """Per-step length quantiles of a run as CSV, written atomically."""
    stats = length_quantiles(response_lengths(rollout_dir, tokenizer_counter(tokenizer_path), max_response_length, log))
    return atomic_write(out, lambda tmp: stats.to_csv(tmp, index=False))


def load_length_stats(path: Path, run: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MissingRunError(run, path, "make it with `python -m fipo lengths` (the pipeline's lengths rule)")
    frame = pd.read_csv(path)
    missing = {"step", "min", "q25", "mean", "median", "q75"} - set(frame.columns)
    if missing:
        raise MalformedLogError(path, 1, f"missing column(s) {sorted(missing)}")
    return frame.assign(run=run)
