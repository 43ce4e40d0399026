"""CIFAR-10: files in the official layout, the safe reader, the recipes and a CLI run."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from benchmarks.gpu_check import write_cifar_batch
from cnnlab.build import check_data
from cnnlab.catalog import RECIPES
from cnnlab.data import SOURCES, describe
from cnnlab.data import cifar10 as cf
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.recipe import load_recipe
from tests.conftest import run_cli

PER_BATCH, N_TEST = 20, 20
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_cifar(root: Path, per_batch: int = PER_BATCH, n_test: int = N_TEST) -> Path:
    """`root/cifar-10-batches-py` with 5 training batches, a test batch and batches.meta."""
    folder = root / cf.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072))
        labels = [(j + i) % 10 for j in range(per_batch)]
        name = f"training batch {i} of 5"
        write_cifar_batch(folder / f"data_batch_{i}", data.astype(np.uint8), np.array(labels), name)
    test = np.zeros((n_test, 3072), np.uint8)
    test[0, 0] = 255  # image 0: red channel, top-left pixel
    test[1, 1024 + 32 * 2 + 5] = 200  # image 1: green channel, row 2, column 5
    write_cifar_batch(folder / "test_batch", test, np.arange(n_test) % 10, "testing batch 1")
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [n.encode() for n in NAMES],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A root holding cifar-10-batches-py, shared read-only by the tests below."""
    root = tmp_path_factory.mktemp("cifar")
    fake_cifar(root)
    return root


def config(root: Path, **fields) -> cf.CIFAR10Config:
    return cf.CIFAR10Config(root=str(root), **fields)


# ------------------------------------------------------------------------------ reading


def test_describe_reads_the_meta_only(folder):
    info = describe(config(folder, test_subset=10))
    assert info.source == "cifar10" and info.shape == (3, 32, 32)
    assert info.targets == {"label": NAMES}
    assert info.sizes == {"train": 5 * PER_BATCH, "test": 10}
    assert info.validation == "carved"
    assert describe(config(folder, train_subset=30)).sizes["train"] == 30


def test_load_gives_the_splits_classes_and_pixel_layout(folder, capsys):
    ds = SOURCES["cifar10"].load(config(folder))
    assert ds.train.images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (N_TEST, 3, 32, 32)
    assert ds.classes == {"label": NAMES}
    labels = ds.train.targets["label"]
    assert labels.dtype == torch.long
    assert labels[:3].tolist() == [1, 2, 3] and labels[PER_BATCH].item() == 2  # batch 2 next
    test = ds.test.images
    assert test[0, 0, 0, 0] == 255 and test[0].sum() == 255
    assert test[1, 1, 2, 5] == 200 and test[1].sum() == 200
    warning = capsys.readouterr().err.strip()
    assert warning == (
        f"warning: {folder / cf.FOLDER}: not the official CIFAR-10 files (checksums differ): "
        "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, "
        "batches.meta; loading them with the safe reader"
    )


def test_the_folder_itself_and_cnnlab_data_are_accepted(folder, monkeypatch):
    assert len(SOURCES["cifar10"].load(config(folder / cf.FOLDER)).test) == N_TEST
    monkeypatch.setenv("CNNLAB_DATA", str(folder))
    assert cf.locate(None)["test_batch"] == folder / cf.FOLDER / "test_batch"


def test_str_keys_are_read_as_well(tmp_path):
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 9]}, f)
    images, labels = cf.read_batch(path)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 9]


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes with Python 2's str opcodes, as cPickle wrote the official files."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def test_a_python2_pickle_as_the_official_files_are_needs_numpy_only(tmp_path):
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump({"batch_label": "b", "labels": [3, 4], "data": data})
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    names = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert names == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    images, labels = cf.read_batch(path)
    assert (images.reshape(2, -1) == data).all() and labels.tolist() == [3, 4]


@pytest.mark.parametrize(
    "data, labels, says",
    [
        (np.zeros((2, 3072), np.float32), [0, 1], "data must be a uint8 (N, 3072) array"),
        (np.zeros((2, 1024), np.uint8), [0, 1], "data has 1024 values per image, not 3072"),
        (np.zeros((2, 3072), np.uint8), [0], "2 images but 1 labels"),
        (np.zeros((2, 3072), np.uint8), [0, 10], "labels must lie in 0..9, found 0..10"),
    ],
)
def test_a_malformed_batch_is_one_line_naming_the_file(tmp_path, data, labels, says):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    with pytest.raises(CnnlabError) as err:
        cf.read_batch(path)
    assert str(err.value).startswith(f"{path}: {says}") and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ tampering


class RunsCommand:
    """What a tampered batch holds: unpickling it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_a_batch_that_would_run_code_is_refused_before_it_runs(folder, tmp_path, payload):
    copy = tmp_path / cf.FOLDER
    copy.mkdir()
    for path in (folder / cf.FOLDER).iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "pwned"
    evil = RunsCommand(marker) if payload == "system" else CallsEval()
    data = np.zeros((PER_BATCH, 3072), np.uint8)
    with open(copy / "data_batch_3", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0] * PER_BATCH, b"x": evil}, f, protocol=2)
    with pytest.raises(CnnlabError) as err:
        SOURCES["cifar10"].load(config(tmp_path))
    msg = str(err.value)
    name = "posix.system" if payload == "system" else "__builtin__.eval"  # as protocol 2 names it
    assert msg.startswith(f"{copy / 'data_batch_3'}: refuses to load {name} (not CIFAR-10 data")
    assert "\n" not in msg
    assert not marker.exists()


def test_codecs_encode_is_allowed_for_latin1_bytes_only(tmp_path):
    class Rot13:
        def __reduce__(self):
            import codecs

            return codecs.encode, ("abc", "rot13")

    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": Rot13()}, f, protocol=2)
    with pytest.raises(CnnlabError, match="not a readable CIFAR-10 batch"):
        cf.read_pickle(path)


# ------------------------------------------------------------------------------ missing


def test_a_missing_folder_or_file_is_one_line_naming_the_fix(tmp_path, folder):
    with pytest.raises(CnnlabError) as err:
        cf.locate(str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert msg.startswith(f"CIFAR-10 is not in {tmp_path / 'nowhere'}, the folder data.root")
    assert "(no such folder)" in msg and "Fix: put cifar-10-batches-py" in msg
    assert "\n" not in msg
    half = tmp_path / "half"
    half.mkdir()
    for path in (folder / cf.FOLDER).iterdir():
        if path.name != "test_batch":
            (half / path.name).write_bytes(path.read_bytes())
    with pytest.raises(CnnlabError, match=r"\(missing test_batch\)\. Fix: "):
        cf.locate(str(half))


def test_the_cache_without_downloads_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(CnnlabError) as err:
        cf.locate(None, allow_download=False)
    msg = str(err.value)
    assert msg.startswith(f"CIFAR-10 not found (searched {tmp_path / 'cnnlab' / 'cifar10'}; ")
    assert "downloads are disabled" in msg and "Fix:" in msg and "\n" not in msg


# ------------------------------------------------------------------------------ recipes

DEPTHS = {20: "270,410", 56: "855,050", 110: "1,732,010"}


def test_every_cifar_recipe_loads():
    names = sorted(p.stem for p in RECIPES.glob("cifar10_*.yaml"))
    assert names == [
        "cifar10_cnn", "cifar10_plainnet110", "cifar10_plainnet20", "cifar10_plainnet56",
        "cifar10_resnet110", "cifar10_resnet20", "cifar10_resnet56",
    ]  # fmt: skip
    for name in names:
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        assert recipe.data.source == "cifar10" and recipe.train.monitor == "val.cls.accuracy"


@pytest.mark.parametrize("backbone", ["resnet", "plainnet"])
@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_parameters_are_seed_004s_table(folder, backbone, depth):
    recipe = load_recipe(RECIPES / f"cifar10_{backbone}{depth}.yaml", [f"data.root={folder}"])
    model = create_model(recipe.model, 3, (32, 32), check_data(recipe))  # as a run builds it
    assert f"{sum(p.numel() for p in model.parameters()):,}" == DEPTHS[depth]


def test_cnnlab_count_on_the_generated_folder(folder):
    out = run_cli("count", "cifar10_resnet20", "--set", f"data.root={folder}")
    assert out.returncode == 0, out.stderr
    assert "270,410" in out.stdout


def test_cnnlab_count_needs_no_cifar10_on_the_machine(tmp_path):
    """CIFAR-10's format fixes its shapes and classes: the model is built without its files,
    also where data.root names an empty folder."""
    empty = tmp_path / "nothing"
    empty.mkdir()
    for sets in ([], ["--input", "3x64x64"]):
        out = run_cli("count", "cifar10_resnet20", *sets, env={"CNNLAB_DATA": str(empty)})
        assert out.returncode == 0, out.stderr
        assert "270,410" in out.stdout  # ResNet-20's parameters, whatever the image size
    assert "3×64×64" in out.stdout
    with pytest.raises(CnnlabError, match="CIFAR-10 is not in"):
        describe(load_recipe(RECIPES / "cifar10_resnet20.yaml", [f"data.root={empty}"]).data)


def test_train_and_eval_through_the_cli(folder, tmp_path):
    sets = [
        f"data.root={folder}", f"output_dir={tmp_path / 'runs'}", "train.epochs=1",
        "train.batch_size=20", "train.report=false", "train.progress=false",
        "train.device=cpu", "train.threads=1", "train.precision=fp32",
        "model.filters=[8,8,8,8]", "tasks.cls.head.hidden=[16]",
    ]  # fmt: skip
    trained = run_cli("train", "cifar10_cnn", *(a for s in sets for a in ("--set", s)))
    assert trained.returncode == 0, trained.stderr
    assert "not the official CIFAR-10 files (checksums differ)" in trained.stderr
    (run,) = (tmp_path / "runs").iterdir()
    out = run_cli("eval", str(run))
    assert out.returncode == 0, out.stderr
    accuracy = json.loads((run / "test_metrics.json").read_text())["test.cls.accuracy"]
    assert 0.0 <= accuracy <= 1.0
    assert f"| test.cls.accuracy | {accuracy:.4f} |" in out.stdout  # the run's own test result
