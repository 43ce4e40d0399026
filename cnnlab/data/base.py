"""What every data source hands to the rest of cnnlab: uint8 tensors and targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# A derived target is computed from the image the model sees, as float in [0, 1],
# (B, C, H, W) -> (B,), so augmentation that changes it (a shift that cuts pixels off)
# changes the target too.
DerivedTarget = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ImageSet:
    """One split in memory: images (N, C, H, W) uint8 and per-image targets (N, ...)."""

    images: torch.Tensor
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], {k: v[index] for k, v in self.targets.items()})

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), {k: v.to(device) for k, v in self.targets.items()})


@dataclass
class Dataset:
    """A source's train and test splits plus what the tasks need to know about targets."""

    name: str
    train: ImageSet
    test: ImageSet
    classes: dict[str, list[str]]  # class names of every categorical target
    derived: dict[str, DerivedTarget] = field(default_factory=dict)

    def target_names(self) -> list[str]:
        return sorted(set(self.train.targets) | set(self.derived))

    def stratify_by(self) -> torch.Tensor | None:
        """Labels of the first categorical target, used to stratify splits."""
        for name in self.classes:
            return self.train.targets[name]
        return None


def mean_ink(images: torch.Tensor) -> torch.Tensor:
    """Seed 000's "ink": the mean pixel value in [0, 1] of each image, before normalization."""
    return images.float().mean(dim=(1, 2, 3))
