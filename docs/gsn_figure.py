"""docs/images/gsn_vs_reference.png: the six real GSN images beside six generated ones.

    python -m docs.gsn_figure [--seed 1]

The real ones are the project's shared reference picture (six images with their count
vectors as titles), copied into docs/images/gsn_reference.png so a fresh clone has it; the
generated ones are drawn by cnnlab/data/gsn_generator.py in the same colormap (viridis),
titled by their counts in the csv's order (squares circles up right down left).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from cnnlab.data.gsn_generator import generate

OUT = Path(__file__).resolve().parent / "images"
REFERENCE = OUT / "gsn_reference.png"
TARGET = OUT / "gsn_vs_reference.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    images, counts, _ = generate(6, args.seed)
    fig = plt.figure(figsize=(13, 4.6))
    left = fig.add_axes((0.0, 0.0, 0.46, 0.92))
    left.imshow(Image.open(REFERENCE))
    left.set_axis_off()
    left.set_title("real GSN (reference)", fontsize=13)
    fig.text(0.74, 0.955, "generated (cnnlab data gsn)", ha="center", fontsize=13)
    for k in range(6):
        ax = fig.add_axes((0.50 + (k % 3) * 0.165, 0.48 - (k // 3) * 0.46, 0.13, 0.37))
        ax.imshow(images[k], cmap="viridis", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(" ".join(map(str, counts[k].tolist())), fontsize=12)
        ax.set_axis_off()
    fig.savefig(TARGET, dpi=90)
    print(TARGET)


if __name__ == "__main__":
    main()
