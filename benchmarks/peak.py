"""The machine's matrix-product rate: the yardstick the speed benchmarks hold FLOP/s to.

PYTHONPATH=. .venv/bin/python benchmarks/peak.py
"""

from __future__ import annotations

import math
import time

import torch


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product, the best of `repeats`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def precision_rate(precision: str) -> float:
    """The yardstick for a loop that runs in `precision` ("bf16" or "fp32")."""
    return matmul_rate(torch.bfloat16 if precision == "bf16" else torch.float32)


def main() -> None:
    """Both rates, fp32 first; a bf16 product far slower than fp32's (precision.far_slower,
    as `auto` judges it: emulated, on a CPU without bf16 instructions) is reported from one
    product, not repeated."""
    from cnnlab.precision import CLEAR, cpu_bf16, far_slower
    from cnnlab.runs import device_name

    print(f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads; bf16 "
          f"instructions: {({True: 'yes', False: 'no', None: 'unknown'})[cpu_bf16()]}")  # fmt: skip
    fp32 = matmul_rate(torch.float32)
    print(f"fp32: {fp32 / 1e9:,.0f} GFLOP/s (2048 x 2048 products, best of 5)", flush=True)
    one = matmul_rate(torch.bfloat16, repeats=1)
    slow = "bf16" in far_slower({"fp32": fp32, "bf16": one})
    bf16 = one if slow else matmul_rate(torch.bfloat16)
    how = f"one product: over {CLEAR:g}x slower, not repeated" if slow else "best of 5"
    print(f"bf16: {bf16 / 1e9:,.0f} GFLOP/s ({how}); bf16 / fp32 = {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
