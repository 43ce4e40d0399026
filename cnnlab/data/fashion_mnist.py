"""Fashion-MNIST from its idx files: found locally, or downloaded with checksums.

Where: the folder someone named (cnnlab/data/files.py), else the folder Debian's
`dataset-fashion-mnist` installs, then the cnnlab cache (downloading into it from the
official mirror, each file checked against its published MD5, when the files are missing).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from cnnlab.data.augment import UNCHANGED, LabelMap
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet, Source, mean_ink
from cnnlab.data.decoded import write_atomic
from cnnlab.data.files import cache_dir, download_checked, named_dir, search, why_not_here
from cnnlab.errors import CnnlabError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# torchvision's layout and a plain folder are both accepted below a root.
SUBDIRS = ("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw")
CACHE_NAME = "fashion-mnist"
# The dataset's published class names, label 0 to 9: written out so that training never
# imports torchvision (seconds at every start) just to name them.
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def official() -> type:
    """torchvision's record of the dataset: mirrors and the archives' MD5s ("<file>.gz" ->
    md5). Imported on use, for a download only: importing torchvision takes seconds."""
    from torchvision.datasets import FashionMNIST

    return FashionMNIST


class FashionMNISTConfig(DataSection):
    """`data:` of a Fashion-MNIST recipe: the shared fields, nothing of its own yet."""

    source: Literal["fashion_mnist"] = "fashion_mnist"
    # natural images: flipped, turned or shifted, they show the same class (augment.py)
    label_maps: ClassVar[dict[str, LabelMap | None]] = UNCHANGED


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _check_magic(path: Path, data: bytes) -> int:
    """The number of dimensions an idx header announces; raises if it is no uint8 idx file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CnnlabError(f"{path} is not an idx file of uint8 data; the download may be corrupt")
    return data[3]


def read_header(path: Path) -> list[int]:
    """The dimensions an idx file's header announces, e.g. [60000, 28, 28]; reads (and for
    .gz decompresses) only the first bytes of the file."""
    with _open(path) as f:
        head = f.read(4)
        ndim = _check_magic(path, head)
        dims = f.read(4 * ndim)
    if len(dims) != 4 * ndim:
        raise CnnlabError(f"{path}: the idx header is cut short; the download may be corrupt")
    return [int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim)]


def read_idx(path: Path) -> torch.Tensor:
    """Parse an idx file (gzipped or not): big-endian header, then a uint8 array.

    A gzipped file is decompressed once into the cnnlab cache (`decoded_path`) and read back
    from there: the training images took 0.23 s to decompress on the 2-core EPYC and 0.01 s
    to read decoded, at every command and every test that trains on Fashion-MNIST."""
    cached = decoded_path(path) if path.suffix == ".gz" else None
    if cached is not None and cached.is_file():
        with contextlib.suppress(OSError, ValueError):  # cut short or unreadable: decode again
            return torch.from_numpy(np.load(cached, allow_pickle=False))
    tensor = _parse_idx(path)
    if cached is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written costs time only
            _replace_decoded(cached, tensor.numpy())
    return tensor


def _parse_idx(path: Path) -> torch.Tensor:
    with _open(path) as f:
        data = f.read()
    ndim = _check_magic(path, data)
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise CnnlabError(
            f"{path}: header promises {expected} bytes, file holds {len(data) - offset}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
    return torch.from_numpy(array.copy())


def decoded_path(path: Path) -> Path:
    """Where the decoded array of a gzipped idx file is cached: named for the file's path
    and for its size and mtime, so a file replaced in place is decoded again."""
    stat = path.stat()
    where = _digest(str(path.resolve()))
    return (
        cache_dir(CACHE_NAME)
        / "decoded"
        / f"{path.stem}-{where}-{_digest(stat.st_size, stat.st_mtime_ns)}.npy"
    )


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _replace_decoded(cached: Path, array: np.ndarray) -> None:
    """Write the decoded array, and remove what was cached for an older version of the file."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, lambda f: np.save(f, array, allow_pickle=False))
    older = cached.name.rsplit("-", 1)[0]
    for stale in cached.parent.glob(f"{older}-*.npy"):
        if stale != cached:
            stale.unlink(missing_ok=True)


def _idx_file(base: Path, stem: str) -> Path | None:
    """`base/stem` or `base/stem.gz`, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (base / name).is_file():
            return base / name
    return None


def _find_in(folder: Path) -> dict[str, Path] | None:
    """The four files in one folder below `folder` (plain or .gz), or None if any is missing."""
    for sub in SUBDIRS:
        found = {key: _idx_file(folder / sub, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return {key: path for key, path in found.items() if path}
    return None


def _not_in_named(folder: Path, name: str) -> CnnlabError:
    """One error naming the folder someone named and what it lacks."""
    lacking = [
        [f"{stem}[.gz]" for stem in FILES.values() if not _idx_file(folder / sub, stem)]
        for sub in SUBDIRS
    ]
    return CnnlabError(
        f"Fashion-MNIST is not in {folder}, the folder {name} names "
        f"({why_not_here(folder, lacking)}). "
        f"Fix: put the four idx files there (plain or .gz), point {name} at the folder that "
        "holds them, or unset it to let cnnlab find or download the data"
    )


def download(
    target: Path, mirrors: list[str] | None = None, md5: dict[str, str] | None = None
) -> None:
    """Fetch the four archives into `target`, verifying each MD5; partial files never stay.
    Mirrors and MD5s default to the official ones."""
    mirrors = list(official().mirrors) if mirrors is None else mirrors
    md5 = dict(official().resources) if md5 is None else md5
    for stem in FILES.values():
        download_checked(stem + ".gz", mirrors, target, md5[stem + ".gz"])


def locate(root: str | None, allow_download: bool = True) -> dict[str, Path]:
    """Paths of the four idx files, in the documented search order."""
    dirs = [SYSTEM_DIR, cache_dir(CACHE_NAME)]
    found, reason = search(root, _find_in, dirs, download, allow_download)
    if found:
        return found
    if named_dir(root):
        raise _not_in_named(*named_dir(root))
    searched = ", ".join(str(d) for d in dirs)
    raise CnnlabError(
        f"Fashion-MNIST not found (searched {searched}; {reason}). Fix: `sudo apt-get install "
        "dataset-fashion-mnist`, or put the four idx files in a folder and set data.root "
        "or $CNNLAB_DATA to it"
    )


def describe(cfg: FashionMNISTConfig) -> DataInfo:
    """Shapes and sizes from the four idx headers: no pixel is read."""
    files = locate(cfg.root)
    sizes, shape = {}, (1, 0, 0)
    for split, subset in (("train", cfg.train_subset), ("test", cfg.test_subset)):
        images = read_header(files[f"{split}_images"])
        labels = read_header(files[f"{split}_labels"])
        if len(images) != 3 or labels != images[:1]:
            raise CnnlabError(f"{files[f'{split}_images']}: images and labels do not match")
        shape = (1, images[1], images[2])
        sizes[split] = min(images[0], subset) if subset else images[0]
    return DataInfo(
        source="fashion_mnist",
        shape=shape,
        targets={"label": list(CLASSES), "ink": None},
        sizes=sizes,
        validation="carved",
    )


def declared(cfg: FashionMNISTConfig) -> DataInfo:
    """The official files' shapes and classes, with none of them read: 60,000 + 10,000."""
    sizes = {"train": 60_000, "test": 10_000}
    for split, subset in (("train", cfg.train_subset), ("test", cfg.test_subset)):
        sizes[split] = min(sizes[split], subset) if subset else sizes[split]
    targets = {"label": list(CLASSES), "ink": None}
    return DataInfo("fashion_mnist", (1, 28, 28), targets, sizes, "carved")


def load(root: str | None = None, allow_download: bool = True) -> Dataset:
    """The 60k/10k splits as uint8 (N, 1, 28, 28); targets: label (stored), ink (derived)."""
    files = locate(root, allow_download)
    splits = {}
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"])
        labels = read_idx(files[f"{split}_labels"]).long()
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise CnnlabError(f"{files[f'{split}_images']}: images and labels do not match")
        splits[split] = ImageSet(images.unsqueeze(1), {"label": labels})
    return Dataset(
        name="fashion_mnist",
        train=splits["train"],
        test=splits["test"],
        classes={"label": list(CLASSES)},
        derived={"ink": mean_ink},
    )


SOURCE = Source(
    config=FashionMNISTConfig,
    describe=describe,
    load=lambda cfg: load(cfg.root),
    locate=locate,
    doc="Fashion-MNIST 28x28 grayscale, 10 classes + ink",
    declares=declared,
)
