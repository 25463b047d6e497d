"""Evaluation summaries (written by ``fipo eval``) of the runs of a preset, and the footnotes that say what
their numbers and intervals are (scorer, Cons@n's rule, what each interval resamples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Optional

from fipo.analysis.across_seeds import across_seeds
from fipo.analysis.errors import AnalysisError, MalformedLogError, MissingMetricError, MissingRunError
from fipo.eval.metrics import SUMMARY_VERSION, clopper_pearson
from fipo.run_names import run_name, run_seeds

# The column titles of the tables: what an interval resamples, in a few words.
CI_LABEL = "95% CI over problems"
RERUN_LABEL = "rerun ± (samples)"
SEED_CI_LABEL = "95% t CI over seeds"


def eval_dir(results_dir, preset: str, experiment: str, benchmark: str, seed: Optional[int] = None) -> Path:
    """``<results>/<preset>/eval/<run name>/<benchmark>/``: the evaluation of the run at ``seed`` (None: the spec's)."""
    return Path(results_dir) / preset / "eval" / run_name(experiment, seed) / benchmark


def load_summary(results_dir, preset: str, experiment: str, benchmark: str, seed: Optional[int] = None) -> dict:
    path = eval_dir(results_dir, preset, experiment, benchmark, seed) / "summary.json"
    if not path.is_file():
        raise MissingRunError(f"{preset}/{run_name(experiment, seed)}", path,
                              f"evaluate it on {benchmark} first (the pipeline's eval rule)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MalformedLogError(path, err.lineno, "not valid JSON") from None


def _require_current(summary: dict, run: str) -> None:
    if summary.get("summary_version", 1) < SUMMARY_VERSION:
        raise MissingMetricError(run or summary.get("model", "?"), f"summary_version {SUMMARY_VERSION}",
                                 hint="a summary.json from an older `fipo eval` (other Cons@n classes and "
                                      "intervals): rerun `fipo eval` into the same folder, which keeps the "
                                      "samples and rewrites the summary")


def metric(summary: dict, name: str, run: str = "") -> tuple[float, float, float]:
    """(value, CI low, CI high) in % for ``avg``, ``cons`` or ``pass`` at the summary's n samples per problem.
    The interval is over problems (see the summary's ``intervals``)."""
    _require_current(summary, run)
    n = summary.get("samples_per_problem")
    key = f"{name}@{n}"
    if key not in summary or f"{key}_ci95" not in summary:
        raise MissingMetricError(run or summary.get("model", "?"), key, hint="an evaluation summary from `fipo eval`")
    low, high = summary[f"{key}_ci95"]
    return float(summary[key]), float(low), float(high)


def rerun_half_width(summary: dict, run: str = "") -> float:
    """Half the width of Avg@n's rerun interval (samples within the fixed problems), in points."""
    _require_current(summary, run)
    key = f"avg@{summary.get('samples_per_problem')}_rerun_ci95"
    if key not in summary:
        raise MissingMetricError(run or summary.get("model", "?"), key, hint="an evaluation summary from `fipo eval`")
    low, high = summary[key]
    return (float(high) - float(low)) / 2


def load_summaries(results_dir, preset: str, experiment: str, benchmark: str, seeds=()) -> dict:
    """{seed: summary} of an experiment's runs at ``seeds`` ({None: summary} of its one run when ``seeds`` is empty)."""
    return {seed: load_summary(results_dir, preset, experiment, benchmark, seed) for seed in run_seeds(seeds)}


def accuracy_cells(by_seed: Mapping, name: str, benchmark: str, run: str = "", metric_label: str = "",
                   rerun: bool = True) -> dict[str, str]:
    """The table cells of one metric (``avg``, ``cons``, ``pass``) of one experiment on one benchmark, from its
    evaluations ``by_seed`` ({seed: summary}, :func:`load_summaries`); ``metric_label`` (e.g. " Avg@32") follows the
    benchmark in the value columns' titles:

    * ``<benchmark><metric_label> (reproduced, 95% CI over problems)``: the value and its interval over problems. Several seeds: the
      across-seed mean, with the Clopper-Pearson interval over the problems at that mean (the seeds' per-problem
      scores averaged: the same construction as one run's);
    * ``<benchmark> rerun ± (samples)`` (``rerun``; Avg only, else "–"): half the rerun interval; several seeds: the
      seeds' half-widths pooled as the mean of independent estimates, √(Σ h²) / k;
    * ``<benchmark><metric_label> (95% t CI over seeds)``, when the runs are at explicit seeds: the across-seed mean and its Student t
      interval (it resamples training seeds), cut at 0 and 100 %; "–" for one seed.
    """
    values = {seed: metric(summary, name, run) for seed, summary in by_seed.items()}
    if len(values) == 1:
        value, low, high = next(iter(values.values()))
    else:
        problems = {int(summary["problems"]) for summary in by_seed.values()}
        if len(problems) != 1:
            raise AnalysisError(f"{run}: the seeds' evaluations hold different numbers of problems ({sorted(problems)}); "
                                "evaluate every seed on the same benchmark")
        value = sum(v[0] for v in values.values()) / len(values)
        low, high = (100 * float(x) for x in clopper_pearson(value / 100, problems.pop()))
    column = f"{benchmark}{metric_label}"
    cells = {f"{column} (reproduced, {CI_LABEL})": format_with_ci(value, low, high)}
    if rerun:
        halves = [rerun_half_width(summary, run) for summary in by_seed.values()] if name == "avg" else []
        cells[f"{benchmark} {RERUN_LABEL}"] = (format_rerun(sum(h * h for h in halves) ** 0.5 / len(halves))
                                            if halves else "–")
    if None not in by_seed:
        interval = across_seeds({seed: v[0] for seed, v in values.items()}, what=f"{run} {name}")
        # a t interval knows no bounds; an accuracy does (with 2-3 seeds the interval often passes 0 or 100 %)
        cells[f"{column} ({SEED_CI_LABEL})"] = ("–" if interval.low is None else
                                               format_with_ci(interval.mean, max(interval.low, 0.0),
                                                              min(interval.high, 100.0)))
    return cells


def format_with_ci(value: float, low: float, high: float) -> str:
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def format_rerun(half_width: float) -> str:
    return f"±{half_width:.1f}"


def _one(summaries: Mapping, field: str) -> str:
    values = {str(s.get(field)) for s in summaries.values()}
    if len(values) != 1:
        where = "; ".join(f"{'/'.join(map(str, k)) if isinstance(k, tuple) else k}: {s.get(field)}"
                          for k, s in summaries.items())
        raise AnalysisError(f"the evaluations in one table differ in {field} ({where}); evaluate them alike "
                            f"(the preset's evaluation section) before comparing them")
    return values.pop()


def table_notes(summaries: Mapping, metrics: Iterable[str] = ("avg", "cons", "pass"), seeds=()) -> list[str]:
    """Footnote lines for a table of these summaries ({key: summary}): the scorer, Cons@n's rule (when the
    table shows Cons), what each interval resamples and, for runs at ``seeds``, how the seeds were combined.
    Summaries evaluated differently are refused."""
    if not summaries:
        return []
    for key, summary in summaries.items():
        _require_current(summary, "/".join(map(str, key)) if isinstance(key, tuple) else str(key))
    scorer = _one(summaries, "scorer")
    problems = {s.get("benchmark") or (k[-1] if isinstance(k, tuple) else k): s["problems"]
                for k, s in summaries.items()}
    samples = _one(summaries, "samples_per_problem")
    level = _one({k: s["intervals"] for k, s in summaries.items()}, "level")
    pct = f"{100 * float(level):g} %"
    counts = ", ".join(f"{b}: {m}" for b, m in problems.items())
    notes = [f"Scorer: {scorer}."]
    if "cons" in metrics:
        notes.append(_one(summaries, "cons_rule").replace("Cons@n", f"Cons@{samples}") + ".")
    notes.append(f"[low, high] ({CI_LABEL}): {pct} Clopper-Pearson interval over the problems ({counts}): "
                 f"population uncertainty, another draw of problems. Pass@1 = Avg@{samples}.")
    notes.append(f"{RERUN_LABEL}: half-width of the {pct} rerun interval of Avg@{samples}: samples within the "
                 f"fixed problems (rerun noise: another seed, the same problems).")
    seeds = list(seeds)
    if len(seeds) > 1:
        notes.append(f"Seeds {', '.join(map(str, seeds))}: each run trained and evaluated once per training seed. "
                     f"The value is the across-seed mean; its {CI_LABEL} is the Clopper-Pearson interval over the "
                     f"problems at that mean, and {RERUN_LABEL} pools the seeds' half-widths (√(Σ h²) / k).")
        notes.append(f"[low, high] ({SEED_CI_LABEL}): {pct} Student t interval of the mean over the {len(seeds)} "
                     f"seeds: it resamples training runs (another seed: data order, rollout sampling), which the "
                     f"intervals over problems and samples do not; cut at 0 and 100 %.")
    elif seeds:
        notes.append(f"Seed {seeds[0]}: one seed, no across-seed statistics ({SEED_CI_LABEL}: –).")
    return notes
