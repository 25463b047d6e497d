"""The Triton Future-KL kernel against the float64 oracle, on the CPU through Triton's interpreter.

The kernels are the ones a GPU compiles (fipo/future_kl_triton.py, imported here with TRITON_INTERPRET=1, which
Triton reads when a kernel is decorated); what only a GPU can show (speed, the compiled code) is the device
check's (benchmarks/device_check.py). Small tile sizes exercise two and three levels of the carry recursion
at lengths the interpreter runs in well under a second.
"""

import importlib
import math
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fipo import future_kl as fkl_module
from fipo.future_kl import future_kl, future_kl_reference, gamma_from_tau, resolve_backend
from fipo.loss import FIPOParams, fipo_policy_loss
from fipo.references import future_kl_magnitude

from test_future_kl import MASK_KINDS, TAUS, make_mask

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(scope="module")
def triton_kernels():
    """fipo.future_kl_triton decorated under the interpreter, for this module's tests only. (Its kernels call
    only triton builtins and its own jit functions: a jit function of triton's library, decorated when the
    process first imported triton, e.g. through verl, would not run interpreted.)"""
    # triton is a dev dependency: without it this import fails the tests rather than skipping them
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        sys.modules.pop("fipo.future_kl_triton", None)
        module = importlib.import_module("fipo.future_kl_triton")
        yield module
        sys.modules.pop("fipo.future_kl_triton", None)
        import fipo

        if hasattr(fipo, "future_kl_triton"):
            delattr(fipo, "future_kl_triton")
    fkl_module._triton_verified.clear()


@st.composite
def cases(draw):
    block = draw(st.sampled_from([4, 8, 16, 64, 1024]))
    # lengths around tile boundaries and past block^2 (two levels of carry) for the small tiles
    if block == 1024:
        length = draw(st.sampled_from([1, 5, 1023, 1024, 1025, 2100]))
    else:
        length = draw(st.one_of(st.integers(1, 40), st.sampled_from([block - 1, block, block + 1, block**2 + 3,
                                                                     min(300, block**3 + 1)])))
    batch = draw(st.integers(1, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 20.0]))
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    delta = (torch.randn(batch, length, generator=gen) * scale).to(dtype)
    mask = make_mask(draw(MASK_KINDS), batch, length, gen)
    mask = mask.to(draw(st.sampled_from([torch.bool, torch.uint8, torch.float32])))
    return delta, mask, draw(TAUS), block


@settings(max_examples=40)
@given(case=cases())
def test_the_kernel_matches_the_float64_oracle(triton_kernels, case):
    delta, mask, tau, block = case
    got = triton_kernels.discounted_reverse_cumsum_triton(delta, gamma_from_tau(tau), mask,
                                                          out_dtype=torch.float32, block=block)
    x64 = delta.double()  # the input's own values: the kernel accumulates them in float32
    want = future_kl_reference(x64, mask, tau)
    tol = 1e-5 * future_kl_magnitude(x64, mask, tau) + 1e-30
    assert got.dtype == torch.float32 and got.shape == delta.shape
    assert torch.all((got.double() - want).abs() <= tol), (got.double() - want).abs().max()


def test_future_kl_takes_the_kernel_when_asked_and_agrees_with_torch(triton_kernels):
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    delta = torch.randn(2, 1500, generator=gen)
    mask = make_mask("prefix", 2, 1500, gen)
    a = future_kl(delta, mask, 32.0, backend="triton")
    b = future_kl(delta, mask, 32.0, backend="torch")
    assert a.dtype == b.dtype == torch.float32
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert future_kl(delta, mask, 32.0, backend="triton", out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_edge_cases_are_exact(triton_kernels):
    k = triton_kernels.discounted_reverse_cumsum_triton
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    # an empty mask over NaN and inf padding: exactly zero, nothing leaks
    delta = torch.randn(3, 50, generator=gen)
    delta[:, 7], delta[:, 20] = float("nan"), float("inf")
    out = k(delta, 0.9, torch.zeros(3, 50, dtype=torch.bool), block=16)
    assert bool((out == 0).all())
    # length 1: the masked input itself
    delta = torch.randn(4, 1, generator=gen)
    mask = torch.tensor([[True], [False], [True], [False]])
    assert torch.equal(k(delta, 0.9, mask), torch.where(mask, delta, torch.zeros(())))
    # length 0 and batch 0: the shape comes back
    for shape in [(3, 0), (0, 17)]:
        assert k(torch.zeros(shape), 0.9, torch.zeros(shape, dtype=torch.bool)).shape == shape
    # tau tiny (gamma = 0: the masked input) and huge (gamma = 1: a plain reverse cumsum)
    delta, mask = torch.randn(2, 100, generator=gen), make_mask("random", 2, 100, gen)
    masked = torch.where(mask, delta, torch.zeros(()))
    assert torch.equal(k(delta, gamma_from_tau(1e-3), mask, block=8), masked)
    plain = masked.double().flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(k(delta, gamma_from_tau(math.inf), mask, block=8).double(), plain, atol=1e-4)


def test_a_long_sequence_at_the_production_tile(triton_kernels):
    """L = 20480 (the 32B preset's response length) with the default 1024-position tiles, against the torch path
    in float64 (itself checked against the dense oracle in test_future_kl.py)."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    delta = torch.randn(1, 20480, generator=gen) * 0.3
    mask = make_mask("random", 1, 20480, gen)
    got = triton_kernels.discounted_reverse_cumsum_triton(delta, gamma_from_tau(256.0), mask)
    want = future_kl(delta.double(), mask, 256.0, backend="torch")
    tol = 1e-5 * future_kl_magnitude(delta.double(), mask, 256.0, future_kl) + 1e-30
    assert torch.all((got.double() - want).abs() <= tol)


def test_bad_input_is_refused_before_any_kernel(triton_kernels):
    k = triton_kernels.discounted_reverse_cumsum_triton
    with pytest.raises(TypeError, match="float64"):
        k(torch.zeros(2, 3, dtype=torch.float64), 0.9)
    with pytest.raises(ValueError, match="mask shape"):
        k(torch.zeros(2, 3), 0.9, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="power of two"):
        k(torch.zeros(2, 3), 0.9, block=12)


def test_the_loss_is_the_same_on_either_backend(triton_kernels, monkeypatch):
    gen = torch.Generator().manual_seed(torch.seed() % 2**32)
    b, n = 4, 700
    old = -torch.rand(b, n, generator=gen) * 2
    log_prob = (old + torch.randn(b, n, generator=gen) * 0.2).requires_grad_()
    adv = torch.randn(b, n, generator=gen)
    mask = make_mask("prefix", b, n, gen)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FIPO_FUTURE_KL_BACKEND", backend)
        out = fipo_policy_loss(old, log_prob, adv, mask, FIPOParams(tau=32.0))
        results[backend] = out
    assert torch.allclose(results["torch"].future_kl, results["triton"].future_kl, rtol=1e-5, atol=1e-5)
    assert torch.allclose(results["torch"].influence_weights, results["triton"].influence_weights, atol=1e-5)


def test_the_first_use_on_a_device_checks_the_kernel_and_falls_back_when_it_disagrees(triton_kernels, monkeypatch):
    fkl_module._triton_verified.clear()
    assert fkl_module._triton_agrees_here(torch.device("cpu"))
    fkl_module._triton_verified.clear()
    monkeypatch.setattr(triton_kernels, "discounted_reverse_cumsum_triton", lambda x, g, m=None, **kw: x * 0)
    with pytest.warns(UserWarning, match="disagrees with the torch path"):
        assert not fkl_module._triton_agrees_here(torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the verdict is kept: no second check, no second warning
        assert not fkl_module._triton_agrees_here(torch.device("cpu"))
    fkl_module._triton_verified.clear()


def test_backend_choice(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv("FIPO_FUTURE_KL_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend(x) == "torch"  # auto on a CPU tensor
    assert resolve_backend(x.double(), "auto") == "torch"
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        resolve_backend(x, "triton")
    with pytest.raises(ValueError, match="backend='cuda': allowed auto, torch, triton"):
        resolve_backend(x, "cuda")
    monkeypatch.setenv("FIPO_FUTURE_KL_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"\$FIPO_FUTURE_KL_BACKEND='fast'"):
        future_kl(x, None, 32.0)
