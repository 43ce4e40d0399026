"""aten's activations and 2×2 max-pool versus cnnlab's (`create_act`, `MaxPool2d`), forward +
backward, on the CPU.

The shape of seed 002's first Mish (and max-pool) at 224 px, (32, 32, 224, 224)
channels_last, in fp32 and bf16; median of interleaved repeats (the machine may be shared).
The first call of a compiled layer includes compiling it (inductor; cached on disk
afterwards, see TORCHINDUCTOR_CACHE_DIR), printed apart. "mish chunked" is cnnlab's Mish
where nothing is compiled (short runs, figures and reports): the same formulas in eager
ops, a cache-sized chunk at a time.

    PYTHONPATH=. .venv/bin/python benchmarks/activations.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cnnlab.allocator import keep_freed_memory
from cnnlab.models.compiled import compiled_kernels
from cnnlab.models.layers import ACTIVATIONS, create_act
from cnnlab.models.pool import MaxPool2d

ATEN = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "mish": F.mish,
    "leaky_relu": F.leaky_relu,
}


def step(fn, x: torch.Tensor, g: torch.Tensor) -> float:
    x.grad = None
    t = time.perf_counter()
    fn(x).backward(g)
    return time.perf_counter() - t


def compare(name: str, ours, aten, x: torch.Tensor, g: torch.Tensor, repeats: int) -> None:
    first = step(ours, x, g)
    step(aten, x, g)
    times: dict[str, list[float]] = {"aten": [], "cnnlab": []}
    for _ in range(repeats):  # interleaved
        times["aten"].append(step(aten, x, g))
        times["cnnlab"].append(step(ours, x, g))
    a, c = (statistics.median(times[k]) * 1000 for k in ("aten", "cnnlab"))
    dt = str(x.dtype).removeprefix("torch.")
    print(f"{name:<14}{dt:<10}{a:>9.0f}{c:>11.0f}{a / c:>9.2f}x{first:>12.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=4, default=[32, 32, 224, 224])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every cnnlab command does: freed maps are reused, not faulted in
    print(
        f"shape {tuple(args.shape)} channels_last, {args.threads} threads, fwd+bwd, "
        f"median of {args.repeats}"
    )
    print(
        f"{'activation':<14}{'dtype':<10}{'aten ms':>9}{'cnnlab ms':>11}"
        f"{'speed-up':>10}{'1st call s':>12}"
    )
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(args.shape).mul(3).to(dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        g = torch.randn_like(x)
        with compiled_kernels(True):
            for name in ACTIVATIONS:
                compare(name, create_act(name), ATEN[name], x, g, args.repeats)
        compare("mish chunked", create_act("mish"), F.mish, x, g, args.repeats)
        pooled = g[:, :, ::2, ::2].contiguous(memory_format=torch.channels_last)
        with compiled_kernels(True):
            compare(
                "maxpool 2x2", MaxPool2d(2), lambda t: F.max_pool2d(t, 2), x, pooled, args.repeats
            )


if __name__ == "__main__":
    main()
