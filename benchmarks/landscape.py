"""Loss-landscape evaluation speed against this machine's matrix-product rate.

A landscape is forward passes and nothing else, so its speed is measured against the
fastest thing the machine does: the same process first times square matrix products in
fp32 and bf16, then fills a small grid of the seed 004 study's ResNet-20 (random weights:
speed does not depend on them) on 2,000 Fashion-sized images exactly as `cnnlab landscape`
does, in both precisions, and prints achieved FLOP/s as a share of the matrix-product rate,
and what a 21 x 21 grid would take. One warm batch per precision is timed first, as
`train.precision: auto` does: a precision more than `CLEAR` (3) times slower than the
other (bf16 on a CPU without bf16 instructions, where its grid ran past 5 minutes) is
reported from that batch instead of filling the grid (or timing its matrix products: one
2048 x 2048 bf16 product took 58 s there).

    .venv/bin/python benchmarks/landscape.py [--samples 2000] [--points 3] [--batch 500]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.peak import matmul_rate
from cnnlab.build import check_data
from cnnlab.catalog import RECIPES
from cnnlab.landscape.directions import filter_normalized
from cnnlab.landscape.surface import Settings, Surface, fill
from cnnlab.models import create_model
from cnnlab.precision import far_slower
from cnnlab.recipe import load_recipe
from cnnlab.runs import device_name

RECIPE = RECIPES / "fashion_landscape.yaml"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def batch_seconds(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> float:
    """One forward of `x` after a warm one: enough to tell a precision several times slower
    from the other without paying for its grid."""
    bf16 = dtype is torch.bfloat16
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe(RECIPE)
    model = create_model(recipe.model, 1, (28, 28), check_data(recipe)).eval()
    images = torch.randn(args.samples, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.samples,))
    batches = [(images[i : i + args.batch], labels[i : i + args.batch])
               for i in range(0, args.samples, args.batch)]  # fmt: skip
    with FlopCounterMode(display=False) as counter:
        model(images[:1])
    flops = counter.get_total_flops()  # per image, forward
    print(f"machine: {device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads")
    print(f"ResNet-20 forward: {flops / 1e6:.1f} MFLOP per image; {args.samples} images a point")
    x = batches[0][0]
    one = {name: batch_seconds(model, x, dtype) for name, dtype in DTYPES.items()}
    slow = far_slower({name: 1 / seconds for name, seconds in one.items()})
    for name, dtype in DTYPES.items():
        if name in slow:  # its matrix products too: 58 s each
            rate = len(x) * flops / one[name]
            print(
                f"{name}: one warm batch {rate / 1e9:6.1f} GFLOP/s, "
                f"{one[name] / min(one.values()):.1f}x the faster precision's time: reported "
                f"from that batch, no grid or matrix products (a point ~ "
                f"{one[name] * len(batches):.1f} s)",
                flush=True,
            )
            continue
        peak = matmul_rate(dtype)

        def evaluate(m, dtype=dtype):
            total = torch.zeros(())
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
                for x, y in batches:
                    total += torch.nn.functional.cross_entropy(m(x)["cls"].float(), y) * len(x)
            return (total / args.samples).item(), math.nan

        settings = Settings(2, args.points, 1.0, args.samples, 0)
        dirs = [filter_normalized(model, s) for s in (0, 1)]
        evaluate(model)  # warm-up: kernels chosen, caches filled
        surface = Surface.empty(settings)
        with torch.inference_mode():
            start = time.perf_counter()
            fill(model, surface, dirs, evaluate)
            seconds = time.perf_counter() - start
        per_point = seconds / args.points**2
        rate = args.samples * flops / per_point
        print(
            f"{name}: matrix products {peak / 1e9:6.1f} GFLOP/s; landscape {rate / 1e9:6.1f} "
            f"GFLOP/s = {rate / peak:.0%} of it; {per_point:.2f} s a point, 21 x 21 in "
            f"{441 * per_point / 60:.1f} min",
            flush=True,
        )


if __name__ == "__main__":
    main()
