"""The steps a verl run saved: its ``global_step_N/actor`` folders and ``latest_checkpointed_iteration.txt``."""

from __future__ import annotations

import re
from pathlib import Path

STEP_DIR = re.compile(r"^global_step_(\d+)$")
LATEST_MARKER = "latest_checkpointed_iteration.txt"  # verl writes the last saved step there
SELECTIONS = ("last", "best")  # which of a run's checkpoints to evaluate: the newest, or the best validated


def checkpoint_steps(checkpoint_dir: Path) -> list[int]:
    """Steps with a saved actor under ``checkpoint_dir`` (``trainer.default_local_dir``), ascending."""
    steps = []
    for path in Path(checkpoint_dir).glob("global_step_*"):
        match = STEP_DIR.match(path.name)
        if match and (path / "actor").is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_checkpointed_step(checkpoint_dir: Path) -> int | None:
    """The step in verl's ``latest_checkpointed_iteration.txt``; None when there is no such file."""
    path = Path(checkpoint_dir) / LATEST_MARKER
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{path}: expected the step number verl writes there, found {text!r}; delete the file to "
                         "resume from the newest global_step_N folder, or the run folder to start over")
    return int(text)
