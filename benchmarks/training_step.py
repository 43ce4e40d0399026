"""Seed 003's training step: cnnlab's fused optimizer and CPU dropout against torch's defaults.

The network is gsn_multitask's (Conv 1→8→16→32→64, no pooling, Linear 64·28·28 → 256 with
the recipe's dropout before and after it, a 135-way and a 6-way head), built by cnnlab from
the recipe. Its 12.8 M-weight dense layer makes the optimizer update and the dropout mask over
50,176 features weigh as much as the convolutions. Both sides train the same model on the
same batches, in the same precision, interleaved round by round so that a load change on
the machine hits both alike; each side's time is its fastest round.

- cnnlab: the optimizer `build_optimizer` makes (fused Adam on the CPU) and cnnlab's Dropout.
- torch defaults: `torch.optim.Adam` as a seed script writes it (foreach) and nn.Dropout.

The precision is `auto`'s unless given: `cnnlab.precision.measure` on this model and batch,
so a CPU without bf16 instructions (a loaded EPYC-C: a bf16 step 4.6 s, fp32 0.9 s; the
default bf16 run would have taken over ten minutes) compares the two sides in fp32 and
reports the slower precision from that measurement.

    PYTHONPATH=. .venv/bin/python benchmarks/training_step.py [--steps 30]
        [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.catalog import RECIPES
from cnnlab.models import create_model
from cnnlab.models.dropout import Dropout
from cnnlab.optim import build_optimizer
from cnnlab.precision import measure
from cnnlab.recipe import load_recipe
from cnnlab.runs import device_name
from cnnlab.tasks import TargetSpec, create_tasks

BATCH = 64


def seed_003_model() -> tuple[nn.Module, object]:
    recipe = load_recipe(RECIPES / "gsn_multitask.yaml")
    tasks = create_tasks(recipe.tasks)
    tasks["cls"].fit(TargetSpec(classes=[str(i) for i in range(135)]))
    tasks["cnt"].fit(TargetSpec(components=[f"c{i}" for i in range(6)]), lambda: torch.rand(100, 6))
    return create_model(recipe.model, 1, (28, 28), tasks), recipe


def torch_dropouts(model: nn.Module) -> nn.Module:
    """The same model with nn.Dropout wherever cnnlab's Dropout is."""
    for name, child in model.named_children():
        if isinstance(child, Dropout):
            setattr(model, name, nn.Dropout(child.p))
        else:
            torch_dropouts(child)
    return model


X = torch.rand(BATCH, 1, 28, 28)  # one batch for both sides and for the measurement
Y = torch.randint(0, 135, (BATCH,))
COUNTS = torch.rand(BATCH, 6) * 9


def loss_of(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(out["cls"].float(), Y) + F.smooth_l1_loss(out["cnt"].float(), COUNTS)


def pick_precision(model: nn.Module, requested: str) -> str:
    """`auto`: the faster by `cnnlab.precision.measure`, whose one warm step per precision
    settles a precision more than 3x slower without timing it further."""
    if requested != "auto":
        return requested
    choice = measure(torch.device("cpu"), model, X, loss_of)
    figures = ", ".join(f"{p} {v:,.0f}" for p, v in (choice.images_per_s or {}).items())
    print(f"auto's measurement (forward + backward, images/s): {figures}", flush=True)
    return choice.precision


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, precision: str):
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_of(model(X))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    ours, recipe = seed_003_model()
    theirs = torch_dropouts(copy.deepcopy(ours))
    print(f"device: {device_name(torch.device('cpu'))}, threads: {torch.get_num_threads()}, "
          f"batch {BATCH}", flush=True)  # fmt: skip
    args.precision = pick_precision(ours, args.precision)
    print(f"precision: {args.precision}", flush=True)
    sides = {
        "cnnlab": make_step(ours, build_optimizer(recipe.train.optimizer, ours), args.precision),
        "torch defaults": make_step(
            theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3), args.precision
        ),
    }
    ours.train()
    theirs.train()
    for step in sides.values():
        for _ in range(3):  # first steps allocate and pick kernels
            step()
    best = dict.fromkeys(sides, float("inf"))
    for round_ in range(args.rounds):
        for name, step in sides.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds = (time.perf_counter() - start) / args.steps
            best[name] = min(best[name], seconds)
            print(f"round {round_ + 1}, {name}: {seconds * 1000:.1f} ms per step", flush=True)
    for name, seconds in best.items():
        print(f"{name:>15}: {seconds * 1000:6.1f} ms per step, {BATCH / seconds:6.0f} images/s")
    ratio = best["torch defaults"] / best["cnnlab"]
    print(f"torch defaults / cnnlab: {ratio:.2f}x")


if __name__ == "__main__":
    main()
