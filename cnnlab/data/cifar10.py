"""CIFAR-10 from the official python version: found locally, or downloaded with a checksum.

Where: the folder someone named (cnnlab/data/files.py), else the cnnlab cache (downloading
`cifar-10-python.tar.gz` into it, checked against its published MD5, when it is missing).

The batches are pickles, and unpickling can run any code the file names. They are read by
an unpickler that builds numpy arrays and nothing else: a file asking for anything more is
refused before it runs. The per-file MD5s are checked too; files that differ (a copy made
by hand, the tests' small ones) are loaded through the same safe reader after one warning.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from cnnlab.data.augment import UNCHANGED, LabelMap
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet, Source
from cnnlab.data.files import (
    cache_dir,
    download_checked,
    extract_tar,
    named_dir,
    search,
    why_not_here,
)
from cnnlab.data.lines import warn
from cnnlab.errors import CnnlabError

# The official release (https://www.cs.toronto.edu/~kriz/cifar.html) and its published MD5s,
# written out so that reading a recipe never has to import torchvision (seconds).
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
META = "batches.meta"
FILES = [*TRAIN, *TEST, META]
CACHE_NAME = "cifar10"
PIXELS = 3 * 32 * 32


class CIFAR10Config(DataSection):
    """`data:` of a CIFAR-10 recipe: the shared fields, nothing of its own yet."""

    source: Literal["cifar10"] = "cifar10"
    # natural images: flipped, turned or shifted, they show the same class (augment.py)
    label_maps: ClassVar[dict[str, LabelMap | None]] = UNCHANGED


# ------------------------------------------------------------------------ safe unpickling


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as a Python 3 pickle of protocol 2 uses it for bytes: latin1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _reconstruct() -> Any:
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return core.multiarray._reconstruct


# What a batch may name: numpy's array reconstruction, and bytes as a Python 3 pickle of
# protocol 2 writes them. The official files (Python 2 pickles) need only the numpy ones.
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class SafeUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes and numpy arrays; refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise CnnlabError(
            f"{self.path}: refuses to load {module}.{name} (not CIFAR-10 data; the file may be "
            "tampered with). Fix: delete the folder and fetch the official files again "
            "(`cnnlab fetch cifar10`)"
        )


def read_pickle(path: Path) -> dict[str, Any]:
    """A batch or batches.meta as a dict with str keys (bytes keys of Python 2 decoded)."""
    try:
        with open(path, "rb") as f:
            raw = SafeUnpickler(f, path).load()
    except CnnlabError:
        raise
    except Exception as err:  # truncated, not a pickle, a refused _codecs call
        raise CnnlabError(f"{path}: not a readable CIFAR-10 batch ({err})") from None
    if not isinstance(raw, dict):
        raise CnnlabError(f"{path}: holds a {type(raw).__name__}, not a CIFAR-10 dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------- files


def _missing(folder: Path) -> list[str]:
    return [name for name in FILES if not (folder / name).is_file()]


def _find_in(folder: Path) -> dict[str, Path] | None:
    """The seven files in `folder` itself or in its `cifar-10-batches-py`; None if missing."""
    for base in (folder, folder / FOLDER):
        if not _missing(base):
            return {name: base / name for name in FILES}
    return None


def _not_in_named(folder: Path, name: str) -> CnnlabError:
    """One error naming the folder someone named and what it lacks."""
    lacking = [_missing(folder), _missing(folder / FOLDER)]
    return CnnlabError(
        f"CIFAR-10 is not in {folder}, the folder {name} names "
        f"({why_not_here(folder, lacking)}). "
        f"Fix: put {FOLDER} (data_batch_1..5, test_batch, batches.meta) there, point {name} "
        "at the folder that holds it, or unset it to let cnnlab find or download the data"
    )


def download(target: Path) -> None:
    """Fetch the archive into `target` (MD5 checked) and unpack it there; drop the archive."""
    archive = download_checked(ARCHIVE, MIRRORS, target, ARCHIVE_MD5)
    extract_tar(archive, target)
    archive.unlink(missing_ok=True)


def locate(root: str | None, allow_download: bool = True) -> dict[str, Path]:
    """Paths of the seven files, in the documented search order."""
    cache = cache_dir(CACHE_NAME)
    found, reason = search(root, _find_in, [cache], download, allow_download)
    if found:
        return found
    if named_dir(root):
        raise _not_in_named(*named_dir(root))
    raise CnnlabError(
        f"CIFAR-10 not found (searched {cache}; {reason}). Fix: run `cnnlab fetch cifar10` "
        f"where the internet is reachable, or put {FOLDER} in a folder and set data.root or "
        "$CNNLAB_DATA to it"
    )


def warn_unofficial(files: dict[str, Path]) -> None:
    """One line on stderr naming the files whose MD5 is not the published one."""
    differ = []
    for name, path in files.items():
        if hashlib.md5(path.read_bytes()).hexdigest() != MD5[name]:
            differ.append(name)
    if differ:
        folder = next(iter(files.values())).parent
        warn(
            f"warning: {folder}: not the official CIFAR-10 files (checksums differ): "
            f"{', '.join(differ)}; loading them with the safe reader"
        )


def read_meta(path: Path) -> tuple[list[str], int]:
    """(class names, images per batch) from batches.meta."""
    meta = read_pickle(path)
    names, per_batch = meta.get("label_names"), meta.get("num_cases_per_batch")
    if not isinstance(names, list) or len(names) != 10 or not isinstance(per_batch, int):
        raise CnnlabError(
            f"{path}: expected label_names (10 names) and num_cases_per_batch; "
            "not the CIFAR-10 batches.meta"
        )
    return [_text(n) for n in names], per_batch


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one batch, shapes checked."""
    batch = read_pickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = "nothing" if data is None else getattr(data, "dtype", type(data).__name__)
        raise CnnlabError(f"{path}: data must be a uint8 (N, {PIXELS}) array, got {got}")
    if data.shape[1] != PIXELS:
        raise CnnlabError(f"{path}: data has {data.shape[1]} values per image, not {PIXELS}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise CnnlabError(f"{path}: labels must be a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise CnnlabError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CnnlabError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


# ------------------------------------------------------------------------------ source


# batches.meta's label_names in the official archive: what `declared` answers without files
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def describe(cfg: CIFAR10Config) -> DataInfo:
    """Classes and sizes from batches.meta: no pixel is read."""
    files = locate(cfg.root)
    names, per_batch = read_meta(files[META])
    return _info(cfg, names, per_batch)


def declared(cfg: CIFAR10Config) -> DataInfo:
    """The official format's shapes and classes, with no file read: 5 + 1 batches of 10,000."""
    return _info(cfg, CLASSES, 10_000)


def _info(cfg: CIFAR10Config, names: list[str], per_batch: int) -> DataInfo:
    sizes = {}
    for split, count, subset in (
        ("train", len(TRAIN) * per_batch, cfg.train_subset),
        ("test", len(TEST) * per_batch, cfg.test_subset),
    ):
        sizes[split] = min(count, subset) if subset else count
    return DataInfo(
        source="cifar10",
        shape=(3, 32, 32),
        targets={"label": names},
        sizes=sizes,
        validation="carved",
    )


def load(cfg: CIFAR10Config, allow_download: bool = True) -> Dataset:
    """The 50k/10k splits as uint8 (N, 3, 32, 32); target: label."""
    files = locate(cfg.root, allow_download)
    warn_unofficial(files)
    names, _ = read_meta(files[META])
    splits = {}
    for split, batches in (("train", TRAIN), ("test", TEST)):
        parts = [read_batch(files[name]) for name in batches]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        splits[split] = ImageSet(images, {"label": labels})
    return Dataset(
        name="cifar10",
        train=splits["train"],
        test=splits["test"],
        classes={"label": names},
    )


SOURCE = Source(
    config=CIFAR10Config,
    describe=describe,
    load=load,
    locate=locate,
    doc="CIFAR-10 32x32 colour, 10 classes",
    stats=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    declares=declared,
)
