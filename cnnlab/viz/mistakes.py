"""The test images a classification got wrong with the most confidence (fastai's "top
losses" look for the same): where a wrong or ambiguous label, or two classes the model
cannot tell apart, shows first. On one's own data it is often the first figure to look at.
"""

from __future__ import annotations

import torch

from cnnlab.viz.base import Chart, check_count, shorten
from cnnlab.viz.mosaic import Tile, mosaic, rgb, rows_of, side_for
from cnnlab.viz.predictions import WRONG
from cnnlab.viz.run_view import RunView

COLUMNS = 6


def confident_errors(
    logits: torch.Tensor, truth: torch.Tensor, temperature: float, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index, predicted class, its probability, the true class's probability) of the at
    most `n` wrong predictions made with the highest probability, at `temperature`."""
    probs = (logits.double() / temperature).softmax(1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != truth).nonzero().squeeze(1)
    index = wrong[confidence[wrong].argsort(descending=True, stable=True)[:n]]
    return index, predicted[index], confidence[index], probs[index, truth[index]]


def mistakes(view: RunView, images: int = 12) -> list[Chart]:
    check_count("images", images, 60)
    test, charts = view.split("test"), []
    for task in view.tasks_with("mistakes"):
        rows = view.test_predictions.rows[task]
        if len(rows.targets) != len(test):  # a sample of a mask's pixels: no image each
            continue
        names, fitted = view.task_classes(task), view.tasks[task].temperature
        index, said, sure, true_p = confident_errors(rows.logits, rows.targets, fitted, images)
        if not len(index):
            continue  # every test image right: nothing to show
        wrong = int((rows.logits.argmax(1) != rows.targets).sum())
        tiles = [
            Tile(rgb(test.images[i]), label=f"✗ {shorten(names[p])} {s:.0%}\n(true "
                 f"{shorten(names[int(rows.targets[i])])} {t:.0%})", color=WRONG, frame=4)
            for i, p, s, t in zip(index.tolist(), said.tolist(), sure.tolist(), true_p.tolist(),
                                  strict=True)
        ]  # fmt: skip
        fig = mosaic(
            rows_of(tiles, COLUMNS),
            side_for(test.images.shape[-2], 150),
            f"{task}: the {len(index)} test images wrong with the most confidence\n"
            "predicted class and its probability (true class and its probability)",
        )
        calibrated = f" at the fitted temperature {fitted:.3g}" if fitted != 1.0 else ""
        charts.append(
            Chart(
                f"mistakes_{task}",
                f"{task}: the most confident mistakes",
                fig,
                f"{wrong:,} of {len(test):,} test images are wrong; these {len(index)} most "
                f"surely{calibrated}. A label that looks wrong here is worth checking in the "
                "data; two classes that keep swapping are the model's to learn.",
                extra={"index": index.tolist(), "confidence": sure.tolist()},
            )
        )
    return charts
