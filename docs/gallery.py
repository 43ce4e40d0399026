"""The figure gallery of the docs site (docs/images/gallery/), drawn from a real run folder by
the same code as `cnnlab viz RUN NAME`, so the pictures follow the figures when they change.

    .venv/bin/python -m docs.gallery runs/<run>    # a trained run, e.g. `make demo`'s

Every figure `cnnlab figures` lists is drawn; one that does not apply to the run (a per-pixel
task's figure for a classifier, a landscape never computed) is named and skipped. Each chart
is scaled down to WIDTH and saved as a 256-colour PNG; `manifest.json` maps each figure to
its files and its one-line description, which docs/gen_reference.py turns into the gallery.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.viz import RunView, list_figures, make_charts

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "gallery"
WIDTH = 800  # px: readable in the site's column, small enough to commit every version


def shrink(source: Path, path: Path) -> None:
    """Scale down to WIDTH (never up), 256 colours: figures have few, and git keeps them all."""
    with Image.open(source) as image:
        if image.width > WIDTH:
            height = round(image.height * WIDTH / image.width)
            image = image.resize((WIDTH, height), Image.LANCZOS)
        image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
            path, optimize=True
        )


def draw(run: Path) -> dict[str, dict]:
    """Each figure's charts into OUT; figure name -> {"doc", "files"} of those drawn."""
    view = RunView(run)
    manifest: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, doc in list_figures().items():
            try:
                charts = make_charts(view, name)
            except CnnlabError as err:
                print(f"{name}: skipped ({err})")
                continue
            files = []
            for chart in charts:
                target = OUT / f"{chart.key}.png"
                shrink(chart.save(Path(tmp)), target)
                files.append(target.name)
            if files:
                manifest[name] = {"doc": doc, "files": files}
            print(f"{name}: {', '.join(files) or 'nothing to draw for this run'}")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained run folder")
    run = parser.parse_args().run
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {"run": run.name, "figures": draw(run)}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
