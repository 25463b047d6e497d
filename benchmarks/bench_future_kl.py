"""Future-KL and FIPO-loss benchmark: every ratio is measured in this one run, on this machine.

Times, at B = 8, L in {2048, 8192, 20480}, tau = 32, fp32 on the CPU:
  * the O(L^2) oracle (only where its L x L float64 matrices fit the memory budget),
  * the paper's Listing 1 (chunk 128),
  * the production Future-KL,
  * a reverse cumulative sum of the same tensor (the floor: one pass, no decay),
and the FIPO loss forward+backward (core loss + verl's agg_loss) against verl's own vanilla loss.
Peak extra memory of each call is read from the kernel (VmHWM after a reset, minus VmRSS before) in a child
process whose allocator returns large blocks to the OS (MALLOC_MMAP_THRESHOLD_), so the peak is the live peak.
Timings run in this process with the default allocator (forced mmap would add page faults to every call).

The last line is machine-readable:
  SUMMARY L=20480 speedup_vs_listing1=<x> floor_ratio=<y> loss_ratio=<z>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from fipo.future_kl import future_kl, future_kl_listing1, future_kl_reference
from fipo.loss import FIPOParams, fipo_policy_loss

BATCH, TAU = 8, 32.0
ORACLE_MEMORY_BUDGET = 4 * 2**30  # the oracle holds ~4 L x L float64 matrices at once


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn) -> float:
    """Peak resident memory above the level before the call, in MiB (Linux only; NaN elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
    except OSError:
        return float("nan")
    before = _proc_kib("VmRSS")
    result = fn()
    peak = _proc_kib("VmHWM")
    del result
    return (peak - before) / 1024


def time_interleaved(fns: dict, min_seconds: float, max_repeats: int) -> dict[str, float]:
    """Median seconds per call. Calls of the candidates alternate, so machine noise hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: caches, thread pools, lazy init
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        n = len(next(iter(samples.values())))
        if n >= max_repeats or (n >= 3 and time.perf_counter() - start >= min_seconds):
            break
    return {name: statistics.median(values) for name, values in samples.items()}


def future_kl_candidates(length: int) -> tuple[dict, dict]:
    """(fast candidates, Listing 1) as zero-argument callables on one seeded input."""
    gen = torch.Generator().manual_seed(length)
    delta = torch.randn(BATCH, length, generator=gen) * 0.1
    mask = torch.rand(BATCH, length, generator=gen) < 0.9
    fast = {
        "floor": lambda: delta.flip(-1).cumsum(-1).flip(-1),
        "production": lambda: future_kl(delta, mask, TAU),
    }
    if 4 * length * length * 8 <= ORACLE_MEMORY_BUDGET:
        fast["oracle"] = lambda: future_kl_reference(delta, mask, TAU)
    return fast, {"listing1": lambda: future_kl_listing1(delta, mask, TAU)}


def measure_memory_in_child(length: int) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(length)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def memory_child(length: int) -> None:
    fast, listing1 = future_kl_candidates(length)
    candidates = {**fast, **listing1}
    for fn in candidates.values():
        fn()  # warm-up outside the measurement
    print(json.dumps({name: peak_extra_mib(fn) for name, fn in candidates.items()}))


def bench_future_kl(length: int, min_seconds: float) -> dict:
    fast, listing1 = future_kl_candidates(length)
    # Listing 1 is O(L^2): a few calls of its own, so that it does not set the repeat count of the others.
    times = {**time_interleaved(fast, min_seconds, max_repeats=200), **time_interleaved(listing1, min_seconds, 5)}
    production = fast["production"]().double()
    gen = torch.Generator().manual_seed(length)
    delta = torch.randn(BATCH, length, generator=gen) * 0.1
    mask = torch.rand(BATCH, length, generator=gen) < 0.9
    error = (production - future_kl_listing1(delta.double(), mask, TAU)).abs().max().item()
    return {"L": length, "times": times, "memory": measure_memory_in_child(length), "max_abs_err_vs_float64": error}


def bench_loss(length: int, min_seconds: float) -> dict:
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn

    from fipo.verl_plugin import standalone_actor_config

    params = FIPOParams()  # the 32B settings of Table 2
    config = standalone_actor_config(params)
    vanilla = get_policy_loss_fn("vanilla")
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(BATCH, length, generator=gen) * 3
    new = old + torch.randn(BATCH, length, generator=gen) * 0.1
    adv = torch.randn(BATCH, 1, generator=gen).expand(BATCH, length).contiguous()
    mask = torch.arange(length)[None, :] < torch.randint(length // 4, length + 1, (BATCH, 1), generator=gen)

    def run_vanilla():
        log_prob = new.clone().requires_grad_()
        loss, _ = vanilla(
            old_log_prob=old, log_prob=log_prob, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
            config=config,
        )
        loss.backward()

    def run_fipo():
        log_prob = new.clone().requires_grad_()
        out = fipo_policy_loss(old, log_prob, adv, mask, params)
        agg_loss(out.loss_mat, out.loss_mask, "token-mean").backward()

    return time_interleaved({"vanilla": run_vanilla, "fipo": run_fipo}, min_seconds, max_repeats=400)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 20480])
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time budget per measurement group")
    parser.add_argument("--memory-child", type=int, metavar="L", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={BATCH}, tau={TAU}, fp32, CPU", flush=True)
    header = f"{'L':>6} {'method':>10} {'ms/call':>10} {'vs floor':>9} {'speedup vs L1':>14} {'peak extra MiB':>15}"
    print(header)
    rows = []
    for length in args.lengths:
        result = bench_future_kl(length, args.min_seconds)
        times, memory = result["times"], result["memory"]
        for name in ("oracle", "listing1", "production", "floor"):
            if name not in times:
                print(f"{length:>6} {name:>10} {'skipped: L x L matrices exceed the memory budget':>51}")
                continue
            t = times[name]
            print(
                f"{length:>6} {name:>10} {t * 1e3:>10.3f} {t / times['floor']:>9.1f} "
                f"{times['listing1'] / t:>14.1f} {memory[name]:>15.1f}",
                flush=True,
            )
        print(f"{length:>6} production max |error| vs float64 Listing 1: {result['max_abs_err_vs_float64']:.2e}")
        rows.append(result)

    last = rows[-1]
    loss_times = bench_loss(last["L"], args.min_seconds)
    loss_ratio = loss_times["fipo"] / loss_times["vanilla"]
    print(
        f"loss fwd+bwd at B={BATCH}, L={last['L']}: FIPO {loss_times['fipo'] * 1e3:.3f} ms, "
        f"verl vanilla {loss_times['vanilla'] * 1e3:.3f} ms, ratio {loss_ratio:.2f}"
    )
    speedup = last["times"]["listing1"] / last["times"]["production"]
    floor_ratio = last["times"]["production"] / last["times"]["floor"]
    print(f"SUMMARY L={last['L']} speedup_vs_listing1={speedup:.1f} floor_ratio={floor_ratio:.2f} loss_ratio={loss_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
