"""Run names: an experiment's run at the spec's seed, at an explicit seed, or as one of the study's runs.

The name is the run's folder under ``<results>/<preset>/runs/`` and its tracker name (``trainer.experiment_name``).
"""

from __future__ import annotations

import re

SEED_MARK = "@seed"  # '@' is not allowed in experiment names (fipo.spec.NAME_PATTERN): no run name is ambiguous
# The study's runs (workflow/rules/study.smk) train longer than the pipeline's own runs at the same seed, so they
# are other runs with other folders: <experiment>@study-seed<N>.
STUDY_MARK = "@study-seed"
RUN_NAME = re.compile(rf"^(?P<experiment>[^@]+)(?:(?P<mark>{re.escape(STUDY_MARK)}|{re.escape(SEED_MARK)})(?P<seed>[0-9]+))?$")


def run_name(experiment: str, seed: int | None = None, study: bool = False) -> str:
    """A run's name: its experiment's at the spec's own seed (``trainer.seed``), ``<experiment>@seed<N>`` at an
    explicit seed N, ``<experiment>@study-seed<N>`` for the study's run at seed N."""
    if seed is None:
        if study:
            raise ValueError(f"{experiment}: a study run needs a seed")
        return experiment
    return f"{experiment}{STUDY_MARK if study else SEED_MARK}{seed}"


def parse_run_name(name: str) -> tuple[str, int | None, bool]:
    """(experiment, seed or None, study) of a :func:`run_name`."""
    match = RUN_NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a run name (<experiment>, <experiment>@seed<N> or <experiment>@study-seed<N>)")
    seed = match.group("seed")
    return match.group("experiment"), None if seed is None else int(seed), match.group("mark") == STUDY_MARK


def run_seeds(seeds=()) -> list[int | None]:
    """The seeds of an experiment's runs: each of ``seeds``, or ``[None]`` (its one run, at the spec's seed) when
    ``seeds`` is empty, as the pipeline's config ``seeds`` and the notebooks' parameter mean it."""
    return list(seeds) or [None]
