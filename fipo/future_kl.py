"""Future-KL: the discounted, masked sum of the policy shift over each token's future (PAPER.md Eq. 6).

    FutureKL_t = sum_{k >= t} M_k * gamma^(k - t) * delta_k,    gamma = 2^(-1/tau)

Three implementations of the same quantity live here:

* :func:`future_kl_reference` builds the dense L x L decay matrix. O(L^2) memory; the test oracle only.
* :func:`future_kl_listing1` is the paper's Listing 1 (Appendix G): future positions split into chunks of
  K, accumulating (B, K) x (K, L) matmuls. O(B*L + K*L) memory, O(B*L^2) time; the benchmark baseline.
* :func:`future_kl` is the production function: the recurrence F_t = x_t + gamma * F_{t+1} solved as a
  blocked scan. Within a block of K positions a (K x K) upper-triangular decay matmul gives the local sums;
  the block heads form a sequence of the same kind with decay gamma^K, solved recursively, and each block
  adds gamma^(K - j) times the total carried in from the block after it. O(B*L*K) time, O(B*L) memory,
  every matmul fully parallel (a handful of kernels, no Python loop over positions).

No implementation ever forms gamma^(-t): every power used has a non-negative exponent, so powers can only
underflow (to zero, harmlessly), never overflow, whatever L and tau are.

The ratio filter of FIPO is not applied here: the caller builds ``mask`` (response mask AND ratio <= c).

Backends of the production function and of :func:`discounted_reverse_cumsum`: ``"torch"`` (the blocked scan
above, any device and dtype) and ``"triton"`` (``fipo.future_kl_triton``: fused kernels for CUDA tensors in
float32/bfloat16/float16, one read of the input and one write). ``"auto"``, the default, takes Triton for a
CUDA tensor it supports when triton imports and the kernel agreed with the torch path on this device at its
first use (a one-time check, so a GPU where the kernel misbehaves falls back to torch with a warning rather than
train on wrong weights); otherwise torch. ``FIPO_FUTURE_KL_BACKEND`` sets the default for every call.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from fipo.loss_params import DEFAULT_CHUNK_SIZE, gamma_from_tau

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "gamma_from_tau",
    "future_kl",
    "future_kl_reference",
    "future_kl_listing1",
    "discounted_reverse_cumsum",
]

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "FIPO_FUTURE_KL_BACKEND"
_triton_verified: dict[str, bool] = {}  # device -> the kernel agreed with the torch path there


def _triton_module():
    """fipo.future_kl_triton, or None where triton is not installed."""
    try:
        from fipo import future_kl_triton
    except ImportError:
        return None
    return future_kl_triton


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_agrees_here(device: torch.device) -> bool:
    """The first use of the kernel on a device: a (2, 2500) case (three tiles, one level of carry) against the
    torch path. Differences beyond float32 rounding mean the kernel is wrong on this GPU: warn, use torch."""
    key = str(device)
    if key not in _triton_verified:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 2500, generator=gen).to(device)
        mask = (torch.rand(2, 2500, generator=gen) < 0.8).to(device)
        gamma = gamma_from_tau(32.0)
        want = _torch_discounted_reverse_cumsum(torch.where(mask, x, torch.zeros((), device=device)), gamma,
                                                DEFAULT_CHUNK_SIZE)
        try:
            got = _triton_module().discounted_reverse_cumsum_triton(x, gamma, mask)
            ok = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4))
            why = f"max |difference| {(got - want).abs().max().item():.3g}"
        except Exception as exc:  # a compiler or driver error: the torch path still works
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            warnings.warn(f"fipo.future_kl: the Triton kernel disagrees with the torch path on {device} ({why}); "
                          f"using torch there. Set {BACKEND_ENV}=torch to skip this check.", stacklevel=3)
        _triton_verified[key] = ok
    return _triton_verified[key]


def resolve_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """The backend a call on ``x`` runs: ``backend``, else $FIPO_FUTURE_KL_BACKEND, else "auto" (see the module
    docstring). "triton" where it cannot run is an error that says why, never a silent fallback."""
    name = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    if name not in BACKENDS:
        source = "backend" if backend is not None else f"${BACKEND_ENV}"
        raise ValueError(f"{source}={name!r}: allowed {', '.join(BACKENDS)}")
    if name == "torch":
        return "torch"
    kernels = _triton_module()
    runnable = kernels is not None and (x.is_cuda or _interpreting()) and x.dtype in kernels.DTYPES
    if name == "triton":
        if kernels is None:
            raise ImportError("Future-KL backend 'triton' needs the triton package (pip install triton)")
        if not runnable:
            raise ValueError(f"Future-KL backend 'triton' runs on CUDA tensors of {', '.join(map(str, kernels.DTYPES))} "
                             f"(or CPU ones under TRITON_INTERPRET=1); got a {x.dtype} tensor on {x.device}")
        return "triton"
    if x.is_cuda and runnable and _triton_agrees_here(x.device):
        return "triton"
    return "torch"


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs are summed in float32; float64 stays float64 (the oracle compares in float64).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(delta: torch.Tensor, mask: torch.Tensor | None) -> None:
    if delta.dim() != 2:
        raise ValueError(f"delta must be (batch, length), got shape {tuple(delta.shape)}")
    if not delta.is_floating_point():
        raise TypeError(f"delta must be a floating-point tensor, got {delta.dtype}")
    if mask is not None and mask.shape != delta.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match delta shape {tuple(delta.shape)}")


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be >= 2, got {chunk_size}")


def _masked_input(delta: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    x = delta.to(dtype)
    if mask is None:
        return x
    # where(), not multiplication: padding may hold inf/NaN garbage and 0 * inf is NaN.
    return torch.where(mask.to(torch.bool), x, torch.zeros((), dtype=dtype, device=x.device))


def _decay_powers(gamma: float, exponents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """gamma ** exponents for non-negative integer exponents, computed in float64 with subnormals flushed to 0.

    Subnormals would only add error below the float's resolution and can slow CPU matmuls by orders of magnitude.
    """
    p = torch.pow(torch.tensor(gamma, dtype=torch.float64, device=exponents.device), exponents.to(torch.float64))
    p = p.to(dtype)
    return torch.where(p.abs() < torch.finfo(dtype).tiny, torch.zeros((), dtype=dtype, device=p.device), p)


@functools.lru_cache(maxsize=64)
def _local_decay_matrix(gamma: float, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size) matrix W with W[k, t] = gamma^(k - t) for k >= t, else 0, so that (x @ W)[t] = sum_k>=t."""
    idx = torch.arange(size, device=device)
    diff = idx[:, None] - idx[None, :]  # k - t
    powers = _decay_powers(gamma, diff.clamp(min=0), dtype)
    return torch.where(diff >= 0, powers, torch.zeros((), dtype=dtype, device=device))


@functools.lru_cache(maxsize=64)
def _tail_powers(gamma: float, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """gamma^(K - j) for j = 0..K-1: the decay from position j of a block to the first position of the next."""
    return _decay_powers(gamma, torch.arange(size, 0, -1, device=device), dtype)


def discounted_reverse_cumsum(
    x: torch.Tensor, gamma: float, chunk_size: int = DEFAULT_CHUNK_SIZE, backend: str | None = None
) -> torch.Tensor:
    """y_t = sum_{k >= t} gamma^(k - t) x_k along the last dim of a (batch, length) tensor, in x's dtype.
    ``backend``: see the module docstring (``chunk_size`` is the torch path's block size)."""
    _check_chunk_size(chunk_size)
    if resolve_backend(x, backend) == "triton":
        return _triton_module().discounted_reverse_cumsum_triton(x, gamma)
    return _torch_discounted_reverse_cumsum(x, gamma, chunk_size)


def _torch_discounted_reverse_cumsum(x: torch.Tensor, gamma: float, chunk_size: int) -> torch.Tensor:
    """The torch path. Blocked scan: intra-block (K x K) matmul, then the block heads are the same problem with
    decay gamma^K, solved by recursion (depth log_K(L)), and carried back into each block. ``chunk_size`` was
    checked by the public caller."""
    batch, length = x.shape
    if length == 0:
        return x.clone()
    dtype, device = x.dtype, x.device
    if length <= chunk_size:
        return x @ _local_decay_matrix(gamma, length, dtype, device)

    n_blocks = -(-length // chunk_size)
    padded = n_blocks * chunk_size
    if padded != length:
        # Zeros appended at the end of the future change no earlier sum.
        x = torch.nn.functional.pad(x, (0, padded - length))
    blocks = x.view(batch, n_blocks, chunk_size)
    local = blocks @ _local_decay_matrix(gamma, chunk_size, dtype, device)  # (B, n, K)

    # heads[c] = the local sum at the first position of block c; the sums at the block starts obey
    # S_c = heads_c + gamma^K * S_{c+1}: the same recurrence one level up.
    block_gamma = gamma**chunk_size
    starts = _torch_discounted_reverse_cumsum(local[:, :, 0].contiguous(), block_gamma, chunk_size)  # (B, n)
    # What position j of block c receives from every later block: gamma^(K - j) * S_{c+1}.
    carried_in = torch.nn.functional.pad(starts[:, 1:], (0, 1))  # S_{c+1}, zero past the last block
    tail_powers = _tail_powers(gamma, chunk_size, dtype, device)
    out = torch.addcmul(local, carried_in.unsqueeze(-1), tail_powers)
    return out.view(batch, padded)[:, :length]


def future_kl(
    delta: torch.Tensor,
    mask: torch.Tensor | None,
    tau: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Production Future-KL. ``delta``: (batch, length) log-prob shift; ``mask``: bool or 0/1, same shape.

    Returns (batch, length) in float32 (float64 for float64 input) unless ``out_dtype`` says otherwise.
    Exact (no approximation), O(batch * length) extra memory, for any float dtype and device.
    ``backend``: "auto" (default), "torch" or "triton" (module docstring).
    """
    _check_inputs(delta, mask)
    gamma = gamma_from_tau(tau)
    dtype = _accumulation_dtype(delta.dtype)
    _check_chunk_size(chunk_size)
    if resolve_backend(delta, backend) == "triton":  # the mask is applied inside the kernel: one pass
        return _triton_module().discounted_reverse_cumsum_triton(delta, gamma, mask, out_dtype=out_dtype or dtype)
    result = _torch_discounted_reverse_cumsum(_masked_input(delta, mask, dtype), gamma, chunk_size)
    return result if out_dtype is None else result.to(out_dtype)


def future_kl_reference(delta: torch.Tensor, mask: torch.Tensor | None, tau: float) -> torch.Tensor:
    """O(L^2) oracle: dense decay matrix, float64 throughout. For tests only."""
    _check_inputs(delta, mask)
    gamma = gamma_from_tau(tau)
    x = _masked_input(delta, mask, torch.float64)
    length = x.shape[1]
    idx = torch.arange(length, device=x.device, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]  # k - t, rows k (future), columns t
    decay = torch.where(diff >= 0, gamma ** diff.clamp(min=0), torch.zeros((), dtype=torch.float64, device=x.device))
    return x @ decay


def future_kl_listing1(
    delta: torch.Tensor, mask: torch.Tensor | None, tau: float, chunk_size: int = 128
) -> torch.Tensor:
    """The paper's Listing 1: chunks of K future positions, each adding a (B, K) x (K, L) matmul.

    Peak memory O(B*L + K*L), time O(B*L^2). Kept as the benchmark baseline and a second oracle.
    """
    _check_inputs(delta, mask)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    gamma = gamma_from_tau(tau)
    dtype = _accumulation_dtype(delta.dtype)
    x = _masked_input(delta, mask, dtype)
    batch, length = x.shape
    out = torch.zeros(batch, length, dtype=dtype, device=x.device)
    t = torch.arange(length, device=x.device)
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        k = torch.arange(start, end, device=x.device)
        diff = k[:, None] - t[None, :]  # (K, L): k - t
        block = torch.where(diff >= 0, _decay_powers(gamma, diff.clamp(min=0), dtype), 0.0)
        out += x[:, start:end] @ block
    return out

