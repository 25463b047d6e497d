"""verl checkpoints -> Hugging Face folders (verl's own model merger), and which checkpoint to evaluate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

STEP_DIR = re.compile(r"^global_step_(\d+)$")
SELECTIONS = ("last", "best")  # which checkpoint to evaluate


def checkpoint_steps(checkpoint_dir: Path) -> list[int]:
    """Steps with a saved actor under ``checkpoint_dir`` (``trainer.default_local_dir``), ascending."""
    steps = []
    for path in Path(checkpoint_dir).glob("global_step_*"):
        match = STEP_DIR.match(path.name)
        if match and (path / "actor").is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def select_step(checkpoint_dir: Path, which: str = "last", metrics_path: Path | None = None, metric: str | None = None) -> int:
    """``last``: the newest checkpoint. ``best``: the checkpointed step with the highest validation ``metric``
    in the run's metrics JSONL (ties: the earlier step)."""
    steps = checkpoint_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint (global_step_N/actor) under {checkpoint_dir}")
    if which == "last":
        return steps[-1]
    if which != "best":
        raise ValueError(f"checkpoint selection {which!r}; allowed: {', '.join(SELECTIONS)}")
    if metrics_path is None or metric is None:
        raise ValueError("selecting the best checkpoint needs the run's metrics file and a validation metric")
    values = {}
    for line in Path(metrics_path).read_text().splitlines():
        record = json.loads(line)
        if metric in record["data"]:
            values[int(record["step"])] = float(record["data"][metric])
    scored = [(values[s], -s) for s in steps if s in values]
    if not scored:
        raise ValueError(f"{metrics_path}: no '{metric}' at any checkpointed step {steps}")
    return -max(scored)[1]


def merge_command(actor_dir: Path, target_dir: Path) -> list[str]:
    """verl's model merger: FSDP shards of ``global_step_N/actor`` -> a Hugging Face folder vLLM can load."""
    return [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", str(actor_dir), "--target_dir", str(target_dir)]


def convert(checkpoint_dir: Path, step: int, target_dir: Path) -> Path:
    actor = Path(checkpoint_dir) / f"global_step_{step}" / "actor"
    if not actor.is_dir():
        raise FileNotFoundError(f"no actor checkpoint at {actor}")
    subprocess.run(merge_command(actor, target_dir), check=True)
    return Path(target_dir)
