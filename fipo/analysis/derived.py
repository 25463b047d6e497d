"""The series the paper plots that verl does not log under that name, computed from raw values.

verl's names for the rest (all per training step):
* policy KL (Figures 5a, 7a): ``actor/ppo_kl`` = mean over response tokens of old_logp − logp;
* dual-clip (low-clip) fraction (Figures 2a, 9b): ``actor/pg_clipfrac_lower``;
* length-weighted mean advantage Ā (Figures 4c, 6a): ``critic/advantages/mean``, which verl computes as the
  mean over all response tokens of the batch, i.e. exactly Σ_i Σ_t A_{i,t} / Σ_i L_i
  (:func:`length_weighted_mean_advantage` is the same quantity from raw per-token values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

POLICY_CLIP_FRACTION = "actor/pg_clipfrac"
LENGTH_WEIGHTED_ADVANTAGE = "critic/advantages/mean"
ENTROPY = "actor/entropy"
GRAD_NORM = "actor/grad_norm"
TRAINING_REWARD = "critic/score/mean"
MEAN_RESPONSE_LENGTH = "response_length/mean"
MIN_RESPONSE_LENGTH = "response_length/min"
INFLUENCE_WEIGHT_MEAN = "actor/influence_weights_mean"
EVICTED_GROUPS = "training/filter_groups/evicted_samples"  # verl counts groups (prompt uids), not responses
SURPLUS_GROUPS = "training/filter_groups/discarded_surplus_samples"

LENGTH_STATS = ("min", "q25", "mean", "median", "q75", "max")


def length_weighted_mean_advantage(advantages: Sequence[Sequence[float]]) -> float:
    """Ā = Σ_i Σ_t A_{i,t} / Σ_i L_i over responses i with L_i tokens each (one list of per-token values each)."""
    total = sum(float(np.sum(a, dtype=np.float64)) for a in advantages)
    tokens = sum(len(a) for a in advantages)
    if tokens == 0:
        raise ValueError("length-weighted advantage of a batch without response tokens")
    return total / tokens


def length_quantiles(lengths_by_step: Mapping[int, Sequence[int]]) -> pd.DataFrame:
    """Per step: min, Q25, mean, median, Q75 and max of the response lengths (linear-interpolated quantiles)."""
    rows = []
    for step in sorted(lengths_by_step):
        x = np.asarray(lengths_by_step[step], dtype=np.float64)
        if x.size == 0:
            raise ValueError(f"step {step}: no responses")
        q25, median, q75 = np.quantile(x, [0.25, 0.5, 0.75])
        rows.append((step, x.min(), q25, x.mean(), median, q75, x.max(), x.size))
    return pd.DataFrame(rows, columns=["step", *LENGTH_STATS, "responses"])


def generation_rounds(evicted_groups, surplus_groups, train_batch_size: int, gen_batch_size: int):
    """Generation batches per training step under DAPO's dynamic sampling: every prompt generated for a step
    either trains (``train_batch_size``), is evicted for a constant reward (``evicted``) or is surplus of the
    last batch (``surplus``); divided by the prompts per generation batch. 1.0 means no resampling."""
    evicted = np.nan_to_num(np.asarray(evicted_groups, dtype=np.float64))
    surplus = np.nan_to_num(np.asarray(surplus_groups, dtype=np.float64))
    if train_batch_size <= 0 or gen_batch_size <= 0:
        raise ValueError("batch sizes must be positive")
    return (train_batch_size + evicted + surplus) / gen_batch_size


@dataclass(frozen=True)
class PhaseFit:
    phase: int
    start: float  # first x (response length) of the phase
    end: float
    slope: float  # accuracy points per token
    intercept: float
    points: int


def phase_slopes(x: Sequence[float], y: Sequence[float], phases: int = 2) -> list[PhaseFit]:
    """Figure 3(f): split the (mean length, accuracy) trajectory, in step order, into ``phases`` consecutive
    parts of equal size and fit y = w·x + b by least squares in each."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-D and of equal length")
    keep = np.isfinite(x) & np.isfinite(y)  # a NaN/inf metric is a gap in the trajectory, not a point
    x, y = x[keep], y[keep]
    if phases < 1 or x.size < 2 * phases:
        raise ValueError(f"{phases} phase(s) need at least {2 * phases} points, got {x.size}")
    fits = []
    for number, idx in enumerate(np.array_split(np.arange(x.size), phases), 1):
        xs, ys = x[idx], y[idx]
        if np.ptp(xs) == 0:
            slope, intercept = float("nan"), float(ys.mean())
        else:
            slope, intercept = np.polyfit(xs, ys, 1)
        fits.append(PhaseFit(number, float(xs[0]), float(xs[-1]), float(slope), float(intercept), int(xs.size)))
    return fits


def at_validation_steps(values: pd.Series, validation_steps: Sequence[int]) -> pd.Series:
    """A training-step series read at each validation step: the first training step at or after it (the
    step-0 validation runs before any training step logs its metrics)."""
    values = values.dropna().sort_index()  # non-finite values are gaps (fipo.analysis.runs keeps them as NaN)
    out = {}
    for step in validation_steps:
        later = values[values.index >= step]
        if not later.empty:
            out[step] = float(later.iloc[0])
    return pd.Series(out, dtype=float)
