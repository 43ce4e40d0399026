"""Optimizers and learning-rate schedules from the recipe's train section."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import lr_scheduler

from cnnlab.recipe import OptimizerConfig, TrainConfig


def param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Decay weights of convs and linears only: decaying biases and BN scales only hurts.
    A backbone that trains at a share of the rate (a pretrained one's `backbone_lr`) gets
    groups of its own with that share of `lr`; frozen parameters are left out, except those
    the backbone unfreezes later (`unfreeze_at`): they are in from the start, and torch's
    optimizers skip a parameter whose gradient is None, its weight decay and moments too
    (tests/test_optim.py), so the switch changes no group and the schedule runs on."""
    backbone = getattr(model, "backbone", None)
    scales = getattr(backbone, "lr_scales", dict)()
    later = getattr(backbone, "trains_later", set)()
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for p in model.parameters():
        if p.requires_grad or id(p) in later:
            groups.setdefault((p.ndim >= 2, scales.get(id(p), 1.0)), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0}
        | ({"lr": lr * scale} if scale != 1.0 else {})
        for (decay, scale), params in groups.items()
    ]


# What a field left null in the recipe means. torch's own defaults, except SGD's momentum:
# torch leaves it at 0, and plain SGD without momentum is rarely what a CNN recipe wants.
SGD_MOMENTUM = 0.9
SGD_NESTEROV = False
ADAM_BETAS = (0.9, 0.999)  # Adam and AdamW
ADAM_EPS = 1e-8
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,  # weight_decay is L2 added to the gradient (as seed 004 used it)
    "adamw": torch.optim.AdamW,  # weight_decay is decoupled from the gradient
}


def optimizer_options(cfg: OptimizerConfig) -> dict:
    """Keyword arguments of the fields this optimizer reads, null fields set to the defaults.

    The recipe has already refused fields that do not fit `cfg.name` (recipe.py).
    """
    if cfg.name == "sgd":
        return {
            "momentum": SGD_MOMENTUM if cfg.momentum is None else cfg.momentum,
            "nesterov": SGD_NESTEROV if cfg.nesterov is None else cfg.nesterov,
        }
    return {
        "betas": ADAM_BETAS if cfg.betas is None else cfg.betas,
        "eps": ADAM_EPS if cfg.eps is None else cfg.eps,
    }


FUSED_DEVICES = ("cpu", "cuda")  # where torch has one-kernel SGD / Adam / AdamW updates


def fused(model: nn.Module) -> bool:
    """Whether to take torch's fused update: one kernel per parameter instead of a dozen
    elementwise passes. On this project's 2-core EPYC, Adam over seed 003's 12.8 M weights
    took 48 ms per step unfused and 6.6 ms fused, 45 % of the whole training step.
    Fused updates are ordinary float arithmetic in a different order: not bit-identical to
    the unfused ones, but deterministic, so exact resume is unaffected."""
    devices = {p.device.type for p in model.parameters()}
    floats = all(p.is_floating_point() for p in model.parameters())
    return floats and len(devices) == 1 and devices <= set(FUSED_DEVICES)


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer over `model`, decaying weights only (see param_groups); SGD's
    momentum buffers start at zero (start_momentum)."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr)
    options = optimizer_options(cfg) | ({"fused": True} if fused(model) else {})
    optimizer = OPTIMIZERS[cfg.name](groups, lr=cfg.lr, **options)
    start_momentum(optimizer, model.parameters())
    return optimizer


def start_momentum(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> None:
    """Zero momentum buffers for `params` where SGD with momentum keeps buffers and they have
    none yet: the unfused SGD starts a missing buffer as the gradient itself, which is what a
    zero buffer gives (0 · momentum + grad, dampening 0). torch's fused SGD (2.14) needs them:
    - on its first step it makes the buffers with `empty_like` and fills them in the kernel,
      which a step that fp16's loss scaler skips (found_inf) never runs: the next step read
      uninitialized memory as momentum (on the CPU, parameters of NaN after one overflow);
    - it fails on a group where some parameters have a buffer and others none (an unfrozen
      backbone's, `unfreeze_at`: TypeError, expected Tensor ... got NoneType)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    held = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for p in params:
        group = held.get(id(p))
        if group and group["momentum"] and "momentum_buffer" not in optimizer.state[p]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[lr_scheduler.LRScheduler | None, bool]:
    """(scheduler, steps_per_batch). step / multistep count epochs; the others count batches."""
    s = cfg.scheduler
    total = cfg.epochs * steps_per_epoch
    if s.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma), False
    if s.name == "multistep":
        return lr_scheduler.MultiStepLR(optimizer, milestones=s.milestones, gamma=s.gamma), False
    if s.name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        pct = s.pct_start
        if pct * total == 1.0:  # a warm-up of exactly one step: torch divides by zero
            pct = 2 / total if total > 2 else 0.25
        return lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total, pct_start=pct
        ), True
    if s.name == "cosine":
        warm = min(int(s.warmup_epochs * steps_per_epoch), total - 1)
        cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
        if warm == 0:
            return cosine, True
        linear = lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warm)
        return lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm]), True
    return None, False
