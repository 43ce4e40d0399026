"""A task type of your own: multi-label tags (several yes/no labels per image), trained on
a table of your own images, then explained, calibrated and shipped.

Run it as a script (a short run: under a minute on a laptop CPU):

    .venv/bin/python examples/custom_task.py --out runs

It writes a table of generated shapes (`cnnlab data shapes`: images, and a column per tag
saying whether the image holds a disc, a square, a triangle), trains the task `tags` on it
beside the built-in classification of the largest shape, prints each tag's test F1,
draws where in the images the triangle tag comes from, fits a temperature for the tags'
sigmoids as for the classification's softmax (the task says how its logits become
probabilities: `probabilistic`, `probabilities`, `nll`, `outcomes`), exports the model as
ONNX and asks the file about a few images.

The same task from the command line: `--import` this file (importing it registers the task
type `tags` and trains nothing), and name it in a recipe's `tasks` (`recipe()` below is
one, as a dict: `yaml.safe_dump(recipe(table, "runs", 10))` writes it as my_tags.yaml):

    cnnlab train --import examples/custom_task.py my_tags.yaml
    cnnlab --import examples/custom_task.py viz runs/<run> attributions --component has_triangle
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

import cnnlab
from cnnlab import CnnlabError, MLPHead, TargetInfo, TargetSpec, Task, TaskSection, Worst


class TagsConfig(TaskSection):
    """A task that says yes or no to each of several tags per image (multi-label)."""

    type: Literal["tags"] = "tags"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # a tag is on above this probability


class TagsHead(MLPHead):
    """One logit per tag, decoded to its probability (as trained: the captions and the
    training meter read these; `predict` and an exported model give the task's
    `probabilities`, at the temperature `calibrate` fits)."""

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().sigmoid()


@cnnlab.register_task("tags")
class Tags(Task):
    config = TagsConfig
    metrics = ("loss", "macro_f1", "exact")  # each epoch's validation, and the test's
    maximize = frozenset({"macro_f1", "exact", "f1"})  # f1: each tag's, f1_<tag>
    per_class = frozenset({"f1"})  # given per tag: train.monitor may be val.tags.f1_has_disc
    headline = ("macro_f1",)  # on every epoch's line
    step_metrics = ("tags_right",)  # the training meter's: the share of tags right
    figures = ("mistakes", "reliability", "roc")  # roc: a curve per tag, each against its absence
    legend = "true tags → tags predicted"
    probabilistic = True  # sigmoid probabilities: `calibrate` fits a temperature for them

    def fit(self, spec: TargetSpec, values: Callable[[], torch.Tensor] | None = None) -> None:
        if not spec.components:
            raise CnnlabError(
                f"tasks.{self.name}: a tags task reads a vector target, one 0/1 column per tag "
                "(data.targets.<name>: {kind: vector, columns: [...]})"
            )
        self.info = TargetInfo(components=spec.components)

    def head(self, backbone: cnnlab.Backbone) -> TagsHead:
        return TagsHead(backbone.num_features, len(self.info.components or []), self.cfg.head)

    def loss(self, head: TagsHead, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # a blank cell (blank: unlabelled) reaches here as NaN: it is replaced before any
        # arithmetic (a NaN kept out of the value alone still poisons the gradient) and not
        # counted; a batch without a label gives 0
        ok = self.labelled(target)
        known = torch.where(ok, target.float(), 0.0)
        each = F.binary_cross_entropy_with_logits(out.float(), known, reduction="none")
        return (each * ok).sum() / ok.sum().clamp_min(1)

    def step_sums(self, pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        ok = self.labelled(target)
        right = ((pred > self.cfg.threshold) == (target > 0.5)) & ok
        return [right.sum() / ok.sum().clamp_min(1)]

    def epoch_metrics(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

        k, t = len(self.info.components or []), self.cfg.threshold
        return MetricCollection(
            {
                "macro_f1": MultilabelF1Score(k, threshold=t),
                "f1": MultilabelF1Score(k, threshold=t, average=None),  # f1_<tag> each
                "exact": MultilabelExactMatch(k, threshold=t),  # every tag of the image right
            }
        )

    def update_metrics(self, metrics, head, out, target) -> None:
        metrics.update(self.probabilities(out), target.long())

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return (out.float() / self.temperature).sigmoid()

    def nll(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target.float())

    def outcomes(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each tag of each image is a yes/no answer: the probability of the answer given,
        and whether it is right."""
        p = logits.sigmoid()
        return torch.maximum(p, 1 - p), ((p > 0.5) == (target > 0.5)).float()

    def _on(self, values: torch.Tensor) -> str:
        names = self.info.components or []
        return "+".join(n for n, v in zip(names, values.tolist(), strict=True) if v > 0.5)

    def caption(
        self, truth: torch.Tensor, pred: torch.Tensor, short: Callable[[str], str] = str
    ) -> tuple[str, bool]:
        said = (pred > self.cfg.threshold).float()
        wrong = bool((said != (truth > 0.5).float()).any())
        return f"{self._on(truth) or 'none'} → {self._on(said) or 'none'}", wrong

    def worst(self, truth, pred, logits, n: int, short: Callable[[str], str] = str) -> Worst:
        """The test images whose tag probabilities are furthest from their true tags."""
        error = (pred - truth.float()).abs().sum(dim=1)
        index = error.argsort(descending=True, stable=True)[:n]
        lines = [f"{self.caption(truth[i], pred[i])[0]}\noff by {error[i]:.2f}" for i in index]
        why = "true → predicted tags; ranked by how far each tag's probability is from its truth"
        return Worst(index, lines, "furthest from their true tags", why + ", summed.")


# ---------------------------------------------------------------------- the script

TAGS = {"has_disc": "discs", "has_square": "squares", "has_triangle": "triangles"}


def write_tags_table(folder: Path, n: int = 2000, size: int = 32) -> Path:
    """`cnnlab data shapes`' table of `n` generated images, with a 0/1 column per tag."""
    from cnnlab.data import shapes_table

    shapes_table.write(folder, n=n, size=size)
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.update({tag: int(int(row[count]) > 0) for tag, count in TAGS.items()})
    with open(folder / "tags.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "kind", *TAGS, "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder / "tags.csv"


def recipe(table: Path, out: str, epochs: int) -> dict:
    flips = {"hflip": "same", "vflip": "same", "rot90": "same"}  # a mirror keeps the tags
    return {
        "name": "tags",
        "output_dir": out,
        "data": {
            "source": "table",
            "table": str(table),
            "image_column": "image",
            "targets": {
                "tags": {"kind": "vector", "columns": list(TAGS), **flips},
                "kind": {"kind": "category", "column": "kind"},
            },
            "split": {"column": "split"},
            "augment": {"hflip": True, "vflip": True, "rot90": True, "translate": 0},
        },
        "model": {"backbone": "cnn", "blocks": 3},
        "tasks": {
            "tags": {"type": "tags", "target": "tags"},
            "kind": {"type": "classification", "target": "kind"},
        },
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
            "scheduler": {"name": "onecycle", "pct_start": 0.2},
            "monitor": "val.tags.macro_f1",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--out", default="runs", help="folder for the run folder (default runs)")
    parser.add_argument("--data", default="data/shapes_tags", help="where to write the table")
    args = parser.parse_args()

    table = write_tags_table(Path(args.data))
    run = cnnlab.train(recipe(table, args.out, args.epochs), overrides={"train.report": False})
    print(f"run folder: {run.path}")
    test = run.test_metrics
    print("test F1 per tag: " + ", ".join(f"{t} {test[f'test.tags.f1_{t}']:.3f}" for t in TAGS))

    images = [table.parent / "images" / f"{i:05d}.png" for i in range(3)]  # "new" images
    run.figure("attributions", images=4, component="has_triangle")  # on test images
    run.explain(images, component="has_triangle")  # on these: figures/explained_<task>.png
    print(run.calibrate().to_string(index=False))  # a temperature each: tags and kind
    exported = run.export()  # runs/<run>/export/model.onnx, checked against torch
    print(exported)
    print(exported.predict(images).table().to_string(float_format="%.2f"))
    print(f"report: {run.report()}")


if __name__ == "__main__":
    main()
