"""How many CPU trainings run side by side (fipo/scheduling.py), and the threads the train rule gives each."""

from __future__ import annotations

import pytest

from fipo.scheduling import CPU_TRAINING_MEM_MB, RESERVED_MEM_MB, cpu_training_threads, side_by_side

ENOUGH = 2 * CPU_TRAINING_MEM_MB + RESERVED_MEM_MB  # two runs and an evaluation


@pytest.mark.parametrize("cores, memory_mb, expected", [
    (2, 24_000, 2),  # this project's laptop and CI machine: 2 cores, 24 GiB
    (2, ENOUGH, 2),
    (2, ENOUGH - 1, 1),  # one MB short of two runs and an evaluation
    (1, 64_000, 1),  # one core: nothing to share
    (16, 128_000, 2),  # the default never asks for more than was measured
    (2, 4_000, 1),  # too little memory even for one: still one (the run itself says what it lacks)
])
def test_the_default_takes_two_where_cores_and_memory_allow(cores, memory_mb, expected):
    assert side_by_side(None, cores, memory_mb) == expected


def test_a_number_is_taken_as_given_and_sets_each_runs_share_of_the_cores():
    assert side_by_side(3, 2, 1000) == 3  # the user's call: memory is not second-guessed
    assert cpu_training_threads(1, 2, 24_000) == 2
    assert cpu_training_threads(2, 2, 24_000) == 1
    assert cpu_training_threads(4, 16, 24_000) == 4
    assert cpu_training_threads(3, 2, 24_000) == 1  # never 0 threads
    assert cpu_training_threads(None, 8, 24_000) == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_settings_name_the_key(bad):
    with pytest.raises(ValueError, match=r"train\.cpu_side_by_side: "):
        side_by_side(bad, 2, 24_000)
