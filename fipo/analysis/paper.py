"""The paper's reported numbers (PAPER.md §4, §5), as data: the tables print them beside reproduced values
and Figure 1 draws the reference lines. Values are AIME accuracies in %."""

from __future__ import annotations

from fipo.spec import preset_scale

# The paper's evaluation benchmarks, by the dataset names of this project (fipo.data.DATASETS).
BENCHMARK_NAMES = {"aime2024": "AIME 2024", "aime2025": "AIME 2025"}


def comparable(preset: str, scale: str, benchmark: str) -> bool:
    """Whether a paper value of ``scale`` ("32b", "7b") on ``benchmark`` may share an axis or a column with a
    result of ``preset``: same scale and the same benchmark."""
    return preset_scale(preset) == scale and benchmark in BENCHMARK_NAMES


def reference_label(preset: str, scale: str, benchmark: str) -> str:
    """"paper, AIME 2024, 32B", and when ``preset`` cannot be compared with it, says so."""
    name = f"paper, {BENCHMARK_NAMES.get(benchmark, benchmark)}, {scale.upper()}"
    return name if comparable(preset, scale, benchmark) else f"{name} (not comparable to preset {preset})"

# Figure 1's horizontal reference lines (AIME 2024)
FIG1_REFERENCE_LINES = {"DeepSeek-R1-Zero-Math-32B": 47.0, "o1-mini": 56.0}

# Table 1 (Qwen2.5-32B-Base): experiment -> benchmark -> metric -> value
TABLE1 = {
    "dapo": {"aime2024": {"avg": 50.0, "cons": 60.0, "pass": 80.0}, "aime2025": {"avg": 38.0, "cons": 47.0, "pass": 63.0}},
    "fipo": {"aime2024": {"avg": 56.0, "cons": 73.0, "pass": 83.0}, "aime2025": {"avg": 43.0, "cons": 50.0, "pass": 67.0}},
}

# Tables 4-6 (Qwen2.5-7B-Math, peak Avg@32): (row label, experiment, AIME24, AIME25)
TABLE4 = [("GRPO", "grpo", 22.0, 18.0), ("DAPO", "dapo", 36.0, 18.0), ("FIPO", "fipo", 40.0, 19.0)]
TABLE5 = [
    ("FIPO, f clip [1.0, 1.2]", "fipo-fclip-1.0-1.2", 36.0, 19.0),
    ("FIPO without filtering, [0.8, 1.2]", "fipo-raw", 38.0, 21.0),
    ("FIPO, f clip [0.8, 1.2]", "fipo", 40.0, 19.0),
]
TABLE6 = [
    ("τ = 8", "fipo-tau8", 40.0, 17.0),
    ("τ = 32", "fipo", 40.0, 19.0),
    ("τ = 128", "fipo-tau128", 39.0, 21.0),
    ("τ = 256", "fipo-tau256", 42.0, 16.0),
]
ACCURACY_TABLES = {"table4": TABLE4, "table5": TABLE5, "table6": TABLE6}
