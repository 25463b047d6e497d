"""Avg@k, Cons@k and Pass@k from a correctness table, per problem and overall, with bootstrap CIs.

* Avg@k: mean accuracy over the k samples (= the Pass@1 estimate).
* Cons@k: majority vote over the extracted answers of the first k samples; a sample without an extracted
  answer does not vote. Ties go to the answer whose first vote came earliest in sample order (deterministic,
  and independent of answer strings); no answer at all counts as wrong.
* Pass@k: the unbiased estimator 1 - C(n - c, k) / C(n, k) (Chen et al., 2021) for every k <= n.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import comb
from typing import Optional, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_answer(answers: Sequence[Optional[str]]) -> Optional[str]:
    """The most frequent non-empty answer; ties go to the one voted first. None if nobody answered."""
    votes = Counter(a for a in answers if a)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a and votes[a] == best)


@dataclass(frozen=True)
class ProblemResult:
    problem_id: str
    correct: list[bool]  # per sample, in sample order
    answers: list[Optional[str]]  # extracted (normalised) answers, None where none was found
    ground_truth: str
    answer_is_correct: dict  # extracted answer -> whether it is judged correct

    def avg(self) -> float:
        return float(np.mean(self.correct))

    def cons(self, k: Optional[int] = None) -> float:
        k = k or len(self.answers)
        voted = majority_answer(self.answers[:k])
        return float(bool(voted) and self.answer_is_correct.get(voted, False))

    def pass_k(self, k: int) -> float:
        return pass_at_k(len(self.correct), sum(self.correct), k)


def bootstrap_ci(per_problem: np.ndarray, statistic=np.mean, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile CI of ``statistic`` over problems resampled with replacement."""
    if len(per_problem) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_problem), size=(resamples, len(per_problem)))
    stats = np.apply_along_axis(statistic, 1, per_problem[idx])
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def bootstrap_avg_ci(correct: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """CI of Avg@k resampling problems and, within each, samples: both sources of AIME's variance."""
    rng = np.random.default_rng(seed)
    problems, samples = correct.shape
    means = np.empty(resamples)
    for r in range(resamples):
        rows = rng.integers(0, problems, size=problems)
        cols = rng.integers(0, samples, size=(problems, samples))
        means[r] = correct[rows[:, None], cols].mean()
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(results: list[ProblemResult], ks: Optional[list[int]] = None, seed: int = 0) -> dict:
    """Overall metrics (in %, as the paper reports them) with 95 % bootstrap CIs, and per-problem rows."""
    if not results:
        raise ValueError("no problems to summarize")
    n = min(len(r.correct) for r in results)
    if any(len(r.correct) != n for r in results):
        raise ValueError("every problem needs the same number of samples")
    ks = ks or [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n] + ([n] if n not in (1, 2, 4, 8, 16, 32, 64) else [])
    correct = np.array([r.correct for r in results], dtype=float)
    avg = correct.mean(axis=1)
    cons = np.array([r.cons(n) for r in results])
    summary = {
        "problems": len(results),
        "samples_per_problem": n,
        f"avg@{n}": 100 * float(avg.mean()),
        f"avg@{n}_ci95": [100 * x for x in bootstrap_avg_ci(correct, seed=seed)],
        f"cons@{n}": 100 * float(cons.mean()),
        f"cons@{n}_ci95": [100 * x for x in bootstrap_ci(cons, seed=seed)],
    }
    for k in ks:
        per_problem = np.array([r.pass_k(k) for r in results])
        summary[f"pass@{k}"] = 100 * float(per_problem.mean())
        summary[f"pass@{k}_ci95"] = [100 * x for x in bootstrap_ci(per_problem, seed=seed)]
    summary["per_problem"] = [
        {
            "problem_id": r.problem_id,
            "ground_truth": r.ground_truth,
            "avg": r.avg(),
            "cons": r.cons(n),
            "majority_answer": majority_answer(r.answers),
            **{f"pass@{k}": r.pass_k(k) for k in ks},
        }
        for r in results
    ]
    return summary
