"""`data.source: table`: a CSV or Parquet file of image paths and target columns, every
kind of target (a class, a number, a vector, a mask), its checks, its cache, augmentation
that keeps labels true, and whole runs through the command line and the Python API."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cnnlab
from cnnlab.api import load_recipe
from cnnlab.build import build
from cnnlab.calibration import summary
from cnnlab.data import describe, get_source, gsn, gsn_generator, shapes_table, table, table_cells
from cnnlab.data.augment import NO_LABEL, AugmentConfig, augment
from cnnlab.data.lines import quietly
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.runs import load_checkpoint
from cnnlab.viz import RunView, make_charts
from cnnlab.viz.attributions import unit
from cnnlab.viz.new_images import caption
from tests.conftest import run_cli

ROWS, SIZE = 200, 16


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A generated shapes table: 200 rows of 16x16 images with masks, read-only here."""
    folder = tmp_path_factory.mktemp("shapes")
    shapes_table.write(folder, ROWS, SIZE, seed=3)
    return folder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def recipe_dict(folder: Path, tmp_path: Path, **data) -> dict:
    """The shipped table_example on `folder`, shrunk to seconds; `data` edits its data."""
    raw = yaml.safe_load((Path(cnnlab.__file__).parent / "recipes/table_example.yaml").read_text())
    raw["data"].update({"table": str(folder / "labels.csv"), **data})
    raw["model"]["filters"] = 8
    raw["train"].update(epochs=1, batch_size=32, progress=False, threads=1, device="cpu")
    raw["train"].update(report=False, precision="fp32")
    raw["tasks"]["counts"] = {"type": "regression", "target": "counts"}
    raw["output_dir"] = str(tmp_path / "runs")
    return raw


def table_rows(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def no_runs(tmp_path: Path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


# ------------------------------------------------------------------- what it reads


def test_describe_reads_every_kind_of_target_without_pixels(shapes, tmp_path):
    cfg = load_recipe(recipe_dict(shapes, tmp_path)).data
    info = describe(cfg)
    assert info.shape == (3, SIZE, SIZE)
    assert info.targets["kind"] == ["disc", "square", "triangle"]  # sorted distinct values
    assert info.targets["area"] is None and info.targets["counts"] is None
    assert info.targets["mask"] == shapes_table.MASK_CLASSES
    assert info.components == {"counts": ["discs", "squares", "triangles"]}
    assert info.sizes == {"train": 160, "val": 20, "test": 20} and info.validation == "given"
    assert not (tmp_path / "cache").exists()  # nothing decoded


def test_load_gives_each_target_its_type_and_masks_their_images(shapes, tmp_path):
    cfg = load_recipe(recipe_dict(shapes, tmp_path)).data
    ds = table.load(cfg)
    rows = table_rows(shapes)
    train = [r for r in rows if r["split"] == "train"]
    assert len(ds.train) == len(train) and len(ds.val) == 20 and len(ds.test) == 20
    t = ds.train.targets
    assert t["kind"].dtype == torch.long and t["area"].dtype == torch.float32
    assert t["counts"].shape == (160, 3) and t["mask"].shape == (160, SIZE, SIZE)
    first = train[0]
    assert ds.classes["kind"][int(t["kind"][0])] == first["kind"]
    assert t["area"][0].item() == pytest.approx(float(first["area"]))
    assert t["counts"][0].tolist() == [float(first[c]) for c in ("discs", "squares", "triangles")]
    mask = np.asarray(Image.open(shapes / first["mask"]))
    assert torch.equal(t["mask"][0], torch.from_numpy(mask.copy()))
    image = np.asarray(Image.open(shapes / first["image"])).transpose(2, 0, 1)
    assert torch.equal(ds.train.images[0], torch.from_numpy(image.copy()))
    # the mask marks the shapes: a background pixel there is the image's background
    assert (t["mask"][0] > 0).float().mean().item() == pytest.approx(float(first["area"]), abs=1e-3)


def test_a_12_bit_cameras_table_reads_bright_with_data_bits_and_says_what_it_chose(
    tmp_path, capsys
):
    folder = tmp_path / "cam"
    (folder / "images").mkdir(parents=True)
    ramp = np.linspace(0, 4095, 24 * 32).reshape(24, 32).astype(np.uint16)  # 0-4095
    lines = ["image,kind"]
    for i in range(30):
        Image.fromarray(ramp).save(folder / "images" / f"{i:02d}.png")
        lines.append(f"images/{i:02d}.png,{'ab'[i % 2]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    targets = {"kind": {"kind": "category", "column": "kind"}}
    brightest = {}
    for bits in (16, 12):
        cfg = table.TableConfig(table=str(folder / "labels.csv"), targets=targets, bits=bits)
        brightest[bits] = int(table.load(cfg).train.images[:].max())
        said = capsys.readouterr().err
        assert (
            "table: images become grey (1 channel), 24 x 24 px, as the first image, "
            "images/00.png, is; set data.channels and data.image_size to choose"
        ) in said
        dark = (
            "table: the first image, 00.png, is 16-bit but its values reach only 4,095 (12 "
            "bits): read as 16 bits it decodes dark; if its camera writes 12-bit values, set "
            "data.bits: 12"
        )
        assert (dark in said) == (bits == 16), said
    assert brightest[16] <= 16 and brightest[12] >= 250
    sized = table.TableConfig(table=str(folder / "labels.csv"), targets=targets, image_size=16)
    table.load(sized)  # the size given: only the channels came from the first image
    assert (
        "table: images become grey (1 channel), as the first image, images/00.png, is; set "
        "data.channels to choose"
    ) in capsys.readouterr().err


def camera_table(folder: Path, tops: list[int]) -> dict:
    """A table of 16-bit TIFFs ("I;16"), image i a ramp from 0 to tops[i]; its config's
    arguments but bits."""
    (folder / "images").mkdir(parents=True)
    lines = ["image,kind"]
    for i, top in enumerate(tops):
        ramp = np.linspace(0, top, 24 * 24).reshape(24, 24).round().astype(np.uint16)
        Image.fromarray(ramp).save(folder / "images" / f"cell_{i:03d}.tif")
        lines.append(f"images/cell_{i:03d}.tif,{'ab'[i % 2]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    targets = {"kind": {"kind": "category", "column": "kind"}}
    return {"table": str(folder / "labels.csv"), "targets": targets}


CLIPPED = (
    "table: warning: 16 of 20 images (80.0 %; first: images/cell_004.tif) have values above "
    "8,191, the most data.bits: 13 "
    "keeps: they are clipped to white; set data.bits: 16 (their largest value, 61,250, needs "
    "16 bits)"
)


def test_images_that_data_bits_clips_are_counted_and_said_again_from_the_cache(tmp_path, capsys):
    """A user followed the first image's advice (5,227: "set data.bits: 13") on a 16-bit
    camera's set: most images went above 8,191 and were clipped white, unsaid. The first
    image's line says it judged that image alone; loading counts what clipped."""
    tops = [5227, 8000] * 2 + [30000] * 15 + [61250]  # the first dark, two within 13 bits
    args = camera_table(tmp_path / "cells", tops)
    table.load(table.TableConfig(**args))  # bits 16: nothing clips
    said = capsys.readouterr().err
    assert (
        "table: the first image, cell_000.tif, is 16-bit but its values reach only 5,227 (13 "
        "bits): read as 16 bits it decodes dark; if its camera writes 13-bit values, set "
        "data.bits: 13 (judged from this image alone: if others go higher, loading says how "
        "many are clipped)"
    ) in said
    assert "clipped to white" not in said
    for reused in (False, True):  # decoded, then from the cache: the line both times
        ds = table.load(table.TableConfig(**args, bits=13))
        said = capsys.readouterr().err
        assert ("table: cache reused" in said) == reused, said
        assert said.count(CLIPPED) == 1, said
        assert int(ds.train.images[:].max()) == 255
    # a cache written before clipping was counted decodes again, to count it
    manifests = {m: json.loads(m.read_text()) for m in (tmp_path / "cache").rglob("manifest.json")}
    ((manifest, saved),) = [(m, v) for m, v in manifests.items() if v["clipped"]]  # bits 13's
    del saved["clipped"]
    manifest.write_text(json.dumps(saved))
    table.load(table.TableConfig(**args, bits=13))
    said = capsys.readouterr().err
    assert "table: cache reused" not in said and said.count(CLIPPED) == 1, said


def test_no_clipping_line_when_data_bits_holds_every_image(tmp_path, capsys):
    """bits 14 holds 16,383: no image clips, and nothing is said; one image above says
    so in the singular."""
    args = camera_table(tmp_path / "cells", [5227, 16383, 12000, 9000] * 5)
    table.load(table.TableConfig(**args, bits=14))
    assert "clipped to white" not in capsys.readouterr().err
    args = camera_table(tmp_path / "more", [5227, 16384] + [12000, 9000] * 9)
    table.load(table.TableConfig(**args, bits=14))
    assert (
        "table: warning: 1 of 20 images (5.0 %; first: images/cell_001.tif) has values above "
        "16,383, the most data.bits: "
        "14 keeps: it is clipped to white; set data.bits: 15 (its largest value, 16,384, needs "
        "15 bits)"
    ) in capsys.readouterr().err


def test_parquet_and_carved_splits_and_integer_classes(shapes, tmp_path):
    import pandas as pd

    df = pd.read_csv(shapes / "labels.csv").drop(columns="split")
    df["level"] = df["discs"] * 10  # integers: classes sort as numbers, 0 < 10 < 20
    folder = tmp_path / "pq"
    shutil.copytree(shapes, folder)
    df.to_parquet(folder / "labels.parquet")
    raw = recipe_dict(folder, tmp_path, table=str(folder / "labels.parquet"), split=None)
    raw["data"]["targets"]["level"] = {"kind": "category", "column": "level"}
    del raw["data"]["targets"]["mask"]["classes"]  # named by the indices found
    raw["data"]["image_size"] = 10  # masks shrink by nearest neighbour: no class in between
    cfg = load_recipe(raw).data
    info = describe(cfg)
    assert info.targets["level"] == sorted({str(v) for v in df["level"]}, key=int)
    assert info.validation == "carved" and info.sizes == {"train": 160, "test": 40}
    ds = table.load(cfg)
    assert len(ds.train) + len(ds.test) == ROWS and ds.val is None
    assert ds.classes["mask"] == ["0", "1", "2", "3"] and ds.train.images.shape[2:] == (10, 10)
    arrays, _ = table.decode(cfg, table.read_rows(cfg))  # in the table's row order
    for row in range(10):
        found = set(np.unique(np.asarray(Image.open(folder / df["mask"][row]))).tolist())
        assert set(np.unique(arrays["mask"][row]).tolist()) <= found
    # the carve is stratified by the first category: each kind keeps its share
    for part in (ds.train, ds.test):
        share = torch.bincount(part.targets["kind"], minlength=3).float() / len(part)
        overall = torch.tensor(df["kind"].value_counts(normalize=True).sort_index().values)
        assert torch.allclose(share, overall.float(), atol=0.06)


def test_classes_alike_but_for_case_are_said_and_listing_the_classes_joins_them(
    shapes, tmp_path, capsys
):
    """'Triangle' in one row, 'triangle' in the others trained as two classes without a word;
    surrounding spaces were stripped silently: one rule, a line for case, a listed name
    read in any case and without spaces."""

    def edits(rows):
        col = rows[0].index("kind")
        triangles = [row for row in rows[1:] if row[col] == "triangle"]
        triangles[0][col] = "Triangle"
        for row in triangles[1:4]:
            row[col] = " triangle  "  # the same class: surrounding spaces never count
        triangles[4][rows[0].index("image")] = "gone.png"  # left out: neither line counts it
        return rows

    raw = bad_table(tmp_path, shapes, edits)
    cfg = load_recipe(raw).data
    kinds = [row["kind"] for row in table_rows(shapes)]
    n = {kind: kinds.count(kind) for kind in ("disc", "square", "triangle")}
    capsys.readouterr()
    assert table.load(cfg).classes["kind"] == ["Triangle", "disc", "square", "triangle"]
    said = capsys.readouterr().err
    assert (
        f"table: kind has 4 classes (rows): Triangle 1, disc {n['disc']}, square "
        f"{n['square']}, triangle {n['triangle'] - 2}\n"
    ) in said
    assert (
        f"table: classes 'Triangle' (1 row) and 'triangle' ({n['triangle'] - 2} rows) of "
        "column 'kind' differ only in case or spacing: if they are one class, write them "
        "alike, or list the classes in data.targets.kind.classes (a listed name is read in any "
        "case, with spaces, _ and - alike)\n"
    ) in said
    raw["data"]["targets"]["kind"]["classes"] = ["disc", "square", " triangle"]
    rows = table.read_rows(load_recipe(raw).data)
    assert rows.classes["kind"] == ["disc", "square", "triangle"] and not rows.notes
    joined = [n["disc"], n["square"], n["triangle"] - 1]  # the row of gone.png left out
    assert np.bincount(rows.values["kind"]).tolist() == joined
    raw["data"]["targets"]["kind"]["classes"] = ["disc", "square", "Triangle", "triangle"]
    rows = table.read_rows(load_recipe(raw).data)  # listed apart, they stay apart
    assert np.bincount(rows.values["kind"]).tolist()[2:] == [1, n["triangle"] - 2]


def test_classes_alike_but_for_spacing_are_said_and_a_listed_name_joins_them():
    """`leaf spot`, `leaf_spot` and `Leaf-Spot` trained as three classes without a word."""
    from cnnlab.data.table_cells import _finder, alike

    raw = ["leaf spot", "leaf_spot", "Leaf-Spot", "leaf_spot", "rust"]
    (note,) = alike(
        ["Leaf-Spot", "leaf spot", "leaf_spot", "rust"], [1, 1, 2, 1], "disease", "disease"
    )
    assert note.startswith(
        "table: classes 'Leaf-Spot' (1 row) and 'leaf spot' (1 row) and 'leaf_spot' (2 rows) "
        "of column 'disease' differ only in case or spacing"
    )
    find = _finder(["leaf spot", "rust"], listed=True)
    assert [find(v) for v in raw] == [0, 0, 0, 0, 1]
    find = _finder(["leaf spot", "leaf_spot"], listed=True)  # listed apart, they stay apart
    assert find("leaf-spot") is None and find("leaf_spot") == 1


def test_gsn_read_as_a_table_gives_what_the_gsn_source_gives(tmp_path):
    folder = tmp_path / "gsn"
    gsn_generator.write(folder, 120, seed=2)
    raw = {
        "name": "gsn_table",
        "data": {
            "source": "table",
            "table": str(folder / "labels.csv"),
            "image_column": "name",
            "targets": {"counts": {"kind": "vector", "columns": list(gsn.COUNT_NAMES)}},
            "augment": {"hflip": False, "translate": 0},
        },
        "tasks": {"counts": {"type": "regression", "target": "counts"}},
    }
    cfg = load_recipe(raw).data
    arrays, kept = table.decode(cfg, table.read_rows(cfg))
    ds = gsn.load(gsn.GSNConfig(root=str(folder), val_rows=20))
    assert kept == list(range(120)) and describe(cfg).shape == (1, 28, 28)
    assert np.array_equal(arrays["images"], torch.cat([ds.train.images, ds.val.images]).numpy())
    counts = table.read_rows(cfg).values["counts"]
    assert np.array_equal(counts, torch.cat([ds.train.targets["counts"], ds.val.targets["counts"]]))


# ------------------------------------------------------------------- bad tables


def bad_table(tmp_path: Path, shapes: Path, edit) -> dict:
    """A copy of the shapes table changed by `edit(rows) -> rows` (lists, header first)."""
    folder = tmp_path / "bad"
    shutil.copytree(shapes, folder)
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(edit(rows))
    return recipe_dict(folder, tmp_path)


def _column(column: str, change):
    """An edit applying `change` to every value of one column."""

    def edit(rows):
        col = rows[0].index(column)
        return [rows[0]] + [[*r[:col], change(r[col]), *r[col + 1 :]] for r in rows[1:]]

    return edit


def _set(row: int, column: str, value: str):
    def edit(rows):
        rows[row][rows[0].index(column)] = value
        return rows

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: [[c for c in row if c != row[r[0].index("area")]] for row in r],
            "has no column 'area'; its columns: image, mask, kind, discs",
        ),
        (  # the field that names it, and the column meant: another case, or a typo
            lambda r: [["Area" if c == "area" else c for c in r[0]], *r[1:]],
            "data.targets.area.column: ",
        ),
        (
            lambda r: [["Area" if c == "area" else c for c in r[0]], *r[1:]],
            "has no column 'area' (did you mean 'Area'?); its columns: image, mask, kind, Area",
        ),
        (
            lambda r: [["imagee" if c == "image" else c for c in r[0]], *r[1:]],
            "data.image_column: ",
        ),
        (
            lambda r: [["imagee" if c == "image" else c for c in r[0]], *r[1:]],
            "has no column 'image' (did you mean 'imagee'?)",
        ),
        (  # not 'age' or the mask's column: the column whose cells are image paths
            lambda r: [["path" if c == "image" else c for c in r[0]], *r[1:]],
            "has no column 'image' (did you mean 'path'?)",
        ),
        (lambda r: r[:1], "has no rows under its header"),
        (_set(5, "area", "n.d."), "column 'area': not a number on line 6 ('n.d.')"),
        (_set(7, "squares", ""), "column 'squares': no value on line 8; fill in each empty cell"),
        (_set(6, "area", "0,25"), "on line 7 ('0,25'); write numbers with a decimal point"),
        (
            _set(3, "image", "images/00001.png"),
            "column 'image': a path listed twice on line 4 (images/00001.png, first on line 3)",
        ),
        (
            _set(2, "image", "../../etc/passwd"),
            "column 'image': a path leading outside the folder on line 3 (../../etc/passwd)",
        ),
        (_set(4, "split", "holdout"), "column 'split': not a split value on line 5 ('holdout')"),
    ],
    ids=[
        "column",
        "field",
        "case",
        "image-field",
        "typo",
        "paths",
        "empty",
        "number",
        "blank",
        "comma",
        "duplicate",
        "outside",
        "split",
    ],
)
def test_a_bad_table_stops_in_one_line_before_a_run_folder(shapes, tmp_path, edit, message):
    raw = bad_table(tmp_path, shapes, edit)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert no_runs(tmp_path)


@pytest.mark.parametrize("sep", [";", "\t"], ids=["semicolons", "tabs"])
def test_a_spreadsheets_semicolons_or_tabs_read_as_commas(shapes, tmp_path, sep):
    """What a spreadsheet saves where the decimal mark is a comma (`;`, with a byte-order
    mark and CRLF lines), or a .tsv: the same table as the comma-separated original."""
    text = (shapes / "labels.csv").read_text().replace(",", sep).replace("\n", "\r\n")
    other = tmp_path / "labels.txt"
    other.write_text(text, encoding="utf-8-sig", newline="")
    assert table.separator(other) == sep
    assert table._read(other).equals(table._read(shapes / "labels.csv"))  # columns too


def semicolon_table(tmp_path: Path, shapes: Path, edit) -> dict:
    """A copy of the shapes table, its numbers as floats changed by `edit(df)`, saved as a
    spreadsheet where the decimal mark is a comma saves it: pandas'
    `to_csv(sep=';', decimal=',')`."""
    import pandas as pd

    folder = tmp_path / "semicolons"
    shutil.copytree(shapes, folder)
    df = pd.read_csv(shapes / "labels.csv")
    edit(df)
    df.to_csv(folder / "labels.csv", sep=";", decimal=",", index=False)
    return recipe_dict(folder, tmp_path)


def test_a_semicolon_tables_decimal_commas_are_read_as_points(shapes, tmp_path):
    """21,241 in a semicolon-separated table is 21.241 (it was "not a number", every row)."""

    def edit(df):
        df["area"] = df["area"] * 259.03  # 21,24046: decimals that could pass for thousands
        df.loc[0, "area"] = 21.241

    raw = semicolon_table(tmp_path, shapes, edit)
    text = (tmp_path / "semicolons/labels.csv").read_text()
    assert ";21,241;" in text and ";21,24046;" in text  # what pandas writes
    rows = table.read_rows(load_recipe(raw).data)
    areas = [float(r["area"]) * 259.03 for r in table_rows(shapes)]
    areas[0] = 21.241
    assert rows.values["area"].tolist() == pytest.approx(areas, rel=1e-6)
    counts = [[float(r[c]) for c in ("discs", "squares", "triangles")] for r in table_rows(shapes)]
    assert rows.values["counts"].tolist() == counts  # whole numbers, no mark: as they were


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["850", "1,234", "12,500"], "thousands or three decimals? on lines 3 ('1,234'), 4 ("),
        (["850", "1.234", "12.500"], "thousands or three decimals? on lines 3 ('1.234'), 4 ("),
        (["1,5", "2,25", "1.25"], "a decimal point among decimal commas on lines 4, 7, 10, "),
        (["1.234,5", "2,5"], "a thousands separator on lines 2, 4, 6, 8, 10, and 95 more"),
    ],
    ids=["comma-groups", "point-groups", "mixed", "two-marks"],
)
def test_a_number_a_thousands_separator_may_have_written_is_refused(
    shapes, tmp_path, values, message
):
    """In a semicolon-separated table a mark may be decimal or separate thousands: a column
    where it cannot be told which is refused in one line, never read one way silently."""

    def edit(df):
        df["area"] = [values[i % len(values)] for i in range(len(df))]

    raw = semicolon_table(tmp_path, shapes, edit)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert f"column 'area': {message}" in str(err.value) and "\n" not in str(err.value)
    fix = str(err.value).split("; ")[-1]  # one fix, once
    assert fix.startswith("write numbers without thousands") or fix.endswith("same decimal mark")
    assert no_runs(tmp_path)


def test_windows_paths_and_split_names_in_capitals_read_and_a_wrong_folder_is_named(
    shapes, tmp_path
):
    """A table written on Windows (images\\00001.png) reads as with slashes, TRAIN as train;
    paths read from the wrong folder (no file there) say where they are read from."""

    raw = bad_table(tmp_path, shapes, _column("image", lambda v: v.replace("/", "\\")))
    rows = table.read_rows(load_recipe(raw).data)
    assert rows.images[0] == table_rows(shapes)[0]["image"] and "\\" not in rows.images[1]

    raw = bad_table(tmp_path / "case", shapes, _column("split", str.upper))  # TRAIN, TEST
    assert (table.read_rows(load_recipe(raw).data).split == rows.split).all()
    raw["data"]["root"] = str(tmp_path / "elsewhere")  # data.table stays absolute
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value).endswith(
        "no file its rows name exists (first: line 2, column 'image': images/00000.png, column "
        "'mask': masks/00000.png); correct the path of each file that does not exist or remove "
        f"its row (paths are read from {tmp_path / 'elsewhere'}: data.root when set, else the "
        "table's folder)"
    )
    assert no_runs(tmp_path)


def test_blank_split_cells_name_data_split_blank_which_says_where_they_go(shapes, tmp_path):
    """A split column filled for the val and test rows only was "not a split value on lines
    2, 3, ... (all '')", its fix to add the value to a list: blank cells are said as blank,
    with the YAML that gives them a meaning, and data.split.blank gives it."""
    original = table.read_rows(load_recipe(recipe_dict(shapes, tmp_path)).data).split
    blanked = _column("split", lambda v: {"train": "", "val": "NA"}.get(v, v))
    raw = bad_table(tmp_path, shapes, blanked)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    message = str(err.value)
    assert "column 'split': no split value on lines 2, 3, 4, 5, 6, and 155 more; no split " \
        "value (read as missing) on lines " in message and "(all 'NA'); a blank split cell" \
        in message  # fmt: skip
    assert message.endswith(
        "a blank split cell says no split: fill in each, or say where blank rows go with "
        "data.split.blank: train (validation is carved from them as from train's rows, unless "
        "rows are val), val or test: `split: {column: split, blank: train}`"
    )
    assert "not a split value" not in message and no_runs(tmp_path)

    raw["data"]["split"]["blank"] = "train"
    rows = table.read_rows(load_recipe(raw).data)
    assert (rows.split == np.where(original == 2, 2, 0)).all()  # val's rows train too
    assert rows.notes == ["table: 180 rows with a blank 'split' cell go to train (data.split."
                          "blank: train)"]  # fmt: skip
    raw["data"]["split"]["train"] = ["train", ""]  # the old way, and blank: both say it
    with pytest.raises(CnnlabError, match='blank: train and "" in a list both say what'):
        load_recipe(raw)


def test_a_class_too_small_to_carve_and_a_link_outside_are_refused(shapes, tmp_path):
    def one_disc(rows):
        discs = [row for row in rows[1:] if row[2] == "disc"]
        return rows[:1] + [row for row in rows[1:] if row[2] != "disc"] + discs[:1]

    raw = bad_table(tmp_path, shapes, one_disc)
    raw["data"]["split"] = None
    with pytest.raises(CnnlabError, match="class 'disc' of kind has 1 training row"):
        cnnlab.train(raw)
    folder = tmp_path / "bad"
    first = table_rows(folder)[0]["image"]
    (folder / first).unlink()
    (folder / first).symlink_to(shapes / first)
    raw = recipe_dict(folder, tmp_path)
    with pytest.raises(
        CnnlabError,
        match=f"column 'image': a path leading outside the folder on line 2 \\({first}\\)",
    ):
        cnnlab.train(raw)
    assert no_runs(tmp_path)


def linked_tree(tmp_path: Path) -> Path:
    """base/a/x.png, out/y.png, and links: base/a/in.png to x.png, base/a/out.png to y.png,
    base/a/dangling.png to nothing, base/away to out/; returns base."""
    base, out = tmp_path / "base", tmp_path / "out"
    (base / "a").mkdir(parents=True)
    out.mkdir()
    (base / "a/x.png").write_bytes(b"x")
    (out / "y.png").write_bytes(b"y")
    (base / "a/dangling.png").symlink_to(base / "a/gone.png")
    (base / "a/in.png").symlink_to(base / "a/x.png")
    (base / "a/out.png").symlink_to(out / "y.png")
    (base / "away").symlink_to(out)
    return base


def test_a_path_is_inside_the_folder_only_when_its_links_are(tmp_path):
    """Each folder is resolved once, the file only when it is a link: the answers are those
    of resolving every path."""
    from cnnlab.data.files import stays_inside

    base = linked_tree(tmp_path)
    folders: dict[str, tuple[Path, bool]] = {}
    cases = {"a/x.png": True, "a/in.png": True, "a/missing.png": True, "a/../a/x.png": True,
             "a/out.png": False, "away/y.png": False, "../out/y.png": False,
             "a/../../out/y.png": False, "..": False, "a/..": True}  # fmt: skip
    for rel, inside in cases.items():
        assert stays_inside(base, rel, folders) is inside, rel
        assert (base / rel).resolve().is_relative_to(base) is inside, rel


def test_unreadable_images_are_skipped_with_a_warning_or_stop_the_run(shapes, tmp_path, capsys):
    """A file that is there but no image is found while decoding, one that is not there by
    the check: each named with its own reason, and either stops the run."""
    raw = bad_table(tmp_path, shapes, lambda rows: rows)
    (tmp_path / "bad" / "images" / "00004.png").write_bytes(b"not a png")
    mask = tmp_path / "bad" / "masks" / "00011.png"
    kept = mask.read_bytes()
    mask.unlink()
    ds = table.load(load_recipe(raw).data)
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "warning" in line] == [
        "table: warning: 1 row skipped, naming a file that does not exist: line 13, column "
        f"'mask': masks/00011.png; correct the path of each file that does not exist or remove "
        f"its row (paths are read from {tmp_path / 'bad'}: data.root when set, else the "
        "table's folder)",
        "table: warning: 1 file skipped (empty, corrupt, not an image, or outside the folder): "
        "images/00004.png / masks/00004.png",
    ]
    assert len(ds.train) + len(ds.val) + len(ds.test) == ROWS - 2
    assert any(line.startswith("table: kind has 3 classes") for line in err)
    with quietly():  # a trained run's data read again: its warnings, not how it was read
        table.load(load_recipe(raw).data)
    again = capsys.readouterr().err.splitlines()
    assert again == [line for line in err if "warning" in line]
    # a run says them again once it has finished (its folder apart: no_runs below)
    cnnlab.train(
        {**raw, "output_dir": str(tmp_path / "said"), "train": {**raw["train"], "progress": True}}
    )
    said = capsys.readouterr().out.split("loading the data warned:\n")
    assert len(said) == 2 and said[1].strip().splitlines() == again
    raw["data"]["on_bad_image"] = "stop"
    with pytest.raises(
        CnnlabError, match=r"column 'mask': no such file on line 13 \(masks/00011.png\)"
    ):
        cnnlab.train(raw)
    mask.write_bytes(kept)
    capsys.readouterr()
    with pytest.raises(CnnlabError) as stop:
        cnnlab.train(raw)
    assert str(stop.value) == (
        "data.table: 1 row cannot be read (an empty or corrupt file, or not an image; first: "
        "images/00004.png / masks/00004.png); fix or remove it, or set data.on_bad_image: skip"
    )
    assert "skipped" not in capsys.readouterr().err  # it stops: no warning that it skipped
    assert no_runs(tmp_path)


@pytest.mark.parametrize("on_bad_image", ["skip", "stop"])
def test_files_that_do_not_exist_are_found_by_the_check_before_any_pixel(
    shapes, tmp_path, capsys, on_bad_image
):
    """The check stats every path: a row naming an image or mask that is not there is named
    with its line before decoding, and left out (skip, one warning per load) or stops the
    run in one line (stop), as a value that is not a number does."""
    raw = bad_table(tmp_path, shapes, _set(40, "image", "images/typo.png"))
    (tmp_path / "bad" / "masks" / "00011.png").unlink()
    (tmp_path / "bad" / "images" / "00003.png").unlink()  # and its mask: one row, two files
    (tmp_path / "bad" / "masks" / "00003.png").unlink()
    raw["data"]["on_bad_image"] = on_bad_image
    cfg = load_recipe(raw).data
    if on_bad_image == "stop":
        with pytest.raises(CnnlabError) as err:
            cnnlab.train(raw)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"data.table: {tmp_path / 'bad'}")
        assert message.endswith(
            "4 bad values: column 'image': no such file on lines 5 (images/00003.png), 41 "
            "(images/typo.png); column 'mask': no such file on lines 5 (masks/00003.png), 13 "
            "(masks/00011.png); correct the path of each file that does not exist or remove its "
            f"row (paths are read from {tmp_path / 'bad'}: data.root when set, else the table's "
            "folder), or set data.on_bad_image: skip to leave such rows out"
        )
        assert no_runs(tmp_path) and not (tmp_path / "cache").exists()  # nothing decoded
        return
    info = describe(cfg)
    assert sum(info.sizes.values()) == ROWS - 3
    assert not (tmp_path / "cache").exists() and "warning" not in capsys.readouterr().err
    ds = table.load(cfg)
    err = capsys.readouterr().err
    assert (
        "table: warning: 3 rows skipped, naming a file that does not exist: line 5, column "
        "'image': images/00003.png, column 'mask': masks/00003.png; line 13, column 'mask': "
        "masks/00011.png; line 41, column 'image': images/typo.png; correct the path"
    ) in err
    assert "files skipped" not in err and "decoded 197 rows" in err  # none failed decoding
    assert len(ds.train) + len(ds.val) + len(ds.test) == ROWS - 3
    areas = [float(r["area"]) for i, r in enumerate(table_rows(shapes)) if r["split"] == "train"
             and i not in (3, 11, 39)]  # fmt: skip
    assert ds.train.targets["area"].tolist() == pytest.approx(areas)  # targets kept aligned


def test_a_files_state_is_one_lstat_links_resolved_only(tmp_path):
    """There, missing (no file, no folder, a dangling link) or outside (a link or `..`
    leading out, an absolute path), each as resolving the whole path would say."""
    base = linked_tree(tmp_path)
    cases = {"a/x.png": "there", "a/in.png": "there", "a/missing.png": "missing",
             "nofolder/x.png": "missing", "a/x.png/y.png": "missing",
             "a/dangling.png": "missing", "a/out.png": "outside", "away/y.png": "outside",
             "away/none.png": "outside", "../out/y.png": "outside", "../none.png": "outside",
             str(base / "a/x.png"): "outside"}  # fmt: skip
    folders: dict[str, tuple[Path, bool]] = {}
    for rel, state in cases.items():
        assert table_cells._file_state(base, rel, folders) == state, rel


def test_problems_are_grouped_by_column_and_kind_and_counted_in_good_english(shapes, tmp_path):
    """Problems are found column by column and said by column and kind, a column's groups
    together, in the order of their first lines; one is "1 bad value"."""

    def edits(rows):
        for row, column, value in [(150, "squares", "q"), (120, "area", "x"), (90, "split", "z"),
                                   (60, "discs", "y"), (30, "image", ""), (7, "area", "w"),
                                   (7, "image", "")]:  # fmt: skip
            rows[row][rows[0].index(column)] = value
        return rows

    raw = bad_table(tmp_path, shapes, edits)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    groups = str(err.value).split(": 7 bad values: ")[1].split("; ")[:5]
    assert groups == [
        "column 'image': no path on lines 8, 31",
        "column 'area': not a number on lines 8 ('w'), 121 ('x')",
        "column 'discs': not a number on line 61 ('y')",
        "column 'split': not a split value on line 91 ('z')",
        "column 'squares': not a number on line 151 ('q')",
    ]
    assert "listed twice" not in str(err.value)  # two rows without a path are not one path
    raw = bad_table(tmp_path / "one", shapes, _set(5, "area", "n.d."))
    with pytest.raises(CnnlabError, match=r"labels.csv: 1 bad value: column 'area'"):
        cnnlab.train(raw)


def test_many_bad_values_are_every_group_named_with_each_fix_once(shapes, tmp_path):
    """13 bad cells of two kinds were 5 listed one by one, "and 8 more", the decimal-comma
    hint repeated on each: now every group is named, its lines cut with a count, and each
    kind's fix said once."""

    def edits(rows):
        for row in (11, 39, 76, 80, 90, 100, 110, 120):
            rows[row][rows[0].index("kind")] = ""
        for row in (12, 19, 30, 50, 60):
            rows[row][rows[0].index("area")] = f"0,{row}"
        return rows

    raw = bad_table(tmp_path, shapes, edits)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    message = str(err.value)
    assert "\n" not in message and ": 13 bad values: " in message
    assert (
        "column 'kind': no class on lines 12, 40, 77, 81, 91, and 3 more; column 'area': not a "
        "number on lines 13 ('0,12'), 20 ('0,19'), 31 ('0,30'), 51 ('0,50'), 61 ('0,60'); fill "
        "in each empty cell or remove its row, or set data.targets.kind.blank: drop (such rows "
        "left out) or unlabelled (a row trains its other targets); write numbers with a "
        "decimal point"
    ) in message
    assert message.count("decimal point") == 1 and message.count("empty cell") == 1
    assert no_runs(tmp_path)


def test_an_absolute_path_is_refused_saying_where_paths_are_read_from(shapes, tmp_path):
    """No path of a table may lead out of its folder (a rule of cnnlab's, for any list of
    files); the line says what to write instead, once for every such path."""
    absolute = str(shapes / "images/00001.png")
    raw = bad_table(tmp_path, shapes, _set(2, "image", absolute))
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value).endswith(
        f"1 bad value: column 'image': a path leading outside the folder on line 3 ({absolute}); "
        f"write paths relative to {tmp_path / 'bad'} (data.root when set, else the table's "
        "folder): an absolute path, or a path or link leading out of it, is refused, as a "
        "table's files must stay inside its folder"
    )
    assert no_runs(tmp_path)


@pytest.mark.parametrize("kind", ["number", "vector"])
def test_a_column_of_words_read_as_numbers_names_the_kind_to_set(shapes, tmp_path, kind):
    """`kind: number` on a column of classes gave "200 bad values" and no word about the
    recipe: the line says once that the column holds words, and what to set."""
    raw = bad_table(tmp_path, shapes, lambda rows: rows)
    targets = raw["data"]["targets"]
    if kind == "number":
        targets["area"]["column"] = "kind"
        fix = "if they are classes, set data.targets.area.kind: category"
    else:
        targets["counts"]["columns"] = ["discs", "kind"]
        fix = "take it out of data.targets.counts.columns (a vector's components are numbers"
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    message = str(err.value)
    assert "column 'kind' holds words ('triangle', 'square', 'disc'), not numbers: " in message
    assert fix in message
    assert "200 bad values: column 'kind': not a number on lines 2 ('triangle')" in message
    assert "write each number plainly" not in message and "\n" not in message
    assert no_runs(tmp_path)


def test_counted_says_one_thing_and_many_things():
    from cnnlab.errors import counted, listed

    assert [counted(n, "file") for n in (0, 1, 2, 60000)] == [
        "0 files", "1 file", "2 files", "60,000 files"]  # fmt: skip
    assert counted(1, "group of rows", "groups of rows") == "1 group of rows"
    assert counted(3, "group of rows", "groups of rows") == "3 groups of rows"
    assert listed(["a", "b"]) == "a; b"
    assert listed([str(i) for i in range(8)], ", ", most=3) == "0, 1, 2, and 5 more"


def test_the_cache_is_reused_and_a_changed_mask_is_noticed(shapes, tmp_path, capsys):
    raw = bad_table(tmp_path, shapes, lambda rows: rows)
    cfg = load_recipe(raw).data
    table.load(cfg)
    assert "decoded 200 rows" in capsys.readouterr().err
    table.load(cfg)
    assert "cache reused" in capsys.readouterr().err
    mask = tmp_path / "bad" / "masks" / "00000.png"
    values = np.asarray(Image.open(mask)).copy()
    values[:] = 2
    Image.fromarray(values, "L").save(mask)  # a grey PNG of indices is a mask too
    ds = table.load(cfg)
    assert "decoded 200 rows" in capsys.readouterr().err
    assert (ds.train.targets["mask"][0] == 2).all()


# ------------------------------------------------------------- masks that cannot be labels

FIX_MODE = (
    "a mask holds one class index per pixel: save masks as 8-bit grey or palette PNGs of "
    "class indices (0, 1, 2, ...; 255: no label), not colours"
)
FIX_SIZE = (
    "a mask is drawn on its own image, pixel for pixel: save each mask at its image's size "
    "(or correct the row's paths)"
)
SKIP = ", or set data.on_bad_image: skip to leave such rows out"


def test_colour_masks_are_named_with_the_fix_not_as_unreadable_files(shapes, tmp_path, capsys):
    """Masks saved as RGB were "200 files skipped (empty, corrupt, not an image)", then "no
    image could be read": the reason decode_mask knew was lost. Now the first is named with
    the fix; one among good ones is left out with that warning (from a reused cache too),
    or stops the run under on_bad_image: stop."""
    raw = bad_table(tmp_path, shapes, lambda rows: rows)
    masks = sorted((tmp_path / "bad" / "masks").iterdir())
    kept = {m: m.read_bytes() for m in masks}
    for mask in masks:
        Image.open(mask).convert("RGB").save(mask)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value) == (
        f"data.table: the mask masks/00000.png is a colour (RGB) image (one of {ROWS} masks "
        f"refused); {FIX_MODE}"
    )
    assert no_runs(tmp_path) and "skipped" not in capsys.readouterr().err
    for mask, data in kept.items():
        if mask.name != "00005.png":
            mask.write_bytes(data)
    warning = (
        "table: warning: 1 row skipped, its mask refused: the mask masks/00005.png is a colour "
        f"(RGB) image; {FIX_MODE}"
    )
    cfg = load_recipe(raw).data
    for attempt in ("decoded", "cache reused"):
        ds = table.load(cfg)
        err = capsys.readouterr().err
        assert attempt in err and warning in err.splitlines() and "files skipped" not in err
        assert len(ds.train) + len(ds.val) + len(ds.test) == ROWS - 1
    raw["data"]["on_bad_image"] = "stop"
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value) == (
        f"data.table: the mask masks/00005.png is a colour (RGB) image; {FIX_MODE}{SKIP}"
    )
    assert no_runs(tmp_path)


def test_a_mask_of_another_size_than_its_image_is_skipped_or_stops(shapes, tmp_path, capsys):
    """A mask of another size was stretched to its image, its labels no longer on their
    pixels; now the row is left out with a warning naming both sizes, or stops the run."""
    raw = bad_table(tmp_path, shapes, lambda rows: rows)
    mask = tmp_path / "bad" / "masks" / "00007.png"
    Image.open(mask).resize((2 * SIZE, 2 * SIZE), Image.Resampling.NEAREST).save(mask)
    ds = table.load(load_recipe(raw).data)
    assert (
        "table: warning: 1 row skipped, its mask refused: the mask masks/00007.png is 32x32 "
        f"pixels, its image images/00007.png 16x16; {FIX_SIZE}"
    ) in capsys.readouterr().err.splitlines()
    assert len(ds.train) + len(ds.val) + len(ds.test) == ROWS - 1
    raw["data"]["on_bad_image"] = "stop"
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value) == (
        "data.table: the mask masks/00007.png is 32x32 pixels, its image images/00007.png "
        f"16x16; {FIX_SIZE}{SKIP}"
    )
    assert no_runs(tmp_path)


def test_a_sideways_photos_mask_is_measured_against_the_photo_upright(shapes, tmp_path):
    """A phone's portrait photo is stored on its side with an EXIF orientation, and read
    upright: its mask, drawn on it as shown, has the upright size; one of the stored size
    would lie across it, and is refused."""
    raw = bad_table(tmp_path, shapes, _set(4, "image", "images/portrait.jpg"))
    raw["data"]["on_bad_image"] = "stop"
    upright = np.zeros((24, 16, 3), dtype=np.uint8)  # 16 wide, 24 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: "rotate 90 degrees clockwise to view"
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "bad/images/portrait.jpg", exif=exif)
    mask = tmp_path / "bad/masks/00003.png"
    Image.fromarray(np.ones((24, 16), dtype=np.uint8), "L").save(mask)  # as shown
    cfg = load_recipe(raw).data
    arrays, kept = table.decode(cfg, table.read_rows(cfg))
    assert len(kept) == ROWS and (arrays["mask"][3] == 1).all()
    Image.fromarray(np.ones((16, 24), dtype=np.uint8), "L").save(mask)  # as stored
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value).startswith(
        "data.table: the mask masks/00003.png is 24x16 pixels, its image images/portrait.jpg "
        "16x24; a mask is drawn on its own image"
    )


def test_a_mask_index_beyond_the_listed_classes_names_the_first_mask(shapes, tmp_path):
    """The line said "a mask holds class index 7", leaving a search through every mask: the
    first file that holds one is named (row 4, unreadable and left out before it, shifts no
    name)."""
    raw = bad_table(tmp_path, shapes, lambda rows: rows)
    (tmp_path / "bad/images/00004.png").write_bytes(b"not a png")
    for name in ("00009.png", "00021.png"):
        Image.fromarray(np.full((SIZE, SIZE), 7, np.uint8), "L").save(tmp_path / "bad/masks" / name)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value) == (
        "data.targets.mask: the mask masks/00009.png holds class index 7, but "
        f"{len(shapes_table.MASK_CLASSES)} classes are listed (2 masks hold such indices); list "
        "them all in data.targets.mask.classes, or correct the masks (255 means no label)"
    )
    assert no_runs(tmp_path)


def test_a_listed_class_that_no_mask_holds_is_a_warning(shapes, tmp_path, capsys):
    """Binary masks saved as 0 and 255 (ImageJ's way): every object pixel read as no label,
    and training learnt the background alone without a word."""
    raw = bad_table(tmp_path, shapes, lambda rows: rows)
    for path in (tmp_path / "bad/masks").glob("*.png"):
        mask = np.asarray(Image.open(path))
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), "L").save(path)
    table.load(load_recipe(raw).data)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "no mask holds" in x]
    unseen = ", ".join(f"{c!r} ({i})" for i, c in enumerate(shapes_table.MASK_CLASSES) if i)
    assert line.startswith(
        f"table: warning: data.targets.mask: no mask holds class {unseen}, so no pixel of it is "
        "learnt (the highest index in any mask is 0); 255 (no label) covers "
    )
    assert line.endswith("save it as 0 and 1 (mask // 255)")
    raw["data"]["targets"]["mask"]["classes"] = shapes_table.MASK_CLASSES[:1]  # as they are
    table.load(load_recipe(raw).data)
    assert "no mask holds" not in capsys.readouterr().err


# ------------------------------------------------------------- labels stay true


def test_masks_move_with_their_images_and_shifts_uncover_no_label():
    x = torch.rand(8, 3, 6, 6)
    mask = (x[:, 0] * 3).to(torch.uint8)  # the mask is a function of the image
    cfg = AugmentConfig(hflip=True, vflip=True, rot90=True, translate=2)
    out, targets = augment(x, {"mask": mask}, cfg, torch.Generator().manual_seed(0))
    moved = targets["mask"]
    covered = moved != NO_LABEL
    assert (~covered).any() and covered.any()
    assert torch.equal((out[:, 0] * 3).to(torch.uint8)[covered], moved[covered])
    assert (out[:, :, :, :][~covered[:, None].expand_as(out)] == 0).all()  # shifted-in: black


def test_declared_vector_moves_match_gsn_and_undeclared_ones_are_refused(shapes, tmp_path):
    moves = {
        "hflip": {"swap": [["right", "left"]]},
        "vflip": {"swap": [["up", "down"]]},
        "rot90": {"cycle": ["up", "left", "down", "right"]},
    }
    spec = {"kind": "vector", "columns": list(gsn.COUNT_NAMES), **moves}
    raw = recipe_dict(shapes, tmp_path)
    raw["data"]["targets"] = {"counts": spec}
    raw["tasks"] = {"counts": {"type": "regression", "target": "counts"}}
    raw["train"]["monitor"] = "val.counts.rmse"
    cfg = load_recipe(raw).data
    counts = gsn.class_targets()["counts"]
    for name, drawn in (
        ("hflip", torch.ones(135, dtype=torch.bool)),
        ("rot90", torch.arange(135) % 4),
    ):
        ours = cfg.maps()[name]({"counts": counts}, drawn)["counts"]
        theirs = gsn.GSNConfig.label_maps[name]({"counts": counts}, drawn)["counts"]
        assert torch.equal(ours, theirs)
    del raw["data"]["targets"]["counts"]["rot90"]
    with pytest.raises(CnnlabError) as err:
        load_recipe(raw)
    assert "data.augment.rot90: table does not say how a quarter turn changes its targets" in str(
        err.value
    ) and "data.targets.counts.rot90: same" in str(err.value)


# ------------------------------------------------------------------- whole runs


def test_a_table_trains_evaluates_resumes_predicts_and_reports(shapes, tmp_path):
    raw = recipe_dict(shapes, tmp_path)
    raw["train"].update(epochs=2, report=True, calibrate=True)
    recipe_file = tmp_path / "table.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = run_cli("train", str(recipe_file), env=env)
    assert out.returncode == 0, out.stderr
    (path,) = (tmp_path / "runs").iterdir()
    run = cnnlab.load_run(path)
    assert set(run.test_metrics) >= {"test.kind.accuracy", "test.area.rmse", "test.mask.miou"}
    assert run.test_metrics["test.counts.rmse"] < 2.0
    evaluated = run_cli("eval", str(path), env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    for line in ("table: kind has 3 classes", "table: held in memory"):  # said once, training
        assert line in out.stderr and line not in evaluated.stderr
    miou = run.test_metrics["test.mask.miou"]
    assert f"| test.mask.miou | {miou:.4f} |" in evaluated.stdout
    html = (path / "report.html").read_text()
    assert "pixels_mask" in html and "confusion" in html
    with open(path / "splits.csv", newline="") as f:  # which file went where, as the table says
        went = {(r["split"], r["file"]) for r in csv.DictReader(f)}
    assert went == {(r["split"], r["image"]) for r in table_rows(shapes)}
    # both classifications calibrated: the image-level one and the per-pixel one; the
    # regressions get intervals, a vector's per component
    fitted = json.loads((path / "calibration.json").read_text())["tasks"]
    assert set(fitted) == {"kind", "mask", "area", "counts"}
    assert len(fitted["counts"]["halfwidth"]) == 3 and len(fitted["area"]["halfwidth"]) == 1
    widths = zip(("discs", "squares", "triangles"), fitted["counts"]["halfwidth"], strict=True)
    named = ", ".join(f"{c} {w:.4g}" for c, w in widths)  # each component by name
    assert summary({"counts": fitted["counts"]})[0].startswith(f"counts: ± {named} holds 90%")
    assert fitted["mask"]["test"]["after"]["ece"] == pytest.approx(
        run.test_metrics["test.mask.ece"], abs=2e-3
    )
    assert "reliability_mask" in html and "reliability_kind" in html
    # predict names the table's classes and gives a mask per image
    rows = [r for r in table_rows(shapes) if r["split"] == "test"][:4]
    preds = run.predict([str(shapes / r["image"]) for r in rows])
    assert set(preds["kind"].labels) <= {"disc", "square", "triangle"}
    assert preds["mask"].index.shape == (4, SIZE, SIZE)
    assert preds["mask"].classes == shapes_table.MASK_CLASSES
    # the maps explain the output of a vector asked for, named above each image
    view = RunView(path)
    (counts,) = [c for c in make_charts(view, "attributions", images=2, component="squares")
                 if c.key == "attributions_counts"]  # fmt: skip
    assert "the output squares of counts" in counts.caption
    shown = view.test_predictions.pred["counts"][counts.extra["index"], 1]  # squares: 1
    said = [t.get_text() for t in counts.figure.texts if t.get_text().startswith("squares ")]
    assert said == [f"squares {float(v):.3g}" for v in shown]  # the component and its value
    x = view.batch("test", torch.tensor(counts.extra["index"])).requires_grad_(True)
    view.model(x)["counts"][:, 1].sum().backward()
    assert torch.allclose(counts.extra["maps"]["gradient"], unit(x.grad.abs().sum(1)), atol=1e-5)
    with pytest.raises(CnnlabError, match="outputs are discs, squares, triangles$"):
        make_charts(view, "attributions", component="circles")
    counts = preds["counts"]  # `cnnlab predict` names each, with its calibrated range
    said = ", ".join(
        f"{name} {v:.3g} ({lo:.3g} to {hi:.3g})"
        for name, v, lo, hi in zip(counts.components, counts.values[0], counts.low[0],
                                   counts.high[0], strict=True)
    )  # fmt: skip
    assert f"counts: {said} (90% ranges)" in caption(preds, 0).splitlines()
    width = np.array(fitted["counts"]["halfwidth"])
    assert np.allclose(counts.high - counts.values, width, atol=1e-6)  # no bounds: ± the width


def test_an_interrupted_table_run_resumes_exactly(shapes, tmp_path):
    # monitored by one component of a vector: the best epoch is its lowest RMSE
    monitor = "val.counts.rmse_squares"
    recipe = load_recipe(
        recipe_dict(shapes, tmp_path), {"train.epochs": 2, "train.monitor": monitor}
    )
    reference = train(recipe)
    rows = [r for r in reference.read_metrics() if monitor in r]
    assert len(rows) == 2
    best = min(rows, key=lambda r: (r[monitor], r["val.loss"]))
    assert load_checkpoint(reference.best_path)["loop"]["epoch"] == best["epoch"]

    def stop_after_first(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(CnnlabError, match="interrupted"):
        train(recipe, on_epoch=stop_after_first)
    (stopped,) = set((tmp_path / "runs").iterdir()) - {reference.path}
    resumed = train(recipe, resume=stopped)
    timing = {"seconds", "images_per_s"}
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in run.read_metrics()]
            for run in (reference, resumed)]  # fmt: skip
    assert len(rows[0]) == 2 and rows[0] == rows[1]
    assert reference.test_metrics() == resumed.test_metrics()


def test_the_python_api_trains_a_table_and_checks_it_first(shapes, tmp_path):
    raw = recipe_dict(shapes, tmp_path)
    run = cnnlab.train(raw, overrides={"train.epochs": 1})
    assert run.status["state"] == "finished" and "test.mask.miou" in run.test_metrics
    raw["train"]["monitor"] = "val.counts.rmse_square"  # checked against the header's columns
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(raw)
    assert str(err.value) == (
        "train.monitor 'val.counts.rmse_square': tasks.counts has no class or component "
        "'square' (did you mean 'squares'?); its rmse is reported for each of: discs, squares, "
        "triangles"
    )
    raw["train"]["monitor"] = "val.mask.miou"
    raw["tasks"]["kind"]["target"] = "mask"
    with pytest.raises(CnnlabError, match="is a class per pixel .a mask.; make this task type"):
        cnnlab.train(raw)
    assert get_source("table").config is table.TableConfig


def test_a_table_is_a_source_a_user_subclasses_and_registers(shapes, tmp_path):
    from typing import Literal

    from pydantic import Field

    from cnnlab.components import register_source, registration_scope
    from cnnlab.data.base import Dataset

    class ShapesOnly(table.TableConfig):
        """The shapes table with its columns fixed: a recipe names only the file."""

        source: Literal["shapes_only"] = "shapes_only"
        targets: dict[str, table.TargetColumn] = Field(
            default_factory=lambda: {"kind": table.TargetColumn(kind="category", column="kind")}
        )

    def load(cfg: ShapesOnly) -> Dataset:
        ds = table.load(cfg)
        ds.train = ds.train.subset(torch.arange(100))  # a wrapper may change what it gives
        return ds

    with registration_scope():
        register_source("shapes_only", config=ShapesOnly, describe=table.describe, load=load)
        raw = {
            "data": {"source": "shapes_only", "table": str(shapes / "labels.csv"),
                     "split": {"column": "split"}, "augment": {"translate": 0}},
            "model": {"base_filters": 8, "blocks": 2},
            "tasks": {"kind": {"type": "classification", "target": "kind"}},
            "train": {"epochs": 1, "device": "cpu", "progress": False, "report": False},
            "output_dir": str(tmp_path / "runs"),
        }  # fmt: skip
        assert describe(load_recipe(raw).data).source == "shapes_only"
        run = cnnlab.train(raw)
        assert run.recipe.data.source == "shapes_only" and "test.kind.accuracy" in run.test_metrics


def test_whole_groups_stay_in_one_split(shapes, tmp_path):
    """Four images per subject: validation and test are carved by whole subjects, the
    classes stratified by each subject's first image; a split column that parts a subject
    is refused, naming both rows."""
    rows = table_rows(shapes)
    fields = ["image", "kind", "sid", "subject", "split"]
    with open(tmp_path / "subjects.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(rows):
            split = "test" if i == 1 else "train" if i == 0 else row["split"]  # s0: parted
            writer.writerow({**row, "sid": i // 4, "subject": f"s{i // 4}", "split": split})
    targets = {"kind": {"kind": "category", "column": "kind"},
               "sid": {"kind": "number", "column": "sid"}}  # fmt: skip
    raw = recipe_dict(shapes, tmp_path, table=str(tmp_path / "subjects.csv"), root=str(shapes),
                      targets=targets, split=None, group_column="subject")  # fmt: skip
    raw["tasks"] = {"kind": {"type": "classification", "target": "kind"}}
    raw["train"]["monitor"] = "val.kind.accuracy"
    splits = build(load_recipe(raw)).splits
    subjects = {p: getattr(splits, p).targets["sid"].long() for p in ("train", "val", "test")}
    assert all(torch.bincount(s).unique().tolist() in ([0, 4], [4]) for s in subjects.values())
    train, val, test = (set(s.tolist()) for s in subjects.values())
    assert not (train & val or train & test or val & test) and len(val) and len(test)
    sid_of = {r["image"]: i // 4 for i, r in enumerate(rows)}  # each file's name, carved along
    for part in ("train", "val", "test"):  # (the run folder's splits.csv lists them)
        assert [sid_of[n] for n in getattr(splits, part).names] == subjects[part].tolist()
    assert len(train | val | test) == len(rows) // 4
    assert abs(len(test) - 0.2 * len(rows) / 4) <= 3  # test_fraction counts subjects
    raw["data"]["test_fraction"] = 0.35  # rounded per class of subjects: not n × 0.35 rows
    cfg = load_recipe(raw).data
    assert describe(cfg).sizes["test"] == len(table.load(cfg).test) != round(len(rows) * 0.35)

    raw["data"]["split"] = {"column": "split"}  # its first two rows, one subject, parted
    with pytest.raises(CnnlabError) as err:
        describe(load_recipe(raw).data)
    assert (
        "column 'subject': a group in two splits on line 3 ('s0': test here, train on line 2); "
        "a group's rows belong in one split"
    ) in str(err.value)


def test_a_jpeg_mask_is_refused_as_lossy_not_as_holding_class_254(tmp_path):
    """A mask saved as JPEG held indices 3-13 and 246-254 at the edges, and the message said
    to list 255 classes; the fix is to save it losslessly."""
    from cnnlab.data.decoded import Refused, decode_mask

    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 1
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=90)
    with pytest.raises(Refused) as err:
        decode_mask(tmp_path / "m.jpg", 16, "squash")
    assert err.value.what == "is a JPEG, whose lossy compression changes class indices"
    assert err.value.fix.startswith("save masks losslessly, as PNGs of class indices")
    Image.fromarray(mask).save(tmp_path / "m.png")  # the same mask as a PNG reads as it is
    assert np.array_equal(decode_mask(tmp_path / "m.png", 16, "squash"), mask)


def test_a_table_not_found_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    targets = {"k": {"kind": "category", "column": "k"}}
    cfg = table.TableConfig(table="data/labels.csv", targets=targets)
    with pytest.raises(CnnlabError) as err:
        table.load(cfg)
    assert str(err.value).startswith(
        f"data.table: data/labels.csv: no such file (looked for in {tmp_path}, where cnnlab "
        "runs); point data.table at the CSV or Parquet file, or run cnnlab from the folder "
    )
