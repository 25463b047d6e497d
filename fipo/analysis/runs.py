"""Runs as tidy frames: one row per (run, step, metric) with columns run, preset, experiment, seed, step, metric,
value.

A run lives in ``<results>/<preset>/runs/<experiment>/`` at the spec's seed (``seed`` <NA>), or in
``runs/<experiment>@seed<N>/`` at training seed N (the pipeline's ``seeds``; see :class:`fipo.run_folder.RunFolder`);
its ``metrics.jsonl`` is verl's ``file`` logger output, merged across resumes by :mod:`fipo.run_folder`. The
``run`` column is ``<preset>/<run name>``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from fipo.analysis.errors import AnalysisError, MalformedLogError, MissingMetricError, MissingRunError
from fipo.files import MalformedLineError
from fipo.run_folder import read_steps, run_folder
from fipo.run_names import run_name, run_seeds

COLUMNS = ["run", "preset", "experiment", "seed", "step", "metric", "value"]


class NonFiniteMetricError(MissingMetricError):
    """A metric that was logged, but never with a finite value (a diverged run logs NaN)."""

    def __init__(self, run: str, metric: str, steps: Sequence[int], needed_by: str = ""):
        self.run, self.metric, self.steps = run, metric, list(steps)
        by = f" (needed by {needed_by})" if needed_by else ""
        shown = ", ".join(map(str, self.steps[:10])) + (f", ... ({len(self.steps)} steps)" if self.steps[10:] else "")
        AnalysisError.__init__(self, f"run {run}: metric {metric!r}{by} has only non-finite values (NaN/inf), "
                                     f"at steps {shown}")


def load_metrics(path, preset: str = "", experiment: str = "", seed: Optional[int] = None) -> pd.DataFrame:
    """The tidy frame of one metrics JSONL. Non-numeric values (verl logs a few dicts) are left out; NaN and
    ±inf are kept as NaN rows, so a plot breaks its line at the gap instead of drawing across it."""
    path = Path(path)
    run = f"{preset}/{run_name(experiment, seed)}" if preset or experiment else path.parent.name
    if not path.is_file():
        raise MissingRunError(run, path.resolve(), _why_missing(path, preset))
    try:
        steps = read_steps(path)
    except MalformedLineError as err:
        raise MalformedLogError(path, err.line, err.reason) from None
    rows = [
        (run, preset, experiment, seed, step, metric, float(value) if math.isfinite(value) else math.nan)
        for step, data in steps.items()
        for metric, value in data.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    if not rows:
        raise MalformedLogError(path, 0, "no numeric metrics in the file")
    frame = pd.DataFrame(rows, columns=COLUMNS).astype({"seed": "Int64"})
    return frame.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)


def _why_missing(path: Path, preset: str) -> str:
    """Tell "this run was never trained" from "this is the wrong folder"."""
    runs_dir = path.parent.parent
    if runs_dir.is_dir():
        present = sorted(p.name for p in runs_dir.iterdir() if (p / "metrics.jsonl").is_file())
        return (f"never trained here; runs that are: {', '.join(present) or 'none'}. Train it first, e.g. "
                "`snakemake <that path>` or `python -m fipo train`")
    results = runs_dir.parent.parent if preset else runs_dir.parent
    return (f"no results of preset {preset!r} at all under {results.resolve()}: wrong results_dir? "
            "(the notebooks resolve a relative one with fipo.analysis.locate.results_dir)")


def parse_seeds(seeds) -> list[int]:
    """The notebooks' ``seeds`` parameter: a list of distinct non-negative integers, or the pipeline's raw string
    "1,2,3"; empty ("" or []): the spec's seed. Anything else is an error naming the parameter."""
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise AnalysisError(f"seeds={seeds!r}: expected distinct non-negative integers, e.g. '1,2,3'")
        seeds = [int(p) for p in parts]
    seeds = list(seeds or [])
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise AnalysisError(f"seeds={seeds!r}: expected distinct non-negative integers")
    return seeds


def load_runs(results_dir, preset: str, experiments: Iterable[str], seeds: Sequence[int] = ()) -> pd.DataFrame:
    """The tidy frame of several runs of one preset: each experiment at each of ``seeds`` (its runs
    <experiment>@seed<N>), or at the spec's seed when ``seeds`` is empty; a missing run raises
    :class:`MissingRunError`."""
    frames = [load_metrics(run_folder(results_dir, preset, e, seed).metrics, preset, e, seed)
              for e in experiments for seed in run_seeds(seeds)]
    return pd.concat(frames, ignore_index=True)


def experiment_runs(frame: pd.DataFrame, experiment: str) -> dict[Optional[int], str]:
    """{seed (None: the spec's): run} of one experiment in a frame of :func:`load_runs`."""
    rows = frame.loc[frame["experiment"] == experiment, ["seed", "run"]].drop_duplicates("run")
    return {None if pd.isna(seed) else int(seed): run for seed, run in rows.itertuples(index=False)}


def run_names(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["run"]))


def require(frame: pd.DataFrame, metrics: Sequence[str], needed_by: str = "", runs: Optional[Sequence[str]] = None,
            hint: str = "") -> None:
    """Raise :class:`MissingMetricError` for the first (run, metric) pair that was never logged, and its
    subclass :class:`NonFiniteMetricError` for one logged only as NaN/inf."""
    present = frame.groupby("run")["metric"].agg(set).to_dict()
    finite = frame.dropna(subset=["value"]).groupby("run")["metric"].agg(set).to_dict()
    for run in runs or run_names(frame):
        for metric in metrics:
            if metric not in present.get(run, set()):
                raise MissingMetricError(run, metric, needed_by, hint)
            if metric not in finite.get(run, set()):
                steps = frame.loc[(frame["run"] == run) & (frame["metric"] == metric), "step"]
                raise NonFiniteMetricError(run, metric, sorted(steps), needed_by)


def series(frame: pd.DataFrame, run: str, metric: str) -> pd.Series:
    """One metric of one run, indexed by step; raises :class:`MissingMetricError` if it was never logged.
    Non-finite values are NaN: drop them (``.dropna()``) before a fit or a mean, keep them for a plot."""
    rows = frame[(frame["run"] == run) & (frame["metric"] == metric)]
    if rows.empty:
        raise MissingMetricError(run, metric)
    return pd.Series(rows["value"].to_numpy(), index=rows["step"].to_numpy(), name=metric).sort_index()


VALIDATION_PATTERN = re.compile(r"^val-core/(?P<source>[^/]+)/acc/(?P<stat>mean|maj)@(?P<n>\d+)(?P<tail>/mean)?$")


def validation_accuracy_match(name: str, stat: str = "mean") -> Optional[re.Match]:
    """The VALIDATION_PATTERN match of ``name`` if it is verl's validation accuracy of ``stat``: ``mean@N`` (Avg@N)
    or ``maj@N/mean`` (Cons@N; verl's ``maj@N/std`` and a bare ``maj@N`` are not it); None otherwise."""
    m = VALIDATION_PATTERN.match(name)
    return m if m and m.group("stat") == stat and bool(m.group("tail")) == (stat == "maj") else None


def validation_metric(frame: pd.DataFrame, run: str, stat: str = "mean", source: Optional[str] = None) -> str:
    """verl's name for a run's validation accuracy: ``val-core/<source>/acc/mean@N`` (Avg@N) or
    ``.../maj@N/mean`` (Cons@N), at the largest N logged. ``source`` defaults to aime2024 when present."""
    names = set(frame.loc[frame["run"] == run, "metric"])
    found = [(m.group("source"), int(m.group("n")), name)
             for name in names if (m := validation_accuracy_match(name, stat))]
    if source is not None:
        found = [f for f in found if f[0] == source]
    elif any(f[0] == "aime2024" for f in found):
        found = [f for f in found if f[0] == "aime2024"]
    if not found:
        want = f"val-core/{source or '<source>'}/acc/{'mean@N' if stat == 'mean' else 'maj@N/mean'}"
        raise MissingMetricError(run, want, hint="validation ran? (trainer.test_freq, validation.n)")
    return max(found, key=lambda f: (f[1], f[0]))[2]
