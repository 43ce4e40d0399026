"""The `cnnlab` command. Every user-fixable problem ends as one line on stderr, status 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from cnnlab.allocator import keep_freed_memory
from cnnlab.catalog import recipe_file, shipped_recipes, shipped_sweeps, sweep_file
from cnnlab.collector import collect_rarely, skip_final_collections
from cnnlab.errors import CnnlabError
from cnnlab.plugins import import_from_environment, load_entry_points

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# --import: code that registers components (cnnlab/components.py); recipes never name code.
IMPORT_HELP = "module (dotted, from this folder) or .py file that registers components; repeatable"
Imports = typer.Option([], "--import", metavar="MODULE", help=IMPORT_HELP)
Sets = typer.Option([], "--set", metavar="KEY=VALUE", help="override a field: key.path=value")


def Flag(default: bool, *names: str, help: str) -> Any:
    """A yes/no option shown as the flag it is (typer's help shows `--test <bool>`, and
    `--test true` is then refused as an extra argument)."""
    return typer.Option(default, *names, metavar="", help=help)


def _import(modules: list[str]) -> None:
    """Import the --import modules before a command reads its recipe or run."""
    if modules:
        from cnnlab.plugins import import_modules

        import_modules(modules)


@app.callback()
def _options(imports: list[str] = Imports) -> None:
    # `cnnlab --import my_components train ...`: before the command. Each command that reads
    # recipes or runs takes --import too (`cnnlab train --import my_file.py my.yaml`).
    _import(imports)


@app.command()
def train(
    recipe: str | None = typer.Argument(None, help="recipe YAML file or shipped recipe name"),
    set_: list[str] = Sets,
    resume: Path | None = typer.Option(None, "--resume", help="continue this run folder"),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="train in this prepared run folder (a sweep's trial)"
    ),
    imports: list[str] = Imports,
) -> None:
    """Train a recipe, then evaluate its best checkpoint on the test set."""
    _import(imports)
    from cnnlab import api

    folder = resume or run_dir
    if folder is None:
        if recipe is None:
            raise CnnlabError("give a recipe (cnnlab recipes lists them) or --resume runs/<run>")
        parsed = api.load_recipe(recipe, set_)  # validated before any data is read
    elif recipe or set_ or (resume and run_dir):
        raise CnnlabError(
            "--resume and --run-dir train a folder's saved recipe; give one, and no recipe or --set"
        )
    from cnnlab.distributed import from_environment
    from cnnlab.experiment import train as run_training
    from cnnlab.runs import RunFolder

    if folder is not None:
        run = RunFolder.open(folder)
        parsed = run.recipe()
    if run_dir is not None:  # from its last checkpoint if it has one, else from the start
        run = run_training(parsed, resume=run.path if run.last_path.is_file() else None, run=run)
    elif resume is not None:
        run = api.resume(resume)
    else:
        run = api.train(parsed)
    if not from_environment().main:  # a torchrun rank other than 0: rank 0 tells
        return
    typer.echo(f"run folder: {run.path}")
    if parsed.train.report and (run.path / "report.html").is_file():
        typer.echo(f"report: {run.path / 'report.html'}")


@app.command()
def cv(
    recipe: str | None = typer.Argument(None, help="recipe YAML file or shipped recipe name"),
    folds: int | None = typer.Option(None, help="how many folds (default data.folds, else 5)"),
    out: Path | None = typer.Option(
        None, help="folder for the folds' runs (default <output_dir>/<name>-cv<k>-<time>)"
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="go on with the cross-validation in this folder"
    ),
    set_: list[str] = Sets,
    imports: list[str] = Imports,
) -> None:
    """Cross-validate a recipe: train it once per fold of its training set, each fold
    validation once; each metric's mean ± std over the folds."""
    _import(imports)
    from cnnlab import api
    from cnnlab.cross_validation import cross_validate
    from cnnlab.cross_validation import resume as resume_folds

    if (recipe is None) == (resume is None) or (resume and (set_ or folds or out)):
        raise CnnlabError(
            "give a recipe (cnnlab cv RECIPE --folds 5), or --resume FOLDER alone to go on "
            "with one cnnlab cv began"
        )
    if resume is not None:
        found = resume_folds(resume, typer.echo)
    else:
        found = cross_validate(api.load_recipe(recipe, set_), folds, out, typer.echo)
    typer.echo(f"over {len(found.runs)} folds (mean ± std, min to max):")
    for row in found.summary:
        typer.echo(
            f"  {row['metric']:<28} {row['mean']:.4f} ± {row['std']:.4f}  "
            f"({row['min']:.4f} to {row['max']:.4f})"
        )
    typer.echo(
        f"folds: {found.folder}/folds.csv, summary: {found.folder}/summary.csv, a dot per "
        f"fold: {found.folder}/folds.png"
    )
    typer.echo(f"their learning curves side by side: cnnlab compare {found.folder}")


@app.command("eval")
def eval_(run: Path = typer.Argument(..., help="run folder"), imports: list[str] = Imports) -> None:
    """Test-set metrics of a run's best checkpoint (saved when the run had none)."""
    _import(imports)
    from cnnlab.api import load_run
    from cnnlab.progress import print_metrics_table

    loaded = load_run(run)
    untested = not loaded.folder.test_path.is_file()
    print_metrics_table(loaded.evaluate(), f"test metrics of {run}")
    from cnnlab.tasks.thresholds import metrics_note, saved

    for task, fitted in loaded.folder.calibration().get("tasks", {}).items():
        if "threshold" in fitted:  # accuracy 0.55 where the top class gave 0.73: say why
            typer.echo(metrics_note(task, saved(fitted["threshold"])))
    if untested and loaded.folder.test_path.is_file():
        typer.echo(f"saved: {loaded.folder.test_path} (cnnlab compare and report read it)")


@app.command()
def recipes() -> None:
    """List the shipped recipes and sweep files (give their names to train and sweep)."""
    typer.echo("recipes (cnnlab train NAME):")
    for name, doc in shipped_recipes().items():
        typer.echo(f"  {name:<26} {doc}")
    typer.echo("sweep files (cnnlab sweep RECIPE NAME):")
    for name, doc in shipped_sweeps().items():
        typer.echo(f"  {name:<26} {doc}")


@app.command()
def check(
    recipe: str = typer.Argument(..., help="recipe YAML file or shipped recipe name"),
    set_: list[str] = Sets,
    imports: list[str] = Imports,
) -> None:
    """Check a recipe without training: every key, the data's files and headers (a table's
    every row, path and split; no pixel is read), each task against its target, and the
    model built. One line when all is sound, after what training says of a table's rows
    (missing files, classes, cells read as blank); else train's lines: every wrong key or
    value of the recipe, else the data's first problem."""
    _import(imports)
    from cnnlab.build import build_model, tasks_for
    from cnnlab.data import describe
    from cnnlab.recipe import load_recipe

    parsed = load_recipe(recipe_file(recipe), set_)
    info = describe(parsed.data, say=True)
    tasks = tasks_for(parsed, info)
    model = build_model(parsed, tasks, info.shape, channels_last=False)
    params = sum(p.numel() for p in model.parameters())
    sizes = dict(info.sizes)
    if info.validation == "carved" and "val" not in sizes:  # as training carves it from train
        held = max(1, round(sizes["train"] * parsed.data.val_fraction))
        sizes |= {"train": sizes["train"] - held, "val": held}
    order = sorted(sizes, key=lambda s: ("train", "val", "test", s).index(s))
    sizes = ", ".join(f"{split} {sizes[split]:,}" for split in order)
    shape = "x".join(map(str, info.shape))
    if info.validation == "carved":
        # about: each class rounds its own share, which `stratified_split` does with labels
        shape += f" (val carved from train: about data.val_fraction {parsed.data.val_fraction:g})"
    read = "; ".join(f"{name}: {task.cfg.type} of {task.target}" for name, task in tasks.items())
    typer.echo(
        f"{parsed.name}: sound. Data {info.source}: {sizes} images of "
        f"{shape}; tasks {read}; model {parsed.model.backbone}, "
        f"{params:,} parameters. The pixels (and a table's masks) are read when training starts."
    )


@app.command()
def schema(
    sweep: bool = Flag(False, "--sweep", help="the sweep file's schema instead"),
    imports: list[str] = Imports,
) -> None:
    """Print the recipe's JSON Schema (with registered components), for editors and checks.

    The shipped copies, cnnlab/recipes/recipe.schema.json and (--sweep)
    cnnlab/recipes/sweeps/sweep.schema.json, are this output."""
    _import(imports)
    if sweep:
        from cnnlab.sweeps.schema import sweep_schema_text

        typer.echo(sweep_schema_text(), nl=False)
        return
    from cnnlab.schema import schema_text

    typer.echo(schema_text(), nl=False)


@app.command()
def datasets() -> None:
    """List the data sources a recipe can name in data.source."""
    from cnnlab.data import list_datasets

    for name, doc in list_datasets().items():
        typer.echo(f"{name:<20} {doc}")


@app.command()
def backbones(
    pretrained: bool = Flag(False, "--pretrained", help="list pretrained timm models"),
    filter_: str | None = typer.Option(None, "--filter", help="with --pretrained: e.g. 'resnet*'"),
    imports: list[str] = Imports,
) -> None:
    """List the backbones a recipe's model.backbone can name, each with its keys and defaults."""
    _import(imports)
    if pretrained:
        _pretrained_backbones(filter_)
        return
    from cnnlab.models import BACKBONES

    for name, entry in BACKBONES.items():
        typer.echo(f"{name:<10} {entry.doc}")
        typer.echo(f"{'':<10} {_one_line({'model': entry.config().model_dump(mode='json')})}")


@app.command()
def tasks(imports: list[str] = Imports) -> None:
    """List the task types a recipe's tasks.<name>.type can name, with keys and metrics."""
    _import(imports)
    from cnnlab.tasks import TASKS

    for name, cls in TASKS.items():
        doc = (cls.config.__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:<21} {doc}")
        keys = cls.config(target="<target>").model_dump(mode="json")
        typer.echo(f"{'':<21} {_one_line({'<name>': {'type': keys.pop('type'), **keys}})}")
        each = [f"{m}_<class or component>" for m in sorted(cls.per_class)]
        calibrated = (
            "; probabilities: calibrate fits their temperature"
            + ("; of two classes, a threshold (--recall)" if cls.thresholds else "")
            if cls.probabilistic
            else "; calibrate fits each value a range" if cls.intervals
            else ""
        )  # fmt: skip
        typer.echo(f"{'':<21} metrics: {', '.join([*cls.metrics, *each])}{calibrated}")
        typer.echo(f"{'':<21} figures: {', '.join(cls.figures) or 'none of its own'}")


def _one_line(section: dict) -> str:
    """A recipe section as one line of YAML: `model: {backbone: cnn, blocks: 3, ...}`."""
    import yaml

    flow = yaml.safe_dump(section, default_flow_style=True, sort_keys=False, width=10**6)
    return flow.strip()[1:-1]


def _pretrained_backbones(pattern: str | None) -> None:
    import timm

    from cnnlab.models.weights import PACKAGED

    typer.echo("pretrained backbones: model: {backbone: timm, name: NAME}")
    for name, entry in PACKAGED.items():
        typer.echo(f"  {name:<28} {entry.about}")
    names = timm.list_models(pattern or "*", pretrained=True)
    archs = sorted({n.split(".")[0] for n in names})
    if pattern:
        for name in archs:
            typer.echo(f"  {name:<28} timm, downloaded when online, then cached")
        return
    examples = ", ".join(a for a in ("resnet50", "convnext_tiny", "efficientnet_b0") if a in archs)
    typer.echo(
        f"  and {len(archs):,} timm architectures, downloaded when online, then cached "
        f"(e.g. {examples}); --filter 'resnet*' lists them"
    )


@app.command()
def calibrate(
    run: Path = typer.Argument(..., help="run folder"),
    reset: bool = Flag(
        False, help="every temperature back to 1 (the model's own probabilities), no interval"
    ),
    coverage: float = typer.Option(
        0.9, help="the share of true values a regression's interval holds"
    ),
    recall: list[str] = typer.Option(
        [],
        help="a two-class task answers its class from the probability that finds this share "
        "of its images: 0.95 (the second class), malignant=0.95, or diag.malignant=0.95",
    ),
    imports: list[str] = Imports,
) -> None:
    """Fit a temperature for each task with probabilities, and an interval for each
    regression, on the validation set; with --recall, a two-class task's threshold.

    They are saved with the best weights; eval, predict, the figures and export use them."""
    _import(imports)
    from cnnlab.calibration import calibrate_run, recall_option, stale_exports, summary

    result = calibrate_run(run, reset=reset, coverage=coverage, recall=recall_option(recall))
    for line in summary(result):
        typer.echo(line)
    typer.echo(
        f"saved in {run / 'checkpoints' / 'best.pt'}; redraw the report: cnnlab report {run}"
    )
    for old in stale_exports(run):
        typer.echo(f"{old} holds the old calibration: export again, cnnlab export {run}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="run folder"),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="onnx (onnxruntime, anywhere) or pt2 [default: --out's suffix, else onnx]",
    ),
    out: Path | None = typer.Option(
        None, help="file (or folder) to write [default: RUN/export/model.FORMAT]"
    ),
    check: bool = Flag(True, help="compare the file with torch on the test images"),
    views: bool = Flag(
        True, help="the recipe's test-time views inside (--no-views: one pass per image)"
    ),
    imports: list[str] = Imports,
) -> None:
    """The run's best model as one file: uint8 images in, every task's answer out."""
    _import(imports)
    from cnnlab.export import export_checked

    for line in export_checked(run, fmt, out, check, views).lines():
        typer.echo(line)


@app.command()
def predict(
    images: list[Path] = typer.Argument(
        ...,
        help="RUN (or its exported model.onnx / .pt2) then image files and/or folders; or "
        "images alone for an ImageNet model",
    ),
    model: str = typer.Option(
        "efficientnet_lite0", help="ImageNet model (cnnlab backbones --pretrained)"
    ),
    weights: str | None = typer.Option(None, help="a local weight file in timm's names"),
    top: int = typer.Option(
        5, min=1, max=20, help="an ImageNet model's classes shown per image (a run's: its answer)"
    ),
    figure: Path | None = typer.Option(
        None,
        help="also draw the answers beside each image into this PNG",
    ),
    onnx: Path | None = typer.Option(None, help="a run's exported model.onnx (or .pt2) to run"),
    out: Path | None = typer.Option(None, help="write every image's answers to this CSV"),
    masks: Path | None = typer.Option(
        None,
        help="a run's per-pixel tasks: write each image's class map, at the image's own size, "
        "into this folder as a palette PNG (values: class indices)",
    ),
    explain: bool = Flag(
        False, help="a run's: also draw where in the first 16 images each answer comes from"
    ),
    component: str | None = typer.Option(
        None, help="--explain: the output of a vector task to explain (default: the first)"
    ),
    imports: list[str] = Imports,
) -> None:
    """A trained run's answers on new images, or an exported file's, or a pretrained model's.

    `cnnlab predict RUN IMAGES`, or `cnnlab predict FILE IMAGES` for an exported one
    (`--onnx FILE` too); without a run, an ImageNet-pretrained model as it is."""
    _import(imports)
    from cnnlab.predict import image_paths
    from cnnlab.runs import is_run_folder

    if onnx is None and images and images[0].suffix in (".onnx", ".pt2"):
        onnx, images = images[0], images[1:]  # an exported file named first, as a run is
    run = images[0] if images and is_run_folder(images[0]) else None
    if explain and (run is None or onnx is not None):
        raise CnnlabError("predict --explain: give a run folder first; its model is explained")
    if masks is not None and run is None and onnx is None:
        raise CnnlabError("predict --masks: give a run folder (or its exported file) first")
    if run is not None or onnx is not None:
        files = image_paths(images[1:] if run is not None else images)
        _predict_run(run, onnx, files, figure, out, masks, explain, component, images)
        return
    from cnnlab.models.timm_backbone import TimmConfig
    from cnnlab.predict import draw
    from cnnlab.predict import predict as top_classes

    TimmConfig(name=model)  # an unknown name fails here, with suggestions
    _no_run_named(images[0])
    found = top_classes(model, images, top, weights)
    typer.echo(  # an empty $RUN answered with a doormat, and nothing said whose it was
        f"no run folder named first: {model}'s ImageNet classes answer (a run folder first "
        "answers with its own model)",
        err=True,
    )
    for p in found:
        typer.echo(f"{p.path}")
        for rank, (name, prob) in enumerate(p.top, 1):
            typer.echo(f"  {rank}. {prob:6.1%}  {name}")
    if figure is not None:  # asked for: nothing is written into the current folder unasked
        typer.echo(f"figure: {draw(found, figure, f'{model}: ImageNet top-{top}')}")


def _no_run_named(first: Path) -> None:
    """Before an ImageNet model answers in place of a run: a first name that exists nowhere
    or a folder of run folders (`runs/`) is a run mistyped, not images."""
    if not first.exists():
        raise CnnlabError(
            f"{first}: no such run folder, exported file or image; give a run folder (or its "
            "model.onnx) first, then images"
        )
    from cnnlab.runs import is_run_folder

    # sub-folders only, told by their directory entries: a folder of 100,000 images is not
    # looked at file by file
    folders = [Path(e.path) for e in os.scandir(first) if e.is_dir()] if first.is_dir() else []
    runs = sorted(d for d in folders if is_run_folder(d))
    if runs:
        raise CnnlabError(
            f"{first} holds run folders, not images; name one first: cnnlab predict "
            f"{runs[-1]} IMAGES"
        )


def _predict_run(
    run: Path | None, onnx: Path | None, files: list[Path], figure: Path | None,
    out: Path | None, masks: Path | None, explain: bool = False, component: str | None = None,
    inputs: list[Path] | None = None,
) -> None:  # fmt: skip
    from cnnlab.viz.new_images import caption, check_masks, draw_predictions, write_masks

    explained = []  # drawn first: a wrong --component stops before anything is printed
    if onnx is not None:
        from functools import partial

        from cnnlab.export import predict_exported

        predict, source = partial(predict_exported, onnx), str(onnx)
    else:
        from cnnlab.api import load_run

        loaded = load_run(run)
        predict, source = loaded.predict, str(run)
    if masks is not None:  # refused, if at all, before the images are predicted
        check_masks(predict(files[:1]), masks, inputs or [])
    if explain and onnx is None:
        explained = loaded.explain(files[:16], component)
    found = predict(files)
    for i, path in enumerate(files):
        typer.echo(f"{path}")
        for line in caption(found, i).splitlines():
            typer.echo(f"  {line}")
    if out is not None:
        table = found.table()  # its first column: each image's path
        out.parent.mkdir(parents=True, exist_ok=True)
        replaced = out.exists()  # the file named: written over, and said so
        table.to_csv(out, index=False)
        again = "; it replaced the file there" if replaced else ""
        typer.echo(f"answers: {out} (one row per image{again})")
    if masks is not None:
        there = set(masks.rglob("*.png")) if masks.is_dir() else set()
        written = write_masks(files, found, masks)
        replaced = sum(path in there for path in written)
        again = f" ({replaced} of them replaced masks written there before)" if replaced else ""
        typer.echo(f"masks: {len(written)} PNG files in {masks}{again}")
    if figure is not None:  # asked for: nothing is written into the current folder unasked
        typer.echo(f"figure: {draw_predictions(files, found, figure, source)}")
    for chart in explained:
        typer.echo(f"figure: {run / 'figures' / chart.key}.png")


@app.command()
def landscape(
    runs: list[Path] = typer.Argument(..., help="run folders (several: compared side by side)"),
    dims: int = typer.Option(2, min=1, max=2, help="1: a curve, 2: a surface"),
    points: int = typer.Option(21, min=3, max=201, help="grid points per axis (odd: 0 is one)"),
    span: float = typer.Option(1.0, min=1e-6, help="the grid runs from -span to +span"),
    samples: int = typer.Option(2000, min=1, help="training images the loss is measured on"),
    seed: int = typer.Option(0, help="seeds the directions and the images"),
    bn: str = typer.Option("eval", help="BatchNorm: eval (running statistics) or train"),
    include_bias_bn: bool = Flag(False, help="also move biases and BN parameters"),
    trajectory: bool = Flag(False, help="the plane of the training path (PCA)"),
    log: bool = Flag(False, help="log-scale loss in the figures"),
    budget: float | None = typer.Option(None, help="minutes; the rest on the next call"),
    out: Path = typer.Option(Path("landscapes"), help="where several runs are compared"),
    names: str | None = typer.Option(None, help="labels of the runs, comma-separated"),
    imports: list[str] = Imports,
) -> None:
    """Loss landscape around a run's weights (Li et al. 2017), saved in <run>/landscape/."""
    _import(imports)
    from cnnlab.landscape import Settings
    from cnnlab.landscape_runs import landscape as compute

    if bn not in ("eval", "train"):
        raise CnnlabError(f"--bn {bn}: choose eval or train")
    if trajectory and dims != 2:
        raise CnnlabError("--trajectory draws the path on a plane: use --dims 2")
    settings = Settings(
        dims, points, span, samples, seed, bn, include_bias_bn, "pca" if trajectory else "random"
    )
    labels = names.split(",") if names else None
    if labels and len(labels) != len(runs):
        raise CnnlabError(f"--names gives {len(labels)} labels for {len(runs)} runs")
    compute(runs, settings, budget, log, out, labels=labels)
    for run in runs:
        typer.echo(f"landscape: {run / 'landscape'}")


@app.command()
def fetch(
    source: str = typer.Argument(..., help="data source name (cnnlab datasets)"),
    root: str | None = typer.Option(None, help="the one folder to read, as data.root"),
    download: bool = Flag(True, help="download into the cache when not found"),
) -> None:
    """Find (or download) a data source's files and print where they are."""
    from cnnlab.data import get_source

    files = get_source(source).locate(root, download)
    folders = sorted({str(p.parent) for p in files.values()})
    typer.echo(f"{source}: {', '.join(folders)}")


# ------------------------------------------------------------------------ data


data_app = typer.Typer(no_args_is_help=True, help="Make data sets.")
app.add_typer(data_app, name="data")


@data_app.command("gsn")
def data_gsn(
    out: Path = typer.Option(Path("data/gsn"), help="folder to write (new, empty or a GSN one)"),
    n: int = typer.Option(10000, "--n", min=1, max=100000, help="images to draw"),
    seed: int = typer.Option(1, help="the same seed writes the same bytes"),
    stats: bool = Flag(False, "--stats", help="print the generator's statistics"),
) -> None:
    """Generate GSN, the shape-counting data set of a reproduced study.

    GSN (Geometric Shape Numbers): img_NNNNN.png + labels.csv, its original format."""
    import time

    from cnnlab.data import gsn_generator

    start = time.perf_counter()
    images, shapes = gsn_generator.write(out, n, seed)
    typer.echo(f"gsn: {n:,} images in {time.perf_counter() - start:.1f} s -> {out}")
    if stats:
        from cnnlab.progress import print_table

        rows = [
            [k, f"{v:,.0f}" if k == "images" else f"{v:.3f}"]
            for k, v in gsn_generator.stats(images, shapes).items()
        ]
        print_table(["statistic", "value"], rows, f"gsn generator, seed {seed}")


@data_app.command("shapes")
def data_shapes(
    out: Path = typer.Option(
        Path("data/shapes"), help="folder to write (new, empty or a shapes one)"
    ),
    n: int = typer.Option(2000, "--n", min=20, max=200000, help="rows (images) to draw"),
    size: int = typer.Option(32, min=16, max=512, help="image side in pixels"),
    seed: int = typer.Option(0, help="the same seed writes the same images"),
) -> None:
    """Generate a table of shapes: what `data.source: table` reads.

    images/, masks/ and labels.csv with a class, a number, a count vector, a mask and a
    split column."""
    from cnnlab.data import shapes_table

    table = shapes_table.write(out, n, size, seed)
    typer.echo(f"shapes: {n:,} rows -> {table}")


# ------------------------------------------------------------------------ sweeps


@app.command()
def sweep(
    recipe: str = typer.Argument(..., help="base recipe YAML file or shipped recipe name"),
    spec: str = typer.Argument(
        ..., metavar="SWEEP_FILE", help="sweep file (W&B format) or shipped sweep name"
    ),
    set_: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="override a base recipe field"
    ),
    name_map: Path | None = typer.Option(
        None, "--map", help="name map (default: <sweep>.map.yaml beside the sweep file)"
    ),
    trials: int | None = typer.Option(None, help="trials in the whole study (all workers)"),
    workers: int = typer.Option(1, help="worker processes on this machine"),
    storage: str | None = typer.Option(
        None, help="SQLAlchemy URL of a shared study, e.g. postgresql://user@host/db"
    ),
    study: str | None = typer.Option(None, help="study name: the same on every machine"),
    out: Path = typer.Option(Path("sweeps"), help="folder that holds sweep folders"),
    resume: bool = Flag(False, "--resume", help="continue the latest such sweep"),
    max_failures: int = typer.Option(3, help="a worker stops after this many failures in a row"),
    heartbeat: int = typer.Option(10, help="seconds between a worker's signs of life"),
    trial_processes: int = typer.Option(
        1, help="processes each trial trains on (torchrun, data-parallel)"
    ),
    imports: list[str] = Imports,
) -> None:
    """Run a hyperparameter sweep: every trial is a run folder inside the sweep folder."""
    _import(imports)  # and its workers and trials import them too ($CNNLAB_IMPORT)
    from cnnlab.distributed import from_environment
    from cnnlab.sweeps.launch import sweep as run_sweep

    if from_environment().active:
        raise CnnlabError(
            "run cnnlab sweep itself as one process; --trial-processes N starts torchrun "
            "for each trial"
        )

    folder = run_sweep(
        recipe_file(recipe), sweep_file(spec), set_, name_map, trials, workers, storage, study,
        out, resume, max_failures, heartbeat, trial_processes,
    )  # fmt: skip
    typer.echo(f"sweep folder: {folder.path}")


@app.command()
def select(
    sweep_folder: Path = typer.Argument(..., help="sweep folder (sweeps/<name>-<time>)"),
    metric: list[str] = typer.Option([], help="validation metric; repeat for a Pareto front"),
    test: bool = Flag(False, "--test", help="evaluate the chosen runs on the test set"),
    storage: str | None = typer.Option(None, help="the study's database URL, if not a file"),
) -> None:
    """Pick the best run per metric (and the Pareto front); --test adds the test table.

    Saved as selection.md, or selection_test.md with --test: neither replaces the other."""
    from cnnlab.sweeps.select import print_table, selection_path
    from cnnlab.sweeps.select import select as pick
    from cnnlab.sweeps.study import SweepFolder

    folder = SweepFolder.open(sweep_folder)
    picks = pick(folder, metric, storage, test)
    names = [folder.spec().resolve_metric(m) for m in metric] or [folder.meta().metric]
    print_table(picks, names, f"selection from {folder.path}")
    typer.echo(f"saved {selection_path(folder, test)} (and .json, .csv)")
    tested = selection_path(folder, True)
    if not test and tested.is_file():
        typer.echo(f"kept {tested}, the selection with test results (select --test)")


# ----------------------------------------------------------------------- reports


@app.command()
def report(
    path: Path = typer.Argument(..., help="run folder or sweep folder"),
    group_by: str | None = typer.Option(
        None,
        help="sweeps: group by a recipe field or swept parameter, or A,B for A > B / A = B / A < B",
    ),
    storage: str | None = typer.Option(
        None, help="sweeps: the study's database URL, if not a file"
    ),
    imports: list[str] = Imports,
) -> None:
    """Write report.html (self-contained) and PNGs for a run folder or a sweep folder."""
    _import(imports)
    from cnnlab.sweeps.study import SweepFolder

    if SweepFolder.is_sweep(path):
        from cnnlab.sweeps.report import build_report as build_sweep_report

        page = build_sweep_report(SweepFolder(path), storage, group_by)
        if group_by:  # the study's tables on the screen too
            typer.echo((page.parent / "study.md").read_text())
        typer.echo(f"report: {page}")
        return
    from cnnlab.runs import is_run_folder

    if not is_run_folder(path) and path.is_dir():
        _not_a_run(path)
    from cnnlab.report import build_report

    typer.echo(f"report: {build_report(path)}")


def _not_a_run(path: Path) -> None:
    """A folder `report` was given that is no run folder: name the command it needs when
    it is a sweep's runs/ (the sweep's report), holds sweeps (each one's report) or runs
    (a comparison)."""
    from cnnlab.comparison import runs_of
    from cnnlab.sweeps.study import SweepFolder

    if SweepFolder.is_sweep(path.parent):  # SWEEP/runs: the sweep's report compares them
        raise CnnlabError(
            f"{path} holds a sweep's trials; its report compares them: cnnlab report {path.parent}"
        )
    sweeps = sorted(c for c in path.iterdir() if SweepFolder.is_sweep(c))
    if len(sweeps) == 1:
        raise CnnlabError(
            f"{path} is not a run folder; it holds a sweep: cnnlab report {sweeps[0]}"
        )
    if sweeps:  # sweeps, not runs: each has a report of its own
        each = " ; ".join(f"cnnlab report {s}" for s in sweeps[:3])
        raise CnnlabError(
            f"{path} is not a run folder but holds {len(sweeps)} sweeps; report each one: "
            f"{each}{' ...' if len(sweeps) > 3 else ''}"
        )
    inner = runs_of([path])
    if len(inner) == 1 and inner != [path]:
        raise CnnlabError(f"{path} is not a run folder; it holds one: cnnlab report {inner[0]}")
    if len(inner) > 1:  # a folder of runs: what the user means is a comparison
        raise CnnlabError(
            f"{path} is not a run folder but holds {len(inner)} runs; compare them with "
            f"cnnlab compare {path}"
        )


@app.command()
def compare(
    runs: list[Path] = typer.Argument(
        ..., help="run folders (two or more; a folder that holds runs stands for them)"
    ),
    out: Path | None = typer.Option(
        None, help="folder for compare.html and the PNGs (default ./compare-<time>)"
    ),
    names: str | None = typer.Option(None, help="the runs' names, comma-separated"),
) -> None:
    """Compare runs side by side: a table of what differs and their test metrics, their
    learning curves overlaid; written as compare.html (self-contained) and PNGs."""
    from cnnlab.comparison import compare as compare_runs

    found = compare_runs(runs, out, names.split(",") if names is not None else None)
    if found.differs:
        typer.echo(f"differing recipe fields: {', '.join(found.differs)}")
    for line in found.lines():
        typer.echo(line)
    for note in found.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"report: {found.page}")


# ---------------------------------------------------------------- viz + report


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def viz(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="run folder"),
    figure: str = typer.Argument(..., help="figure name; `cnnlab figures` lists them"),
    images: int | None = typer.Option(
        None, help="feature-maps, attributions, sanity, mistakes, pixels: test images to show"
    ),
    channels: int | None = typer.Option(None, help="feature-maps: channels per block"),
    neurons: int | None = typer.Option(None, help="guided-backprop: neurons of the last conv"),
    grid: str | None = typer.Option(None, help="predictions: ROWSxCOLS, e.g. 10x3"),
    steps: int | None = typer.Option(None, help="sanity: randomization steps"),
    ig_steps: int | None = typer.Option(
        None, help="attributions: Integrated Gradients' steps (default 8)"
    ),
    component: str | None = typer.Option(
        None,
        help="attributions, sanity: the output of a vector task to explain (default: the first)",
    ),
    out: Path | None = typer.Option(None, help="folder for the PNGs (default RUN/figures)"),
    imports: list[str] = Imports,
) -> None:
    """Draw one figure of a run as PNG files. A figure of one's own takes its own options
    as --NAME VALUE (its function's keyword arguments)."""
    _import(imports)
    from cnnlab.viz import get_figure, render, typed_options

    get_figure(figure, run)  # an unknown name fails before the data is loaded
    given = {
        "images": images, "channels": channels, "neurons": neurons, "grid": grid,
        "steps": steps, "ig_steps": ig_steps, "component": component,
    }  # fmt: skip
    given |= typed_options(figure, ctx.args)
    for path in render(run, figure, out, **{k: v for k, v in given.items() if v is not None}):
        typer.echo(str(path))


@app.command()
def figures(imports: list[str] = Imports) -> None:
    """List the figures `cnnlab viz` can draw."""
    _import(imports)
    from cnnlab.viz import list_figures

    for name, doc in list_figures().items():
        typer.echo(f"{name:<18} {doc}")


@app.command()
def count(
    recipe: str = typer.Argument(..., help="recipe YAML file or shipped recipe name"),
    set_: list[str] = Sets,
    input_shape: str | None = typer.Option(
        None, "--input", help="CxHxW, e.g. 3x224x224 (default: the data's image shape)"
    ),
    imports: list[str] = Imports,
) -> None:
    """Per layer: output shape, parameters and MACs, beside the reports' closed forms.

    MACs are measured two ways; the closed-form counts are those the reproduced reports
    derived (the colorizer's; a plain CNN's)."""
    _import(imports)
    from cnnlab.closed_forms import WHOSE, closed_forms, seed_for
    from cnnlab.count import count_recipe, parse_input
    from cnnlab.progress import print_table
    from cnnlab.recipe import load_recipe

    parsed = load_recipe(recipe_file(recipe), set_)
    shape = parse_input(input_shape) if input_shape else None
    model, shape, costs = count_recipe(parsed, shape)
    rows = [
        [c.name, c.kind, "×".join(map(str, c.shape)), f"{c.params:,}", f"{c.macs:,}",
         f"{c.counted_macs:,}"]
        for c in costs
    ]  # fmt: skip
    total = sum(p.numel() for p in model.parameters())
    macs, counted = sum(c.macs for c in costs), sum(c.counted_macs for c in costs)
    rows.append(["total", "", "", f"{total:,}", f"{macs:,}", f"{counted:,}"])
    header = ["layer", "kind", "output", "parameters", "MACs (shapes)", "MACs (FLOP counter)"]
    print_table(header, rows, f"{parsed.name}: one {'×'.join(map(str, shape))} image")
    seed = seed_for(model)
    whose = WHOSE[seed]
    try:
        forms = closed_forms(seed, parsed, model, costs, shape)
    except CnnlabError as err:
        typer.echo(f"the formulas of {whose} do not apply: {err}")
        return
    if not forms.terms:
        return
    written = any(t.expr for t in forms.terms)  # the formula as the seed wrote it, then its value
    header = ["layer", "", "formula", *(["value"] * written), "measured", "agrees"]
    rows = [
        [t.layer, t.what, *([t.expr] * written), _number(t.formula), f"{t.measured:,}",
         "yes" if t.agrees else f"no: {t.why or 'differs'}"]
        for t in forms.terms
    ]  # fmt: skip
    print_table(header, rows, f"closed forms of {whose} at {forms.at}")
    extra = ", ".join(f"{name} {n:,}" for name, n in forms.outside)
    if len(forms.outside) > 1:
        extra += f" ({sum(n for _, n in forms.outside):,} in all)"
    typer.echo(f"parameters outside the formulas of {whose}: {extra or 'none'}")


def _number(x: float) -> str:
    """A formula's value: whole where it is (to the digit), else to two decimals."""
    return f"{x:,.0f}" if abs(x - round(x)) < 1e-9 else f"{x:,.2f}"


def main() -> None:
    keep_freed_memory()  # before the first tensor: every command's steps reuse their memory
    collect_rarely()  # a command's heap is mostly imports no collection frees
    try:
        _run()
    finally:
        skip_final_collections()  # the heap goes with the process


def _run() -> None:
    try:
        # Components from installed packages, then the --import modules of the cnnlab that
        # started this process (a sweep trial under torchrun), before any recipe is read.
        load_entry_points()
        import_from_environment()
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:  # typer returns 130 on Ctrl-C here, not raising
            typer.secho("aborted", err=True, fg="red")
            sys.exit(code)
    except CnnlabError as err:
        for line in err.lines():
            typer.secho(f"error: {line}", err=True, fg="red")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True, fg="red")
        sys.exit(130)
    except Exception as err:
        if isinstance(err, usage_errors()):  # a bad option, a missing argument: user errors
            err.show()
            field = recipe_field(getattr(err, "option_name", None) or "")
            if field:  # --epochs 3: a recipe's field, as a flag
                typer.secho(f"error: a recipe's fields are set with --set: --set {field}=...",
                            err=True, fg="red")  # fmt: skip
            sys.exit(2)
        raise


def recipe_field(option: str) -> str | None:
    """The recipe field an unknown option names (`--epochs`: train.epochs, `--lr`:
    train.optimizer.lr); else None."""
    from cnnlab.recipe import field_home

    name = option.lstrip("-").replace("-", "_")
    home = field_home(name) if name else None
    return f"{home}.{name}" if home else None


def usage_errors() -> tuple[type[Exception], ...]:
    """The classes of the command line's usage errors. typer raised click's until 0.28 and
    raises its own copy's since 0.29 (`typer.TyperException` their base), when click itself
    may not be installed: checking click's alone let an unknown option end in a traceback."""
    kinds = [getattr(typer, "TyperException", None)]
    try:
        from click import ClickException

        kinds.append(ClickException)
    except ImportError:
        pass
    return tuple(k for k in kinds if k is not None)


if __name__ == "__main__":
    main()
