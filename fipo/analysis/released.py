"""The released checkpoint (a preset's ``released:`` model, e.g. QwenPilot/FIPO_32B) evaluated here, beside the
paper's Table 1 row for it: a check of the evaluation harness (prompt, sampling, scorer) before anything is trained.
The pipeline's ``released`` target writes ``<results>/<preset>/tables/released.{csv,md,tex}``.

How to read it: the paper evaluated the same model on the same 30 problems, so the measured Avg@n should differ
from the paper's only by sampling noise, the rerun interval (samples within the fixed problems), plus the paper's
rounding to integers. An Avg@n further away than that points at the harness (prompt, chat template, scorer,
max tokens), not at chance. Cons@n and Pass@n have no rerun interval; their interval over problems is wide.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fipo.analysis import evals
from fipo.analysis.errors import MalformedLogError, MissingRunError
from fipo.analysis.paper import BENCHMARK_NAMES, TABLE1
from fipo.analysis.plotting import save_table
from fipo.spec import evaluation, released, ReleasedSpec
from fipo.provenance import short

TABLE_NAME = "released"
METRICS = ("avg", "cons", "pass")
PAPER_ROUNDING = 0.5  # the paper's values are rounded to integers


def released_eval_dir(results_dir, preset: str, benchmark: str) -> Path:
    """Where the pipeline evaluates the released model (apart from the runs' ``eval/<experiment>/``)."""
    return Path(results_dir) / preset / "released" / "eval" / benchmark


def load_released_summary(results_dir, preset: str, benchmark: str) -> dict:
    path = released_eval_dir(results_dir, preset, benchmark) / "summary.json"
    if not path.is_file():
        raise MissingRunError(f"{preset}/released", path,
                              f"evaluate the released model first: snakemake --cores all released --config preset={preset}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MalformedLogError(path, err.lineno, "not valid JSON") from None


def released_table(summaries: dict[str, dict], preset: str, spec: ReleasedSpec) -> tuple[pd.DataFrame, list[str]]:
    """One row per benchmark and metric: the measured value with its interval over problems, Avg's rerun noise,
    the paper's value (Table 1, row ``spec.paper_row``) and the difference; the footnotes say what the numbers are
    and whether each Avg@n is within sampling noise of the paper's."""
    paper = TABLE1[spec.paper_row]
    rows, verdicts = [], []
    for benchmark, summary in summaries.items():
        run = f"{preset}/released/{benchmark}"
        n = summary.get("samples_per_problem")
        for name in METRICS:
            value, low, high = evals.metric(summary, name, run)
            reference = paper.get(benchmark, {}).get(name, float("nan"))
            rerun = evals.rerun_half_width(summary, run) if name == "avg" else None
            rows.append({
                "benchmark": BENCHMARK_NAMES.get(benchmark, benchmark),
                "metric": f"{name.capitalize()}@{n}",
                f"measured ({evals.CI_LABEL})": evals.format_with_ci(value, low, high),
                evals.RERUN_LABEL: evals.format_rerun(rerun) if rerun is not None else "–",
                f"paper (Table 1, {spec.paper_row.upper()}, @32)": reference,
                "measured − paper": f"{value - reference:+.1f}" if reference == reference else "–",
            })
            if rerun is not None and reference == reference:
                close = abs(value - reference) <= rerun + PAPER_ROUNDING
                verdicts.append(f"{BENCHMARK_NAMES.get(benchmark, benchmark)} Avg@{n}: {value:.1f} vs the paper's "
                                f"{reference:.0f}: " + ("within" if close else "OUTSIDE") + f" rerun noise (±{rerun:.1f}) "
                                f"plus the paper's rounding (±{PAPER_ROUNDING})"
                                + ("" if close else "; check the prompt, chat template, scorer and max tokens"))
    first = next(iter(summaries.values()))
    settings = first.get("settings", {})
    model = (f"Model: {spec.model} (revision {spec.revision}; read from {first.get('model', '?')}, files sha256 "
             f"{short(str(first.get('model_sha256', '?')))}), sampled with {first.get('backend', '?')} at temperature "
             f"{settings.get('temperature', '?')}, top-p {settings.get('top_p', '?')}, max tokens "
             f"{settings.get('max_tokens', '?')}, seed {settings.get('seed', '?')}.")
    notes = [model, *verdicts, *evals.table_notes(summaries)]
    return pd.DataFrame(rows), notes


def write_released_table(results_dir, preset: str, out_dir=None) -> list[Path]:
    """``released.{csv,md,tex}`` under ``out_dir`` (default ``<results_dir>/<preset>/tables``) from the released
    model's evaluation summaries on the preset's benchmarks."""
    spec = released(preset)
    if spec is None:
        raise ValueError(f"preset {preset!r} declares no released model (a 'released:' section in its preset file)")
    summaries = {b: load_released_summary(results_dir, preset, b) for b in evaluation(preset).benchmarks}
    table, notes = released_table(summaries, preset, spec)
    out_dir = Path(out_dir) if out_dir else Path(results_dir) / preset / "tables"
    caption = (f"The released {spec.model} evaluated by this harness beside the paper's Table 1 "
               f"{spec.paper_row.upper()} row (preset {preset})")
    return save_table(table, out_dir, TABLE_NAME, caption=caption, notes=notes)
