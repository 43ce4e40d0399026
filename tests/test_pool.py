"""The compiled 2×2 max-pool equals aten's, forward and backward, ties included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.models import pool
from cnnlab.models.compiled import compiled_kernels
from cnnlab.models.pool import MaxPool2d


def maps(shape, dtype, ties: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    if ties:  # few distinct values: most windows hold their maximum more than once
        x = x.mul(2).round().clamp(-2, 2)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def both(x: torch.Tensor, grad: torch.Tensor | None = None):
    """(output, input gradient) of cnnlab's pool and of aten's on the same input."""
    results = []
    for run in (lambda t: MaxPool2d(2)(t), lambda t: F.max_pool2d(t, 2)):
        t = x.detach().clone().requires_grad_()
        y = run(t)
        g = torch.randn_like(y) if grad is None else grad
        grad = g
        y.backward(g)
        results.append((y.detach(), t.grad))
    return results


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Kernels of this module's own, allowed as the training loop allows them: a test
    elsewhere in the process cannot have broken them."""
    monkeypatch.setattr(pool, "KERNELS", pool.Kernels("max-pool", *pool.KERNELS.sources, False))
    monkeypatch.setattr(pool, "MIN_VALUES", 1 << 14)  # small maps, the same kernels
    with compiled_kernels(True):
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
def test_forward_and_backward_equal_atens(dtype, ties):
    for batch in (3, 5, 1):  # one compiled variant for batches of 2 and more; 1 its own
        x = maps((batch, 16, 32, 24), dtype, ties)
        (y, dx), (y_ref, dx_ref) = both(x)
        assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert not pool.KERNELS.failed  # the compiled path ran


def test_what_it_does_not_cover_runs_atens():
    odd = maps((2, 16, 33, 32), torch.float32, False)
    assert not pool._fast(MaxPool2d(2), odd.requires_grad_())
    nchw = torch.randn(2, 16, 32, 32, requires_grad=True)
    assert not pool._fast(MaxPool2d(2), nchw)
    x = maps((2, 16, 32, 32), torch.float32, False).requires_grad_()
    assert pool._fast(MaxPool2d(2), x) and not pool._fast(MaxPool2d(3), x)
    with torch.no_grad():
        assert not pool._fast(MaxPool2d(2), x)  # evaluation: aten
    (y, dx), (y_ref, dx_ref) = both(odd)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)


def test_a_failing_compile_falls_back_to_aten(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    kernels = pool.Kernels("max-pool", broken, broken, dynamic=False)
    monkeypatch.setattr(pool, "KERNELS", kernels)
    x = maps((2, 16, 32, 32), torch.float32, True)
    (y, dx), (y_ref, dx_ref) = both(x)
    assert kernels.failed and torch.equal(y, y_ref) and torch.equal(dx, dx_ref)


def test_small_maps_run_atens(monkeypatch):
    monkeypatch.setattr(pool, "MIN_VALUES", 1 << 22)
    x = maps((2, 16, 32, 32), torch.float32, False).requires_grad_()
    assert not pool._fast(MaxPool2d(2), x)
    big = torch.empty(16, 32, 96, 96).contiguous(memory_format=torch.channels_last)
    assert pool._fast(MaxPool2d(2), big.requires_grad_())


def test_many_map_shapes_keep_their_compiled_kernels():
    """More shapes and precisions than dynamo keeps variants of one function: its limit (8)
    lowered to 2 here, so 4 kernels prove it at the cost of 4 compilations, not 10. (Through
    dynamo's own config.patch: pytest's monkeypatch deleted the setting on undo, and every
    later compile in the process failed.)"""
    with torch._dynamo.config.patch(recompile_limit=2):
        for channels in (4, 8):
            for dtype in (torch.float32, torch.bfloat16):
                x = maps((2, channels, 64, 64), dtype, False)
                (y, dx), (y_ref, dx_ref) = both(x)
                assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
    assert not pool.KERNELS.failed and len(pool.KERNELS.compiled) == 4
