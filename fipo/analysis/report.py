"""The index report: one HTML page per preset linking every generated figure and table, the notebook that
made it, and the settings of the runs behind it (from the spec, so the page says what was actually run)."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from fipo.analysis import catalog
from fipo.analysis.runs import run_paths
from fipo.run_log import read_steps
from fipo.experiment import evaluation, load_experiment, preset_info


def run_settings(preset: str, experiment: str) -> dict[str, str]:
    """The settings a reader compares across runs, in the paper's terms."""
    exp = load_experiment(preset, experiment)
    settings = {
        "method": exp.method,
        "loss": exp.policy.loss,
        "prompts × G": f"{exp.data.train_batch_size} × {exp.rollout.n}",
        "mini-batch": str(exp.policy.ppo_mini_batch_size),
        "clip": f"[{exp.policy.clip_ratio_low}, {exp.policy.clip_ratio_high}]",
        "max response": str(exp.data.max_response_length),
        "overlong buffer": str(exp.reward.overlong_buffer_len) if exp.reward.overlong_buffer else "off",
        "steps": str(exp.trainer.total_training_steps),
    }
    if exp.policy.loss == "fipo":
        settings |= {"τ": f"{exp.fipo.tau:g}", "f clip": str(exp.fipo.f_clip_range),
                     "ratio filter": "on" if exp.fipo.filter_ratio else "off"}
    return settings


def _run_status(results_dir, preset: str, experiment: str) -> str:
    path = run_paths(results_dir, preset, experiment).metrics
    if not path.is_file():
        return "not run"
    steps = read_steps(path)
    return f"steps logged: {min(steps)}–{max(steps)}" if steps else "nothing logged"


def index_html(results_dir, preset: str, page_dir: Path) -> str:
    """The page; links are relative to ``page_dir`` (where the page is written)."""
    page_dir = Path(page_dir)
    artifacts = catalog.artifacts_for(preset)
    # each run's settings and log once, however many artifacts compare it (a 32B log is ~10^5 rows)
    rows = {e: run_settings(preset, e) | {"run": _run_status(results_dir, preset, e)}
            for e in dict.fromkeys(e for art in artifacts for e in art.experiments)}
    parts = [f"<h1>FIPO Workbench: preset {html.escape(preset)}</h1>",
             f"<p>{html.escape(preset_info(preset)['description'])}</p>",
             f"<p>Evaluation: {html.escape(str(evaluation(preset)))}</p>"]
    for art in artifacts:
        parts.append(f"<h2 id='{art.id}'>{art.id}: {html.escape(art.title)}</h2>")
        files = catalog.outputs(results_dir, preset, art)
        links = [f"<a href='{os.path.relpath(p, page_dir)}'>{p.name}</a>" if p.is_file() else f"{p.name} (missing)"
                 for p in files]
        notebook = Path(results_dir) / preset / "notebooks" / f"{art.id}.ipynb"
        links.append(f"<a href='{os.path.relpath(notebook, page_dir)}'>executed notebook</a>")
        parts.append("<p>" + " · ".join(links) + "</p>")
        if art.kind == "figure" and files[0].is_file():
            parts.append(f"<img src='{os.path.relpath(files[0], page_dir)}' style='max-width:100%'>")
        elif art.kind == "table" and files[0].is_file():
            parts.append(pd.read_csv(files[0]).to_html(index=False, na_rep="–", border=0))
        if art.experiments:
            parts.append(pd.DataFrame({e: rows[e] for e in art.experiments}).T.to_html(border=0))
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse;font-size:12px} td,th{padding:2px 8px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>FIPO Workbench: {html.escape(preset)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
