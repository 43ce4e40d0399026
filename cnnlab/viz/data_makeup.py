"""What the run learnt from and was judged on: each target's make-up in train, validation and
test. A class with a handful of images gets metrics that rest on those few (its per-class
accuracy is 0 % or 100 % by one image); a regression whose test values lie outside the
training range is asked to extrapolate. Both are read off here before any metric is.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from cnnlab.errors import listed
from cnnlab.tasks.base import labelled_rows
from cnnlab.viz.base import Chart, new_figure, shorten
from cnnlab.viz.run_view import RunView

SPLITS = ("train", "val", "test")
FEW = 10  # a class with fewer training images than this is named in the caption
LABELLED = 30  # up to this many classes every bar is named
BINS = 30


def data_makeup(view: RunView) -> list[Chart]:
    """One chart: per target the tasks read, its images per class and split (bars), its
    labelled pixels per class for a mask, or its values' histogram per split."""
    targets = list(dict.fromkeys(cfg.target for cfg in view.recipe.tasks.values()))
    splits = {s: view.split(s) for s in SPLITS if len(view.split(s))}
    sizes = {s: len(split) for s, split in splits.items()}
    fig = new_figure(min(4.2 * len(targets), 12.6), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(targets)))
    counts: dict[str, dict[str, list[int]]] = {}
    notes: list[str] = []
    rare: list[str] = []  # classes without, or with few, training images
    missing: dict[str, dict[str, int]] = {}  # target -> split -> images without a label
    per_image: list[str] = []  # class targets counted in images (a mask's: in pixels)
    for ax, target in zip(axes, targets, strict=True):
        values = {s: view.splits.values(s, target) for s in splits}
        without = {s: int((~labelled_rows(v)).sum()) for s, v in values.items()}
        if any(without.values()):  # blank cells (blank: unlabelled), masks without a label
            missing[target] = without
            notes.append(_unlabelled(target, without, sizes))
        names = view.classes.get(target)
        tags = view.checkpoint.get("components", {}).get(target)
        if names is not None:
            counts[target] = {s: _class_counts(v, len(names)) for s, v in values.items()}
            unit = "pixels" if next(iter(values.values())).ndim >= 3 else "images"
            _bars(ax, f"{target}: {unit} per class", unit, names, counts[target])
            per_image += [target] if unit == "images" else []
            rare += rare_classes(target, names, counts[target], unit)
        elif tags and all(_yes_no(v) for v in values.values()):  # multi-label: 0/1 per tag
            counts[target] = {s: (v > 0.5).sum(0).tolist() for s, v in values.items()}
            _bars(ax, f"{target}: images with each", "images", tags, counts[target])
            per_image.append(target)
            rare += rare_classes(target, tags, counts[target])
        else:
            _histograms(ax, target, values)
    said = ", ".join(f"{_split_name(s)} {n:,}" for s, n in sizes.items())
    enough = f"Every class has at least {FEW} training images." if per_image and not rare else ""
    caption = " ".join([f"Images: {said}.", *notes, *rare, enough]).strip()
    extra = {"sizes": sizes, "counts": counts, "unlabelled": missing}
    return [Chart("data", "Data", fig, caption, extra=extra)]


def _class_counts(values: torch.Tensor, classes: int) -> list[int]:
    """Images per class, or labelled pixels per class for a mask (N, H, W): its unlabelled
    pixels come as a negative class and count in none."""
    flat = values.flatten().long()
    flat = flat[flat >= 0]
    return torch.bincount(flat, minlength=classes)[:classes].tolist()


def _yes_no(values: torch.Tensor) -> bool:
    """A vector target whose every labelled value is 0 or 1: a yes/no per component (tags),
    counted as images with each rather than as a histogram of numbers."""
    v = values[~values.isnan()] if values.is_floating_point() else values
    return values.ndim == 2 and bool(((v == 0) | (v == 1)).all())


def _bars(ax, title: str, unit: str, names: list[str], counts: dict[str, list[int]]) -> None:
    k = len(names)
    width = 0.8 / len(counts)
    for i, (split, n) in enumerate(counts.items()):
        ax.bar(np.arange(k) + i * width - 0.4 + width / 2, n, width, label=_split_name(split))
    if k <= LABELLED:
        ax.set_xticks(range(k), [shorten(c, 14) for c in names], rotation=60, ha="right")
    else:
        ax.set_xlabel(f"{k} classes")
    ax.set(title=title, ylabel=unit)
    if any(n and min(n) > 0 and max(n) / max(1, min(n)) > 20 for n in counts.values()):
        ax.set_yscale("log")  # a class 20x rarer than another still shows
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))  # no mathtext
    ax.margins(y=0.25)  # room above the bars for the legend
    ax.legend(fontsize=7, ncols=len(counts), loc="upper center")


def _unlabelled(target: str, without: dict[str, int], sizes: dict[str, int]) -> str:
    """The sentence for a target some images have no label of: how many, per split."""
    said = ", ".join(f"{n:,} of {sizes[s]:,} {_split_name(s)}" for s, n in without.items())
    return (
        f"{target}: no label for {said} images (their other targets train; its bars and "
        "values count only the labelled)."
    )


def _histograms(ax, target: str, values: dict[str, torch.Tensor]) -> None:
    flat = {s: v.float().flatten().cpu().numpy() for s, v in values.items()}
    flat = {s: v[~np.isnan(v)] for s, v in flat.items()}  # NaN: no label
    lo = min(float(v.min()) for v in flat.values() if v.size)
    hi = max(float(v.max()) for v in flat.values() if v.size)
    whole = all(np.array_equal(v, np.round(v)) for v in flat.values())
    if whole and hi - lo <= 2 * BINS:  # counts: a bar for each whole number, none between
        edges = np.arange(lo - 0.5, hi + 1.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        edges = np.linspace(lo, hi if hi > lo else lo + 1, BINS + 1)
    for split, v in flat.items():  # each split's bars sum to 1, whatever its size
        weights = np.full(v.size, 1 / max(v.size, 1))
        ax.hist(v, edges, weights=weights, histtype="step", linewidth=1.4,
                label=_split_name(split))  # fmt: skip
    ax.set(title=f"{target}: values", xlabel=target, ylabel="share of the split's images")
    ax.legend(fontsize=7)


def rare_classes(
    target: str, names: list[str], counts: dict[str, list[int]], unit: str = "images"
) -> list[str]:
    """A sentence for classes without a training image (or labelled pixel): they cannot be
    learnt; and one for those with fewer than FEW training images (at most five named)."""
    train = counts.get("train", [])
    none = [names[c] for c, n in enumerate(train) if n == 0]
    rare = [c for c, n in enumerate(train) if 0 < n < FEW] if unit == "images" else []
    lines = []
    if none:
        lines.append(
            f"{target}: no training {unit} of {listed([repr(n) for n in none], ', ', most=5)}: "
            "a class without them cannot be learnt (add some, or leave it out of the classes)."
        )
    if rare:
        said = [
            f"{names[c]!r} (" + ", ".join(f"{counts[s][c]} {_split_name(s)}" for s in counts) + ")"
            for c in rare
        ]
        lines.append(
            f"{target}: few images in {listed(said, most=5)}: their metrics rest on those few "
            "(one image moves a per-class accuracy by many points)."
        )
    return lines


def _split_name(split: str) -> str:
    return {"val": "validation"}.get(split, split)
