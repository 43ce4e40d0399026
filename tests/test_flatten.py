"""cnnlab's Flatten: nn.Flatten's values, a gradient in the input's layout."""

import pytest
import torch
from torch import nn

from cnnlab.models.flatten import Flatten


def _map(layout: torch.memory_format, hw: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 8, hw, hw).contiguous(memory_format=layout).requires_grad_()


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_values_and_gradient_equal_nn_flatten(layout):
    x, ref = _map(layout), _map(layout)
    weight = torch.randn(8 * 9, 5)
    (Flatten()(x) @ weight).square().sum().backward()
    (nn.Flatten()(ref) @ weight).square().sum().backward()
    assert torch.equal(Flatten()(x), nn.Flatten()(ref))
    assert torch.equal(x.grad, ref.grad)


def _gradient_reaching(flatten: nn.Module) -> torch.Tensor:
    """The gradient the layer before the flatten receives (a leaf's .grad would be copied to
    the leaf's layout by autograd, whatever arrived)."""
    x = _map(torch.channels_last) * 1.0
    seen = []
    x.register_hook(seen.append)
    (flatten(x) @ torch.randn(8 * 9, 5)).sum().backward()
    return seen[0]


def test_a_channels_last_input_gets_a_channels_last_gradient():
    ours, torchs = _gradient_reaching(Flatten()), _gradient_reaching(nn.Flatten())
    assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()
    assert not torchs.is_contiguous(memory_format=torch.channels_last)  # why it exists
    assert torch.equal(ours, torchs)


def test_other_dims_and_one_pixel_maps_are_nn_flattens():
    x = _map(torch.channels_last, hw=1)  # (4, 8, 1, 1): a view either way
    assert Flatten()(x).grad_fn.name() == nn.Flatten()(x).grad_fn.name()
    y = _map(torch.channels_last)
    assert Flatten(0, 1)(y).shape == (32, 3, 3)
