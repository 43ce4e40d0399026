"""Training images/s: cnnlab's loop versus a seed-style loop, same model, data and batch.

The reference is how the seed reports train: a `Dataset` whose `__getitem__` converts one
PIL image at a time through torchvision transforms, a `DataLoader` with worker processes,
NCHW fp32, and `loss.item()` every step. cnnlab keeps uint8 tensors in memory, gathers and
augments whole batches, runs channels_last, in the precision `auto` picks, and also in fp32
and in bf16, so the pick can be judged against both.
Both sides run in this process on the same Fashion-MNIST images, interleaved, and each
figure is the median of `--repeats` runs. Before any run, `auto`'s measurement
(`cnnlab.precision.measure`) times the benchmark's own model and batch in each precision;
one measured more than `CLEAR` (3) times slower than the fastest (bf16 on a CPU without
bf16 instructions) is reported from that measurement, marked so, instead of trained in
full: on such a host its full runs alone took minutes and could only confirm it loses.
A pass is sized from that measurement (about `--pass-s` seconds of forward + backward, at
most `--images`), and repeats stop early when the next would overrun `--budget` seconds,
so the script ends in a few minutes on a slow or loaded host too; it prints each run as it
finishes. The
FLOPs of one training step (forward and backward, counted by torch's FLOP counter) times
cnnlab's images/s are then held against the matrix-product rate this process measures in
the precision cnnlab chose.

    PYTHONPATH=. .venv/bin/python benchmarks/throughput.py [--images 12800] [--pass-s 3]
        [--batch 64] [--repeats 3] [--budget 200] [--set model.filters=[32,128,256] ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from benchmarks.peak import precision_rate
from cnnlab.build import Built, build
from cnnlab.catalog import RECIPES
from cnnlab.loop import Trainer
from cnnlab.models import create_model
from cnnlab.precision import CLEAR, PRECISIONS, Choice, far_slower, measure
from cnnlab.recipe import load_recipe
from cnnlab.runs import RunFolder, device_name
from cnnlab.tasks import total_loss

DEMO = RECIPES / "fashion_fast.yaml"  # the demo's recipe, so its network


class SeedStyleDataset(torch.utils.data.Dataset):
    """Per-sample: uint8 array -> PIL -> transforms -> tensor; ink from the [0, 1] image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images, self.labels = images.numpy(), labels
        self.to_tensor = transforms.Compose(
            [
                transforms.RandomHorizontalFlip(),
                transforms.RandomCrop(28, padding=2),
                transforms.ToTensor(),
            ]
        )
        self.normalize = transforms.Normalize((mean,), (std,))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.to_tensor(Image.fromarray(self.images[i, 0]))
        return self.normalize(x), self.labels[i], x.mean()


def reference_loop(model, images, labels, batch: int, workers: int) -> float:
    """Images/s of one timed pass after a short warm-up, seed style."""
    data = SeedStyleDataset(images, labels, 0.286, 0.353)
    loader = DataLoader(
        data, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=True
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ink = model.heads["ink"]

    def one_pass(limit: int | None) -> int:
        seen = 0
        for step, (x, y, target_ink) in enumerate(loader):
            if limit is not None and step >= limit:
                break
            out = model(x)
            loss = F.cross_entropy(out["cls"], y) + F.mse_loss(out["ink"], ink.encode(target_ink))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _ = loss.item()  # the seed loops log the running loss every step
            seen += x.shape[0]
        return seen

    model.train()
    one_pass(20)
    start = time.perf_counter()
    seen = one_pass(None)
    return seen / (time.perf_counter() - start)


def training_flops(model: torch.nn.Module, x: torch.Tensor, ink: torch.Tensor) -> float:
    """FLOPs of one image's training step: forward and backward (the optimizer's few per
    weight are left out, as FLOP counts of training usually do)."""
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        loss = out["cls"].logsumexp(1).mean() + F.mse_loss(out["ink"], ink)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def cnnlab_loop(recipe) -> tuple[float, Choice]:
    """(images/s that cnnlab's loop reports for its second epoch, the precision it ran in
    and why)."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe.output_dir = tmp
        trainer = Trainer(build(recipe), RunFolder.create(recipe))
        trainer.fit()
        return trainer.run.read_metrics()[-1]["images_per_s"], trainer.precision


def measured_rates(built: Built, batch: int) -> dict[str, float]:
    """Forward + backward images/s per precision, as `auto` measures them, on this model
    and a real training batch, measured afresh: a cached figure may be from another load."""
    x, targets = next(built.splits.eval_batches("train", batch, built.needed))

    def loss_of(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return total_loss(built.tasks, built.model, outputs, targets)[0]

    choice = measure(built.device, built.model, x, loss_of)
    return choice.images_per_s or {}


def timed(label: str, run: Callable[[], float]) -> float:
    """Images/s of `run()`, printed with its wall time as soon as it ends."""
    start = time.perf_counter()
    speed = run()
    print(
        f"    {label:<18} {speed:8,.0f} images/s  ({time.perf_counter() - start:.0f} s)", flush=True
    )
    return speed


def median_line(values: list[float]) -> str:
    return f"    median of {len(values)}: " + ", ".join(f"{v:,.0f}" for v in values)


FLOOR = 1280  # images per pass at the least: 20 batches of 64, past the first steps' cost


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=12800, help="training images per pass, at most"
    )
    parser.add_argument(
        "--pass-s",
        type=float,
        default=3.0,
        help="seconds of forward + backward a pass is sized to, at the measured rate",
    )
    parser.add_argument("--batch", type=int, default=64, help="batch size (the seed's: 64)")
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the reference"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setup, at most")
    parser.add_argument(
        "--budget", type=float, default=200, help="seconds after which no repeat starts"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="recipe override, e.g. model.filters=[...]"
    )
    return parser.parse_args()


def overrides_for(args: argparse.Namespace, images: int) -> list[str]:
    """The demo's recipe at this size: two epochs (the second is timed), on the CPU."""
    return [
        f"data.train_subset={int(images / 0.95) + 1}",  # the demo validates on 5 %
        f"train.batch_size={args.batch}",
        "train.epochs=2",
        "train.progress=false",
        "train.device=cpu",
        *args.set,
    ]


def sized(args: argparse.Namespace, rates: dict[str, float]) -> int:
    """Images per pass: about --pass-s seconds at the fastest measured rate, so that a slow
    or loaded host runs shorter passes instead of overrunning; FLOOR to --images."""
    return int(min(args.images, max(FLOOR, max(rates.values()) * args.pass_s)))


def main() -> None:
    started = time.perf_counter()
    args = parse_args()
    print(f"device: {device_name(torch.device('cpu'))}, threads: {torch.get_num_threads()}")
    probe = build(load_recipe(DEMO, [*overrides_for(args, FLOOR), "train.precision=fp32"]))
    rates = measured_rates(probe, args.batch)  # the model's shape does not depend on the size
    skipped = far_slower(rates)
    figures = ", ".join(f"{p} {v:,.0f}" for p, v in rates.items())
    print(f"auto's measurement (forward + backward, images/s): {figures}", flush=True)
    full = [p for p in PRECISIONS if p not in skipped]
    for precision in sorted(skipped):
        print(f"    {precision}: more than {CLEAR:g}x slower, reported from it, not run in full")

    overrides = overrides_for(args, sized(args, rates))
    recipe = load_recipe(DEMO, [*overrides, "train.precision=fp32"])  # no timing in build
    built = build(recipe)  # the same images and model shape; no run folder needed
    train = built.splits.train
    print(f"model: {recipe.model.block_filters()} filters, batch {args.batch}, {len(train)} images")
    nchw = load_recipe(DEMO, [*overrides, "train.channels_last=false"])
    model = create_model(nchw.model, 1, (28, 28), built.tasks, channels_last=False)
    x = train.images[: args.batch].float().div(255)
    flops = training_flops(model, x, torch.zeros(args.batch))
    labels = train.targets["label"]

    # Interleaved repeats, judged on medians: one run of the same setup varies by ~7 % here.
    runs: dict[str, list[float]] = {p: [] for p in ("auto", *full, "seed")}
    choice: dict[str, Choice] = {}
    for repeat in range(args.repeats):
        begun = time.perf_counter()
        print(f"repeat {repeat + 1} of {args.repeats}:", flush=True)
        for precision in ("auto", *full):  # auto first: a fresh cache measures here
            recipe = load_recipe(DEMO, [*overrides, f"train.precision={precision}"])

            def ours(recipe=recipe, precision=precision) -> float:
                speed, choice[precision] = cnnlab_loop(recipe)
                return speed

            runs[precision].append(timed(f"cnnlab {precision}", ours))
        seed = timed(
            "seed-style",
            lambda: reference_loop(model, train.images, labels, args.batch, args.workers),
        )
        runs["seed"].append(seed)
        now = time.perf_counter()
        if repeat + 1 < args.repeats and now + (now - begun) - started > args.budget:
            print(f"    stopping: another repeat would pass --budget {args.budget:g} s", flush=True)
            break
    report(args, runs, choice, rates, skipped, flops)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)


def report(
    args: argparse.Namespace,
    runs: dict[str, list[float]],
    choice: dict[str, Choice],
    rates: dict[str, float],
    skipped: set[str],
    flops: float,
) -> None:
    """The medians side by side, the ratios, and the share of the matrix-product rate."""
    ref = statistics.median(runs["seed"])
    print(
        f"seed-style loop (Dataset + DataLoader x{args.workers}, NCHW, fp32): {ref:8.0f} images/s"
    )
    print(median_line(runs["seed"]))
    ours = {p: statistics.median(runs[p]) for p in choice}
    for precision, speed in ours.items():
        why = choice[precision].describe()
        print(f"cnnlab loop, train.precision={precision:<4} ({why}): {speed:8.0f} images/s")
        print(median_line(runs[precision]))
    for precision in sorted(skipped):
        print(
            f"cnnlab, {precision}: {rates[precision]:8.0f} images/s forward + backward, "
            f"auto's measurement only (> {CLEAR:g}x slower than the fastest, not run in full)"
        )
    auto = ours["auto"]
    best = max(v for p, v in ours.items() if p != "auto")
    run_in_full = " and ".join(p for p in PRECISIONS if p not in skipped)
    print(f"auto / the faster of {run_in_full}: {auto / best:.2f} (target >= 0.95)")
    print(f"ratio, cnnlab (auto) / seed-style: {auto / ref:.2f}x (target >= 3x)")
    chosen = choice["auto"].precision
    peak = precision_rate(chosen)
    achieved = auto * flops
    print(
        f"training FLOPs: {flops / 1e6:.1f} M per image; cnnlab (auto, {chosen}) achieves "
        f"{achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of this process's {chosen} "
        f"matrix-product rate ({peak / 1e9:.0f} GFLOP/s; target >= 60 %)"
    )


if __name__ == "__main__":
    main()
