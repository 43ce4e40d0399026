"""cnnlab's CPU dropout: nn.Dropout's meaning (drop share, scaling, eval, seeding), cheaper."""

import pytest
import torch

from cnnlab.models.dropout import LEVELS, Dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_drops_share_p_and_keeps_the_expected_value(p: float):
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(400, 1000)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.005)  # 400k draws: 4 std errors at p = 0.5
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, LEVELS / (LEVELS - round(p * LEVELS))))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)


def test_gradient_is_the_mask_times_the_scale_and_bf16_stays_bf16():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)
    assert Dropout(0.5).train()(x.detach().bfloat16()).dtype == torch.bfloat16


def test_eval_is_identity_and_the_seed_repeats_the_mask():
    x = torch.randn(8, 4096)
    assert Dropout(0.5).eval()(x) is x
    torch.manual_seed(3)
    a = Dropout(0.3).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.3).train()(x)
    torch.manual_seed(4)
    c = Dropout(0.3).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_odd_sizes_and_the_ends_of_the_range():
    x = torch.ones(3, 5, 7)  # 105 elements: not a multiple of the 4 draws per word
    assert Dropout(0.5).train()(x).shape == x.shape
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.count_nonzero(Dropout(1.0).train()(x)) == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Dropout(1.5)
