"""The laptop-scale study's claims, measured on runs: one number per run (a method at one seed), compared across
seeds with :mod:`fipo.analysis.across_seeds`.

Each claim of the paper becomes a per-run measure and a comparison:

* *FIPO's responses grow longer than DAPO's*: the growth of the mean response length (tokens): the mean over
  the last ``window`` training steps minus step 1's (the batch the base model sampled, before any update);
  FIPO − DAPO, paired by seed.
* *FIPO ends more accurate*: the validation accuracy (verl's Avg@N, ``val-core/<source>/acc/mean@N``) at the
  last validation; FIPO − DAPO, paired by seed.
* *accuracy rises with length*: within one run, the Pearson correlation, over its validation steps, between
  the validation accuracy and the mean response length of the training batch at that step (step 0's
  validation, before training, is paired with step 1's batch: both come from the base model); FIPO's runs, the
  across-seed mean against 0.
* *the influence weights act as the paper's Eq. 3–7 say*: PAPER.md states no claim about f in words, so the study
  tests the mechanism the equations imply. A step's batch is trained mini-batch by mini-batch, one optimizer
  update each (one PPO epoch); when a mini-batch is scored, the updates of the earlier ones (other responses of the
  same step) have moved the policy away from the one that sampled it. If those updates generalise, they have made
  responses like the positive-advantage ones more likely and like the negative ones less, so the Future-KL, and
  f = clip(exp(Future-KL)), of the first should be higher. Per FIPO run, from its per-token dumps
  (``fipo.dump_every``): the mean f over the tokens of positive-advantage responses minus that over
  negative-advantage ones; the across-seed mean against 0. With no relation between the update's direction and f,
  the two means are equal.

The measures read only a run's tidy metrics frame (:func:`fipo.analysis.runs.load_metrics`). The verdict rules
are :func:`fipo.analysis.across_seeds.verdict`'s: reproduced when the whole across-seed interval lies on the
paper's side of 0, not reproduced when it lies wholly on the other, inconclusive otherwise or with one seed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd

from fipo.analysis import derived
from fipo.analysis.across_seeds import ONE_SEED, PairedComparison, SeedInterval, across_seeds, paired, verdict
from fipo.analysis.errors import AnalysisError, MissingRunError
from fipo.analysis.runs import load_metrics, require, series, validation_metric
from fipo.analysis.tokens import load_token_dumps

LENGTH_WINDOW = 5  # training steps averaged at each end of a run for its length growth


@dataclass(frozen=True)
class RunMeasures:
    length_start: float  # mean response length at step 1 (the base model's batch; tokens)
    length_end: float  # the same over the last `window` steps
    final_accuracy: float  # validation Avg@N at the last validation
    final_step: int  # the step of that validation
    length_accuracy_r: float | None  # Pearson r over validation steps (None: fewer than 3, or a constant)
    # mean f over the dumped tokens of positive- and of negative-advantage responses (None: no token dumps)
    f_positive: float | None = None
    f_negative: float | None = None

    @property
    def influence_gap(self) -> float | None:
        if self.f_positive is None or self.f_negative is None:
            return None
        return self.f_positive - self.f_negative

    @property
    def length_growth(self) -> float:
        return self.length_end - self.length_start

    @property
    def relative_length_growth(self) -> float:
        return self.length_growth / self.length_start


def _pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson r (pandas); None with fewer than 3 points or a constant series, where it says nothing."""
    r = pd.Series(x, dtype=float).corr(pd.Series(y, dtype=float)) if len(x) >= 3 else math.nan
    return None if math.isnan(r) else float(r)


def run_measures(frame: pd.DataFrame, run: str, window: int = LENGTH_WINDOW) -> RunMeasures:
    """The study's measures of one run of a tidy metrics frame; a missing metric raises MissingMetricError, a run
    without a step-1 length or with no more training steps than ``window`` AnalysisError."""
    require(frame, [derived.MEAN_RESPONSE_LENGTH], needed_by="the study", runs=[run])
    lengths = series(frame, run, derived.MEAN_RESPONSE_LENGTH).dropna()
    lengths = lengths[lengths.index >= 1]  # training steps (step 0 is the initial validation)
    if 1 not in lengths.index or len(lengths) <= window:
        raise AnalysisError(f"run {run}: {len(lengths)} training steps with a response length"
                            f"{'' if 1 in lengths.index else ', none at step 1'}; the study needs step 1 and "
                            f"more than the {window}-step window at the end")
    accuracy = series(frame, run, validation_metric(frame, run, "mean")).dropna()
    batch = {s: float(lengths[max(s, 1)]) for s in accuracy.index if max(s, 1) in lengths.index}
    r = _pearson([batch[s] for s in batch], [float(accuracy[s]) for s in batch])
    return RunMeasures(
        length_start=float(lengths[1]),
        length_end=float(lengths.iloc[-window:].mean()),
        final_accuracy=float(accuracy.iloc[-1]),
        final_step=int(accuracy.index[-1]),
        length_accuracy_r=r,
    )


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    measure: str
    effect: SeedInterval  # the across-seed mean of the compared quantity, with its interval
    test: str  # the test and its statistic, or ONE_SEED
    verdict: str
    comparison: PairedComparison | None = None


def compare_claims(measures: Mapping[str, Mapping[int, RunMeasures]], method: str = "fipo",
                   baseline: str = "dapo") -> list[ClaimResult]:
    """The claims of :mod:`fipo.analysis.study` from ``measures`` ({experiment: {seed: RunMeasures}})."""
    for name in (method, baseline):
        if name not in measures:
            raise AnalysisError(f"the study needs runs of {name!r}; it has {', '.join(measures) or 'none'}")
    names = (method, baseline)
    results = []
    for claim, label, pick in (
        (f"{method.upper()}'s responses grow longer than {baseline.upper()}'s",
         "growth of the mean response length (tokens, last steps minus step 1)", lambda m: m.length_growth),
        (f"{method.upper()} ends more accurate than {baseline.upper()}",
         "validation Avg@N at the last validation", lambda m: m.final_accuracy),
    ):
        comparison = paired({s: pick(m) for s, m in measures[method].items()},
                            {s: pick(m) for s, m in measures[baseline].items()}, names=names)
        results.append(ClaimResult(claim, f"{label}: {method} − {baseline}", comparison.interval,
                                   comparison.describe_test(), verdict(comparison), comparison))
    rs = {s: m.length_accuracy_r for s, m in measures[method].items() if m.length_accuracy_r is not None}
    claim = f"accuracy rises with length ({method.upper()})"
    label = "Pearson r of validation accuracy and mean response length over validation steps"
    if not rs:
        results.append(ClaimResult(claim, label, SeedInterval(math.nan, None, None, ()), "no run has 3 validations "
                                   "with a varying accuracy and length", "inconclusive"))
    else:
        results.append(_against_zero(claim, f"{label} (against 0)", rs, method))
    gaps = {s: m.influence_gap for s, m in measures[method].items() if m.influence_gap is not None}
    claim = f"{method.upper()}'s influence weights are higher on positive- than on negative-advantage responses"
    label = "mean f over tokens of responses with A > 0 minus A < 0 (per-token dumps)"
    if not gaps:
        results.append(ClaimResult(claim, label, SeedInterval(math.nan, None, None, ()), f"no {method} run has token "
                                   "dumps of both signs (fipo.dump_every)", "inconclusive"))
    else:
        results.append(_against_zero(claim, f"{label} (against 0)", gaps, method))
    return results


def _against_zero(claim: str, label: str, values: Mapping[int, float], method: str) -> ClaimResult:
    """A per-seed quantity of one method tested against 0 (a one-sample t test across seeds)."""
    comparison = paired(values, {s: 0.0 for s in values}, names=(method, "0"))
    return ClaimResult(claim, label, comparison.interval,
                       comparison.describe_test().replace("paired t test", "one-sample t test"),
                       verdict(comparison), comparison)


def format_markdown(results: list[ClaimResult], seeds: int) -> str:
    """The study's table: claim, measure, effect with its across-seed interval, test, verdict."""
    lines = ["| claim | measure | effect (across-seed mean, 95 % t interval over seeds) | test | verdict |",
             "|---|---|---|---|---|"]
    for r in results:
        effect = "–" if math.isnan(r.effect.mean) else r.effect.describe()
        lines.append(f"| {r.claim} | {r.measure} | {effect} | {r.test} | {r.verdict} |")
    if seeds < 2:
        lines.append(f"\n{ONE_SEED}: every verdict is inconclusive.")
    return "\n".join(lines)


def influence_by_advantage(dumps: pd.DataFrame) -> tuple[float | None, float | None]:
    """(mean f over the tokens of positive-advantage responses, the same for negative ones) of a run's token dumps
    (:func:`fipo.analysis.tokens.load_token_dumps`); None for a sign no dumped response has. A response's advantage
    is one number broadcast to its tokens (GRPO/DAPO): its sign is its first token's."""
    weights = {1: [], -1: []}
    for advantage, f in zip(dumps["advantage"], dumps["influence_weight"]):
        if len(f) and advantage[0] != 0:
            weights[1 if advantage[0] > 0 else -1].append(f)
    means = []
    for sign in (1, -1):
        tokens = [x for f in weights[sign] for x in f]
        means.append(math.fsum(tokens) / len(tokens) if tokens else None)
    return means[0], means[1]


def measure_run_folder(folder, experiment: str, seed: int, window: int = LENGTH_WINDOW) -> RunMeasures:
    """:func:`run_measures` of the run in ``folder`` (its metrics.jsonl), named by the folder in errors, and, for a
    run with per-token dumps (FIPO's), its influence weights by the sign of the advantage."""
    name = Path(folder).name
    frame = load_metrics(Path(folder) / "metrics.jsonl")  # its run: the folder's name
    measures = run_measures(frame, name, window)
    try:
        dumps = load_token_dumps(Path(folder))
    except MissingRunError:  # no per-token dumps (DAPO, GRPO; FIPO with fipo.dump_every 0)
        return measures
    positive, negative = influence_by_advantage(dumps)
    return dataclasses.replace(measures, f_positive=positive, f_negative=negative)


def render_report(measures: Mapping[str, Mapping[int, RunMeasures]], window: int = LENGTH_WINDOW,
                  method: str = "fipo", baseline: str = "dapo", title: str = "Laptop-scale study") -> str:
    """The study report (Markdown): every run's measures, the claims table, and what the numbers mean."""
    seeds = sorted({s for by_seed in measures.values() for s in by_seed})
    results = compare_claims(measures, method, baseline)
    lines = [f"# {title}", "",
             f"{len(measures)} methods ({', '.join(measures)}) x {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
             f"({', '.join(map(str, seeds))}). "
             f"Length growth: mean response length over the last {window} training steps minus step 1's (the base "
             "model's batch).",
             "", "## Runs", "",
             "| method | seed | mean length, step 1 | last steps | growth | final validation Avg@N (step) "
             "| mean f, A > 0 / A < 0 |",
             "|---|---|---|---|---|---|---|"]
    for name, by_seed in measures.items():
        for seed, m in sorted(by_seed.items()):
            weights = " / ".join("–" if f is None else f"{f:.4f}" for f in (m.f_positive, m.f_negative))
            lines.append(f"| {name} | {seed} | {m.length_start:.1f} | {m.length_end:.1f} | "
                         f"{m.length_growth:+.1f} ({m.relative_length_growth:+.0%}) | {m.final_accuracy:.3f} ({m.final_step}) "
                         f"| {weights} |")
    growth = {name: across_seeds({s: m.relative_length_growth for s, m in by_seed.items()}, what=name)
              for name, by_seed in measures.items()}
    lines += ["", "Relative length growth, across-seed mean: " +
              "; ".join(f"{name} {g.describe(2)}" for name, g in growth.items()) + ".",
              f"The task lets length move (a method changes it by 30 % or more): "
              f"{'yes' if max(abs(g.mean) for g in growth.values()) >= 0.30 else 'no'}.",
              "", "## Claims", "", format_markdown(results, len(seeds)), "",
              "Intervals resample training seeds (a Student t interval of the across-seed mean); the tests pair "
              "the methods seed by seed (same data order and sampling seeds). Reproduced: the whole interval lies "
              "on the paper's side of 0; not reproduced: wholly on the other side; otherwise inconclusive. "
              "Validation Avg@N is verl's val-core/<source>/acc/mean@N on the validation set; its own sampling "
              "noise is inside the across-seed spread.",
              "",
              "The influence-weight claim is not one the paper states in words; it is what Eq. 3–7 imply. A step "
              "is trained mini-batch by mini-batch; when one is scored, the updates of the earlier ones (other "
              "responses of the step) have moved the policy, and if they generalise, responses like the "
              "positive-advantage ones have become more likely and like the negative ones less, so their Future-KL, "
              "and f, should be higher on the first. Measured on the per-token dumps (fipo.dump_every: a sample of "
              "the loss calls; a step's first mini-batch is on-policy, where f = 1 for every token) as the mean f "
              "over tokens of A > 0 responses minus A < 0 ones."]
    return "\n".join(lines) + "\n"
