"""Bring your own network: register a backbone, train it on Fashion-MNIST, use the run.

Run it as a script (a short run: about a minute on a laptop CPU):

    .venv/bin/python examples/custom_backbone.py --epochs 1 --out runs

It registers `TinyNet` as the backbone `tinynet`, trains the `fashion_fast` recipe with
TinyNet in place of its CNN through `cnnlab.train`, prints the test metrics, predicts a
few test images and writes the run's report.html.

The same class from the command line: `--import` this file (importing it registers
TinyNet and trains nothing) and give the recipe a `model` section that names it:

    .venv/bin/cnnlab train --import examples/custom_backbone.py fashion_fast \\
        --set "model={backbone: tinynet, width: 24}" --set train.epochs=2

(`--set model=...` replaces the whole section: fashion_fast's own keys, `blocks` and
`base_filters`, belong to its CNN, and TinyNet's section takes only `backbone` and `width`.)
"""

from __future__ import annotations

import argparse

from torch import nn

import cnnlab
from cnnlab.data import load_dataset


@cnnlab.register_backbone("tinynet")
class TinyNet(nn.Module):
    """Three blocks of conv 3x3 -> batch norm -> ReLU -> max-pool 2 (a small example)."""

    # Keyword parameters with defaults are the recipe's `model` keys (here `width`);
    # `in_channels` is filled from the data (1 for Fashion-MNIST, 3 for CIFAR-10).
    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.block1 = conv_block(in_channels, width)
        self.block2 = conv_block(width, 2 * width)
        self.block3 = conv_block(2 * width, 4 * width)

    def forward(self, x):  # (B, C, H, W)
        a = self.block1(x)  # (B, width, H/2, W/2)
        b = self.block2(a)  # (B, 2 * width, H/4, W/4)
        c = self.block3(b)  # (B, 4 * width, H/8, W/8)
        # One feature map is enough; a list of them (one per stage) lets the figures show
        # every stage. cnnlab pools the last one for the task heads.
        return [a, b, c]


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # no bias: batch norm adds one
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    parser.add_argument("--out", default="runs", help="folder for the run folder (default runs)")
    parser.add_argument("--width", type=int, default=24, help="TinyNet's width (default 24)")
    parser.add_argument(
        "--train-subset", type=int, default=3000, help="training images (default 3000)"
    )
    args = parser.parse_args()

    run = cnnlab.train(
        "fashion_fast",
        overrides={
            "output_dir": args.out,
            "model": {"backbone": "tinynet", "width": args.width},  # the whole section
            "train.epochs": args.epochs,
            "train.batch_size": 64,  # more steps in a short run
            "train.ema_decay": None,  # no weight average: a short run has too few steps
            "data.train_subset": args.train_subset,
            "data.test_subset": 1000,
            "train.report": False,  # written below, by run.report()
        },
    )
    print(f"run folder: {run.path}")
    test = run.test_metrics  # the best epoch's checkpoint on the test set
    accuracy, rmse = test["test.cls.accuracy"], test["test.ink.rmse"]
    print(f"TinyNet, epoch {test['best_epoch']}: test accuracy {accuracy:.3f}, ink RMSE {rmse:.4f}")

    # Predict a few test images: any (B, C, H, W) batch, numpy arrays, PIL images or paths.
    fashion = load_dataset("fashion_mnist")
    images = fashion.test.images[:6]  # (6, 1, 28, 28) uint8
    classes = fashion.classes["label"]
    table = run.predict(images).table()  # one row per image: class, its probability, ink
    table.insert(0, "true class", [classes[i] for i in fashion.test.targets["label"][:6]])
    print(table.to_string(float_format="%.3f"))

    print(f"report: {run.report()}")  # every figure of the run on one page


if __name__ == "__main__":
    main()
