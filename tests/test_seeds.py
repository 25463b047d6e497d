"""The seed dimension of the pipeline's artifacts: run names, loading every seed's run, figures that draw the
across-seed mean with a band and one line per seed, and tables that give the across-seed interval beside the
interval over problems."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from fipo.analysis import evals, plotting, runs
from fipo.analysis.across_seeds import across_seeds, band
from fipo.analysis.errors import AnalysisError, MissingRunError
from fipo.eval.metrics import clopper_pearson
from fipo.run_folder import run_folder
from fipo.run_names import parse_run_name, run_name

from test_analysis import _run_notebook, eval_summary, write_metrics

VAL = "val-core/tiny-val/acc/mean@2"
LENGTH = "response_length/mean"


# ------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("experiment, seed, study, name", [
    ("fipo", None, False, "fipo"),
    ("fipo", 0, False, "fipo@seed0"),
    ("fipo-tau8", 12, False, "fipo-tau8@seed12"),
    ("dapo", 3, True, "dapo@study-seed3"),
])
def test_run_names_round_trip(experiment, seed, study, name):
    assert run_name(experiment, seed, study) == name
    assert parse_run_name(name) == (experiment, seed, study)


def test_bad_run_names_are_refused():
    for bad in ("fipo@seed", "fipo@seedx", "fipo@study-1", "a@b@seed1", ""):
        with pytest.raises(ValueError, match="is not a run name"):
            parse_run_name(bad)
    with pytest.raises(ValueError, match="a study run needs a seed"):
        run_name("fipo", None, study=True)


def test_the_studys_run_and_the_pipelines_run_at_one_seed_are_two_folders(tmp_path):
    assert run_folder(tmp_path, "tiny", "fipo", 1).run_dir != run_folder(tmp_path, "tiny", "fipo", 1, study=True).run_dir


@pytest.mark.parametrize("given, expected", [("", []), ("1,2,3", [1, 2, 3]), (" 4 , 0", [4, 0]), ([2, 5], [2, 5]),
                                             (None, [])])
def test_the_notebooks_seeds_parameter(given, expected):
    assert runs.parse_seeds(given) == expected


@pytest.mark.parametrize("bad", ["1,1", "1,-2", "a", [1, 1], [True], [-1], [1.5]])
def test_bad_seeds_parameters_name_the_parameter(bad):
    with pytest.raises(AnalysisError, match="seeds="):
        runs.parse_seeds(bad)


# ------------------------------------------------------------------------------------ loading, figures


def _write_seeded_runs(results, experiments, seeds, rng, steps=8):
    """Runs <experiment>@seed<N> with random lengths at every step and validation every other step."""
    truth = {}
    for e in experiments:
        for seed in seeds:
            lengths = {s: rng.uniform(5, 40) for s in range(1, steps + 1)}
            accuracy = {s: rng.uniform(0, 1) for s in range(0, steps + 1, 2)}
            records = [{"step": s, "data": {LENGTH: v, "response_length/min": v / 2}} for s, v in lengths.items()]
            records += [{"step": s, "data": {VAL: v}} for s, v in accuracy.items()]
            write_metrics(run_folder(results, "tiny", e, seed).metrics, records)
            truth[(e, seed)] = (lengths, accuracy)
    return truth


def test_load_runs_reads_every_seed_and_names_a_missing_one(tmp_path):
    rng = random.Random()
    truth = _write_seeded_runs(tmp_path, ["dapo", "fipo"], [1, 3], rng)
    frame = runs.load_runs(tmp_path, "tiny", ["dapo", "fipo"], [1, 3])
    assert runs.experiment_runs(frame, "fipo") == {1: "tiny/fipo@seed1", 3: "tiny/fipo@seed3"}
    assert runs.series(frame, "tiny/dapo@seed3", LENGTH).to_dict() == pytest.approx(truth[("dapo", 3)][0])
    assert set(frame["seed"].dropna()) == {1, 3}
    with pytest.raises(MissingRunError, match=r"run tiny/fipo@seed2: .*fipo@seed2/metrics.jsonl not found"):
        runs.load_runs(tmp_path, "tiny", ["fipo"], [1, 2])


def test_band_is_the_t_interval_of_the_across_seed_mean_at_each_step():
    rng = np.random.default_rng()
    seeds, steps = [1, 2, 3, 4], np.arange(1, 30)
    table = pd.DataFrame({s: rng.normal(0, rng.uniform(0.1, 5), len(steps)) for s in seeds}, index=steps)
    table.iloc[3, 1:] = np.nan  # one seed only at this step: a mean, no interval
    table.iloc[5, 2] = np.nan  # three seeds here
    stats = band(table)
    for step in steps:
        values = {s: float(v) for s, v in table.loc[step].items() if not math.isnan(v)}
        expected = across_seeds(values)
        assert stats.loc[step, "mean"] == pytest.approx(expected.mean, rel=1e-12, abs=1e-12)
        assert stats.loc[step, "seeds"] == len(values)
        if expected.low is None:
            assert math.isnan(stats.loc[step, "low"]) and math.isnan(stats.loc[step, "high"])
        else:
            assert (stats.loc[step, "low"], stats.loc[step, "high"]) == pytest.approx((expected.low, expected.high))


def test_a_metric_at_several_seeds_is_drawn_as_mean_band_and_one_thin_line_per_seed(tmp_path):
    rng = random.Random()
    truth = _write_seeded_runs(tmp_path, ["dapo", "fipo"], [1, 2, 3], rng)
    frame = runs.load_runs(tmp_path, "tiny", ["dapo", "fipo"], [1, 2, 3])
    fig, [ax] = plotting.grid(1)
    plotting.plot_metric(ax, frame, ["dapo", "fipo"], LENGTH, "mean length")
    lines = ax.get_lines()
    assert len(lines) == 2 * (3 + 1)  # per experiment: three seeds and the mean
    means = [line for line in lines if line.get_label().endswith("(mean of 3 seeds)")]
    assert [m.get_label() for m in means] == ["DAPO (mean of 3 seeds)", "FIPO (mean of 3 seeds)"]
    expected = [np.mean([truth[("fipo", s)][0][step] for s in (1, 2, 3)]) for step in range(1, 9)]
    assert list(means[1].get_ydata()) == pytest.approx(expected)
    thin = [line for line in lines if line not in means]
    assert all(line.get_linewidth() < means[0].get_linewidth() for line in thin)
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # one band per experiment
    plotting.finish(fig, [ax], "title")
    assert any("95% t interval at each step (it resamples training seeds)" in t.get_text() for t in fig.texts)
    plotting.plt.close(fig)

    # one run per experiment: plain lines, no band, no footnote
    single = runs.load_runs(tmp_path, "tiny", ["fipo"], [2])
    fig, [ax] = plotting.grid(1)
    plotting.plot_validation(ax, single, ["fipo"])
    assert len(ax.get_lines()) == 1 and not ax.collections
    plotting.finish(fig, [ax], "title")
    assert not any("seeds" in t.get_text() for t in fig.texts)
    plotting.plt.close(fig)


@pytest.mark.parametrize("artifact", ["fig01", "fig05"])
def test_figure_notebooks_run_on_runs_at_several_seeds(tmp_path, artifact):
    rng = random.Random()
    truth = _write_seeded_runs(tmp_path, ["dapo", "fipo"], [1, 2], rng)
    if artifact == "fig05":  # policy KL, entropy, gradient norm
        for (e, seed), (lengths, _) in truth.items():
            path = run_folder(tmp_path, "tiny", e, seed).metrics
            extra = [{"step": s, "data": {"actor/ppo_kl": rng.random(), "actor/entropy": rng.random(),
                                          "actor/grad_norm": rng.random()}} for s in lengths]
            path.write_text(path.read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    _run_notebook(artifact, preset="tiny", results_dir=str(tmp_path), out_dir=str(tmp_path / "figures"), seeds="1,2")
    assert (tmp_path / "figures" / f"{artifact}.png").stat().st_size > 0
    with pytest.raises(MissingRunError, match=r"run tiny/dapo@seed9: .*dapo@seed9/metrics.jsonl not found"):
        _run_notebook(artifact, preset="tiny", results_dir=str(tmp_path), out_dir=str(tmp_path / "x"), seeds="1,9")


# ------------------------------------------------------------------------------------ tables


def _seed_summary(problems, n, rng, benchmark="tiny-test"):
    from fipo.eval.metrics import ProblemResult, describe_cons, summarize

    results = [ProblemResult(str(i), [rng.random() < 0.6 for _ in range(n)], ["1"] * n, "1") for i in range(problems)]
    return summarize(results, unanswered="vote") | {"scorer": "math_dapo", "benchmark": benchmark,
                                                    "cons_rule": describe_cons("vote", "math_dapo")}


def test_accuracy_cells_of_several_seeds():
    rng = random.Random()
    by_seed = {seed: _seed_summary(64, 4, rng) for seed in (1, 2, 3)}
    cells = evals.accuracy_cells(by_seed, "avg", "tiny-test", "tiny/fipo", " Avg@4")
    values = {seed: s["avg@4"] for seed, s in by_seed.items()}
    mean = sum(values.values()) / 3
    low, high = (100 * x for x in clopper_pearson(mean / 100, 64))
    assert cells[f"tiny-test Avg@4 (reproduced, {evals.CI_LABEL})"] == evals.format_with_ci(mean, low, high)
    interval = across_seeds(values)
    assert cells[f"tiny-test Avg@4 ({evals.SEED_CI_LABEL})"] == evals.format_with_ci(
        interval.mean, max(interval.low, 0), min(interval.high, 100))
    # two seeds far apart: t with 1 degree of freedom passes 100 %, and the cell stops there
    apart = {1: _seed_summary(64, 4, random.Random(1)) | {"avg@4": 99.0}, 2: _seed_summary(64, 4, rng) | {"avg@4": 60.0}}
    assert evals.accuracy_cells(apart, "avg", "b", "r")[f"b ({evals.SEED_CI_LABEL})"] == "79.5 [0.0, 100.0]"
    halves = [evals.rerun_half_width(s) for s in by_seed.values()]
    assert cells[f"tiny-test {evals.RERUN_LABEL}"] == evals.format_rerun(math.sqrt(sum(h * h for h in halves)) / 3)
    assert cells[f"tiny-test {evals.RERUN_LABEL}"] != evals.format_rerun(max(halves)) or len(set(halves)) == 1
    # Cons: no rerun interval; one explicit seed: no across-seed interval; the spec's seed: no such column
    assert evals.accuracy_cells(by_seed, "cons", "b", "r")[f"b {evals.RERUN_LABEL}"] == "–"
    assert evals.accuracy_cells({1: by_seed[1]}, "avg", "b", "r")[f"b ({evals.SEED_CI_LABEL})"] == "–"
    assert f"b ({evals.SEED_CI_LABEL})" not in evals.accuracy_cells({None: by_seed[1]}, "avg", "b", "r")
    with pytest.raises(AnalysisError, match="different numbers of problems"):
        evals.accuracy_cells({1: by_seed[1], 2: _seed_summary(30, 4, rng)}, "avg", "b", "tiny/fipo")


@pytest.mark.parametrize("artifact, preset", [("table1", "tiny"), ("table4", "qwen2.5-7b-math")])
def test_accuracy_tables_of_several_seeds_say_which_interval_is_which(tmp_path, artifact, preset):
    rng = random.Random()
    for e in ("dapo", "fipo"):
        for seed in (1, 2):
            folder = evals.eval_dir(tmp_path, preset, e, "aime2024", seed)
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps(_seed_summary(30, 32, rng, "aime2024")))
    _run_notebook(artifact, preset=preset, results_dir=str(tmp_path), out_dir=str(tmp_path / "tables"),
                  experiments=["dapo", "fipo"], benchmarks=["aime2024"], seeds="1,2")
    markdown = (tmp_path / "tables" / f"{artifact}.md").read_text()
    header = markdown.splitlines()[0]
    assert evals.CI_LABEL in header and evals.SEED_CI_LABEL in header
    assert "- Seeds 1, 2: each run trained and evaluated once per training seed." in markdown
    assert f"- [low, high] ({evals.SEED_CI_LABEL}): 95 % Student t interval of the mean over the 2 seeds" in markdown
    with pytest.raises(MissingRunError, match="dapo@seed3"):
        _run_notebook(artifact, preset=preset, results_dir=str(tmp_path), out_dir=str(tmp_path / "x"),
                      experiments=["dapo", "fipo"], benchmarks=["aime2024"], seeds="1,3")


# ------------------------------------------------------------------------------------ the index


def test_the_index_lists_every_seeds_run_and_links_the_study_report(tmp_path):
    from fipo.analysis import report

    _write_seeded_runs(tmp_path, ["dapo", "fipo"], [1, 2], random.Random())
    page = report.index_html(tmp_path, "tiny", tmp_path / "tiny", seeds=[1, 2])
    assert "Training seeds: 1, 2." in page and "its 95 % t band" in page
    for run in ("dapo@seed1", "dapo@seed2", "fipo@seed1", "fipo@seed2"):
        assert f"<th>{run}</th>" in page
    assert "<th>fipo-tau8@seed2</th>" in page and "not run" in page  # a run not trained yet says so
    assert "No study report yet: <code>snakemake --cores all study</code>" in page
    (tmp_path / "tiny" / "study.md").write_text("# Laptop-scale study\n\n| claim | a < b |\n")
    page = report.index_html(tmp_path, "tiny", tmp_path / "tiny", seeds=[1, 2])
    assert "<a href='study.md'>study.md</a>" in page and "| claim | a &lt; b |" in page
    # the fingerprint of an artifact changes with the seeds behind it
    fig01 = report.catalog.ARTIFACTS["fig01"]
    assert report.artifact_fingerprint(tmp_path, "tiny", fig01, [1, 2]) != report.artifact_fingerprint(
        tmp_path, "tiny", fig01, [1])
