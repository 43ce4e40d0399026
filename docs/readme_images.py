"""The pictures of README.md and the docs site's pages (docs/images/), made from a real run by
one command so that they can follow the report and the figures when those change.

    make readme-images                  # trains the demo recipe for 3 epochs, uses that run
    make readme-images RUN=runs/<run>   # an existing run folder (a full demo run looks best)

Run from the repository root as a module (`python -m docs.readme_images [RUN]`): the
report screenshot reuses the tests' way of starting Debian's Chromium (tests/browser.py).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from cnnlab.catalog import RECIPES
from cnnlab.experiment import train
from cnnlab.recipe import load_recipe
from cnnlab.report import build_report
from cnnlab.viz import RunView, make_charts
from tests.browser import chromium

ROOT = Path(__file__).resolve().parent.parent
DEMO = RECIPES / "fashion_multitask.yaml"
OUT = ROOT / "docs" / "images"
WIDTH = 1100  # px: sharp in GitHub's README column, small enough to keep each file < 200 KB
SHOT_WIDTH = 1200  # css px of the browser window; the page's column is 1100 wide plus margins
# (figure, its options, the chart to keep, file under docs/images/): wide shapes, which
# read best in a README column
FIGURES = [
    ("predictions", {"grid": "2x6"}, "predictions", "predictions.png"),
    ("confusion", {}, "confusion_cls", "confusion.png"),
    ("feature-maps", {"images": 1}, "feature_maps_1", "feature_maps.png"),
]


def demo_run() -> Path:
    """A short demo run: enough epochs for curves with a shape, minutes on a laptop CPU."""
    recipe = load_recipe(DEMO, ["train.epochs=3", "train.report=false"])
    return train(recipe).path


def shrink(image: Image.Image, path: Path) -> None:
    """Scale down to WIDTH (never up) and save as a 256-colour PNG: figures and a web page
    have few colours, and the repository keeps every version of these files."""
    if image.width > WIDTH:
        image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    # fast octree keeps plotly's few line colours apart; median cut merged two of them
    image = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    image.save(path, optimize=True)


def report_screenshot(report: Path, path: Path) -> None:
    """The report's first screens: header, metrics table and the interactive learning
    curves with their legend, down to the end of the curves."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": SHOT_WIDTH, "height": 900})
        page.goto(report.resolve().as_uri(), wait_until="load")
        page.wait_for_selector("#plot-curves .legend")  # plotly has drawn the curves
        box = page.locator("#plot-curves").bounding_box()
        clip = {"x": 0, "y": 0, "width": SHOT_WIDTH, "height": box["y"] + box["height"] + 6}
        page.screenshot(path=path, full_page=True, clip=clip)


def figures(run: Path) -> None:
    view = RunView(run)
    with tempfile.TemporaryDirectory() as tmp:
        for name, options, key, out in FIGURES:
            (chart,) = (c for c in make_charts(view, name, **options) if c.key == key)
            with Image.open(chart.save(Path(tmp))) as image:
                shrink(image, OUT / out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="run folder (default: train one)")
    run = parser.parse_args().run or demo_run()
    report = build_report(run)  # always: the pictures show today's report and figures
    OUT.mkdir(parents=True, exist_ok=True)
    shot = OUT / "report.png"
    report_screenshot(report, shot)
    with Image.open(shot) as image:
        shrink(image, shot)
    figures(run)
    for path in [shot, *(OUT / out for *_, out in FIGURES)]:
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
