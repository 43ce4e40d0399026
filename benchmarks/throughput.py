"""Training images/s: cnnlab's loop versus a seed-style loop, same model, data and batch.

The reference is how the seed reports train: a `Dataset` whose `__getitem__` converts one
PIL image at a time through torchvision transforms, a `DataLoader` with worker processes,
NCHW fp32, and `loss.item()` every step. cnnlab keeps uint8 tensors in memory, gathers and
augments whole batches, runs channels_last, in the precision `auto` picks, and also in fp32
and in bf16, so the pick can be judged against both.
Both sides run in this process on the same Fashion-MNIST images, interleaved, and each
figure is the median of `--repeats` runs. The FLOPs of one training step (forward and
backward, counted by torch's FLOP counter) times cnnlab's images/s are then held against
the matrix-product rate this process measures in the precision cnnlab chose.

    PYTHONPATH=. .venv/bin/python benchmarks/throughput.py [--images 25600] [--batch 64]
        [--repeats 5] [--set model.filters=[32,128,256] ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from benchmarks.peak import precision_rate
from cnnlab.build import build
from cnnlab.catalog import RECIPES
from cnnlab.loop import Trainer
from cnnlab.models import create_model
from cnnlab.precision import Choice
from cnnlab.recipe import load_recipe
from cnnlab.runs import RunFolder, device_name

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=25600, help="training images per pass")
    parser.add_argument("--batch", type=int, default=64, help="batch size (the seed's: 64)")
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the reference"
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of each setup")
    parser.add_argument(
        "--set", action="append", default=[], help="recipe override, e.g. model.filters=[...]"
    )
    args = parser.parse_args()

    overrides = [
        f"data.train_subset={int(args.images / 0.9) + 1}",
        f"train.batch_size={args.batch}",
        "train.epochs=2",
        "train.progress=false",
        "train.device=cpu",
        *args.set,
    ]
    recipe = load_recipe(DEMO, overrides)
    built = build(recipe)  # the same images and model shape; no run folder needed
    train = built.splits.train
    nchw = load_recipe(DEMO, [*overrides, "train.channels_last=false"])
    model = create_model(nchw.model, 1, (28, 28), built.tasks, channels_last=False)
    x = train.images[: args.batch].float().div(255)
    flops = training_flops(model, x, torch.zeros(args.batch))

    # Interleaved repeats, judged on medians: one run of the same setup varies by ~7 % here.
    runs: dict[str, list[float]] = {"auto": [], "fp32": [], "bf16": [], "seed": []}
    choice: dict[str, Choice] = {}
    for _ in range(args.repeats):
        for precision in ("auto", "fp32", "bf16"):  # auto first: a fresh cache measures here
            recipe = load_recipe(DEMO, [*overrides, f"train.precision={precision}"])
            speed, choice[precision] = cnnlab_loop(recipe)
            runs[precision].append(speed)
        labels = train.targets["label"]
        runs["seed"].append(reference_loop(model, train.images, labels, args.batch, args.workers))
    ours = {p: (statistics.median(runs[p]), c.describe()) for p, c in choice.items()}
    ref = statistics.median(runs["seed"])
    chosen = choice["auto"].precision
    peak = precision_rate(chosen)

    print(f"device: {device_name(torch.device('cpu'))}, threads: {torch.get_num_threads()}")
    print(f"model: {recipe.model.block_filters()} filters, batch {args.batch}, {len(train)} images")
    print(
        f"seed-style loop (Dataset + DataLoader x{args.workers}, NCHW, fp32): {ref:8.0f} images/s"
    )
    print(f"    median of {args.repeats}: " + ", ".join(f"{v:,.0f}" for v in runs["seed"]))
    for precision, (speed, why) in ours.items():
        each = ", ".join(f"{v:,.0f}" for v in runs[precision])
        print(f"cnnlab loop, train.precision={precision:<4} ({why}): {speed:8.0f} images/s")
        print(f"    median of {args.repeats}: {each}")
    auto, best = ours["auto"][0], max(ours["fp32"][0], ours["bf16"][0])
    print(f"auto / the faster of fp32 and bf16: {auto / best:.2f} (target >= 0.95)")
    print(f"ratio, cnnlab (auto) / seed-style: {auto / ref:.2f}x (target >= 3x)")
    achieved = auto * flops
    print(
        f"training FLOPs: {flops / 1e6:.1f} M per image; cnnlab (auto, {chosen}) achieves "
        f"{achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of this process's {chosen} "
        f"matrix-product rate ({peak / 1e9:.0f} GFLOP/s; target >= 60 %)"
    )


if __name__ == "__main__":
    main()
