"""The sanity check of Adebayo et al. (NeurIPS 2018), built in: does a saliency map depend on
what the network learnt?

The network's layers are re-initialized one group after another from the top (the heads
first, then the backbone from its last layer down: cascading randomization), and each method
of `attributions` is recomputed on the same test images at every step. A map that explains
the model changes as its weights go (its Spearman rank correlation with the trained model's
map falls towards 0); a map that stays put shows the image more than the model, as guided
backprop was found to. An edge detector (the image's Sobel gradient), which has no weights
at all, runs alongside as the control: its correlation is 1 at every step.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.viz.attributions import (
    METHODS,
    attribute_all,
    check_component,
    explainable,
    explains,
    targets_of,
    unit,
)
from cnnlab.viz.base import Chart, check_count, new_figure
from cnnlab.viz.mosaic import Tile, colored, mosaic, side_for
from cnnlab.viz.predictions import pick
from cnnlab.viz.run_view import RunView

CONTROL = "edges (no model)"
STEPS = 6  # randomization steps shown; layers are grouped evenly into this many
DEPENDS = 0.5  # |rank correlation| below this once every layer is random: the map depends
SEED = 0
# Integrated Gradients' steps here (8 in the attributions figure): the check asks how a map
# changes as the weights go, and computes it 7 times over. On seed 002's network at 224 px,
# the check's curves came out within 0.008 of 32 steps' at every step with 3 steps (4 steps:
# 0.004; 2 steps: 0.021); with 3 its Integrated Gradients took 1.8 s, with 4 2.5, with 32 17
CASCADE_IG_STEPS = 3


def layers_top_down(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with their own weights, heads first, then the backbone from the top."""
    own = [
        (n, m) for n, m in model.named_modules()
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))
    ]  # fmt: skip
    heads = [(n, m) for n, m in own if n.startswith("heads.")]
    rest = [(n, m) for n, m in own if not n.startswith("heads.")]
    return heads[::-1] + rest[::-1]


def groups(layers: list, steps: int) -> list[list]:
    """The layers cut into at most `steps` consecutive groups of near-equal size."""
    steps = max(1, min(steps, len(layers)))
    bounds = [round(k * len(layers) / steps) for k in range(steps + 1)]
    return [layers[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def centred_ranks(maps: torch.Tensor) -> torch.Tensor:
    """(B, H*W) each map's pixel ranks (ties broken by position), centred and scaled to unit
    length: the dot product of two is their Spearman correlation."""
    flat = maps.flatten(1)
    order = flat.argsort(dim=1, stable=True)
    positions = torch.arange(flat.shape[1], dtype=torch.float64).expand(flat.shape)
    ranks = torch.empty(flat.shape, dtype=torch.float64).scatter_(1, order, positions)
    ranks -= ranks.mean(1, keepdim=True)
    return ranks / ranks.norm(dim=1, keepdim=True).clamp_min(1e-12)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman rank correlation of maps a[i] and b[i] (ties broken by position)."""
    return (centred_ranks(a) * centred_ranks(b)).sum(1)


def edges(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) Sobel gradient magnitude of the image, summed over channels."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device)
    kernels = torch.stack([k, k.T])[:, None].repeat(x.shape[1], 1, 1, 1)  # (2C, 1, 3, 3)
    g = F.conv2d(x.float(), kernels, padding=1, groups=x.shape[1])
    return g.pow(2).view(x.shape[0], x.shape[1], 2, *x.shape[2:]).sum((1, 2)).sqrt()


def randomized(model: nn.Module, steps: int) -> Iterator[tuple[str, nn.Module]]:
    """("trained", model), then a copy with one more group of layers re-initialized at each
    step, labelled by the lowest layer randomized so far; `model` itself is never changed."""
    yield "trained", model
    copy_ = copy.deepcopy(model)
    torch.manual_seed(SEED)
    for group in groups(layers_top_down(copy_), steps):
        for _, module in group:
            module.reset_parameters()
        yield f"…{group[-1][0]}", copy_


def cascade(
    model: nn.Module, task: str, x: torch.Tensor, target: torch.Tensor | None,
    black: torch.Tensor | None = None, steps: int = STEPS, methods=METHODS,
    ig_steps: int = CASCADE_IG_STEPS,
) -> tuple[list[str], dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:  # fmt: skip
    """(step labels, maps per method per step, rank correlation (B,) per method per step);
    step 0 is the trained model. The model itself is never changed (a copy is randomized)."""
    labels: list[str] = []
    maps: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for label, state in randomized(model, steps):
        labels.append(label)
        for m, v in attribute_all(methods, state, task, x, target, black, ig_steps).items():
            maps[m].append(v.cpu())
    maps[CONTROL] = [edges(x).cpu()] * len(labels)  # no weights: the same map at every step
    rho = {}
    for m, v in maps.items():
        ranks = [centred_ranks(v[0])]
        ranks += [ranks[0] if step is v[0] else centred_ranks(step) for step in v[1:]]
        rho[m] = [(ranks[0] * r).sum(1) for r in ranks]
    return labels, maps, rho


def wrap(name: str, width: int = 16) -> str:
    """A module path on lines of at most about `width` characters, broken after dots."""
    lines = [""]
    for part in name.split("."):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part + "."
    return "\n".join(lines)[:-1]


def verdict(rho: dict[str, list[torch.Tensor]]) -> dict[str, str]:
    """Each method: whether it depends on the weights (its correlation, all layers random)."""
    out = {}
    for m, steps in rho.items():
        last = float(steps[-1].mean())
        out[m] = "depends on the weights" if abs(last) < DEPENDS else "barely depends on them"
    return out


def sanity(
    view: RunView, images: int = 4, steps: int = STEPS, component: str | None = None
) -> list[Chart]:
    check_count("images", images, 16)
    check_count("steps", steps, 20)
    tasks = explainable(view.tasks)
    if not tasks:
        return []
    task = tasks[0]
    check_component(view.tasks, [task], component)
    index = pick(len(view.split("test")), images, view.recipe.seed)
    x = view.batch("test", index)
    target = targets_of(view, task, index, component)
    labels, maps, rho = cascade(view.model, task, x, target, view.splits.black, steps)
    said = verdict(rho)
    fig = new_figure(6.4, 4.4)  # the legend below the axes
    ax = fig.subplots()
    for m, values in rho.items():
        ax.plot(range(len(labels)), [float(v.mean()) for v in values], marker="o",
                linestyle="--" if m == CONTROL else "-", label=f"{m}: {said[m]}")  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    vector = view.tasks[task].info.classes is None and target is not None
    what = f"{task} ({explains(view.tasks[task], target)[0]})" if vector else task
    title = f"{what}: cascading randomization, {len(index)} test images"
    ax.set(xlabel="layers randomized, from the top", ylabel="rank correlation with trained")
    low = min(float(v.mean()) for values in rho.values() for v in values)
    ax.set(ylim=(min(-0.2, low - 0.05), 1.05), title=title)  # a line below -0.2 not clipped
    ax.axhline(0, color="#888", linewidth=0.6)
    # below the axes (constrained layout makes room): inside, it sat on the lines it names
    fig.legend(fontsize=7, loc="outside lower center", ncol=2, frameon=False)
    rows = []
    for m, vals in rho.items():
        means = {lab: round(float(v.mean()), 3) for lab, v in zip(labels, vals, strict=True)}
        rows.append({"method": m, **means, "verdict": said[m]})
    tiles = [
        [
            Tile(colored(unit(step[:1])[0], "inferno", 0, 1), wrap(labels[c]) if r == 0 else "")
            for c, step in enumerate(steps_maps)
        ]
        for r, steps_maps in enumerate(maps.values())
    ]
    grid = mosaic(tiles, side_for(x.shape[-2], 112), row_labels=list(maps), font=6)
    depends = [m for m, v in said.items() if v.startswith("depends")]
    barely = [m for m, v in said.items() if not v.startswith("depends")]
    caption = (
        f"Depend on the trained weights: {', '.join(depends) or 'none'}. Barely change when "
        f"they are replaced by random ones: {', '.join(barely) or 'none'} (the edge detector "
        "has no weights: it is the control). Adebayo et al., Sanity Checks for Saliency Maps."
    )
    return [
        Chart(
            "sanity",
            f"{task}: sanity check of the saliency maps",
            fig,
            caption,
            table=rows,
            extra={"labels": labels, "rho": rho, "verdict": said},
        ),
        Chart(
            "sanity_maps",
            f"{task}: maps as the layers are randomized (first image)",
            grid,
            "Rows: methods; columns: the trained model, then more and more layers "
            "randomized from the top.",
        ),
    ]
