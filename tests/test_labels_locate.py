"""Legend labels say what each preset ran; notebooks find their results from wherever they run."""

from __future__ import annotations

import os

import pytest

from fipo.analysis import catalog, labels, locate, runs
from fipo.analysis.errors import MissingRunError


@pytest.mark.parametrize(
    "preset, experiments, expected",
    [
        ("tiny", ("fipo", "fipo-cliphigh-1.4", "fipo-maxlen-25k"),
         {"fipo": "FIPO, clip-high 1.28, max response 64 tokens",  # both buffers are 16 tokens: not a difference
          "fipo-cliphigh-1.4": "FIPO, clip-high 1.4",
          "fipo-maxlen-25k": "FIPO, max response 80 tokens"}),
        ("qwen2.5-32b", ("fipo", "fipo-cliphigh-1.4", "fipo-maxlen-25k"),
         {"fipo": "FIPO, clip-high 1.28, max response 20K tokens, overlong buffer 4K tokens",
          "fipo-cliphigh-1.4": "FIPO, clip-high 1.4",
          "fipo-maxlen-25k": "FIPO, max response 25K tokens, overlong buffer 5K tokens"}),
        ("qwen2.5-32b", ("fipo", "fipo-minibatch32", "fipo-minibatch32-nooverlong"),
         {"fipo": "FIPO, mini-batch 64 prompts, overlong penalty", "fipo-minibatch32": "FIPO, mini-batch 32 prompts",
          "fipo-minibatch32-nooverlong": "FIPO, mini-batch 32 prompts, no overlong penalty"}),
        ("tiny", ("fipo-fclip-1.0-1.2", "fipo-raw", "fipo"),
         {"fipo-fclip-1.0-1.2": "FIPO, f clip [1.0, 1.2]", "fipo-raw": "FIPO, no ratio filter (raw Future-KL)",
          "fipo": "FIPO, f clip [0.8, 1.2], ratio filter"}),
        ("qwen2.5-7b-math", ("grpo", "dapo", "fipo"), {"grpo": "GRPO", "dapo": "DAPO", "fipo": "FIPO"}),
    ],
)
def test_labels_come_from_each_presets_spec(preset, experiments, expected):
    assert labels.run_labels(preset, experiments) == expected


def test_a_label_follows_an_edited_spec(tmp_path, monkeypatch):
    """Not a lookup table: change the spec, the label changes."""
    from fipo import spec as experiment

    config = tmp_path / "config"
    os.system(f"cp -r {experiment.CONFIG_DIR} {config}")
    preset = config / "presets" / "tiny.yaml"
    text = preset.read_text()
    assert "tau: 8" in text
    preset.write_text(text.replace("tau: 8", "tau: 4", 1))
    original = experiment.load_experiment
    monkeypatch.setattr(labels, "load_experiment", lambda p, e: original(p, e, config_dir=config))
    assert labels.run_labels("tiny", ("fipo", "fipo-tau8"))["fipo-tau8"] == "FIPO, τ = 4"
    # a kernel that stays up sees the next edit too (the loader caches per version of the file, not per name)
    preset.write_text(text.replace("tau: 8", "tau: 2", 1) + "\n")
    assert labels.run_labels("tiny", ("fipo", "fipo-tau8"))["fipo-tau8"] == "FIPO, τ = 2"


def test_titles_are_true_at_every_preset_and_keep_the_papers_wording_apart():
    fig08 = catalog.ARTIFACTS["fig08"]
    assert "25K" not in fig08.title and "32B" not in fig08.title
    assert fig08.heading("tiny").endswith("(preset tiny)")
    assert fig08.paper_note == "paper: Figure 8, 32B: clip-high 1.4 and 25K max response"
    for art in catalog.ARTIFACTS.values():
        for paper_only in ("AIME", "32B", "7B", "25K", "Avg@32"):
            assert paper_only not in art.title, (art.id, paper_only)


def test_settings_table_puts_the_differences_first():
    rows = labels.settings_table("tiny", ["fipo", "fipo-tau8"])
    assert rows[0] == ("fipo.tau", ["32", "8"])
    assert all(len(set(values)) == 1 for _, values in rows[1:])
    assert not any("Spec(" in v for _, values in rows for v in values)


def make_results(root, preset="tiny", experiment="fipo"):
    run = root / preset / "runs" / experiment
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "data": {"x": 1.0}}\n')
    return root


def test_results_are_found_from_the_notebook_folders_and_the_project_root(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "workflow").mkdir(parents=True)
    (project / "workflow" / "Snakefile").write_text("")
    results = make_results(project / "results")
    (project / "notebooks").mkdir()
    executed = results / "tiny" / "notebooks"
    executed.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (project, project / "notebooks", executed):
        assert locate.results_dir("results", "tiny", cwd=cwd) == results, cwd
    # an executed copy whose results folder was moved (and renamed) still finds it from its own folder
    moved = tmp_path / "archive" / "run-2026"
    moved.parent.mkdir()
    results.rename(moved)
    assert locate.results_dir("results", "tiny", cwd=moved / "tiny" / "notebooks") == moved
    with pytest.raises(locate.ResultsNotFoundError) as err:
        locate.results_dir("results", "tiny", cwd=elsewhere)
    assert str(elsewhere / "results") in str(err.value) and "tiny/runs/" in str(err.value)


def test_missing_run_says_never_trained_or_wrong_place(tmp_path):
    results = make_results(tmp_path / "results")
    with pytest.raises(MissingRunError, match=r"never trained here.*runs that are: fipo"):
        runs.load_runs(results, "tiny", ["dapo"])
    with pytest.raises(MissingRunError, match=r"no results of preset 'tiny' at all"):
        runs.load_runs(tmp_path / "nowhere", "tiny", ["dapo"])


def test_paper_values_share_a_column_only_with_the_same_scale_and_benchmark():
    from fipo.analysis import paper

    assert paper.comparable("qwen2.5-32b", "32b", "aime2024")
    assert not paper.comparable("qwen2.5-7b-math", "32b", "aime2024")  # another scale
    assert not paper.comparable("tiny", "32b", "aime2024")
    assert not paper.comparable("qwen2.5-32b", "32b", "tiny-test")  # another benchmark
    assert paper.reference_label("qwen2.5-32b", "32b", "aime2025") == "paper, AIME 2025, 32B"
    assert paper.reference_label("tiny", "7b", "aime2024") == "paper, AIME 2024, 7B (not comparable to preset tiny)"


def test_index_page_shows_settings_as_tables_not_reprs(tmp_path):
    from fipo.analysis import report

    page = report.index_html(tmp_path, "tiny", tmp_path / "tiny")
    assert "Spec(" not in page and "None" not in page
    assert "<th style='text-align:left'>benchmarks</th><td>[tiny-test]</td>" in page
    assert "all settings of these runs" in page and "<th style='text-align:left'>fipo.tau</th>" in page
    assert "paper: Figure 11, 7B" in page


def test_index_page_links_only_files_that_exist(tmp_path):
    from fipo.analysis import catalog, report

    (tmp_path / "tiny" / "notebooks").mkdir(parents=True)
    (tmp_path / "tiny" / "notebooks" / "fig03.ipynb").write_text("{}")
    page = report.index_html(tmp_path, "tiny", tmp_path / "tiny")
    assert page.count("executed notebook (missing)") == len(catalog.artifacts_for("tiny")) - 1
    assert "<a href='notebooks/fig03.ipynb'>executed notebook</a>" in page
    assert "notebooks/fig02.ipynb" not in page
