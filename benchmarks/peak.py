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
    """Both rates, fp32 first; a bf16 product more than 3x slower than fp32's (emulated, on
    a CPU without bf16 instructions) is reported from one product, not repeated."""
    from cnnlab.precision import cpu_bf16
    from cnnlab.runs import device_name

    print(f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads; bf16 "
          f"instructions: {({True: 'yes', False: 'no', None: 'unknown'})[cpu_bf16()]}")  # fmt: skip
    fp32 = matmul_rate(torch.float32)
    print(f"fp32: {fp32 / 1e9:,.0f} GFLOP/s (2048 x 2048 products, best of 5)", flush=True)
    one = matmul_rate(torch.bfloat16, repeats=1)
    slow = one < fp32 / 3
    bf16 = one if slow else matmul_rate(torch.bfloat16)
    how = "one product: over 3x slower, not repeated" if slow else "best of 5"
    print(f"bf16: {bf16 / 1e9:,.0f} GFLOP/s ({how}); bf16 / fp32 = {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
