"""Avg/Cons/Pass@k against brute force, and the scoring rules on crafted responses."""

import itertools
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fipo.eval.metrics import ProblemResult, bootstrap_ci, majority_answer, pass_at_k, summarize
from fipo.eval.scoring import get_scorer, score_math_dapo, score_math_verify


@given(st.lists(st.booleans(), min_size=1, max_size=10), st.data())
def test_pass_at_k_equals_enumeration_over_subsets(correct, data):
    n, c = len(correct), sum(correct)
    k = data.draw(st.integers(1, n))
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(32, 0, 32) == 0.0 and pass_at_k(32, 1, 32) == 1.0 and pass_at_k(32, 8, 1) == 0.25
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["5", "7", "7", "5"], "5"),  # tie: the answer voted first
        (["7", "5", "5", "7"], "7"),
        ([None, "3", None, None], "3"),  # missing answers do not vote
        ([None, None], None),
        (["2", "2", "9", "9", "9"], "9"),
        ([], None),
    ],
)
def test_majority_vote_with_ties_and_missing_answers(answers, expected):
    assert majority_answer(answers) == expected


def brute_force_majority(answers):
    counts = {}
    for a in answers:
        if a:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    for a in answers:  # first in sample order among the tied
        if a and counts[a] == best:
            return a


@given(st.lists(st.sampled_from([None, "1", "2", "3"]), max_size=12))
def test_majority_vote_matches_brute_force(answers):
    assert majority_answer(answers) == brute_force_majority(answers)


def random_results(seed, problems=7, n=8):
    rng = random.Random(seed)
    out = []
    for i in range(problems):
        truth = str(rng.randint(0, 5))
        answers = [rng.choice([None, "0", "1", "2", "3", "4", "5"]) for _ in range(n)]
        correct = [a == truth for a in answers]
        out.append(ProblemResult(str(i), correct, answers, truth, {a: a == truth for a in answers if a}))
    return out


def test_summary_against_direct_computation():
    results = random_results(seed=random.randrange(2**32))
    summary = summarize(results, seed=1)
    correct = np.array([r.correct for r in results], dtype=float)
    assert summary["avg@8"] == pytest.approx(100 * correct.mean())
    cons = [float(brute_force_majority(r.answers) == r.ground_truth) for r in results]
    assert summary["cons@8"] == pytest.approx(100 * np.mean(cons))
    assert summary["pass@8"] == pytest.approx(100 * np.mean([any(r.correct) for r in results]))
    assert summary["pass@1"] == pytest.approx(summary["avg@8"])
    low, high = summary["avg@8_ci95"]
    assert low <= summary["avg@8"] <= high
    assert len(summary["per_problem"]) == 7


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_problems():
    rng = np.random.default_rng()
    small, large = rng.random(10), rng.random(1000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s


@pytest.mark.parametrize(
    "response, dapo, verify",
    [
        ("Thinking...\nAnswer: 25", (True, "25"), (True, "25")),
        ("So the result is \\boxed{25}.", (True, "25"), (True, "25")),
        ("Answer: 025", (False, "025"), (True, "25")),  # math_dapo compares strings; Math-Verify numbers
        ("Answer: 24", (False, "24"), (False, "24")),
        ("I could not solve it.", (False, None), (False, None)),
        ("Answer: 25\n" + "blah " * 100, (False, None), (True, "25")),  # math_dapo reads the last 300 chars only
        ("x" * 20000 + "\nAnswer: 25", (True, "25"), (True, "25")),  # very long responses
    ],
)
def test_scoring_crafted_responses(response, dapo, verify):
    d, v = score_math_dapo(response, "25"), score_math_verify(response, "25")
    assert (d.correct, d.extracted) == dapo
    assert v.correct == verify[0] and (v.extracted == verify[1] if verify[1] else v.extracted is None)


def test_unknown_scorer():
    with pytest.raises(ValueError, match="allowed: math_dapo, math_verify"):
        get_scorer("exact")
