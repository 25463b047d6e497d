"""Device check of the Future-KL and the FIPO loss: correctness, bandwidth, loss cost, and the transformers
evaluation backend, in one script that writes one JSON, sized for under 8 minutes on one GPU.

On the device machine, from the repository root (nothing installed there: the script puts this checkout on
sys.path itself; python3 is the interpreter that holds torch there; sized for well under 8 minutes, though not
yet run on a GPU). It needs torch, and nothing else up to step (c): Triton where it imports (the kernels' checks
and timings; skipped without it), numpy where it imports (fipo.loss's host statistics; torch's own otherwise,
the same numbers, slower), and for step (d) alone transformers with what fipo.tiny builds the tiny model with
(tokenizers, pandas; the step is skipped without transformers). tests/test_device_check.py runs it without numpy,
pandas and transformers.

    python3 benchmarks/device_check.py --out $OUT/device_check.json

On a CPU, small shapes, in seconds (what CI runs: tests/test_device_check.py):

    python benchmarks/device_check.py --cpu --small --out /tmp/device_check.json

Steps, each recorded in the JSON even when an earlier one failed:

(a) Correctness against float64 references (fipo.future_kl.future_kl_reference and _listing1,
    fipo.references.paper_loss_float64), on fresh random inputs (the seed is in the JSON; --seed replays it),
    for float32 and bfloat16 inputs: future_kl against the dense O(L^2) oracle and, at the production shape,
    float64 Listing 1; the FIPO loss (Future-KL, influence weight f, per-token loss, token-mean value, and the
    gradient w.r.t. log_prob) against PAPER.md Eq. 3-8 in float64; edge cases (empty mask, length 1, and
    length 0 for future_kl), for each backend of future_kl: the torch path, and the Triton kernels
    (fipo/future_kl_triton.py; on a CPU only under TRITON_INTERPRET=1, otherwise recorded as skipped). The loss
    runs the backend production would pick here (the JSON's future_kl_auto_backend). Tolerances are worst-case bounds derived from the input dtype's rounding,
    relative to the magnitude of what is summed (see loss_tolerances); each error is reported as max |err|, as
    max |err| / tolerance (pass: <= 1) and as ||err|| / ||ref||. Ratios within rounding of a clip, filter or
    safety threshold are moved off it first (the JSON counts them), since there the result is legitimately
    either side.
(b) Future-KL (tau = 32) at B in {8, 64}, L = 20480, float32 and bfloat16 input, bool mask, each backend
    (Triton on CUDA only), timed against a
    device-to-device copy of the same number of bytes in the same run. Bytes counted for the op: read delta
    (B*L*itemsize) and mask (B*L*1), write the float32 result (B*L*4); the copy moves half of that from one
    buffer to another (read + written = the same total). CUDA events, warm-up, median of repeats; the L2 cache
    is flushed before every repeat, and a spin kernel keeps the GPU busy while the call is queued, so the
    events time the GPU's work rather than Python's launch rate (the JSON says in how many repeats the whole
    call was queued before the GPU reached it). Also recorded: the bytes the torch implementation's own aten
    ops read and write (counted by a dispatch mode; they bound the ratio it can reach), a CUDA-graph replay of
    the same call (no launch gaps), an isolated call's time, and a large copy (the card's copy bandwidth).
    The target: B = 64, L = 20480, float32 at >= 50 % of the copy's bandwidth, reported met or not met
    for the backend production runs on this device, with every backend's ratio beside it.
(c) The FIPO loss forward + backward (token-mean) against verl's vanilla PPO loss (clip, dual clip,
    token-mean) restated in plain torch (fipo.references.vanilla_ppo_loss; verl is not needed), same shapes,
    float32. Both read metrics to the host inside the call, so these are per-call times (events around the
    call, GPU idle before it), host syncs included.
(d) The transformers evaluation backend (fipo.eval.sampling.HFSampler) on the tiny model, built here by
    fipo.tiny (tokenizer, model, warm start: nothing downloaded), on this device: n well-formed samples per
    prompt, the same samples again for the same seeds, and next-token logits equal to the CPU's.

On a CPU the same code runs with the host clock instead of CUDA events; what only CUDA has (spin-ahead,
graph replay, the bandwidth target) is recorded as "not run: no CUDA". Exit status: 0 when no check failed or
errored (the bandwidth target is reported, not enforced), 1 when one did, 2 when CUDA is missing without --cpu.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # this checkout's fipo, also where another copy is installed

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import fipo  # noqa: E402
from fipo.future_kl import future_kl, future_kl_listing1, future_kl_reference, resolve_backend  # noqa: E402
import fipo.loss as fipo_loss_module  # noqa: E402
from fipo.loss import FIPOParams, fipo_policy_loss  # noqa: E402
from fipo.references import future_kl_magnitude, paper_loss_float64, token_mean, vanilla_ppo_loss  # noqa: E402
from fipo.tiny_spec import TinyModelSpec  # noqa: E402  (standard library only, unlike fipo.tiny: pandas)

NO_CUDA = "not run: no CUDA"
TAU = 32.0
TARGET_RATIO = 0.5
CHECK_NAMES = (
    "future_kl.float32",
    "future_kl.bfloat16",
    "future_kl.edge_cases",
    "future_kl_triton.float32",
    "future_kl_triton.bfloat16",
    "future_kl_triton.edge_cases",
    "fipo_loss.float32",
    "fipo_loss.bfloat16",
    "fipo_loss.edge_cases",
    "hf_backend.tiny",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The loss is checked with the paper's 32B settings and two others that take the other branches: the official
# code's safety clamp with a low threshold and c = 3, and no ratio filter with a long half-life.
LOSS_PARAMS = {
    "paper-32B": FIPOParams(),
    "7B-clamp": FIPOParams(
        tau=8.0, f_clip_low=0.2, f_clip_high=0.2, clip_ratio_c=3.0, safety_threshold=4.0, safety_mode="clamp"
    ),
    "no-filter": FIPOParams(tau=256.0, filter_ratio=False, clip_ratio_low=0.1, clip_ratio_high=0.4),
}


@dataclass(frozen=True)
class Plan:
    name: str
    oracle_cases: tuple[tuple[int, int], ...]  # (B, L) checked against the dense float64 oracle
    long_case: tuple[int, int]  # checked against float64 Listing 1 (no L x L matrix)
    timing_shapes: tuple[tuple[int, int], ...]
    target_shape: tuple[int, int]
    repeats: int
    loss_repeats: int
    warmup: int
    large_copy_bytes: int
    tiny_warmup_steps: int
    tiny_problems: int
    tiny_samples: int
    tiny_max_tokens: int


FULL = Plan(
    name="full",
    oracle_cases=((4, 1), (4, 33), (3, 1025), (2, 4099)),
    long_case=(64, 20480),
    timing_shapes=((8, 20480), (64, 20480)),
    target_shape=(64, 20480),
    repeats=100,
    loss_repeats=30,
    warmup=10,
    large_copy_bytes=2 * 2**30,
    tiny_warmup_steps=TinyModelSpec.warmup_steps,  # the tiny preset's own
    tiny_problems=8,
    tiny_samples=4,
    tiny_max_tokens=48,
)
SMALL = Plan(
    name="small",
    oracle_cases=((3, 1), (3, 33), (3, 300)),
    long_case=(4, 2048),
    timing_shapes=((2, 2048), (4, 2048)),
    target_shape=FULL.target_shape,
    repeats=7,
    loss_repeats=5,
    warmup=3,
    large_copy_bytes=64 * 2**20,
    tiny_warmup_steps=20,
    tiny_problems=2,
    tiny_samples=2,
    tiny_max_tokens=24,
)


# ----------------------------------------------------------------------------------------------- helpers


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1 to the next float: the relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_stats(got: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor) -> dict:
    """max |got - ref|, max |got - ref| / tol (0 where both agree exactly), ||err|| / ||ref||, finiteness."""
    got, ref = got.detach().double(), ref.detach().double()
    if got.shape != ref.shape:
        return {"n": ref.numel(), "finite": False, "max_abs_err": math.inf, "max_err_over_tol": math.inf,
                "rel_l2_err": math.inf, "shape_mismatch": [list(got.shape), list(ref.shape)]}
    if ref.numel() == 0:
        return {"n": 0, "finite": True, "max_abs_err": 0.0, "max_err_over_tol": 0.0, "rel_l2_err": 0.0}
    err = (got - ref).abs()
    over = torch.where(err == 0, torch.zeros_like(err), err / tol.double().expand_as(err))
    ref_norm = ref.norm().item()
    finite = bool(torch.isfinite(got).all())
    return {
        "n": ref.numel(),
        "finite": finite,
        "max_abs_err": err.max().item() if finite else math.inf,
        "max_err_over_tol": over.max().item() if finite else math.inf,
        "rel_l2_err": (err.norm().item() / ref_norm if ref_norm > 0 else err.norm().item()) if finite else math.inf,
    }


def stats_pass(stats: dict) -> bool:
    return stats["finite"] and stats["max_err_over_tol"] <= 1.0  # NaN compares False: fails


def summarize_cases(cases: list[dict], keys: tuple[str, ...]) -> dict:
    """A check's status and its worst errors over its cases."""
    worst = {}
    for key in keys:
        found = [c[key] for c in cases if key in c]
        if found:
            worst[key] = {
                "max_abs_err": max(s["max_abs_err"] for s in found),
                "max_err_over_tol": max(s["max_err_over_tol"] for s in found),
                "rel_l2_err": max(s["rel_l2_err"] for s in found),
            }
    passed = bool(cases) and all(c["pass"] for c in cases)
    return {
        "status": "pass" if passed else "fail",
        "cases_run": len(cases),
        "cases_failed": sum(not c["pass"] for c in cases),
        "max_abs_err": max((w["max_abs_err"] for w in worst.values()), default=0.0),
        "max_err_over_tol": max((w["max_err_over_tol"] for w in worst.values()), default=0.0),
        "worst": worst,
        "cases": cases,
    }


def make_mask(kind: str, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """verl's layout (response then padding), random holes, or some responses without tokens."""
    lengths = torch.randint(1, length + 1, (batch, 1), generator=gen)
    mask = torch.arange(length)[None, :] < lengths
    if kind == "holes":
        mask &= torch.rand(batch, length, generator=gen) < 0.9
    elif kind == "some_rows_empty":
        mask[::2] = False
    return mask


# ------------------------------------------------------------------------------------ (a) correctness


def future_kl_case(delta: torch.Tensor, mask: torch.Tensor, tau: float, fkl64, label: dict,
                   backend: str = "torch") -> dict:
    """future_kl on ``delta`` (its own dtype) against ``fkl64`` on the same values in float64."""
    got = future_kl(delta, mask, tau, backend=backend)
    x64 = delta.double()
    ref = fkl64(x64, mask, tau)
    # Float32 accumulation: error within 1e-5 of the sum of |terms| (as tests/test_future_kl.py allows).
    tol = 1e-5 * future_kl_magnitude(x64, mask, tau, fkl64) + 1e-30
    stats = error_stats(got, ref, tol)
    ok = got.dtype == torch.float32 and stats_pass(stats)
    return {**label, "out_dtype": str(got.dtype).removeprefix("torch."), "future_kl": stats, "pass": ok}


def triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton backend cannot be checked here, or None. On a CPU it runs under Triton's interpreter when
    TRITON_INTERPRET=1 is set (slow: checks only, no timing)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "skipped: no CUDA (TRITON_INTERPRET=1 runs the Triton kernel on the CPU)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "skipped: triton missing"
    return None


def check_future_kl(dtype: torch.dtype, plan: Plan, device: torch.device, gen: torch.Generator,
                    backend: str = "torch") -> dict:
    cases = []
    kinds = ("holes", "prefix", "some_rows_empty")
    for batch, length in plan.oracle_cases:
        for i, tau in enumerate((0.5, TAU, math.inf)):
            kind = kinds[i % len(kinds)]
            delta = (torch.randn(batch, length, generator=gen) * 0.5).to(dtype).to(device)
            mask = make_mask(kind, batch, length, gen).to(device)
            label = {"B": batch, "L": length, "tau": tau, "mask": kind, "reference": "dense O(L^2) oracle"}
            cases.append(future_kl_case(delta, mask, tau, future_kl_reference, label, backend))
    batch, length = plan.long_case
    delta = (torch.randn(batch, length, generator=gen) * 0.5).to(dtype).to(device)
    mask = make_mask("holes", batch, length, gen).to(device)
    label = {"B": batch, "L": length, "tau": TAU, "mask": "holes", "reference": "float64 Listing 1"}
    cases.append(future_kl_case(delta, mask, TAU, future_kl_listing1, label, backend))
    return {"backend": backend, **summarize_cases(cases, ("future_kl",))}


def check_future_kl_edges(device: torch.device, gen: torch.Generator, backend: str = "torch") -> dict:
    cases = []
    for name, dtype in DTYPES.items():
        # empty mask over garbage (NaN, inf) in the padding: exactly zero, nothing leaks
        delta = torch.randn(3, 50, generator=gen).to(dtype)
        delta[:, 7], delta[:, 20] = float("nan"), float("inf")
        out = future_kl(delta.to(device), torch.zeros(3, 50, dtype=torch.bool, device=device), TAU, backend=backend)
        ok = out.shape == (3, 50) and bool(torch.isfinite(out).all()) and bool((out == 0).all())
        cases.append({"case": "empty mask", "dtype": name, "pass": ok})
        # length 1: the masked input itself, exactly
        delta = torch.randn(4, 1, generator=gen).to(dtype).to(device)
        mask = torch.tensor([[True], [False], [True], [False]], device=device)
        out = future_kl(delta, mask, TAU, backend=backend)
        expected = torch.where(mask, delta.float(), torch.zeros((), device=device))
        cases.append({"case": "length 1", "dtype": name, "pass": bool(torch.equal(out, expected))})
        # length 0 and batch 0: the shape comes back
        shapes = [(3, 0), (0, 17)]
        ok = all(
            future_kl(torch.zeros(s, dtype=dtype, device=device), torch.zeros(s, dtype=torch.bool, device=device),
                      TAU, backend=backend).shape == s
            for s in shapes
        )
        cases.append({"case": "length 0, batch 0", "dtype": name, "pass": ok})
    return {"backend": backend, "status": "pass" if all(c["pass"] for c in cases) else "fail",
            "cases_run": len(cases), "cases_failed": sum(not c["pass"] for c in cases), "cases": cases}


def thresholds(p: FIPOParams) -> list[float]:
    """Ratios at which the loss changes branch: clip bounds, dual clip c, ratio filter, safety rule."""
    out = [1 - p.clip_ratio_low, 1 + p.clip_ratio_high, p.clip_ratio_c, p.safety_threshold]
    if p.filter_ratio:
        out.append(p.effective_filter_threshold)
    return out


def loss_inputs(batch: int, length: int, dtype: torch.dtype, p: FIPOParams, gen: torch.Generator):
    """old_log_prob, log_prob, advantages (GRPO: one per response, some zero), mask, in ``dtype``, and the
    number of tokens moved off a threshold. Log-ratios are mostly small, 2 % of them spikes up to e^3.5 so
    that the dual clip, the ratio filter and the safety rule all act."""
    f64 = torch.float64
    old = (-(torch.rand(batch, length, generator=gen, dtype=f64) * 4 + 0.05)).to(dtype)
    shift = torch.randn(batch, length, generator=gen, dtype=f64) * 0.3
    spikes = torch.rand(batch, length, generator=gen) < 0.02
    shift = torch.where(spikes, torch.empty_like(shift).uniform_(1.0, 3.5, generator=gen), shift)
    adv = torch.randn(batch, 1, generator=gen, dtype=f64).round(decimals=1).expand(batch, length).to(dtype)
    mask = make_mask("prefix", batch, length, gen)
    if batch >= 3:
        mask[1] = False  # a response without tokens
    # A ratio within rounding of a threshold may land on either side of it in ``dtype``: then the loss
    # legitimately differs from float64's by a whole branch. Move those tokens off every threshold by more
    # than the rounding error of the ratio (log-ratio rounding plus exp's): 2 u (|delta| + 3).
    logs = torch.tensor([math.log(t) for t in thresholds(p)], dtype=f64)
    u = unit_roundoff(dtype)
    moved = torch.zeros(batch, length, dtype=torch.bool)
    for _ in range(20):
        log_prob = (old.double() + shift).to(dtype)
        exact = log_prob.double() - old.double()
        margin = 2 * u * (exact.abs() + 3) + 1e-6
        near = ((exact[..., None] - logs).abs() < margin[..., None]).any(-1)
        if not near.any():
            return old, log_prob, adv, mask, int(moved.sum())
        moved |= near
        shift = torch.where(near, shift + 4 * margin, shift)
    raise RuntimeError("could not move the log-ratios off the loss's thresholds")


def loss_tolerances(old, log_prob, mask, p: FIPOParams, dtype: torch.dtype, fkl64, ref_f, ref_mat, ref_grad):
    """Worst-case error bounds of fipo_policy_loss with ``dtype`` inputs against the float64 reference.

    u: the unit roundoff of ``dtype``. The log-ratio is rounded once (relative u); Future-KL sums it in float32:
    |dFKL| <= (u + 1e-5) * sum_k gamma^(k-t) M_k |delta_k|. exp and clip are monotone and the bounds >= 0, so
    f's relative error is at most expm1(|dFKL|) (+ float32's exp). The ratio's relative error is
    u |delta| + 2u. The per-token loss -A f g(r) adds at most three roundings (f to ``dtype``, A f, times g(r)):
    relative tolerance rel_f + rel_r + 4u. The token-mean (N and 1/N rounded, the sum's result rounded, float32
    accumulation of N terms) and the gradient -A f r / N where the clip lets it through (1/N, A f, times r)
    add at most six: rel_f + rel_r + 8u per token.
    """
    u = unit_roundoff(dtype)
    delta = (log_prob.double() - old.double()).clamp(-20, 20)
    ratio = delta.exp()
    m = mask & (ratio <= p.effective_filter_threshold) if p.filter_ratio else mask
    tol_fkl = (u + 1e-5) * future_kl_magnitude(delta, m, p.tau, fkl64) + 1e-7
    rel_f = torch.expm1(tol_fkl) + 2**-22
    rel_r = u * delta.abs() + 2 * u
    ref_abs = ref_mat.detach().abs()
    tol_mat = ref_abs * (rel_f + rel_r + 4 * u) + 1e-30
    tol_grad = ref_grad.abs() * (rel_f + rel_r + 8 * u) + 1e-30
    maskf = mask.double()
    n = maskf.sum().clamp(min=1)
    tol_value = (ref_abs * (rel_f + rel_r + 8 * u + 1e-5) * maskf).sum() / n + 1e-30
    return {"future_kl": tol_fkl, "f": ref_f * rel_f, "loss_mat": tol_mat, "grad": tol_grad, "value": tol_value}


def fipo_loss_case(batch, length, dtype, name, p, fkl64, device, gen) -> dict:
    old, log_prob, adv, mask, moved = loss_inputs(batch, length, dtype, p, gen)
    old, log_prob, adv, mask = (t.to(device) for t in (old, log_prob, adv, mask))
    lp = log_prob.clone().requires_grad_()
    out = fipo_policy_loss(old, lp, adv, mask, p)
    value = token_mean(out.loss_mat, out.loss_mask)
    value.backward()

    lp64 = log_prob.double().requires_grad_()
    ref_mat, ref_f, ref_fkl = paper_loss_float64(old, lp64, adv, mask, p, fkl_fn=fkl64)
    ref_value = token_mean(ref_mat, mask)
    ref_value.backward()
    tol = loss_tolerances(old, log_prob, mask, p, dtype, fkl64, ref_f, ref_mat, lp64.grad)

    on = mask
    case = {
        "B": batch, "L": length, "params": name, "tokens": int(mask.sum()), "moved_off_thresholds": moved,
        "future_kl": error_stats(out.future_kl[on], ref_fkl[on], tol["future_kl"][on]),
        "f": error_stats(out.influence_weights[on], ref_f[on], tol["f"][on]),
        "loss_mat": error_stats(out.loss_mat[on], ref_mat[on], tol["loss_mat"][on]),
        "value": error_stats(value, ref_value, tol["value"]),
        "grad": error_stats(lp.grad, lp64.grad, tol["grad"]),
        "reference": "dense O(L^2) oracle" if fkl64 is future_kl_reference else "float64 Listing 1",
    }
    quantities = ("future_kl", "f", "loss_mat", "value", "grad")
    case["pass"] = all(stats_pass(case[q]) for q in quantities) and bool(torch.equal(out.loss_mask, mask))
    return case


def check_fipo_loss(dtype: torch.dtype, plan: Plan, device: torch.device, gen: torch.Generator) -> dict:
    cases = []
    for batch, length in plan.oracle_cases:
        for name, p in LOSS_PARAMS.items():
            cases.append(fipo_loss_case(batch, length, dtype, name, p, future_kl_reference, device, gen))
    batch, length = plan.long_case
    cases.append(fipo_loss_case(batch, length, dtype, "paper-32B", LOSS_PARAMS["paper-32B"], future_kl_listing1,
                                device, gen))
    return summarize_cases(cases, ("future_kl", "f", "loss_mat", "value", "grad"))


def check_fipo_loss_edges(device: torch.device, gen: torch.Generator) -> dict:
    cases = []
    for name, dtype in DTYPES.items():
        # empty mask: zero loss, zero gradient, finite metrics, neutral influence weights
        old = (-torch.rand(3, 40, generator=gen) * 3).to(dtype).to(device)
        lp = (old.float() + torch.randn(3, 40, generator=gen).to(device)).to(dtype).requires_grad_()
        adv = torch.randn(3, 40, generator=gen).to(dtype).to(device)
        out = fipo_policy_loss(old, lp, adv, torch.zeros(3, 40, dtype=torch.bool, device=device))
        value = token_mean(out.loss_mat, out.loss_mask)
        value.backward()
        ok = (value.item() == 0.0 and bool((lp.grad == 0).all())
              and all(math.isfinite(v) for v in out.metrics.values())
              and out.metrics["actor/influence_weights_min"] == out.metrics["actor/influence_weights_max"] == 1.0)
        cases.append({"case": "empty mask", "dtype": name, "pass": ok})
        # length 1, by hand: r = 1.1 < 1.28, A = 1: FutureKL = log 1.1, f = 1.1, loss = -1.21, d/dlogp = -1.21
        old = torch.full((1, 1), -2.0, dtype=dtype, device=device)
        lp = (old.double() + math.log(1.1)).to(dtype).requires_grad_()
        r = math.exp(lp.double().item() - old.double().item())  # the ratio of the rounded inputs
        out = fipo_policy_loss(old, lp, torch.ones(1, 1, dtype=dtype, device=device),
                               torch.ones(1, 1, dtype=torch.bool, device=device))
        value = token_mean(out.loss_mat, out.loss_mask)
        value.backward()
        rel = 8 * unit_roundoff(dtype) + 1e-6
        got = {"future_kl": out.future_kl.item(), "f": out.influence_weights.item(), "loss": value.item(),
               "grad": lp.grad.item()}
        want = {"future_kl": math.log(r), "f": r, "loss": -r * r, "grad": -r * r}
        errors = {k: abs(got[k] - want[k]) for k in got}
        ok = all(errors[k] <= rel * abs(want[k]) for k in got)
        cases.append({"case": "length 1", "dtype": name, "got": got, "expected": want, "pass": ok})
    return {"status": "pass" if all(c["pass"] for c in cases) else "fail", "cases_run": len(cases),
            "cases_failed": sum(not c["pass"] for c in cases), "cases": cases}


# ---------------------------------------------------------------------------------------- (b) timing


_SPIN_RATE: dict[str, float] = {}


def spin_cycles(device: torch.device, seconds: float) -> int:
    """Cycles of torch.cuda._sleep that keep ``device`` busy for about ``seconds`` (rate measured once)."""
    key = str(device)
    if key not in _SPIN_RATE:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(2):  # the second measurement, after the first has loaded the kernel
            start.record()
            torch.cuda._sleep(1_000_000)
            end.record()
            end.synchronize()
        _SPIN_RATE[key] = 1_000_000 / (start.elapsed_time(end) / 1e3)
    return max(1, int(_SPIN_RATE[key] * seconds))


def time_call(fn, device: torch.device, *, repeats: int, warmup: int, flush: torch.Tensor | None = None,
              queue_ahead: bool = True) -> dict:
    """Median seconds per call of ``fn`` on ``device``.

    CUDA: events around the call; before each repeat ``flush`` is zeroed (evicting the call's data from the
    caches) and, with ``queue_ahead``, a spin kernel keeps the GPU busy for several times the host's enqueue
    time of the call, so that the events measure the GPU's work and not launch gaps. ``queued_ahead`` counts the
    repeats in which the GPU had not yet reached the call when the host had queued all of it. Without
    ``queue_ahead`` (calls that read results on the host) the GPU is idle when the call starts. CPU: the host
    clock around the call, the same flush.
    """
    cuda = device.type == "cuda"
    enqueue = []
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        fn()
        enqueue.append(time.perf_counter() - t0)
        synchronize(device)
    host_s = statistics.median(enqueue[1:] or enqueue)  # the first call may include lazy initialisation
    cycles = spin_cycles(device, min(0.05, 3 * host_s + 1e-4)) if cuda and queue_ahead else 0
    samples, ahead = [], 0
    for _ in range(repeats):
        if flush is not None:
            flush.zero_()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if cycles:
                torch.cuda._sleep(cycles)
            start.record()
            fn()
            end.record()
            ahead += not start.query()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    result = {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": repeats,
        "warmup": warmup,
        "host_enqueue_s": host_s,
        "clock": "CUDA events" if cuda else "host perf_counter",
    }
    if not cuda:
        result["queued_ahead"] = NO_CUDA
    elif queue_ahead:
        result["queued_ahead"] = f"{ahead}/{repeats}"
    else:
        result["queued_ahead"] = "off: GPU idle before each call"
    return result


class TrafficCounter(TorchDispatchMode):
    """Counts the aten ops a call runs and the bytes they read and write (each input and output tensor once,
    by its number of elements; ops whose outputs alias an input, i.e. views, move nothing). An estimate of the
    implementation's memory traffic: a kernel may read more (re-reads) or less (caching) than this."""

    def __init__(self):
        super().__init__()
        self.ops, self.bytes, self.names = 0, 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        storages = {t.untyped_storage().data_ptr() for t in ins}
        if outs and all(t.untyped_storage().data_ptr() in storages for t in outs):
            return out  # a view of an input
        self.ops += 1
        self.names[str(func.overloadpacket.__name__)] += 1
        self.bytes += sum(t.numel() * t.element_size() for t in ins + outs if t.dim() > 0)
        return out


def count_traffic(fn) -> dict:
    with TrafficCounter() as counter:
        fn()
    return {"aten_ops": counter.ops, "bytes": counter.bytes, "ops": dict(counter.names)}


def time_cuda_graph(fn, device: torch.device, *, repeats: int, warmup: int, flush: torch.Tensor) -> dict:
    """The same call captured in a CUDA graph and replayed (one launch: no gaps between its kernels)."""
    if device.type != "cuda":
        return {"status": NO_CUDA}
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                eager = fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn()
        graph.replay()
        synchronize(device)
        diff = (static_out - eager).abs().max().item() if eager.numel() else 0.0
        same = diff <= 1e-5 * (eager.abs().max().item() if eager.numel() else 0.0) + 1e-6
        timing = time_call(graph.replay, device, repeats=repeats, warmup=warmup, flush=flush)
        status = "ran" if same else f"ran, but the replay differs from the eager call by up to {diff:.3g}"
        return {"status": status, "replay_max_abs_diff": diff, **timing}
    except Exception as e:  # capture can fail for reasons of the torch build; report, do not stop the check
        return {"status": f"error: {type(e).__name__}: {e}"}


def flush_buffer(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
        nbytes = max(4 * l2, 256 * 2**20)
    else:
        nbytes = 64 * 2**20
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def copy_call(nbytes: int, device: torch.device):
    """A device-to-device copy that reads nbytes / 2 and writes nbytes / 2 (random bytes, not zeros: drawn on
    the device, since a copy's speed does not depend on which bytes they are)."""
    half = nbytes // 2
    src = torch.empty(half, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src), 2 * half


def timed_backends(device: torch.device) -> list[str]:
    """torch everywhere; Triton on CUDA where it imports (under the interpreter a timing would mean nothing)."""
    return ["torch"] + (["triton"] if device.type == "cuda" and triton_unavailable(device) is None else [])


def kernel_traffic(backend: str, batch: int, length: int, itemsize: int) -> dict | None:
    """The Triton path's traffic by construction (its kernels are not aten ops, so the dispatch counter cannot
    see them): delta and mask read twice (tile heads, then the output pass; the second read may hit L2), the
    float32 result written once, the tile heads and their carries (4 bytes per tile, three times)."""
    if backend != "triton":
        return None
    from fipo.future_kl_triton import BLOCK

    tiles = -(-length // BLOCK)
    nbytes = batch * length * (2 * (itemsize + 1) + 4) + (batch * tiles * 4 * 3 if tiles > 1 else 0)
    return {"aten_ops": 0, "bytes": nbytes, "ops": {"triton kernels": 3 if tiles > 1 else 1},
            "counted": "by construction (fipo/future_kl_triton.py), not by the dispatch counter"}


def time_future_kl(plan: Plan, device: torch.device, gen: torch.Generator, flush: torch.Tensor) -> dict:
    rows = []
    timing = {"repeats": plan.repeats, "warmup": plan.warmup, "flush": flush}
    for (batch, length), backend in [(shape, b) for shape in plan.timing_shapes for b in timed_backends(device)]:
        for name, dtype in DTYPES.items():
            delta = (torch.randn(batch, length, generator=gen) * 0.3).to(dtype).to(device)
            mask = (torch.rand(batch, length, generator=gen) < 0.9).to(device)

            def op(delta=delta, mask=mask, backend=backend):
                return future_kl(delta, mask, TAU, backend=backend)

            nbytes = batch * length * (delta.element_size() + mask.element_size() + 4)
            copy, copy_bytes = copy_call(nbytes, device)
            op_t = time_call(op, device, **timing)
            copy_t = time_call(copy, device, **timing)
            isolated = time_call(op, device, repeats=plan.repeats, warmup=plan.warmup, flush=flush, queue_ahead=False)
            traffic = kernel_traffic(backend, batch, length, delta.element_size()) or count_traffic(op)
            graph = time_cuda_graph(op, device, **timing)
            op_bw = nbytes / op_t["median_s"]
            copy_bw = copy_bytes / copy_t["median_s"]
            row = {
                "B": batch, "L": length, "dtype": name, "tau": TAU, "backend": backend,
                "bytes": nbytes,
                "bytes_counted": f"read delta {batch}*{length}*{delta.element_size()} + mask {batch}*{length}*1, "
                                 f"write float32 {batch}*{length}*4",
                "op": op_t, "copy": copy_t, "isolated_call": isolated,
                "op_GBps": op_bw / 1e9, "copy_GBps": copy_bw / 1e9,
                "bandwidth_ratio": op_bw / copy_bw,
                "traffic": {**traffic, "minimum_bytes": nbytes, "ratio_bound": nbytes / traffic["bytes"]},
                "graph": graph,
            }
            if "median_s" in graph:
                row["graph"]["bandwidth_ratio"] = (nbytes / graph["median_s"]) / copy_bw
            rows.append(row)
    large, large_bytes = copy_call(plan.large_copy_bytes, device)
    large_t = time_call(large, device, repeats=max(5, plan.repeats // 5), warmup=2)
    large_copy = {"bytes": large_bytes, **large_t, "GBps": large_bytes / large_t["median_s"] / 1e9}
    return {"rows": rows, "large_copy": large_copy,
            "auto_backend": resolve_backend(torch.empty(1, 1, device=device))}


def judge_target(fkl: dict, plan: Plan, device: torch.device) -> dict:
    batch, length = plan.target_shape
    base = {"requirement": f"future_kl at B={batch}, L={length}, float32 input reaches >= "
                           f"{TARGET_RATIO:.0%} of the bandwidth of a copy of the same bytes"}
    if device.type != "cuda":
        return {**base, "status": NO_CUDA}
    # Judged on what production calls run on this device ("auto": Triton where it imports and passed its
    # first-use check, else torch); every backend's ratio is reported beside it.
    backend = fkl.get("auto_backend", "torch")
    rows = {}
    for r in fkl["rows"]:
        if (r["B"], r["L"], r["dtype"]) == (batch, length, "float32"):
            rows.setdefault(r.get("backend", "torch"), r)
    row = rows.get(backend)
    if row is None:
        return {**base, "status": f"not run: --small times other shapes than B={batch}, L={length}"}
    ratio, bound = row["bandwidth_ratio"], row["traffic"]["ratio_bound"]
    graph_ratio = row["graph"].get("bandwidth_ratio")
    met = ratio >= TARGET_RATIO
    reasons = []
    if not met:
        if bound < TARGET_RATIO:
            reasons.append(f"its aten ops move {1 / bound:.1f}x the minimum bytes, so even at copy speed it "
                           f"would reach at most {bound:.0%}")
        if graph_ratio is not None:
            reasons.append(f"without launch gaps (CUDA-graph replay) it reaches {graph_ratio:.1%}")
        if backend == "torch":
            reasons.append(f"it runs {row['traffic']['aten_ops']} aten ops where the Triton backend's kernels read "
                           "delta and mask twice and write once" + ("" if "triton" in rows else
                                                                   " (not timed here: triton missing)"))
    return {**base, "backend": backend, "status": "met" if met else "not met", "ratio": ratio,
            "ratio_bound_by_traffic": bound, "graph_ratio": graph_ratio,
            "ratio_by_backend": {b: r["bandwidth_ratio"] for b, r in rows.items()}, "why": "; ".join(reasons)}


# ------------------------------------------------------------------------------------ (c) loss timing


def time_losses(plan: Plan, device: torch.device, gen: torch.Generator, flush: torch.Tensor) -> dict:
    params = LOSS_PARAMS["paper-32B"]
    rows = []
    for batch, length in plan.timing_shapes:
        old = (-torch.rand(batch, length, generator=gen) * 3).to(device)
        new = old + (torch.randn(batch, length, generator=gen) * 0.1).to(device)
        adv = torch.randn(batch, 1, generator=gen).expand(batch, length).contiguous().to(device)
        mask = make_mask("prefix", batch, length, gen).to(device)

        def run_fipo(old=old, new=new, adv=adv, mask=mask):
            log_prob = new.clone().requires_grad_()
            out = fipo_policy_loss(old, log_prob, adv, mask, params)
            token_mean(out.loss_mat, out.loss_mask).backward()

        def run_vanilla(old=old, new=new, adv=adv, mask=mask):
            log_prob = new.clone().requires_grad_()
            loss, _ = vanilla_ppo_loss(old, log_prob, adv, mask, params.clip_ratio_low, params.clip_ratio_high,
                                       params.clip_ratio_c)
            loss.backward()

        timing = {"repeats": plan.loss_repeats, "warmup": plan.warmup, "flush": flush, "queue_ahead": False}
        fipo_t = time_call(run_fipo, device, **timing)
        vanilla_t = time_call(run_vanilla, device, **timing)
        rows.append({"B": batch, "L": length, "dtype": "float32", "params": "paper-32B", "fipo": fipo_t,
                     "vanilla": vanilla_t, "ratio": fipo_t["median_s"] / vanilla_t["median_s"]})
    return {"rows": rows, "what": "forward + backward of the token-mean loss, metrics read to the host included; "
                                  "vanilla = fipo.references.vanilla_ppo_loss (verl's vanilla, restated)",
            # the official code's IS diagnostics sort on the host: numpy's sort where it imports, as in training
            "host_statistics": "numpy" if fipo_loss_module.np is not None else "torch (numpy missing: slower)"}


# ---------------------------------------------------------------------------------- (d) the HF backend


def check_hf_backend(plan: Plan, device: torch.device) -> dict:
    try:
        import transformers
    except ImportError as e:  # not installed, or installed without what it needs (numpy)
        missing = "transformers" if e.name in (None, "transformers") else f"transformers' dependency {e.name}"
        return {"status": f"skipped: {missing} missing"}
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # shard writing and weight loading bars would swamp the log

    from fipo.eval.sampling import HFSampler, SamplingSettings
    from fipo.tiny import build_tiny_base_model, chat_prompt, split_problems

    workdir = Path(tempfile.mkdtemp(prefix="fipo-device-check-"))
    try:
        t0 = time.perf_counter()
        spec = TinyModelSpec(warmup_steps=plan.tiny_warmup_steps)
        model_dir = build_tiny_base_model(workdir / "tiny", spec, log=lambda msg: None, report=False)
        build_s = time.perf_counter() - t0
        sampler = HFSampler(str(model_dir), device=str(device))
        problems = split_problems(spec.seed)["test"][: plan.tiny_problems]
        prompts = [chat_prompt(sampler.tokenizer, p.prompt()) for p in problems]
        settings = SamplingSettings(n=plan.tiny_samples, temperature=1.0, top_p=0.7, max_tokens=plan.tiny_max_tokens)
        offsets = list(range(len(prompts)))
        synchronize(device)
        t0 = time.perf_counter()
        first = sampler.sample(prompts, settings, offsets)
        synchronize(device)
        sample_s = time.perf_counter() - t0
        again = sampler.sample(prompts, settings, offsets)
        flat = [s for per_prompt in first for s in per_prompt]
        conditions = {
            "one list of n samples per prompt": len(first) == len(prompts)
            and all(len(x) == settings.n for x in first),
            "finish reason stop or length": all(s.finish_reason in ("stop", "length") for s in flat),
            "1 <= tokens <= max_tokens": all(1 <= s.num_tokens <= settings.max_tokens for s in flat),
            "length means max_tokens": all(s.num_tokens == settings.max_tokens for s in flat
                                           if s.finish_reason == "length"),
            "same seeds, same samples": first == again,
        }
        logits = {"status": "not run: the device is the CPU"}
        if device.type != "cpu":
            tok = sampler.tokenizer
            batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            cpu_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
            with torch.no_grad():
                on_device = sampler.model(**{k: v.to(device) for k, v in batch.items()}).logits[:, -1].cpu()
                on_cpu = cpu_model(**batch).logits[:, -1]
            tol = 2e-3 + 1e-3 * on_cpu.abs()
            stats = error_stats(on_device, on_cpu, tol)
            logits = {"status": "pass" if stats_pass(stats) else "fail", **stats}
            conditions["next-token logits equal the CPU's"] = logits["status"] == "pass"
        return {
            "status": "pass" if all(conditions.values()) else "fail",
            "transformers": transformers.__version__,
            "conditions": conditions,
            "logits_vs_cpu": logits,
            "prompts": len(prompts), "n": settings.n, "max_tokens": settings.max_tokens,
            "samples": len(flat),
            "stop_frac": sum(s.finish_reason == "stop" for s in flat) / max(1, len(flat)),
            "mean_tokens": sum(s.num_tokens for s in flat) / max(1, len(flat)),
            "tiny_model_build_s": build_s, "tiny_warmup_steps": spec.warmup_steps,
            "sampling_s": sample_s,
            "tokens_per_s": sum(s.num_tokens for s in flat) / sample_s,
            "example": flat[0].text if flat else None,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- driver


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "index": device.index, "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count, "memory_GiB": props.total_memory / 2**30,
                "L2_bytes": getattr(props, "L2_cache_size", None), "cuda": torch.version.cuda,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def default_out_path(info: dict) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", (info["name"] if info["type"] == "cuda" else "cpu").lower()).strip("-")
    return REPO_ROOT / "benchmarks" / "results" / f"device_check_{slug or info['type']}.json"


def json_safe(value):
    """NaN and infinities as strings: the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    return value


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(report), indent=1) + "\n")
    tmp.replace(path)


def run_step(report: dict, section: str, name: str, fn, out: Path) -> None:
    """Run one check or timing; an exception is recorded as the step's error, and the next step still runs."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as e:
        result = {"status": f"error: {type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    result["elapsed_s"] = time.perf_counter() - t0
    report[section][name] = result
    print(f"  {name}: {result.get('status', 'done')} ({result['elapsed_s']:.1f} s)", flush=True)
    write_json(out, report)  # after every step: a run cut short still leaves what it measured


def fmt(x, spec: str = ".3g") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def print_summary(report: dict, out: Path) -> None:
    d = report["device"]
    print(f"\n== device check: {d['name']} ({d['type']}), torch {report['torch']}, plan {report['plan']}, "
          f"seed {report['seed']}, {report['elapsed_s']:.0f} s")
    print("checks (max |err|, max |err| / tolerance: pass <= 1):")
    for name in CHECK_NAMES:
        c = report["checks"].get(name, {"status": "missing"})
        line = f"  {name:<28} {c['status'].splitlines()[0][:100]}"
        if "max_err_over_tol" in c:
            line += f"  max|err| {fmt(c['max_abs_err'])}  err/tol {fmt(c['max_err_over_tol'], '.2g')}"
        if "cases_run" in c:
            line += f"  ({c['cases_run']} cases, {c['cases_failed']} failed)"
        print(line)
    fkl = report["timings"].get("future_kl", {})
    if "rows" in fkl:
        print("Future-KL vs a copy of the same bytes (read delta + mask, write float32), medians; bound: the ratio "
              "its aten ops' traffic allows; graph: CUDA-graph replay; ahead: repeats queued before the GPU got there")
        print(f"  {'backend':>7} {'B':>3} {'L':>6} {'dtype':>8} {'MB':>6} {'op us':>9} {'copy us':>8} {'op GB/s':>8} "
              f"{'copy GB/s':>9} {'ratio':>6} {'bound':>6} {'graph':>6} {'ops':>4}  ahead")
        for r in fkl["rows"]:
            g = r["graph"].get("bandwidth_ratio")
            graph = format(g, ".1%") if g is not None else "n/a"
            print(f"  {r.get('backend', 'torch'):>7} {r['B']:>3} {r['L']:>6} {r['dtype']:>8} {r['bytes'] / 1e6:>6.2f} "
                  f"{r['op']['median_s'] * 1e6:>9.1f} {r['copy']['median_s'] * 1e6:>8.1f} {r['op_GBps']:>8.1f} "
                  f"{r['copy_GBps']:>9.1f} {r['bandwidth_ratio']:>6.1%} {r['traffic']['ratio_bound']:>6.1%} "
                  f"{graph:>6} {r['traffic']['aten_ops']:>4}  {r['op']['queued_ahead']}")
        big = fkl["large_copy"]
        print(f"  large copy: {big['bytes'] / 1e9:.2f} GB read+written in {big['median_s'] * 1e3:.3f} ms = "
              f"{big['GBps']:.0f} GB/s ({big['clock']})")
    t = report["target"]
    print(f"target: {t['requirement']}: {t['status'].upper()}"
          + (f" (ratio {t['ratio']:.1%})" if "ratio" in t else "") + (f"; {t['why']}" if t.get("why") else ""))
    loss = report["timings"].get("loss", {})
    if "rows" in loss:
        print("FIPO loss vs verl's vanilla (plain-torch restatement), fwd+bwd token-mean, float32, per call:")
        for r in loss["rows"]:
            print(f"  B={r['B']:<3} L={r['L']:<6} fipo {r['fipo']['median_s'] * 1e3:8.3f} ms  "
                  f"vanilla {r['vanilla']['median_s'] * 1e3:8.3f} ms  ratio {r['ratio']:.2f}")
    for name, result in report["timings"].items():
        if str(result.get("status", "")).startswith("error"):
            print(f"timing {name}: {result['status']}")
    s = report["summary"]
    print(f"summary: {s['passed']} passed, {s['failed']} failed, {s['errors']} errors, {s['skipped']} skipped; "
          f"JSON: {out}")


def skipped(device: torch.device) -> dict | None:
    why = triton_unavailable(device)
    return {"status": why} if why else None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/device_check_<device>.json)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the CUDA-only parts are not run)")
    parser.add_argument("--small", action="store_true", help="small shapes, few repeats: seconds on a CPU")
    parser.add_argument("--seed", type=int, help="replay the random inputs of an earlier run (its JSON's seed)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("device_check: no CUDA device visible to torch "
              f"{torch.__version__}; run with --cpu for the CPU check", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else torch.device("cuda", torch.cuda.current_device())
    plan = SMALL if args.small else FULL
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    info = device_info(device)
    out = args.out or default_out_path(info)
    try:
        import numpy
        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = "missing"
    report = {
        "schema": 1,
        "complete": False,
        "device": info,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": numpy_version,
        "fipo": {"version": fipo.__version__, "path": str(Path(fipo.__file__).resolve().parent)},
        "plan": plan.name,
        "seed": seed,
        "argv": sys.argv[1:] if argv is None else list(argv),
        # What the loss checks and production calls run here (fipo.future_kl "auto": the Triton kernel on CUDA
        # when it imports and agrees with the torch path at first use; the torch path otherwise).
        "future_kl_auto_backend": resolve_backend(torch.empty(1, 1, device=device)),
        "checks": {},
        "timings": {},
    }
    started = time.perf_counter()
    print(f"device check on {info['name']} ({info['type']}), plan {plan.name}, seed {seed}", flush=True)
    gen = torch.Generator().manual_seed(seed)  # inputs drawn on the CPU: the same seed, the same inputs anywhere
    steps = [
        ("checks", "future_kl.float32", lambda: check_future_kl(torch.float32, plan, device, gen)),
        ("checks", "future_kl.bfloat16", lambda: check_future_kl(torch.bfloat16, plan, device, gen)),
        ("checks", "future_kl.edge_cases", lambda: check_future_kl_edges(device, gen)),
        ("checks", "future_kl_triton.float32",
         lambda: skipped(device) or check_future_kl(torch.float32, plan, device, gen, "triton")),
        ("checks", "future_kl_triton.bfloat16",
         lambda: skipped(device) or check_future_kl(torch.bfloat16, plan, device, gen, "triton")),
        ("checks", "future_kl_triton.edge_cases", lambda: skipped(device) or check_future_kl_edges(device, gen, "triton")),
        ("checks", "fipo_loss.float32", lambda: check_fipo_loss(torch.float32, plan, device, gen)),
        ("checks", "fipo_loss.bfloat16", lambda: check_fipo_loss(torch.bfloat16, plan, device, gen)),
        ("checks", "fipo_loss.edge_cases", lambda: check_fipo_loss_edges(device, gen)),
    ]
    for section, name, fn in steps:
        run_step(report, section, name, fn, out)
    flush = flush_buffer(device)
    run_step(report, "timings", "future_kl", lambda: time_future_kl(plan, device, gen, flush), out)
    run_step(report, "timings", "loss", lambda: time_losses(plan, device, gen, flush), out)
    del flush
    run_step(report, "checks", "hf_backend.tiny", lambda: check_hf_backend(plan, device), out)

    fkl = report["timings"]["future_kl"]
    report["target"] = judge_target(fkl, plan, device) if "rows" in fkl else {
        "requirement": "future_kl bandwidth target", "status": "not run: the Future-KL timing failed"}
    statuses = [report["checks"][name]["status"] for name in CHECK_NAMES]
    report["summary"] = {
        "passed": sum(s == "pass" for s in statuses),
        "failed": sum(s == "fail" for s in statuses),
        "errors": sum(s.startswith("error") for s in statuses)
        + sum(str(t.get("status", "")).startswith("error") for t in report["timings"].values()),
        "skipped": sum(s.startswith("skipped") for s in statuses),
    }
    report["elapsed_s"] = time.perf_counter() - started
    report["complete"] = True
    write_json(out, report)
    print_summary(report, out)
    return 1 if report["summary"]["failed"] or report["summary"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
