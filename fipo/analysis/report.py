"""The index report: one HTML page per preset linking every generated figure and table, the notebook that
made it, and the settings of the runs behind it (from the spec, so the page says what was actually run)."""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from fipo.analysis import catalog
from fipo.analysis.labels import plain, settings_table
from fipo.analysis.locate import project_root
from fipo.analysis.runs import run_folder
from fipo.spec import evaluation, load_experiment, preset_info
from fipo.provenance import digest_of, file_digest, short
from fipo.run_folder import read_steps
from fipo.run_names import run_name, run_seeds


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


def _key_value_table(values: dict) -> str:
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(plain(v))}</td></tr>"
                   for k, v in values.items())
    return f"<table>{rows}</table>"


def _all_settings(preset: str, experiments) -> str:
    """Every setting of the compared runs (key, one column per run), the differing keys first, folded away."""
    header = "".join(f"<th>{html.escape(e)}</th>" for e in experiments)
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                   + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>"
                   for k, values in settings_table(preset, experiments))
    return (f"<details><summary>all settings of these runs (differences first)</summary>"
            f"<table><tr><th>key</th>{header}</tr>{body}</table></details>")


def _run_status(results_dir, preset: str, experiment: str, seed=None) -> dict[str, str]:
    run = run_folder(results_dir, preset, experiment, seed)
    if not run.metrics.is_file():
        return {"run": "not run", "fingerprint": "–"}
    steps = read_steps(run.metrics)
    record = json.loads(run.record.read_text()) if run.record.is_file() else {}
    return {"run": f"steps logged: {min(steps)}–{max(steps)}" if steps else "nothing logged",
            "fingerprint": short(record["fingerprint"]) if "fingerprint" in record else "unfinished"}


def artifact_fingerprint(results_dir, preset: str, art, seeds=()) -> str:
    """What an artifact was made from: its notebook's content, each run's fingerprint (every seed's) and each
    evaluation (the model's digest, the scorer and the summary's conventions). Equal fingerprints, equal inputs."""
    # the source notebook, wherever the index is built from (its kernel may run in results/<preset>/notebooks/)
    notebooks = (project_root() or Path.cwd()) / "notebooks"
    inputs = {"notebook": file_digest(catalog.notebook_path(art.id, notebooks)), "runs": {}, "evaluations": {}}
    for experiment, seed in _runs(art, seeds):
        name = run_name(experiment, seed)
        record = run_folder(results_dir, preset, experiment, seed).record
        inputs["runs"][name] = json.loads(record.read_text()).get("fingerprint") if record.is_file() else None
        if "eval" in art.needs:
            for summary in sorted((Path(results_dir) / preset / "eval" / name).glob("*/summary.json")):
                data = json.loads(summary.read_text())
                inputs["evaluations"][f"{name}/{summary.parent.name}"] = {
                    k: data.get(k) for k in ("model_sha256", "scorer", "cons_unanswered", "summary_version")}
    return short(digest_of(inputs))


def _link(path: Path, label: str, page_dir: Path) -> str:
    """A link relative to the page, or the label marked missing: the page never points at a file that is not there."""
    return f"<a href='{os.path.relpath(path, page_dir)}'>{html.escape(label)}</a>" if path.is_file() else \
        f"{html.escape(label)} (missing)"


def _runs(art, seeds=()) -> list[tuple[str, object]]:
    """(experiment, seed) of every run behind an artifact: each experiment at each seed, or at the spec's (None)."""
    return [(e, seed) for e in art.experiments for seed in run_seeds(seeds)]


def _study_section(results_dir, preset: str, page_dir: Path) -> list[str]:
    """A link to the study's report and its text, when `snakemake study` has written it."""
    path = Path(results_dir) / preset / catalog.STUDY_REPORT
    if not path.is_file():
        return ["<h2 id='study'>Study</h2><p>No study report yet: <code>snakemake --cores all study</code> trains "
                "DAPO, GRPO and FIPO at several seeds and writes " + html.escape(str(path)) + ".</p>"]
    return [f"<h2 id='study'>Study: the paper's claims at this scale, across seeds</h2>"
            f"<p>{_link(path, catalog.STUDY_REPORT, page_dir)}</p><pre style='white-space:pre-wrap;font-size:12px'>"
            f"{html.escape(path.read_text())}</pre>"]


def index_html(results_dir, preset: str, page_dir: Path, seeds=()) -> str:
    """The page; links are relative to ``page_dir`` (where the page is written). ``seeds``: the pipeline's, whose
    runs <experiment>@seed<N> are behind every artifact (empty: each experiment's one run)."""
    page_dir = Path(page_dir)
    artifacts = catalog.artifacts_for(preset)
    # each run's settings and log once, however many artifacts compare it (a 32B log is ~10^5 rows)
    rows = {run_name(e, seed): run_settings(preset, e) | {"seed": "spec's" if seed is None else str(seed)}
            | _run_status(results_dir, preset, e, seed)
            for e, seed in dict.fromkeys(run for art in artifacts for run in _runs(art, seeds))}
    parts = [f"<h1>FIPO Workbench: preset {html.escape(preset)}</h1>",
             f"<p>{html.escape(preset_info(preset)['description'])}</p>",
             f"<p>Training seeds: {html.escape(', '.join(map(str, seeds)) or 'the spec’s (trainer.seed), one run per experiment')}."
             + (" Figures draw the across-seed mean, its 95 % t band and one thin line per seed; accuracy tables "
                "give the across-seed t interval beside the interval over problems." if len(seeds) > 1 else "")
             + "</p>",
             "<h3>Evaluation settings</h3>", _key_value_table(asdict(evaluation(preset))),
             *_study_section(results_dir, preset, page_dir)]
    for art in artifacts:
        parts.append(f"<h2 id='{art.id}'>{art.id}: {html.escape(art.heading(preset))}</h2>")
        parts.append(f"<p><small>inputs fingerprint {artifact_fingerprint(results_dir, preset, art, seeds)} (notebook, "
                     f"runs and evaluated models; the runs behind it and their fingerprints are in the table "
                     f"below)</small></p>")
        files = catalog.outputs(results_dir, preset, art)
        notebook = Path(results_dir) / preset / "notebooks" / f"{art.id}.ipynb"
        links = [*(_link(p, p.name, page_dir) for p in files), _link(notebook, "executed notebook", page_dir)]
        parts.append("<p>" + " · ".join(links) + "</p>")
        if art.kind == "figure" and files[0].is_file():
            parts.append(f"<img src='{os.path.relpath(files[0], page_dir)}' style='max-width:100%'>")
        elif art.kind == "table" and files[0].is_file():
            parts.append(pd.read_csv(files[0]).to_html(index=False, na_rep="–", border=0))
        if art.experiments:
            parts.append(f"<p><small>{html.escape(art.paper_note)}</small></p>")
            parts.append(pd.DataFrame({run_name(e, seed): rows[run_name(e, seed)]
                                       for e, seed in _runs(art, seeds)}).T.to_html(border=0))
            parts.append(_all_settings(preset, art.experiments))
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse;font-size:12px} td,th{padding:2px 8px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>FIPO Workbench: {html.escape(preset)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
