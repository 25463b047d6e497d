"""The released checkpoint: its spec (a preset's `released:` section, validated) and its table beside the paper's
Table 1 row, written from fake evaluation summaries in the format `fipo eval` writes."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from fipo.analysis.errors import MissingRunError
from fipo.analysis.paper import TABLE1
from fipo.analysis.released import released_eval_dir, released_table, write_released_table
from fipo.eval.runner import summarize_records
from fipo.spec import CONFIG_DIR, PAPER_ROWS, SpecError, released

SNAPSHOT = "/hf/hub/models--QwenPilot--FIPO_32B/snapshots/0123456789abcdef0123456789abcdef01234567"


def fake_summary(benchmark: str, solved: float, n: int = 32, problems: int = 30) -> dict:
    """A summary as `fipo eval` writes it: problem i solved by each sample with probability ~ ``solved``, spread so
    that Avg@n = ``solved`` exactly (in %), with the identity fields the runner adds."""
    correct_total = round(solved / 100 * n * problems)
    records = {}
    for i in range(problems):
        rows = []
        for j in range(n):
            ok = (i * n + j) < correct_total
            rows.append({"problem_id": str(i), "sample_index": j, "correct": ok, "extracted_answer": "7" if ok else "8",
                         "length": 1000 + j, "finish_reason": "stop"})
        records[str(i)] = rows
    summary = summarize_records([{"problem_id": str(i), "ground_truth": "7"} for i in range(problems)], records)
    summary.update({"benchmark": benchmark, "model": SNAPSHOT, "model_sha256": "ab" * 32, "backend": "vllm",
                    "settings": {"n": n, "temperature": 1.0, "top_p": 0.7, "max_tokens": 20480, "seed": 0}})
    return summary


def write_summaries(results, summaries: dict) -> None:
    for benchmark, summary in summaries.items():
        folder = released_eval_dir(results, "qwen2.5-32b", benchmark)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary))


def test_the_32b_preset_declares_the_released_fipo_checkpoint():
    spec = released("qwen2.5-32b")
    assert spec.model == "QwenPilot/FIPO_32B" and spec.paper_row == "fipo" and spec.revision
    assert released("tiny") is None and released("qwen2.5-7b-math") is None


def test_the_rows_a_released_model_may_name_are_the_rows_of_the_papers_table_1():
    assert set(PAPER_ROWS) == set(TABLE1)


@pytest.mark.parametrize("section, message", [
    ({"model": "not a hub id", "paper_row": "fipo"}, r"released.model: 'not a hub id' is not a Hugging Face hub id"),
    ({"model": "a/b", "paper_row": "fipo-32b"}, r"released.paper_row: 'fipo-32b' is not a row .*allowed: dapo, fipo"),
    ({"model": "a/b", "paper_row": "fipo", "revision": "main; rm -rf"}, r"released.revision: .* not a branch"),
    ({"model": "a/b", "paper_row": "fipo", "checkpoint": "last"}, r"released: unknown key\(s\) \['checkpoint'\]"),
    ({"paper_row": "fipo"}, r"released: missing required key\(s\) \['model'\]"),
    ("QwenPilot/FIPO_32B", r"'released' must be a mapping"),
])
def test_a_bad_released_section_names_the_key(tmp_path, section, message):
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    path = config / "presets" / "qwen2.5-32b.yaml"
    data = yaml.safe_load(path.read_text())
    data["released"] = section
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=message):
        released("qwen2.5-32b", config_dir=config)


def test_the_table_puts_the_papers_fipo_row_beside_the_measured_values():
    summaries = {"aime2024": fake_summary("aime2024", 56.25), "aime2025": fake_summary("aime2025", 30.0)}
    table, notes = released_table(summaries, "qwen2.5-32b", released("qwen2.5-32b"))
    assert list(table["metric"]) == ["Avg@32", "Cons@32", "Pass@32"] * 2
    assert list(table["benchmark"]) == ["AIME 2024"] * 3 + ["AIME 2025"] * 3
    paper = [TABLE1["fipo"][b][m] for b in ("aime2024", "aime2025") for m in ("avg", "cons", "pass")]
    assert list(table["paper (Table 1, FIPO, @32)"]) == paper == [56.0, 73.0, 83.0, 43.0, 50.0, 67.0]
    avg24, avg25 = table.iloc[0], table.iloc[3]
    assert avg24["measured (95% CI over problems)"].startswith("56.2 [") and avg24["measured − paper"] == "+0.2"
    assert avg25["measured − paper"] == "-13.0" and avg25["rerun ± (samples)"].startswith("±")
    assert table.iloc[1]["rerun ± (samples)"] == "–"  # Cons has no rerun interval
    assert notes[0].startswith("Model: QwenPilot/FIPO_32B (revision main; read from " + SNAPSHOT)
    assert "temperature 1.0, top-p 0.7, max tokens 20480" in notes[0]
    assert notes[1].startswith("AIME 2024 Avg@32: 56.2 vs the paper's 56: within rerun noise")
    assert notes[2].startswith("AIME 2025 Avg@32: 30.0 vs the paper's 43: OUTSIDE rerun noise")
    assert "check the prompt, chat template, scorer and max tokens" in notes[2]
    assert any(n.startswith("Scorer: math_dapo") for n in notes)


def test_the_table_files_are_written_like_the_other_tables(tmp_path):
    write_summaries(tmp_path, {"aime2024": fake_summary("aime2024", 50.0), "aime2025": fake_summary("aime2025", 40.0)})
    paths = write_released_table(tmp_path, "qwen2.5-32b")
    tables = tmp_path / "qwen2.5-32b" / "tables"
    assert paths == [tables / "released.csv", tables / "released.md", tables / "released.tex"]
    csv = (tables / "released.csv").read_text().splitlines()
    assert csv[0] == ("benchmark,metric,measured (95% CI over problems),rerun ± (samples),"
                      '"paper (Table 1, FIPO, @32)",measured − paper')
    assert csv[1].startswith('AIME 2024,Avg@32,"50.0 [') and csv[1].endswith(",56.0,-6.0")
    markdown = (tables / "released.md").read_text()
    assert "| AIME 2025 | Pass@32 |" in markdown and "- Model: QwenPilot/FIPO_32B" in markdown
    assert r"\caption{The released QwenPilot/FIPO\_32B" in (tables / "released.tex").read_text()


def test_a_missing_evaluation_names_its_file_and_the_target_that_makes_it(tmp_path):
    write_summaries(tmp_path, {"aime2024": fake_summary("aime2024", 50.0)})
    with pytest.raises(MissingRunError, match=r"released/eval/aime2025/summary.json not found .*"
                                              r"snakemake --cores all released --config preset=qwen2.5-32b"):
        write_released_table(tmp_path, "qwen2.5-32b")
    assert not (tmp_path / "qwen2.5-32b" / "tables").exists()


def test_summaries_evaluated_differently_are_refused(tmp_path):
    other = fake_summary("aime2025", 40.0)
    other["scorer"] = "math_verify"
    with pytest.raises(Exception, match="differ in scorer"):
        released_table({"aime2024": fake_summary("aime2024", 50.0), "aime2025": other}, "qwen2.5-32b",
                       released("qwen2.5-32b"))


def test_the_command_line(tmp_path):
    write_summaries(tmp_path, {"aime2024": fake_summary("aime2024", 50.0), "aime2025": fake_summary("aime2025", 40.0)})
    out = subprocess.run([sys.executable, "-m", "fipo", "released-table", "--preset", "qwen2.5-32b", "--results-dir",
                          str(tmp_path), "--out", str(tmp_path / "t")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "t" / f"released.{s}") for s in ("csv", "md", "tex")]
    out = subprocess.run([sys.executable, "-m", "fipo", "released-table", "--preset", "tiny", "--results-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "preset 'tiny' declares no released model" in out.stderr
