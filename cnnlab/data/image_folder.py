"""Any folder of images, one sub-folder per class: iNaturalist-12K's layout or a plain one.

Layouts (under `data.root`, else $CNNLAB_DATA):

- `root/train/<class>/*` + `root/val/<class>/*` (iNaturalist-12K): `val/` is the test set,
  as seed 002 uses it, and validation is carved (stratified, `val_fraction`, 20 %) from
  `train/`.
- `root/<class>/*`: the test set is carved from the images first (stratified,
  `test_fraction`), with a fixed seed (TEST_SEED) so it is the same images for every run
  seed; validation is then carved from the rest with the run's seed.

Class names are the sorted sub-folder names (of `train/`, which `val/` must match); a
class's images may lie in sub-folders of its own (`cats/2019/`). Hidden entries are
skipped; every file's resolved path must stay inside the root (a symlink that
points out is skipped). Files that are empty, corrupt or no image are skipped too, all of
them named in one warning line. A classifier needs two classes, and each class a readable
training image: a single class folder, or one of only non-images, stops the run naming it.

Pixels are decoded once (in parallel, see DECODE_THREADS), upright, to uint8 (N, C, S, S)
and cached in `cache_dir("image_folder")/<sha256 of root, size, resize, FORMAT and
decoded.PIXELS>/` with a manifest of every file's name, size and mtime; a later load
rescans the names and stats only, and reuses the cache when nothing changed (else decodes
again). The user's folder is never written to.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from cnnlab.data.augment import UNCHANGED, LabelMap
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet, Source
from cnnlab.data.decoded import cached_decode, dark_warning, decode_image
from cnnlab.data.files import named_dir, stays_inside
from cnnlab.data.mapped import MappedImages, Pixels
from cnnlab.data.memory import Storage
from cnnlab.data.split import stratified_split
from cnnlab.errors import CnnlabError, counted, listed

FORMAT = 2  # bump when the cached array or the manifest changes meaning
TEST_SEED = 0  # the single-folder layout's test split is the same for every run seed
CACHE_NAME = "image_folder"
LAYOUT = "root/train/<class>/* + root/val/<class>/*, or root/<class>/*"
# Decoding (cnnlab/data/decoded.py): a thread pool. Pillow releases the GIL while it decodes
# and resizes, and with Image.draft libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 scale when that
# still covers the target size (a help for large photos; none at 500x375 -> 224, where 1/2
# would be too small). Measured on the 2-core AMD EPYC, 300 JPEGs around 500x375 -> 224 px,
# two runs: threads 502 / 329 images/s, serial 443 / 344, a process pool 403 / 265 (its
# start and the pickled arrays cost more than they win); draft off: threads 511 / 334. The
# machine is shared and noisy; threads were never clearly worse and cost nothing to start.


class ImageFolderConfig(DataSection):
    """`data:` of an image-folder recipe."""

    source: Literal["image_folder"] = "image_folder"
    # natural images: flipped, turned or shifted, they show the same class (augment.py)
    label_maps: ClassVar[dict[str, LabelMap | None]] = UNCHANGED
    image_size: int = Field(224, ge=8)  # images become image_size x image_size
    # 3: RGB; 1: grey, by luminance (an X-ray folder: a third of the memory and of the first
    # layer's input; a pretrained backbone repeats it into its 3 on the device)
    channels: Literal[1, 3] = 3
    # crop: shorter side to image_size, then the centre square; squash: straight to the square
    resize: Literal["crop", "squash"] = "crop"
    # 16-bit images: the bits their values use, 2**bits - 1 read as white (12: a 12-bit
    # camera's 0-4095; as 16 bits they would keep 16 grey levels, near black)
    bits: int = Field(16, ge=9, le=16)
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)  # seed 002: 20 %, stratified
    # Only for a single root/<class>/* folder: the stratified share kept as the test set,
    # carved with a fixed seed (the same for every run). With train/ + val/, val/ is the test.
    test_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    # decoded pixels held in memory, or mapped from the cache file and read by batch; auto:
    # mapped when the cache is over half the memory available (cnnlab/data/memory.py)
    storage: Storage = "auto"
    root_holds: ClassVar[str] = "train/ and val/ (or one folder per class)"


# ------------------------------------------------------------------------------ scanning


@dataclass
class Scan:
    """The folder's files without their pixels: what the manifest compares."""

    root: Path  # resolved
    classes: list[str]
    layout: Literal["given", "single"]
    files: list[tuple[str, int, int, str, int]] = field(default_factory=list)
    # (relative path, size, mtime_ns, split, label); split: train, test, or all (single)
    outside: list[str] = field(default_factory=list)  # symlinks pointing out of the root

    def count(self, split: str) -> int:
        return sum(1 for f in self.files if f[3] == split)


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _class_dirs(folder: Path) -> list[str]:
    return [e.name for e in _entries(folder) if e.is_dir()]


def locate(root: str | None, allow_download: bool = False) -> dict[str, Path]:
    """The split folders: {"train", "test"} (train/ + val/) or {"all"} (one folder per
    class). Nothing is ever downloaded."""
    named = named_dir(root)
    if named is None:
        raise CnnlabError(
            "data.root: image_folder needs the folder that holds train/ and val/ "
            "(or one folder per class)"
        )
    folder, name = named
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "a file, not a folder"
        raise CnnlabError(
            f"image_folder: {folder}, the folder {name} names, is {what}; expected {LAYOUT}"
        )
    train, val = folder / "train", folder / "val"
    if train.is_dir() and val.is_dir():
        return {"train": train, "test": val}
    if train.is_dir() or val.is_dir():
        raise CnnlabError(
            f"image_folder: {folder} has {'train/' if train.is_dir() else 'val/'} but not "
            f"{'val/' if train.is_dir() else 'train/'}; expected {LAYOUT}"
        )
    if not _class_dirs(folder):
        raise CnnlabError(f"image_folder: {folder} holds no class folders; expected {LAYOUT}")
    return {"all": folder}


def scan(root: str | None) -> Scan:
    """Names, sizes and mtimes of every file (os.scandir + stat; no pixel is read)."""
    dirs = locate(root)
    base = Path(os.path.commonpath([str(d) for d in dirs.values()]))
    if "all" in dirs:
        base = dirs["all"]
    base_resolved = base.resolve()
    classes = _class_dirs(next(iter(dirs.values())))
    if "test" in dirs:
        other = _class_dirs(dirs["test"])
        if other != classes:
            only_train = sorted(set(classes) - set(other))
            only_val = sorted(set(other) - set(classes))
            raise CnnlabError(
                f"image_folder: train/ and val/ of {base} have different classes: only in "
                f"train/: {only_train}; only in val/: {only_val}"
            )
    out = Scan(base_resolved, classes, "single" if "all" in dirs else "given")
    folders: dict[str, tuple[Path, bool]] = {}
    away: set[str] = set()  # classes whose folder leads outside: named in the warning
    for split, folder in dirs.items():
        for label, cls in enumerate(classes):
            cdir = folder / cls
            prefix = os.path.relpath(cdir, base)
            if not stays_inside(base_resolved, prefix, folders):
                out.outside.append(prefix)
                away.add(cls)
                continue
            for rel, st in _class_files(base, base_resolved, prefix, folders, out.outside):
                out.files.append((rel, st.st_size, st.st_mtime_ns, split, label))
    _no_empty_class(out, away)
    return out


def _class_files(
    base: Path, root: Path, prefix: str, folders: dict[str, tuple[Path, bool]], outside: list[str]
) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to base, stat) of every file under base/prefix, its sub-folders'
    included (a class's photos by year: torchvision's ImageFolder reads them too), a
    folder's own files first, in name order. What leads outside `root` (base resolved) is
    listed in `outside`; a link to a folder is not followed (no image in two classes, no
    loop)."""
    pending = [prefix]
    while pending:
        folder = pending.pop(0)
        below = []
        for entry in _entries(base / folder):
            rel = os.path.join(folder, entry.name)
            if not stays_inside(root, rel, folders, entry.is_symlink()):
                outside.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                below.append(rel)
            elif entry.is_file():  # not a link to a folder, not a special file
                yield rel, entry.stat()
        pending[:0] = below  # depth first


def _no_empty_class(found: Scan, away: set[str]) -> None:
    """A class folder without a file would train a class that never appears: refused (one
    whose folder leads outside the root, `away`, is named in the warning about those)."""
    counts = Counter(f[4] for f in found.files)
    empty = [c for label, c in enumerate(found.classes) if not counts[label] and c not in away]
    if empty:
        raise CnnlabError(
            f"image_folder: the class folder {empty[0]}/ of {found.root} holds no files"
            + (f" ({len(empty)} such classes)" if len(empty) > 1 else "")
            + "; add its images or remove the folder"
        )


def _two_classes(found: Scan, cfg: ImageFolderConfig) -> None:
    """A classifier of one class learns nothing: it trained to loss 0 and accuracy 1, then
    named that class with probability 1 for every image. Refused, unless the folder only
    feeds a colorizing recipe (data.colorize), which reads no class."""
    if len(found.classes) != 1 or cfg.colorize is not None:
        return
    where = str(found.root) if found.layout == "single" else f"train/ and val/ of {found.root}"
    raise CnnlabError(
        f"image_folder: {where} {'holds' if found.layout == 'single' else 'hold'} one class "
        f"folder, {found.classes[0]}/, and a classifier needs two or more; add a folder of "
        "images for each other class beside it (one sub-folder per class)"
    )


def _every_class_read(found: Scan, files: list[tuple]) -> None:
    """Every class has a decoded training image (`files`: the decoded files' scan entries).
    A class folder of only non-images (a readme.txt) or of files that all failed to decode
    became a class with no image, the only sign a "1 file skipped" warning."""
    side = "all" if found.layout == "single" else "train"
    read = Counter(f[4] for f in files if f[3] == side)
    missing = [label for label in range(len(found.classes)) if not read[label]]
    if not missing:
        return
    label = missing[0]
    cls = found.classes[label]
    prefix = cls if side == "all" else os.path.join("train", cls)
    tried = [f[0] for f in found.files if f[4] == label and f[3] == side]
    fix = "add its images or remove the folder"
    if prefix in found.outside:
        why = "leads outside it (a link), so none of its images is read"
        fix = f"move its images into {found.root} or remove the link"
    elif not tried:  # train/<class>/ empty, val/<class>/ not
        why = "holds no files"
    else:
        names = listed([os.path.relpath(t, prefix) for t in tried], ", ")
        why = (
            f"holds no readable image: its {counted(len(tried), 'file')} ({names}) "
            f"{'is not an image or cannot' if len(tried) == 1 else 'are not images or cannot'}"
            " be decoded"
        )
    raise CnnlabError(
        f"image_folder: the class folder {prefix}/ of {found.root} {why}"
        + (f" ({len(missing)} such classes)" if len(missing) > 1 else "")
        + f"; {fix}"
    )


# ------------------------------------------------------------------------------ the cache


def _identity(found: Scan, cfg: ImageFolderConfig) -> dict:
    """What the cache must match: every file as scanned, and how it is decoded."""
    return {
        "format": FORMAT,
        "root": str(found.root),
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "resize": cfg.resize,
        "bits": cfg.bits,
        "classes": found.classes,
        "files": [list(f) for f in found.files],
        "outside": found.outside,
    }


def cached_pixels(cfg: ImageFolderConfig) -> tuple[Scan, Pixels, list[tuple]]:
    """(the scan, uint8 (N, C, S, S) in memory or mapped, the decoded files' scan entries)
    from the cache if it matches the folder as it is now, else decoded afresh and cached."""
    found = scan(cfg.root)
    _two_classes(found, cfg)
    rels = [f[0] for f in found.files]
    size, mode = cfg.image_size, "L" if cfg.channels == 1 else "RGB"
    if rels:
        dark_warning(found.root / rels[0], cfg.bits, CACHE_NAME)
    decoded = cached_decode(
        CACHE_NAME,
        [str(found.root), size, cfg.resize, FORMAT, cfg.channels, cfg.bits],
        _identity(found, cfg),
        rels,
        {"images": (cfg.channels, size, size)},
        lambda i: {"images": decode_image(found.root / rels[i], size, cfg.resize, mode, cfg.bits)},
        skipped=found.outside,
        storage=cfg.storage,
    )
    return found, decoded.pixels["images"], [found.files[i] for i in decoded.kept]


# ------------------------------------------------------------------------------ the source


def describe(cfg: ImageFolderConfig) -> DataInfo:
    """Shape, classes and sizes from the folder's names alone (no pixel is read). The sizes
    count files, so they are approximate until decoding has skipped the unreadable ones;
    for a single folder the test size is the stratified carve's approximate share."""
    found = scan(cfg.root)
    _two_classes(found, cfg)
    if found.layout == "given":
        train, test = found.count("train"), found.count("test")
    else:
        n = found.count("all")
        test = round(n * cfg.test_fraction)
        train = n - test
    sizes = {
        "train": min(train, cfg.train_subset) if cfg.train_subset else train,
        "test": min(test, cfg.test_subset) if cfg.test_subset else test,
    }
    return DataInfo(
        source="image_folder",
        shape=(cfg.channels, cfg.image_size, cfg.image_size),
        targets={"label": found.classes},
        sizes=sizes,
        validation="carved",
    )


def _rows(pixels: Pixels, index: torch.Tensor) -> Pixels:
    """pixels[index], as a view when the rows are consecutive (train/ then val/ are, in the
    cache): iNaturalist-12K at 224 px is 1.8 GB, and a copy of it is memory nobody needs.
    Mapped pixels only compose the index."""
    if isinstance(pixels, MappedImages):
        return pixels.subset(index)
    if len(index) and torch.equal(index, torch.arange(int(index[0]), int(index[0]) + len(index))):
        return pixels[int(index[0]) : int(index[0]) + len(index)]
    return pixels[index]


def load(cfg: ImageFolderConfig) -> Dataset:
    """Train and test as uint8 (N, C, S, S) with targets {"label": long}."""
    found, pixels, files = cached_pixels(cfg)
    _every_class_read(found, files)
    labels = torch.tensor([f[4] for f in files], dtype=torch.long)
    if found.layout == "given":
        is_test = torch.tensor([f[3] == "test" for f in files], dtype=torch.bool)
        train_idx = torch.nonzero(~is_test).flatten()
        test_idx = torch.nonzero(is_test).flatten()
    else:
        train_idx, test_idx = stratified_split(labels, len(labels), cfg.test_fraction, TEST_SEED)
    if len(train_idx) == 0:
        raise CnnlabError(f"image_folder: no readable training images under {found.root}")
    names = [f[0] for f in files]  # each file relative to the root

    def part(index: torch.Tensor) -> ImageSet:
        return ImageSet(
            _rows(pixels, index), {"label": labels[index]}, [names[i] for i in index.tolist()]
        )

    return Dataset(
        name="image_folder",
        train=part(train_idx),
        test=part(test_idx),
        classes={"label": found.classes},
    )


SOURCE = Source(
    config=ImageFolderConfig,
    describe=describe,
    load=load,
    locate=locate,
    doc="a folder of images, one sub-folder per class (iNaturalist-12K: train/ + val/)",
    stats=None,  # mean/std from a streaming pass over the run's training split
)
