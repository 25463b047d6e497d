"""Metrics across crashes and resumes: every step exactly once, latest attempt wins, torn lines tolerated."""

import json

import pytest

from fipo.run_log import attempt_files, merge_attempts, next_attempt_path, read_steps


def write(path, records, torn=False):
    text = "".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in records)
    path.write_text(text + ('{"step": 9, "da' if torn else ""))


def test_attempts_are_numbered_and_merged_step_by_step(tmp_path):
    assert next_attempt_path(tmp_path).name == "metrics.attempt-1.jsonl"
    # attempt 1: validation at step 0, steps 1-4, crash while writing step 5 (checkpoint at step 2)
    write(tmp_path / "metrics.attempt-1.jsonl",
          [(0, {"val": 0.1}), (1, {"loss": 1.0}), (2, {"loss": 2.0}), (3, {"loss": 3.0}), (4, {"loss": 4.0})], torn=True)
    assert next_attempt_path(tmp_path).name == "metrics.attempt-2.jsonl"
    # attempt 2 resumes from step 2: validates at step 2, re-runs 3 and 4, goes on to 5
    write(tmp_path / "metrics.attempt-2.jsonl", [(2, {"val": 0.2}), (3, {"loss": 3.5}), (4, {"loss": 4.5}), (5, {"loss": 5.5})])
    merged = merge_attempts(tmp_path)
    lines = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4, 5]  # each step exactly once, in order
    by_step = {r["step"]: r["data"] for r in lines}
    assert by_step[2] == {"loss": 2.0, "val": 0.2}  # the resume's validation adds to the step's record
    assert by_step[3] == {"loss": 3.5} and by_step[4] == {"loss": 4.5}  # re-runs win
    assert [p.name for p in attempt_files(tmp_path)] == ["metrics.attempt-1.jsonl", "metrics.attempt-2.jsonl"]


def test_attempt_10_sorts_after_attempt_9(tmp_path):
    for n in (1, 2, 9, 10):
        write(tmp_path / f"metrics.attempt-{n}.jsonl", [(1, {"attempt": n})])
    merged = merge_attempts(tmp_path)
    assert json.loads(merged.read_text())["data"] == {"attempt": 10}


def test_nothing_logged_writes_nothing(tmp_path):
    assert merge_attempts(tmp_path) is None and not (tmp_path / "metrics.jsonl").exists()


def test_a_malformed_line_inside_a_file_names_the_file_and_line(tmp_path):
    (tmp_path / "metrics.attempt-1.jsonl").write_text('{"step": 1, "data": {}}\nnot json\n{"step": 2, "data": {}}\n')
    with pytest.raises(ValueError, match=r"metrics.attempt-1.jsonl:2: malformed"):
        read_steps(tmp_path / "metrics.attempt-1.jsonl")
    (tmp_path / "metrics.attempt-1.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="expected"):
        read_steps(tmp_path / "metrics.attempt-1.jsonl")
