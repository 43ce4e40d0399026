"""Pixels decoded once, in parallel, into a uint8 cache that knows when its files changed.

A source with files on disk (a folder of images, a table of image paths) hands over what
identifies its files (names, sizes, mtimes, the table's own) and a function that decodes
one row; the arrays are cached in `cache_dir(source)/<sha256 of the key>/` beside a manifest
of that identity. A later load compares the identity only (a stat per file, no pixel) and
reuses the arrays when nothing changed, else decodes again. The user's folder is never
written to, and a manifest never describes an array it was not written with. Rows are
decoded straight into memory-mapped files, and a set larger than memory stays mapped
(`data.storage`, cnnlab/data/memory.py; reading it: cnnlab/data/mapped.py).

Decoding runs in a thread pool: Pillow releases the GIL while it decodes and resizes (on the
2-core AMD EPYC threads were never clearly slower than a process pool or a serial loop, and
cost nothing to start; measurements in cnnlab/data/image_folder.py).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from cnnlab.data.files import cache_dir
from cnnlab.data.lines import say, warn
from cnnlab.data.mapped import MappedImages, Pixels, RowFile
from cnnlab.data.memory import Storage, choose
from cnnlab.errors import counted, listed

DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
WHITE = (255, 255, 255, 255)  # transparent pixels are composited on white
# what `decode_image` makes of a file, part of every cache's key: bump when it changes
# (2: photos turned upright by their EXIF orientation; 3: 16-bit and float grey scaled)
PIXELS = 3
ORIENTATION = 0x0112  # the EXIF tag
WIDE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535, "F": 1.0}  # full scale
# in decode_rows' threads, the row being decoded: [(its raw largest value, bits)] of each
# 16-bit image `eight_bit` scaled from fewer than 16 bits (None elsewhere: nothing noted)
_ROW = threading.local()
# A colour image's channels differ by more than this on average (a share of the range):
# a colour photo's by 0.1-0.3, a grey scan saved as RGB's by nothing, a grey JPEG's by noise
COLOUR_SPREAD = 8 / 255
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")  # Pillow's grey ones


HEIF = (".heic", ".heif")  # an iPhone's photos: Pillow opens them through pillow-heif


@functools.cache
def heif_opens() -> bool:
    """Whether HEIC/HEIF files open here: pillow-heif (`pip install 'cnnlab[heic]'`), when
    installed, plugs them into Pillow; imported only once such a file is met."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def open_image(path: str | Path) -> Image.Image:
    """`Image.open`, HEIC/HEIF included where pillow-heif is installed."""
    if str(path).lower().endswith(HEIF):
        heif_opens()
    return Image.open(path)


def as_read(im: Image.Image, bits: int = 16) -> Image.Image:
    """A file's image as every reader takes it: upright, and 8 bits per channel (`bits`: of
    a 16-bit image's, the bits its values use)."""
    return eight_bit(upright(im), bits)


def upright(im: Image.Image) -> Image.Image:
    """A photo as it is meant to be seen: phones and cameras store the sensor's rows and an
    EXIF tag saying how to turn them, so a portrait photo read as stored lies on its side
    (and its centre square is another part of it)."""
    if im.getexif().get(ORIENTATION, 1) in (1, None):
        return im
    return ImageOps.exif_transpose(im)


def eight_bit(im: Image.Image, bits: int = 16) -> Image.Image:
    """A 16-bit or float grey image (microscopes, scanners) as 8-bit grey, the full range of
    its values to 0-255: 0 to 2**bits - 1 for integers (a 12-bit camera's 0-4095 in a 16-bit
    file: `bits` 12; larger values clip), 0-1 for floats. Pillow's own conversion clips at
    255, which turned a 16-bit image white (and a float one in 0-1 black); scaled as 16
    bits, a 12-bit image keeps 16 grey levels, near black."""
    if im.mode not in WIDE:
        return im
    top = 1.0 if WIDE[im.mode] == 1.0 else float(2**bits - 1)
    raw = np.asarray(im)
    if top != 1.0 and getattr(_ROW, "seen", None) is not None:  # what clips, told once
        note_peak(int(raw.max(initial=0)), bits)
    values = raw.astype(np.float32) * (255.0 / top)
    return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")


@contextmanager
def noting_peaks() -> Iterator[list[tuple[int, int]]]:
    """Within (in this thread): each 16-bit image scaled from fewer than 16 bits notes
    (its raw largest value, the bits) in the list yielded, as `eight_bit` scales it: what
    clips is then told once for all the images, with no second read."""
    _ROW.seen = seen = []
    try:
        yield seen
    finally:
        _ROW.seen = None


def note_peak(peak: int, bits: int) -> None:
    """Note a 16-bit image's largest value where `noting_peaks` listens (else nothing)."""
    seen = getattr(_ROW, "seen", None)
    if seen is not None and bits < 16:
        seen.append((peak, bits))


@contextmanager
def noting_sources() -> Iterator[list[str]]:
    """Within (in this thread): each image decoded across colour and grey notes what it was
    ("colour" made grey, "grey" given as colour) in the list yielded: predict says so of a
    run's new images once (training converts a folder's odd images without a word)."""
    _ROW.sources = sources = []
    try:
        yield sources
    finally:
        _ROW.sources = None


def note_source(pixels: np.ndarray, channels: int) -> None:
    """Note, where `noting_sources` listens, an image (H, W, 3) uint8 or float in [0, 1]
    that is colour going to `channels` 1, or grey going to 3. By what it shows, not by its
    mode: a grey scan saved as RGB is grey, and a JPEG's chroma noise is no colour."""
    sources = getattr(_ROW, "sources", None)
    if sources is None:
        return
    top = 255 if pixels.dtype == np.uint8 else 1.0
    spread = (pixels.max(-1).astype(np.float32) - pixels.min(-1)).mean() / top if pixels.size else 0
    colour = spread > COLOUR_SPREAD
    if colour != (channels == 3):
        sources.append("colour" if colour else "grey")


def note_colour(image: Image.Image | str | Path) -> None:
    """Note, where `noting_sources` listens, an image about to be made grey (not stored
    grey) if it shows colour: seen at most 64 px; a file is decoded again (a JPEG drafted
    to grey dropped its colour), small, as libjpeg scales it down while decoding."""
    if getattr(_ROW, "sources", None) is None or (
        isinstance(image, Image.Image) and image.mode in GREY_MODES
    ):
        return
    if not isinstance(image, Image.Image):
        with open_image(image) as im:
            im.draft("RGB", (64, 64))
            return note_colour(im.convert("RGB"))
    note_source(np.asarray(ImageOps.contain(image, (64, 64)).convert("RGB")), 1)


def dark_warning(path: Path, bits: int, label: str) -> None:
    """One line when a 16-bit image's values reach far below what `bits` makes white: a
    12-bit camera's 0-4095 read as 16 bits decode near black. Read off the set's first
    image (a camera writes all its images at one depth), and it says so: a dark first image
    of a 16-bit camera's set advised bits that clipped 87.5 % of the others, where
    `warn_clipped` now says how many clip; nothing is said otherwise."""
    try:
        with open_image(path) as im:
            if im.mode not in WIDE or WIDE[im.mode] == 1.0:
                return
            top = int(im.getextrema()[1])
    except Exception:  # unreadable: its decoding says so
        return
    used = max(8, top.bit_length())
    if used <= bits - 2:  # a quarter of the range or less
        warn(
            f"{label}: the first image, {path.name}, is 16-bit but its values reach only "
            f"{top:,} ({used} bits): read as {bits} bits it decodes dark; if its camera "
            f"writes {used}-bit values, set data.bits: {used} (judged from this image alone: "
            f"if others go higher, loading says how many are clipped)"
        )


def decode_image(
    path: str | Path, size: int, resize: str, mode: str = "RGB", bits: int = 16
) -> np.ndarray:
    """One image as uint8 (C, size, size), as `as_read` takes it: RGB (C = 3) or grey ("L",
    C = 1). Palette, CMYK and the rest are converted; transparency is composited on white.
    `resize`: "crop" takes the centre square of the shorter side, "squash" the whole image.
    Raises on anything unreadable."""
    return read_image(path, size, resize, mode, bits)[0]


def read_image(
    path: str | Path, size: int, resize: str, mode: str = "RGB", bits: int = 16
) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image`'s pixels and the image's own (width, height), upright: a table checks
    its mask against that size, from the file it opens anyway (no second open)."""
    with open_image(path) as im:
        stored, stored_mode = im.size, im.mode  # before draft, which makes a JPEG's smaller
        if im.format == "JPEG":
            im.draft(mode, (size, size))  # libjpeg scales down while decoding (>= size)
        im.load()
        drafted = im.size
        im = as_read(im, bits)
        turned = im.size != drafted  # its EXIF orientation swapped width and height
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)
        if mode == "L" and stored_mode not in GREY_MODES:  # drafted grey: the file again
            note_colour(path if im.mode == "L" else im)
        im = im.convert(mode).resize(
            (size, size), Image.Resampling.BILINEAR, box=seen_box(im.size, resize)
        )
        out = np.asarray(im, dtype=np.uint8)
        pixels = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
        return pixels, (stored[1], stored[0]) if turned else stored


class Refused(ValueError):
    """A file that reads but cannot be what its row needs (a colour mask, a mask of another
    size than its image). Unlike an unreadable file, its reason is kept (`what`: what is
    wrong with it, the caller putting the file's name first; `fix`: what to do), so the
    warning or the error can say it: "240 files skipped (empty, corrupt, not an image)" hid
    that the masks were RGB."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix


MASK_MODES = ("L", "P", "I", "I;16")  # grey or palette: one class index per pixel
COLOUR = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")  # what a mask is not
FIX_MODE = (
    "a mask holds one class index per pixel: save masks as 8-bit grey or palette PNGs of "
    "class indices (0, 1, 2, ...; 255: no label), not colours"
)
FIX_SIZE = (
    "a mask is drawn on its own image, pixel for pixel: save each mask at its image's size "
    "(or correct the row's paths)"
)
FIX_LOSSY = "save masks losslessly, as PNGs of class indices (a JPEG's compression changes them)"
FIX_INDEX = (
    "a mask holds class indices 0 to 254 (255: no label): save masks as 8-bit grey or "
    "palette PNGs of class indices"
)


def decode_mask(
    path: str | Path,
    size: int,
    resize: str,
    fits: tuple[str, tuple[int, int]] | None = None,
) -> np.ndarray:
    """One mask of class indices as uint8 (size, size): a grey PNG of indices, or a palette
    PNG (its indices, not its colours). Nearest neighbour, so no pixel gets a class between
    two others; the same square as its image. `fits`: its image's name and (width, height):
    a mask of another size is refused, since stretched to the image it no longer lines up
    with it. Checked from the header, before the mask's pixels are decoded."""
    with Image.open(path) as im:
        if im.format == "JPEG":  # its indices blur at every edge: 3-13 and 246-254 seen
            raise Refused("is a JPEG, whose lossy compression changes class indices", FIX_LOSSY)
        if im.mode not in MASK_MODES:
            kind = f"a colour ({im.mode})" if im.mode in COLOUR else f"a {im.mode!r}"
            raise Refused(f"is {kind} image", FIX_MODE)
        if fits is not None and im.size != fits[1]:
            (w, h), (iw, ih) = im.size, fits[1]
            raise Refused(f"is {w}x{h} pixels, its image {fits[0]} {iw}x{ih}", FIX_SIZE)
        im.load()
        values = np.asarray(im)
        if values.max(initial=0) > 255:
            raise Refused(f"holds class index {int(values.max())}", FIX_INDEX)
        im = Image.fromarray(values.astype(np.uint8), "L")
        im = im.resize((size, size), Image.Resampling.NEAREST, box=seen_box(im.size, resize))
        return np.asarray(im, dtype=np.uint8)


def seen_box(wh: tuple[int, int], resize: str) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of an image of size `wh` (width, height) that `resize`
    keeps: the centre square for "crop", all of it for "squash". A prediction's class map is
    put back there at the image's own size."""
    w, h = wh
    if resize == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        return (left, top, left + side, top + side)
    return (0.0, 0.0, float(w), float(h))


@dataclass
class Decoded:
    """The rows that decoded, as uint8 tensors or mapped images, and the names of those that
    did not."""

    pixels: dict[str, Pixels]  # name -> (N kept, ...) uint8: in memory, or mapped ("images")
    kept: list[int]  # the decoded rows' indices in the order the source listed them
    skipped: list[str]  # what could not be read, named for the warning
    # rows refused for a reason (decoding raised Refused): (row, what, fix), in row order;
    # the source says them (a warning or an error), cached_decode does not
    refused: list[tuple[int, str, str]] = field(default_factory=list)


def decode_rows(
    label: str,
    out: dict[str, np.ndarray],
    decode_row: Callable[[int], dict[str, np.ndarray]],
) -> tuple[list[int], dict[int, Refused], dict[int, tuple[int, int]]]:
    """Decode every row into `out` (arrays of n rows, in memory or memory-mapped files) with
    a thread pool and a bar; the indices that failed, those of them refused for a reason
    (Refused), and each decoded row's 16-bit image scaled from fewer bits: (its raw largest
    value, the bits), noted by `eight_bit` as it scales (no second read). A row fails when
    `decode_row` raises: corrupt, truncated, empty, not an image; its rows of `out` stay
    zeros."""
    n = len(next(iter(out.values())))
    failed: list[int] = []
    refused: dict[int, Refused] = {}
    peaks: dict[int, tuple[int, int]] = {}

    def one(i: int) -> None:
        with noting_peaks() as seen:
            try:
                for name, value in decode_row(i).items():
                    out[name][i] = value
                if seen:
                    peaks[i] = (max(p for p, _ in seen), seen[0][1])
            except Refused as err:  # readable, but not what the row needs: reason kept
                refused[i] = err
                failed.append(i)
            except Exception:  # whatever the file held, the row is skipped and named
                failed.append(i)

    from cnnlab.progress import counting

    with ThreadPoolExecutor(DECODE_THREADS) as pool, counting(f"{label}: decoding", n) as advance:
        for _ in pool.map(one, range(n)):
            advance()
    return sorted(failed), refused, peaks


def clipped(peaks: dict[int, tuple[int, int]], names: list[str]) -> list | None:
    """[rows, their largest value, bits, the first's name] of the rows whose 16-bit values
    go above 2**bits - 1 (`decode_rows`' peaks), which decode white; None when none does."""
    over = sorted((i, p, b) for i, (p, b) in peaks.items() if p > 2**b - 1)
    if not over:
        return None
    return [len(over), max(p for _, p, _ in over), over[0][2], names[over[0][0]]]


def warn_clipped(label: str, clip: list[int] | None, n: int) -> None:
    """One line when data.bits clipped images: how many of the `n` decoded, and the bits
    their largest value needs. A first image's advice (`dark_warning`) could set bits its
    brighter images exceed, and 87.5 % of a set decoded with white patches unsaid."""
    if not clip:
        return
    rows, largest, bits, *first = clip  # the first's name: not in older caches' manifests
    share = f"{100 * rows / max(n, 1):.1f}"
    share = {"0.0": "< 0.1", "100.0": "100.0" if rows >= n else "> 99.9"}.get(share, share)
    needs = min(16, largest.bit_length())
    they, their = ("it is", "its") if rows == 1 else ("they are", "their")
    warn(
        f"{label}: warning: {rows:,} of {counted(n, 'image')} ({share} %"
        f"{''.join(f'; first: {name}' for name in first)}) "
        f"{'has' if rows == 1 else 'have'} values above {2**bits - 1:,}, the most "
        f"data.bits: {bits} keeps: {they} clipped to white; set data.bits: {needs} "
        f"({their} largest value, {largest:,}, needs {needs} bits)"
    )


def cached_decode(
    label: str,
    key: Any,
    identity: Any,
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    decode_row: Callable[[int], dict[str, np.ndarray]],
    skipped: list[str] | None = None,
    storage: Storage = "auto",
    warn: bool = True,
) -> Decoded:
    """The decoded rows from `cache_dir(label)/<sha256 of key and PIXELS>/` when its manifest
    holds the same `identity` (the files' names, sizes and mtimes, as the source lists
    them), else decoded afresh and cached. `names[i]`: row i as the warning names it when
    it fails; `skipped`: what the source left out before decoding (links pointing outside);
    `warn`: say what was skipped in a warning (False: the source stops the run on it).
    A row whose `decode_row` raises Refused is left out too, but with its reason, kept in the
    manifest (a reused cache says it again) and handed back for the source to say. So are
    the images data.bits clipped (`warn_clipped`), said here, decoded or reused.

    The cache holds one row per name (a failed row stays zeros; the manifest's `kept` lists
    the others), decoded straight into memory-mapped files, so a set larger than memory is
    decoded too. `storage` (memory.choose): the kept "images" are then read into memory, or
    stay mapped (other arrays, a table's masks, are always read into memory). One process
    decodes while the others of a torchrun job wait on the folder's lock and reuse it."""
    folder = cache_dir(label) / hashlib.sha256(json.dumps([key, PIXELS]).encode()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.npy" for name in shapes}
    size = len(names) * sum(int(np.prod(s)) for s in shapes.values())
    mapped, why = choose(storage, size)
    say(f"{label}: {'mapped from disk' if mapped else 'held in memory'} ({why})")
    with open(folder / ".lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        saved = _manifest(folder / "manifest.json", identity, files, len(names), shapes)
        if saved is not None:
            say(f"{label}: cache reused ({next(iter(files.values()))})")
        else:
            saved = _decode_into(label, folder, files, names, shapes, decode_row, identity, skipped)
    if warn:
        warn_skipped(label, saved["skipped"])
    kept = saved["kept"]
    warn_clipped(label, saved["clipped"], len(kept))
    pixels = {k: _load(f, kept, len(names), mapped and k == "images") for k, f in files.items()}
    refused = [(int(i), what, fix) for i, what, fix in saved.get("refused", [])]
    return Decoded(pixels, kept, saved["skipped"], refused)


def _manifest(
    file: Path, identity: Any, files: dict[str, Path], n: int, shapes: dict[str, tuple[int, ...]]
) -> dict | None:
    """The saved manifest when it describes this identity and arrays of the right shape."""
    try:
        saved = json.loads(file.read_text())
        if saved.get("identity") != identity or "clipped" not in saved:
            return None  # another identity, or written before clipping was counted
        for k, f in files.items():
            if np.load(f, mmap_mode="r").shape != (n, *shapes[k]):
                return None
        return saved
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache yet, or an unreadable one: decode again


def _decode_into(
    label: str,
    folder: Path,
    files: dict[str, Path],
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    decode_row: Callable[[int], dict[str, np.ndarray]],
    identity: Any,
    skipped: list[str] | None,
) -> dict:
    """Decode every row into temporary mapped files, then rename them into place and write
    the manifest last: a manifest never describes an array it was not written with."""
    start = time.perf_counter()
    (folder / "manifest.json").unlink(missing_ok=True)
    tmp = {k: f.with_name(f".{f.name}.{os.getpid()}.tmp") for k, f in files.items()}
    try:
        out = {
            k: np.lib.format.open_memmap(tmp[k], "w+", np.uint8, (len(names), *shapes[k]))
            for k in files
        }
        failed, refused, peaks = decode_rows(label, out, decode_row)
        for array in out.values():
            array.flush()
        out.clear()  # the mappings close before their files are renamed
        for k in files:
            os.replace(tmp[k], files[k])
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    bad = set(failed)
    kept = [i for i in range(len(names)) if i not in bad]
    manifest = {
        "identity": identity,
        "kept": kept,
        "skipped": list(skipped or []) + [names[i] for i in failed if i not in refused],
        "refused": [[i, refused[i].what, refused[i].fix] for i in sorted(refused)],
        "clipped": clipped(peaks, names),  # [rows, largest value, bits, first], or None
    }
    write_atomic(folder / "manifest.json", lambda f: f.write(json.dumps(manifest).encode()))
    seconds = time.perf_counter() - start
    say(f"{label}: decoded {len(kept):,} rows in {seconds:.1f} s → cache {folder}")
    return manifest


def _load(file: Path, kept: list[int], n: int, mapped: bool) -> Pixels:
    """The kept rows of one cached array: mapped (read by batch later), or read into memory
    (one sequential read; with failed rows, only the kept ones are copied)."""
    if mapped:
        return MappedImages(RowFile.open(file), torch.tensor(kept, dtype=torch.long))
    array = np.load(file, mmap_mode="r")
    rows = np.array(array) if len(kept) == n else array[np.asarray(kept, dtype=np.int64)]
    return torch.from_numpy(rows)


def write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def warn_skipped(label: str, skipped: list[str]) -> None:
    if skipped:
        shown = listed(skipped, ", ")
        heic = any(name.lower().endswith(HEIF) for name in skipped) and not heif_opens()
        warn(
            f"{label}: warning: {counted(len(skipped), 'file')} skipped (empty, corrupt, not "
            f"an image, or outside the folder): {shown}"
            + ("; HEIC photos open with `pip install 'cnnlab[heic]'`" if heic else "")
        )
