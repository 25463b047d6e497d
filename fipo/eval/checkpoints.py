"""verl checkpoints -> Hugging Face folders (verl's own model merger), and which checkpoint to evaluate."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fipo.checkpoint_steps import SELECTIONS, checkpoint_steps
from fipo.files import write_text_atomic
from fipo.folder_lock import folder_lock
from fipo.provenance import folder_digest
from fipo.run_folder import read_steps



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
    # read_steps: a torn last line (a crash mid-write) is skipped, any other bad line names its file and line
    values = {step: data[metric] for step, data in read_steps(metrics_path).items() if metric in data}
    logged = [s for s in steps if s in values]
    if not logged:
        raise ValueError(f"{metrics_path}: no '{metric}' at any checkpointed step {steps}")
    scored = []
    for step in logged:
        try:
            value = float(values[step])
        except (TypeError, ValueError):
            raise ValueError(f"{metrics_path}: step {step}: '{metric}' = {values[step]!r} is not a number") from None
        if math.isfinite(value):  # a NaN validation score must not win (max() over NaN is order-dependent)
            scored.append((value, -step))
    if not scored:
        raise ValueError(f"{metrics_path}: '{metric}' is not finite (NaN/inf) at every checkpointed step that "
                         f"logged it: {logged}")
    return -max(scored)[1]


def merge_command(actor_dir: Path, target_dir: Path) -> list[str]:
    """verl's model merger: FSDP shards of ``global_step_N/actor`` -> a Hugging Face folder vLLM can load."""
    return [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", str(actor_dir), "--target_dir", str(target_dir)]


def convert(checkpoint_dir: Path, step: int, target_dir: Path, provenance: dict | None = None) -> Path:
    """Merge ``global_step_{step}/actor`` into ``target_dir``, whole or not at all: verl's merger writes a
    hidden sibling folder, which is renamed into place once complete (a killed conversion leaves no folder a
    later step could take for a model). ``target_dir/provenance.json`` says what it is: ``provenance`` (e.g.
    the run's fingerprint), the step, and the digest of the merged files, which evaluations are keyed on.
    One conversion per target at a time (:func:`fipo.folder_lock.folder_lock`): a second is refused with
    :class:`fipo.folder_lock.FolderBusy`, as it would delete the first one's hidden folder as stale."""
    actor = Path(checkpoint_dir) / f"global_step_{step}" / "actor"
    if not actor.is_dir():
        raise FileNotFoundError(f"no actor checkpoint at {actor}")
    target = Path(target_dir)
    with folder_lock(target, f"fipo convert of {actor}"):
        return _merge_into(actor, step, target, provenance)


def _merge_into(actor: Path, step: int, target: Path, provenance: dict | None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a conversion that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        subprocess.run(merge_command(actor, tmp), check=True)
        record = {**(provenance or {}), "step": step, "model_sha256": folder_digest(tmp)}
        write_text_atomic(tmp / "provenance.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
