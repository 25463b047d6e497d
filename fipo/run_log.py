"""A run's metrics JSONL across crashes and resumes.

verl's ``file`` logger opens its JSONL with "wb": a resumed run would overwrite the steps logged before the
crash. So every training attempt logs to its own ``metrics.attempt-N.jsonl`` and :func:`merge_attempts`
writes ``metrics.jsonl`` with each step exactly once, taken from the latest attempt that logged it (a
resume from the checkpoint at step k re-runs the steps after k, and those re-runs are what the final model
saw). Records with the same step (validation and training, or a resume's validation at its checkpoint
step) are merged key by key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fipo.files import MalformedLineError, read_jsonl, write_text_atomic

ATTEMPT_PATTERN = re.compile(r"^metrics\.attempt-(\d+)\.jsonl$")


def attempt_files(run_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("metrics.attempt-*.jsonl") if (m := ATTEMPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def next_attempt_path(run_dir: Path) -> Path:
    files = attempt_files(run_dir)
    number = int(ATTEMPT_PATTERN.match(files[-1].name).group(1)) + 1 if files else 1
    return Path(run_dir) / f"metrics.attempt-{number}.jsonl"


def read_steps(path: Path) -> dict[int, dict]:
    """step -> merged metrics of one attempt file. A torn last line (a crash mid-write) is skipped."""
    steps: dict[int, dict] = {}
    for number, record in read_jsonl(path, "metrics", skip_blank=True):
        if not isinstance(record, dict) or "step" not in record or not isinstance(record.get("data"), dict):
            raise MalformedLineError(path, number, "expected {'step': N, 'data': {...}}")
        steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


def merge_attempts(run_dir: Path) -> Path | None:
    """Write ``metrics.jsonl`` (atomically) from all attempts; returns its path, or None if nothing was logged."""
    run_dir = Path(run_dir)
    merged: dict[int, dict] = {}
    for path in attempt_files(run_dir):
        for step, data in read_steps(path).items():
            # Per key: a later attempt replaces what it re-ran, and a resume's validation record at the
            # checkpoint step adds to (not replaces) that step's training record.
            merged.setdefault(step, {}).update(data)
    if not merged:
        return None
    text = "".join(json.dumps({"step": step, "data": merged[step]}) + "\n" for step in sorted(merged))
    return write_text_atomic(run_dir / "metrics.jsonl", text)
