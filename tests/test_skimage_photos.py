"""skimage_photos: crops of scikit-image's colour photographs, three splits that never share
a pixel, the same bytes from the same crop_seed, and a recipe section that says what is
wrong in one line."""

from __future__ import annotations

import pytest
import skimage.data
import torch
import torch.nn.functional as F

from cnnlab.data import SOURCES, describe, list_datasets
from cnnlab.data import skimage_photos as sp
from cnnlab.data.batches import prepare_splits
from cnnlab.errors import CnnlabError
from cnnlab.recipe import load_recipe
from tests.conftest import DEMO

SMALL = {"image_size": 16, "train_images": 96, "val_images": 24, "test_images": 16}


def config(**fields) -> sp.SkimagePhotosConfig:
    return sp.SkimagePhotosConfig(**{**SMALL, **fields})


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    files = sp.locate()
    return [sp.read_photo(files[name]) for name in sp.NAMES]


def shapes_of(photos: list[torch.Tensor], image_size: int) -> list[dict]:
    return [sp.band_shapes(p.shape[1], p.shape[2], image_size) for p in photos]


# ------------------------------------------------------------------------- the photos


def test_the_eight_photos_ship_with_scikit_image_and_read_as_it_reads_them(photos):
    files = sp.locate("/ignored", True)  # root and allow_download change nothing
    assert list(files) == sp.NAMES and len(sp.NAMES) == 8
    assert all(path.is_file() and path.parent.name == "data" for path in files.values())
    chelsea = photos[sp.NAMES.index("chelsea")]
    assert torch.equal(chelsea.permute(1, 2, 0), torch.from_numpy(skimage.data.chelsea()))
    motorcycle = photos[sp.NAMES.index("motorcycle")]
    left = skimage.data.stereo_motorcycle()[0]
    assert torch.equal(motorcycle.permute(1, 2, 0), torch.from_numpy(left))


def test_the_photos_are_in_colour(photos):
    splits = sp.cut_crops(photos, config())
    for split in sp.SPLITS:
        x = splits[split].images.float()
        for p, name in enumerate(sp.NAMES):
            mine = x[splits[split].targets["photo"] == p]
            spread = (mine[:, 0] - mine[:, 1]).abs().mean() + (mine[:, 1] - mine[:, 2]).abs().mean()
            assert spread > 2, (split, name, spread)  # a grey crop has R = G = B


def test_without_scikit_image_one_line_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(sp.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CnnlabError) as err:
        describe(config())
    assert str(err.value) == "skimage_photos needs scikit-image: pip install scikit-image"


# ---------------------------------------------------------------------------- splits


@pytest.mark.parametrize("height", [300, 427, 512, 872, 1411, 7, 101])
def test_bands_are_disjoint_and_cover_the_photo(height):
    b = sp.bands(height)
    assert list(b) == ["train", "val", "test"]
    assert b["train"][0] == 0 and b["test"][1] == height
    assert b["train"][1] == b["val"][0] and b["val"][1] == b["test"][0]  # adjacent, no overlap
    assert all(bottom > top for top, bottom in b.values())
    assert abs(b["train"][1] - 0.7 * height) <= 0.5 and abs(b["val"][1] - 0.85 * height) <= 0.5


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_every_crop_lies_inside_its_own_band(photos, image_size):
    shapes = shapes_of(photos, image_size)
    cfg = config(image_size=image_size, train_images=800, val_images=400, test_images=400)
    for s in shapes:  # the smallest band holds two crops of image_size, one above the other
        assert min(rows for rows, _ in s.values()) >= 2 * image_size - 1
    for split in sp.SPLITS:
        photo, top, left, side = sp.crop_boxes(cfg, split, shapes).T
        rows = torch.tensor([s[split][0] for s in shapes])[photo]
        cols = torch.tensor([s[split][1] for s in shapes])[photo]
        ref = torch.tensor([min(min(hw) for hw in s.values()) for s in shapes])[photo]
        assert (top >= 0).all() and (left >= 0).all() and (side >= 1).all()
        assert (top + side <= rows).all() and (left + side <= cols).all()
        share = side / ref  # the same scale range in every split
        assert share.min() >= 0.15 - 0.5 / ref.min() and share.max() <= 0.6 + 0.5 / ref.min()


def test_crops_of_a_split_hold_only_its_bands_pixels():
    """A photo painted one colour per band (rows counted here, not by sp.bands): every crop
    of a split, resized twice, is its band's colour and nothing else."""
    photo = torch.zeros(3, 200, 300, dtype=torch.uint8)
    paint = {"train": ((0, 140), (250, 10, 10)), "val": ((140, 170), (10, 250, 10))}
    paint["test"] = ((170, 200), (10, 10, 250))
    for (top, bottom), colour in paint.values():
        photo[:, top:bottom] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    cfg = config(image_size=32, train_images=200, val_images=100, test_images=100)
    assert sp.band_shapes(200, 300, 32)["val"][0] > 30  # the bands are resized up
    splits = sp.cut_crops([photo], cfg)
    for split, (_, colour) in paint.items():
        want = torch.tensor(colour)[None, :, None, None]
        assert (splits[split].images.int() - want).abs().max() <= 1, split


def test_a_crop_is_its_box_resized():
    """No resize of the bands here (each holds 2 crops): crop k equals its box of the photo
    cut by hand and resized on its own."""
    photo = torch.randint(0, 256, (3, 400, 300), generator=torch.Generator().manual_seed(1))
    photo = photo.to(torch.uint8)
    cfg = config(image_size=16, train_images=40, val_images=20, test_images=20)
    shapes = shapes_of([photo], 16)
    assert shapes[0]["val"] == (60, 300)  # 15 % of 400 rows, as they are
    splits = sp.cut_crops([photo], cfg)
    for split in sp.SPLITS:
        band_top = sp.bands(400)[split][0]
        for k, (_, top, left, side) in enumerate(sp.crop_boxes(cfg, split, shapes).tolist()):
            t = band_top + top
            box = photo[None, :, t : t + side, left : left + side]
            want = F.interpolate(box, size=(16, 16), mode="bilinear", antialias=True)
            assert torch.equal(splits[split].images[k], want[0]), (split, k)


# ---------------------------------------------------------------------- the source


def test_load_gives_the_configured_splits_and_describe_agrees():
    cfg = config()
    ds = SOURCES["skimage_photos"].load(cfg)
    info = describe(cfg)
    assert info.validation == "given" and ds.val is not None
    assert info.shape == (3, 16, 16) and info.targets == {"photo": sp.NAMES}
    assert ds.classes == info.targets and ds.target_names() == ["photo"]
    for split, want in (("train", 96), ("val", 24), ("test", 16)):
        part = getattr(ds, split)
        assert part.images.shape == (want, 3, 16, 16) and part.images.dtype == torch.uint8
        assert info.sizes[split] == len(part) == want
        labels = part.targets["photo"]
        assert labels.dtype == torch.long
        counts = torch.bincount(labels, minlength=8)  # the photos in turn
        assert counts.max() - counts.min() <= 1
    small = describe(config(train_subset=50, test_subset=10))
    assert small.sizes == {"train": 50, "val": 24, "test": 10}


def test_same_crop_seed_same_bytes_other_seed_differs(photos):
    first = sp.cut_crops(photos, config())
    again = sp.cut_crops(photos, config())
    other = sp.cut_crops(photos, config(crop_seed=1))
    for split in sp.SPLITS:
        assert torch.equal(first[split].images, again[split].images)
        assert not torch.equal(first[split].images, other[split].images)
    # the splits are drawn apart, crop by crop: more training crops keep the first ones and
    # leave val and test as they were
    more = sp.cut_crops(photos, config(train_images=200))
    assert torch.equal(more["val"].images, first["val"].images)
    assert torch.equal(more["train"].images[:96], first["train"].images)


def test_prepare_splits_uses_the_given_validation():
    cfg = config(train_subset=40)
    splits = prepare_splits(cfg, 0, {"photo"}, torch.device("cpu"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 24, 16)
    assert splits.in_channels == 3 and splits.mean.shape == (3,)
    assert splits.label_maps == {"hflip": None, "translate": None}


# ---------------------------------------------------------------------- the recipe


@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ["data.image_sise=64"],
            "unknown key 'data.image_sise' (did you mean 'data.image_size'?); valid keys here: "
            "source, root, ",
        ),
        (["data.min_scale=0.7"], "data.min_scale (0.7) must not exceed data.max_scale (0.6)"),
        (["data.image_size=512"], "data.image_size = 512: Input should be less than or equal"),
        (
            ["data.augment.vflip=true"],
            "data.augment.vflip: skimage_photos does not say how an up-down flip changes its "
            "targets (a photograph has its sky above; upside down, it teaches colours in the "
            "wrong places); turn it off (vflip: false) or use hflip / translate",
        ),
    ],
)
def test_recipe_errors_are_one_line(overrides, says):
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, ["data.source=skimage_photos", *overrides])
    msg = str(err.value)
    given, _, said = msg.partition(": ")  # the file's, or the --set that gave the key
    sets = ["data.source=skimage_photos", *overrides]
    assert given in {str(DEMO), *(f"--set {s!r}" for s in sets)} and said.startswith(says), msg
    assert "\n" not in msg


def test_the_recipe_section_and_the_datasets_list():
    recipe = load_recipe(DEMO, ["data.source=skimage_photos", "data.image_size=64"])
    assert isinstance(recipe.data, sp.SkimagePhotosConfig) and recipe.data.image_size == 64
    assert recipe.data.root is None  # needs no folder
    names = "image_size, train_images, val_images, test_images, crop_seed, min_scale, max_scale"
    with pytest.raises(CnnlabError, match=names):
        load_recipe(DEMO, ["data.source=skimage_photos", "data.size=64"])
    assert list_datasets()["skimage_photos"] == (
        "random crops of scikit-image's colour photographs (offline; colorization demo)"
    )
    assert SOURCES["skimage_photos"].stats is None
