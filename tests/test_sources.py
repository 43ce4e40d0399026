"""Sources by name (issue 9 §1): each with its own recipe section, a description read from
headers alone, streaming normalization statistics, and augmentation that sees targets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from cnnlab.build import build
from cnnlab.data import SOURCES, describe
from cnnlab.data import fashion_mnist as fm
from cnnlab.data import stats as stats_module
from cnnlab.data.augment import AugmentConfig, augment, hflip, translate
from cnnlab.data.batches import prepare_splits
from cnnlab.data.split import stratified_split, stratified_subset
from cnnlab.data.stats import channel_stats
from cnnlab.errors import CnnlabError
from cnnlab.recipe import dump_recipe, load_recipe, validate
from tests.conftest import DEMO
from tests.test_data import fake_fashion

# ------------------------------------------------------------------ the data section


@pytest.mark.parametrize(
    "override, says",
    [
        (
            "data.source=cifar100",
            "data.source 'cifar100' is unknown (did you mean 'cifar10'?); choose one of: "
            "fashion_mnist",
        ),
        ("data.source=null", "data.source is missing: choose one of: fashion_mnist"),
        (
            "data.rooot=/tmp",
            "unknown key 'data.rooot' (did you mean 'data.root'?); valid keys here: source, root, "
            "val_fraction, folds, fold, train_subset, test_subset, augment",
        ),
        (
            "data.augment.flip=true",
            "unknown key 'data.augment.flip' (did you mean 'data.augment.vflip'?); valid keys "
            "here: hflip, ",
        ),
        ("data.val_fraction=1.5", "data.val_fraction = 1.5: Input should be less than 0.9"),
    ],
)
def test_data_section_errors_are_one_line_naming_the_choices(override, says):
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, [override])
    msg = str(err.value)
    given, _, said = msg.partition(": ")  # the --set's problem is said as the --set's
    assert given == f"--set {override!r}" and said.startswith(says), msg
    assert "\n" not in msg and "fashion_mnist." not in msg  # the tag stays out of the key


def test_a_data_section_without_source_is_fashion_mnist_as_before(tmp_path):
    raw = yaml.safe_load(DEMO.read_text())
    del raw["data"]["source"]
    recipe = validate(raw)
    assert type(recipe.data) is fm.FashionMNISTConfig and recipe.data.val_fraction == 0.1
    del raw["data"]
    assert validate(raw).data == fm.FashionMNISTConfig()
    # A saved recipe.yaml keeps today's keys in today's order, and loads again unchanged.
    saved = yaml.safe_load(dump_recipe(load_recipe(DEMO)))
    assert list(saved["data"]) == [
        "source",
        "root",
        "val_fraction",
        "folds",
        "fold",
        "train_subset",
        "test_subset",
        "augment",
        "colorize",
    ]
    assert validate(saved).data == load_recipe(DEMO).data


# ------------------------------------------------------------------------ describe()


def test_describe_reads_the_real_headers():
    info = describe(fm.FashionMNISTConfig())
    assert info.source == "fashion_mnist" and info.shape == (1, 28, 28)
    assert info.sizes == {"train": 60000, "test": 10000} and info.validation == "carved"
    assert info.targets["label"][0] == "T-shirt/top" and len(info.targets["label"]) == 10
    assert info.categorical("label") and not info.categorical("ink")
    small = describe(fm.FashionMNISTConfig(train_subset=2000, test_subset=500))
    assert small.sizes == {"train": 2000, "test": 500}


def test_describe_reads_no_pixels(tmp_path, monkeypatch):
    fake_fashion(tmp_path, n_train=40, n_test=20)  # gzipped, as downloaded

    def no_pixels(path):
        raise AssertionError(f"pixels of {path} were read")

    monkeypatch.setattr(fm, "read_idx", no_pixels)
    info = describe(fm.FashionMNISTConfig(root=str(tmp_path)))
    assert info.sizes == {"train": 40, "test": 20} and info.shape == (1, 28, 28)
    with pytest.raises(AssertionError, match="pixels of"):  # the reader is really patched
        SOURCES["fashion_mnist"].load(fm.FashionMNISTConfig(root=str(tmp_path)))


def test_describe_refuses_mismatched_headers(tmp_path):
    fake_fashion(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 7]))
    with pytest.raises(CnnlabError, match="images and labels do not match"):
        describe(fm.FashionMNISTConfig(root=str(tmp_path)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0]))
    with pytest.raises(CnnlabError, match="the idx header is cut short"):
        describe(fm.FashionMNISTConfig(root=str(tmp_path)))


@pytest.mark.parametrize(
    "override, says",
    [
        ("tasks.cls.target=colour", "tasks.cls.target 'colour' is not provided by fashion_mnist"),
        (
            "tasks.cls.target=labels",
            r"tasks.cls.target 'labels' is not provided by fashion_mnist \(did you mean "
            r"'label'\?\); choose one of: label, ink",
        ),
        ("tasks.cls.target=ink", "tasks.cls: target 'ink' is not categorical"),
        (
            "tasks.ink.target=label",
            r"tasks.ink: target 'label' is categorical \(10 classes: T-shirt/top, Trouser, "
            r"Pullover, Dress, and 6 more\); a regression reads a number or a vector",
        ),
    ],
)
def test_the_recipe_is_checked_before_any_pixel_is_read(tiny, monkeypatch, override, says):
    def no_pixels(path):
        raise AssertionError(f"pixels of {path} were read")

    monkeypatch.setattr(fm, "read_idx", no_pixels)
    with pytest.raises(CnnlabError, match=says):
        build(tiny(override))


# ------------------------------------------------------------ normalization statistics


def test_streaming_statistics_match_a_direct_computation(monkeypatch):
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=None)
    images[:, 2] = 7  # a constant channel: std 0, clamped
    monkeypatch.setattr(stats_module, "CHUNK_VALUES", 100)  # 1 image a chunk: 37 chunks
    mean, std = channel_stats(images)
    direct = images.double().div(255)
    assert mean.dtype == torch.float32 and mean.shape == (3,)
    assert torch.allclose(mean.double(), direct.mean(dim=(0, 2, 3)), rtol=1e-7, atol=0)
    assert torch.allclose(std[:2].double(), direct.std(dim=(0, 2, 3))[:2], rtol=1e-6, atol=0)
    assert std[2] == 1e-6 and mean[2] == torch.tensor(7 / 255, dtype=torch.float32)
    monkeypatch.setattr(stats_module, "CHUNK_VALUES", 1 << 22)  # one chunk: the same answer
    assert all(torch.equal(a, b) for a, b in zip(channel_stats(images), (mean, std), strict=True))


def test_fashion_mnist_statistics_are_those_of_the_training_split(tiny):
    recipe = tiny()
    splits = prepare_splits(recipe.data, recipe.seed, {"label", "ink"}, torch.device("cpu"))
    # Today's computation, from a float copy of the split the run trains on.
    ds = fm.load()
    labels = ds.train.targets["label"]
    sub = stratified_subset(labels, len(labels), 2000, recipe.seed)
    keep, _ = stratified_split(labels[sub], len(sub), 0.1, recipe.seed)
    pixels = ds.train.images[sub][keep].float().div_(255)
    assert torch.equal(splits.train.images, ds.train.images[sub][keep])
    assert torch.allclose(splits.mean, pixels.mean(dim=(0, 2, 3)), rtol=1e-6, atol=0)
    assert torch.allclose(splits.std, pixels.std(dim=(0, 2, 3)), rtol=1e-6, atol=0)


def test_a_source_that_knows_its_statistics_gives_them(tiny, monkeypatch):
    known = dataclasses.replace(SOURCES["fashion_mnist"], stats=((0.25,), (0.5,)))
    monkeypatch.setitem(SOURCES, "fashion_mnist", known)
    recipe = tiny()
    splits = prepare_splits(recipe.data, recipe.seed, {"label"}, torch.device("cpu"))
    assert splits.mean.tolist() == [0.25] and splits.std.tolist() == [0.5]


def test_prepare_splits_refuses_a_target_the_source_lacks(tiny):
    recipe = tiny()
    with pytest.raises(CnnlabError, match="target 'colour' is not provided by fashion_mnist"):
        prepare_splits(recipe.data, recipe.seed, {"label", "colour"}, torch.device("cpu"))


# ----------------------------------------------------------------------- augmentation


def test_augment_sees_targets_and_keeps_the_draws():
    x = torch.rand(16, 1, 8, 8)
    targets = {"label": torch.arange(16)}
    cfg = AugmentConfig(hflip=True, translate=2)
    out, got = augment(x, targets, cfg, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(out, translate(hflip(x, gen), 2, gen))  # flip, then shift: same draws
    assert got is targets and not torch.equal(out, x)
    same, _ = augment(x, targets, AugmentConfig(hflip=False, translate=0), gen)
    assert same is x
