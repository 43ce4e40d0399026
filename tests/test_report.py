"""report.html end to end: a run trained by `cnnlab train`, its report opened in Debian's
headless Chromium through Playwright (no console errors, every figure drawn, not blank), and
user text that tries to inject HTML rendered as text."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnlab.report import SECTIONS, build_report, script_json
from tests.browser import chromium, visit

FIGURES_JS = """Array.from(document.querySelectorAll('.figure')).map(e => {
  const r = e.getBoundingClientRect();
  return {id: e.id || e.alt, w: r.width, h: r.height,
          drawn: e.tagName === 'IMG' ? e.complete && e.naturalWidth > 0
                                     : e.querySelectorAll('svg').length > 0};
})"""
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
    for sid, title, _ in SECTIONS:  # the demo recipe has every kind of task: all sections
        assert f'<section id="{sid}">' in html and title in html
    assert "Not available" not in html
    # self-contained: no external script, stylesheet or image (plotly.js is inlined)
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=[\"']?(https?:|//)", html)
    assert "Plotly.newPlot" in html and "<script src" not in html
    pngs = {p.name for p in (folder / "figures").glob("*.png")}
    assert {
        "curves.png",
        "predictions.png",
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
    recipe["data"]["root"] = f"/nonexistent/{EVIL}&more"  # falls back to the system folder
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
    assert f"/nonexistent/{EVIL}&more" in result["text"]
    assert result["title"] == "cnnlab report: <img src=y onerror=alert(3)> & run"


def test_a_missing_chromium_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `make browser`"), chromium(tmp_path / "none"):
        pass


def test_script_json_cannot_close_a_script_element():
    out = script_json('{"a": "</script><script>alert(1)</script> & <!--"}')
    assert "<" not in out and ">" not in out and "&" not in out
    assert json.loads(out) == {"a": "</script><script>alert(1)</script> & <!--"}
