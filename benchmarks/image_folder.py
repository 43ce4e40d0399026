"""Epoch time on seed 002's workload: cnnlab's image_folder source versus a seed-style loop.

The workload: an iNaturalist-layout folder of JPEGs of mixed sizes around 500x375 in 10
classes (generated, seeded, into a temporary folder; --images into train/, a fifth of that
into val/), 224 px, seed 002's best CNN (cnnlab/recipes/inat_scratch.yaml), batch 32, 20 %
of train/ carved for validation. An epoch is the training pass plus the validation pass.

- cnnlab: the real Trainer (its precision pick timed beforehand). Its first epoch
  includes building the Trainer: scanning, decoding every image once and writing the cache
  (into a fresh temporary cache), then the statistics pass; later epochs read the uint8
  tensors already in memory. A second Trainer on the same folder shows the cache reused.
- the same images read as a table (`data.source: table`): a labels.csv beside the folder
  naming every file, its class and its split (train/ -> train, val/ -> test), otherwise
  the same recipe; its decode and epoch times should be within 10 % of the folder's.
- seed style: torchvision ImageFolder + Resize((224, 224)) / ToTensor / Normalize, a
  DataLoader with worker processes, NCHW fp32, `loss.item()` every step: every epoch
  decodes every JPEG again.

    PYTHONPATH=. .venv/bin/python benchmarks/image_folder.py [--images 500] [--epochs 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from cnnlab.api import load_recipe as api_recipe
from cnnlab.build import Built, build
from cnnlab.catalog import RECIPES
from cnnlab.data.split import stratified_split
from cnnlab.loop import Trainer
from cnnlab.models import create_model
from cnnlab.recipe import load_recipe
from cnnlab.runs import RunFolder, device_name

RECIPE = RECIPES / "inat_scratch.yaml"
CLASSES = 10


def make_folder(root: Path, images: int, seed: int = 0) -> None:
    """train/<class>/ with `images` JPEGs in all, val/<class>/ with a fifth of that; smooth
    random content (JPEG-like file sizes) at sizes around 500x375."""
    rng = np.random.default_rng(seed)
    for split, total in (("train", images), ("val", max(CLASSES, images // 5))):
        for i in range(total):
            folder = root / split / f"class_{i % CLASSES:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(440, 560)), int(rng.integers(330, 420))
            if rng.random() < 0.3:
                w, h = h, w  # some portrait images
            small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
            im.save(folder / f"{i:05d}.jpg", quality=90)


def write_table(root: Path) -> Path:
    """labels.csv naming every image of the folder: path, class, split."""
    lines = ["image,label,split"]
    for split, part in (("train", "train"), ("val", "test")):
        for path in sorted((root / split).glob("*/*.jpg")):
            lines.append(f"{path.relative_to(root)},{path.parent.name},{part}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def table_recipe(recipe, table: Path):
    """The folder recipe reading the same images through a table."""
    raw = recipe.model_dump(mode="json")
    raw["data"] = {
        "source": "table",
        "table": str(table),
        "targets": {"label": {"kind": "category", "column": "label"}},
        "split": {"column": "split"},
        "image_size": recipe.data.image_size,
        "channels": 3,
        "resize": recipe.data.resize,
        "val_fraction": recipe.data.val_fraction,
        "augment": raw["data"]["augment"],
    }
    return api_recipe(raw)


def cnnlab_epochs(recipe) -> tuple[list[float], Trainer]:
    """Seconds of each epoch of the real Trainer; the first includes building it (decode,
    cache, statistics, model)."""
    marks = [time.perf_counter()]
    with tempfile.TemporaryDirectory() as tmp:
        recipe.output_dir = tmp
        trainer = Trainer(
            build(recipe),
            RunFolder.create(recipe),
            on_epoch=lambda row: marks.append(time.perf_counter()),
        )
        trainer.fit()
    return [b - a for a, b in itertools.pairwise(marks)], trainer


def seed_style_epochs(recipe, built: Built, root: Path, epochs: int, workers: int):
    """Seconds of each epoch of a seed-style loop on the same files and model shape."""
    size = recipe.data.image_size
    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    data = datasets.ImageFolder(str(root / "train"), transform=tf)
    labels = torch.tensor(data.targets)
    keep, held = stratified_split(labels, len(data), recipe.data.val_fraction, recipe.seed)
    batch = recipe.train.batch_size
    train = DataLoader(
        Subset(data, keep.tolist()),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=False,
    )
    val = DataLoader(Subset(data, held.tolist()), batch_size=batch, num_workers=workers)
    model = create_model(recipe.model, 3, (size, size), built.tasks, channels_last=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for x, y in train:
            if x.shape[0] < 2:
                continue
            loss = F.cross_entropy(model(x)["cls"], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _ = loss.item()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += (model(x)["cls"].argmax(1) == y).sum().item()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=int,
        default=500,  # 1,000: about 4 min estimated on EPYC-C (fp32), too near the 5 min bar
        help="JPEGs in train/",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each loop (>= 2)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (seed 002 times 32)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, seed style")
    args = parser.parse_args()
    epochs = max(2, args.epochs)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # a fresh cache: decode timed
        root = tmp_path / "inat"
        start = time.perf_counter()
        make_folder(root, args.images)
        print(
            f"generated {args.images} + {args.images // 5} JPEGs in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
        overrides = [
            f"data.root={root}",
            f"train.batch_size={args.batch}",
            f"train.epochs={epochs}",
            "train.progress=false",
            "train.report=false",
            "train.test_at_end=false",
            "train.device=cpu",
        ]
        # The precision `auto` picks is timed once per machine and model and cached: do that
        # here, then drop the image cache, so the first epoch below times the data alone.
        build(load_recipe(RECIPE, overrides))
        shutil.rmtree(tmp_path / "cache" / "cnnlab" / "image_folder")
        recipe = load_recipe(RECIPE, overrides)
        ours, trainer = cnnlab_epochs(recipe)
        print(f"cnnlab epochs: {', '.join(f'{t:.1f}' for t in ours)} s", flush=True)
        start = time.perf_counter()
        again = build(load_recipe(RECIPE, overrides))  # the cache is reused
        reload_s = time.perf_counter() - start
        tabled = table_recipe(recipe, write_table(root))
        listed, _ = cnnlab_epochs(tabled)
        print(f"table epochs: {', '.join(f'{t:.1f}' for t in listed)} s", flush=True)
        nchw = load_recipe(RECIPE, [*overrides, "train.channels_last=false"])
        theirs = seed_style_epochs(nchw, again, root, epochs, args.workers)

    n_train = len(trainer.splits.train)
    print(f"device: {device_name(torch.device('cpu'))}, threads: {torch.get_num_threads()}")
    print(
        f"model: {recipe.model.block_filters()} filters, {recipe.data.image_size} px, "
        f"batch {args.batch}, {n_train} training + {len(trainer.splits.val)} validation images"
    )
    print(f"cnnlab ({trainer.precision.describe()}):")
    print(f"    first epoch, with decode + cache build: {ours[0]:7.1f} s")
    cached = statistics.median(ours[1:])
    print(f"    epoch after that (median of {len(ours) - 1}): {cached:7.1f} s")
    print(f"    a new Trainer on the cached folder: {reload_s:.1f} s to start")
    listed_cached = statistics.median(listed[1:])
    print("the same images as a table (data.source: table):")
    print(f"    first epoch, with decode + cache build: {listed[0]:7.1f} s")
    print(f"    epoch after that (median of {len(listed) - 1}): {listed_cached:7.1f} s")
    print(
        f"table / folder: first epoch {listed[0] / ours[0]:.2f}x, cached epoch "
        f"{listed_cached / cached:.2f}x (target <= 1.10x)"
    )
    ref = statistics.median(theirs)
    each = ", ".join(f"{t:.1f}" for t in theirs)
    print(
        f"seed-style loop (ImageFolder + DataLoader x{args.workers}, NCHW, fp32): "
        f"{ref:7.1f} s per epoch (median of {each})"
    )
    print(f"seed-style / cnnlab cached epoch: {ref / cached:.2f}x (target >= 3x)")
    print(f"seed-style / cnnlab first epoch:  {ref / ours[0]:.2f}x (target >= 1x)")


if __name__ == "__main__":
    main()
