"""A per-pixel task's answer on new images, the same in the run, its exported file, the
command line and Python: a class map and per-pixel probabilities at the model's resolution,
put back at each image's own size (`Prediction.mask`, `cnnlab predict --masks`), each
class's share of an image's pixels as one table row per image, those shares printed and
drawn beside the map; and the `pixels` figure's caption naming the columns it draws."""

from __future__ import annotations

import csv
import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import cnnlab
from cnnlab.data import shapes_table
from cnnlab.data.decoded import decode_mask
from cnnlab.errors import CnnlabError
from cnnlab.export import predict_exported
from cnnlab.inference import NOT_SEEN, Prediction, Predictions
from cnnlab.viz import RunView, make_charts, new_images
from cnnlab.viz.mosaic import Tile, mosaic, rgb
from cnnlab.viz.pixels import class_colours, paint
from tests.conftest import run_cli

ROWS, SIZE = 60, 16
CLASSES = shapes_table.MASK_CLASSES  # background, disc, square, triangle


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Decoded tables cached in the test's folder, not the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A run of the shipped table_example with its mask task alone (what the user trained),
    1 epoch on 60 generated 16 px images; (run folder, images to predict). The images: two
    of the table's, and one of its own size (48 x 40) and aspect."""
    base = tmp_path_factory.mktemp("pixel_predictions")
    shapes_table.write(base / "shapes", ROWS, SIZE, seed=2)
    raw = yaml.safe_load((Path(cnnlab.__file__).parent / "recipes/table_example.yaml").read_text())
    raw["data"]["table"] = str(base / "shapes" / "labels.csv")
    raw["tasks"] = {"mask": raw["tasks"]["mask"]}
    raw["model"]["filters"] = 8
    raw["train"].update(epochs=1, batch_size=32, progress=False, threads=1, device="cpu")
    raw["train"].update(report=False, precision="fp32")
    raw["output_dir"] = str(base / "runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(base / "cache"))
        run = cnnlab.train(raw)
    files = [base / "shapes" / "images" / f"{i:05d}.png" for i in (1, 2)]
    Image.open(files[0]).resize((48, 40)).save(base / "wide.png")
    return run.path, [*files, base / "wide.png"]


def said_order(share: np.ndarray) -> list[str]:
    """The classes an image's line names: largest share first, those that round to 1% or
    more (no share is 0.5% exactly: a 16 px map has 256 pixels)."""
    return [CLASSES[k] for k in np.argsort(-share, kind="stable") if share[k] >= 0.005]


def drawn_by(module: str, monkeypatch, figures: list | None = None) -> list:
    """The rows of tiles each `mosaic` call of `module` draws, recorded as it draws them
    (and the figures it returns, into `figures`)."""
    drawn: list = []

    def record(rows, *args, **kw):
        drawn.append(rows)
        figure = mosaic(rows, *args, **kw)
        (figures if figures is not None else []).append(figure)
        return figure

    monkeypatch.setattr(importlib.import_module(module), "mosaic", record)
    return drawn


def shares_of(index: np.ndarray) -> np.ndarray:
    """(N, K): each image's share of pixels in each class, counted one class at a time."""
    return np.stack([(index == k).mean(axis=(1, 2)) for k in range(len(CLASSES))], axis=1)


def upsampled(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The likeliest class of each pixel of one image's probabilities resized to `size`."""
    up = F.interpolate(torch.from_numpy(probabilities)[None], size, mode="bilinear")
    return up[0].argmax(0).numpy()


# ------------------------------------------------------------------------ Python


def test_a_per_pixel_answer_holds_its_map_probabilities_and_a_row_per_image(mask_run):
    path, files = mask_run
    p = cnnlab.load_run(path).predict([*files, np.asarray(Image.open(files[0]))])
    mask = p["mask"]
    # at the model's resolution, the 48 x 40 image's too; one probability per class and pixel
    assert mask.index.shape == (4, SIZE, SIZE) and mask.classes == CLASSES
    assert mask.probabilities.shape == (4, len(CLASSES), SIZE, SIZE)
    assert np.allclose(mask.probabilities.sum(1), 1, atol=1e-5)
    assert np.array_equal(mask.probabilities.argmax(1), mask.index)
    assert np.array_equal(mask.index[0], mask.index[3])  # a file and its pixels: one answer
    table = p.table()
    assert list(table.columns) == [f"mask.{c}" for c in CLASSES] and len(table) == 4
    assert np.allclose(table.to_numpy(), shares_of(mask.index))
    assert np.allclose(table.sum(axis=1), 1)


def test_a_map_is_put_back_on_its_image_at_the_images_own_size(mask_run):
    path, files = mask_run  # 16 x 16 files, and one of 48 x 40 that the run's source crops
    wide = np.asarray(Image.open(files[2]).convert("RGB"))  # an array: squashed whole
    p = cnnlab.load_run(path).predict([*files, wide])["mask"]
    assert np.array_equal(p.mask(0), p.index[0])  # at the model's own size: the map itself
    cropped = p.mask(2)
    assert cropped.shape == (40, 48) and cropped.dtype == np.int16
    assert (cropped[:, :4] == NOT_SEEN).all() and (cropped[:, 44:] == NOT_SEEN).all()
    seen = cropped[:, 4:44]  # the centre square the model saw, its probabilities upsampled
    assert (seen >= 0).all() and (seen == upsampled(p.probabilities[2], (40, 40))).mean() > 0.99
    squashed = p.mask(3)
    assert squashed.shape == (40, 48) and (squashed >= 0).all()
    assert (squashed == upsampled(p.probabilities[3], (40, 48))).mean() > 0.99
    half = p.mask(2, (20, 24))  # at another size, the same part of the image
    assert half.shape == (20, 24) and (half[:, :2] == NOT_SEEN).all() and (half[:, 2:22] >= 0).all()
    with pytest.raises(CnnlabError, match=r"^predict: image 4 of 4; give 0 to 3$"):
        p.mask(4)
    with pytest.raises(CnnlabError, match="a mask of 0 x 5 pixels"):
        p.mask(0, (0, 5))
    with pytest.raises(CnnlabError, match="^predict: kind has no class map"):
        Prediction("kind", np.array([1]), ["a", "b"], np.array([[0.4, 0.6]])).mask(0)


def test_shares_and_the_table_side_by_side_with_a_classification():
    index = np.array([[[0, 0], [1, 2]], [[3, 3], [3, 0]]])  # two images of 2 x 2 pixels
    mask = Prediction("mask", index=index, classes=CLASSES)
    assert mask.shares().tolist() == [[0.5, 0.25, 0.25, 0.0], [0.25, 0.0, 0.0, 0.75]]
    assert mask.shares(1).tolist() == [0.25, 0.0, 0.0, 0.75]
    kind = Prediction("kind", np.array([1, 0]), ["b", "a"], np.array([[0.3, 0.7], [0.6, 0.4]]))
    table = Predictions({"kind": kind, "mask": mask}).table()
    assert list(table.columns) == ["kind", "kind.probability", *[f"mask.{c}" for c in CLASSES]]
    assert table["mask.triangle"].tolist() == [0.0, 0.75] and table["kind"].tolist() == ["b", "a"]
    assert (
        new_images.caption(Predictions({"mask": mask}), 1) == "mask: triangle 75%, background 25%"
    )
    with pytest.raises(CnnlabError, match="^predict: kind is not a per-pixel classification$"):
        kind.shares()


def test_the_exported_file_gives_the_runs_maps_and_probabilities(mask_run, tmp_path):
    path, files = mask_run
    run = cnnlab.load_run(path)
    ours = run.predict(files)
    exported = run.export(out=tmp_path / "model.onnx", check=False)
    theirs = exported.predict(files)
    assert theirs["mask"].probabilities.shape == (3, len(CLASSES), SIZE, SIZE)
    assert np.allclose(theirs["mask"].probabilities, ours["mask"].probabilities, atol=1e-5)
    assert np.array_equal(theirs["mask"].index, ours["mask"].index)
    assert theirs["mask"].frames == ours["mask"].frames  # put back where the run puts them
    assert theirs["mask"].classes == CLASSES
    assert theirs.table().equals(ours.table())
    assert predict_exported(exported.path, files[:1]).table().shape == (1, 1 + len(CLASSES))


# ---------------------------------------------------------- command line, figure


def test_cnnlab_predict_prints_the_shares_and_writes_them_to_its_csv(mask_run, tmp_path):
    path, files = mask_run
    out = tmp_path / "answers.csv"
    env = {"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    done = run_cli("predict", str(path), *map(str, files), "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert f"answers: {out} (one row per image)" in done.stdout
    expected = cnnlab.load_run(path).predict(files)
    shares = shares_of(expected["mask"].index)
    lines = done.stdout.splitlines()
    for i, file in enumerate(files):
        said = lines[lines.index(str(file)) + 1]
        top = int(shares[i].argmax())
        assert said.startswith(f"  mask: {CLASSES[top]} {shares[i, top]:.0%}")
        named = [part.rsplit(" ", 1)[0] for part in said.removeprefix("  mask: ").split(", ")]
        assert named == said_order(shares[i])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [str(f) for f in files]
    got = np.array([[float(r[f"mask.{c}"]) for c in CLASSES] for r in rows])
    assert np.allclose(got, shares)
    again = run_cli("predict", str(path), str(files[0]), "--out", str(out), env=env)
    assert f"answers: {out} (one row per image; it replaced the file there)" in again.stdout


def test_cnnlab_predict_writes_each_map_as_a_mask_file_at_its_images_size(mask_run, tmp_path):
    path, files = mask_run  # shapes/images/00001.png, .../00002.png, wide.png
    env = {"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    done = run_cli("predict", str(path), *map(str, files), "--masks", str(tmp_path / "m"), env=env)
    assert done.returncode == 0, done.stderr
    assert f"masks: 3 PNG files in {tmp_path / 'm'}" in done.stdout
    written = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*"))
    assert written == [  # named after each image, under the images' common folder
        "shapes", "shapes/images", "shapes/images/00001.mask.png", "shapes/images/00002.mask.png",
        "wide.mask.png",
    ]  # fmt: skip
    expected = cnnlab.load_run(path).predict(files)["mask"]
    for i, name in enumerate(["shapes/images/00001", "shapes/images/00002", "wide"]):
        with Image.open(tmp_path / "m" / f"{name}.mask.png") as im:
            assert im.mode == "P" and im.size == Image.open(files[i]).size
            palette = np.array(im.getpalette()[: 3 * len(CLASSES)]).reshape(-1, 3)
            values = np.asarray(im)
        own = expected.mask(i)
        assert np.array_equal(values, np.where(own == NOT_SEEN, 255, own))  # 255: not seen
        assert np.array_equal(palette, (class_colours(CLASSES) * 255).round().numpy())
    read_back = decode_mask(tmp_path / "m/shapes/images/00001.mask.png", SIZE, "crop")
    assert np.array_equal(read_back, expected.index[0])  # a mask a table takes as it is
    again = run_cli(
        "predict", str(path), *map(str, files), "--masks", str(tmp_path / "m"), "--out",
        str(tmp_path / "m.csv"), env=env,
    )  # fmt: skip
    assert f"masks: 3 PNG files in {tmp_path / 'm'} (3 of them replaced masks written there " \
        "before)" in again.stdout  # fmt: skip
    assert again.stdout.count("replaced") == 1  # m.csv is new: nothing said of it
    alone = Predictions({"kind": Prediction("kind", np.array([0]), ["a"], np.ones((1, 1)))})
    with pytest.raises(CnnlabError, match="the run has no per-pixel task"):
        new_images.write_masks(files[:1], alone, tmp_path / "none")
    inside = run_cli(
        "predict", str(path), str(files[0].parent), "--masks", str(files[0].parent / "m"), env=env
    )  # the next predict of that folder would read the masks as images
    assert inside.returncode == 2 and not (files[0].parent / "m").exists()
    assert f"{files[0].parent / 'm'} is inside {files[0].parent}, a folder of images" in (
        inside.stderr
    )
    assert inside.stdout == ""  # refused before any image was predicted


def test_two_images_of_one_name_get_a_mask_each(tmp_path):
    for name in ("a.png", "a.jpg", "b.png", "sub/a.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    files = [tmp_path / n for n in ("a.png", "a.jpg", "b.png", "sub/a.png")]
    stems = [s.as_posix() for s in new_images.mask_stems(files)]
    assert stems == ["a.png", "a.jpg", "b", "sub/a"]  # a.mask.png would have been written twice


def test_the_figure_draws_each_map_beside_its_image_with_its_shares(
    mask_run, tmp_path, monkeypatch
):
    path, files = mask_run
    found = cnnlab.load_run(path).predict(files)
    drawn_figures: list = []
    drawn = drawn_by("cnnlab.viz.new_images", monkeypatch, drawn_figures)
    figure = new_images.draw_predictions(files, found, tmp_path / "f.png", "run")
    assert figure.stat().st_size > 1000
    assert [name for name, _ in key_said(drawn_figures[0])][: len(CLASSES)] == list(CLASSES)
    tiles = [t for row in drawn[0] for t in row]
    assert len(tiles) == 2 * len(files)  # image, map; image, map; ...
    mask = found["mask"]
    colours = class_colours(CLASSES)
    for i in range(len(files)):
        image, drawn_map = tiles[2 * i], tiles[2 * i + 1]
        assert image.title == files[i].name and "mask" not in image.label
        on_image = mask.mask(i, image.pixels.shape[:2])  # the image's shape, unseen grey
        assert np.array_equal(
            drawn_map.pixels, rgb(paint(torch.from_numpy(on_image.astype(np.int64)), colours))
        )
        share = shares_of(mask.index)[i]
        assert drawn_map.label == ", ".join(f"{c} {share[CLASSES.index(c)]:.0%}"
                                            for c in said_order(share))  # fmt: skip


# ------------------------------------------------------------- the pixels figure


def columns_said(caption: str) -> list[str]:
    return caption.split("Columns: ")[1].removesuffix(".").split(", ")


def key_said(figure) -> list[tuple[str, tuple[int, ...]]]:
    """A mosaic's key as drawn: each left-aligned text and the colour of the swatch left of
    it (the canvas pixel at the swatch's middle)."""
    canvas = figure.axes[0].images[0].get_array()
    h, w = canvas.shape[:2]
    said = []
    for t in figure.texts:
        if t.get_ha() == "left":
            x, y = t.get_position()
            px, py = round(x * w) - 4 - 5, round((1 - y) * h)  # the swatch is 10-11 px wide
            said.append((t.get_text(), tuple(int(v) for v in canvas[py, px])))
    return said


def test_a_mosaic_key_puts_each_colour_beside_its_name():
    tile = [[Tile(np.zeros((8, 8, 3), np.uint8))]]
    key = [("background", (1.0, 1.0, 1.0)), ("disc", (1.0, 0.0, 0.0)), ("no label", (0.25,) * 3)]
    assert key_said(mosaic(tile, 40, key=key)) == [
        ("background", (255, 255, 255)), ("disc", (255, 0, 0)), ("no label", (64, 64, 64))
    ]  # fmt: skip
    many = [(f"a long class name {i}", (0.0, 0.0, 1.0)) for i in range(12)]
    figure = mosaic(tile, 40, key=many)  # more than a line holds: wrapped, each still beside
    assert [name for name, _ in key_said(figure)] == [name for name, _ in many]
    assert all(colour == (0, 0, 255) for _, colour in key_said(figure))
    assert figure.get_figheight() > mosaic(tile, 40, key=key).get_figheight()


def test_the_pixels_caption_names_the_three_columns_of_a_mask(mask_run, monkeypatch):
    path, _ = mask_run
    drawn = drawn_by("cnnlab.viz.pixels", monkeypatch)
    grid = make_charts(RunView(path), "pixels", images=2)[0]
    assert all(len(row) == 3 for row in drawn[0])
    colours = [tuple(round(v * 255) for v in c) for c in class_colours(list(CLASSES)).tolist()]
    assert key_said(grid.figure)[: len(CLASSES)] == list(zip(CLASSES, colours, strict=True))
    assert columns_said(grid.caption) == [
        "the image",
        "the model's prediction",
        "the true classes it learnt from",
    ]
