"""The FIPO loss's knobs and their rules, without torch.

The experiment spec checks every FIPO experiment's knobs with these same rules when Snakemake plans (before any
job), and importing torch there cost 3.5 s of every `snakemake -n`; ``fipo.loss`` and ``fipo.future_kl`` import
them from here, so each rule exists once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_CHUNK_SIZE", "SAFETY_CLAMP_RANGE", "SAFETY_MODES", "FIPOParams", "gamma_from_tau"]

# 32 measured fastest on CPU (benchmarks/bench_future_kl.py); any K >= 2 gives the same result.
DEFAULT_CHUNK_SIZE = 32
# The official code's safety clamp for negative-advantage tokens with an excessive ratio.
SAFETY_CLAMP_RANGE = (0.8, 1.0)
SAFETY_MODES = ("reset", "clamp")


def gamma_from_tau(tau: float) -> float:
    """Discount factor for a half-life of ``tau`` tokens: gamma = 2^(-1/tau). ``tau = inf`` gives 1 (Eq. 5)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau (the Future-KL half-life in tokens) must be a number, got {type(tau).__name__} {tau!r}")
    if not tau > 0:  # also rejects NaN
        raise ValueError(f"tau (the Future-KL half-life in tokens) must be > 0, got {tau!r}")
    return 2.0 ** (-1.0 / float(tau))


@dataclass(frozen=True)
class FIPOParams:
    """The knobs of the FIPO loss. Defaults are the paper's 32B run (Table 2)."""

    clip_ratio_low: float = 0.2  # PPO epsilon_low
    clip_ratio_high: float = 0.28  # PPO epsilon_high (DAPO clip-higher)
    clip_ratio_c: float = 10.0  # dual-clip constant c for negative advantages
    tau: float = 32.0  # Future-KL half-life in tokens: gamma = 2^(-1/tau)
    f_clip_low: float = 0.0  # influence weight lower bound is 1 - f_clip_low  (32B: [1.0, 1.2])
    f_clip_high: float = 0.2  # influence weight upper bound is 1 + f_clip_high
    filter_ratio: bool = True  # ratio filter M_k = 1[r_k <= filter_threshold] inside Future-KL
    filter_threshold: float | None = None  # None: the dual-clip constant c (the paper's choice)
    safety_threshold: float = 10.0  # ratio above which negative-advantage tokens get the safety rule
    safety_mode: str = "reset"  # "reset" (paper: f = 1) or "clamp" (official code: f in [0.8, 1])
    drop_multi_dual_clip: bool = False  # official code: drop responses with > 1 dual-clipped token
    chunk_size: int = DEFAULT_CHUNK_SIZE  # block size of the Future-KL scan (speed only, not the result)

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"FIPO loss: {key}={getattr(self, key)!r} is invalid: {why}")

        for key in ("clip_ratio_low", "clip_ratio_high", "f_clip_low", "f_clip_high"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise bad(key, "must be a number >= 0")
        if self.clip_ratio_low >= 1:
            raise bad("clip_ratio_low", "must be < 1 (the lower ratio bound is 1 - clip_ratio_low)")
        if self.f_clip_low > 1:
            raise bad("f_clip_low", "must be <= 1 (the lower influence-weight bound is 1 - f_clip_low)")
        if not self.clip_ratio_c > 1:
            raise bad("clip_ratio_c", "the dual-clip constant must be > 1 (verl asserts the same)")
        try:
            gamma_from_tau(self.tau)
        except (TypeError, ValueError):
            raise bad("tau", "the half-life must be a number > 0 (math.inf means no discount)") from None
        if self.filter_threshold is not None and not self.filter_threshold > 0:
            raise bad("filter_threshold", "must be > 0, or None for the dual-clip constant c")
        if not self.safety_threshold > 0:
            raise bad("safety_threshold", "must be > 0")
        if self.safety_mode not in SAFETY_MODES:
            raise bad("safety_mode", f"allowed values: {', '.join(SAFETY_MODES)}")
        if not (isinstance(self.chunk_size, int) and self.chunk_size >= 2):
            raise bad("chunk_size", "must be an integer >= 2")

    @property
    def effective_filter_threshold(self) -> float:
        return self.clip_ratio_c if self.filter_threshold is None else self.filter_threshold

    @property
    def f_bounds(self) -> tuple[float, float]:
        return 1.0 - self.f_clip_low, 1.0 + self.f_clip_high
