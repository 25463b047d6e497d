"""The discounted reverse cumsum behind Future-KL as Triton kernels: one read of the input (and mask), one write.

    y_t = sum_{k >= t} gamma^(k - t) * x_k      (x = delta where mask, else 0; PAPER.md Eq. 6)

Why a kernel: the torch implementation (``fipo.future_kl.discounted_reverse_cumsum``) runs about eleven aten ops
that move 2.9x the bytes the quantity needs, so on a GPU it cannot reach half of a copy's bandwidth
(``benchmarks/device_check.py`` counts them). Here every row is cut into tiles of ``BLOCK`` positions, one
program per (row, tile), so a batch of 64 sequences of 20480 tokens keeps 1280 programs in flight:

1. ``_tile_kernel(STORE=False)``: each tile's own sum, discounted to its first position (its "head").
2. The heads of a row obey the same recurrence with decay gamma^BLOCK: solved by this module recursively
   (one more level for every factor BLOCK in the length; L = 20480 needs one).
3. ``_tile_kernel(STORE=True)``: each tile again, with what every later tile carries in added at its last
   position, written out. The second read of the input mostly hits the L2 cache on a large GPU.

Within a tile the recurrence F_t = x_t + gamma * F_{t+1} is an associative scan over (a, b) pairs standing for
F -> a * F + b, run from the tile's end towards its start; every power of gamma it forms has a non-negative
exponent, so nothing can overflow, whatever tau is. Padding may hold NaN or inf: it is replaced by 0 before any
arithmetic, as in the torch path. Accumulation is float32 (float16/bfloat16/float32 input; float64 stays on
the torch path, which the float64 oracle compares against).

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` when this
module is imported), which is how the tests check them against the float64 oracle on a machine without a GPU.
Import this module only through ``fipo.future_kl`` (``backend="triton"`` or ``"auto"``): it needs triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the kernels take (float64 stays on the torch path)

# Positions per program. 1024 keeps 20 programs per row at L = 20480 and one level of recursion up to
# L = 1024^2; the scan over a tile is log2(1024) = 10 steps.
BLOCK = 1024


@triton.jit
def _compose(a_near, b_near, a_far, b_far):
    # Scan order runs from the tile's end to its start: "near" is the later position (applied first).
    # F -> a_far * (a_near * F + b_near) + b_far
    return a_near * a_far, b_near * a_far + b_far


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _tile_kernel(
    x_ptr,
    mask_ptr,
    carry_ptr,
    out_ptr,
    length,
    n_tiles,
    stride_x,
    stride_mask,
    stride_carry,
    stride_out,
    gamma,
    BLOCK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_CARRY: tl.constexpr,
    STORE: tl.constexpr,
):
    row = tl.program_id(0)
    tile = tl.program_id(1)
    j = tl.arange(0, BLOCK)
    pos = tile * BLOCK + (BLOCK - 1 - j)  # j = 0 is the tile's last position: the scan runs backwards in time
    inside = pos < length
    x = tl.load(x_ptr + row * stride_x + pos, mask=inside, other=0.0).to(tl.float32)
    if HAS_MASK:
        keep = tl.load(mask_ptr + row * stride_mask + pos, mask=inside, other=0) != 0
        x = tl.where(keep, x, 0.0)  # where, not a product: 0 * inf in the padding would be NaN
    if HAS_CARRY:
        # F at the first position of the next tile, from every later tile: enters at this tile's last position.
        later = tl.load(carry_ptr + row * stride_carry + tile + 1, mask=tile + 1 < n_tiles, other=0.0)
        x = tl.where(j == 0, x + gamma * later, x)
    a = tl.full((BLOCK,), gamma, tl.float32)
    _, y = tl.associative_scan((a, x), 0, _compose)
    if STORE:
        tl.store(out_ptr + row * stride_out + pos, y, mask=inside)
    else:
        # The tile's head: F at its first position without anything from later tiles. (tl.reduce with our own
        # combine rather than tl.sum: tl.sum is a jit function of triton's library, decorated when triton was
        # first imported, so the tests' interpreter could not run it after verl had imported triton compiled.)
        head = tl.reduce(tl.where(j == BLOCK - 1, y, 0.0), 0, _add)
        tl.store(out_ptr + row * stride_out + tile, head)


def discounted_reverse_cumsum_triton(
    x: torch.Tensor,
    gamma: float,
    mask: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    block: int = BLOCK,
) -> torch.Tensor:
    """y_t = sum_{k >= t} gamma^(k - t) x_k along the last dim of a (batch, length) tensor, positions where
    ``mask`` is false (or 0) counted as 0. Returns ``out_dtype`` (default: x's dtype), accumulated in float32.
    ``block`` (a power of two) is the tile size; smaller ones only serve tests of the recursion."""
    if block < 2 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 2, got {block}")
    if x.dim() != 2:
        raise ValueError(f"x must be (batch, length), got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"the Triton Future-KL takes {', '.join(map(str, DTYPES))}; got {x.dtype}")
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x shape {tuple(x.shape)}")
    out_dtype = out_dtype or x.dtype
    batch, length = x.shape
    out = torch.empty(batch, length, dtype=out_dtype, device=x.device)
    if batch == 0 or length == 0:
        return out
    x = x if x.stride(1) == 1 else x.contiguous()
    if mask is not None and mask.stride(1) != 1:
        mask = mask.contiguous()
    gamma = float(gamma)
    n_tiles = triton.cdiv(length, block)
    grid = (batch, n_tiles)
    mask_arg = mask if mask is not None else x  # never read when HAS_MASK is false
    mask_stride = mask.stride(0) if mask is not None else 0
    carry = None
    if n_tiles > 1:
        heads = torch.empty(batch, n_tiles, dtype=torch.float32, device=x.device)
        _tile_kernel[grid](x, mask_arg, heads, heads, length, n_tiles, x.stride(0), mask_stride, 0, heads.stride(0),
                           gamma, BLOCK=block, HAS_MASK=mask is not None, HAS_CARRY=False, STORE=False)
        # S_c = head_c + gamma^block * S_{c+1}: the same problem, one level up. gamma**block is formed in float64
        # and may underflow to 0 (then no tile hears from the next): correct to float32 precision.
        carry = discounted_reverse_cumsum_triton(heads, gamma**block, out_dtype=torch.float32, block=block)
    carry_arg = carry if carry is not None else out
    carry_stride = carry.stride(0) if carry is not None else 0
    _tile_kernel[grid](x, mask_arg, carry_arg, out, length, n_tiles, x.stride(0), mask_stride, carry_stride,
                       out.stride(0), gamma, BLOCK=block, HAS_MASK=mask is not None, HAS_CARRY=carry is not None,
                       STORE=True)
    return out
