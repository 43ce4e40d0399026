"""cnnlab's fused Mish: torch's function and gradient, extremes, autocast, hooks, fallback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.build import FUSED_MIN_STEPS, fused_kernels
from cnnlab.data.batches import prepare_splits
from cnnlab.models import activations
from cnnlab.models.activations import Mish, mish
from cnnlab.models.compiled import Kernels, compiled_kernels
from cnnlab.models.layers import create_act
from tests.conftest import ROOT

EXTREMES = [1e4, -1e4, 1e3, -1e3, 60.0, -60.0, 44.0, 21.0, 20.0, 19.9, -20.0, 0.0, -0.0, 1e-6]


def inputs(shape, dtype, channels_last: bool, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).mul(5).flatten()
    x[: len(EXTREMES)] = torch.tensor(EXTREMES)
    x = x.view(shape).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def both(x: torch.Tensor, g: torch.Tensor, dtype):
    """(ours, reference) outputs and input gradients; the reference in fp64 on the same input."""
    xa = x.clone().requires_grad_()
    ya = mish(xa)
    ya.backward(g)
    xr = x.double().requires_grad_()
    yr = F.mish(xr)
    yr.backward(g.double())
    return ya, xa.grad, yr.to(dtype), xr.grad.to(dtype)


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [((4, 6, 29, 31), True), ((4, 6, 29, 31), False), ((3, 6000), False), ((1, 17, 33, 31), True)],
)
def test_matches_torch_forward_and_gradient(dtype, shape, channels_last, compiled):
    x = inputs(shape, dtype, channels_last)
    g = torch.randn(shape).to(dtype)
    g = g.contiguous(memory_format=torch.channels_last) if channels_last else g
    with compiled_kernels(compiled):
        y, gx, y_ref, gx_ref = both(x, g, dtype)
    assert y.dtype == dtype and gx.dtype == dtype
    assert y.shape == x.shape and y.stride() == x.stride()
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(gx, gx_ref, **TOL[dtype])
    assert not activations.KERNELS.failed  # the fused path ran


def test_fp32_equals_aten_to_rounding():
    x = inputs((8, 16, 12, 12), torch.float32, True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(x)
    mish(xa).backward(g)
    F.mish(xb).backward(g)
    torch.testing.assert_close(mish(x), F.mish(x), rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "chunked"])
def test_extremes_are_exact_limits(compiled):
    x = torch.tensor([1e4, -1e4, 1e3, -1e3, 100.0, -100.0]).repeat(4000).requires_grad_()
    with compiled_kernels(compiled):
        y = mish(x)
        y.sum().backward()
    assert y.tolist()[:3] == [1e4, 0.0, 1e3] and y.tolist()[4] == 100.0
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert x.grad.tolist()[0] == 1.0 and x.grad.tolist()[2] == 1.0 and abs(x.grad[1]) < 1e-30


def test_non_dense_and_odd_layouts_fall_back_to_the_same_values():
    x = inputs((4, 6, 29, 62), torch.float32, False)[..., ::2]  # not dense
    torch.testing.assert_close(mish(x), F.mish(x))
    g = torch.randn(4, 6, 29, 31)  # contiguous gradient for a channels_last input
    _, gx, _, gx_ref = both(inputs((4, 6, 29, 31), torch.float32, True), g, torch.float32)
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])


def test_dynamic_batch_sizes_share_one_kernel():
    m = Mish()
    with compiled_kernels(True):
        for batch in (32, 7, 1, 32):
            x = inputs((batch, 8, 45, 46), torch.bfloat16, True)
            torch.testing.assert_close(m(x), F.mish(x), **TOL[torch.bfloat16])
    assert not activations.KERNELS.failed and len(activations.KERNELS.compiled) == 1


def test_small_tensors_use_aten():
    x = torch.randn(activations.MIN_NUMEL - 1)
    assert not activations._fast(x) and activations._fast(torch.randn(activations.MIN_NUMEL))
    torch.testing.assert_close(mish(x), F.mish(x))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "chunked"])
def test_inside_autocast_in_a_model(compiled):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), Mish(), nn.Flatten(), nn.LazyLinear(4)
    )
    ref = nn.Sequential(*[nn.Mish() if isinstance(m, Mish) else m for m in model])
    x = torch.randn(5, 3, 42, 42).contiguous(memory_format=torch.channels_last)
    model(x)
    grads = []
    for net in (model, ref):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), compiled_kernels(compiled):
            out = net(x)
        out.float().sum().backward()
        grads.append(net[0].weight.grad.clone())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(grads[0], grads[1], rtol=3e-2, atol=3e-2)


def test_double_backward_matches_torch():
    x = inputs((3, 6000), torch.float32, False).clamp(-30, 30).requires_grad_()
    (g1,) = torch.autograd.grad(mish(x).sum(), x, create_graph=True)
    (h1,) = torch.autograd.grad(g1.sum(), x)
    xr = x.detach().double().requires_grad_()
    (g2,) = torch.autograd.grad(F.mish(xr).sum(), xr, create_graph=True)
    (h2,) = torch.autograd.grad(g2.sum(), xr)
    torch.testing.assert_close(h1, h2.float(), rtol=1e-4, atol=1e-5)


def test_functorch_transforms_work():
    x = inputs((4, 5000), torch.float32, False)
    got = torch.func.vmap(torch.func.grad(lambda t: mish(t).sum()))(x)
    want = torch.func.vmap(torch.func.grad(lambda t: F.mish(t).sum()))(x)
    torch.testing.assert_close(got, want)


def test_module_is_an_nn_mish_and_hooks_fire():
    m = create_act("mish")
    assert isinstance(m, nn.Mish) and type(m).__name__ == "Mish" and not m.inplace
    assert create_act("mish") is not m
    seen = []
    m.register_forward_hook(lambda mod, i, o: seen.append("fwd"))
    m.register_full_backward_hook(lambda mod, gi, go: seen.append("bwd"))
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    m(x).sum().backward()
    assert seen == ["fwd", "bwd"]
    torch.testing.assert_close(x.grad, torch.func.grad(lambda t: F.mish(t).sum())(x.detach()))


def test_compiled_kernels_run_only_where_a_block_allows_them(monkeypatch):
    """What a short run, one pass over a split and the figures use: the same formulas
    uncompiled, a chunk at a time (nothing is compiled), by default and in a block that says
    False; the compiled kernels only in a block that says True (the training loop's)."""
    x = inputs((3, 8, 150, 150), torch.float32, True)  # three chunks, the last one short
    assert x.numel() % activations._CHUNK and x.numel() > 2 * activations._CHUNK
    g = torch.randn_like(x)
    compiles, chunked = [], []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiles.append(1) or real(fn, **kw))
    monkeypatch.setattr(activations, "KERNELS", Kernels("Mish", *activations.KERNELS.sources))
    for name in ("_chunked_forward", "_chunked_backward"):
        fn = getattr(activations, name)
        monkeypatch.setattr(activations, name, lambda *t, fn=fn: chunked.append(fn) or fn(*t))
    for dtype in (torch.float32, torch.bfloat16):
        with compiled_kernels(True), compiled_kernels(False):
            y, gx, y_ref, gx_ref = both(x.to(dtype), g.to(dtype), dtype)
        assert y.dtype == gx.dtype == dtype and y.stride() == x.stride()
        torch.testing.assert_close(y, y_ref, **TOL[dtype])
        torch.testing.assert_close(gx, gx_ref, **TOL[dtype])
    assert compiles == [] and len(chunked) == 4
    mish(x)  # no block: a user's own call, `cnnlab eval`
    assert compiles == [] and len(chunked) == 5
    with compiled_kernels(True):
        mish(x)
    assert compiles and len(chunked) == 5


@pytest.mark.parametrize(
    ("sets", "fused"),
    [
        ([], False),  # 2,000 images less validation, batch 64, 1 epoch: under 30 steps
        (["train.fused_kernels=true"], True),
        (["train.epochs=14"], True),  # over 14 x 25 steps
        (["train.epochs=14", "train.fused_kernels=false"], False),
    ],
)
def test_auto_compiles_for_runs_long_enough_to_pay_for_it(tiny, sets, fused):
    recipe = tiny(*sets)
    needed = {t.target for t in recipe.tasks.values()}
    splits = prepare_splits(recipe.data, recipe.seed, needed, torch.device("cpu"), True)
    steps = splits.steps_per_epoch(recipe.train.batch_size) * recipe.train.epochs
    assert (steps >= FUSED_MIN_STEPS) == (recipe.train.epochs == 14)
    assert fused_kernels(recipe, splits) is fused


def test_a_failing_compile_falls_back_to_the_chunked_formulas(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    kernels = Kernels("Mish", broken, broken)
    monkeypatch.setattr(activations, "KERNELS", kernels)
    x = inputs((2, 4, 55, 55), torch.float32, True).requires_grad_()
    with compiled_kernels(True):
        y = mish(x)
    assert kernels.failed
    y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    F.mish(xr).sum().backward()
    torch.testing.assert_close(y, F.mish(xr))
    torch.testing.assert_close(x.grad, xr.grad)


FALLBACK = """
import torch, torch.nn.functional as F
import torch._inductor.config as cfg
cfg.cpp.cxx = ("/nonexistent/c++",)
from cnnlab.models import activations
from cnnlab.models.compiled import compiled_kernels
x = torch.randn(2, 4, 55, 55).contiguous(memory_format=torch.channels_last).requires_grad_()
with compiled_kernels(True):
    y = activations.mish(x)
y.sum().backward()
xr = x.detach().clone().requires_grad_()
F.mish(xr).sum().backward()
torch.testing.assert_close(y, F.mish(xr))
torch.testing.assert_close(x.grad, xr.grad)
assert activations.KERNELS.failed
print("fallback ok")
"""


def test_no_cpp_compiler_falls_back_silently(tmp_path):
    env = {
        "PYTHONPATH": str(ROOT),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fallback ok" in run.stdout
