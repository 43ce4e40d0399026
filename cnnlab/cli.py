"""The `cnnlab` command. Every user-fixable problem ends as one line on stderr, status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cnnlab.errors import CnnlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _recipe_path(name: str) -> Path:
    """A path, or the name of a shipped recipe (`fashion_multitask`)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name.removesuffix('.yaml')}.yaml"
    return shipped if shipped.is_file() else path


@app.command()
def train(
    recipe: str | None = typer.Argument(None, help="recipe YAML file or shipped recipe name"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key.path=value"),
    resume: Path | None = typer.Option(None, "--resume", help="continue this run folder"),
) -> None:
    """Train a recipe, then evaluate its best checkpoint on the test set."""
    from cnnlab.recipe import load_recipe

    if resume is None:
        if recipe is None:
            raise CnnlabError("give a recipe (cnnlab recipes lists them) or --resume runs/<run>")
        parsed = load_recipe(_recipe_path(recipe), set_)  # validated before torch is imported
    elif recipe or set_:
        raise CnnlabError(
            "--resume continues a run with its saved recipe; drop the recipe and --set"
        )
    from cnnlab.runs import RunFolder
    from cnnlab.train import train as run_training

    if resume is not None:
        parsed = RunFolder.open(resume).recipe()
    run = run_training(parsed, resume=resume)
    typer.echo(f"run folder: {run.path}")
    if parsed.train.report and (run.path / "report.html").is_file():
        typer.echo(f"report: {run.path / 'report.html'}")


@app.command("eval")
def eval_(run: Path = typer.Argument(..., help="run folder")) -> None:
    """Test-set metrics of a run's best checkpoint."""
    from cnnlab.progress import print_metrics_table
    from cnnlab.train import evaluate_run

    print_metrics_table(evaluate_run(run), f"test metrics of {run}")


@app.command()
def recipes() -> None:
    """List the shipped recipes, one line each."""
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        typer.echo(f"{path.stem:<28} {first.lstrip('# ').strip()}")


@app.command()
def datasets() -> None:
    """List the data sources a recipe can name in data.source."""
    from cnnlab.data import list_datasets

    for name, doc in list_datasets().items():
        typer.echo(f"{name:<20} {doc}")


@app.command()
def fetch(
    source: str = typer.Argument(..., help="data source name (cnnlab datasets)"),
    root: str | None = typer.Option(None, help="folder to look in first"),
    download: bool = typer.Option(True, help="download into the cache when not found"),
) -> None:
    """Find (or download) a data source's files and print where they are."""
    from cnnlab.data import get_source

    files = get_source(source).locate(root, download)
    folders = sorted({str(p.parent) for p in files.values()})
    typer.echo(f"{source}: {', '.join(folders)}")


# --------------------------------------------------------- viz + report (issue 4)


@app.command()
def report(run: Path = typer.Argument(..., help="run folder")) -> None:
    """Write RUN/report.html and RUN/figures/*.png (all figures of the run)."""
    from cnnlab.report import build_report

    typer.echo(f"report: {build_report(run)}")


@app.command()
def viz(
    run: Path = typer.Argument(..., help="run folder"),
    figure: str = typer.Argument(..., help="figure name; `cnnlab figures` lists them"),
    images: int | None = typer.Option(None, help="feature-maps: test images to show"),
    channels: int | None = typer.Option(None, help="feature-maps: channels per block"),
    neurons: int | None = typer.Option(None, help="guided-backprop: neurons of the last conv"),
    grid: str | None = typer.Option(None, help="predictions: ROWSxCOLS, e.g. 10x3"),
    out: Path | None = typer.Option(None, help="folder for the PNGs (default RUN/figures)"),
) -> None:
    """Draw one figure of a run as PNG files."""
    from cnnlab.viz import FIGURES, render

    if figure not in FIGURES:  # before torch and the data are loaded
        raise CnnlabError(f"figure {figure!r} is unknown; choose one of: {', '.join(FIGURES)}")
    given = {"images": images, "channels": channels, "neurons": neurons, "grid": grid}
    for path in render(run, figure, out, **{k: v for k, v in given.items() if v is not None}):
        typer.echo(str(path))


@app.command()
def figures() -> None:
    """List the figures `cnnlab viz` can draw."""
    from cnnlab.viz import list_figures

    for name, doc in list_figures().items():
        typer.echo(f"{name:<18} {doc}")


# ------------------------------------------------------------------------------


def main() -> None:
    try:
        app(standalone_mode=False)
    except CnnlabError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True, fg="red")
        sys.exit(130)
    except Exception as err:
        # click's usage errors (bad option, missing argument) are user errors too.
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
