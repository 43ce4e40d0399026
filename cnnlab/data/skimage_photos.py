"""Random square crops of the colour photographs scikit-image ships in its wheel.

Why: the colorization demo (seed 001 colorizes 32x32 CIFAR-10 images) needs natural colour
images, and CIFAR-10 cannot always be downloaded. scikit-image's own photographs are on disk
wherever it is installed, so this source needs no network and no `data.root` (`root` and
`val_fraction` are ignored). Only real colour photographs are used (not camera, colorwheel,
logo, horse, ...): astronaut, chelsea, coffee, rocket, hubble_deep_field,
immunohistochemistry, retina and the left view of stereo_motorcycle. The files are read
from scikit-image's data folder with Pillow, the same pixels `skimage.data.<name>()` gives,
so scikit-image's downloader is never reached.

Splits that never share a pixel: every photo is cut into three horizontal bands, train the
top 70 % of its rows, val the next 15 %, test the last 15 %, and each split's crops come
from its own band only. Each band is resized on its own (antialiased; only upwards, only
when the smallest band is under 2 * image_size rows), so no resize blends rows across a
band edge. A crop's side is U(min_scale, max_scale) times the shorter side of the photo's
smallest band, the same for all three splits (a share of each split's own band would make
train crops ~5x larger in the scene than val and test crops); it is placed uniformly in
its band and resized to image_size x image_size (bilinear, antialiased).

Crops go to the photos in turn (crop i from photo i mod 8), so every photo has the same
share of every split; positions and sizes are drawn from `crop_seed` and the split alone,
so the same seed gives the same bytes. Target: `photo`, the index of the photograph.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, model_validator

from cnnlab.data.augment import LabelMap
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet, Source
from cnnlab.errors import CnnlabError

# class name -> its file in scikit-image's data folder; all ship in the wheel (0.26)
PHOTOS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
    "motorcycle": "motorcycle_left.png",  # skimage.data.stereo_motorcycle()[0]
}
NAMES = list(PHOTOS)
SPLITS = ("train", "val", "test")
CUTS = (0.70, 0.85)  # band edges as shares of a photo's height: train | val | test
BAND_CROPS = 2  # the smallest band is at least this many image_size crops tall
Shapes = Mapping[str, tuple[int, int]]  # split -> (rows, columns) of its band, resized
WHY_UPRIGHT = "a photograph has its sky above; {}, it teaches colours in the wrong places"


class SkimagePhotosConfig(DataSection):
    """`data:` of a recipe on scikit-image's photographs. `root` and `val_fraction` are
    ignored: the photos come with scikit-image, and validation is the photos' own band."""

    source: Literal["skimage_photos"] = "skimage_photos"
    # a mirror or a small shift is still a photograph of the same thing, coloured the same way
    label_maps: ClassVar[dict[str, LabelMap | None]] = {"hflip": None, "translate": None}
    refused: ClassVar[dict[str, str]] = {
        "vflip": WHY_UPRIGHT.format("upside down"),
        "rot90": WHY_UPRIGHT.format("turned"),
    }
    image_size: int = Field(32, ge=8, le=256)  # side of every crop, in pixels
    train_images: int = Field(8000, ge=10)  # crops in each split
    val_images: int = Field(1000, ge=10)  # crops in the validation split
    test_images: int = Field(1000, ge=10)  # crops in the test split
    crop_seed: int = Field(0, ge=0)  # where the crops lie; the same seed, the same bytes
    # a crop's side as a share of the shorter side of the photo's smallest band
    min_scale: float = Field(0.15, gt=0.0, le=1.0)
    max_scale: float = Field(0.6, gt=0.0, le=1.0)  # the largest crop, as min_scale

    @model_validator(mode="after")
    def _scales_ordered(self) -> SkimagePhotosConfig:
        if self.min_scale > self.max_scale:
            raise ValueError(
                f"data.min_scale ({self.min_scale}) must not exceed data.max_scale "
                f"({self.max_scale})"
            )
        return self

    def count(self, split: str) -> int:
        """Crops in the split."""
        return {"train": self.train_images, "val": self.val_images, "test": self.test_images}[split]


# ------------------------------------------------------------------------------ files


def _data_folder() -> Path:
    """scikit-image's data folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise CnnlabError("skimage_photos needs scikit-image: pip install scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def locate(root: str | None = None, allow_download: bool = False) -> dict[str, Path]:
    """{photo name: its file} in scikit-image's data folder. `root` and `allow_download`
    are ignored: the photos ship with scikit-image and nothing is downloaded."""
    folder = _data_folder()
    files = {name: folder / file for name, file in PHOTOS.items()}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise CnnlabError(
            f"skimage_photos: {folder} lacks {', '.join(missing)} (this scikit-image does not "
            "ship its photographs). Fix: pip install --force-reinstall scikit-image"
        )
    return files


def read_photo(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB of one photograph."""
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # truncated, corrupt, not an image
        raise CnnlabError(f"skimage_photos: {path}: unreadable ({err})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------ geometry


def bands(height: int) -> dict[str, tuple[int, int]]:
    """Rows [top, bottom) of each split's band of a photo `height` rows tall: train the top
    70 %, val the next 15 %, test the rest. Adjacent and disjoint, covering every row."""
    edges = [0, *(round(share * height) for share in CUTS), height]
    return {split: (edges[i], edges[i + 1]) for i, split in enumerate(SPLITS)}


def band_shapes(height: int, width: int, image_size: int) -> dict[str, tuple[int, int]]:
    """(rows, columns) of each band after the resize: all bands of a photo by one factor,
    >= 1, that makes the smallest band at least BAND_CROPS * image_size rows tall."""
    rows = {split: bottom - top for split, (top, bottom) in bands(height).items()}
    if min(rows.values()) < 1:
        raise CnnlabError(f"skimage_photos: a photo of {height} rows is too short for 3 bands")
    factor = max(1.0, BAND_CROPS * image_size / min(rows.values()))
    return {split: (round(r * factor), round(width * factor)) for split, r in rows.items()}


def crop_boxes(cfg: SkimagePhotosConfig, split: str, shapes: Sequence[Shapes]) -> torch.Tensor:
    """(N, 4) long (photo, top, left, side) of the split's crops, in the coordinates of the
    photo's resized band for that split. shapes[p]: photo p's band_shapes. Photo p gets
    crops p, p + P, p + 2P, ... (P photos); sizes and places come from crop_seed and the
    split alone."""
    n = cfg.count(split)
    rng = np.random.default_rng([cfg.crop_seed, SPLITS.index(split)])
    photo = np.arange(n) % len(shapes)
    ref = np.array([min(min(hw) for hw in s.values()) for s in shapes])[photo]
    rows = np.array([s[split][0] for s in shapes])[photo]
    cols = np.array([s[split][1] for s in shapes])[photo]
    u = rng.random((n, 3)).T  # row by row: more crops keep the first ones as they were
    share = cfg.min_scale + (cfg.max_scale - cfg.min_scale) * u[0]
    side = np.clip(np.rint(share * ref), 1, ref).astype(np.int64)
    top = np.floor(u[1] * (rows - side + 1)).astype(np.int64)
    left = np.floor(u[2] * (cols - side + 1)).astype(np.int64)
    return torch.from_numpy(np.stack([photo, top, left, side], axis=1))


# ------------------------------------------------------------------------------ pixels


def _resized_bands(photo: torch.Tensor, image_size: int) -> dict[str, torch.Tensor]:
    """uint8 (3, rows, columns) of each band, each resized on its own."""
    shapes = band_shapes(photo.shape[1], photo.shape[2], image_size)
    out = {}
    for split, (top, bottom) in bands(photo.shape[1]).items():
        band = photo[None, :, top:bottom]
        if band.shape[2:] != shapes[split]:
            band = F.interpolate(band, size=shapes[split], mode="bilinear", antialias=True)
        out[split] = band[0]
    return out


def _cut(band: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (K, 3, size, size): the boxes (top, left, side) of one band, resized; crops of
    one side are gathered and resized together (uint8 in and out, rounded)."""
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.uint8)
    sides = boxes[:, 2]
    for side in sides.unique().tolist():
        which = torch.nonzero(sides == side).flatten()
        span = torch.arange(side)
        rows = boxes[which, 0, None] + span  # (k, side)
        cols = boxes[which, 1, None] + span
        patches = band[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)  # (k, 3, s, s)
        if side != size:
            patches = F.interpolate(patches, size=(size, size), mode="bilinear", antialias=True)
        out[which] = patches
    return out


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded: the cut is ~1,000 small ops, where threads only add
    wake-ups; on a busy 2-core machine they made 8,000 crops take 10-30 s instead of 0.5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cut_crops(photos: Sequence[torch.Tensor], cfg: SkimagePhotosConfig) -> dict[str, ImageSet]:
    """Each split's crops of uint8 (3, H, W) photos, with target `photo` (their index)."""
    shapes = [band_shapes(p.shape[1], p.shape[2], cfg.image_size) for p in photos]
    boxes = {split: crop_boxes(cfg, split, shapes) for split in SPLITS}
    size = cfg.image_size
    images = {s: torch.empty((cfg.count(s), 3, size, size), dtype=torch.uint8) for s in SPLITS}
    with _one_thread():
        for p, photo in enumerate(photos):
            for split, band in _resized_bands(photo, size).items():
                mine = torch.nonzero(boxes[split][:, 0] == p).flatten()
                images[split][mine] = _cut(band, boxes[split][mine, 1:], size)
    return {s: ImageSet(images[s], {"photo": boxes[s][:, 0].clone()}) for s in SPLITS}


# ------------------------------------------------------------------------------ source


def describe(cfg: SkimagePhotosConfig) -> DataInfo:
    """Shape, classes and sizes from the config (the files are only checked to exist)."""
    locate()
    train, test = cfg.train_images, cfg.test_images
    return DataInfo(
        source="skimage_photos",
        shape=(3, cfg.image_size, cfg.image_size),
        targets={"photo": list(NAMES)},
        sizes={
            "train": min(train, cfg.train_subset) if cfg.train_subset else train,
            "val": cfg.val_images,
            "test": min(test, cfg.test_subset) if cfg.test_subset else test,
        },
        validation="given",
    )


def load(cfg: SkimagePhotosConfig) -> Dataset:
    """uint8 (N, 3, image_size, image_size) crops of the three splits; target: photo."""
    files = locate()
    splits = cut_crops([read_photo(files[name]) for name in NAMES], cfg)
    return Dataset(
        name="skimage_photos",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classes={"photo": list(NAMES)},
    )


SOURCE = Source(
    config=SkimagePhotosConfig,
    describe=describe,
    load=load,
    locate=locate,
    doc="random crops of scikit-image's colour photographs (offline; colorization demo)",
    stats=None,  # mean/std from a streaming pass over the run's training split
)
