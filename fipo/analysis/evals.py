"""Evaluation summaries (written by ``fipo eval``) of the runs of a preset, and the footnotes that say what
their numbers and intervals are (scorer, Cons@n's rule, what each interval resamples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

from fipo.analysis.errors import AnalysisError, MalformedLogError, MissingMetricError, MissingRunError
from fipo.eval.metrics import SUMMARY_VERSION

# The column titles of the tables: what an interval resamples, in a few words.
CI_LABEL = "95% CI over problems"
RERUN_LABEL = "rerun ± (samples)"


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


def table_notes(summaries: Mapping, metrics: Iterable[str] = ("avg", "cons", "pass")) -> list[str]:
    """Footnote lines for a table of these summaries ({key: summary}): the scorer, Cons@n's rule (when the
    table shows Cons) and what each interval resamples. Summaries evaluated differently are refused."""
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
    return notes
