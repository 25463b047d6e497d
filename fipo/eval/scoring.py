"""Answer checking: three scorers, selectable with ``fipo eval --scorer``.

``math_dapo`` (default): verl 0.9.1's ``verl.utils.reward_score.math_dapo.compute_score``, the rule verl's
  ``default_compute_score`` routes ``math_dapo``/``aime*`` data to, i.e. the reward and the validation
  accuracy of *our* training runs (Figure 12's ``val-core`` curves). It reads the last 300 characters of the
  response; takes the last ``(?i)Answer\\s*:\\s*([^\\n]+)`` match, applies Minerva's ``normalize_final_answer``
  to it and to the gold answer, and compares the strings exactly (``025`` is not ``25``). When there is no
  ``Answer:`` line it falls back to the last ``\\boxed{...}`` in the final 100 of those characters, whose
  content is compared with the gold answer *without* normalisation (``\\boxed{25}`` is right, ``\\boxed{25.}``
  is not). No match at all: pred ``[INVALID]`` (no answer here).
``math_dapo_strict``: the same Minerva rule *without* the boxed fallback: the ``verify()`` of the older
  ``math_dapo`` that the official DAPO/FIPO recipe vendored, i.e. the reward of the paper's own runs. A
  response with only ``\\boxed{25}`` has no answer. Built on verl's ``is_correct_minerva`` (same regex,
  same normalisation, same 300-character window).
``math_verify``: Math-Verify (``math-verify`` on PyPI): parses the whole response and the gold answer and
  compares them mathematically (``verify(gold, pred)``, gold first), so ``025``, ``25.0`` and ``25`` agree.
  Not a training reward; a check of how much the string rules cost.

Each scorer also says which extracted answers are *the same answer* (:func:`answer_equivalence`), the classes
Cons@n votes over: the exact extracted string for the two ``math_dapo`` rules (it is what they compare, and
what verl's ``maj@N`` votes on), Math-Verify's ``verify`` between two extracted answers for ``math_verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

SCORERS = ("math_dapo", "math_dapo_strict", "math_verify")
INVALID = "[INVALID]"  # math_dapo's pred when no answer was found
WINDOW = 300  # math_dapo reads the last 300 characters of a response
VERIFY_TIMEOUT_S = 5


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: Optional[str]  # the answer the rule read from the response (None: none found)


def _answer(pred) -> Optional[str]:
    return None if pred in (None, "", INVALID) else str(pred)


def score_math_dapo(response: str, ground_truth: str) -> Score:
    """verl 0.9.1's math_dapo: Minerva ``Answer:`` line, else the last ``\\boxed{}`` (see the module doc)."""
    from verl.utils.reward_score import math_dapo

    result = math_dapo.compute_score(response, ground_truth)
    return Score(bool(result["acc"]), _answer(result.get("pred")))


def score_math_dapo_strict(response: str, ground_truth: str) -> Score:
    """The official recipe's math_dapo: the Minerva ``Answer:`` rule only, no boxed fallback."""
    from verl.utils.reward_score.math_dapo import is_correct_minerva

    correct, pred = is_correct_minerva(response[-WINDOW:], ground_truth)
    return Score(bool(correct), _answer(pred))


def _math_verify():
    try:
        from math_verify import parse, verify
    except ImportError as e:
        raise ImportError("the math_verify scorer needs `pip install math-verify` (extra: fipo-workbench[eval])") from e
    return parse, verify


def score_math_verify(response: str, ground_truth: str, timeout_s: int = VERIFY_TIMEOUT_S) -> Score:
    parse, verify = _math_verify()
    gold = parse(f"${ground_truth}$", parsing_timeout=timeout_s)
    pred = parse(response, parsing_timeout=timeout_s)
    if not pred:
        return Score(False, None)
    return Score(bool(verify(gold, pred, timeout_seconds=timeout_s)), str(pred[-1]))


@lru_cache(maxsize=65536)
def _parsed(answer: str):
    parse, _ = _math_verify()
    return parse(f"${answer}$", parsing_timeout=VERIFY_TIMEOUT_S)


@lru_cache(maxsize=65536)
def same_answer_math_verify(first: str, other: str) -> bool:
    """Math-Verify's judgement that two extracted answers are equal, gold-independent: ``verify(first,
    other)`` with the earlier answer in the gold position (Cons@n compares a class's first answer with each
    later one). Equal strings are equal without parsing; cached, since a problem's n answers repeat."""
    if first == other:
        return True
    _, verify = _math_verify()
    a, b = _parsed(first), _parsed(other)
    return bool(a and b and verify(a, b, timeout_seconds=VERIFY_TIMEOUT_S))


def _same_string(first: str, other: str) -> bool:
    return first == other


def get_scorer(name: str) -> Callable[[str, str], Score]:
    scorers = {"math_dapo": score_math_dapo, "math_dapo_strict": score_math_dapo_strict,
               "math_verify": score_math_verify}
    if name not in scorers:
        raise ValueError(f"unknown scorer {name!r}; allowed: {', '.join(SCORERS)}")
    return scorers[name]


def answer_equivalence(name: str) -> Callable[[str, str], bool]:
    """``same(first, other)``: whether scorer ``name`` judges two extracted answers equal (Cons@n's classes)."""
    get_scorer(name)  # the same error for an unknown name
    return same_answer_math_verify if name == "math_verify" else _same_string
