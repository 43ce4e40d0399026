"""`cnnlab landscape RUN [RUN ...]`: compute, save and draw the loss landscape of runs.

For each run: a fixed, seeded subset of its training images (the same for every run of the
same data), the run's best weights, its own loss (the weighted sum of its task losses, as
it trained) and the accuracy of its first classification task, in the precision it trained
in. Everything lands in `<run>/landscape/`: `surface_<dims>d.json` (the grid, machine-
readable, filled as it goes), the figures, `flatness_<dims>d.json`; the run's report shows
them. Several runs also get a side-by-side figure and one flatness table in `--out`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError
from cnnlab.landscape.directions import filter_normalized, path_directions
from cnnlab.landscape.flatness import flatness
from cnnlab.landscape.surface import Settings, Surface, fill
from cnnlab.models.compiled import compiled_kernels
from cnnlab.precision import autocast_for
from cnnlab.progress import console, counting
from cnnlab.runs import load_checkpoint
from cnnlab.tasks import total_loss
from cnnlab.viz import landscape_plots as plots
from cnnlab.viz.run_view import RunView


def fixed_batches(view: RunView, samples: int, seed: int, batch_size: int) -> list:
    """`samples` training images drawn once with `seed`, made into model input in batches."""
    train = view.split("train")
    if samples > len(train):
        raise CnnlabError(f"--samples {samples}: the training set has {len(train):,} images")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
    needed = {t.target for t in view.recipe.tasks.values()}
    batches = []
    for lo in range(0, samples, batch_size):
        idx = index[lo : lo + batch_size].to(train.images.device)
        x = train.images[idx].float().div_(255)
        targets = {k: v[idx] for k, v in train.targets.items()}
        batches.append(view.splits.finish(x, targets, needed))
    return batches


def evaluator(view: RunView, batches: list):
    """model -> (mean loss, accuracy of the first classification task or NaN)."""
    tasks = view.tasks
    first = next((n for n, t in tasks.items() if t.info.classes is not None), None)
    target = tasks[first].target if first else None
    autocast = autocast_for(view.device, view.precision)
    count = sum(x.shape[0] for x, _ in batches)

    def evaluate(model) -> tuple[float, float]:
        loss_sum = torch.zeros((), device=view.device)
        right = torch.zeros((), device=view.device)
        for x, t in batches:
            with autocast():
                out = model(x)
                loss, _ = total_loss(tasks, model, out, t)
            loss_sum += loss.float() * x.shape[0]
            if first:
                right += (out[first].argmax(1) == t[target]).float().mean() * x.shape[0]
        loss_value = (loss_sum / count).item()
        return loss_value, (right / count).item() if first else math.nan

    return evaluate


def _directions(view: RunView, model, settings: Settings):
    """(directions, extra): random filter-normalized ones, or the training path's PCA plane."""
    if settings.directions == "random":
        return [filter_normalized(model, settings.seed + k, settings.include_1d)
                for k in range(settings.dims)], {}  # fmt: skip
    kept = sorted(view.run.path.glob("checkpoints/epoch_*.pt"))
    if len(kept) < 3:
        raise CnnlabError(
            f"{view.run.path}: --trajectory needs checkpoints along the way (found {len(kept)}); "
            "train with train.keep_every=1"
        )
    names = [n for n, _ in model.named_parameters()]
    states = (load_checkpoint(p)["model"] for p in kept)  # each file read once
    path = [[state[n] for n in names] for state in states]
    final = [p.detach().cpu() for p in model.parameters()]
    dirs, coords, shares = path_directions(path, final, settings.include_1d)
    extra = {"path": coords.tolist(), "explained": shares, "epochs": [p.stem for p in kept]}
    return [[d.to(view.device) for d in direction] for direction in dirs], extra


def _open_surface(file: Path, settings: Settings) -> Surface:
    if file.is_file():
        old = Surface.load(file)
        if old.settings == settings:
            return old
        console.print(f"{file}: other settings ({old.settings}); starting anew")
    return Surface.empty(settings)


def landscape_of(
    run: Path,
    settings: Settings,
    budget_s: float | None,
    log: bool,
    batch_size: int | None,
    label: str,
) -> Surface:
    view = RunView(run, device="cuda" if torch.cuda.is_available() else "cpu")
    model = view.model
    folder = run / "landscape"
    folder.mkdir(exist_ok=True)
    file = folder / f"surface_{settings.dims}d.json"
    dirs, extra = _directions(view, model, settings)
    if extra:  # the plane of the path: the span must hold the whole path
        reach = max(abs(v) for xy in extra["path"] for v in xy)
        settings = Settings(**{**asdict(settings), "span": round(1.25 * reach, 6)})
    surface = _open_surface(file, settings)
    surface.extra.update(extra)
    batches = fixed_batches(
        view, settings.samples, settings.seed, batch_size or view.built.eval_batch_size
    )
    evaluate = evaluator(view, batches)
    todo = surface.missing()
    if todo:
        start = time.perf_counter()
        evaluate(model)  # one pass at the weights themselves: what a point costs
        each = time.perf_counter() - start
        console.print(
            f"{run.name}: {len(todo)} grid points x {settings.samples:,} images = "
            f"{len(todo) * settings.samples:,} forward passes, about "
            f"{len(todo) * each / 60:.1f} min here ({each:.2f} s a point)"
            + (f"; budget {max(budget_s, 0) / 60:.1f} min" if budget_s is not None else "")
        )
    # hundreds of passes over the same batches: compiling the kernels pays here
    fused = view.recipe.train.fused_kernels is not False
    with counting(run.name, len(todo), eta=True) as advance, compiled_kernels(fused):
        complete = fill(model, surface, dirs, evaluate, lambda s: s.save(file), budget_s,
                        advance)  # fmt: skip
    if not complete:
        left = len(surface.missing())
        console.print(f"{run.name}: budget spent, {left} points left; the same command goes on")
    else:
        draw(surface, folder, label, log)
    return surface


def draw(surface: Surface, folder: Path, name: str, log: bool) -> list[Path]:
    dims = surface.settings.dims
    (folder / f"flatness_{dims}d.json").write_text(json.dumps(flatness(surface), indent=1))
    return [c.save(folder) for c in plots.run_charts(surface, name, log)]


def landscape(
    runs: list[Path],
    settings: Settings,
    budget_min: float | None = None,
    log: bool = False,
    out: Path | None = None,
    batch_size: int | None = None,
    labels: list[str] | None = None,
) -> dict[str, Surface]:
    """Every run's landscape, by label (default: the run folder's name); with several runs,
    the side-by-side figures in `out`. `batch_size`: images a forward pass, by default the
    run's evaluation batches (`train.eval_batch_size`)."""
    surfaces: dict[str, Surface] = {}
    started = time.monotonic()
    for k, run in enumerate(runs):
        left = None if budget_min is None else budget_min * 60 - (time.monotonic() - started)
        if left is not None and left <= 0 and surfaces:
            console.print(f"{run.name}: no budget left; the same command goes on from here")
            continue
        label = labels[k] if labels else run.name
        surfaces[label] = landscape_of(run, settings, left, log, batch_size, label)
    done = {k: s for k, s in surfaces.items() if not s.missing()}
    if len(done) > 1 and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        charts = [plots.curves(done, log), plots.flatness_chart(done)]
        if settings.dims == 2:
            charts.append(plots.side_by_side(done, log))
        for chart in charts:
            console.print(f"saved {chart.save(out)}")
        rows = [{"model": name, **flatness(s)} for name, s in done.items()]
        (out / f"flatness_{settings.dims}d.json").write_text(json.dumps(rows, indent=1))
    return surfaces
