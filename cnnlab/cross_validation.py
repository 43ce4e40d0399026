"""k-fold cross-validation: one recipe trained k times, each time with another fold of its
training set as validation (`data.folds`, `data.fold`), and its metrics over the folds.

On a few hundred images of one's own, one validation split of 20 % is 60 images, and a
metric measured on it moves by points from one split to the next. Cross-validation trains
on every image and validates on every image once: the spread of the folds' metrics says
how far a single number can be trusted. Each fold is an ordinary run folder (its own
report, checkpoints and test metrics), kept together in `<output_dir>/<name>-cv<k>-<time>/`
with `folds.csv` (one row per fold: its best epoch's validation metrics and its test
metrics), `summary.csv` (each metric's mean, standard deviation, min and max) and
`folds.png` (a dot per fold for each task's headline metrics).
`cnnlab compare` reads the fold folders as any runs. `cv.json` holds the recipe and the
number of folds, so an interrupted cross-validation goes on where it stopped (`--resume`):
a finished fold is kept, an interrupted one resumed from its last checkpoint.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.recipe import Recipe, best_row, validate
from cnnlab.runs import RunFolder, atomic_write, stamp, write_json
from cnnlab.tasks import task_class
from cnnlab.viz.base import Chart, new_figure

FOLDS = 5


@dataclass
class Folds:
    """The folds' run folders, their metrics (`table`, one row per fold) and each metric's
    mean, standard deviation, min and max over them (`summary`, one row per metric)."""

    folder: Path
    runs: list[Path]
    table: list[dict]
    summary: list[dict]


def fold_recipe(recipe: Recipe, folds: int, fold: int, folder: Path) -> Recipe:
    """The recipe with validation its fold `fold` of `folds`, its run folder in `folder`."""
    raw = recipe.model_dump(mode="json")
    raw["data"] |= {"folds": folds, "fold": fold}
    raw |= {"name": f"{recipe.name}-fold{fold}", "output_dir": str(folder)}
    return validate(raw, source=f"fold {fold} of {folds}")


def cross_validate(
    recipe: Recipe,
    folds: int | None = None,
    out: str | Path | None = None,
    said: Callable[[str], None] = print,
) -> Folds:
    """Train the recipe once per fold, one after another, and gather their metrics;
    `folds`: the recipe's `data.folds`, else FOLDS; `out`: the folder for the folds (new or
    empty), default `<output_dir>/<name>-cv<k>-<time>`; `said`: where each fold's line goes."""
    k = folds if folds is not None else recipe.data.folds or FOLDS
    if not 2 <= k <= 20:
        raise CnnlabError(f"cv: {k} folds; give 2 to 20 (5 is usual)")
    folder = Path(out) if out else Path(recipe.output_dir) / f"{recipe.name}-cv{k}-{stamp()}"
    if folder.exists() and any(folder.iterdir()):
        raise CnnlabError(f"cv: {folder} is not empty; give a new folder (--out)")
    recipes = [fold_recipe(recipe, k, f, folder) for f in range(k)]  # all checked first
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    write_json(folder / META, {"folds": k, "recipe": recipe.model_dump(mode="json")})
    try:
        return run_folds(folder, recipes, said)
    except CnnlabError:
        if not begun(folder):  # refused before any fold's run: no folder left behind
            shutil.rmtree(folder)
            for parent in made[1:]:
                parent.rmdir()
        raise


META = "cv.json"  # the recipe and the number of folds, for --resume


def resume(folder: str | Path, said: Callable[[str], None] = print) -> Folds:
    """Go on with an interrupted cross-validation: its finished folds kept, an interrupted
    fold resumed from its last checkpoint, the others trained."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise CnnlabError(f"cv --resume: {folder} holds no {META}; give the folder cnnlab cv made")
    meta = json.loads((folder / META).read_text())
    recipe = validate(meta["recipe"], source=str(folder / META))
    k = meta["folds"]
    return run_folds(folder, [fold_recipe(recipe, k, f, folder) for f in range(k)], said)


def run_folds(folder: Path, recipes: list[Recipe], said: Callable[[str], None]) -> Folds:
    """Train each fold's recipe in `folder` (a finished fold's run kept, an interrupted one
    resumed), then write the tables."""
    runs, table, k = [], [], len(recipes)
    found = folds_found(folder)
    for f, each in enumerate(recipes):
        done, unfinished = fold_runs(found.get(f, []))
        if done is None:
            said(f"cv: fold {f + 1} of {k} (validation: part {f} of the training set)")
            try:
                # an interrupted fold trains on by the recipe it saved, as `train --resume`
                base = RunFolder(unfinished).recipe() if unfinished else each
                done = train(base, resume=unfinished)
            except CnnlabError as err:
                if not begun(folder):  # refused before any run: nothing to go on with
                    raise
                raise CnnlabError(
                    str(err), [*err.also, f"cv: fold {f + 1} of {k} did not finish; the "
                               f"finished folds are kept: cnnlab cv --resume {folder} goes on"]
                ) from None  # fmt: skip
        runs.append(done.path)
        table.append(fold_row(f, done, each.train.monitor))
        said(f"cv: fold {f + 1} of {k}: {done.path}; {headline(table[-1], each.train.monitor)}")
    summary = summarized(table)
    write_csv(folder / "folds.csv", table)
    write_csv(folder / "summary.csv", summary)
    shown = {name: list(task_class(cfg).headline) for name, cfg in recipes[0].tasks.items()}
    drawn(table, shown).save(folder)
    return Folds(folder, runs, table, summary)


def begun(folder: Path) -> bool:
    """Whether any fold's run folder was made in `folder`."""
    return any(p.is_dir() for p in folder.iterdir())


def folds_found(folder: Path) -> dict[int, list[RunFolder]]:
    """The run folders already in `folder`, by fold, oldest first (a resumed cross-validation)."""
    found: dict[int, list[RunFolder]] = {}
    for path in sorted(p for p in folder.iterdir() if (p / "recipe.yaml").is_file()):
        run = RunFolder(path)
        found.setdefault(run.recipe().data.fold, []).append(run)
    return found


def fold_runs(runs: list[RunFolder]) -> tuple[RunFolder | None, Path | None]:
    """Of one fold's runs, the finished one, else None and the latest that has a checkpoint
    to resume from (None: none, train it anew)."""
    finished = [r for r in runs if r.status().get("state") == "finished"]
    if finished:
        return finished[-1], None
    resumable = [r.path for r in runs if r.last_path.is_file()]
    return None, resumable[-1] if resumable else None


def fold_row(fold: int, run: RunFolder, monitor: str) -> dict:
    """One fold's line: its run, best epoch, validation metrics there and test metrics."""
    best = best_row(run.read_metrics(), monitor) or {}
    val = {k: v for k, v in best.items() if k.startswith("val.") and isinstance(v, float)}
    test = {k: v for k, v in run.test_metrics().items() if k.startswith("test.")}
    return {"fold": fold, "run": run.path.name, "best_epoch": best.get("epoch"), **val, **test}


def headline(row: dict, monitor: str) -> str:
    """`val.cls.accuracy 0.9312 at epoch 12`, and the test's value of the same metric."""
    said = f"{monitor} {row.get(monitor, float('nan')):.4g} at epoch {row['best_epoch']}"
    test = "test." + monitor.removeprefix("val.")
    return said + (f", {test} {row[test]:.4g}" if test in row else "")


def summarized(table: list[dict]) -> list[dict]:
    """Each metric's mean, standard deviation (over the folds, n - 1), min and max."""
    names = [k for k in table[0] if k.startswith(("val.", "test."))]
    out = []
    for name in names:
        values = [row[name] for row in table if isinstance(row.get(name), float)]
        if not values:
            continue
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append({"metric": name, "mean": statistics.fmean(values), "std": spread,
                    "min": min(values), "max": max(values), "folds": len(values)})  # fmt: skip
    return out


def drawn(table: list[dict], headline: dict[str, list[str]]) -> Chart:
    """folds.png: each task's headline metrics, validation and test side by side, a dot per
    fold and the mean ± std beside them: how far one split's number could have landed."""
    tasks = {t: [m for m in ms if f"val.{t}.{m}" in table[0]] for t, ms in headline.items()}
    tasks = {t: ms for t, ms in tasks.items() if ms}
    fig = new_figure(max(4.0, 2.2 * sum(len(ms) for ms in tasks.values())), 3.6)
    axes = fig.subplots(1, max(1, len(tasks)), squeeze=False)[0]
    for ax, (task, metrics) in zip(axes, tasks.items(), strict=False):
        names = [f"{split}.{task}.{m}" for m in metrics for split in ("val", "test")]
        for x, name in enumerate(names):
            values = [row[name] for row in table if isinstance(row.get(name), float)]
            if not values:
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            colour = "C0" if name.startswith("val.") else "C1"
            ax.plot([x] * len(values), values, "o", color=colour, alpha=0.6, markersize=5)
            ax.errorbar(x + 0.18, statistics.fmean(values), yerr=spread, fmt="_", color="k",
                        markersize=14, capsize=3)  # fmt: skip
        ax.set_xticks(range(len(names)), [n.replace(f".{task}.", " ") for n in names],
                      rotation=30, ha="right", fontsize=8)  # fmt: skip
        ax.set(title=f"{task}: {len(table)} folds", xlim=(-0.5, len(names) - 0.3))
    return Chart(
        "folds", "Cross-validation", fig,
        "A dot per fold, its best epoch's validation metric (blue) and its test metric "
        "(orange); beside them the mean ± std over the folds.",
    )  # fmt: skip


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))

    def write(f) -> None:
        out = csv.DictWriter(f, fields)
        out.writeheader()
        out.writerows(rows)

    atomic_write(path, write)
