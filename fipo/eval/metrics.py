"""Avg@n, Cons@n and Pass@k from a correctness table, per problem and overall, with 95 % intervals.

* Avg@n: mean accuracy over the n samples of each problem, averaged over problems. It is the Pass@1 estimate,
  so Pass@1 is not listed separately (one number, one interval).
* Cons@n: majority vote over *answer classes*: answers the active scorer judges equal are one class (the
  exact extracted string for ``math_dapo``/``math_dapo_strict``, Math-Verify's ``verify`` between extracted
  answers for ``math_verify``; see :func:`fipo.eval.scoring.answer_equivalence`). A sample joins the first
  earlier class whose first answer it equals. The problem counts as solved when the winning class's first
  sample was scored correct (verl's ``calc_maj_val`` also takes the first value of the winning vote).
  Ties go to the class whose first vote came earliest in sample order (deterministic, independent of the
  answer strings; verl's ``max`` over an insertion-ordered dict does the same).
  Samples without an answer (``unanswered``):
    - ``"vote"`` (default): they form one class of their own, "no answer", which can win (then the problem
      counts as wrong) and takes part in ties like any class. This is verl's convention for the training-
      curve metric ``val-core/<source>/acc/maj@N/mean`` (Figure 12f): verl's math_dapo gives them the pred
      ``[INVALID]`` and ``process_validation_metrics`` votes on it like on any answer. So the tables and
      Figure 12f count unanswered samples the same way.
    - ``"abstain"``: they do not vote; a problem whose samples all lack an answer counts as wrong.
  (verl's ``maj@N/mean`` is still another *estimator*: the mean majority over 1000 bootstrap draws of N of
  the N samples, not the majority of the N samples themselves; same vote, different averaging.)
* Pass@k: the unbiased estimator 1 - C(n - c, k) / C(n, k) (Chen et al., 2021) for k in 2, 4, ..., n.

Intervals (95 %), two kinds, each named in the summary (``intervals``):

* ``<metric>_ci95``: over *problems*. The benchmark is one draw of problems from a population; the interval
  is the Clopper-Pearson ("exact" binomial) interval of the mean of the per-problem scores (Avg, Cons,
  Pass@k of each problem, all in [0, 1]) with m = the number of problems and x = m * mean "successes"
  (fractional x through the incomplete beta function). For 0/1 scores (Cons, Pass@n) it is the exact
  binomial interval: coverage >= 95 % at every rate. Fractional scores have variance <= p (1 - p), the
  binomial one, and it is conservative for them in simulation (coverage >= 0.96; tests/test_eval_metrics.py). It
  never collapses to a point: with all 30 problems solved it is [88.4, 100]. (A percentile bootstrap over
  problems collapses to [100, 100] there: 0-58 % coverage for Pass@32 near 100 %; Wilson's score
  interval dips to ~0.87 coverage there.) On 30 AIME problems it is about ±19 points at 50 %.
* ``avg@n_rerun_ci95``: over *samples within the fixed problems*: the noise of a rerun (another seed) on the
  same problems. Per problem the variance of its Avg is q (1 - q) / n; q is estimated shrunk as
  Agresti-Coull does, (c + z²/2) / (n + z²), so it never estimates zero noise, and the variances are summed
  over problems (normal approximation around the observed Avg@n, clipped to [0, 100]). Typically ±1-3
  points on 30 x 32 samples: several times narrower than the interval over problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb, lgamma
from statistics import NormalDist
from typing import Callable, Optional, Sequence

import numpy as np

UNANSWERED_RULES = ("vote", "abstain")
DEFAULT_UNANSWERED = "vote"  # verl's maj@N convention (Figure 12f)
SUMMARY_VERSION = 2  # the conventions of summary.json: 2 = answer classes, unanswered rule, these intervals
LEVEL = 0.95

Same = Callable[[str, str], bool]


def _same_string(a: str, b: str) -> bool:
    return a == b


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _check_rule(unanswered: str) -> None:
    if unanswered not in UNANSWERED_RULES:
        raise ValueError(f"unanswered={unanswered!r}; allowed: {', '.join(UNANSWERED_RULES)}")


def vote(answers: Sequence[Optional[str]], same: Optional[Same] = None,
         unanswered: str = DEFAULT_UNANSWERED) -> Optional[int]:
    """The index of the first sample of the winning answer class, or None when the "no answer" class wins
    (``unanswered="vote"``) or nobody answered. ``same(first, other)`` says whether ``other`` is the answer
    ``first`` (the first answer of a class); default: equal strings. See the module doc for the rules."""
    _check_rule(unanswered)
    same = same or _same_string
    firsts: list[int] = []  # per class in order of its first vote: the index of that first sample
    counts: list[int] = []
    none_class: Optional[int] = None
    for i, answer in enumerate(answers):
        if not answer:
            if unanswered == "abstain":
                continue
            if none_class is None:
                none_class = len(firsts)
                firsts.append(i)
                counts.append(0)
            counts[none_class] += 1
            continue
        for c, first in enumerate(firsts):
            if c != none_class and same(answers[first], answer):
                counts[c] += 1
                break
        else:
            firsts.append(i)
            counts.append(1)
    if not counts:
        return None
    winner = counts.index(max(counts))  # classes are in order of their first vote: ties go to the earliest
    return None if winner == none_class else firsts[winner]


def majority_answer(answers: Sequence[Optional[str]], same: Optional[Same] = None,
                    unanswered: str = DEFAULT_UNANSWERED) -> Optional[str]:
    """The winning class's first answer; None if "no answer" won or nobody answered."""
    index = vote(answers, same, unanswered)
    return None if index is None else answers[index]


@dataclass(frozen=True)
class ProblemResult:
    problem_id: str
    correct: list[bool]  # per sample, in sample order
    answers: list[Optional[str]]  # extracted answers, None where none was found
    ground_truth: str

    def avg(self) -> float:
        return float(np.mean(self.correct))

    def cons(self, k: Optional[int] = None, same: Optional[Same] = None, unanswered: str = DEFAULT_UNANSWERED) -> float:
        k = k or len(self.answers)
        index = vote(self.answers[:k], same, unanswered)
        return float(index is not None and bool(self.correct[index]))

    def pass_k(self, k: int) -> float:
        return pass_at_k(len(self.correct), sum(self.correct), k)


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


_lgamma = np.frompyfunc(lgamma, 1, 1)
_TINY = 1e-300


def _betaln(a, b):
    return np.asarray(_lgamma(a) + _lgamma(b) - _lgamma(a + b), dtype=float)


def _beta_fraction(a, b, x, iterations: int = 300):
    """The continued fraction of the incomplete beta function (DLMF 8.17.22), by the modified Lentz method."""
    c = np.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = 1 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    for j in range(1, iterations + 1):
        for coefficient in (j * (b - j) * x / ((a + 2 * j - 1) * (a + 2 * j)),
                            -(a + j) * (a + b + j) * x / ((a + 2 * j) * (a + 2 * j + 1))):
            d = 1 + coefficient * d
            d = 1 / np.where(np.abs(d) < _TINY, _TINY, d)
            c = 1 + coefficient / c
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            step = c * d
            h = h * step
        if np.all(np.abs(step - 1) < 1e-14):
            break
    return h


def beta_cdf(x, a, b):
    """The regularised incomplete beta function I_x(a, b) (the Beta(a, b) CDF), elementwise; a, b > 0."""
    x, a, b = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(x, a, b))
    inside = (x > 0) & (x < 1)
    xs = np.where(inside, x, 0.5)
    swap = xs > (a + 1) / (a + b + 2)  # the fraction converges fast below the mean: use I_x(a,b) = 1 - I_1-x(b,a)
    p, q, y = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, 1 - xs, xs)
    front = np.exp(p * np.log(y) + q * np.log1p(-y) - _betaln(p, q)) / p
    value = front * _beta_fraction(p, q, y)
    value = np.where(swap, 1 - value, value)
    return np.clip(np.where(inside, value, np.where(x >= 1, 1.0, 0.0)), 0.0, 1.0)


def beta_quantile(probability, a, b, iterations: int = 60):
    """The x with I_x(a, b) = probability, by bisection (elementwise; exact to ~1e-18)."""
    probability, a, b = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(probability, a, b))
    low, high = np.zeros_like(probability), np.ones_like(probability)
    for _ in range(iterations):
        mid = (low + high) / 2
        below = beta_cdf(mid, a, b) < probability
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    return (low + high) / 2


def clopper_pearson(mean, count, level: float = LEVEL):
    """The Clopper-Pearson ("exact" binomial) interval of a mean ``mean`` of ``count`` scores in [0, 1], with
    x = count * mean successes (fractional x through the incomplete beta function); arrays broadcast.
    Exact (coverage >= level at every rate) for 0/1 scores; never a point, even at 0 % or 100 %."""
    mean, count = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(mean, count))
    x = np.clip(mean, 0.0, 1.0) * count
    alpha = 1 - level
    low = np.where(x <= 0, 0.0, beta_quantile(alpha / 2, np.maximum(x, 1e-12), count - x + 1))
    high = np.where(x >= count, 1.0, beta_quantile(1 - alpha / 2, x + 1, np.maximum(count - x, 1e-12)))
    return low, high


def rerun_interval(correct, level: float = LEVEL):
    """Interval of Avg@n over samples within the fixed problems (``correct``: problems x samples, or a stack
    of such tables with problems and samples as the last two axes)."""
    correct = np.asarray(correct, dtype=float)
    n, m, z = correct.shape[-1], correct.shape[-2], _z(level)
    mean = correct.mean(axis=(-2, -1))
    shrunk = (correct.sum(axis=-1) + z * z / 2) / (n + z * z)
    half = z * np.sqrt((shrunk * (1 - shrunk) / n).sum(axis=-1)) / m
    return np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)


def default_ks(n: int) -> list[int]:
    """Pass@k at 2, 4, 8, ... and n (k = 1 is Avg@n)."""
    return [k for k in (2, 4, 8, 16, 32, 64) if k < n] + ([n] if n > 1 else [])


def describe_intervals(problems: int, samples: int, level: float = LEVEL) -> dict:
    """What the summary's intervals resample, for summary.json and the footnotes of the tables."""
    pct = f"{100 * level:g} %"
    return {
        "level": level,
        "ci95": {"resamples": "problems", "method": "Clopper-Pearson",
                 "description": f"{pct} interval: Clopper-Pearson over the {problems} problems (population "
                                f"uncertainty: another draw of problems)"},
        "rerun_ci95": {"resamples": "samples", "method": "normal, per-problem Agresti-Coull variance",
                       "description": f"{pct} rerun interval of Avg@{samples}: samples within the fixed {problems} "
                                      f"problems (another seed, same problems)"},
    }


def describe_cons(unanswered: str, scorer: str = "") -> str:
    """Cons@n's rule in words (for summary.json and the tables)."""
    _check_rule(unanswered)
    rule = {"vote": "samples without an answer vote as one 'no answer' class (verl's maj@N convention)",
            "abstain": "samples without an answer do not vote"}[unanswered]
    by = f"the {scorer} scorer" if scorer else "the scorer"
    return f"Cons@n: majority over answer classes judged equal by {by}; {rule}; ties: earliest first vote"


def summarize(results: list[ProblemResult], ks: Optional[list[int]] = None, same: Optional[Same] = None,
              unanswered: str = DEFAULT_UNANSWERED, level: float = LEVEL) -> dict:
    """Overall metrics (in %, as the paper reports them) with their intervals (see the module doc), the
    conventions behind them, and per-problem rows."""
    _check_rule(unanswered)
    if not results:
        raise ValueError("no problems to summarize")
    n = min(len(r.correct) for r in results)
    if any(len(r.correct) != n for r in results):
        raise ValueError("every problem needs the same number of samples")
    ks = [k for k in (ks or default_ks(n)) if k != 1]  # Pass@1 is Avg@n
    m = len(results)
    correct = np.array([r.correct for r in results], dtype=float)
    avg = correct.mean(axis=1)
    cons = np.array([r.cons(n, same, unanswered) for r in results])

    def with_ci(name: str, per_problem: np.ndarray) -> dict:
        low, high = clopper_pearson(per_problem.mean(), m, level)
        return {name: 100 * float(per_problem.mean()), f"{name}_ci95": [100 * float(low), 100 * float(high)]}

    summary = {"problems": m, "samples_per_problem": n, "summary_version": SUMMARY_VERSION,
               "cons_unanswered": unanswered, **with_ci(f"avg@{n}", avg)}
    summary[f"avg@{n}_rerun_ci95"] = [100 * float(x) for x in rerun_interval(correct, level)]
    summary.update(with_ci(f"cons@{n}", cons))
    pass_rows = {k: np.array([r.pass_k(k) for r in results]) for k in ks}
    for k in ks:
        summary.update(with_ci(f"pass@{k}", pass_rows[k]))
    summary["intervals"] = describe_intervals(m, n, level)
    summary["cons_rule"] = describe_cons(unanswered)
    summary["per_problem"] = [
        {
            "problem_id": r.problem_id,
            "ground_truth": r.ground_truth,
            "avg": r.avg(),
            "cons": float(cons[i]),
            "majority_answer": majority_answer(r.answers, same, unanswered),
            "answered": sum(bool(a) for a in r.answers),
            **{f"pass@{k}": float(pass_rows[k][i]) for k in ks},
        }
        for i, r in enumerate(results)
    ]
    return summary
