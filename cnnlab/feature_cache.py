"""Training only the heads on a frozen backbone: its pooled features, computed once.

When nothing of the backbone trains (a pretrained one with `freeze: all_but_head`), every
epoch would push every image through the same frozen network for the same features. They
are computed once per split instead, with the targets (derived ones included, made from the
image as the model sees it), and the loop trains the heads on them: on a CPU the heads then
train in seconds where the backbone took minutes an epoch. The price is augmentation: a
cached feature is of the image as it is, so random views are not applied.

The backbone is told (`cached = True`) that its input is already the pooled features; the
model, its checkpoints and the weight average stay the whole model, so eval, figures and
reports rebuild and run it on images as usual.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cnnlab.data.augment import AugmentConfig
from cnnlab.data.base import ImageSet
from cnnlab.data.batches import Batch, Splits
from cnnlab.models import MultiTaskModel
from cnnlab.progress import console, counting


def applies(model: MultiTaskModel, cache: bool) -> bool:
    """A frozen backbone, caching allowed, and every head reads the pooled features."""
    frozen = getattr(model.backbone, "frozen", False)
    return cache and frozen and all(stage is None for stage in model.stages.values())


class CachedSplits(Splits):
    """Splits whose `images` are pooled features (N, F): batches are slices, nothing else."""

    def train_batch(
        self, idx: torch.Tensor, gen: torch.Generator, aug: AugmentConfig, needed: set[str]
    ) -> Batch:
        return self.train.images[idx], {k: v[idx] for k, v in self.train.targets.items()}

    def eval_batch(self, data: ImageSet, rows: slice, needed: set[str]) -> Batch:
        return data.images[rows], {k: v[rows] for k, v in data.targets.items()}


@torch.inference_mode()
def cache_features(
    model: MultiTaskModel,
    splits: Splits,
    needed: set[str],
    batch_size: int,
    autocast: Callable,
    show: bool = True,
) -> CachedSplits:
    """Every split's pooled features and targets, computed by the frozen backbone once."""
    backbone = model.backbone
    backbone.eval()
    sizes = {name: len(getattr(splits, name)) for name in ("train", "val", "test")}
    cached = {}
    with counting("features of the frozen backbone", sum(sizes.values()), show) as advance:
        for name in sizes:
            feats, targets = [], []
            for x, t in splits.eval_batches(name, batch_size, needed):
                with autocast():
                    feats.append(backbone(x).float())
                targets.append(t)
                advance(x.shape[0])
            keys = targets[0].keys() if targets else needed
            cached[name] = ImageSet(
                torch.cat(feats) if feats else torch.empty(0, backbone.num_features),
                {k: torch.cat([t[k] for t in targets]) for k in keys},
            )
    backbone.cached = True
    if show:
        console.print(
            f"frozen backbone: pooled features of {sum(sizes.values()):,} images computed once; "
            "the heads train on them without augmentation (model.cache_features=false keeps it)"
        )
    fields = {f: getattr(splits, f) for f in splits.__dataclass_fields__}
    return CachedSplits(**(fields | cached))
