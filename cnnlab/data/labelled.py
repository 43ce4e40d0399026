"""Rows without a label for some target (a table's blank cells under `blank: unlabelled`, a
mask with no labelled pixel): counted per split once the splits are carved, said in one
line, and refused where a task would have nothing to learn from or be validated on.

Why here, after the carve: a table's test rows are known when it is read, but validation is
carved from train later (cnnlab/data/batches.py); only then can a line say how many labelled
rows each part holds, and only then is "no labelled validation row" known.
"""

from __future__ import annotations

import torch

from cnnlab.data.augment import NO_LABEL, is_mask
from cnnlab.data.base import ImageSet
from cnnlab.data.lines import say
from cnnlab.errors import CnnlabError
from cnnlab.tasks.base import labelled_rows

NAMES = {"train": "training", "val": "validation", "test": "test"}


def stored_labelled(values: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows of a stored target (a uint8 mask: 255 is no label) with a label."""
    if is_mask(values):
        return (values != NO_LABEL).flatten(1).any(1)
    return labelled_rows(values)


def labelled_counts(parts: dict[str, ImageSet], targets: list[str]) -> dict[str, dict[str, int]]:
    """target -> split -> its rows with a label, for each of `targets` some row lacks one."""
    out = {}
    for target in targets:
        counts = {s: int(stored_labelled(data.targets[target]).sum()) for s, data in parts.items()}
        if any(n < len(parts[s]) for s, n in counts.items()):
            out[target] = counts
    return out


def check_labelled(parts: dict[str, ImageSet], targets: list[str]) -> None:
    """One line of the labelled rows per split of each target with unlabelled ones; a target
    with none in train or val stops the run, naming the fix."""
    counts = labelled_counts(parts, targets)
    if not counts:
        return
    for target, per_split in counts.items():
        refuse_unlabelled(target, {s: (n, len(parts[s])) for s, n in per_split.items()})
    said = [
        f"{target}: " + ", ".join(f"{n:,} of {len(parts[s]):,} {s}" for s, n in per_split.items())
        for target, per_split in counts.items()
    ]
    say(f"data: labelled rows (the others train their other targets): {'; '.join(said)}")


def refuse_unlabelled(target: str, counts: dict[str, tuple[int, int]]) -> None:
    """Stop, in one line, when `target` has rows in train or val (`counts`: split -> (rows
    with a label, rows)) but none of them with a label: a task on it would learn nothing,
    or have no validation metric to choose its best epoch by."""
    for split in ("train", "val"):
        labelled, rows = counts.get(split, (1, 1))
        if rows and not labelled:
            what = "learnt" if split == "train" else "validated (its best epoch chosen)"
            raise CnnlabError(
                f"target {target!r}: none of its {rows:,} {NAMES[split]} rows has a label, so "
                f"a task on it cannot be {what}; label some of them (fill in blank cells of "
                f"its column), or take the task on {target!r} out of the recipe"
            )
