"""How many CPU training runs Snakemake runs side by side (pipeline config ``train.cpu_side_by_side``).

A tiny verl run keeps two cores busy only part of the time: its start-up is a chain of Ray actors that each import
verl in turn, and its rollouts wait on per-response Ray calls (benchmarks/README.md, "The tiny pipeline"). Two runs side
by side on 2 cores therefore finish sooner than two in a row (``benchmarks/bench_parallel_runs.py`` measures it).
Snakemake has no notion of that, so the train rule gives each CPU run ``cores // side_by_side`` threads and lets
the core count do the limiting. The default (null) allows two at once where the cores and the memory are there;
more was never measured, so the default never asks for more: a number does.
"""

from __future__ import annotations

# What the train rule declares for a CPU run (resources.mem_mb): a tiny run's process tree peaked at about 6.6 GB.
CPU_TRAINING_MEM_MB = 8000
# What the evaluate rules declare for a CPU (transformers) evaluation.
CPU_EVALUATION_MEM_MB = 4000
# Kept free beside the trainings: an evaluation job and Snakemake itself.
RESERVED_MEM_MB = CPU_EVALUATION_MEM_MB
AUTO_MAX = 2


def side_by_side(setting, cores: int, memory_mb: int) -> int:
    """CPU trainings at once: ``setting`` (a positive integer, or None for the default), on ``cores`` cores with
    ``memory_mb`` of memory."""
    if setting is None:
        fits = (memory_mb - RESERVED_MEM_MB) // CPU_TRAINING_MEM_MB
        return max(1, min(AUTO_MAX, cores, fits))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"train.cpu_side_by_side: {setting!r} is neither null nor a positive integer")
    return setting


def cpu_training_threads(setting, cores: int, memory_mb: int) -> int:
    """Threads the train rule declares for a CPU run, so that ``side_by_side`` of them fill the cores."""
    return max(1, cores // side_by_side(setting, cores, memory_mb))


def machine_memory_mb() -> int:
    import psutil

    return psutil.virtual_memory().total // (1 << 20)
