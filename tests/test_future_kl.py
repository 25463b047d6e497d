"""The production Future-KL and the paper's Listing 1 against the dense O(L^2) float64 oracle."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fipo import future_kl as fkl_module
from fipo.future_kl import (
    discounted_reverse_cumsum,
    future_kl,
    future_kl_listing1,
    future_kl_reference,
    gamma_from_tau,
)
from fipo.references import future_kl_magnitude

LENGTHS = st.one_of(
    st.integers(1, 80),
    # chunk sizes +-1, powers of two, primes, and lengths that need two and three levels of the scan
    st.sampled_from([31, 32, 33, 63, 64, 65, 127, 128, 129, 257, 1021, 1024, 1025, 2053, 4099]),
)
TAUS = st.one_of(
    st.floats(math.log(0.5), math.log(1e6)).map(math.exp),  # log-uniform over [0.5, 1e6]
    st.sampled_from([0.5, 1.0, 32.0, 1e6, math.inf]),
)
MASK_KINDS = st.sampled_from(["random", "all_valid", "all_masked", "prefix", "some_rows_empty"])


def make_mask(kind: str, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "all_valid":
        return torch.ones(batch, length, dtype=torch.bool)
    if kind == "all_masked":
        return torch.zeros(batch, length, dtype=torch.bool)
    if kind == "prefix":  # verl's layout: response tokens, then padding
        lengths = torch.randint(0, length + 1, (batch, 1), generator=gen)
        return torch.arange(length)[None, :] < lengths
    mask = torch.rand(batch, length, generator=gen) < 0.7
    if kind == "some_rows_empty":
        mask[::2] = False
    return mask


@st.composite
def cases(draw):
    batch = draw(st.integers(1, 4))
    length = draw(LENGTHS)
    tau = draw(TAUS)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 20.0]))
    delta = torch.randn(batch, length, generator=gen, dtype=torch.float64) * scale
    mask = make_mask(draw(MASK_KINDS), batch, length, gen)
    if draw(st.booleans()):
        mask = mask.to(torch.float32)  # 0/1 masks are accepted as well as bool
    chunk = draw(st.sampled_from([2, 3, 7, 16, 32, 64, 128]))
    return delta, mask, tau, chunk


@given(cases())
def test_production_matches_oracle_float64(case):
    delta, mask, tau, chunk = case
    expected = future_kl_reference(delta, mask, tau)
    got = future_kl(delta, mask, tau, chunk_size=chunk)
    assert got.dtype == torch.float64 and got.shape == delta.shape
    tol = 1e-12 * (future_kl_magnitude(delta, mask, tau) + 1e-300)
    assert torch.all((got - expected).abs() <= tol + 1e-300), (got - expected).abs().max()


@given(cases())
def test_listing1_matches_oracle_float64(case):
    delta, mask, tau, chunk = case
    expected = future_kl_reference(delta, mask, tau)
    got = future_kl_listing1(delta, mask, tau, chunk_size=chunk)
    tol = 1e-12 * future_kl_magnitude(delta, mask, tau)
    assert torch.all((got - expected).abs() <= tol + 1e-300)


@given(cases())
def test_production_float32_within_float32_accuracy(case):
    delta, mask, tau, chunk = case
    got = future_kl(delta.float(), mask, tau, chunk_size=chunk)
    assert got.dtype == torch.float32
    expected = future_kl_reference(delta.float().double(), mask, tau)
    tol = 1e-5 * future_kl_magnitude(delta.float().double(), mask, tau) + 1e-30
    assert torch.all((got.double() - expected).abs() <= tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    delta = (torch.randn(3, 3000, generator=gen) * 0.5).to(dtype)
    mask = torch.rand(3, 3000, generator=gen) < 0.9
    got = future_kl(delta, mask, 32.0)
    assert got.dtype == torch.float32
    expected = future_kl_reference(delta.double(), mask, 32.0)  # the same (rounded) inputs, exactly summed
    tol = 1e-5 * future_kl_magnitude(delta.double(), mask, 32.0)
    assert torch.all((got.double() - expected).abs() <= tol)
    assert future_kl(delta, mask, 32.0, out_dtype=dtype).dtype == dtype


@pytest.mark.slow
@pytest.mark.parametrize("tau", [1e6, 0.5])
def test_very_long_sequence_is_finite_and_exact(tau):
    """L = 131072: nothing overflows (no gamma^-t anywhere) and spot checks against direct float64 sums hold."""
    length = 131072
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    delta = torch.randn(2, length, generator=gen) * 0.3
    mask = torch.rand(2, length, generator=gen) < 0.95
    got = future_kl(delta, mask, tau)
    assert torch.isfinite(got).all()
    listing = future_kl_listing1(delta[:, -8192:], mask[:, -8192:], tau)  # the tail has no further future
    x = torch.where(mask, delta, 0).double()
    gamma = gamma_from_tau(tau)
    for t in [0, 1, 4095, 65536, length - 8193, length - 1]:
        powers = gamma ** torch.arange(length - t, dtype=torch.float64)
        direct = (x[:, t:] * powers).sum(dim=1)
        scale = (x[:, t:].abs() * powers).sum(dim=1)
        assert torch.all((got[:, t].double() - direct).abs() <= 1e-5 * scale + 1e-6), (t, got[:, t], direct)
    assert torch.allclose(got[:, -8192:], listing, rtol=1e-4, atol=1e-4)


def test_all_masked_rows_give_zero_and_masked_garbage_does_not_leak():
    delta = torch.randn(4, 100)
    delta[:, 50] = float("nan")
    delta[:, 60] = float("inf")
    mask = torch.ones(4, 100, dtype=torch.bool)
    mask[:, [50, 60]] = False
    mask[2] = False
    out = future_kl(delta, mask, 8.0)
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(100))
    expected = future_kl_reference(delta, mask, 8.0)
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_length_one_and_empty_shapes():
    delta = torch.tensor([[0.7], [-0.2]])
    assert torch.allclose(future_kl(delta, torch.tensor([[1], [0]]), 3.0), torch.tensor([[0.7], [0.0]]))
    assert future_kl(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool), 32.0).shape == (3, 0)
    assert future_kl(torch.zeros(0, 17), torch.zeros(0, 17, dtype=torch.bool), 32.0).shape == (0, 17)


def test_half_life_meaning_of_tau():
    """A single shift at position k contributes exactly half of itself tau tokens earlier (integer tau)."""
    for tau in [1, 8, 32, 128]:
        delta = torch.zeros(1, 600, dtype=torch.float64)
        delta[0, 500] = 1.0
        out = future_kl(delta, None, tau)
        assert out[0, 500] == 1.0
        assert math.isclose(out[0, 500 - tau].item(), 0.5, rel_tol=1e-12)
        assert torch.all(out[0, 501:] == 0)


def test_infinite_tau_is_the_undiscounted_sum_of_eq4():
    delta = torch.randn(2, 300, dtype=torch.float64)
    expected = delta.flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(future_kl(delta, None, math.inf), expected, rtol=1e-12, atol=1e-12)


def test_tiny_tau_keeps_only_the_current_token():
    delta = torch.randn(2, 500, dtype=torch.float64)
    out = future_kl(delta, None, 1e-3)  # gamma = 2^-1000: every power > 0 underflows or is negligible
    assert torch.allclose(out, delta, rtol=0, atol=1e-290)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), "32"])
def test_invalid_tau_is_rejected(tau):
    with pytest.raises((ValueError, TypeError), match="tau"):
        future_kl(torch.zeros(1, 4), None, tau)


def test_bad_shapes_and_dtypes_are_rejected():
    with pytest.raises(ValueError, match="mask shape"):
        future_kl(torch.zeros(2, 4), torch.ones(2, 5), 32.0)
    with pytest.raises(ValueError, match="batch, length"):
        future_kl(torch.zeros(4), None, 32.0)
    with pytest.raises(TypeError, match="floating-point"):
        future_kl(torch.zeros(2, 4, dtype=torch.long), None, 32.0)
    with pytest.raises(ValueError, match="chunk_size"):
        discounted_reverse_cumsum(torch.zeros(1, 4), 0.5, chunk_size=1)


class LargestBuffer(TorchDispatchMode):
    """Records the largest tensor storage any aten op produces inside the block."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def test_production_memory_is_linear_in_length():
    batch, length = 4, 8192
    delta, mask = torch.randn(batch, length), torch.rand(batch, length) < 0.9
    fkl_module._local_decay_matrix.cache_clear()
    fkl_module._tail_powers.cache_clear()
    with LargestBuffer() as prod:
        future_kl(delta, mask, 32.0)
    with LargestBuffer() as oracle:
        future_kl_reference(delta[:1, :2048], mask[:1, :2048], 32.0)
    # The tracker sees quadratic buffers when they exist (the oracle's 2048^2 float64 matrix)...
    assert oracle.largest >= 2048 * 2048 * 8
    # ... and the production function's largest buffer is one (batch, length) float32 tensor (+ padding),
    # where an L x L or L x K-per-row buffer would be 2048x or 32x larger.
    assert prod.largest <= batch * (length + 64) * 4
