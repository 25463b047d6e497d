"""fipo.analysis: the derived series against hand-computed values, the loaders' errors, the catalog."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import pytest

from fipo.analysis import catalog, derived, evals, plotting, rollouts, runs, tokens
from fipo.analysis.errors import AnalysisError, MalformedLogError, MissingMetricError, MissingRunError
from fipo.spec import SpecError, evaluation, list_experiments, load_experiment


# ------------------------------------------------------------------------------------ derived series


def test_length_weighted_mean_advantage_by_hand():
    # Σ_i Σ_t A_it / Σ_i L_i: (1 + 1 + 1 - 2) / 4, not the mean of response means ((1 - 2) / 2)
    assert derived.length_weighted_mean_advantage([[1.0, 1.0, 1.0], [-2.0]]) == pytest.approx(0.25)
    assert derived.length_weighted_mean_advantage([[0.5]]) == 0.5
    with pytest.raises(ValueError, match="without response tokens"):
        derived.length_weighted_mean_advantage([[], []])


def test_verls_advantage_metric_is_the_length_weighted_mean():
    """What Figures 4c/6a read (critic/advantages/mean) is verl's masked token mean: the same Ā."""
    import torch
    from verl import DataProto
    from verl.trainer.ppo.metric_utils import compute_data_metrics

    rng = np.random.default_rng()
    lengths = rng.integers(1, 9, size=6)
    width, prompt = 10, 3
    adv_per_response = rng.normal(size=6)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    advantages = torch.tensor(adv_per_response, dtype=torch.float32)[:, None] * mask
    batch = DataProto.from_dict({
        "token_level_scores": mask.clone(), "token_level_rewards": mask.clone(), "advantages": advantages,
        "returns": advantages.clone(), "responses": torch.ones(6, width, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(6, prompt), mask], dim=1), "response_mask": mask,
        "prompts": torch.ones(6, prompt, dtype=torch.long),
    })
    metrics = compute_data_metrics(batch, use_critic=False)
    ours = derived.length_weighted_mean_advantage([[a] * n for a, n in zip(adv_per_response, lengths)])
    assert metrics[derived.LENGTH_WEIGHTED_ADVANTAGE] == pytest.approx(ours, rel=1e-5, abs=1e-6)


def test_length_quantiles_by_hand():
    table = derived.length_quantiles({2: [4, 1, 3, 2], 1: [7]})
    assert list(table["step"]) == [1, 2]
    row = table.iloc[1]
    assert (row["min"], row["q25"], row["mean"], row["median"], row["q75"], row["max"]) == (1, 1.75, 2.5, 2.5, 3.25, 4)
    assert table.iloc[0]["q25"] == table.iloc[0]["q75"] == 7
    with pytest.raises(ValueError, match="step 3: no responses"):
        derived.length_quantiles({3: []})


def test_generation_rounds_by_hand():
    # 16 trained + 8 evicted + 4 surplus groups, 16 prompts per generation batch: 1.75 batches
    assert derived.generation_rounds([8.0], [4.0], 16, 16)[0] == 1.75
    # a step without evictions logs no count at all: NaN means none
    assert list(derived.generation_rounds([np.nan, 16.0], [np.nan, 0.0], 16, 32)) == [0.5, 1.0]
    with pytest.raises(ValueError):
        derived.generation_rounds([0], [0], 0, 16)


def test_phase_slopes_by_hand():
    fits = derived.phase_slopes([0, 1, 2, 3], [0, 2, 4, 10], phases=2)
    assert [(f.phase, f.points) for f in fits] == [(1, 2), (2, 2)]
    assert fits[0].slope == pytest.approx(2) and fits[1].slope == pytest.approx(6)
    assert fits[1].intercept == pytest.approx(-8)
    one = derived.phase_slopes([1, 2, 3], [1, 3, 5], phases=1)[0]
    assert (one.slope, one.intercept) == (pytest.approx(2), pytest.approx(-1))
    with pytest.raises(ValueError, match="at least 4 points"):
        derived.phase_slopes([1, 2, 3], [1, 2, 3], phases=2)
    flat = derived.phase_slopes([5, 5], [1, 3], phases=1)[0]  # one length only: no slope
    assert np.isnan(flat.slope)


def test_at_validation_steps_reads_the_first_training_step_at_or_after():
    values = pd.Series([10.0, 20.0, 30.0], index=[1, 2, 3])
    assert derived.at_validation_steps(values, [0, 2, 9]).to_dict() == {0: 10.0, 2: 20.0}


# ------------------------------------------------------------------------------------ loaders


def write_metrics(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_load_metrics_is_tidy_and_drops_non_numeric(tmp_path):
    path = write_metrics(tmp_path / "tiny" / "runs" / "fipo" / "metrics.jsonl", [
        {"step": 0, "data": {"val-core/math_dapo/acc/mean@4": 0.25}},
        {"step": 1, "data": {"actor/entropy": 0.5, "counts": {"a": 1}, "flag": True, "bad": float("nan")}},
    ])
    frame = runs.load_metrics(path, "tiny", "fipo")
    assert list(frame.columns) == runs.COLUMNS
    assert set(frame["metric"]) == {"val-core/math_dapo/acc/mean@4", "actor/entropy", "bad"}  # NaN kept as a gap
    assert runs.series(frame, "tiny/fipo", "bad").isna().all()
    assert runs.series(frame, "tiny/fipo", "actor/entropy").to_dict() == {1: 0.5}
    assert runs.validation_metric(frame, "tiny/fipo") == "val-core/math_dapo/acc/mean@4"


def test_loader_errors_name_the_run_the_file_and_the_metric(tmp_path):
    with pytest.raises(MissingRunError, match=r"run tiny/dapo: .*metrics.jsonl not found"):
        runs.load_runs(tmp_path, "tiny", ["dapo"])
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "data": {"x": 1}}\nnot json\n{"step": 2, "data": {"x": 2}}\n')
    with pytest.raises(MalformedLogError, match=r"m.jsonl, line 2"):
        runs.load_metrics(path, "tiny", "x")
    path.write_text('{"step": 1, "data": {"x": 1}}\n{"step": 2, "da')  # a torn last line: a crash mid-write
    assert len(runs.load_metrics(path, "tiny", "x")) == 1
    frame = runs.load_metrics(write_metrics(tmp_path / "a.jsonl", [{"step": 1, "data": {"actor/entropy": 1.0}}]), "tiny", "a")
    with pytest.raises(MissingMetricError, match=r"run tiny/a has no metric 'actor/grad_norm' needed by fig05"):
        runs.require(frame, ["actor/entropy", "actor/grad_norm"], needed_by="fig05")
    with pytest.raises(MissingMetricError, match=r"val-core/<source>/acc/mean@N"):
        runs.validation_metric(frame, "tiny/a")


def test_non_finite_values_are_gaps_and_require_tells_them_from_missing_metrics(tmp_path):
    import math
    import random

    rng = random.Random()
    steps = sorted(rng.sample(range(1, 500), rng.randint(4, 12)))
    gaps = set(rng.sample(steps[1:-1], rng.randint(1, len(steps) - 2)))
    values = {s: rng.choice([math.nan, math.inf, -math.inf]) if s in gaps else rng.uniform(-1, 1) for s in steps}
    path = write_metrics(tmp_path / "m.jsonl", [{"step": s, "data": {"actor/grad_norm": v, "actor/entropy": math.nan}}
                                                 for s, v in values.items()])
    frame = runs.load_metrics(path, "tiny", "fipo")
    s = runs.series(frame, "tiny/fipo", "actor/grad_norm")
    assert list(s.index) == steps and set(s.index[s.isna()]) == gaps, values
    assert s.dropna().to_dict() == pytest.approx({k: v for k, v in values.items() if k not in gaps})

    # the plot breaks its line at the gaps instead of drawing across them
    fig, [ax] = plotting.grid(1)
    plotting.plot_metric(ax, frame, ["fipo"], "actor/grad_norm", "gradient norm")
    [line] = ax.get_lines()
    assert list(line.get_xdata()) == steps and set(np.asarray(steps)[np.isnan(line.get_ydata())]) == gaps
    plotting.plt.close(fig)

    runs.require(frame, ["actor/grad_norm"])  # some finite values: fine
    with pytest.raises(runs.NonFiniteMetricError, match=r"run tiny/fipo: metric 'actor/entropy' \(needed by fig05\) "
                       rf"has only non-finite values \(NaN/inf\), at steps {', '.join(map(str, steps[:10]))}"):
        runs.require(frame, ["actor/grad_norm", "actor/entropy"], needed_by="fig05")
    with pytest.raises(MissingMetricError, match=r"run tiny/fipo has no metric 'actor/ppo_kl'") as missing:
        runs.require(frame, ["actor/ppo_kl", "actor/entropy"])
    assert not isinstance(missing.value, runs.NonFiniteMetricError)


def test_validation_metric_prefers_aime2024_and_the_largest_n(tmp_path):
    frame = runs.load_metrics(write_metrics(tmp_path / "m.jsonl", [{"step": 0, "data": {
        "val-core/aime2025/acc/mean@32": 1, "val-core/aime2024/acc/mean@16": 1, "val-core/aime2024/acc/mean@32": 1,
        "val-core/aime2024/acc/maj@32/mean": 1, "val-core/aime2024/acc/maj@32/std": 1}}]), "p", "e")
    assert runs.validation_metric(frame, "p/e") == "val-core/aime2024/acc/mean@32"
    assert runs.validation_metric(frame, "p/e", "maj") == "val-core/aime2024/acc/maj@32/mean"
    assert runs.validation_metric(frame, "p/e", source="aime2025") == "val-core/aime2025/acc/mean@32"


def test_rollout_lengths_count_the_end_of_sequence_token_except_at_the_limit(tmp_path):
    folder = tmp_path / "rollouts"
    folder.mkdir()
    (folder / "2.jsonl").write_text("".join(json.dumps({"output": "x" * n}) + "\n" for n in (3, 10, 1)))
    (folder / "notes.txt").write_text("ignored")
    lengths = rollouts.response_lengths(folder, lambda texts: [len(t) for t in texts], max_response_length=10)
    assert list(lengths) == [2] and list(lengths[2]) == [4, 10, 2]  # +1 for EOS; 10 hit the limit: no EOS
    (folder / "3.jsonl").write_text('{"input": "no output"}\n')
    with pytest.raises(MalformedLogError, match=r"3.jsonl, line 1"):
        rollouts.response_lengths(folder, lambda texts: [len(t) for t in texts], 10)
    with pytest.raises(MissingRunError, match="rollout dumps are off"):
        rollouts.dump_files(tmp_path / "nothing")


def test_rollout_dump_reader_skips_a_torn_last_line_and_names_a_bad_one(tmp_path):
    import random

    rng = random.Random()
    texts = ["x" * rng.randint(0, 20) for _ in range(rng.randint(1, 6))]
    lines = [json.dumps({"input": "q", "output": t}) + "\n" for t in texts]
    path = tmp_path / "7.jsonl"
    path.write_text("".join(lines) + lines[0][: rng.randint(1, len(lines[0]) - 2)])  # a crash mid-write
    assert rollouts.read_responses(path) == texts
    bad = rng.randint(1, len(lines))
    path.write_text("".join(lines[: bad - 1]) + '{"output": "x\n' + "".join(lines[bad - 1:]))
    with pytest.raises(MalformedLogError, match=rf"7.jsonl, line {bad}: malformed rollout-dump line"):
        rollouts.read_responses(path)


def test_token_dumps_matrix_and_quantiles(tmp_path):
    def record(t, values):
        return {"call": 1, "time": t, "pid": 1, "responses": [
            {"row": 0, "length": len(v), **{f: v for f in tokens.FIELDS}} for v in values]}
    text = json.dumps(record(10.0, [[1.0, 1.2], [0.8]])) + "\n" + json.dumps(record(20.0, [[1.1, 1.1, 0.9]])) + "\n"
    (tmp_path / "token_dump.rank0.jsonl").write_text(text + '{"torn')
    frame = tokens.load_token_dumps(tmp_path)
    assert list(frame["progress"]) == [0.0, 0.0, 1.0]
    matrix = tokens.padded(frame)
    assert matrix.shape == (3, 3) and np.isnan(matrix[1, 1]) and matrix[2, 2] == 0.9
    q = tokens.quantiles_over_training(frame, bins=2)
    assert list(q["tokens"]) == [3, 3]
    assert q.iloc[0]["q50"] == 1.0 and q.iloc[0]["frac_up"] == pytest.approx(1 / 3)
    with pytest.raises(MissingRunError, match="fipo.dump_every"):
        tokens.load_token_dumps(tmp_path / "empty")


def eval_summary(benchmark="tiny-test", problems=64, n=4, scorer="math_dapo", rule="vote"):
    """A summary as `fipo eval` writes it: problem i solved by (i mod n) + 1 of its n samples."""
    from fipo.eval.metrics import ProblemResult, describe_cons, summarize

    results = [ProblemResult(str(i), [k <= i % n for k in range(n)], ["1"] * n, "1") for i in range(problems)]
    return summarize(results, unanswered=rule) | {"scorer": scorer, "benchmark": benchmark,
                                                  "cons_rule": describe_cons(rule, scorer)}


def test_eval_summary_metric_with_ci(tmp_path):
    folder = evals.eval_dir(tmp_path, "tiny", "fipo", "tiny-test")
    folder.mkdir(parents=True)
    written = eval_summary()
    (folder / "summary.json").write_text(json.dumps(written))
    summary = evals.load_summary(tmp_path, "tiny", "fipo", "tiny-test")
    assert evals.metric(summary, "avg") == (written["avg@4"], *written["avg@4_ci95"]) and written["avg@4"] == 62.5
    low, high = written["avg@4_rerun_ci95"]
    assert evals.rerun_half_width(summary) == pytest.approx((high - low) / 2)
    assert evals.format_with_ci(37.5, 30.0, 45.0) == "37.5 [30.0, 45.0]" and evals.format_rerun(1.26) == "±1.3"
    with pytest.raises(MissingMetricError, match="pass@1"):  # n = 1: Pass@1 is Avg@1, not a second number
        evals.metric(eval_summary(n=1), "pass", "tiny/fipo")
    # a summary of an older fipo eval (bootstrap intervals, no answer classes) is refused, with the remedy
    old = {"samples_per_problem": 4, "avg@4": 37.5, "avg@4_ci95": [30.0, 45.0]}
    with pytest.raises(MissingMetricError, match="older `fipo eval`.*keeps the samples"):
        evals.metric(old, "avg", "tiny/fipo")
    with pytest.raises(MissingRunError, match="evaluate it on aime2024"):
        evals.load_summary(tmp_path, "tiny", "fipo", "aime2024")


def test_table_notes_name_the_scorer_the_cons_rule_and_what_each_interval_resamples():
    summaries = {(e, b): eval_summary(b, 30, 32) for e, b in (("dapo", "aime2024"), ("fipo", "aime2024"),
                                                               ("fipo", "aime2025"))}
    notes = evals.table_notes(summaries)
    assert notes[0] == "Scorer: math_dapo."
    assert notes[1].startswith("Cons@32: majority over answer classes judged equal by the math_dapo scorer; samples "
                               "without an answer vote as one 'no answer' class (verl's maj@N convention)")
    assert "Clopper-Pearson interval over the problems (aime2024: 30, aime2025: 30): population" in notes[2]
    assert "Pass@1 = Avg@32" in notes[2] and notes[2].startswith(f"[low, high] ({evals.CI_LABEL})")
    assert notes[3].startswith(f"{evals.RERUN_LABEL}: half-width") and "samples within the fixed problems" in notes[3]
    assert not any(n.startswith("Cons") for n in evals.table_notes(summaries, metrics=("avg",)))
    # evaluations made differently are not put side by side
    summaries[("fipo", "aime2025")] = eval_summary("aime2025", 30, 32, scorer="math_verify")
    with pytest.raises(AnalysisError, match="differ in scorer.*fipo/aime2025: math_verify"):
        evals.table_notes(summaries)
    summaries[("fipo", "aime2025")] = eval_summary("aime2025", 30, 32, rule="abstain")
    evals.table_notes(summaries, metrics=("avg",))  # an Avg-only table does not depend on Cons's rule
    with pytest.raises(AnalysisError, match="differ in cons_rule"):
        evals.table_notes(summaries)


def _run_notebook(artifact, **parameters):
    """Run a notebook's code cells here, with papermill's parameters replaced by ``parameters``."""
    notebook = nbformat.read(catalog.notebook_path(artifact), as_version=4)
    namespace = {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if "parameters" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
            namespace.update(parameters)
        else:
            exec(cell.source, namespace)
    return namespace


@pytest.mark.parametrize("artifact, preset, experiments", [
    ("table1", "tiny", ["dapo", "fipo"]),
    ("table4", "qwen2.5-7b-math", ["dapo", "fipo"]),
    ("table5", "qwen2.5-7b-math", ["fipo", "fipo-raw"]),
    ("table6", "qwen2.5-7b-math", ["fipo", "fipo-tau8"]),
])
def test_accuracy_tables_say_what_their_intervals_resample(tmp_path, artifact, preset, experiments):
    for e in experiments:
        folder = evals.eval_dir(tmp_path, preset, e, "aime2024")
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(eval_summary("aime2024", 30, 32)))
    _run_notebook(artifact, preset=preset, results_dir=str(tmp_path), out_dir=str(tmp_path / "tables"),
                  experiments=experiments, benchmarks=["aime2024"])
    markdown = (tmp_path / "tables" / f"{artifact}.md").read_text()
    header = markdown.splitlines()[0]
    assert evals.CI_LABEL in header and f"aime2024 {evals.RERUN_LABEL}" in header
    assert ("- [low, high] (95% CI over problems): 95 % Clopper-Pearson interval over the problems (aime2024: 30)"
            in markdown)
    assert f"- {evals.RERUN_LABEL}: half-width of the 95 % rerun interval of Avg@32" in markdown
    assert "- Scorer: math_dapo." in markdown
    assert ("- Cons@32: majority over answer classes" in markdown) == (artifact == "table1")
    latex = (tmp_path / "tables" / f"{artifact}.tex").read_text()
    assert "Clopper-Pearson interval over the problems (aime2024: 30)" in latex
    assert evals.CI_LABEL in (tmp_path / "tables" / f"{artifact}.csv").read_text().splitlines()[0]


def test_tables_are_written_as_csv_markdown_and_latex(tmp_path):
    table = pd.DataFrame({"setting": ["τ = 8", "50% & more", "|x| < 1"], "paper": [40.0, float("nan"), 1.0]})
    paths = plotting.save_table(table, tmp_path, "t", caption="A & B")
    assert [p.name for p in paths] == ["t.csv", "t.md", "t.tex"]
    assert "| τ = 8 | 40.0 |" in (tmp_path / "t.md").read_text()
    assert r"| \|x\| < 1 | 1.0 |" in (tmp_path / "t.md").read_text()  # a "|" in a cell does not split it
    latex = (tmp_path / "t.tex").read_text()
    assert r"50\% \& more & – \\" in latex and r"\caption{A \& B}" in latex
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


# ------------------------------------------------------------------------------------ catalog and notebooks


def test_catalog_covers_every_figure_and_table_of_the_paper():
    ids = set(catalog.ARTIFACTS)
    assert {f"fig{i:02d}" for i in range(1, 13)} | {f"table{i}" for i in range(1, 7)} | {"influence"} == ids
    assert [a.id for a in catalog.artifacts_for("tiny")] == list(catalog.ARTIFACTS)
    assert [a.id for a in catalog.artifacts_for("qwen2.5-32b")] == [
        "fig01", "fig02", "fig03", "fig04", "fig05", "fig08", "fig12", "table1", "table2", "influence"]
    assert [a.id for a in catalog.artifacts_for("qwen2.5-7b-math")] == [
        "fig06", "fig07", "fig09", "fig10", "fig11", "table3", "table4", "table5", "table6", "influence"]
    for preset in ("qwen2.5-32b", "qwen2.5-7b-math"):
        for art in catalog.artifacts_for(preset):
            assert set(art.experiments) <= set(list_experiments(preset)), (preset, art.id)


@pytest.mark.parametrize("artifact", [*catalog.ARTIFACTS, "index"])
def test_every_notebook_has_a_papermill_parameters_cell_and_no_machine_paths(artifact):
    notebook = nbformat.read(catalog.notebook_path(artifact), as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("preset", "results_dir"):
        assert f"{name} = " in tagged[0].source
    text = "\n".join(c.source for c in notebook.cells)
    assert "/work/" not in text and "/tmp/" not in text and "/home/" not in text
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")  # committed unexecuted
    if artifact != "index":
        assert f'catalog.ARTIFACTS["{artifact}"]' in text  # each notebook makes exactly its own artifact


def test_preset_evaluation_sections_are_validated(tmp_path):
    assert evaluation("tiny").benchmarks == ["tiny-test"] and evaluation("tiny").backend == "hf"
    assert evaluation("qwen2.5-7b-math").checkpoint == "best"
    config = tmp_path / "config"
    import shutil
    shutil.copytree(catalog.Path(__file__).resolve().parent.parent / "config", config)
    path = config / "presets" / "tiny.yaml"
    path.write_text(path.read_text().replace("benchmarks: [tiny-test]", "benchmarks: [aime2026]"))
    with pytest.raises(SpecError, match=r"evaluation.benchmarks: 'aime2026' is not allowed"):
        evaluation("tiny", config_dir=config)


def test_rollout_dumps_are_on_for_every_preset():
    for preset in ("tiny", "qwen2.5-32b", "qwen2.5-7b-math", "qwen2.5-math-1.5b", "qwen2.5-0.5b"):
        exp = load_experiment(preset, "fipo")
        assert exp.trainer.rollout_dump and exp.fipo.dump_every > 0
