"""Images that stay on disk: a memory-mapped uint8 .npy file read by batch index.

A split of a set larger than memory holds `MappedImages` where an in-memory one holds a
uint8 tensor (N, C, H, W): the same shape, length, indexing (an int, a slice, an index
tensor) and `.to(device)`, but only the rows asked for are read, into a fresh tensor on
the device the split was moved to. `subset` composes an index, so carving train, val and
test copies nothing. Every process of a torchrun job maps the one file; the page cache
is shared between them and the kernel reclaims it under pressure.

Reading: the mapping is opened with MADV_RANDOM (a fault reads its page, not a readahead
window of neighbours a random batch will not use), and each batch first asks for all of
its rows with MADV_WILLNEED, so the disk sees them at once rather than one page fault
after another; torch's index_select then copies them without holding the GIL, while
the training thread computes (`read_ahead`).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

AHEAD = 3  # batches read in the background while the current one trains
AHEAD_BYTES = 128 << 20  # but no more than this much uint8 (large evaluation batches)
PAGE = mmap.PAGESIZE
HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class RowFile:
    """One .npy file of uint8 rows, mapped (private, never written: reads share the page
    cache, and torch gets a writable buffer without a warning)."""

    path: Path
    map: mmap.mmap
    rows: torch.Tensor  # (N, ...) uint8 over the mapping
    offset: int  # where row 0 starts in the file
    row_bytes: int

    @classmethod
    def open(cls, path: Path) -> RowFile:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = HEADERS.get(version)
            if header is None:
                raise ValueError(f"{path}: .npy format {version} is not read here")
            shape, fortran, dtype = header(f)
            offset = f.tell()
            if dtype != np.uint8 or fortran:
                raise ValueError(f"{path}: not a C-ordered uint8 array")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if hasattr(mmap, "MADV_RANDOM"):
            mapped.madvise(mmap.MADV_RANDOM)
        row_bytes = int(np.prod(shape[1:]))
        flat = torch.frombuffer(
            mapped, dtype=torch.uint8, offset=offset, count=shape[0] * row_bytes
        )
        return cls(Path(path), mapped, flat.view(shape), offset, row_bytes)

    def will_need(self, rows: torch.Tensor) -> None:
        """Ask the kernel to start reading these rows now (asynchronously)."""
        if not hasattr(mmap, "MADV_WILLNEED"):
            return
        for r in rows.tolist():
            start = self.offset + r * self.row_bytes
            lo = start - start % PAGE
            self.map.madvise(mmap.MADV_WILLNEED, lo, start + self.row_bytes - lo)


class MappedImages:
    """The rows `index` of a RowFile, as a split's images (len(index), C, H, W) uint8."""

    def __init__(
        self, file: RowFile, index: torch.Tensor | None = None, device: str | torch.device = "cpu"
    ):
        self.file = file
        self.index = torch.arange(len(file.rows)) if index is None else index.cpu()
        self.device = torch.device(device)

    dtype = torch.uint8
    ndim = 4

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.file.rows.shape[1:]))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, int):
            return self.read(self.index[key].view(1))[0]
        if isinstance(key, (slice, torch.Tensor)):
            return self.read(self.index[key.cpu() if isinstance(key, torch.Tensor) else key])
        raise TypeError(f"mapped images are read by an int, a slice or an index tensor, not {key}")

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """File rows `rows` (CPU int64) on this set's device: gathered in file order, returned
        in the order asked; through pinned memory to a GPU."""
        order = torch.argsort(rows)
        self.file.will_need(rows[order])
        pin = self.device.type == "cuda"
        out = torch.empty((len(rows), *self.file.rows.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        torch.index_select(self.file.rows, 0, rows[order], out=out)
        if not torch.equal(order, torch.arange(len(order))):
            out = out[torch.argsort(order)]  # back to the order asked (a batch's)
        return out.to(self.device, non_blocking=pin)

    def subset(self, index: torch.Tensor) -> MappedImages:
        return MappedImages(self.file, self.index[index.cpu()], self.device)

    def in_file_order(self) -> MappedImages:
        """The same rows sorted as they lie on disk: a pass over all (statistics) reads the
        file front to back; only for what does not depend on the order."""
        return MappedImages(self.file, self.index.sort().values, self.device)

    def to(self, device: str | torch.device, non_blocking: bool = False) -> MappedImages:
        return MappedImages(self.file, self.index, device)

    def cpu(self) -> MappedImages:
        return self.to("cpu")


Pixels = torch.Tensor | MappedImages  # a split's images: in memory or mapped


def take(images: Pixels, index: torch.Tensor) -> Pixels:
    """images[index] as a set: mapped images compose the index (no read), tensors copy."""
    return images.subset(index) if isinstance(images, MappedImages) else images[index]


def read_ahead(
    images: MappedImages, batches: Iterable[torch.Tensor], part: tuple[int, int] = (0, 1)
) -> Iterator[torch.Tensor]:
    """The pixels of each index batch, read AHEAD batches early (AHEAD_BYTES at most) by one
    background thread.
    `part` (i, k): only the i-th of k contiguous slices of each batch is read, the rest are
    zeros (a data-parallel rank's shard, distributed.shard's slicing); the batch keeps its
    size, so augmentation draws as many numbers as on one process."""
    row = int(np.prod(images.shape[1:]))
    with ThreadPoolExecutor(1, thread_name_prefix="cnnlab-read") as pool:
        pending: list[Future] = []
        for idx in batches:
            pending.append(pool.submit(_shard, images, idx, part))
            if len(pending) > max(1, min(AHEAD, AHEAD_BYTES // max(1, len(idx) * row))):
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _shard(images: MappedImages, idx: torch.Tensor, part: tuple[int, int]) -> torch.Tensor:
    i, k = part
    if k == 1:
        return images[idx]
    n = len(idx)
    lo, hi = n * i // k, n * (i + 1) // k
    x = torch.zeros((n, *images.shape[1:]), dtype=torch.uint8, device=images.device)
    x[lo:hi] = images[idx[lo:hi]]
    return x


def pixels_at(
    images: Pixels, image: torch.Tensor, y: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """(S, C): pixel (y[s], x[s]) of image image[s], for each sample s; mapped images are
    read a chunk of samples at a time, never the whole set."""
    if not isinstance(images, MappedImages):
        return images[image, :, y, x]
    step = 1024
    parts = []
    for lo in range(0, len(image), step):
        rows = images[image[lo : lo + step]]  # (b, C, H, W)
        at = torch.arange(len(rows))
        parts.append(rows[at, :, y[lo : lo + step], x[lo : lo + step]])
    return torch.cat(parts) if parts else images[image[:0]][:, :, 0, 0]
