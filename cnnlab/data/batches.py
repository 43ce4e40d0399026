"""From uint8 splits to model-ready batches, gathered by index on the device.

Train/val/test splits live on the training device as uint8, or, for a set larger than
memory, stay mapped from the decode cache and are read batch by batch, a few ahead
(cnnlab/data/mapped.py). A batch is a slice of a seeded permutation; conversion to float,
augmentation, derived targets and normalization are whole-batch tensor ops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from cnnlab.data import colorize, get_source
from cnnlab.data.augment import NO_LABEL, UNCHANGED, AugmentConfig, LabelMap, augment, is_mask
from cnnlab.data.base import DataSection, DerivedTarget, ImageSet
from cnnlab.data.labelled import check_labelled
from cnnlab.data.mapped import MappedImages, Pixels, read_ahead
from cnnlab.data.split import (
    folds_refused,
    stratified_folds,
    stratified_split,
    stratified_subset,
)
from cnnlab.data.stats import channel_stats
from cnnlab.errors import CnnlabError
from cnnlab.tasks.base import NO_CLASS

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]
VALUES_PIXELS = 1 << 24  # image values a batch when a derived target is computed for a split


@dataclass
class Splits:
    """Everything the loop needs from the data, already on the device."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: dict[str, list[str]]
    components: dict[str, list[str]]  # component names of each vector target
    derived: dict[str, DerivedTarget]
    mean: torch.Tensor  # (C,) per-channel mean of the training split, in [0, 1]
    std: torch.Tensor  # (C,)
    channels_last: bool = True
    # how each geometric augmentation changes the targets: the source's DataSection.label_maps
    label_maps: dict[str, LabelMap | None] = field(default_factory=lambda: dict(UNCHANGED))
    grey: bool = False  # colorizing: the model sees the luminance of the colour images

    @property
    def in_channels(self) -> int:
        return 1 if self.grey else self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])

    @property
    def black(self) -> torch.Tensor:
        """(C,) the model input of a black pixel: what a shifted test-time view uncovers,
        as training's translate pads the raw image with zeros before normalizing."""
        return -self.mean / self.std

    def steps_per_epoch(self, batch_size: int) -> int:
        return _num_batches(len(self.train), batch_size)

    # ------------------------------------------------------------------ batches

    def finish(self, x: torch.Tensor, targets: dict[str, torch.Tensor], needed: set[str]) -> Batch:
        """Add derived targets (from the [0, 1] image, in colour), then make the model's
        input: its luminance when colorizing, normalized."""
        out = {k: _labels(v) if is_mask(v) else v for k, v in targets.items() if k in needed}
        for name in needed & self.derived.keys():
            out[name] = self.derived[name](x)
        if self.grey:
            x = colorize.luminance(x)
        x = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, out

    def train_batches(
        self,
        batch_size: int,
        gen: torch.Generator,
        aug: AugmentConfig,
        needed: set[str],
        start: int = 0,
        resume_state: torch.Tensor | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        """One epoch of shuffled, augmented batches, starting at batch `start`.

        The permutation is drawn first from `gen`; on resume the generator is then set to
        the saved state so the remaining augmentation draws match the original run. Mapped
        images are read a few batches ahead in the background (reading draws nothing, so
        the batches are those of the in-memory path), and `part` (i, k), a data-parallel
        rank's place, reads only the rows of its shard of each batch.
        """
        perm = torch.randperm(len(self.train), generator=gen, device=gen.device)
        if resume_state is not None:
            gen.set_state(resume_state)
        steps = range(start, self.steps_per_epoch(batch_size))
        indices = [perm[step * batch_size : (step + 1) * batch_size] for step in steps]
        images = self.train.images
        if not isinstance(images, MappedImages):
            for idx in indices:
                yield self.train_batch(idx, gen, aug, needed)
            return
        for idx, pixels in zip(indices, read_ahead(images, indices, part), strict=True):
            yield self.augmented(pixels, idx, gen, aug, needed)

    def train_batch(
        self, idx: torch.Tensor, gen: torch.Generator, aug: AugmentConfig, needed: set[str]
    ) -> Batch:
        """The training images at `idx`, augmented with draws from `gen`, made model input."""
        return self.augmented(self.train.images[idx], idx, gen, aug, needed)

    def augmented(
        self,
        pixels: torch.Tensor,
        idx: torch.Tensor,
        gen: torch.Generator,
        aug: AugmentConfig,
        needed: set[str],
    ) -> Batch:
        """Training images `pixels` (uint8, the rows `idx`) augmented, made model input."""
        x = pixels.float().div_(255)
        targets = {k: v[idx] for k, v in self.train.targets.items()}
        x, targets = augment(x, targets, aug, gen, self.label_maps)
        return self.finish(x, targets, needed)

    def eval_batches(
        self, split: str, batch_size: int, needed: set[str], part: tuple[int, int] = (0, 1)
    ) -> Iterator[Batch]:
        """The split in order; `part` (i, k): only the i-th of k equal runs of its rows (the
        share one of k data-parallel ranks evaluates)."""
        data: ImageSet = getattr(self, split)
        i, k = part
        start, stop = len(data) * i // k, len(data) * (i + 1) // k
        rows = [slice(lo, min(lo + batch_size, stop)) for lo in range(start, stop, batch_size)]
        if not isinstance(data.images, MappedImages):
            for r in rows:
                yield self.eval_batch(data, r, needed)
            return
        ahead = read_ahead(data.images, [torch.arange(r.start, r.stop) for r in rows])
        for r, pixels in zip(rows, ahead, strict=True):
            x = pixels.float().div_(255)
            yield self.finish(x, {k: v[r] for k, v in data.targets.items()}, needed)

    def values(self, split: str, target: str) -> torch.Tensor:
        """Every image's value of one target, as batches give it. A stored target is read as
        it is; a derived one is computed from the images, VALUES_PIXELS at a time (at 4,096
        images a batch, 224 px images would have made 2.5 GB of floats for one number each)."""
        data: ImageSet = getattr(self, split)
        if target not in self.derived:
            stored = data.targets[target]
            return _labels(stored) if is_mask(stored) else stored
        step = max(1, VALUES_PIXELS // math.prod(data.images.shape[1:]))
        return torch.cat([t[target] for _, t in self.eval_batches(split, step, {target})])

    def eval_batch(self, data: ImageSet, rows: slice, needed: set[str]) -> Batch:
        x = data.images[rows].float().div_(255)
        return self.finish(x, {k: v[rows] for k, v in data.targets.items()}, needed)


def _labels(mask: torch.Tensor) -> torch.Tensor:
    """A uint8 mask as the class indices a per-pixel loss reads: long, "no label" ignored."""
    return mask.long().masked_fill_(mask == NO_LABEL, NO_CLASS)


def _num_batches(n: int, batch_size: int) -> int:
    # A trailing batch of one image would break batch norm; it is dropped, anything larger kept.
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 else 0)


def input_statistics(
    cfg: DataSection, known: tuple | None, images: Pixels, normalize: bool,
    saved: dict[str, list[float]] | None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mean and std per channel of what the model sees, as float32 (C,) tensors: a run's own,
    from its checkpoint, when it has them (resuming, evaluating, a report: measuring them
    again read the whole training set once more, minutes for one larger than memory); when
    colorizing, measured on the training images' luminance; none (0 and 1) for a backbone
    that normalizes its own input; a source's published ones (`known`); else measured."""
    if saved is not None:
        return tuple(torch.tensor(saved[k], dtype=torch.float32) for k in ("mean", "std"))
    if cfg.colorize is not None:
        return channel_stats(images, colorize.luminance)
    if not normalize:
        return torch.zeros(images.shape[1]), torch.ones(images.shape[1])
    if known is not None:
        return tuple(torch.tensor(v, dtype=torch.float32) for v in known)
    return channel_stats(images)


def prepare_splits(
    cfg: DataSection,
    seed: int,
    needed: set[str],
    device: torch.device,
    channels_last: bool = True,
    saved_classes: dict[str, list[str]] | None = None,
    normalize: bool = True,
    saved_normalize: dict[str, list[float]] | None = None,
) -> Splits:
    """Load the source, carve the stratified validation split (unless the source gives one),
    move everything to `device`. `needed`: the targets the tasks train on. `saved_classes`:
    those a checkpoint holds; colorizing reads its palette from them rather than refitting.
    `normalize=False`: batches stay in [0, 1], for a backbone that normalizes its own input
    (a pretrained one, by the statistics it was trained with). `saved_normalize`: the mean
    and std a checkpoint holds, used rather than measured again (`input_statistics`)."""
    source = get_source(cfg.source)
    ds = source.load(cfg.located())  # a saved run's data paths found from here or where it ran
    provided = ds.target_names() + ([colorize.TARGET] if cfg.colorize else [])
    missing = sorted(needed - set(provided))
    if missing:
        raise CnnlabError(
            f"target {missing[0]!r} is not provided by {cfg.source}; "
            f"choose one of: {', '.join(provided)}"
        )
    train = ds.train
    h, w = train.images.shape[2:]
    if cfg.augment.rot90 and h != w:
        raise CnnlabError(
            f"data.augment.rot90: {cfg.source} images are {w}x{h}; a quarter turn needs square "
            "images (turn it off: rot90: false)"
        )
    labels, groups = ds.stratify_by(), ds.groups
    if cfg.train_subset:
        sub = stratified_subset(labels, len(train), cfg.train_subset, seed)
        train = train.subset(sub)
        labels = labels[sub] if labels is not None else None
        groups = groups[sub] if groups is not None else None
    if ds.val is None and cfg.folds:  # cross-validation: one fold of the training set
        fold = stratified_folds(labels, len(train), cfg.folds, seed, groups)
        keep, held = (fold != cfg.fold).nonzero().flatten(), (fold == cfg.fold).nonzero().flatten()
        train, val = train.subset(keep), train.subset(held)
    elif ds.val is None:
        keep, held = stratified_split(labels, len(train), cfg.val_fraction, seed, groups)
        train, val = train.subset(keep), train.subset(held)
    elif cfg.folds:  # the check of the recipe says so first (build.tasks_for)
        raise folds_refused(cfg.source)
    else:
        val = ds.val
    test = ds.test
    if cfg.test_subset:
        test = test.subset(torch.arange(min(cfg.test_subset, len(test))))
    stored = sorted(needed & set(train.targets))  # a derived target is never blank
    check_labelled({"train": train, "val": val, "test": test}, stored)
    classes, derived = dict(ds.classes), dict(ds.derived)
    if cfg.colorize is not None:
        colorize.check_colour(cfg.source, train.images.shape[1])
        palette = colorize.palette_from_names((saved_classes or {}).get(colorize.TARGET, []))
        if palette is None:
            palette = colorize.fit_palette(train.images, cfg.colorize, seed)
        classes[colorize.TARGET] = colorize.palette_names(palette)
        derived[colorize.TARGET] = colorize.nearest_colour(palette.to(device))
    mean, std = input_statistics(cfg, source.stats, train.images, normalize, saved_normalize)
    return Splits(
        train=train.to(device),
        val=val.to(device),
        test=test.to(device),
        classes=classes,
        components=ds.components,
        derived=derived,
        mean=mean.to(device),
        std=std.to(device),
        channels_last=channels_last,
        label_maps=cfg.maps(),
        grey=cfg.colorize is not None,
    )
