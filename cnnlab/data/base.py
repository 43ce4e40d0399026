"""What every data source provides: its config section, a cheap description, and uint8
tensors with their targets.

A source is one file defining a `DataSection` subclass (its `source` literal is the tag the
recipe's `data.source` picks), a `describe(cfg) -> DataInfo` that reads headers only, and a
`load(cfg) -> Dataset`; `cnnlab/data/__init__.py` lists it in SOURCES.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, model_validator

from cnnlab.config import Section
from cnnlab.data.augment import AugmentConfig, LabelMap, Targets
from cnnlab.data.colorize import TARGET as COLOUR
from cnnlab.data.colorize import ColorizeConfig
from cnnlab.data.mapped import Pixels, take
from cnnlab.errors import CnnlabError

# A derived target is computed from the image the model sees, as float in [0, 1],
# (B, C, H, W) -> (B,), so augmentation that changes it (a shift that cuts pixels off)
# changes the target too.
DerivedTarget = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------- config + description


class DataSection(Section):
    """Fields every source has; a source adds its own and narrows `source` to its tag."""

    source: str  # a name from `cnnlab datasets`
    root: str | None = None  # the one folder read when given; None: $CNNLAB_DATA, else search
    val_fraction: float = Field(0.1, gt=0.0, lt=0.9)  # stratified, carved from the training set
    # k-fold cross-validation (`cnnlab cv`): the training set dealt into `folds` stratified
    # parts, validation the part `fold` (0 to folds - 1) in place of val_fraction's
    folds: int | None = Field(None, ge=2, le=20)
    fold: int = Field(0, ge=0)
    train_subset: int | None = Field(None, ge=10)  # keep a stratified subset of training images
    test_subset: int | None = Field(None, ge=10)  # keep the first N test images (quick checks)
    augment: AugmentConfig = AugmentConfig()  # whole-batch augmentation of training batches
    colorize: ColorizeConfig | None = None  # grey input, per-pixel colour classes (seed 001)

    # How each geometric transform (hflip, vflip, rot90, translate) changes this source's
    # targets: None = unchanged, a function = applied to the transformed images' targets
    # (cnnlab/data/augment.py). A transform missing here is refused when the recipe turns
    # it on; why, for the one line, in `refused`.
    label_maps: ClassVar[dict[str, LabelMap | None]] = {}
    refused: ClassVar[dict[str, str]] = {}
    # A source with no place of its own to look (no system package, no download) needs
    # data.root or $CNNLAB_DATA: what the folder must hold, for the error; "" = it does not.
    root_holds: ClassVar[str] = ""
    # A vector target's values -> a class index (GSN: counts -> pair), so a regression task
    # on it can report how often its prediction lands in the right class.
    to_class: ClassVar[dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {}
    # A categorical target a label map changes -> one full set of targets per class, in class
    # order (GSN: pair k and its counts), so test-time views can map each class as a view
    # maps the image (cnnlab/tta.py).
    class_targets: ClassVar[dict[str, Callable[[], Targets]]] = {}
    # The fields that name a file or folder, relative to the folder cnnlab runs in unless
    # absolute. A saved run read back from another folder finds them where it trained
    # (`located`); a source of one's own with paths of its own names them here.
    path_fields: ClassVar[tuple[str, ...]] = ("root",)
    # (run folder, the folder it trained in or None: an older run) when this section is a
    # saved run's (RunFolder.recipe); None for a recipe about to train
    _run: tuple[Path, Path | None] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _root_given(self) -> DataSection:
        if type(self).root_holds and not self.root and not os.environ.get("CNNLAB_DATA"):
            raise ValueError(
                f"data.root: {self.source} needs the folder that holds {self.root_holds}"
            )
        return self

    @model_validator(mode="after")
    def _fold_within(self) -> DataSection:
        if self.folds is None and self.fold:
            raise ValueError(f"data.fold {self.fold} needs data.folds (how many parts), e.g. 5")
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(
                f"data.fold {self.fold}: the folds are numbered 0 to {self.folds - 1} "
                f"(data.folds {self.folds})"
            )
        return self

    @model_validator(mode="after")
    def _augment_declared(self) -> DataSection:
        maps = self.maps()
        for name in self.augment.geometric():
            if name not in maps:
                why = self.refusal(name)
                raise ValueError(
                    f"data.augment.{name}: {self.source} does not say how {WHAT[name]} changes its "
                    f"targets{f' ({why})' if why else ''}; turn it off ({OFF[name]})"
                    + _others(maps)
                )
        return self

    # A source whose recipe section declares the moves (a table's vector targets) overrides
    # these three; the others answer from their class variables.

    def maps(self) -> dict[str, LabelMap | None]:
        """How each geometric transform changes this recipe's targets (see `label_maps`)."""
        return type(self).label_maps

    def refusal(self, name: str) -> str:
        """Why transform `name` is not declared, for the one-line error; "" = no reason."""
        return type(self).refused.get(name, "")

    def per_pixel(self, target: str) -> bool:
        """Whether `target` is a class per pixel (a mask), not one value per image."""
        return self.colorize is not None and target == COLOUR

    def keeps_classes(self, target: str) -> bool:
        """Whether every declared transform leaves the classes of `target` where they are
        (a per-pixel map still moves with its image), so test-time views need no map of
        its classes."""
        return False

    # ------------------------------------------------------------------ paths

    def relative_paths(self) -> dict[str, str]:
        """field -> value of the path fields given relative to the folder cnnlab runs in."""
        paths = {}
        for name in type(self).path_fields:
            value = getattr(self, name, None)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                paths[name] = value
        return paths

    def of_run(self, run: Path, trained_in: Path | None) -> None:
        """Mark this section as run `run`'s, which trained in the folder `trained_in`."""
        self._run = (Path(run), trained_in)

    def located(self) -> DataSection:
        """This section as the source reads it: a relative path is read in the current
        folder, as always; a saved run's, when it is not there, in the folder the run trained
        in (a copy here comes first: cnnlab never swaps data sets unasked). Neither: one
        line naming both places. The recipe itself keeps the paths as trained."""
        if self._run is None:
            return self
        run, trained_in = self._run
        found = {}
        for name, value in self.relative_paths().items():
            if Path(value).expanduser().exists():
                continue
            if trained_in is not None and (trained_in / value).exists():
                found[name] = str(trained_in / value)
                continue
            there = (
                f"nor in {trained_in}, where {run} trained"
                if trained_in is not None
                else f"and {run} does not record the folder it trained in (an older run)"
            )
            back = f"put it back in {trained_in}, or " if trained_in is not None else ""
            raise CnnlabError(
                f"data.{name}: {value} is not in {Path.cwd()}, where cnnlab runs, {there}; "
                f"{back}run cnnlab from the folder that holds it"
            )
        return self.model_copy(update=found) if found else self


WHAT = {"hflip": "a left-right flip", "vflip": "an up-down flip", "rot90": "a quarter turn"}
WHAT["translate"] = "a shift"
OFF = {"hflip": "hflip: false", "vflip": "vflip: false", "rot90": "rot90: false"}
OFF["translate"] = "translate: 0"


def _others(maps: dict) -> str:
    usable = [n for n in ("hflip", "vflip", "rot90", "translate") if n in maps]
    return f" or use {' / '.join(usable)}" if usable else ""


@dataclass(frozen=True)
class DataInfo:
    """What a source provides, read from headers and metadata only (no pixels): enough to
    check a whole recipe before a run folder is made."""

    source: str
    shape: tuple[int, int, int]  # (C, H, W) of every image
    targets: dict[str, list[str] | None]  # name -> class names if categorical, else None
    sizes: dict[str, int]  # images in each split the source holds, after the subsets
    validation: Literal["carved", "given"]  # carved stratified from train, or the source's own
    # name -> component names of a vector target (GSN's six counts); a scalar has none
    components: dict[str, list[str]] = field(default_factory=dict)

    def categorical(self, target: str) -> bool:
        return self.targets.get(target) is not None


# ------------------------------------------------------------------------------ tensors


@dataclass
class ImageSet:
    """One split: images (N, C, H, W) uint8, in memory or mapped from the decode cache
    (cnnlab/data/mapped.py), and per-image targets (N, ...), always in memory."""

    images: Pixels
    targets: dict[str, torch.Tensor]
    # each image's file as its source names it (a table's path, a folder's relative one),
    # carried through subsets and carving: the run folder's splits.csv says which file
    # went where. None: a source of arrays (Fashion-MNIST, CIFAR-10) has no file per image.
    names: list[str] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> ImageSet:
        names = None if self.names is None else [self.names[i] for i in index.tolist()]
        targets = {k: v[index] for k, v in self.targets.items()}
        return ImageSet(take(self.images, index), targets, names)

    def to(self, device: torch.device | str) -> ImageSet:
        targets = {k: v.to(device) for k, v in self.targets.items()}
        return ImageSet(self.images.to(device), targets, self.names)


@dataclass
class Dataset:
    """A source's splits plus what the tasks need to know about targets. `val` is None when
    validation is carved from `train` (DataInfo.validation == "carved")."""

    name: str
    train: ImageSet
    test: ImageSet
    classes: dict[str, list[str]]  # class names of every categorical target
    derived: dict[str, DerivedTarget] = field(default_factory=dict)
    val: ImageSet | None = None
    components: dict[str, list[str]] = field(default_factory=dict)  # of each vector target
    # (len(train),) group ids of the training images (a table's group_column): validation
    # is carved by whole groups, so no patient or object is in both
    groups: torch.Tensor | None = None

    def target_names(self) -> list[str]:
        return sorted(set(self.train.targets) | set(self.derived))

    def stratify_by(self) -> torch.Tensor | None:
        """Labels of the first categorical per-image target (not a per-pixel map), used to
        stratify splits."""
        for name in self.classes:
            if self.train.targets[name].ndim == 1:
                return self.train.targets[name]
        return None


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Source:
    """One entry of SOURCES: the functions of a source's file, and what it knows."""

    config: type[DataSection]  # its recipe section, tagged by `source`
    describe: Callable[..., DataInfo]  # (cfg) -> DataInfo from headers only
    load: Callable[..., Dataset]  # (cfg) -> Dataset, pixels and all
    locate: Callable[..., dict[str, Path]]  # (root, allow_download) -> files; raises if missing
    doc: str  # one line for `cnnlab datasets`
    # Per-channel (mean, std) in [0, 1] of the dataset, where it publishes them; None: computed
    # from the run's training split by a streaming pass (cnnlab/data/stats.py).
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # (cfg) -> DataInfo without the files, where the format fixes shapes and classes
    # (CIFAR-10 is 3x32x32 in ten classes): a model is then built with no data on the
    # machine (`cnnlab count`). None: only `describe` knows, from the files.
    declares: Callable[..., DataInfo] | None = None
    # (cfg) -> DataInfo as `describe`, saying the lines loading would say of the files
    # before a pixel is read (a table's missing files, classes, blank cells): `cnnlab
    # check`. None: describe (a source with nothing to say before decoding).
    checked: Callable[..., DataInfo] | None = None


def mean_ink(images: torch.Tensor) -> torch.Tensor:
    """Seed 000's "ink": the mean pixel value in [0, 1] of each image, before normalization."""
    return images.float().mean(dim=(1, 2, 3))
