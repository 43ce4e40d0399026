"""A figure of your own: how sure the model is of its right and of its wrong test answers.

Registered by importing this file, it is drawn like a built-in figure and every report shows
it in a section of its own:

    cnnlab --import examples/custom_figure.py viz runs/<run> confidence
    cnnlab --import examples/custom_figure.py report runs/<run>

or from Python, after `import custom_figure` (or `cnnlab.import_modules([...])`):

    run.figure("confidence", bins=10)

The function reads the finished run through the `RunView` it is given: the tasks, the test
set's predictions (one pass, shared with every other figure), the model and the data.
"""

from __future__ import annotations

from matplotlib.figure import Figure

import cnnlab


@cnnlab.register_figure("confidence", "how sure the model is of its right and wrong answers")
def confidence(view: cnnlab.RunView, bins: int = 20) -> list[cnnlab.Chart]:
    """One histogram per image-level classification: the probability of the predicted class
    (at the run's fitted temperature), right and wrong answers stacked."""
    charts = []
    test = view.test_predictions
    for name, task in view.tasks.items():
        if task.info.classes is None or name not in test.rows or test.rows[name].logits.ndim != 2:
            continue  # regressions; per-pixel tasks keep a sample of pixels, not images
        sure = task.probabilities(test.rows[name].logits).amax(dim=1)
        right = test.pred[name] == test.truth[name]
        fig = Figure(figsize=(5, 3), layout="constrained")
        ax = fig.subplots()
        ax.hist([sure[right].numpy(), sure[~right].numpy()], bins=bins, range=(0, 1),
                stacked=True, color=["#1e6b34", "#c0392b"], label=["right", "wrong"])  # fmt: skip
        ax.set(xlabel="probability of the predicted class", ylabel="test images", title=name)
        ax.legend()
        wrong_but_sure = int((sure[~right] > 0.9).sum())
        charts.append(
            cnnlab.Chart(
                key=f"confidence_{name}",  # the PNG: RUN/figures/confidence_<task>.png
                title=f"{name}: confidence of right and wrong answers",
                figure=fig,
                caption=f"{int(right.sum()):,} of {len(right):,} test answers are right; "
                f"{wrong_but_sure:,} wrong ones were given with more than 90 % probability.",
                extra={"right": int(right.sum()), "wrong_but_sure": wrong_but_sure},
            )
        )
    return charts
