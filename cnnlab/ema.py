"""An exponential moving average of a model's weights, the weights a run is judged by.

Averaging the last thousand or so steps' weights lands nearer the middle of the basin the
optimizer is bouncing around in; on small or noisy data that is often worth a point or two
of validation accuracy for a few milliseconds a step. The update is torch's own foreach EMA
(`get_ema_multi_avg_fn`), called directly: `AveragedModel` would read its step counter on
the host twice per step, a sync on a GPU.

Floating-point buffers (BatchNorm's running statistics) are averaged with the weights;
integer buffers (batches seen) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


def _split(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(floating-point params and buffers, the other buffers), in a fixed order."""
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers())]
    return [t for t in tensors if t.is_floating_point()], [
        t for t in tensors if not t.is_floating_point()
    ]


class WeightAverage:
    """`module`: a copy of the model holding EMA weights, in eval mode, without gradients.
    Starts equal to the model; `update()` after every optimizer step. The model's tensors
    are listed once here (loading a state dict copies into them, so they stay valid)."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self._update = get_ema_multi_avg_fn(decay)
        self._floats, self._others = _split(self.module)
        self._source = _split(model)

    @torch.no_grad()
    def update(self) -> None:
        floats, others = self._source
        self._update(self._floats, floats, None)
        for mine, theirs in zip(self._others, others, strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
