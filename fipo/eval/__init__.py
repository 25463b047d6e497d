"""Evaluation on AIME 2024 / 2025 (and the tiny preset's test set): sampling, scoring, Avg/Cons/Pass@k."""

BENCHMARKS = ("aime2024", "aime2025", "tiny-test")  # names in fipo.data.DATASETS
