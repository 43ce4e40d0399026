"""The torch optimizer a recipe's optimizer section builds: null fields get the defaults."""

import pytest
import torch

from cnnlab.optim import build_optimizer, param_groups
from cnnlab.recipe import load_recipe
from tests.conftest import DEMO


def built(*fields: str) -> torch.optim.Optimizer:
    recipe = load_recipe(DEMO, [f"train.optimizer.{f}" for f in fields])
    return build_optimizer(recipe.train.optimizer, torch.nn.Linear(3, 2))


def test_sgd_defaults_and_set_fields():
    sgd = built("name=sgd")
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is False
    sgd = built("name=sgd", "momentum=0.5", "nesterov=true")
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["nesterov"] is True


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_defaults_and_set_betas_and_eps(name: str, cls: type):
    adam = built(f"name={name}")
    assert type(adam) is cls and adam.defaults["betas"] == (0.9, 0.999)
    assert adam.defaults["eps"] == 1e-8
    assert built(f"name={name}", "betas=[0.5, 0.9]").defaults["betas"] == (0.5, 0.9)
    assert built(f"name={name}", "eps=0.001").defaults["eps"] == 1e-3


def test_weight_decay_reaches_weights_only():
    groups = built("name=adamw", "weight_decay=0.05").param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert [p.ndim for p in groups[0]["params"]] == [2] and groups[1]["params"][0].ndim == 1


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_cpu_updates_are_fused_and_match_the_unfused_ones(name: str):
    """One kernel per parameter on the CPU, and the same step (up to float rounding)."""
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    recipe = load_recipe(DEMO, [f"train.optimizer.name={name}", "train.optimizer.lr=0.01"])
    fused = build_optimizer(recipe.train.optimizer, a)
    unfused = fused.defaults | {"fused": False, "foreach": False}
    unfused.pop("decoupled_weight_decay", None)  # AdamW sets it itself
    groups = param_groups(b, recipe.train.optimizer.weight_decay, recipe.train.optimizer.lr)
    plain = type(fused)(groups, **unfused)
    assert fused.defaults["fused"] is True
    x = torch.randn(16, 8)
    for model, opt in ((a, fused), (b, plain)):
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight)
