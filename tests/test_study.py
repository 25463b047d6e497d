"""The study's per-run measures and claim table (fipo.analysis.study) on synthetic metrics frames."""

import dataclasses
import math
import random

import numpy as np
import pandas as pd
import pytest

from fipo.analysis import study
from fipo.analysis.errors import AnalysisError, MissingMetricError
from fipo.analysis.runs import COLUMNS

VAL = "val-core/math_dapo/acc/mean@2"
LENGTH = "response_length/mean"


def _frame(run, lengths, accuracy):
    """lengths: {step: mean length} (steps >= 1); accuracy: {step: validation accuracy}."""
    rows = [(run, "tiny", run, None, s, LENGTH, v) for s, v in lengths.items()]
    rows += [(run, "tiny", run, None, s, VAL, v) for s, v in accuracy.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_run_measures_against_a_direct_computation():
    rng = random.Random()
    steps = rng.randint(12, 40)
    lengths = {s: rng.uniform(5, 40) for s in range(1, steps + 1)}
    accuracy = {s: rng.uniform(0, 1) for s in range(0, steps + 1, 4)}
    m = study.run_measures(_frame("r", lengths, accuracy), "r", window=3)
    ordered = [lengths[s] for s in sorted(lengths)]
    assert m.length_start == lengths[1] and m.length_end == pytest.approx(sum(ordered[-3:]) / 3)
    assert m.length_growth == pytest.approx(m.length_end - m.length_start)
    last = max(accuracy)
    assert (m.final_step, m.final_accuracy) == (last, accuracy[last])
    # step 0 (before training) is paired with step 1's batch: both sampled by the base model
    common = sorted(accuracy)
    expected = pd.Series([accuracy[s] for s in common]).corr(pd.Series([lengths[max(s, 1)] for s in common]))
    assert m.length_accuracy_r == pytest.approx(expected, rel=1e-9)


def test_run_measures_edge_cases():
    short = _frame("r", {s: 10.0 for s in range(1, 4)}, {0: 0.5, 3: 0.6})
    with pytest.raises(AnalysisError, match="3 training steps with a response length; .* more than the 3-step"):
        study.run_measures(short, "r", window=3)
    late = _frame("r", {s: 10.0 for s in range(2, 12)}, {0: 0.5, 5: 0.6})
    with pytest.raises(AnalysisError, match="none at step 1"):
        study.run_measures(late, "r", window=3)
    flat = study.run_measures(_frame("r", {s: 10.0 for s in range(1, 11)}, {0: 0.5, 5: 0.6, 10: 0.7}), "r", window=2)
    assert flat.length_accuracy_r is None and flat.length_growth == 0.0  # a constant length has no correlation
    two = study.run_measures(_frame("r", {s: float(s) for s in range(1, 11)}, {0: 0.5, 10: 0.7}), "r", window=2)
    assert two.length_accuracy_r is None  # two validations: no correlation
    with pytest.raises(MissingMetricError, match="response_length/mean"):
        study.run_measures(_frame("r", {}, {0: 0.5}), "r")


def _measures(growth, accuracy, r=0.5, f=(None, None)):
    return study.RunMeasures(length_start=10.0, length_end=10.0 + growth, final_accuracy=accuracy, final_step=30,
                             length_accuracy_r=r, f_positive=f[0], f_negative=f[1])


def test_claims_pair_the_seeds_and_give_verdicts():
    measures = {
        "fipo": {1: _measures(12.0, 0.80, 0.9, (1.02, 0.99)), 2: _measures(13.0, 0.70, 0.8, (1.01, 1.02)),
                 3: _measures(11.0, 0.75, 0.95, (1.03, 0.98))},
        "dapo": {1: _measures(2.0, 0.78), 2: _measures(3.0, 0.74), 3: _measures(2.5, 0.73)},
    }
    length, accuracy, rises, weights = study.compare_claims(measures)
    assert length.verdict == "reproduced" and length.effect.mean == pytest.approx((10 + 10 + 8.5) / 3)
    assert length.comparison.differences == pytest.approx({1: 10.0, 2: 10.0, 3: 8.5})
    assert accuracy.verdict == "inconclusive" and accuracy.effect.low < 0 < accuracy.effect.high
    assert rises.verdict == "reproduced" and "one-sample t test over 3 seeds" in rises.test
    assert weights.comparison.differences == pytest.approx({1: 0.03, 2: -0.01, 3: 0.05})
    assert weights.verdict == "inconclusive" and "one-sample t test over 3 seeds" in weights.test
    table = study.format_markdown([length, accuracy, rises, weights], seeds=3)
    assert table.count("\n") == 5 and "over 3 seeds" in table and "| reproduced |" in table
    # no FIPO run with token dumps: the weight claim says so
    measures["fipo"] = {s: dataclasses.replace(m, f_positive=None) for s, m in measures["fipo"].items()}
    assert "no fipo run has token dumps" in study.compare_claims(measures)[3].test


def test_influence_weights_by_the_sign_of_the_advantage_against_a_direct_mean():
    rng = np.random.default_rng()
    rows, by_sign = [], {1: [], -1: []}
    for _ in range(rng.integers(5, 30)):
        n = int(rng.integers(0, 12))  # length 0: a response without tokens counts for neither sign
        advantage = float(rng.choice([-1.0, 0.0, 1.0]) * rng.uniform(0.1, 2))
        f = rng.uniform(0.8, 1.2, n)
        rows.append({"advantage": np.full(n, advantage), "influence_weight": f})
        if n and advantage:
            by_sign[1 if advantage > 0 else -1].extend(f)
    positive, negative = study.influence_by_advantage(pd.DataFrame(rows))
    for got, want in ((positive, by_sign[1]), (negative, by_sign[-1])):
        assert (got is None) == (not want)
        if want:
            assert got == pytest.approx(np.mean(np.asarray(want, dtype=np.float64)), rel=1e-12)
    assert study.influence_by_advantage(pd.DataFrame({"advantage": [np.ones(3)], "influence_weight": [np.ones(3)]})) \
        == (1.0, None)


def test_one_seed_study_says_it_has_no_statistics():
    measures = {"fipo": {42: _measures(12.0, 0.8)}, "dapo": {42: _measures(2.0, 0.7)}}
    results = study.compare_claims(measures)
    assert all(r.verdict == "inconclusive" for r in results)
    table = study.format_markdown(results, seeds=1)
    assert "one seed: no across-seed statistics" in table and "[" not in table


def test_claims_name_what_is_missing():
    with pytest.raises(AnalysisError, match="needs runs of 'dapo'; it has fipo"):
        study.compare_claims({"fipo": {1: _measures(1.0, 0.5)}})
    with pytest.raises(ValueError, match="fipo and dapo ran different seeds"):
        study.compare_claims({"fipo": {1: _measures(1.0, 0.5)}, "dapo": {2: _measures(1.0, 0.5)}})
    no_r = {"fipo": {1: _measures(1.0, 0.5, None), 2: _measures(1.0, 0.5, None)},
            "dapo": {1: _measures(1.0, 0.5), 2: _measures(1.0, 0.5)}}
    rises = study.compare_claims(no_r)[2]
    assert rises.verdict == "inconclusive" and math.isnan(rises.effect.mean)
    assert "| – |" in study.format_markdown([rises], seeds=2)


def _write_run(folder, lengths, accuracy):
    import json

    folder.mkdir(parents=True)
    steps = sorted(set(lengths) | set(accuracy))
    with open(folder / "metrics.jsonl", "w") as f:
        for s in steps:
            data = {k: v for k, v in ((LENGTH, lengths.get(s)), (VAL, accuracy.get(s))) if v is not None}
            f.write(json.dumps({"step": s, "data": data}) + "\n")


def test_study_report_command(tmp_path, capsys):
    from fipo.cli import main

    rng = random.Random()
    args = []
    for method, grow in (("fipo", 1.0), ("dapo", 0.3)):
        for seed in (1, 2, 3):
            folder = tmp_path / f"{method}-{seed}"
            _write_run(folder, {s: 10 + grow * s + rng.uniform(-0.5, 0.5) for s in range(1, 21)},
                       {s: 0.5 + 0.01 * s for s in (0, 10, 20)})
            args += ["--run", f"{method}:{seed}={folder}"]
    out = tmp_path / "report" / "study.md"
    assert main(["study-report", *args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "2 methods (fipo, dapo) x 3 seeds (1, 2, 3)" in text and "| fipo | 2 |" in text
    assert "FIPO's responses grow longer than DAPO's" in text and "| reproduced |" in text
    assert "lets length move (a method changes it by 30 % or more): yes" in text

    missing = tmp_path / "nowhere"
    assert main(["study-report", *args[:2], "--run", f"dapo:1={missing}", "--out", str(tmp_path / "x.md")]) == 2
    assert str(missing.resolve()) in capsys.readouterr().err and not (tmp_path / "x.md").exists()
    assert main(["study-report", *args[:2], *args[:2], "--out", str(tmp_path / "x.md")]) == 2
    assert "fipo at seed 1 given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study-report", "--run", "fipo=somewhere", "--out", str(tmp_path / "x.md")])
    assert "expected EXPERIMENT:SEED=RUN_DIR" in capsys.readouterr().err


def test_study_report_finds_the_runs_of_fipo_train_seed_study(tmp_path, capsys):
    from fipo.cli import main

    for method in ("fipo", "dapo"):
        for seed in (1, 2):
            _write_run(tmp_path / "tiny" / "runs" / f"{method}@study-seed{seed}", {s: 10.0 + s * seed for s in range(1, 12)},
                       {0: 0.5, 5: 0.6, 11: 0.7})
    out = tmp_path / "study.md"
    common = ["--results-dir", str(tmp_path), "--out", str(out)]
    assert main(["study-report", "--seeds", "1", "2", "--experiments", "fipo", "dapo", *common]) == 0
    assert "2 methods (fipo, dapo) x 2 seeds (1, 2)" in out.read_text()
    assert main(["study-report", "--seeds", "1", "3", "--experiments", "fipo", "dapo", *common]) == 2
    assert "fipo@study-seed3/metrics.jsonl not found" in capsys.readouterr().err  # the missing run, by name
    assert main(["study-report", "--seeds", "1", "1", *common]) == 2
    assert "--seeds: must be distinct" in capsys.readouterr().err
    assert main(["study-report", *common]) == 2
    assert "either --run (run folders) or --seeds" in capsys.readouterr().err
