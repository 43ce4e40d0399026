"""The machine's matrix-product rate: the yardstick the speed benchmarks hold FLOP/s to."""

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
