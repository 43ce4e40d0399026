import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_backbone, create_model
from cnnlab.models.cnn import CNNConfig
from cnnlab.models.layers import ACTIVATIONS
from cnnlab.models.pool import MaxPool2d
from tests.conftest import fitted_tasks


def build(tiny, *overrides):
    recipe = tiny(*overrides)
    return recipe, create_model(recipe.model, 1, (28, 28), fitted_tasks(recipe, ink=(0.3, 0.1)))


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_every_activation_builds_and_runs(tiny, act):
    _, model = build(tiny, f"model.activation={act}")
    out = model(torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    assert out["cls"].shape == (4, 10) and out["ink"].shape == (4,)
    assert any(isinstance(m, ACTIVATIONS[act]) for m in model.modules())


def test_blocks_filters_convs_and_pooling(tiny):
    _, model = build(
        tiny,
        "model.blocks=2",
        "model.filters=[6, 12]",
        "model.convs_per_block=2",
        "model.kernel_size=5",
        "model.dropout=0.1",
    )
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 6, 12, 12]
    assert all(c.kernel_size == (5, 5) for c in convs)
    assert model.backbone.feature_shape == (12, 7, 7)
    assert any(isinstance(m, nn.Dropout2d) for m in model.modules())


def test_batch_norm_switch_and_head_sizes(tiny):
    _, model = build(tiny, "model.batch_norm=false", "tasks.cls.head.hidden=[64, 32]")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    linears = [m for m in model.heads["cls"] if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [64, 32, 10]


def test_no_inplace_and_no_shared_activation_modules(tiny):
    _, model = build(tiny)
    acts = [m for m in model.modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
    assert len({id(a) for a in acts}) == len(acts)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_kaiming_init_scale(tiny):
    _, model = build(tiny, "model.base_filters=64")
    conv = model.backbone.blocks[1][0]  # 64 -> 128, 3x3, fan_out = 128 * 9
    assert abs(conv.weight.std().item() - (2 / (128 * 9)) ** 0.5) < 0.003


def test_regression_head_decodes_to_target_units(tiny):
    _, model = build(tiny)
    head = model.heads["ink"]
    y = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(head.decode(head.encode(y)), y)
    assert "heads.ink.target_mean" in model.state_dict()


def test_too_many_blocks_is_a_clear_error(tiny):
    with pytest.raises(CnnlabError, match="shrink a 28x28 image to nothing"):
        build(tiny, "model.blocks=6", "model.filters=[4,4,4,4,4,4]")


def seed004_cnn(**extra) -> CNNConfig:
    """Seed 004's CNN: 4 × (Conv → MaxPool → ReLU → BN), dropout before the first FC."""
    return CNNConfig(
        blocks=4, filters=[32, 64, 128, 256], order="conv_pool_act_bn", feature_dropout=0.5, **extra
    )


def test_seed004_block_order_and_parameter_count():
    net = create_backbone(seed004_cnn(), 3, (32, 32))
    kinds = [type(m) for m in net.blocks[0]]
    assert kinds == [nn.Conv2d, MaxPool2d, nn.ReLU, nn.BatchNorm2d]  # cnnlab's, an nn.MaxPool2d
    chans = [3, 32, 64, 128, 256]
    conv = sum(chans[i] * chans[i + 1] * 9 + chans[i + 1] for i in range(4))  # with biases
    norm = sum(2 * c for c in chans[1:])
    assert sum(p.numel() for p in net.parameters()) == conv + norm
    assert net.feature_shape == (256, 2, 2) and net.num_features == 1024
    net.train()
    features = net(torch.randn(4, 3, 32, 32))
    assert (features == 0).float().mean() > 0.3  # the feature dropout is live in training
    net.eval()
    assert torch.equal(net(torch.ones(1, 3, 32, 32)), net(torch.ones(1, 3, 32, 32)))


def test_seed004_order_refuses_several_convs_per_block():
    with pytest.raises(ValueError, match="order conv_pool_act_bn has one conv per block"):
        seed004_cnn(convs_per_block=2)


@pytest.mark.parametrize("order", ["conv_pool_act_bn", "conv_bn_act"])
def test_strided_stem_reads_the_pooled_blocks_window(order):
    """stem: strided replaces Conv 3×3 + MaxPool 2 by one 4×4 conv with stride 2: the same
    maps downstream, and each output reads the same 4×4 input window the pooled block's
    output could draw on."""
    pooled = create_backbone(CNNConfig(order=order), 1, (28, 28)).eval()
    strided = create_backbone(CNNConfig(order=order, stem="strided"), 1, (28, 28)).eval()
    conv = strided.blocks[0][0]
    assert type(conv) is nn.Conv2d and conv.kernel_size == (4, 4) and conv.stride == (2, 2)
    assert not any(isinstance(m, nn.MaxPool2d) for m in strided.blocks[0])
    assert strided.blocks[1:].state_dict().keys() == pooled.blocks[1:].state_dict().keys()
    x = torch.randn(2, 1, 28, 28)
    shapes = [m.shape for m in pooled.forward_intermediates(x)]
    assert [m.shape for m in strided.forward_intermediates(x)] == shapes
    x.requires_grad_(True)
    strided.blocks[0](x)[0, :, 5, 5].sum().backward()
    rows, cols = x.grad[0, 0].abs().sum(1).nonzero(), x.grad[0, 0].abs().sum(0).nonzero()
    assert rows.flatten().tolist() == [9, 10, 11, 12] == cols.flatten().tolist()


def test_strided_stem_needs_a_pool_to_fold():
    with pytest.raises(ValueError, match="stem: strided folds"):
        CNNConfig(stem="strided", pool=1)
