"""Where in the image a prediction comes from: Grad-CAM, Guided Grad-CAM, the plain gradient
and Integrated Gradients (Captum), side by side, for the prediction grid's test images.

Each method explains one number per image: a classification head's logit of the class it
predicted, a regression head's output (of a vector, one component: `--component`, by default
the first). Grad-CAM weighs the last conv layer's maps by their pooled gradient and
upsamples the positive part to the image; Guided Grad-CAM multiplies that by guided
backprop; the gradient is |d score / d pixel|; Integrated Gradients sums gradients along
the straight path from a black image. Every map is reduced to (H, W) (absolute values,
summed over channels) and scaled to [0, 1] for display.
Whether a map depends on what the network learnt is `cnnlab viz RUN sanity`'s question.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import torch
from torch import nn

from cnnlab.build import images_per_backward
from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.viz.base import Chart, check_count
from cnnlab.viz.guided import guided_nonlinearities
from cnnlab.viz.hooks import analysis_mode, forward_hooks, last_conv
from cnnlab.viz.mosaic import Tile, colored, mosaic, rgb, side_for
from cnnlab.viz.predictions import pick
from cnnlab.viz.run_view import RunView

if TYPE_CHECKING:
    from cnnlab.inference import ImageLike, Predictor
    from cnnlab.tasks import Task

METHODS = ("Grad-CAM", "Guided Grad-CAM", "gradient", "Integrated Gradients")
# Integrated Gradients' steps (Captum's Gauss-Legendre points; its default is 50): against 64
# steps' maps, 8 rank-correlated at 0.97, 16 at 0.99 and 32 at 0.997 (seed 002's network at
# 224 px). 8 take the report 1.2 s less than 16 there; `--ig-steps` asks for more
IG_STEPS = 8

Maps = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model, x) -> (B, H, W)
NAME_PART = 24  # characters of a folder or file name under an explained image (more: elided)


class Score(nn.Module):
    """model -> (B,) the number a method explains for one task."""

    def __init__(self, model: nn.Module, task: str, target: torch.Tensor | None):
        super().__init__()
        self.model, self.task = model, task
        self.register_buffer("target", target if target is not None else torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)[self.task].float()
        if self.target.numel():  # a class's logit, a component, per image (Captum tiles x)
            index = self.target.repeat(x.shape[0] // len(self.target))
            return out.gather(1, index[:, None]).squeeze(1)
        return out if out.ndim == 1 else out[:, 0]


def _flat(a: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) attributions -> (B, H, W): absolute values summed over channels."""
    return a.detach().abs().sum(dim=1).float()


def grad_cam_and_gradient(
    score: nn.Module, layer: nn.Module | None, x: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Grad-CAM's map (B, 1, h, w) at `layer` (its maps weighted by their spatially averaged
    gradient, summed, the positive part; None without a layer) and d score / d x, from one
    forward and backward pass: on the sanity check's 7 model states, a sixth of its passes."""
    kept: list[torch.Tensor] = []
    layers = {} if layer is None else {"layer": layer}
    with forward_hooks(layers, lambda n, m, y: kept.append(y)):
        scores = score(x)
    gradients = torch.autograd.grad(scores.sum(), (x, *kept))
    if layer is None:
        return None, gradients[0].detach()
    weights = gradients[1].mean(dim=(2, 3), keepdim=True)
    cam = (weights * kept[0]).sum(dim=1, keepdim=True).clamp_min(0)
    return cam.detach(), gradients[0].detach()


def attribute_all(
    methods: Sequence[str], model: nn.Module, task: str, x: torch.Tensor,
    target: torch.Tensor | None, black: torch.Tensor | None = None, ig_steps: int = IG_STEPS,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Each method's maps (B, H, W) for images x (B, C, H, W), model input; Integrated
    Gradients sums `ig_steps` gradients along its path. Grad-CAM and the gradient come from
    one backward pass, and Guided Grad-CAM is guided backprop times the Grad-CAM map upsampled
    to the image (nearest), as Captum's `GuidedGradCam` computes it but from the map already
    made: two passes fewer than Captum's classes, with the same maps (tests/test_attributions)."""
    from captum.attr import GuidedBackprop, IntegratedGradients, LayerAttribution

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribution method {unknown[0]!r}; choose one of {METHODS}")
    score = Score(model, task, target)
    x = x.detach().clone().requires_grad_(True)
    size = tuple(x.shape[2:])
    out: dict[str, torch.Tensor] = {}
    cam = None
    with analysis_mode(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        if {"Grad-CAM", "Guided Grad-CAM", "gradient"} & set(methods):
            cams = {"Grad-CAM", "Guided Grad-CAM"} & set(methods)
            cam, gradient = grad_cam_and_gradient(score, last_conv(model)[1] if cams else None, x)
            out["gradient"] = _flat(gradient)
        if cam is not None:
            up = LayerAttribution.interpolate(cam, size, "bilinear")
            out["Grad-CAM"] = up[:, 0].float().clamp_min(0)
        if "Guided Grad-CAM" in methods:
            with guided_nonlinearities(model):
                guided = GuidedBackprop(score).attribute(x).detach()
            out["Guided Grad-CAM"] = _flat(guided * LayerAttribution.interpolate(cam, size))
        if "Integrated Gradients" in methods:
            base = torch.zeros_like(x) if black is None else black.view(1, -1, 1, 1).expand_as(x)
            ig = IntegratedGradients(score)
            # its path's images at most 64 at a time, fewer where they would not fit EVAL_BYTES
            # with their gradients (seed 002's network at 224 px: 20, where 48 at once took
            # 3.6 GB and longer)
            batch = images_per_backward(model, torch.zeros_like(x[:1]), most=64)
            maps = ig.attribute(x, baselines=base, n_steps=ig_steps, internal_batch_size=batch)
            out["Integrated Gradients"] = _flat(maps)
    return {m: out[m] for m in methods}


def explainable(tasks: dict[str, Task]) -> list[str]:
    """The tasks a map can explain: one number per image (not per-pixel tasks)."""
    return [n for n, t in tasks.items() if "pixels" not in t.figures]


def targets_of(
    view: RunView, task: str, index: torch.Tensor, component: str | None = None
) -> torch.Tensor | None:
    """Which output each chosen test image's map explains: its predicted class, the
    `component` of a vector (default: the first), None for a single number."""
    if view.tasks[task].info.classes is not None:
        return view.test_predictions.pred[task][index].long().to(view.device)
    return component_targets(view.tasks[task], len(index), component, view.device)


def component_targets(
    task: Task, n: int, component: str | None, device: torch.device
) -> torch.Tensor | None:
    """The index of `component` (default: the first) of a vector output, for n images; None
    for a single number."""
    names = task.info.components
    if not names:
        return None
    k = names.index(component) if component in names else 0
    return torch.full((n,), k, device=device)


def check_component(tasks: dict[str, Task], names: list[str], component: str | None) -> None:
    """`--component` must name an output of one of the vector tasks explained (`names`)."""
    outputs = [c for t in names for c in tasks[t].info.components or []]
    if component is not None and component not in outputs:
        have = (
            f"their outputs are {', '.join(outputs)}"
            if outputs
            else "none names its outputs (a task of one's own names them in its fit(): "
            "self.info = TargetInfo(components=[...]), see docs/components.md#a-task-type)"
        )
        raise CnnlabError(f"--component {component!r}: no task explained has it; {have}")


def explains(
    task: Task, target: torch.Tensor | None, values: torch.Tensor | None = None
) -> list[str]:
    """What is explained in each chosen image, as the figure names it: the class, or the
    number (`values`: the predicted ones, (N,) or (N, K)), with its component's name."""
    names = task.info.classes if task.info.classes is not None else task.info.components
    if values is not None and task.info.classes is None:
        rows = values.reshape(len(values), -1).float()
        k = target.cpu() if target is not None else torch.zeros(len(rows), dtype=torch.long)
        said = [f"{float(r[int(i)]):.3g}" for r, i in zip(rows, k, strict=True)]
        return [f"{names[int(i)]} {v}" for i, v in zip(k, said, strict=True)] if names else said
    return [names[int(t)] for t in target] if names and target is not None else []


def unit(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] on its own."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return ((flat - lo[:, None]) / (hi - lo).clamp_min(1e-12)[:, None]).view_as(maps)


def attributions(
    view: RunView, images: int = 6, ig_steps: int = IG_STEPS, component: str | None = None
) -> list[Chart]:
    check_count("images", images, 16)
    check_count("ig-steps", ig_steps, 256)
    check_component(view.tasks, explainable(view.tasks), component)
    index = pick(len(view.split("test")), images, view.recipe.seed)
    x, shown = view.batch("test", index), view.split("test").images[index.to(view.device)]
    charts = []
    for task in explainable(view.tasks):
        target = targets_of(view, task, index, component)
        key = f"attributions_{task}"
        said = explains(view.tasks[task], target, view.test_predictions.pred[task][index.cpu()])
        chart = maps_chart(view.tasks[task], view.model, view.splits.black, x, shown, target,
                           ig_steps, key, said)  # fmt: skip
        chart.extra["index"] = index.tolist()
        charts.append(chart)
    return charts


def image_names(images: ImageLike | Sequence[ImageLike]) -> list[str] | None:
    """The name under each image of `explain`'s figure, for images as `Run.explain` takes
    them: a file's name, with as many of its folders as tell it from the other files given
    (`a/x.png` and `b/x.png`, where both are x.png), a part longer than NAME_PART shortened
    in its middle; `image N` for an image given as pixels among files. None where no image
    is a file (arrays, tensors, a batch): their rows show what they show without names."""
    items = [images] if isinstance(images, (str, Path)) else images
    if not isinstance(items, (list, tuple)) or not any(isinstance(i, (str, Path)) for i in items):
        return None
    parts = [PurePath(i).parts if isinstance(i, (str, Path)) else () for i in items]
    files = set(parts) - {()}
    names = []
    for mine in parts:
        others = files - {mine}
        depth = next(
            (d for d in range(1, len(mine)) if all(p[-d:] != mine[-d:] for p in others)),
            len(mine),
        )
        names.append(mine[-depth:])
    short = {n: str(PurePath(*map(_elided, n))) for n in set(names) - {()}}
    told = Counter(short.values())  # names told apart only by their elided middles: whole
    return [
        (short[n] if told[short[n]] == 1 else str(PurePath(*n))) if n else f"image {k + 1}"
        for k, n in enumerate(names)
    ]


def _elided(part: str) -> str:
    """A folder or file name of at most NAME_PART characters: its start and its end (the
    extension) kept, the middle as an ellipsis."""
    if len(part) <= NAME_PART:
        return part
    end = (NAME_PART - 1) // 2 + 2
    return f"{part[: NAME_PART - 1 - end]}\u2026{part[-end:]}"


def explain(
    predictor: Predictor, shown: torch.Tensor, component: str | None = None,
    ig_steps: int = IG_STEPS, names: Sequence[str] | None = None, task: str | None = None,
) -> list[Chart]:  # fmt: skip
    """The four maps for images of one's own (`Run.explain`), `shown` as the model sees them
    before normalizing (`Predictor.pixels`), each classification's for the class it
    predicts; the run's data is not read. `names`: each image's, written under it
    (`image_names`); `task`: that task's alone. Each task's chart is keyed
    `explained_<task>`: saved, it replaces the previous explain's figure of that task."""
    check_count("ig-steps", ig_steps, 256)
    if names is not None and len(names) != len(shown):
        raise ValueError(f"explain: {len(names)} names for {len(shown)} images")
    chosen = _explained(predictor.tasks, task)
    tasks = predictor.tasks
    check_component(tasks, chosen, component)
    if len(shown) > 16:
        raise CnnlabError(f"explain: {len(shown)} images; give at most 16 at a time")
    answers = predictor(shown)
    x, black = predictor.normalized(shown), (-predictor.mean / predictor.std).flatten()
    charts = []
    for name in chosen:
        target = component_targets(tasks[name], len(shown), component, shown.device)
        if tasks[name].info.classes is not None:  # the class it predicts, views and all
            target = torch.as_tensor(answers[name].index, device=shown.device).long()
        values = answers[name].values
        said = explains(tasks[name], target, None if values is None else torch.from_numpy(values))
        chart = maps_chart(tasks[name], predictor.model, black, x, shown, target, ig_steps,
                           f"explained_{name}", said, names)  # fmt: skip
        chart.caption += (
            f" Saved as figures/explained_{name}.png, which each explain replaces: rename it "
            "to keep it."
        )
        charts.append(chart)
    return charts


def _explained(tasks: dict[str, Task], task: str | None) -> list[str]:
    """The tasks `explain` draws: `task`, else every one a map can explain; the per-pixel
    ones it leaves are said (a run of a mask and a number drew the number's alone, unsaid)."""
    able, pixel = explainable(tasks), [n for n in tasks if n not in explainable(tasks)]
    masks = "look at its predicted masks instead (predict, the pixels figure)"
    if task is not None and task not in tasks:
        raise CnnlabError(
            f"explain: no task {task!r}{did_you_mean(task, tasks)}; the run's: {', '.join(tasks)}"
        )
    if task in pixel or not able:
        which = f"{task} answers" if task else "every task of this run answers"
        raise CnnlabError(
            f"explain: {which} per pixel, and a map explains one number per image; {masks}"
        )
    if task is None and pixel:
        print(
            f"explain: {', '.join(pixel)} {'answers' if len(pixel) == 1 else 'answer'} per "
            f"pixel, not explained (a map explains one number per image); {masks}",
            file=sys.stderr,
        )
    return [task] if task else able


def maps_chart(
    task: Task, model: nn.Module, black: torch.Tensor | None, x: torch.Tensor,
    shown: torch.Tensor, target: torch.Tensor | None, ig_steps: int, key: str,
    said: list[str] | None = None, names: Sequence[str] | None = None,
) -> Chart:  # fmt: skip
    """Each image beside its four maps, a row per image; `shown` as (B, C, H, W), uint8 or
    [0, 1]; `key` the PNG's name; `said`: each image's label (`explains`), above it;
    `names`: each image's name (its file's), under it."""
    found = attribute_all(METHODS, model, task.name, x, target, black, ig_steps)
    maps = {m: unit(v.cpu()) for m, v in found.items()}
    flat = sum(int((v.flatten(1).amax(1) == v.flatten(1).amin(1)).sum()) for v in found.values())
    named = explains(task, target)  # what is explained: a class, a component, or nothing
    said = said or named or [""] * len(x)
    tiles = [
        [Tile(rgb(shown[row]), said[row][:18], names[row] if names else "")]
        + [Tile(colored(maps[m][row], "inferno", 0, 1), m if row == 0 else "") for m in METHODS]
        for row in range(len(x))
    ]
    fig = mosaic(tiles, side_for(shown.shape[-2], 150))
    what = (
        "the predicted class's logit" if task.info.classes is not None
        else f"the output {named[0]}" if named else "the output"
    )  # fmt: skip
    return Chart(
        key,
        f"{task.name}: Grad-CAM, Guided Grad-CAM, gradient, Integrated Gradients",
        fig,
        f"What in each image raises {what} of {task.name}, by four methods (bright = more)"
        + (": above each image, the class it predicts. " if task.info.classes is not None else ". ")
        + "Grad-CAM reads the last conv layer, so it is coarse, and shows only what raises the "
        "output (a part that lowers it stays dark); `cnnlab viz RUN sanity` shows which of "
        "these maps depend on the trained weights."
        + (
            f" {flat} map{'s are' if flat > 1 else ' is'} black: nothing in that image raises "
            "the output by that method (Grad-CAM keeps only what raises it), not a failure."
            if flat
            else ""
        ),
        extra={"maps": maps},
    )
