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


PROBE = 512  # the side of the products that first compare bf16 with fp32


def gflops(rate: float) -> str:
    return f"{rate / 1e9:,.{0 if rate >= 1e10 else 2}f} GFLOP/s"


def main() -> None:
    """Both rates, fp32 first. bf16 is first compared with fp32 on small products; where it
    is far slower (precision.far_slower, as `auto` judges it: emulated, on a CPU without bf16
    instructions) it is reported from them: one 2048 product took 43 s there."""
    from cnnlab.precision import CLEAR, cpu_bf16, far_slower
    from cnnlab.runs import device_name

    print(f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads; bf16 "
          f"instructions: {({True: 'yes', False: 'no', None: 'unknown'})[cpu_bf16()]}")  # fmt: skip
    fp32 = matmul_rate(torch.float32)
    print(f"fp32: {gflops(fp32)} (2048 x 2048 products, best of 5)", flush=True)
    probe = {
        "fp32": matmul_rate(torch.float32, PROBE),
        "bf16": matmul_rate(torch.bfloat16, PROBE, 1),
    }
    if "bf16" in far_slower(probe):
        ratio = probe["bf16"] / probe["fp32"]
        print(f"bf16: {gflops(probe['bf16'])} ({PROBE} x {PROBE} products: over {CLEAR:g}x "
              f"slower than fp32's, not timed at 2048); bf16 / fp32 = {ratio:.3f}")  # fmt: skip
        return
    bf16 = matmul_rate(torch.bfloat16)
    print(f"bf16: {gflops(bf16)} (best of 5); bf16 / fp32 = {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
