"""Each task's worst test images, as the task ranks them (`Task.worst`): a classification's
wrong predictions made with the most confidence (fastai's "top losses" look for the same),
a regression's largest errors. Where a wrong label, a mistyped target or two classes the
model confuses shows first; on one's own data, often the first figure to look at.
"""

from __future__ import annotations

from cnnlab.errors import CnnlabError
from cnnlab.viz.base import Chart, check_count, shorten
from cnnlab.viz.mosaic import Tile, mosaic, rgb, rows_of, side_for
from cnnlab.viz.predictions import WRONG
from cnnlab.viz.run_view import RunView

COLUMNS = 6


def mistakes(view: RunView, images: int = 12) -> list[Chart]:
    check_count("images", images, 60)
    test, preds, charts, right = view.split("test"), view.test_predictions, [], []
    for name in view.tasks_with("mistakes"):
        rows = preds.rows.get(name)
        logits = rows.logits if rows is not None else None
        worst = view.tasks[name].worst(preds.truth[name], preds.pred[name], logits, images, shorten)
        if worst is None:
            continue  # the task does not rank its errors
        if not len(worst.index):
            right.append(name)
            continue
        tiles = [
            Tile(rgb(test.images[i]), label=line, color=WRONG, frame=4)
            for i, line in zip(worst.index.tolist(), worst.lines, strict=True)
        ]
        fig = mosaic(
            rows_of(tiles, COLUMNS),
            side_for(test.images.shape[-2], 150),
            f"{name}: the {len(tiles)} test images {worst.what}",
        )
        charts.append(
            Chart(
                f"mistakes_{name}",
                f"{name}: the test images {worst.what}",
                fig,
                worst.caption,
                extra={"index": worst.index.tolist()},
            )
        )
    if right and not charts:  # said, not left blank: a run that made no mistake
        raise CnnlabError(
            f"mistakes: every one of the {len(test)} test images is right for "
            f"{', '.join(right)}; no mistake to show"
        )
    return charts
