"""Where a training step's time goes: torch's profiler over cnnlab's own step and data path.

The steps are `Trainer.train_step` on batches from the recipe's own `train_batches` (gather,
augmentation, normalization), so what is profiled is what `cnnlab train` runs. Every
operator's own CPU time goes to one kind of work (convolutions, max-pooling, batch norm, ...;
anything under the data path counts as data). The step is also timed without the profiler.
The last lines hold the convolutions against the throughput bar: at 60 % of the matrix-product
rate this process measures, how long may a whole step take, and how much of that do the
convolutions alone use?

    PYTHONPATH=. .venv/bin/python benchmarks/step_profile.py [--recipe fashion_fast]
        [--batch 64] [--steps 40] [--set train.precision=fp32 ...]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.peak import precision_rate
from benchmarks.throughput import training_flops
from cnnlab.build import build
from cnnlab.catalog import recipe_file
from cnnlab.loop import Trainer
from cnnlab.models.compiled import compiled_kernels
from cnnlab.recipe import load_recipe
from cnnlab.runs import device_name

DATA = "cnnlab: data path"
# (kind of work, substrings of the operator names that count as it); the first match wins
KINDS = [
    ("convolution", ("convolution",)),
    ("max-pool", ("max_pool",)),
    ("zero-fill (mostly max-pool gradients)", ("fill_", "zero_")),
    ("batch norm", ("batch_norm",)),
    ("dense layers (mm, addmm)", ("aten::mm", "aten::addmm")),
    ("optimizer, weight average", ("adam", "optimizer", "lerp", "foreach", "sgd")),
    ("casts and copies", ("copy_", "_to_copy")),
    ("activations", ("relu", "threshold", "clamp_min", "gelu", "silu", "mish")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "mse_loss")),
]


def kind_of(event) -> str:
    node = event
    while node is not None:
        if node.name == DATA:
            return "data: gather, augment, normalize"
        node = node.cpu_parent
    name = event.name.lower()
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "other")


def steps(trainer: Trainer, batches, n: int) -> None:
    """As `Trainer.fit` runs them: with the compiled kernels where the recipe trains with them."""
    with compiled_kernels(trainer.built.fused):
        for _ in range(n):
            with record_function(DATA):
                x, targets = next(batches)
            trainer.train_step(x, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fashion_fast")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="steps profiled (and timed)")
    parser.add_argument("--set", action="append", default=[], help="recipe override")
    args = parser.parse_args()

    overrides = [f"train.batch_size={args.batch}", "train.progress=false", *args.set]
    recipe = load_recipe(recipe_file(args.recipe), overrides)
    trainer = Trainer(build(recipe))  # train_step writes no run folder
    gen = torch.Generator().manual_seed(0)
    need = 20 + 2 * args.steps + 1  # warm-up, timed, profiled, and one to count FLOPs
    if trainer.steps_per_epoch < need:
        parser.error(f"the recipe's epoch has {trainer.steps_per_epoch} steps; {need} needed")
    batches = trainer.splits.train_batches(args.batch, gen, recipe.data.augment, trainer.needed)
    trainer.model.train()
    steps(trainer, batches, 20)  # warm-up: oneDNN's kernels, the allocator's blocks
    start = time.perf_counter()
    steps(trainer, batches, args.steps)
    wall = (time.perf_counter() - start) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps(trainer, batches, args.steps)

    per_kind: Counter[str] = Counter()
    for event in prof.events():
        per_kind[kind_of(event)] += event.self_cpu_time_total / args.steps / 1e3  # ms a step
    profiled = sum(per_kind.values())
    chosen = trainer.precision.precision
    where = f"{device_name(trainer.device)}, {torch.get_num_threads()} threads"
    print(f"{recipe.name}, batch {args.batch}, {chosen}, {where}")
    print(f"a step: {wall:.2f} ms timed, {profiled:.2f} ms of operators under the profiler")
    for kind, ms in per_kind.most_common():
        print(f"  {kind:<40} {ms:6.2f} ms  {ms / profiled:6.1%}")

    x, _ = next(batches)
    flops = training_flops(trainer.model, x.float(), torch.zeros(x.shape[0]))
    peak = precision_rate(chosen)
    budget = args.batch * flops / (0.6 * peak) * 1e3
    conv = per_kind["convolution"]
    print(
        f"{flops / 1e6:.1f} MFLOP per training image; {chosen} matrix products: "
        f"{peak / 1e9:.0f} GFLOP/s. At 60 % of that a step of {args.batch} takes {budget:.2f} ms; "
        f"the convolutions alone take {conv:.2f} ms ({conv / budget:.0%} of it), leaving "
        f"{budget - conv:.2f} ms for the {profiled - conv:.2f} ms of everything else."
    )


if __name__ == "__main__":
    main()
