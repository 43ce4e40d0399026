"""A run's answers on images it has never seen (`cnnlab predict RUN IMAGES`): each image with
every task's answer under it, and each per-pixel task's class map beside it, painted in the
colours of the run's `pixels` figure, with its classes by share of pixels under it; and the
class maps as mask files, at each image's own size (`--masks`)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.data.decoded import as_read, open_image
from cnnlab.errors import CnnlabError, listed
from cnnlab.inference import NOT_SEEN, Prediction, Predictions
from cnnlab.viz.mosaic import Tile, mosaic, rgb, rows_of
from cnnlab.viz.pixels import UNLABELLED, class_colours, key_of, paint

SHOWN = 16  # images drawn; the CSV holds them all
SIDE = 200  # pixels
CLASSES_SAID = 5  # a per-pixel task's classes named, largest share first
UNSEEN_INDEX = 255  # a mask file's value where a crop left the image's border unseen


def caption(predictions: Predictions, i: int, per_pixel: bool = True) -> str:
    """Image i's answers, one task per line (`per_pixel` off: its per-pixel tasks left out,
    for a figure that says them under their maps)."""
    lines = []
    for name, p in predictions.items():
        if p.labels is not None:
            lines.append(f"{name}: {p.labels[i]} ({class_said(p, i)})")
        elif p.per_pixel and per_pixel:
            lines.append(f"{name}: {pixel_shares(p, i)}")
        elif p.values is not None:
            lines.append(f"{name}: {values_said(p, i)}")
    return "\n".join(lines)


def class_said(p: Prediction, i: int) -> str:
    """`92%`: image i's answer's probability; `31%: malignant from p ≥ 0.231` where a fitted
    threshold answered other than the top class."""
    said = f"{p.probability[i]:.0%}"
    t = p.threshold
    if t is not None and p.probability[i] < p.probabilities[i].max():
        said += f": {t.name} from p ≥ {t.probability:.3g}"
    return said


def values_said(p: Prediction, i: int) -> str:
    """Image i's value, or a vector's first four components by name, each with its range
    where the run is calibrated: `0.141 (90%: 0.134 to 0.148)`, `discs 1.2 (0.6 to 1.8), ...
    (90% ranges)`."""
    v = np.atleast_1d(p.values[i])
    names = [f"{c} " for c in p.components or []] or [""] * len(v)  # a vector's parts
    ranges = [""] * len(v)
    if p.low is not None:
        low, high = np.atleast_1d(p.low[i]), np.atleast_1d(p.high[i])
        share = f"{p.coverage:.0%}: " if len(v) == 1 else ""  # a vector's: said once, after
        ranges = [f" ({share}{lo:.3g} to {hi:.3g})" for lo, hi in zip(low, high, strict=True)]
    shown = zip(names[:4], v[:4], ranges[:4], strict=True)
    said = ", ".join(f"{c}{x:.3g}{r}" for c, x, r in shown) + (" …" if len(v) > 4 else "")
    return said + (f" ({p.coverage:.0%} ranges)" if p.low is not None and len(v) > 1 else "")


def pixel_shares(p: Prediction, i: int) -> str:
    """Image i's classes by share of its predicted pixels, largest first ("background 71%,
    disc 20%, square 9%"): a class map said in a line. Classes that round to 0% are left
    out, and after CLASSES_SAID the rest is counted (a colorizing run has dozens of colours)."""
    share = p.shares(i)
    said = [f"{p.classes[k]} {share[k]:.0%}" for k in np.argsort(-share, kind="stable")]
    return listed([s for s in said if not s.endswith(" 0%")], ", ", most=CLASSES_SAID)


def draw_predictions(files: list[Path], predictions: Predictions, out: Path, title: str) -> Path:
    """The first SHOWN images, each with its answers (and its per-pixel maps), as a PNG."""
    maps = [n for n, p in predictions.items() if p.per_pixel]
    n = min(len(files), SHOWN)
    cols = 1 + len(maps)
    per_row = max(1, 4 // cols)
    colours = {name: class_colours(predictions[name].classes) for name in maps}
    tiles: list[Tile] = []
    unseen = False  # pixels a crop left out of what the model saw: grey
    for i in range(n):
        with open_image(files[i]) as im:
            im = as_read(im).convert("RGB")  # as the model read it: upright, 8 bits
            im.thumbnail((SIDE, SIDE))  # a photo's megapixels shrink here, not in the grid
            image = np.array(im)
        tiles.append(Tile(image, files[i].name, caption(predictions, i, per_pixel=False)))
        for name in maps:  # on the image as drawn, coloured as the `pixels` figure
            p = predictions[name]
            shown = torch.from_numpy(p.mask(i, image.shape[:2]).astype(np.int64))
            unseen = unseen or bool((shown == NOT_SEEN).any())
            painted = paint(shown, colours[name])
            tiles.append(Tile(rgb(painted), f"{name} (predicted)", pixel_shares(p, i)))
    width = cols * per_row
    key = [e for name in maps for e in key_of(predictions[name].classes, colours[name])]
    key += [("not seen (cropped off)", UNLABELLED)] if unseen and key else []
    fig = mosaic(rows_of(tiles, width), SIDE, title, key=list(dict(key).items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def write_masks(files: list[Path], predictions: Predictions, folder: Path) -> list[Path]:
    """Each per-pixel task's class map of every image, at the image's own size, as a palette
    PNG: its pixel values are class indices (a mask a table reads back), its colours the
    `pixels` figure's, and 255 where a crop left the image's border unseen. photos/a.jpg
    becomes FOLDER/a.<task>.png, sub-folders of the images' common folder kept."""
    maps = check_masks(predictions, folder, [])
    written = []
    for i, stem in enumerate(mask_stems(files)):
        for name, p in maps.items():
            target = folder / f"{stem}.{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            mask = p.mask(i)
            im = Image.fromarray(np.where(mask == NOT_SEEN, UNSEEN_INDEX, mask).astype(np.uint8))
            colours = (class_colours(p.classes) * 255).round().to(torch.uint8).flatten()
            im.putpalette(colours.tolist() + [128, 128, 128] * (256 - len(p.classes)))
            im.save(target)
            written.append(target)
    return written


def check_masks(predictions: Predictions, folder: Path, inputs: list[Path]) -> dict:
    """The per-pixel answers `--masks` writes, checked before any is predicted in full (on a
    first image's `predictions`): a run without one, a task of more classes than a palette
    holds, or a masks folder inside a folder of images (the next predict would read the
    masks as images) is refused."""
    maps = {name: p for name, p in predictions.items() if p.per_pixel}
    if not maps:
        raise CnnlabError("predict --masks: the run has no per-pixel task; leave --masks out")
    for name, p in maps.items():
        if len(p.classes or ()) >= UNSEEN_INDEX:
            raise CnnlabError(
                f"predict --masks: {name} has {len(p.classes or ())} classes, more than a "
                f"palette PNG holds ({UNSEEN_INDEX - 1}); read them with Run.predict and "
                "Prediction.mask"
            )
    target = folder.resolve()
    for source in (i.resolve() for i in inputs if i.is_dir()):
        if target == source or source in target.parents:
            raise CnnlabError(
                f"predict --masks: {folder} is inside {source}, a folder of images: the next "
                "predict would read the masks as images; write them elsewhere"
            )
    return maps


def mask_stems(files: list[Path]) -> list[Path]:
    """Each image's mask name without `.<task>.png`: its path under the images' common
    folder without its suffix (photos/a/x.jpg: a/x), or with it where two images would
    otherwise share one (a.png and a.jpg: a.png, a.jpg)."""
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([f.parent for f in resolved]))
    relative = [f.relative_to(common) for f in resolved]
    stems = [r.with_suffix("") for r in relative]
    taken = Counter(stems)
    return [stem if taken[stem] == 1 else rel for stem, rel in zip(stems, relative, strict=True)]
