"""Seconds and FLOPs of training until Fashion-MNIST test accuracy first reaches a target.

Each seed trains the recipe as `cnnlab train` would (same Trainer, same run folder). After
every epoch the weights the run is judged by (the average, when the recipe keeps one) are
scored on the test set with the recipe's test-time views: a measurement only, since the run
itself picks its checkpoint on validation. The clock is the loop's own training time (the
steps, not validation or this scoring). At the end the run's own test of its best
checkpoint gives the final accuracy and ink RMSE.

FLOPs are the arithmetic a host of any speed must do: images trained until the epoch that
first reaches the target, times one training image's forward + loss + backward as torch's
FLOP counter sees it on a real batch (the optimizer's few per weight left out, as FLOP
counts of training usually are). Test-time views and validation are not training FLOPs.
The demo's network costs about 46 MFLOP a training image, so an epoch of 57,088 images is
about 2.6 TFLOP (10^12).

    .venv/bin/python benchmarks/time_to_accuracy.py [--recipe fashion_fast]
        [--seeds 0 1 2] [--target 0.93] [--set key=value ...]

One seed by default (about 4 minutes on a 2-core CPU without bf16); issue 33's bar, 3 of 3
seeds within 10 PFLOP, takes `--seeds 0 1 2`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile

import torch
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.build import build
from cnnlab.catalog import recipe_file
from cnnlab.experiment import train_in
from cnnlab.loop import Trainer
from cnnlab.recipe import load_recipe
from cnnlab.runs import RunFolder, device_name
from cnnlab.tasks.meter import total_loss


def flops_per_image(trainer: Trainer) -> float:
    """One training image's forward, loss and backward, counted on a copy of the model and
    the first batch of a throwaway generator: the run itself is left untouched (dropout's
    draws come from the global generators, the device's included, restored after)."""
    model = copy.deepcopy(trainer.model).train()
    device = trainer.device
    gen = torch.Generator(device=device).manual_seed(0)  # augmentation draws on the device
    batch = trainer.recipe.train.batch_size
    splits, recipe = trainer.splits, trainer.recipe
    x, targets = next(splits.train_batches(batch, gen, recipe.data.augment, trainer.needed))
    cuda = [device] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=cuda, device_type="cuda"),
        FlopCounterMode(display=False) as counter,
        trainer.autocast(),
    ):
        total, _ = total_loss(trainer.tasks, model, model(x), targets)
        total.backward()
    return counter.get_total_flops() / x.shape[0]


def one_seed(recipe_name: str, seed: int, target: float, sets: list[str], out: str) -> dict:
    recipe = load_recipe(
        recipe_file(recipe_name),
        [*sets, f"seed={seed}", f"output_dir={out}", "train.report=false", "train.progress=false"],
    )
    trainer = Trainer(build(recipe))
    per_image = flops_per_image(trainer)
    per_epoch = trainer.steps_per_epoch * recipe.train.batch_size * per_image
    curve: list[tuple[float, float]] = []  # (training seconds, test accuracy) per epoch

    def score(row: dict) -> None:
        accuracy = trainer.measure(trainer.judged, trainer.views)["test.cls.accuracy"]
        curve.append((trainer.state.elapsed, accuracy))
        seconds = f"{trainer.state.elapsed:.0f} s trained"
        print(f"  seed {seed}, epoch {len(curve)}: {seconds}, test {accuracy:.2%}", flush=True)

    run = RunFolder.create(recipe)
    with run.lock():
        train_in(trainer, run, on_epoch=score)
    final = run.test_metrics()  # the best checkpoint, with the recipe's test-time views
    one_view = trainer.measure(trainer.model, None)["test.cls.accuracy"]  # test() loaded best
    first = next((i for i, (_, acc) in enumerate(curve) if acc >= target), None)
    reached = None if first is None else curve[first][0]
    return {
        "seed": seed,
        "seconds_to_target": reached,
        "tflop_to_target": None if first is None else (first + 1) * per_epoch / 1e12,
        "tflop_per_epoch": per_epoch / 1e12,
        "train_seconds": trainer.state.elapsed,
        "epochs": len(curve),
        "accuracy": final["test.cls.accuracy"],
        "one_view": one_view,
        "rmse": final.get("test.ink.rmse"),
        "precision": trainer.precision.precision,
        "precision_why": trainer.precision.describe(),  # how auto chose it (env.json has it)
        # the loop's own figure (training steps only), the median epoch: the first one pays
        # for picking kernels (cuDNN's autotuning on a GPU)
        "images_per_s": statistics.median(row["images_per_s"] for row in run.read_metrics()),
        "device": device_name(trainer.device),
        "curve": curve,
        "run": run.path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fashion_fast")
    # one seed by default: under 5 minutes on a 2-core CPU; the bar takes --seeds 0 1 2
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    print(f"{args.recipe}: seconds and FLOPs of training to {args.target:.1%} test accuracy")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            r = one_seed(args.recipe, seed, args.target, args.sets, out)
            rows.append(r)
            to = (
                f"{r['seconds_to_target']:.1f} s, {r['tflop_to_target']:.3g} TFLOP"
                if r["seconds_to_target"]
                else "not reached"
            )
            rmse = f"{r['rmse']:.4f}" if r["rmse"] is not None else "-"
            print(
                f"seed {seed}: {to} (training {r['train_seconds']:.1f} s, {r['epochs']} epochs, "
                f"{r['precision']}); final test accuracy {r['accuracy']:.2%} "
                f"({r['one_view']:.2%} without test-time views), ink RMSE {rmse}; "
                f"{r['tflop_per_epoch']:.3g} TFLOP an epoch",
                flush=True,
            )
            print("  per epoch:", "  ".join(f"{s:.0f}s {a:.2%}" for s, a in r["curve"]))
    flops = [r["tflop_to_target"] for r in rows if r["tflop_to_target"] is not None]
    if flops:
        print(f"TFLOP to target: {', '.join(f'{f:.2f}' for f in flops)} (max {max(flops):.2f})")
    times = [r["seconds_to_target"] for r in rows]
    hit = [t for t in times if t is not None]
    median = statistics.median(t if t is not None else float("inf") for t in times)
    print(
        f"reached on {len(hit)} of {len(rows)} seeds; median seconds to target: "
        + (f"{median:.1f}" if hit and median != float("inf") else "not reached")
    )
    seconds = statistics.median(r["train_seconds"] for r in rows)
    print(f"median training seconds: {seconds:.1f} on {rows[0]['device']}")


if __name__ == "__main__":
    main()
