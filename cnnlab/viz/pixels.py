"""Per-pixel tasks (seed 001's colorization): what the model painted, beside the truth.

For each per-pixel task, on test images (the one pass every figure shares): a grid of the
model's input (grey when colorizing), the predicted classes, the true classes and, when
colorizing, the photograph; the palette, with each colour's share of the pixels; and the
pixel accuracy of every class. Classes named "#rrggbb" (a colorizing run's palette) are drawn
in their own colour, any others with a categorical colour map.
"""

from __future__ import annotations

import matplotlib
import torch

from cnnlab.data.colorize import palette_from_names
from cnnlab.viz.base import Chart, check_count, new_figure
from cnnlab.viz.confusion import confusion_counts, per_class_accuracy
from cnnlab.viz.mosaic import Tile, colored, mosaic, rgb, side_for
from cnnlab.viz.predictions import pick
from cnnlab.viz.run_view import RunView


def class_colours(names: list[str]) -> torch.Tensor:
    """(K, 3) float in [0, 1]: the palette itself, or tab20's colours for other classes."""
    palette = palette_from_names(names)
    if palette is not None:
        return palette.float() / 255
    cmap = matplotlib.colormaps["tab20"]
    return torch.tensor([cmap(i % 20)[:3] for i in range(len(names))])


UNLABELLED = (0.25, 0.25, 0.25)  # pixels a mask leaves without a class: dark grey


def paint(classes: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(H, W) class indices -> (3, H, W) float image; unlabelled pixels (NO_CLASS) grey."""
    table = torch.cat([colours.float(), torch.tensor([UNLABELLED])])
    return table[classes.where(classes >= 0, len(colours))].permute(2, 0, 1)


def right_share(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """The share of labelled pixels predicted right."""
    labelled = truth >= 0
    return ((pred == truth) & labelled).sum().item() / max(1, labelled.sum().item())


def pixels(view: RunView, images: int = 8) -> list[Chart]:
    check_count("images", images, 32)
    tasks = view.tasks_with("pixels")
    if not tasks:
        return []
    preds = view.test_predictions
    index = pick(len(view.split("test")), images, view.recipe.seed)
    charts = []
    for task in tasks:
        names = view.task_classes(task)
        colours = class_colours(names)
        truth, pred = preds.truth[task], preds.pred[task]
        charts.append(_grid(view, task, index, truth, pred, colours))
        charts += _classes(task, names, colours, truth, pred, commonest(view, task))
    return charts


def commonest(view: RunView, task: str) -> int:
    """The class of most training pixels: the baseline paints every pixel with it."""
    target = view.recipe.tasks[task].target
    counts = torch.zeros(len(view.task_classes(task)), dtype=torch.long)
    for _, targets in view.splits.eval_batches("train", view.built.eval_batch_size, {target}):
        values = targets[target].flatten().cpu()
        counts += torch.bincount(values[values >= 0], minlength=len(counts))
    return int(counts.argmax())


def _grid(view: RunView, task: str, index, truth, pred, colours) -> Chart:
    """Rows of images; columns: image, predicted, true (colorizing: the grey input the model
    sees first, the photograph last)."""
    photos = view.split("test").images[index.to(view.device)].cpu()
    grey = view.splits.grey
    heads = ["input (model sees)"] if grey else ["image"]
    heads += ["predicted", "true (palette)" if grey else "true", *(["photograph"] if grey else [])]
    inputs = view.batch("test", index).float().cpu() if grey else None  # normalized (B, C, H, W)
    tiles = []
    for row, i in enumerate(index.tolist()):
        seen = colored(inputs[row].mean(0), "gray") if inputs is not None else rgb(photos[row])
        right = f"{right_share(truth[i], pred[i]):.0%} of pixels right"
        shown = [seen, rgb(paint(pred[i], colours)), rgb(paint(truth[i], colours))]
        shown += [rgb(photos[row])] if grey else []
        said = [
            (heads[c] + "\n" if row == 0 else "") + (right if c == 1 else "")
            for c in range(len(shown))
        ]
        tiles.append([Tile(p, t.strip()) for p, t in zip(shown, said, strict=True)])
    blank = "no label" if bool((truth[index] < 0).any()) else ""
    key = key_of(view.task_classes(task), colours, blank)
    fig = mosaic(tiles, side_for(photos.shape[-2], 140), key=key)
    accuracy = right_share(truth[index], pred[index])
    return Chart(
        f"pixels_{task}",
        f"{task}: predicted and true classes of {len(index)} test images",
        fig,
        f"Pixel accuracy on these images: {accuracy:.1%}. Columns: {columns(grey)}.",
        extra={"index": index.tolist(), "accuracy": accuracy},
    )


KEY_CLASSES = 24  # a palette of more (a colorizer's) is its own key: the classes chart


def key_of(
    names: list[str], colours: torch.Tensor, blank: str = ""
) -> list[tuple[str, tuple[float, ...]]]:
    """Each class's colour, for under a grid of class maps, and `blank`'s: what the grey of
    pixels without a class means there (none: no such pixels). None for more than
    KEY_CLASSES classes."""
    if len(names) > KEY_CLASSES:
        return []
    key = list(zip(names, map(tuple, colours.tolist()), strict=True))
    return [*key, (blank, UNLABELLED)] if blank else key


def columns(grey: bool) -> str:
    """What the grid's columns show: a colorizing run has a fourth, the photograph, as the
    grey input the model sees is not the image the palette was taken from."""
    if grey:
        return (
            "the grey input the model sees, its prediction, the palette target it learnt from, "
            "the original photograph"
        )
    return "the image, the model's prediction, the true classes it learnt from"


def _classes(task: str, names: list[str], colours, truth, pred, common: int) -> list[Chart]:
    """The palette with each class's share of test pixels, and its pixel accuracy,
    against the baseline that paints every pixel in the commonest training class."""
    labelled = truth.flatten() >= 0
    cm = confusion_counts(truth.flatten()[labelled], pred.flatten()[labelled], len(names))
    share = cm.sum(1).double() / cm.sum().clamp_min(1)
    accuracy = per_class_accuracy(cm)
    k = len(names)
    fig = new_figure(max(6.0, 0.32 * k), 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(range(k), share.numpy(), color=colours.numpy(), edgecolor="#444", linewidth=0.5)
    top.set(ylabel="share of pixels", title=f"{task}: the {k} classes (test pixels)")
    bottom.bar(range(k), accuracy.numpy(), color=colours.numpy(), edgecolor="#444", linewidth=0.5)
    bottom.set(ylabel="pixel accuracy", ylim=(0, 1))
    bottom.set_xticks(range(k), names, rotation=90, fontsize=7)
    rows = [
        {"class": n, "share of pixels": round(s, 4), "pixel accuracy": round(a, 4)}
        for n, s, a in zip(names, share.tolist(), accuracy.tolist(), strict=True)
    ]
    never = [
        n for n, a, s in zip(names, accuracy.tolist(), share.tolist(), strict=True) if s and not a
    ]
    overall, baseline = cm.diag().sum().item() / cm.sum().item(), share[common].item()
    caption = (
        f"Pixel accuracy {overall:.1%} on test; painting every pixel {names[common]} "
        f"(the commonest class of the training pixels) would score {baseline:.1%}."
    )
    caption += f" Classes never predicted right: {', '.join(never)}." if never else ""
    return [
        Chart(
            f"classes_{task}",
            f"{task}: palette, share of pixels and pixel accuracy per class",
            fig,
            caption,
            table=rows,
            extra={"accuracy": accuracy.tolist(), "share": share.tolist(), "baseline": baseline},
        )
    ]
