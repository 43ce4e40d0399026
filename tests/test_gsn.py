"""GSN: the generator, the `gsn` source reading its (the published) format, the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnlab.build import check_data
from cnnlab.catalog import RECIPES
from cnnlab.data import SOURCES, describe
from cnnlab.data import gsn_generator as gen
from cnnlab.data.gsn import CLASS_NAMES, COUNT_NAMES, counts_to_class, pair_class
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.recipe import load_recipe
from cnnlab.sweeps import inside
from cnnlab.sweeps.inside import inside_groups
from cnnlab.sweeps.results import load_trials
from cnnlab.sweeps.statistics import groups
from cnnlab.sweeps.study import SweepFolder
from cnnlab.tasks import Goal, TargetSpec, task_class
from cnnlab.tasks.regression import RegressionConfig
from tests.conftest import run_cli

N = 120


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gsn") / "data_gsn"
    gen.write(out, N, seed=7)
    return out


def pixels(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("img_*.png"))]


def rows(folder: Path) -> list[list[str]]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.reader(f))


def config(root: Path, **fields):
    return SOURCES["gsn"].config(root=str(root), **fields)


# ------------------------------------------------------------------------ generator


def test_same_seed_same_bytes_other_seed_differs(folder, tmp_path):
    again = tmp_path / "again"
    gen.write(again, N, seed=7)
    assert (again / "labels.csv").read_bytes() == (folder / "labels.csv").read_bytes()
    assert all(np.array_equal(a, b) for a, b in zip(pixels(again), pixels(folder), strict=True))
    other = tmp_path / "other"
    gen.write(other, N, seed=8)
    assert (other / "labels.csv").read_bytes() != (folder / "labels.csv").read_bytes()
    # chunking and threads never change the result: image i depends on (seed, i) only
    one, _, _ = gen.generate(300, 3, threads=1)
    two, _, _ = gen.generate(300, 3, threads=2)
    assert np.array_equal(one, two)
    assert np.array_equal(gen.draw_chunk(3, 260, 280)[0], one[260:280])


def test_images_binary_and_rows_follow_the_rules(folder):
    table = rows(folder)
    assert tuple(table[0]) == ("name", "squares", "circles", "up", "right", "down", "left")
    assert [r[0] for r in table[1:]] == [f"img_{i:05d}.png" for i in range(N)]
    for image in pixels(folder):
        assert image.shape == (28, 28) and image.dtype == np.uint8
        assert set(np.unique(image)) <= {0, 255}
    with Image.open(folder / "img_00000.png") as im:
        assert im.mode == "L"
    counts = np.array([[int(v) for v in r[1:]] for r in table[1:]])
    assert ((counts > 0).sum(1) == 2).all() and (counts.sum(1) == 10).all()
    assert counts.min() >= 0 and counts.max() <= 9


def test_all_135_classes_appear():
    _, counts, _ = gen.generate(2000, 1)
    classes = pair_class(torch.from_numpy(counts).float())
    assert set(classes.tolist()) == set(range(135))


def test_triangles_point_where_their_names_say():
    def one(kind: int) -> np.ndarray:
        return gen.masks(np.array(kind), np.array(14.0), np.array(14.0), np.array(10.0))

    for kind in (0, 1, 2, 3, 4, 5):
        m = one(kind).astype(int)
        assert 10 < m.sum() < 120
        top, bottom, left, right = m[:14].sum(), m[14:].sum(), m[:, :14].sum(), m[:, 14:].sum()
        name = gen.TYPES[kind]
        if name == "up":  # apex on top, base below
            assert bottom > 2 * top and left == right
        elif name == "down":
            assert top > 2 * bottom and left == right
        elif name == "right":  # base on the left, apex to the right
            assert left > 2 * right and top == bottom
        elif name == "left":
            assert right > 2 * left and top == bottom
        else:  # squares and circles are symmetric
            assert top == bottom and left == right


def test_stats_describe_the_drawn_shapes():
    images, _, shapes = gen.generate(200, 2)
    s = gen.stats(images, shapes)
    assert 3 <= s["shape size min (px)"] < s["shape size mean (px)"] < s["shape size max (px)"]
    assert s["shape size max (px)"] <= 10
    assert 0.05 < s["pixels on"] < 0.5 and 0.05 < s["shapes cut by the border"] < 0.8


# ------------------------------------------------------------------------ source


def test_round_trip_through_the_source(folder):
    cfg = config(folder, val_rows=20)
    ds = SOURCES["gsn"].load(cfg)
    counts = torch.tensor([[float(v) for v in r[1:]] for r in rows(folder)[1:]])
    assert ds.train.images.shape == (N - 20, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert torch.equal(ds.train.targets["counts"], counts[:-20])
    assert torch.equal(ds.val.targets["counts"], counts[-20:])  # the last rows validate
    assert ds.test is ds.val
    assert torch.equal(ds.train.targets["pair"], pair_class(counts[:-20]))
    first = np.asarray(Image.open(folder / "img_00000.png"))
    assert np.array_equal(ds.train.images[0, 0].numpy(), first)
    info = describe(cfg)
    assert info.validation == "given" and info.sizes == {"train": N - 20, "val": 20, "test": 20}
    assert info.targets["pair"] == CLASS_NAMES and info.targets["counts"] is None
    # the folder holding data_gsn/ works too
    assert len(SOURCES["gsn"].load(config(folder.parent, val_rows=20)).train) == N - 20


def test_class_order_and_helpers():
    assert len(CLASS_NAMES) == 135 and COUNT_NAMES[0] == "squares"
    assert CLASS_NAMES[0] == "squares+circles: 1:9" and CLASS_NAMES[9] == "squares+up: 1:9"
    assert CLASS_NAMES[134] == "down+left: 9:1"
    counts = torch.tensor([[3.0, 7, 0, 0, 0, 0], [0, 0, 0, 0, 9, 1], [0, 2, 0, 0, 0, 8]])
    assert pair_class(counts).tolist() == [2, 134, CLASS_NAMES.index("circles+left: 2:8")]
    noisy = torch.tensor([[2.6, 6.1, 0.3, 0, -0.2, 0.1], [0.1, 0, 0.2, 0, 12.0, 3.0]])
    assert counts_to_class(noisy).tolist() == [2, CLASS_NAMES.index("down+left: 9:1")]
    assert torch.equal(counts_to_class(counts), pair_class(counts))


def test_bad_rows_are_one_line_with_their_line_numbers(folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in folder.glob("img_*.png"):
        (bad / p.name).write_bytes(p.read_bytes())
    table = rows(folder)
    table[3][0] = "img_99999.png"  # line 4: missing image
    (bad / "labels.csv").write_text("\n".join(",".join(r) for r in table) + "\n")
    with pytest.raises(CnnlabError) as err:
        SOURCES["gsn"].load(config(bad, val_rows=20))
    assert "line 4: img_99999.png is missing" in str(err.value)
    assert "\n" not in str(err.value)

    table = rows(folder)
    table[5][1:] = ["3", "3", "4", "0", "0", "0"]  # line 6: three types
    table[8][1:] = ["5", "4", "0", "0", "0", "0"]  # line 9: sums to 9
    table[9][1:] = ["5.5", "4.5", "0", "0", "0", "0"]  # line 10: not whole
    (bad / "labels.csv").write_text("\n".join(",".join(r) for r in table) + "\n")
    with pytest.raises(CnnlabError) as err:
        describe(config(bad, val_rows=20))
    text = str(err.value)
    assert "3 bad rows" in text and "line 6:" in text and "line 9:" in text
    assert "line 10:" in text and "\n" not in text

    Image.new("L", (32, 28)).save(bad / "img_00002.png")  # line 4: wrong size
    (bad / "labels.csv").write_text("\n".join(",".join(r) for r in rows(folder)) + "\n")
    with pytest.raises(CnnlabError, match=r"line 4: img_00002.png is 32x28"):
        SOURCES["gsn"].load(config(bad, val_rows=20))

    secret = tmp_path / "secret.png"  # outside the folder, behind a link a row names
    Image.new("L", (28, 28)).save(secret)
    (bad / "img_00002.png").unlink()
    (bad / "img_00002.png").symlink_to(secret)
    with pytest.raises(CnnlabError, match=r"line 4: img_00002.png links outside"):
        SOURCES["gsn"].load(config(bad, val_rows=20))

    (bad / "labels.csv").write_text("file,squares,circles,up,right,down,left\n")
    with pytest.raises(CnnlabError, match="line 1: header must be name,squares"):
        describe(config(bad))


# ------------------------------------------------------------------------ CLI


def test_cli_generates_with_stats_and_refuses_other_folders(tmp_path):
    out = tmp_path / "gsn"
    res = run_cli("data", "gsn", "--out", str(out), "--n", "200", "--seed", "1", "--stats")
    assert res.returncode == 0, res.stderr
    assert "pixels on" in res.stdout and "shapes cut by the border" in res.stdout
    assert len(list(out.glob("img_*.png"))) == 200 and len(rows(out)) == 201
    # again into its own output: allowed, and the same bytes
    before = (out / "labels.csv").read_bytes()
    gen.write(out, 200, seed=1)
    assert (out / "labels.csv").read_bytes() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    res = run_cli("data", "gsn", "--out", str(other), "--n", "10")
    assert res.returncode == 2 and "not a previous GSN output" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and sorted(other.iterdir()) == [
        other / "notes.txt"
    ]


def test_cli_train_on_gsn(folder, tmp_path):
    recipe = {
        "name": "gsn_tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "gsn", "root": str(folder), "val_rows": 20},
        "model": {"backbone": "cnn", "blocks": 2, "base_filters": 4},
        "tasks": {
            "cls": {"type": "classification", "target": "pair"},
            "cnt": {"type": "regression", "target": "counts", "loss": "smooth_l1"},
        },
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "progress": False,
            "device": "cpu",
            "threads": 1,
            "report": True,  # every figure, on a vector target too
            "monitor": "val.cls.accuracy",
        },
    }
    path = tmp_path / "gsn.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = run_cli("train", str(path))
    assert out.returncode == 0, out.stderr
    assert "run folder:" in out.stdout
    (run,) = (tmp_path / "runs").iterdir()
    test = json.loads((run / "test_metrics.json").read_text())
    each = [test[f"test.cnt.rmse_{name}"] for name in COUNT_NAMES]  # one RMSE per count
    overall = (sum(r**2 for r in each) / len(each)) ** 0.5  # equal counts per component
    assert test["test.cnt.rmse"] == pytest.approx(overall, rel=1e-4)
    assert 0.0 <= test["test.cnt.accuracy"] <= 1.0  # the count head read as a classifier
    assert (run / "figures" / "regression_cnt.png").stat().st_size > 2000
    again = run_cli("eval", str(run))  # the checkpoint rebuilds the six-output head
    assert again.returncode == 0, again.stderr
    assert f"| test.cnt.rmse_squares | {test['test.cnt.rmse_squares']:.4f} |" in again.stdout


def test_the_recipe_builds_seed_003s_network(folder):
    """Conv 1→8→16→32→64 (3×3, no pooling), Linear(64·28·28 → 256) shared by both heads."""
    recipe = load_recipe(
        RECIPES / "gsn_multitask.yaml", [f"data.root={folder}", "data.val_rows=20"]
    )
    model = create_model(recipe.model, 1, (28, 28), check_data(recipe))
    convs = sum(c_in * c_out * 9 + c_out for c_in, c_out in [(1, 8), (8, 16), (16, 32), (32, 64)])
    dense = 64 * 28 * 28 * 256 + 256
    heads = (256 * 135 + 135) + (256 * 6 + 6)
    assert sum(p.numel() for p in model.parameters()) == convs + dense + heads
    out = model(torch.zeros(2, 1, 28, 28))
    assert out["cls"].shape == (2, 135) and out["cnt"].shape == (2, 6)


def test_the_count_head_is_scored_as_a_classifier_too():
    cfg = RegressionConfig(target="counts")
    task = task_class(cfg)("cnt", cfg)
    task.fit(TargetSpec(components=COUNT_NAMES, to_class=counts_to_class))
    truth = torch.tensor([[3.0, 7, 0, 0, 0, 0], [0, 0, 0, 0, 9, 1]])
    pred = torch.tensor([[3.2, 6.9, 0.1, 0, 0, 0], [0, 0, 0, 0, 5.2, 4.9]])  # 2nd: 5:5, wrong
    metrics = task.epoch_metrics()
    metrics.update(pred, truth)
    assert task.epoch_values(metrics.compute())["accuracy"] == 0.5


def test_the_three_way_study_from_the_shell(folder, tmp_path, monkeypatch):
    """gsn_settings: 3 settings × 3 seeds, then the report compares them inside too."""
    tiny = [f"data.root={folder}", "data.val_rows=20", "train.epochs=1", "train.threads=1",
            "model.filters=[4,4,4,4]", "model.dense=[16]"]  # fmt: skip
    out = tmp_path / "sweeps"
    sets = [a for s in tiny for a in ("--set", s)]
    done = run_cli("sweep", "gsn_multitask", "gsn_settings", "--out", str(out), *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.iterdir()
    report = run_cli("report", str(path), "--group-by", "setting")
    assert report.returncode == 0, report.stderr[-3000:]
    page = re.sub(r">\s+<", "><", (path / "report.html").read_text())
    for setting in ("classification", "counts", "joint"):  # a study-table row each, 3 seeds
        assert f'<td>setting = {setting}</td><td class="num">3</td>' in page
    dead = page.split("Dead units by setting")[1]
    assert "<th>setting = joint (3 runs)</th>" in dead
    assert re.search(r"<td>backbone\.dense\.1 \(16\)</td><td class=\"num\">[0-9.]+% ± ", dead)
    # the confusion of each trained class head: none for counts only (its weight is 0)
    assert (path / "setting_joint_group_errors_cls.png").stat().st_size > 2000
    assert (path / "setting_classification_confusion_cls.png").is_file()
    assert not list(path.glob("setting_counts_*.png"))
    assert "setting = joint: Errors by group: cls (its best run)" in page
    study = (path / "study.md").read_text()  # the same tables for a README, and on screen
    assert "| setting = counts | 3 |" in study and "Dead units by setting" in study
    assert "| setting = counts | 3 |" in report.stdout
    rows = load_trials(SweepFolder.open(path), None)
    labels = groups(rows, "setting")
    assert len(inside_groups(rows, labels, "val.loss", Goal.MINIMIZE)) == 3
    monkeypatch.setattr(inside, "MAX_GROUPS", 2)  # a continuous parameter: not looked inside
    assert inside_groups(rows, labels, "val.loss", "minimize") == []


def test_a_groups_inside_view_reads_complete_trials_before_pruned_ones():
    def row(state: str, loss: float) -> SimpleNamespace:
        return SimpleNamespace(state=state, at_best_epoch=lambda: {"val.loss": loss})

    pruned, worse, better = row("pruned", 0.1), row("complete", 0.9), row("complete", 0.5)
    order = inside.ranked([pruned, worse, better], "val.loss", Goal.MINIMIZE)
    assert order == [better, worse, pruned]  # the pruned trial's low loss after one epoch last
