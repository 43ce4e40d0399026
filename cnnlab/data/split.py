"""Seeded, stratified index splits: every class keeps its share in every part."""

from __future__ import annotations

import torch


def stratified_split(
    labels: torch.Tensor | None, n: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out) with `fraction` of each class held out (at least one).

    Without labels the split is a plain seeded permutation. Both index tensors are
    sorted so the kept order does not depend on class layout.
    """
    gen = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=gen)
        cut = max(1, round(n * fraction))
        return perm[cut:].sort().values, perm[:cut].sort().values
    held = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        take = (
            min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        )
        held.append(members[:take])
    held_out = torch.cat(held).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def stratified_subset(labels: torch.Tensor | None, n: int, size: int, seed: int) -> torch.Tensor:
    """Indices of a stratified subset of `size` items (for quick runs and tests)."""
    if size >= n:
        return torch.arange(n)
    _, subset = stratified_split(labels, n, size / n, seed)
    return subset
