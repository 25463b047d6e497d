"""Runs as tidy frames: one row per (run, step, metric) with columns run, preset, experiment, step, metric, value.

A run lives in ``<results>/<preset>/runs/<experiment>/`` (see :class:`fipo.verl_command.RunPaths`); its
``metrics.jsonl`` is verl's ``file`` logger output, merged across resumes by :mod:`fipo.run_log`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from fipo.analysis.errors import MalformedLogError, MissingMetricError, MissingRunError
from fipo.files import MalformedLineError
from fipo.run_log import read_steps
from fipo.verl_command import run_paths

COLUMNS = ["run", "preset", "experiment", "step", "metric", "value"]


def load_metrics(path, preset: str = "", experiment: str = "") -> pd.DataFrame:
    """The tidy frame of one metrics JSONL. Non-numeric values (verl logs a few dicts) are left out."""
    path = Path(path)
    run = f"{preset}/{experiment}" if preset or experiment else path.parent.name
    if not path.is_file():
        raise MissingRunError(run, path, "train it first, e.g. `snakemake <that path>` or `python -m fipo train`")
    try:
        steps = read_steps(path)
    except MalformedLineError as err:
        raise MalformedLogError(path, err.line, err.reason) from None
    rows = [
        (run, preset, experiment, step, metric, float(value))
        for step, data in steps.items()
        for metric, value in data.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]
    if not rows:
        raise MalformedLogError(path, 0, "no numeric metrics in the file")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)


def load_runs(results_dir, preset: str, experiments: Iterable[str]) -> pd.DataFrame:
    """The tidy frame of several runs of one preset; a missing run raises :class:`MissingRunError`."""
    frames = [load_metrics(run_paths(results_dir, preset, e).metrics, preset, e) for e in experiments]
    return pd.concat(frames, ignore_index=True)


def run_names(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["run"]))


def require(frame: pd.DataFrame, metrics: Sequence[str], needed_by: str = "", runs: Optional[Sequence[str]] = None,
            hint: str = "") -> None:
    """Raise :class:`MissingMetricError` for the first (run, metric) pair without a single value."""
    present = frame.groupby("run")["metric"].agg(set).to_dict()
    for run in runs or run_names(frame):
        for metric in metrics:
            if metric not in present.get(run, set()):
                raise MissingMetricError(run, metric, needed_by, hint)


def series(frame: pd.DataFrame, run: str, metric: str) -> pd.Series:
    """One metric of one run, indexed by step; raises :class:`MissingMetricError` if it was never logged."""
    rows = frame[(frame["run"] == run) & (frame["metric"] == metric)]
    if rows.empty:
        raise MissingMetricError(run, metric)
    return pd.Series(rows["value"].to_numpy(), index=rows["step"].to_numpy(), name=metric).sort_index()


VALIDATION_PATTERN = re.compile(r"^val-core/(?P<source>[^/]+)/acc/(?P<stat>mean|maj)@(?P<n>\d+)(?P<tail>/mean)?$")


def validation_metric(frame: pd.DataFrame, run: str, stat: str = "mean", source: Optional[str] = None) -> str:
    """verl's name for a run's validation accuracy: ``val-core/<source>/acc/mean@N`` (Avg@N) or
    ``.../maj@N/mean`` (Cons@N), at the largest N logged. ``source`` defaults to aime2024 when present."""
    names = set(frame.loc[frame["run"] == run, "metric"])
    found = [(m.group("source"), int(m.group("n")), name) for name in names
             if (m := VALIDATION_PATTERN.match(name)) and m.group("stat") == stat and bool(m.group("tail")) == (stat == "maj")]
    if source is not None:
        found = [f for f in found if f[0] == source]
    elif any(f[0] == "aime2024" for f in found):
        found = [f for f in found if f[0] == "aime2024"]
    if not found:
        want = f"val-core/{source or '<source>'}/acc/{'mean@N' if stat == 'mean' else 'maj@N/mean'}"
        raise MissingMetricError(run, want, hint="validation ran? (trainer.test_freq, validation.n)")
    return max(found, key=lambda f: (f[1], f[0]))[2]
