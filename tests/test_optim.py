"""The torch optimizer a recipe's optimizer section builds: null fields get the defaults."""

import pytest
import torch

from cnnlab.optim import (
    OPTIMIZERS,
    build_optimizer,
    optimizer_options,
    param_groups,
    start_momentum,
)
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


@pytest.mark.parametrize("kernel", ["fused", "foreach", "for-loop"])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_a_parameter_without_a_gradient_is_left_alone_until_it_has_one(name: str, kernel: str):
    """What `model.unfreeze_at` rests on: the optimizer holds a frozen backbone's parameters
    from the start, and torch's update skips one whose grad is None, weight decay and
    momentum included (no state is made for it), in every kernel it may take."""
    recipe = load_recipe(DEMO, [f"train.optimizer.name={name}", "train.optimizer.weight_decay=0.1"])
    cfg = recipe.train.optimizer
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    frozen = model[0]
    options = optimizer_options(cfg) | {k: kernel == k for k in ("fused", "foreach")}
    opt = OPTIMIZERS[name](param_groups(model, cfg.weight_decay, cfg.lr), lr=cfg.lr, **options)
    assert {id(p) for g in opt.param_groups for p in g["params"]} >= {id(frozen.weight)}
    before = [p.clone() for p in frozen.parameters()]
    frozen.requires_grad_(False)
    x = torch.randn(16, 8)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    for _ in range(3):
        step()
    assert all(torch.equal(p, b) for p, b in zip(frozen.parameters(), before, strict=True))
    assert not any(p in opt.state for p in frozen.parameters())
    frozen.requires_grad_(True)  # unfrozen: the same optimizer now moves it
    start_momentum(opt, frozen.parameters())  # fused SGD fails on a missing buffer without
    step()
    assert not any(torch.equal(p, b) for p, b in zip(frozen.parameters(), before, strict=True))


@pytest.mark.parametrize("nesterov", [False, True])
def test_a_zero_momentum_buffer_steps_as_sgds_own_first_step(nesterov: bool):
    """start_momentum changes nothing of the arithmetic: SGD starts a missing buffer as the
    gradient, and a zero one becomes the gradient (0 · momentum + grad), bit for bit."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 8)
    for model, prime in ((a, False), (b, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov)
        if prime:
            start_momentum(opt, model.parameters())
        for _ in range(2):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_fused_sgd_keeps_its_momentum_finite_when_the_loss_scaler_skips_its_first_step(
    monkeypatch,
):
    """fp16: the loss scaler skips a step whose gradients overflowed, as the first ones often
    do. torch's fused SGD made its momentum buffers on that step with `empty_like` and never
    filled them; the next step read them. Uninitialized memory is made NaN here, as a reused
    block (CUDA's caching allocator hands back freed activations) can hold anything."""
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: torch.full_like(t, torch.nan, **kw))
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    recipe = load_recipe(DEMO, ["train.optimizer.name=sgd", "train.optimizer.lr=0.01"])
    fused = build_optimizer(recipe.train.optimizer, a)
    assert fused.defaults["fused"] is True and fused.defaults["momentum"] == 0.9
    decay = recipe.train.optimizer.weight_decay
    plain = torch.optim.SGD(param_groups(b, decay, 0.01), lr=0.01, momentum=0.9)  # unfused
    x = torch.randn(16, 8)
    for model, opt in ((a, fused), (b, plain)):
        scaler = torch.amp.GradScaler("cpu")
        for factor in (torch.inf, 1.0, 1.0):  # the first step overflows
            opt.zero_grad()
            scaler.scale(model(x).square().mean() * factor).backward()
            scaler.step(opt)
            scaler.update()
    assert all(torch.isfinite(p).all() for p in a.parameters())
    torch.testing.assert_close(a.weight, b.weight)
