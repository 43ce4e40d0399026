"""Test-time views: the model judged on each symmetry of an image, its answers mapped back to
the image as it is and averaged.

A shift (`translate`: one pixel up, down, left or right, the uncovered edge black as in
training's translate) is a view too; with hflip it makes ten.

A flip or a quarter turn can change what an image's labels are (a mirrored GSN image has its
left and right triangles swapped), so the model's answer on a view is about the view's
labels. Each answer is mapped back before averaging: a class head's probabilities
re-indexed by where the view sends each class, a vector regression's components likewise,
a per-pixel map turned back. Where a view sends a class comes from the source's own label
maps (those augmentation uses) applied to one set of targets per class (the source's
`class_targets`), so test-time views and training augmentation cannot disagree.

Class heads average probabilities and hand on their log (valid logits: the loss, argmax and
softmax read them as the averaged distribution); heads with an `encode` to undo their
`decode` (regression) average in target units; any other head (a multi-label task's of
one's own) averages its raw outputs, which for logits is the geometric mean of the odds.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.data.augment import LabelMap, Targets, relabel
from cnnlab.data.base import WHAT, DataSection
from cnnlab.data.batches import Splits
from cnnlab.errors import CnnlabError
from cnnlab.tasks import Task

TRANSFORMS = ("hflip", "vflip", "rot90", "translate")
# (dy, dx) of translate's views: one pixel each way. The four diagonal shifts as well measured
# no better on Fashion-MNIST (93.28 % against 93.27 % with flips, one model) at twice the cost.
SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def shifted(x: torch.Tensor, dy: int, dx: int, fill: torch.Tensor | None) -> torch.Tensor:
    """x moved dy rows down and dx columns right. The uncovered edge takes `fill` (C,), or,
    with None, repeats its neighbour (a per-pixel answer moved back has nothing there)."""
    h, w = x.shape[-2:]
    top, bottom, left, right = max(dy, 0), max(-dy, 0), max(dx, 0), max(-dx, 0)
    pads = (left, right, top, bottom)
    if fill is None:
        moved = F.pad(x, pads, mode="replicate")
    else:  # one addition, not four slice writes (x + 0 keeps x exactly): fashion_fast's
        # exported graph of ten views has half the nodes (287, not 554) and exports 1.5x faster
        uncovered = 1 - F.pad(x.new_ones(1, 1, h, w), pads)
        moved = F.pad(x, pads) + uncovered * fill.to(x.dtype).view(1, -1, 1, 1)
    out = moved[..., bottom : bottom + h, right : right + w]
    last = x.is_contiguous(memory_format=torch.channels_last) and x.ndim == 4
    return out.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)


@dataclass(frozen=True)
class View:
    """Mirror left-right, then up-down, then turn counter-clockwise, then shift:
    augmentation's order."""

    hflip: bool = False
    vflip: bool = False
    turns: int = 0
    shift: tuple[int, int] = (0, 0)  # (dy, dx)

    def apply(self, x: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
        """The view of model input x; `fill` (C,): the input value of a black pixel."""
        if self.hflip:
            x = x.flip(-1)
        if self.vflip:
            x = x.flip(-2)
        x = torch.rot90(x, self.turns, (-2, -1)) if self.turns else x
        if self.shift != (0, 0):
            x = shifted(x, *self.shift, x.new_zeros(x.shape[1]) if fill is None else fill)
        return x

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of `apply`, for maps aligned with the view (per-pixel outputs); the
        edge a shift pushed out is the nearest answer inside."""
        if self.shift != (0, 0):
            x = shifted(x, -self.shift[0], -self.shift[1], None)
        x = torch.rot90(x, -self.turns, (-2, -1)) if self.turns else x
        if self.vflip:
            x = x.flip(-2)
        return x.flip(-1) if self.hflip else x

    def targets(self, targets: Targets, maps: Mapping[str, LabelMap | None]) -> Targets:
        """The targets of every image seen through this view (the source's label maps)."""
        n = next(iter(targets.values())).shape[0]
        every = torch.ones(n, dtype=torch.bool)
        if self.hflip:
            targets = relabel("hflip", targets, every, maps)
        if self.vflip:
            targets = relabel("vflip", targets, every, maps)
        if self.turns:
            targets = relabel("rot90", targets, torch.full((n,), self.turns), maps)
        if self.shift != (0, 0):
            targets = relabel("translate", targets, torch.tensor([self.shift]).expand(n, 2), maps)
        return targets


def distinct_views(names: list[str]) -> list[View]:
    """Every combination of the named transforms, each distinct effect once (with rot90,
    hflip and vflip give the 8 symmetries of the square, not 16), the identity first."""
    probe = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    seen, views = set(), []
    for h, v, t, s in itertools.product(
        (False, True) if "hflip" in names else (False,),
        (False, True) if "vflip" in names else (False,),
        range(4) if "rot90" in names else (0,),
        SHIFTS if "translate" in names else SHIFTS[:1],
    ):
        view = View(h, v, t, s)
        key = tuple(view.apply(probe).flatten().tolist())
        if key not in seen:
            seen.add(key)
            views.append(view)
    return views


def _where_sent(task: Task, data: DataSection, view: View) -> torch.Tensor | None:
    """(K,) index: the view's output channel that answers for channel k of the image as it
    is. None: the view leaves this task's labels alone."""
    maps, target = data.maps(), task.target
    if all(maps.get(n) is None for n in TRANSFORMS) or data.keeps_classes(target):
        return None
    if task.info.classes is not None:
        make = type(data).class_targets.get(target)
        if make is None:
            raise CnnlabError(
                f"train.tta: {data.source} cannot say where a view sends each class of "
                f"{target!r}; turn test-time views off (train.tta=[])"
            )
        return view.targets(make(), maps)[target].long()
    k = len(task.info.components or [])
    if not k:  # a scalar target a view changes: no channel to re-index
        raise CnnlabError(f"train.tta: a view changes {target!r}; set train.tta=[]")
    sent = view.targets({target: torch.eye(k)}, maps)[target]
    permutation = ((sent == 0) | (sent == 1)).all() and (sent.sum(0) == 1).all()
    if not (permutation and (sent.sum(1) == 1).all()):
        raise CnnlabError(f"train.tta: views mix the components of {target!r}; set train.tta=[]")
    return sent.argmax(1)


def run_views(
    names: list[str], tasks: dict[str, Task], data: DataSection, splits: Splits
) -> ViewAverage | None:
    """The recipe's `train.tta` for a run's data, None when it names no view: the test and
    the figures of a run build theirs alike, so the figures show what the test measured."""
    return ViewAverage(names, tasks, data, splits.image_size, splits.black) if names else None


class ViewAverage:
    """`views(model, x)`: the model's outputs on x, averaged over the views and mapped back.

    Built (and every view checked against the source) before a run folder is made."""

    def __init__(
        self,
        names: list[str],
        tasks: dict[str, Task],
        data: DataSection,
        image_size: tuple[int, int],
        black: torch.Tensor | None = None,
    ):
        """`black` (C,): the model input of a black pixel, which shifted views uncover."""
        for name in names:
            if name not in data.maps():
                raise CnnlabError(
                    f"train.tta: {name} is not declared by {data.source} ({WHAT[name]} may "
                    "change its targets); leave it out of train.tta"
                )
        if "rot90" in names and image_size[0] != image_size[1]:
            raise CnnlabError(f"train.tta: rot90 needs square images, not {image_size}")
        self.tasks, self.black = tasks, black
        self.views = [
            (view, {name: _where_sent(task, data, view) for name, task in tasks.items()})
            for view in distinct_views(names)
        ]

    def __call__(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        for view, sent in self.views:
            for name, out in model(view.apply(x, self.black)).items():
                back = self._back(model.heads[name], name, out, view, sent[name])
                sums[name] = back if name not in sums else sums[name] + back
        n = len(self.views)
        return {name: self._finish(model.heads[name], name, s / n) for name, s in sums.items()}

    def _is_class(self, name: str) -> bool:
        return self.tasks[name].info.classes is not None

    def _back(
        self, head: nn.Module, name: str, out: torch.Tensor, view: View, sent: torch.Tensor | None
    ) -> torch.Tensor:
        if self._is_class(name):
            value = out.float().softmax(1)
        else:
            value = head.decode(out) if hasattr(head, "encode") else out.float()
        if value.ndim == 4:  # a per-pixel map: turn it back to the image as it is
            value = view.undo(value)
        if sent is not None:
            value = value.index_select(1, sent.to(value.device))
        return value

    def _finish(self, head: nn.Module, name: str, mean: torch.Tensor) -> torch.Tensor:
        if self._is_class(name):
            return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
        return head.encode(mean) if hasattr(head, "encode") else mean
