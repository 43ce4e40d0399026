"""Seeded, stratified index splits: every class keeps its share in every part."""

from __future__ import annotations

import torch

from cnnlab.errors import CnnlabError


def stratified_split(
    labels: torch.Tensor | None, n: int, fraction: float, seed: int,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Indices (keep, held_out) with `fraction` of each class held out (at least one).

    Without labels the split is a plain seeded permutation. Both index tensors are
    sorted so the kept order does not depend on class layout. With `groups` (N,) ids
    (the images of one patient or object), whole groups are held out, stratified by each
    group's first row, and `fraction` counts groups: no group is on both sides.
    """
    if groups is not None:
        ids, inverse = torch.unique(groups, return_inverse=True)
        rows = torch.arange(n)
        first = torch.full((len(ids),), n).scatter_reduce(0, inverse, rows, "amin")
        held = torch.zeros(len(ids), dtype=torch.bool)
        held[stratified_split(None if labels is None else labels[first], len(ids), fraction,
                              seed)[1]] = True  # fmt: skip
        return torch.nonzero(~held[inverse]).flatten(), torch.nonzero(held[inverse]).flatten()
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


def stratified_folds(
    labels: torch.Tensor | None, n: int, k: int, seed: int, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """(N,) each row's fold, 0 to k - 1: every row in exactly one, each class dealt round
    the folds in a seeded order (its share the same in each, give or take one image), a
    class's deal starting where the last one's stopped (so small classes do not all begin
    in fold 0). With `groups`, whole groups are dealt, stratified by each group's first row:
    a patient's images share a fold. Cross-validation: fold f is validation once."""
    if groups is not None:
        ids, inverse = torch.unique(groups, return_inverse=True)
        first = torch.full((len(ids),), n).scatter_reduce(0, inverse, torch.arange(n), "amin")
        by_group = stratified_folds(None if labels is None else labels[first], len(ids), k, seed)
        return by_group[inverse]
    gen = torch.Generator().manual_seed(seed)
    strata = [torch.arange(n)] if labels is None else [
        torch.nonzero(labels == cls).flatten() for cls in torch.unique(labels)
    ]  # fmt: skip
    out, dealt = torch.empty(n, dtype=torch.long), 0
    for members in strata:
        members = members[torch.randperm(len(members), generator=gen)]
        out[members] = (torch.arange(len(members)) + dealt) % k
        dealt += len(members)
    return out


def folds_refused(source: str) -> CnnlabError:
    """`data.folds` on a source that gives its own validation images."""
    return CnnlabError(
        f"data.folds: {source} gives its own validation split, which cross-validation would "
        "replace; remove data.folds, or give the validation rows to training (a table: write "
        "train in their split column) and let the folds carve it"
    )


def stratified_subset(labels: torch.Tensor | None, n: int, size: int, seed: int) -> torch.Tensor:
    """Indices of a stratified subset of `size` items (for quick runs and tests)."""
    if size >= n:
        return torch.arange(n)
    _, subset = stratified_split(labels, n, size / n, seed)
    return subset
