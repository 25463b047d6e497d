"""The ``tiny`` preset's model shape and warm start (:class:`TinyModelSpec`), apart from :mod:`fipo.tiny` so that
what needs only these numbers (benchmarks/device_check.py, on a machine with torch alone) imports no pandas, no
transformers: this module imports nothing beyond the standard library. fipo.tiny re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 96
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    # Supervised steps: ~38 s on 2 cores. Shorter warm starts leave the worked form no better than the direct one
    # (360 steps of 32 at a constant 3e-3: direct 0.43 / worked 0.12 on 3 terms; 450 of 64 with the schedule
    # below: 0.32 / 0.31 on 5 terms), and then RL has no reason to reason longer.
    warmup_steps: int = 600
    warmup_batch: int = 64
    warmup_lr: float = 3e-3  # peak: linear over warmup_ramp steps, then a cosine to 0 at the last step
    warmup_ramp: int = 30
    # The chance that a warm-start target is worked rather than direct (1.0: every target worked, the task before
    # the two forms).
    worked_share: float = 0.5
    seed: int = 0
