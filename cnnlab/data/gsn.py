"""GSN (Geometric Shape Numbers, seed 003): 28x28 binary images of ten shapes of two types.

The published format, read as it is (the unzipped `data_gsn` folder works unchanged):
`labels.csv` with the header `name,squares,circles,up,right,down,left` (counts per shape
type) beside the PNGs it names. `data.root` (or $CNNLAB_DATA) is the folder that holds
labels.csv, or a folder holding `data_gsn/`. `cnnlab data gsn` writes such a folder.

Splits: rows in labels.csv order; the last `val_rows` (1,000) are the validation set and
the rest train (the assignment's split: first 9,000 train, last 1,000 validation; nothing
is carved). GSN has no separate test set: the validation rows serve as `test` as well, so
the test metrics of a GSN run are validation metrics, not a held-out estimate.

Targets:
- `pair`: the 135-way class. Order: the 15 unordered type pairs (i < j) in lexicographic
  order of the type order squares, circles, up, right, down, left, then a = the count of
  the first type, 1..9: class = 9 * pair + a - 1; 0 = "squares+circles: 1:9", 8 =
  "squares+circles: 9:1", 9 = "squares+up: 1:9", ..., 134 = "down+left: 9:1".
- `counts`: float (N, 6), the csv's counts in its column order.

Every row is checked: a missing or unreadable image, a non-28x28 image, a wrong header or
counts that break the rules (exactly two types present, summing to 10, whole numbers >= 0)
stop the load with one line naming the line numbers.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from cnnlab.data.augment import AugmentConfig, LabelMap, Targets
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet, Source
from cnnlab.data.files import named_dir
from cnnlab.data.gsn_generator import HEADER, LABELS, PAIRS, SHAPES_PER_IMAGE, TYPES
from cnnlab.errors import CnnlabError, counted, listed

COUNT_NAMES = list(TYPES)  # squares, circles, up, right, down, left: the csv's columns
SPLITS = 9  # a = 1..9
# "pair: split" names: the figures group classes by the part before the colon (errors and
# accuracy by shape pair, as seed 003 reports them)
CLASS_NAMES = [
    f"{TYPES[i]}+{TYPES[j]}: {a}:{SHAPES_PER_IMAGE - a}"
    for i, j in PAIRS
    for a in range(1, SPLITS + 1)
]
FOLDER = "data_gsn"
SIZE = 28
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
_PAIR_INDEX = torch.full((6, 6), -1, dtype=torch.long)
for _k, (_i, _j) in enumerate(PAIRS):
    _PAIR_INDEX[_i, _j] = _k


class GSNAugmentConfig(AugmentConfig):
    """GSN's augmentation: the same keys, but off by default. A shift is not declared (it
    cuts shapes off at the border and so changes the counts); flips and quarter turns are,
    with the label maps below."""

    hflip: bool = False
    translate: int = Field(0, ge=0, le=16)


class GSNConfig(DataSection):
    """`data:` of a GSN recipe."""

    source: Literal["gsn"] = "gsn"
    augment: GSNAugmentConfig = GSNAugmentConfig()  # all off by default; flips are label-aware
    label_maps: ClassVar[dict[str, LabelMap | None]] = {}  # filled in below, after the maps
    refused: ClassVar[dict[str, str]] = {"translate": "counts change when a shape is cut off"}
    # the last val_rows rows of labels.csv are the validation set, and (GSN has no test
    # set) the test set too; the rest train
    val_rows: int = Field(1000, ge=1)
    root_holds: ClassVar[str] = (
        "labels.csv (or data_gsn/); `cnnlab data gsn --out FOLDER` writes one"
    )


# ------------------------------------------------------------------------------ classes


def pair_class(counts: torch.Tensor) -> torch.Tensor:
    """(B, 6) counts (rounded) -> (B,) long class in the documented order. The rows must
    hold two present types (the labels are checked on load); label-aware augmentation can
    recompute the class this way after swapping counts (a flip swaps left and right)."""
    c = counts.round().long()
    present = c > 0
    order = torch.arange(6, device=c.device)
    # the first two present types, in type order: largest key = present and earliest
    key = present.long() * 8 + (5 - order)
    ij = key.topk(2, dim=1).indices  # (B, 2), i < j
    i, j = ij[:, 0], ij[:, 1]
    a = c.gather(1, i[:, None]).squeeze(1).clamp(1, SPLITS)
    return _PAIR_INDEX.to(c.device)[i, j] * SPLITS + a - 1


# The four triangle columns of `counts` in clockwise order of where the apex points.
_UP, _RIGHT, _DOWN, _LEFT = 2, 3, 4, 5
_CLOCKWISE = torch.tensor([_UP, _RIGHT, _DOWN, _LEFT])


def _with_counts(targets: Targets, counts: torch.Tensor) -> Targets:
    """The targets with new counts and the pair class recomputed from them."""
    out = dict(targets)
    if "counts" in out:
        out["counts"] = counts.to(targets["counts"].dtype)
    if "pair" in out:
        out["pair"] = pair_class(counts)
    return out


def _swap(a: int, b: int):
    def swap(targets: Targets, mask: torch.Tensor) -> Targets:
        c = targets["counts"]
        perm = list(range(c.shape[1]))
        perm[a], perm[b] = b, a
        return _with_counts(targets, torch.where(mask[:, None], c[:, perm], c))

    return swap


def turn_counts(targets: Targets, turns: torch.Tensor) -> Targets:
    """Image i turned by turns[i] quarter turns counter-clockwise (torch.rot90 on (H, W)):
    an apex pointing up then points left, right -> up, down -> right, left -> down. In
    clockwise order u, r, d, l at positions q = 0..3, the new count at q is the old one at
    (q + turns) mod 4."""
    c = targets["counts"]
    cw = _CLOCKWISE.to(c.device)
    src = cw[(torch.arange(4, device=c.device)[None, :] + turns[:, None]) % 4]  # (B, 4)
    new = c.clone()
    new[:, cw] = c.gather(1, src)
    return _with_counts(targets, new)


# a left-right mirror swaps right and left; an up-down mirror swaps up and down
GSNConfig.label_maps = {
    "hflip": _swap(_RIGHT, _LEFT),
    "vflip": _swap(_UP, _DOWN),
    "rot90": turn_counts,
}


def counts_to_class(pred_counts: torch.Tensor) -> torch.Tensor:
    """(B, 6) predicted counts (floats) -> (B,) class: the two largest predictions are the
    pair; their counts are moved equally to sum to 10 (a = round((p_i - p_j + 10) / 2) for
    the first type i < j), a clamped to 1..9. Compares a count head with the class head."""
    p = pred_counts.float()
    ij = p.topk(2, dim=1).indices.sort(dim=1).values
    i, j = ij[:, 0], ij[:, 1]
    pi, pj = p.gather(1, i[:, None]).squeeze(1), p.gather(1, j[:, None]).squeeze(1)
    a = torch.round((pi - pj + SHAPES_PER_IMAGE) / 2).long().clamp(1, SPLITS)
    return _PAIR_INDEX.to(p.device)[i, j] * SPLITS + a - 1


GSNConfig.to_class = {"counts": counts_to_class}  # the count head, read as a classifier


def class_targets() -> Targets:
    """The 135 classes in order, each with its counts: where a view sends a class."""
    counts = torch.zeros(len(CLASS_NAMES), len(TYPES))
    for k, (i, j) in enumerate(PAIRS):
        for a in range(1, SPLITS + 1):
            counts[k * SPLITS + a - 1, [i, j]] = torch.tensor([a, SHAPES_PER_IMAGE - a]).float()
    return {"pair": torch.arange(len(CLASS_NAMES)), "counts": counts}


GSNConfig.class_targets = {"pair": class_targets}


# ------------------------------------------------------------------------------ files


def locate(root: str | None, allow_download: bool = False) -> dict[str, Path]:
    """{"labels": labels.csv} in the named folder or its data_gsn/; nothing is downloaded."""
    named = named_dir(root)
    if named is None:
        raise CnnlabError(
            "data.root: gsn needs the folder that holds labels.csv (or data_gsn/); "
            "`cnnlab data gsn --out FOLDER` writes one"
        )
    folder, name = named
    for base in (folder, folder / FOLDER):
        if (base / LABELS).is_file():
            return {"labels": base / LABELS}
    what = "no such folder" if not folder.exists() else f"no {LABELS} in it or in {FOLDER}/"
    raise CnnlabError(
        f"gsn: {folder}, the folder {name} names, has {what}. Fix: point {name} at the "
        "unzipped data_gsn folder, or write one with `cnnlab data gsn --out FOLDER`"
    )


def _fail(path: Path, problems: list[tuple[int, str]]) -> CnnlabError:
    problems = sorted(problems)
    shown = listed([f"line {line}: {what}" for line, what in problems])
    return CnnlabError(f"gsn: {path}: {counted(len(problems), 'bad row')}: {shown}")


def read_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """(image names, int counts (N, 6)) from labels.csv, every row checked."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise CnnlabError(f"gsn: {path}: cannot read ({err})") from None
    if not rows or tuple(h.strip() for h in rows[0]) != HEADER:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise CnnlabError(f"gsn: {path}: line 1: header must be {','.join(HEADER)}, got {got}")
    names: list[str] = []
    counts: list[list[int]] = []
    problems: list[tuple[int, str]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line (a trailing newline twice)
        if len(row) != len(HEADER):
            problems.append((line, f"{len(row)} fields, not {len(HEADER)}"))
            continue
        name, *raw = (v.strip() for v in row)
        try:
            values = [float(v) for v in raw]
        except ValueError:
            problems.append((line, f"counts must be numbers, got {','.join(raw)}"))
            continue
        present = [v for v in values if v != 0]
        if any(v < 0 or v != int(v) for v in values):
            problems.append((line, f"counts must be whole numbers >= 0, got {','.join(raw)}"))
        elif len(present) != 2 or sum(values) != SHAPES_PER_IMAGE:
            problems.append(
                (line, f"counts must name exactly two types summing to 10, got {','.join(raw)}")
            )
        elif not name or "/" in name or "\\" in name or name.startswith("."):
            problems.append((line, f"image name {name!r} must be a file beside {LABELS}"))
        else:
            names.append(name)
            counts.append([int(v) for v in values])
            continue
        names.append("")  # keeps the indices aligned; the load stops anyway
        counts.append([0] * 6)
    if problems:
        raise _fail(path, problems)
    if not names:
        raise CnnlabError(f"gsn: {path}: no rows under the header")
    return names, np.asarray(counts, dtype=np.int64).reshape(-1, 6)


def _decode_all(folder: Path, names: list[str]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """uint8 (N, 1, 28, 28) and the problems (csv line, what) of images that failed."""
    out = np.empty((len(names), 1, SIZE, SIZE), dtype=np.uint8)
    problems: list[tuple[int, str]] = []
    inside = folder.resolve()

    def one(k: int) -> None:
        path = folder / names[k]
        if path.exists() and not path.resolve().is_relative_to(inside):
            problems.append((k + 2, f"{names[k]} links outside {folder}"))
            return  # a file list never makes cnnlab read outside its folder
        try:
            with Image.open(path) as im:
                im.load()
                if im.size != (SIZE, SIZE):
                    w, h = im.size
                    problems.append((k + 2, f"{names[k]} is {w}x{h}, not {SIZE}x{SIZE}"))
                    return
                out[k, 0] = np.asarray(im.convert("L"), dtype=np.uint8)
        except FileNotFoundError:
            problems.append((k + 2, f"{names[k]} is missing"))
        except Exception as err:  # corrupt, truncated, not an image
            problems.append((k + 2, f"{names[k]} is unreadable ({type(err).__name__})"))

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        list(pool.map(one, range(len(names))))
    return out, problems


# ------------------------------------------------------------------------------ source


def _split_sizes(cfg: GSNConfig, n: int, path: Path) -> tuple[int, int]:
    if cfg.val_rows >= n:
        raise CnnlabError(
            f"gsn: {path} has {n:,} rows; data.val_rows ({cfg.val_rows:,}) must leave some "
            "for training"
        )
    return n - cfg.val_rows, cfg.val_rows


def describe(cfg: GSNConfig) -> DataInfo:
    """Classes and sizes from labels.csv alone (no pixel is read)."""
    path = locate(cfg.root)["labels"]
    names, _ = read_labels(path)
    train, val = _split_sizes(cfg, len(names), path)
    return DataInfo(
        source="gsn",
        shape=(1, SIZE, SIZE),
        targets={"pair": CLASS_NAMES, "counts": None},
        sizes={
            "train": min(train, cfg.train_subset) if cfg.train_subset else train,
            "val": val,
            "test": min(val, cfg.test_subset) if cfg.test_subset else val,
        },
        validation="given",
        components={"counts": list(COUNT_NAMES)},
    )


def load(cfg: GSNConfig) -> Dataset:
    """uint8 (N, 1, 28, 28) with targets pair (long) and counts (float (N, 6)); the last
    val_rows rows are `val` and, GSN having no test set, `test` too."""
    path = locate(cfg.root)["labels"]
    names, counts = read_labels(path)
    n_train, _ = _split_sizes(cfg, len(names), path)
    images, problems = _decode_all(path.parent, names)
    if problems:
        raise _fail(path, problems)
    pixels = torch.from_numpy(images)
    count_t = torch.from_numpy(counts).float()
    targets = {"pair": pair_class(count_t), "counts": count_t}
    train = ImageSet(pixels[:n_train], {k: v[:n_train] for k, v in targets.items()})
    val = ImageSet(pixels[n_train:], {k: v[n_train:] for k, v in targets.items()})
    return Dataset(
        name="gsn",
        train=train,
        test=val,
        val=val,
        classes={"pair": CLASS_NAMES},
        components={"counts": list(COUNT_NAMES)},
    )


SOURCE = Source(
    config=GSNConfig,
    describe=describe,
    load=load,
    locate=locate,
    doc="GSN (Geometric Shape Numbers) 28x28 binary shapes: 135 pair classes, 6 counts; val = test",
    stats=None,  # mean/std from a streaming pass over the run's training split
)
