"""Evaluation summaries (written by ``fipo eval``) of the runs of a preset."""

from __future__ import annotations

import json
from pathlib import Path

from fipo.analysis.errors import MalformedLogError, MissingMetricError, MissingRunError


def eval_dir(results_dir, preset: str, experiment: str, benchmark: str) -> Path:
    return Path(results_dir) / preset / "eval" / experiment / benchmark


def load_summary(results_dir, preset: str, experiment: str, benchmark: str) -> dict:
    path = eval_dir(results_dir, preset, experiment, benchmark) / "summary.json"
    if not path.is_file():
        raise MissingRunError(f"{preset}/{experiment}", path, f"evaluate it on {benchmark} first (the pipeline's eval rule)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MalformedLogError(path, err.lineno, "not valid JSON") from None


def metric(summary: dict, name: str, run: str = "") -> tuple[float, float, float]:
    """(value, CI low, CI high) in % for ``avg``, ``cons`` or ``pass`` at the summary's n samples per problem."""
    n = summary.get("samples_per_problem")
    key = f"{name}@{n}"
    if key not in summary or f"{key}_ci95" not in summary:
        raise MissingMetricError(run or summary.get("model", "?"), key, hint="an evaluation summary from `fipo eval`")
    low, high = summary[f"{key}_ci95"]
    return float(summary[key]), float(low), float(high)


def format_with_ci(value: float, low: float, high: float) -> str:
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"
