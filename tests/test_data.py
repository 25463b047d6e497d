"""Data preparation: AIME parquet from the shipped files, DAPO dedup, and clear errors."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from verl.utils.reward_score import default_compute_score

from fipo import data
from fipo.data import DAPO_PROMPT_PREFIX, DAPO_PROMPT_SUFFIX, DatasetUnavailable, prepare_aime, prepare_dapo


@pytest.fixture(scope="module")
def aime(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_aime(out)
    return out


@pytest.mark.parametrize("year", [2024, 2025])
def test_aime_parquet_rows_answers_and_prompts(aime, year):
    frame = pd.read_parquet(aime / f"aime{year}.parquet")
    shipped = [json.loads(line) for line in (data.SHIPPED_AIME_DIR / f"aime{year}.jsonl").read_text().splitlines()]
    assert len(frame) == len(shipped) == 30
    assert set(frame.data_source) == {f"aime{year}"}
    assert [rm["ground_truth"] for rm in frame.reward_model] == [p["answer"] for p in shipped]
    for prompt, problem in zip(frame.prompt, shipped):
        assert len(prompt) == 1 and prompt[0]["role"] == "user"
        assert prompt[0]["content"] == DAPO_PROMPT_PREFIX + problem["problem"] + DAPO_PROMPT_SUFFIX
    assert [e["problem_id"] for e in frame.extra_info] == [p["id"] for p in shipped]


def test_shipped_aime_files_equal_the_shared_verified_copy():
    shared = data.PROJECT_ROOT.parent / "shared" / "data" / "aime"
    if not shared.is_dir():
        pytest.skip("../shared/data/aime is not beside this checkout")
    for year in (2024, 2025):
        assert (shared / f"aime{year}.jsonl").read_bytes() == (data.SHIPPED_AIME_DIR / f"aime{year}.jsonl").read_bytes()


def test_verl_scores_a_correct_response_1_and_a_wrong_one_minus_1(aime):
    row = pd.read_parquet(aime / "aime2024.parquet").iloc[0]
    truth = row.reward_model["ground_truth"]
    right = default_compute_score(row.data_source, f"Some reasoning.\nAnswer: {truth}", truth)
    wrong = default_compute_score(row.data_source, f"Some reasoning.\nAnswer: {int(truth) + 1}", truth)
    assert right["score"] == 1.0 and right["acc"] is True
    assert wrong["score"] == -1.0 and wrong["acc"] is False


def test_dapo_from_a_local_copy_is_deduplicated_in_verl_format(tmp_path):
    def hub_row(problem, answer):
        return {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_PROMPT_PREFIX + problem + DAPO_PROMPT_SUFFIX}],
            "ability": "MATH",
            "reward_model": {"style": "rule-lighteval/MATH_v2", "ground_truth": answer},
            "extra_info": {"index": "x"},
        }

    rows = [hub_row("1+1?", "2"), hub_row("2+2?", "4"), hub_row("1+1?", "2"), hub_row("3+3?", "6")] * 3
    source = tmp_path / "src"
    source.mkdir()
    pd.DataFrame(rows).to_parquet(source / "part-0.parquet")
    out = prepare_dapo(tmp_path / "data", source=str(source))
    frame = pd.read_parquet(out)
    assert len(frame) == 3
    assert [rm["ground_truth"] for rm in frame.reward_model] == ["2", "4", "6"]
    assert set(frame.data_source) == {"math_dapo"} and [e["index"] for e in frame.extra_info] == [0, 1, 2]


def test_dapo_without_the_hub_names_the_dataset_and_what_to_do(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "fipo", "data", "dapo", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 2
    assert "DAPO-Math-17k" in out.stderr and "--source" in out.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_missing_dataset_file_is_reported_before_anything_runs(tmp_path):
    with pytest.raises(DatasetUnavailable, match="aime2024.*python -m fipo data aime"):
        data.require_datasets(["aime2024"], tmp_path)


def test_malformed_aime_source_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "aime2024.jsonl").write_text('{"id": "x", "problem": "p"}\n')
    with pytest.raises(DatasetUnavailable, match=r"aime2024.jsonl:1: missing field\(s\) \['answer'\]"):
        prepare_aime(tmp_path / "out", source_dir=tmp_path)
