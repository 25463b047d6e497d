"""Answer checking. Default: verl's ``math_dapo`` rule, exactly what the reward used in training (paper-faithful):
the last 300 characters, the last ``Answer: ...`` line (else the last ``\\boxed{}``), Minerva normalisation and
an exact string compare — so ``025`` is not ``25``. Option: Math-Verify (``math-verify`` on PyPI), which
parses both sides and compares them mathematically (``verify(gold, pred)``, gold first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

SCORERS = ("math_dapo", "math_verify")
INVALID = "[INVALID]"  # math_dapo's pred when no answer was found


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: Optional[str]  # the answer the rule read from the response (None: none found)


def score_math_dapo(response: str, ground_truth: str) -> Score:
    from verl.utils.reward_score import math_dapo

    result = math_dapo.compute_score(response, ground_truth)
    pred = result.get("pred")
    return Score(bool(result["acc"]), None if pred in (None, "", INVALID) else str(pred))


def score_math_verify(response: str, ground_truth: str, timeout_s: int = 5) -> Score:
    try:
        from math_verify import parse, verify
    except ImportError as e:
        raise ImportError("the math_verify scorer needs `pip install math-verify` (extra: fipo-workbench[eval])") from e
    gold = parse(f"${ground_truth}$", parsing_timeout=timeout_s)
    pred = parse(response, parsing_timeout=timeout_s)
    if not pred:
        return Score(False, None)
    return Score(bool(verify(gold, pred, timeout_seconds=timeout_s)), str(pred[-1]))


def get_scorer(name: str) -> Callable[[str, str], Score]:
    if name == "math_dapo":
        return score_math_dapo
    if name == "math_verify":
        return score_math_verify
    raise ValueError(f"unknown scorer {name!r}; allowed: {', '.join(SCORERS)}")
