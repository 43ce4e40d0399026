"""The image-folder source on real files: layouts, bad files, resizing, the split rules, the
cache, and a whole `cnnlab train` + `cnnlab eval` on a generated tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cnnlab
from cnnlab.data import describe
from cnnlab.data import image_folder as imf
from cnnlab.data.batches import prepare_splits
from cnnlab.data.decoded import decode_image
from cnnlab.errors import CnnlabError
from cnnlab.recipe import load_recipe
from tests.conftest import ROOT, run_cli

CLASSES = [f"c{i}" for i in range(10)]
BAD = ["train/c0/corrupt.jpg", "train/c0/notes.txt", "train/c0/empty.jpg", "train/c3/outside.jpg"]


def _image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def make_tree(base: Path) -> Path:
    """root/train/c<i>/ with 5 + i images (40x30 and 30x50 JPEGs), root/val/c<i>/ with 2,
    plus the bad entries of BAD, a grey and an RGBA PNG."""
    root = base / "inat"
    rng = np.random.default_rng(0)
    for split, count in (("train", lambda i: 5 + i), ("val", lambda i: 2)):
        for i, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for j in range(count(i)):
                size = (40, 30) if j % 2 else (30, 50)
                _image(rng, *size).save(folder / f"{j:03d}.jpg", quality=90)
    good = (root / "train/c0/000.jpg").read_bytes()
    (root / "train/c0/corrupt.jpg").write_bytes(good[: len(good) // 2])
    (root / "train/c0/notes.txt").write_text("not an image")
    (root / "train/c0/empty.jpg").write_bytes(b"")
    (root / "train/c0/.hidden.jpg").write_bytes(good)  # hidden: not even listed
    Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8), "L").save(
        root / "train/c1/grey.png"
    )
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 20:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "train/c2/rgba.png")
    _image(rng, 40, 30).save(base / "secret.jpg")
    os.symlink(base / "secret.jpg", root / "train/c3/outside.jpg")
    return root


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    return make_tree(tmp_path)


def cfg_of(root: Path, **kw) -> imf.ImageFolderConfig:
    return imf.ImageFolderConfig(root=str(root), image_size=16, **kw)


def train_counts() -> list[int]:
    """Readable training images per class in make_tree's tree."""
    counts = [5 + i for i in range(10)]
    counts[1] += 1  # grey.png
    counts[2] += 1  # rgba.png
    return counts


# ------------------------------------------------------------------------ reading


def test_bad_entries_are_skipped_and_named_in_one_warning(tree, capsys):
    ds = imf.load(cfg_of(tree))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "files skipped" in line]
    assert len(warnings) == 1, err
    assert "4 files skipped" in warnings[0]
    for name in BAD:
        assert name in warnings[0]
    assert ".hidden" not in err
    assert ds.train.images.shape == (sum(train_counts()), 3, 16, 16)
    assert ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (20, 3, 16, 16)
    # train/ and val/ are views of the one decoded array, not copies of it
    assert (
        ds.train.images.untyped_storage().data_ptr() == ds.test.images.untyped_storage().data_ptr()
    )
    assert ds.classes == {"label": CLASSES}
    assert torch.bincount(ds.train.targets["label"]).tolist() == train_counts()


def test_one_bad_file_is_one_file_in_the_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "root" / cls).mkdir(parents=True)
        for j in range(6):
            _image(rng, 20, 20).save(tmp_path / "root" / cls / f"{j}.png")
    (tmp_path / "root/b/empty.png").write_bytes(b"")
    ds = imf.load(cfg_of(tmp_path / "root"))
    assert "warning: 1 file skipped (empty, corrupt" in capsys.readouterr().err
    assert len(ds.train) + len(ds.test) + (len(ds.val) if ds.val else 0) == 12


def test_the_scan_follows_symlinks_only_inside_the_root(tmp_path):
    """A link to a file inside the root is an image of its class; one leading out (a file
    or a whole class folder) is listed as outside and never read; a link to a folder is no
    image."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    for folder in (root / "a", root / "b", elsewhere):
        folder.mkdir(parents=True)
    (root / "a/one.jpg").write_bytes(b"x" * 10)
    (elsewhere / "secret.jpg").write_bytes(b"y" * 20)
    os.symlink(root / "a/one.jpg", root / "b/linked.jpg")
    os.symlink(elsewhere / "secret.jpg", root / "b/out.jpg")
    os.symlink(root / "a", root / "b/folder")
    os.symlink(elsewhere, root / "c")
    found = imf.scan(str(root))
    assert found.classes == ["a", "b", "c"]
    assert [(f[0], f[1], f[4]) for f in found.files] == [
        ("a/one.jpg", 10, 0),
        ("b/linked.jpg", 10, 1),
    ]
    assert found.outside == ["b/out.jpg", "c"]


def test_a_class_folders_sub_folders_are_its_images_and_an_empty_class_is_refused(tmp_path):
    """root/cats/2019/*.jpg are cats, as torchvision's ImageFolder reads them (before, they
    were left out and cats trained with no image at all); a link to a folder is not
    followed; a class folder without a file stops the run with its name."""
    root = tmp_path / "root"
    for rel in ("cats/a.jpg", "cats/2019/b.jpg", "cats/2019/summer/c.jpg", "dogs/d.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    os.symlink(root / "cats", root / "dogs/cats_too")  # inside the root, but a folder link
    found = imf.scan(str(root))
    assert [(f[0], f[4]) for f in found.files] == [
        ("cats/a.jpg", 0),
        ("cats/2019/b.jpg", 0),
        ("cats/2019/summer/c.jpg", 0),
        ("dogs/d.jpg", 1),
    ]
    (root / "birds/2020").mkdir(parents=True)
    with pytest.raises(CnnlabError, match=r"the class folder birds/ of .* holds no files"):
        imf.scan(str(root))


def test_grey_and_rgba_become_rgb(tree):
    grey = decode_image(tree / "train/c1/grey.png", 16, "squash")
    assert grey.shape == (3, 16, 16)
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()
    rgba = decode_image(tree / "train/c2/rgba.png", 16, "squash")
    assert rgba.shape == (3, 16, 16)
    assert (rgba[:, :, :6] == 255).all()  # transparent: composited on white
    assert (rgba[:, :, 10:] == np.array([255, 0, 0]).reshape(3, 1, 1)).all()  # opaque red


def test_a_grey_folder_loads_as_one_channel(tree):
    """channels: 1 (an X-ray folder): one channel by luminance, what Pillow's "L" makes of
    each file; a cache of its own beside the RGB one."""
    rgb, grey = imf.load(cfg_of(tree)), imf.load(cfg_of(tree, channels=1))
    assert rgb.train.images.shape[1] == 3 and grey.train.images.shape[1] == 1
    assert torch.equal(rgb.train.targets["label"], grey.train.targets["label"])
    weights = torch.tensor([299, 587, 114]).view(1, 3, 1, 1)  # ITU-R 601, as Pillow's "L"
    luminance = (rgb.train.images.int() * weights).sum(1, keepdim=True) / 1000
    # a JPEG decodes its luma; libjpeg builds round the colour conversion apart (4.09 on one)
    assert (luminance - grey.train.images.int()).abs().max() <= 5
    assert imf.describe(cfg_of(tree, channels=1)).shape == (1, 16, 16)


def test_crop_keeps_the_centre_and_squash_keeps_everything(tmp_path):
    stripes = np.zeros((32, 96, 3), dtype=np.uint8)
    stripes[:, :32, 0] = 255  # red | green | blue thirds
    stripes[:, 32:64, 1] = 255
    stripes[:, 64:, 2] = 255
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    crop = decode_image(tmp_path / "wide.png", 16, "crop")
    assert (crop[1, :, 1:15] == 255).all() and (crop[[0, 2], :, 1:15] == 0).all()
    squash = decode_image(tmp_path / "wide.png", 16, "squash")
    assert (squash[:, :, 0] == np.array([255, 0, 0]).reshape(3, 1)).all()
    assert (squash[:, :, 8] == np.array([0, 255, 0]).reshape(3, 1)).all()
    assert (squash[:, :, 15] == np.array([0, 0, 255]).reshape(3, 1)).all()


def sideways_photo(path: Path) -> None:
    """A portrait photo as a phone stores it: the sensor's rows (landscape, the photo's top
    on the left) and EXIF orientation 6, "turn 90 degrees clockwise to view"."""
    upright = np.zeros((48, 32, 3), dtype=np.uint8)  # tall: red top half, blue bottom
    upright[:24, :, 0] = 255
    upright[24:, :, 2] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # anticlockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)


def test_a_photo_is_read_upright_by_training_and_predict(tmp_path):
    from cnnlab.inference import decoded_batch

    sideways_photo(tmp_path / "portrait.jpg")
    with Image.open(tmp_path / "portrait.jpg") as stored:
        assert stored.size == (48, 32)  # as stored: on its side
    for pixels in (
        decode_image(tmp_path / "portrait.jpg", 16, "squash"),  # image folders and tables
        decoded_batch(tmp_path / "portrait.jpg", 3, (16, 16), "squash")[0][0].mul(255).numpy(),
        decoded_batch(tmp_path / "portrait.jpg", 3, (16, 8), "squash")[0][0].mul(255).numpy(),
        decoded_batch(Image.open(tmp_path / "portrait.jpg"), 3, (16, 16))[0][0].mul(255).numpy(),
    ):
        top, bottom = pixels[:, 1], pixels[:, -2]  # red above, blue below
        assert top[0].min() > 200 and top[2].max() < 60, top
        assert bottom[2].min() > 200 and bottom[0].max() < 60, bottom


def test_an_iphones_heic_photo_is_read_and_without_pillow_heif_named(tmp_path, capsys):
    import pillow_heif

    from cnnlab.data import decoded

    halves = np.zeros((32, 48, 3), dtype=np.uint8)
    halves[:, :24, 0], halves[:, 24:, 2] = 255, 255  # red | blue
    # written through pillow-heif itself: Pillow is not told of HEIC here, cnnlab tells it
    pillow_heif.from_pillow(Image.fromarray(halves)).save(tmp_path / "IMG_0001.HEIC", quality=95)
    pixels = decode_image(tmp_path / "IMG_0001.HEIC", 16, "squash")
    assert pixels[0, :, 1].min() > 200 and pixels[2, :, 14].min() > 200
    assert pixels[2, :, 1].max() < 60 and pixels[0, :, 14].max() < 60
    decoded.heif_opens.cache_clear()
    try:
        with patch.dict(sys.modules, {"pillow_heif": None}):  # as if it were not installed
            decoded.warn_skipped("image_folder", ["cats/IMG_0001.HEIC"])
    finally:
        decoded.heif_opens.cache_clear()
    assert "HEIC photos open with `pip install 'cnnlab[heic]'`" in capsys.readouterr().err


def test_16_bit_and_float_grey_images_span_0_to_255(tmp_path):
    """A microscope's 16-bit PNG and a float TIFF in 0-1: their whole range, not clipped at
    255 (Pillow's own conversion made the first white and the second black)."""
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "wide.png")
    Image.fromarray(ramp).save(tmp_path / "float.tiff")
    want = np.clip(ramp * 255 + 0.5, 0, 255).astype(np.uint8)
    for name in ("wide.png", "float.tiff"):
        with Image.open(tmp_path / name) as im:
            assert im.mode in ("I;16", "F")
        grey = decode_image(tmp_path / name, 64, "squash", "L")[0]
        assert np.abs(grey.astype(int) - want).max() <= 1, name
        assert decode_image(tmp_path / name, 64, "squash").shape == (3, 64, 64)


def test_a_12_bit_cameras_images_span_0_to_255_with_data_bits(tmp_path, monkeypatch, capsys):
    """A 12-bit camera's 0-4095 in 16-bit files: read as 16 bits they kept 16 grey levels,
    near black; `bits: 12` spreads them over 0-255, for files and uint16 arrays alike."""
    from cnnlab.inference import decoded_batch

    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    raw = (ramp * 4095).round().astype(np.uint16)
    Image.fromarray(raw).save(tmp_path / "camera.png")
    dark = decode_image(tmp_path / "camera.png", 64, "squash", "L")[0]
    assert dark.max() <= 16 and len(np.unique(dark)) <= 17  # as 16 bits: near black
    grey = decode_image(tmp_path / "camera.png", 64, "squash", "L", bits=12)[0]
    want = np.clip(ramp * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(grey.astype(int) - want).max() <= 1
    from_file = decoded_batch(tmp_path / "camera.png", 1, (64, 64), "squash", bits=12)[0]
    from_array = decoded_batch(raw, 1, (64, 64), bits=12)[0]  # a uint16 array: scaled as its file
    assert torch.allclose(from_file, torch.from_numpy(want / 255).float()[None, None], atol=0.005)
    assert torch.allclose(from_array, from_file, atol=0.005)
    as_16_bits = torch.from_numpy(raw / 65535).float()[None, None]
    assert torch.allclose(decoded_batch(raw, 1, (64, 64))[0], as_16_bits, atol=1e-6)
    assert "predict: warning" not in capsys.readouterr().err  # none goes above 4,095
    # a brighter camera's image, given to a 12-bit run: clipped, as loading says of its own
    bright = (ramp * 7434).round().astype(np.uint16)
    Image.fromarray(bright).save(tmp_path / "bright.png")
    decoded_batch([tmp_path / "camera.png", tmp_path / "bright.png"], 1, (64, 64), bits=12)
    assert capsys.readouterr().err == (
        f"predict: warning: 1 of 2 images (first: {tmp_path / 'bright.png'}) has values above "
        "4,095, the most the run's data.bits: 12 keeps: clipped to white (the largest, 7,434, "
        "needs 13 bits); a camera of more bits needs a run trained with data.bits set to them\n"
    )
    decoded_batch(np.stack([raw, bright])[:, None], 1, (64, 64), bits=12)  # a uint16 batch
    assert "1 of 2 images (first: image 1) has values above 4,095" in capsys.readouterr().err
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("a", "b"):  # an image folder passes its recipe's bits to the decoder
        (tmp_path / "plates" / name).mkdir(parents=True)
        Image.fromarray(raw).save(tmp_path / "plates" / name / "1.png")
    for bits, lo, hi in ((16, 10, 16), (12, 240, 255)):  # the brightest row, resized to 16 px
        _, pixels, _ = imf.cached_pixels(cfg_of(tmp_path / "plates", bits=bits, channels=1))
        assert lo <= int(pixels[:].max()) <= hi
        warned = "is 16-bit but its values reach only 4,095 (12 bits)" in capsys.readouterr().err
        assert warned == (bits == 16)
    with pytest.raises(ValueError, match="bits"):
        cfg_of(tmp_path, bits=20)


def test_validation_is_carved_stratified_from_train(tree):
    cfg = cfg_of(tree)
    splits = prepare_splits(cfg, seed=3, needed={"label"}, device=torch.device("cpu"))
    val = torch.bincount(splits.val.targets["label"], minlength=10).tolist()
    assert val == [round(n * 0.2) for n in train_counts()]
    assert len(splits.train) + len(splits.val) == sum(train_counts())
    assert len(splits.test) == 20  # val/ is the test set
    info = describe(cfg)
    assert info.shape == (3, 16, 16) and info.targets == {"label": CLASSES}
    assert info.validation == "carved" and info.sizes["test"] == 20


def test_a_single_class_folder_carves_the_same_test_set_for_every_seed(tree, tmp_path):
    single = tree / "train"  # c0..c9 directly below
    cfg = cfg_of(single)
    a = prepare_splits(cfg, seed=0, needed={"label"}, device=torch.device("cpu"))
    b = prepare_splits(cfg, seed=1, needed={"label"}, device=torch.device("cpu"))
    assert torch.equal(a.test.images, b.test.images)
    test = torch.bincount(a.test.targets["label"], minlength=10).tolist()
    assert test == [round(n * 0.2) for n in train_counts()]
    assert not torch.equal(a.val.images, b.val.images)  # validation follows the run's seed


# ------------------------------------------------------------------------ errors


def test_errors_are_one_line(tree, tmp_path):
    with pytest.raises(ValueError, match="data.root: image_folder needs the folder"):
        imf.ImageFolderConfig()
    with pytest.raises(CnnlabError, match="no such folder; expected root/train"):
        imf.locate(str(tmp_path / "nowhere"))
    (tree / "val/extra").mkdir()
    (tree / "val/c9").rename(tree / "val/zz")
    with pytest.raises(CnnlabError) as err:
        imf.scan(str(tree))
    msg = str(err.value)
    assert "\n" not in msg
    assert "only in train/: ['c9']; only in val/: ['extra', 'zz']" in msg


def class_folders(root: Path, classes: list[str], count: int = 6) -> Path:
    """root/<class>/ with `count` 20x20 PNGs each."""
    rng = np.random.default_rng(1)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for j in range(count):
            _image(rng, 20, 20).save(root / cls / f"{j}.png")
    return root


def no_runs(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_one_class_folder_is_refused_before_decoding_unless_colorizing(tmp_path, monkeypatch):
    """A folder with one class trained to loss 0 and accuracy 1 and then named that class
    with probability 1 for every image: now the run stops, naming the folder and the class,
    before any pixel is decoded and any run folder made. Colorizing reads no class."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = class_folders(tmp_path / "my_images", ["dots"])
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(folder_recipe(root, tmp_path / "runs"))
    assert str(err.value) == (
        f"image_folder: {root} holds one class folder, dots/, and a classifier needs two or "
        "more; add a folder of images for each other class beside it (one sub-folder per class)"
    )
    assert no_runs(tmp_path / "runs") and not (tmp_path / "cache").exists()
    with pytest.raises(CnnlabError, match=r"^image_folder: train/ and val/ of .* hold one class"):
        describe(cfg_of(class_folders(tmp_path / "given", ["train/dots", "val/dots"])))
    colour = imf.load(cfg_of(root, colorize={"colours": 4}))
    assert len(colour.train) + len(colour.test) == 6


def test_a_class_folder_without_a_readable_image_is_refused_naming_it(tmp_path, monkeypatch):
    """zebra/readme.txt made a class zebra with no image, the only sign a "1 file skipped"
    warning; a class folder of files that all fail to decode is refused the same way, by
    its path (train/<class>/ where val/ is the test set), from a reused cache too."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = class_folders(tmp_path / "my_images", ["dots", "noise", "stripes"])
    (root / "zebra").mkdir()
    (root / "zebra/readme.txt").write_text("zebra photos to come")
    for attempt in ("decoded", "cache reused"):
        with pytest.raises(CnnlabError) as err:
            cnnlab.train(folder_recipe(root, tmp_path / "runs"))
        assert str(err.value) == (
            f"image_folder: the class folder zebra/ of {root} holds no readable image: its 1 "
            "file (readme.txt) is not an image or cannot be decoded; add its images or remove "
            "the folder"
        ), attempt
        assert no_runs(tmp_path / "runs")
    (root / "zebra/2019").mkdir()
    (root / "zebra/2019/broken.jpg").write_bytes((root / "dots/0.png").read_bytes()[:40])
    with pytest.raises(CnnlabError, match=r"its 2 files \(readme.txt, 2019/broken.jpg\) are not"):
        imf.load(cfg_of(root))
    given = class_folders(tmp_path / "given", ["train/a", "train/b", "val/a", "val/b"])
    for image in (given / "train/b").iterdir():
        image.unlink()
    (given / "train/b/notes.txt").write_text("moved")  # val/b/ still has its images
    with pytest.raises(CnnlabError, match=r"the class folder train/b/ of .*given holds no read"):
        imf.load(cfg_of(given))


# ------------------------------------------------------------------------ the cache


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tree, tmp_path, capsys):
    cfg = cfg_of(tree)
    first = imf.load(cfg)
    assert "decoded" in capsys.readouterr().err
    (npy,) = (tmp_path / "cache" / "cnnlab" / "image_folder").glob("*/images.npy")
    before = npy.stat()
    second = imf.load(cfg)
    err = capsys.readouterr().err
    assert f"image_folder: cache reused ({npy})" in err
    after = npy.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert torch.equal(first.train.images, second.train.images)
    assert not list(tree.rglob("*.npy")) and not list(tree.rglob("*.json"))

    changed = tree / "train/c5/000.jpg"
    Image.new("RGB", (40, 30), (0, 0, 0)).save(changed)
    os.utime(changed, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
    third = imf.load(cfg)
    assert "decoded" in capsys.readouterr().err
    assert npy.stat().st_ino != before.st_ino
    assert not torch.equal(first.train.images, third.train.images)
    # squash is another cache, never the crop one
    imf.load(cfg_of(tree, resize="squash"))
    assert len(list(npy.parent.parent.iterdir())) == 2


# ------------------------------------------------------------------------ end to end


def folder_recipe(tree: Path, out: Path, name: str = "folder_tiny", epochs: int = 1) -> dict:
    """A recipe of seconds on the generated tree: 16 px, two blocks of four filters."""
    return {
        "name": name,
        "output_dir": str(out),
        "data": {"source": "image_folder", "root": str(tree), "image_size": 16},
        "model": {"backbone": "cnn", "blocks": 2, "base_filters": 4, "filter_org": "same"},
        "tasks": {"cls": {"type": "classification", "target": "label"}},
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "progress": False,
            "device": "cpu",
            "precision": "fp32",
            "threads": 1,
            "report": False,
        },
    }


def test_cli_train_then_eval(tree, tmp_path):
    recipe = folder_recipe(tree, tmp_path / "runs")
    recipe["train"]["monitor"] = "val.cls.accuracy"
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = run_cli("train", str(path), env=env)
    assert out.returncode == 0, out.stderr
    assert "4 files skipped" in out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    split_of = {}  # splits.csv: each file once, val carved from train/, val/ the test set
    for line in (run / "splits.csv").read_text().splitlines()[1:]:
        split, file = line.split(",")
        split_of[file] = split
    assert len(split_of) == sum(train_counts()) + 20
    assert {s for f, s in split_of.items() if f.startswith("val/")} == {"test"}
    assert {s for f, s in split_of.items() if f.startswith("train/")} == {"train", "val"}
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.npy")}
    out = run_cli("eval", str(run), env=env)
    assert out.returncode == 0, out.stderr
    assert cached and all(p.stat().st_mtime_ns == t for p, t in cached.items())  # reused
    # a trained run's data read again: its warnings again, not how it was read
    assert "4 files skipped" in out.stderr and "cache reused" not in out.stderr
    assert "test.cls.accuracy" in out.stdout


def test_the_inat_recipe_loads():
    recipe = load_recipe(ROOT / "cnnlab/recipes/inat_scratch.yaml", ["data.root=/tmp"])
    assert recipe.data.source == "image_folder" and recipe.data.image_size == 224
    assert recipe.data.val_fraction == 0.2
    assert recipe.model.block_filters() == [32] * 5 and recipe.model.activation == "mish"
