"""report.html end to end: a run trained by `cnnlab train`, its report opened in Debian's
headless Chromium through Playwright (no console errors, every figure drawn, a legend on the
learning curves, not blank), and user text that tries to inject HTML rendered as text."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnlab.data.base import ImageSet
from cnnlab.report import SECTIONS, build_report, script_json
from cnnlab.viz import RunView, make_charts, render
from cnnlab.viz.run_view import digest
from tests.browser import chromium, visit

FIGURES_JS = """Array.from(document.querySelectorAll('.figure')).map(e => {
  const r = e.getBoundingClientRect();
  return {id: e.id || e.alt, w: r.width, h: r.height,
          drawn: e.tagName === 'IMG' ? e.complete && e.naturalWidth > 0
                                     : e.querySelectorAll('svg').length > 0};
})"""
# the entries plotly drew in the learning curves' legend
LEGEND_JS = """Array.from(document.querySelectorAll('#plot-curves .legend .traces .legendtext'))
  .map(e => e.textContent)"""
# a few of the learning curves' trace names: split, task, metric
LEGEND_SAMPLE = {"train loss", "val loss", "train cls loss", "val cls accuracy", "val ink rmse"}
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def blank(png: bytes) -> bool:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return pixels.std() < 5.0


def test_train_writes_the_report_and_prints_its_path(report_run):
    folder, stdout = report_run
    report = folder / "report.html"
    assert f"report: {report}" in stdout
    html = report.read_text()
    for sid, title, _ in SECTIONS:  # the demo recipe has an image-level task of each kind
        shown = f'<section id="{sid}">' in html and title in html
        # a section with nothing to show is left out: no per-pixel task, no landscape yet
        assert shown == (sid not in ("pixels", "landscape")), sid
    assert "Not available" not in html
    # self-contained: no external script, stylesheet or image (plotly.js is inlined)
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=[\"']?(https?:|//)", html)
    assert "Plotly.newPlot" in html and "<script src" not in html
    pngs = {p.name for p in (folder / "figures").glob("*.png")}
    assert {
        "curves.png",
        "data.png",
        "predictions.png",
        "mistakes_cls.png",
        "confusion_cls.png",
        "regression_ink.png",
        "feature_maps_1.png",
        "filters.png",
        "guided_backprop.png",
        "dead_units.png",
    } <= pngs
    assert len(re.findall(r'<img[^>]* src="data:image/png;base64,', html)) == len(pngs)


def test_report_renders_in_chromium(report_run, browser):
    folder, _ = report_run
    page = visit(browser, (folder / "report.html").as_uri(), FIGURES_JS)
    assert page.console_errors == []
    figures = page.value
    assert len(figures) >= 12
    for fig in figures:
        assert fig["w"] > 50 and fig["h"] > 50 and fig["drawn"], fig
    plots = [f for f in figures if f["id"].startswith("plot-")]
    assert {p["id"] for p in plots} == {"plot-curves", "plot-regression_ink"}
    assert not blank(page.screenshot)


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log"])
def test_a_terminal_is_told_which_figure_is_drawn_and_a_log_nothing(
    report_run, tmp_path, monkeypatch, terminal
):
    from rich.console import Console
    from rich.progress import Progress

    from cnnlab import progress
    from cnnlab.report import sections

    screen = io.StringIO()
    monkeypatch.setattr(progress, "bars", Console(file=screen, force_terminal=True, width=120))
    monkeypatch.setattr(progress, "live_bars", lambda: terminal)
    shown: list[str] = []
    real = Progress.update
    monkeypatch.setattr(
        Progress,
        "update",
        lambda bar, task, **kw: shown.append(kw.get("info")) or real(bar, task, **kw),
    )
    run = tmp_path / "run"
    shutil.copytree(report_run[0], run)
    assert build_report(run).is_file()
    titles = [title for _, title, _ in sections()]
    if not terminal:
        assert shown == [] and screen.getvalue() == ""
        return
    assert [s for s in shown if s] == titles  # each named before it is drawn
    assert f"{len(titles)}/{len(titles)}" in screen.getvalue()  # the bar's last frame


def test_user_text_is_rendered_as_text(report_run, browser, tmp_path):
    """Run name, class names and recipe values that hold HTML stay text everywhere."""
    run = tmp_path / "<img src=y onerror=alert(3)> & run"  # a folder name: no "/"
    shutil.copytree(report_run[0], run)
    ckpt_path = run / "checkpoints" / "best.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    names = ckpt["classes"]["label"]
    names[0], names[1], names[2] = EVIL, "Trouser & Co", "<img src=x onerror=alert(2)>"
    torch.save(ckpt, ckpt_path)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["log"]["project"] = f"project {EVIL}&more"  # free text that changes no result
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    html = build_report(run).read_text()
    assert EVIL not in html and "<img src=x" not in html and "<img src=y" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Trouser &amp; Co" in html

    check = """({
        text: document.body.innerText,
        title: document.title,
        injected: document.querySelectorAll('img[src="x"], img[src="y"]').length})"""
    page = visit(browser, (run / "report.html").as_uri(), check)
    assert page.dialogs == [] and page.console_errors == []
    result = page.value
    assert result["injected"] == 0
    assert EVIL in result["text"] and "Trouser & Co" in result["text"]
    assert f"project {EVIL}&more" in result["text"]
    assert result["title"] == "cnnlab report: <img src=y onerror=alert(3)> & run"


def test_a_missing_chromium_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `make browser`"), chromium(tmp_path / "none"):
        pass


# ------------------------------------------------------------ learning-curve legend

PANELS = {"total loss", "cls: loss", "cls: metrics", "ink: loss", "ink: metrics"}


def series_names(folder) -> set[str]:
    """What the legend must say: every train.* and val.* series of the run, e.g.
    "val cls accuracy" (train has no precision / recall / f1)."""
    rows = RunView(folder).metrics()
    return {k.replace(".", " ") for row in rows for k in row if k.startswith(("train.", "val."))}


def test_learning_curves_name_every_trace_in_a_legend(report_run):
    """Train and val of each task and metric are told apart without hovering."""
    (chart,) = make_charts(RunView(report_run[0]), "curves")
    spec = json.loads(chart.plotly.to_json())
    assert spec["layout"]["showlegend"] is True
    traces = spec["data"]
    names = [t["name"] for t in traces]
    assert len(names) == len(set(names)) and set(names) == series_names(report_run[0])
    assert set(names) >= LEGEND_SAMPLE
    for trace in traces:
        assert trace.get("showlegend", True)
        assert trace["line"]["dash"] == ("dash" if trace["name"].startswith("train ") else "solid")
    val_acc, train_acc = (
        next(t for t in traces if t["name"] == f"{split} cls accuracy")
        for split in ("val", "train")
    )
    assert val_acc["line"]["color"] == train_acc["line"]["color"]  # a pair, told apart by dash


def test_learning_curves_show_their_legend_in_chromium(report_run, browser):
    page = visit(browser, (report_run[0] / "report.html").as_uri(), LEGEND_JS)
    assert page.console_errors == []
    # one entry per series, grouped under its panel's title
    assert sorted(page.value) == sorted(series_names(report_run[0]) | PANELS)
    assert set(page.value) >= LEGEND_SAMPLE


def test_script_json_cannot_close_a_script_element():
    out = script_json('{"a": "</script><script>alert(1)</script> & <!--"}')
    assert "<" not in out and ">" not in out and "&" not in out
    assert json.loads(out) == {"a": "</script><script>alert(1)</script> & <!--"}


@pytest.mark.parametrize("calibrate", [False, True])
def test_train_hands_the_report_its_test_pass_predictions(tiny, monkeypatch, calibrate):
    """`cnnlab train` gives the report what its test pass gathered (the calibration's pass
    when it calibrates), not a second pass over the test set with every view: the same
    predictions, peaks and rows a fresh look at the run computes."""
    import cnnlab.report
    from cnnlab.experiment import train

    handed = {}

    def report(run, splits=None, show=True, predictions=None):
        handed.update(splits=splits, predictions=predictions)
        return run / "report.html"

    monkeypatch.setattr(cnnlab.report, "build_report", report)
    on = "true" if calibrate else "false"
    run = train(tiny("train.report=true", f"train.calibrate={on}", "train.tta=[hflip]"))
    shared, fresh = handed["predictions"], RunView(run.path).test_predictions
    assert handed["splits"] is not None and len(shared.peaks) == len(fresh.peaks) == 500
    for name in fresh.truth:
        assert torch.equal(shared.truth[name], fresh.truth[name])
        assert torch.equal(shared.pred[name], fresh.pred[name])
    assert torch.equal(shared.peaks, fresh.peaks)
    assert list(shared.rows) == list(fresh.rows) == ["cls"]
    assert torch.equal(shared.rows["cls"].logits, fresh.rows["cls"].logits)
    assert list(shared.alive) == list(fresh.alive) and shared.alive  # the dead units' record
    assert all(torch.equal(shared.alive[k], fresh.alive[k]) for k in fresh.alive)
    view = RunView(run.path)
    view.share_predictions(shared)
    assert view.test_predictions is shared  # the report's figures read these, no new pass


def test_a_section_says_what_one_of_its_figures_could_not_show(tiny, monkeypatch):
    """A classifier that got every test image right: the predictions section shows its grid
    and says there is no mistake to show, where the figure used to be left out unsaid."""
    import cnnlab.report
    from cnnlab.experiment import train
    from cnnlab.tasks.calibration import Rows

    run = train(tiny("tasks={cls: {type: classification, target: label}}"))
    predictions = RunView(run.path).test_predictions
    logits = predictions.rows["cls"].logits
    said = logits.argmax(1)  # as if every label were what the model says
    perfect = dataclasses.replace(
        predictions, truth={"cls": said}, pred={"cls": said}, rows={"cls": Rows(logits, said)}
    )
    (shown,) = [s for s in SECTIONS if s[0] == "predictions"]
    assert shown[2] == ["predictions", "mistakes"]
    monkeypatch.setattr(cnnlab.report, "SECTIONS", [shown])
    page = build_report(run.path, show=False, predictions=perfect).read_text()
    section = page.split('<section id="predictions">')[1].split("</section>")[0]
    assert "<figure" in section and (
        f"mistakes: every one of the {len(said)} test images is right for cls" in section
    )


def test_the_report_keeps_the_test_predictions_for_the_next_look(report_run, tmp_path, monkeypatch):
    """`cnnlab report` and `cnnlab viz` of a run whose report kept its test predictions make
    no pass over the test set; new weights, a changed test set or an unreadable file do."""
    run = shutil.copytree(report_run[0], tmp_path / "run")  # copy2: the same mtimes
    kept = run / "checkpoints" / "best_test.pt"
    assert kept.is_file()  # the report `cnnlab train` wrote kept them
    fresh = RunView(run).predict("test")
    made = []
    monkeypatch.setattr(RunView, "predict", lambda self, split: made.append(split) or fresh)
    view = RunView(run)
    found = view.test_predictions
    assert made == [] and view.predictions_kept
    for name in fresh.truth:
        assert torch.equal(found.truth[name], fresh.truth[name])
        assert torch.equal(found.pred[name], fresh.pred[name])
    assert torch.equal(found.peaks, fresh.peaks)
    assert torch.equal(found.rows["cls"].logits, fresh.rows["cls"].logits)

    kept.write_bytes(b"not a checkpoint")  # made again, not an error; kept again
    view = RunView(run)
    assert view.test_predictions is fresh and made == ["test"]
    view.keep_predictions()
    assert RunView(run).test_predictions.peaks.shape == fresh.peaks.shape and made == ["test"]

    best = run / "checkpoints" / "best.pt"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 1))  # new weights
    assert RunView(run).test_predictions is fresh and made == ["test", "test"]
    render(run, "confusion", tmp_path / "png")  # `cnnlab viz` makes them once, then keeps them
    render(run, "mistakes", tmp_path / "png")
    assert made == ["test", "test", "test"]


def test_the_digest_of_a_split_sees_one_pixel_and_one_label():
    images = torch.zeros(5000, 1, 4, 4, dtype=torch.uint8)  # more than one 4096-image read
    split = ImageSet(images, {"label": torch.zeros(5000, dtype=torch.long)})
    first = digest(split)
    images[4500, 0, 1, 2] = 1
    second = digest(split)
    split.targets["label"][3] = 2
    assert len({first, second, digest(split)}) == 3
