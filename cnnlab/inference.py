"""Predictions of a trained run on images it has never seen: files, arrays, PIL images.

The model is rebuilt from the run's recipe and best checkpoint through the one build path
(`cnnlab.build`), without its data set: the checkpoint holds what the input must look like
(its shape and the normalization of training). Each image is turned into that input the
way training made it (grey or colour, resized, scaled to [0, 1], normalized), and the
answer is decoded per task: class names and probabilities, regression values in the
target's units, per-pixel class maps. The recipe's test-time views are applied, so a test
image gets the class the run's own test gave it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cnnlab.build import (
    build_model,
    declared_info,
    images_per_pass,
    saved_precision,
    saved_tasks,
)
from cnnlab.data import colorize
from cnnlab.data.decoded import (
    DECODE_THREADS,
    as_read,
    note_colour,
    note_peak,
    note_source,
    noting_peaks,
    noting_sources,
    open_image,
    read_image,
    seen_box,
)
from cnnlab.errors import CnnlabError, counted
from cnnlab.models import MultiTaskModel
from cnnlab.precision import autocast_for
from cnnlab.recipe import Recipe
from cnnlab.tasks import Task
from cnnlab.tasks.intervals import Interval
from cnnlab.tasks.thresholds import Threshold, answered
from cnnlab.tta import ViewAverage

ImageLike = str | Path | np.ndarray | torch.Tensor | Image.Image
NOT_SEEN = -1  # `Prediction.mask`'s value where a cropped image's border was not looked at
BAND = 1 << 22  # `Prediction.mask` upsamples this many class probabilities at a time


@dataclass(frozen=True)
class Frame:
    """Where one image's pixels went: its own size, upright, and the part of it the model
    saw, (left, top, right, bottom) in its own pixels (all of it, or its centre square when
    the run crops files), so a class map can be put back onto the image."""

    height: int
    width: int
    box: tuple[float, float, float, float]


@dataclass
class Prediction:
    """One task's answers for a batch of N images (numpy, on the CPU).

    A per-pixel task's `index` and `probabilities` are at the model's resolution (H x W, the
    run's input size): pixel (y, x) of a map answers for pixel (y, x) of what the model saw,
    a file squashed or centre-cropped to that square as the run's source read its files
    (`data.resize`), an array or PIL image squashed to it. `mask(i)` puts image i's map
    back at the image's own size."""

    task: str
    index: np.ndarray | None = None  # (N,) class index, or (N, H, W) per pixel
    labels: list[str] | None = None  # (N,) class names of a classification
    probabilities: np.ndarray | None = None  # (N, K) of a classification, (N, K, H, W) per pixel
    values: np.ndarray | None = None  # (N,) or (N, D) of a regression, in the target's units
    classes: list[str] | None = None  # every class name, in index order
    components: list[str] | None = None  # a vector regression's component names
    frames: list[Frame] | None = None  # per pixel: where each image's pixels went
    # a calibrated regression's interval around each value (`cnnlab calibrate`), shaped as
    # `values`: the true value lies within for `coverage` of images like validation's
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    coverage: float | None = None
    # a two-class classification's decision threshold (`cnnlab calibrate --recall`): its
    # class is answered where its probability reaches the threshold, not above one half
    threshold: Threshold | None = None

    @property
    def probability(self) -> np.ndarray:
        """(N,) the probability of each image's answer: its top class's, or, at a two-class
        task's fitted threshold (`cnnlab calibrate --recall`), of the class it answered."""
        if self.index is None or self.probabilities is None or self.per_pixel:
            raise CnnlabError(f"predict: {self.task} does not answer a class per image")
        return np.take_along_axis(self.probabilities, self.index[:, None], 1)[:, 0]

    @property
    def per_pixel(self) -> bool:
        """Whether this is a class map per image (a mask's task, colorization's colours)."""
        return self.index is not None and self.index.ndim == 3

    def shares(self, image: int | None = None) -> np.ndarray:
        """(N, K): of each image's pixels, the share predicted as each class (rows sum to 1);
        (K,) of one `image`. A per-pixel answer read as one row per image, as `table()` and
        `cnnlab predict` give it."""
        if not self.per_pixel or self.classes is None:
            raise CnnlabError(f"predict: {self.task} is not a per-pixel classification")
        maps = self.index if image is None else self.index[image : image + 1]
        n, k = len(maps), len(self.classes)
        flat = maps.reshape(n, -1).astype(np.int64) + np.arange(n)[:, None] * k
        counts = np.bincount(flat.ravel(), minlength=n * k).reshape(n, k)
        shares = counts / np.prod(maps.shape[1:])
        return shares if image is None else shares[0]

    def mask(self, image: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Image `image`'s class map at the image's own size (height, width), or at `size`,
        int16: the class probabilities upsampled bilinearly onto the part of the image the
        model saw, then each pixel's likeliest class; `NOT_SEEN` (-1) on the border a crop
        left out. At the model's own size it is `index[image]`."""
        if not self.per_pixel or self.probabilities is None or self.frames is None:
            raise CnnlabError(f"predict: {self.task} has no class map to put back on its image")
        if not 0 <= image < len(self.frames):
            n = len(self.frames)
            raise CnnlabError(f"predict: image {image} of {n}; give 0 to {n - 1}")
        frame = self.frames[image]
        height, width = size or (frame.height, frame.width)
        if height < 1 or width < 1:
            raise CnnlabError(
                f"predict: a mask of {height} x {width} pixels; give a size of 1 or more"
            )
        left, top, right, bottom = frame.box
        sy, sx = height / frame.height, width / frame.width
        probs = torch.from_numpy(self.probabilities[image]).float()  # (K, H, W)
        k, h, w = probs.shape
        rows, row_in = _bilinear(height, h, top * sy, bottom * sy)
        cols, col_in = _bilinear(width, w, left * sx, right * sx)
        across = torch.einsum("khW,xW->hxk", probs, cols)  # (H, width, K): small
        out = torch.empty(height, width, dtype=torch.int16)
        step = max(1, BAND // (k * width))  # rows at a time: memory bounded for any photo
        for y in range(0, height, step):
            band = torch.einsum("yh,hxk->yxk", rows[y : y + step], across)
            out[y : y + step] = band.argmax(-1).to(torch.int16)  # over the last dim: fast
        out[~row_in] = NOT_SEEN
        out[:, ~col_in] = NOT_SEEN
        return out.numpy()


def _bilinear(size: int, model: int, start: float, end: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(size, model) weights that carry a map of `model` pixels onto pixels [start, end) of
    a line of `size` (bilinear, pixel centres, clamped at the edges, as `F.interpolate` with
    align_corners=False), and which of the `size` pixels lie in [start, end)."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    at = ((centres - start) / (end - start) * model - 0.5).clamp(0, model - 1)
    low = at.floor().long()
    high = (low + 1).clamp(max=model - 1)
    frac = (at - low).float()
    weights = torch.zeros(size, model)
    weights.scatter_add_(1, low[:, None], (1 - frac)[:, None])
    weights.scatter_add_(1, high[:, None], frac[:, None])
    return weights, (centres >= start) & (centres < end)


def classified(
    task: str,
    probabilities: np.ndarray,
    classes: list[str],
    index: np.ndarray | None = None,
    frames: list[Frame] | None = None,
    threshold: Threshold | None = None,
) -> Prediction:
    """A classification's answer from its probabilities, (N, K) per image or (N, K, H, W) per
    pixel (`frames`: where each image's pixels went); `index` is the top class, or the class
    at the fitted `threshold`, unless a head decodes its own. One path for the run and for an
    exported file, so both give the same fields."""
    if index is None:
        index = answered(torch.from_numpy(probabilities), threshold).numpy()
    classes = list(classes)
    if probabilities.ndim == 4:  # a class map: no label per image
        return Prediction(
            task, index=index, probabilities=probabilities, classes=classes, frames=frames
        )
    labels = [classes[i] for i in index]
    return Prediction(task, index, labels, probabilities, classes=classes, threshold=threshold)


class Predictions(dict):
    """Task name -> `Prediction`; `table()` puts them side by side, one row per image.
    `files`: the images' paths, in order, when every image was given as a file."""

    files: list[str] | None = None

    def table(self):
        """A pandas DataFrame, one row per image: the image's path (`image`, when the images
        were files), each classification's class (`cls`) and its probability
        (`cls.probability`), each regression's value (`ink`) or components
        (`counts.squares`), with a calibrated regression's interval (`ink.low`, `ink.high`),
        and each per-pixel task's share of the image's pixels predicted as
        each class (`mask.background`, `mask.disc`, ...: they sum to 1). The maps themselves
        stay in `[task].index` and `[task].probabilities`."""
        import pandas as pd

        columns: dict[str, Any] = {"image": self.files} if self.files else {}
        for name, p in self.items():
            if p.labels is not None:
                columns[name] = p.labels
                columns[f"{name}.probability"] = p.probability
            elif p.per_pixel:
                for k, share in enumerate(p.shares().T):
                    columns[f"{name}.{p.classes[k]}"] = share
            elif p.values is not None and p.values.ndim == 1:
                columns[name] = p.values
                if p.low is not None:
                    columns[f"{name}.low"], columns[f"{name}.high"] = p.low, p.high
            elif p.values is not None:
                names = p.components or [str(k) for k in range(p.values.shape[1])]
                for k, part in enumerate(names):
                    columns[f"{name}.{part}"] = p.values[:, k]
                    if p.low is not None:
                        columns[f"{name}.{part}.low"] = p.low[:, k]
                        columns[f"{name}.{part}.high"] = p.high[:, k]
        return pd.DataFrame(columns)


class Predictor:
    """A run's best model, ready for new images; built once, used for any number of calls."""

    def __init__(self, recipe: Recipe, saved: dict, device: torch.device):
        self.recipe, self.device = recipe, device
        self.tasks: dict[str, Task] = saved_tasks(recipe, saved)
        shape = tuple(saved.get("input") or _shape_without_input(recipe))
        self.shape: tuple[int, int, int] = shape  # (C, H, W) the model takes
        model = build_model(recipe, self.tasks, shape, from_checkpoint=True)
        model.load_state_dict(saved["model"])
        self.model: MultiTaskModel = model.to(device).eval().requires_grad_(False)
        self.mean = torch.tensor(saved["normalize"]["mean"], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(saved["normalize"]["std"], device=device).view(1, -1, 1, 1)
        self.grey = recipe.data.colorize is not None
        self.autocast = autocast_for(device, saved_precision(saved, recipe))
        names = recipe.train.tta
        black = (-self.mean / self.std).flatten()
        views = ViewAverage(names, self.tasks, recipe.data, shape[1:], black) if names else None
        self.views = views
        # images a forward pass, as the run's evaluation: any number of images per call
        self.per_pass = images_per_pass(self.model, torch.zeros(1, *shape, device=device))

    def pixels(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """The images at the run's size, (B, C, H, W) in [0, 1], as its source decodes
        files: what the model sees before its normalization."""
        return self._decoded(images)[0]

    def _decoded(self, images: ImageLike | Sequence[ImageLike]) -> tuple[torch.Tensor, list]:
        colour_channels = 3 if self.grey else self.shape[0]
        resize = getattr(self.recipe.data, "resize", "squash")  # as the source decoded files
        bits = getattr(self.recipe.data, "bits", 16)
        shape = self.shape[1:]  # a colorizer is given grey images to colour: nothing to say
        x, frames = decoded_batch(images, colour_channels, shape, resize, bits, not self.grey)
        return x.to(self.device), frames

    def inputs(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Model input (B, C, H, W) from images as training made it from its uint8 pixels."""
        return self.normalized(self.pixels(images))

    def normalized(self, batch: torch.Tensor) -> torch.Tensor:
        """`pixels` as the model's input: grey where it colorizes, normalized."""
        if self.grey:
            batch = colorize.luminance(batch)
        x = (batch - self.mean) / self.std
        if self.recipe.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> Predictions:
        """The answers for any number of images, `per_pass` through the model at a time (at
        224 px, 500 images at once would have held about 10 GB of maps)."""
        parts = []
        pixels, frames = self._decoded(images)
        for x in self.normalized(pixels).split(self.per_pass):
            with self.autocast():
                out = self.views(self.model, x) if self.views else self.model(x)
            parts.append({name: o.float() for name, o in out.items()})
        out = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        return named(images, {name: self._decode(name, o, frames) for name, o in out.items()})

    def _decode(self, name: str, raw: torch.Tensor, frames: list[Frame]) -> Prediction:
        task, head = self.tasks[name], self.model.heads[name]
        classes = task.info.classes
        if classes is None:  # a regression's values in the target's units, or probabilities
            # of one's own task type (multi-label tags), at its temperature
            values = task.probabilities(raw) if task.probabilistic else head.decode(raw)
            found = Prediction(name, values=values.cpu().numpy(), components=task.info.components)
            return with_interval(found, task.interval, task.bounds)
        probs = task.probabilities(raw) if task.probabilistic else raw.softmax(1)
        index = task.answers(head, raw).cpu().numpy()  # (N,), or (N, H, W) for a class map
        return classified(name, probs.cpu().numpy(), classes, index, frames, task.threshold)


def with_interval(
    found: Prediction, interval: Interval | None, bounds: tuple[float | None, float | None] | None
) -> Prediction:
    """A regression's prediction with its calibrated interval (low, high) around each value,
    kept within the task's bounds as the values are; as it was without an interval."""
    if interval is None or found.values is None:
        return found
    low, high = interval.bounds(torch.from_numpy(found.values))
    lo, hi = bounds or (None, None)
    if lo is not None or hi is not None:
        low, high = low.clamp(lo, hi), high.clamp(lo, hi)
    found.low, found.high, found.coverage = low.numpy(), high.numpy(), interval.coverage
    return found


def named(images: ImageLike | Sequence[ImageLike], found: dict[str, Prediction]) -> Predictions:
    """`found` as Predictions, which know the images' paths when every image was a file."""
    out = Predictions(found)
    items = [images] if isinstance(images, (str, Path)) else images
    if isinstance(items, Sequence) and items and all(isinstance(i, (str, Path)) for i in items):
        out.files = [str(i) for i in items]
    return out


def _shape_without_input(recipe: Recipe) -> tuple[int, int, int]:
    """A checkpoint from before cnnlab saved its input shape: the source's description."""
    c, h, w = declared_info(recipe).shape
    return (1 if recipe.data.colorize is not None else c), h, w


# ---------------------------------------------------------------------------- images


def decoded_batch(
    images: ImageLike | Sequence[ImageLike],
    channels: int,
    size: tuple[int, int],
    resize: str = "squash",
    bits: int = 16,
    say_sources: bool = True,
) -> tuple[torch.Tensor, list[Frame]]:
    """(B, channels, H, W) float in [0, 1] at `size`, and where each image's pixels went
    (`Frame`). A 4-D tensor or array is one batch; anything else is one image or a list of
    them. uint8 is scaled by 255, uint16 by 2**bits - 1 (as the sources read 16-bit files);
    float must be in [0, 1] already (refused outside it). Colour is made grey by luminance,
    grey repeated into colour. A file is decoded as the sources decode theirs (`resize`:
    crop or squash to the square). `say_sources`: one line when images are colour and the
    model takes grey, or grey and it was trained on colour (not for a colorizer's grey)."""
    read = Reading(channels, (size[0], size[1]), resize, bits)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        done = [_noted(img, read) for img in images]
    else:
        if isinstance(images, (str, Path, np.ndarray, torch.Tensor, Image.Image)):
            images = [images]
        if not images:
            raise CnnlabError("predict: no images given")
        # files decoded in threads (Pillow lets go of the GIL): 200 photos at 1024 x 768,
        # half JPEG, half PNG, to 224 px took 1.4-1.6 s instead of 3.0 one by one (2-core EPYC)
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            done = list(pool.map(lambda img: _noted(img, read), images))
    _warn_clipped(images, [peak for _, _, peak, _ in done], bits)
    if say_sources:
        _say_sources(images, [source for *_, source in done])
    return torch.cat([x for x, *_ in done]), [frame for _, frame, *_ in done]


def _noted(image: ImageLike, read: Reading) -> tuple[torch.Tensor, Frame, int | None, str | None]:
    """`_one`, the largest raw value of a 16-bit image read as fewer bits (else None), and
    "colour" or "grey" where the image is not what the model takes (`note_source`)."""
    with noting_peaks() as seen, noting_sources() as sources:
        x, frame = _one(image, read)
    return x, frame, max((p for p, _ in seen), default=None), (sources or [None])[0]


def _warn_clipped(images: Any, peaks: list[int | None], bits: int) -> None:
    """One line when 16-bit images go above what the run's data.bits keeps: they clip to
    white, as loading says of a training set's (predict clipped them without a word)."""
    top = 2**bits - 1
    over = [i for i, peak in enumerate(peaks) if peak is not None and peak > top]
    if not over:
        return
    largest = max(peaks[i] for i in over)
    print(
        f"predict: warning: {_some(images, over, len(peaks))} "
        f"{'has' if len(over) == 1 else 'have'} values above {top:,}, the most the run's "
        f"data.bits: {bits} keeps: clipped to white (the largest, {largest:,}, needs "
        f"{min(16, largest.bit_length())} bits); a camera of more bits needs a run trained "
        "with data.bits set to them",
        file=sys.stderr,
    )


def _some(images: Any, these: list[int], n: int) -> str:
    """'2 of 5 images (first: a.png)': the images a warning is about, the first named."""
    first = images[these[0]] if isinstance(images, Sequence) else None
    name = str(first) if isinstance(first, (str, Path)) else f"image {these[0]}"
    return f"{len(these)} of {counted(n, 'image')} (first: {name})"


def _say_sources(images: Any, sources: list[str | None]) -> None:
    """One line when images are colour for a model of grey ones (each made grey), or grey
    for a model of colour ones (three equal channels, which it never saw): either is often
    the wrong run or the wrong images, and predict made them fit without a word."""
    for kind in ("colour", "grey"):
        these = [i for i, source in enumerate(sources) if source == kind]
        if not these:
            continue
        some, are = _some(images, these, len(sources)), "is" if len(these) == 1 else "are"
        said = (
            f"{some} {are} in colour, and the run's model takes grey images: made grey by "
            "their luminance"
            if kind == "colour"
            else f"{some} {are} grey, and the run's model was trained on colour images: given "
            "as three equal channels, which it never saw; its answers may suffer"
        )
        print(f"predict: warning: {said}", file=sys.stderr)


@dataclass(frozen=True)
class Reading:
    """How new images become the model's input: as the run's source read its files."""

    channels: int  # 1 grey, 3 colour
    size: tuple[int, int]  # (H, W) the model takes
    resize: str  # a file: "crop" to its centre square or "squash" whole (data.resize)
    bits: int  # of a 16-bit image's, the bits its values use (data.bits)


def _one(image: ImageLike, read: Reading) -> tuple[torch.Tensor, Frame]:
    """One image as (1, channels, H, W) float in [0, 1], and where its pixels went."""
    channels, size = read.channels, read.size
    if isinstance(image, (str, Path)) and size[0] == size[1]:
        pixels, (w, h) = read_file(Path(image), channels, size[0], read.resize, read.bits)
        frame = Frame(h, w, seen_box((w, h), read.resize))
        return _one(torch.from_numpy(pixels.copy()), read)[0], frame
    if isinstance(image, (str, Path)):
        image = _open(Path(image))
    if isinstance(image, Image.Image):  # as the sources read files: upright, 8 bits (a photo
        # opened in a notebook keeps its EXIF orientation, which `as_read` applies)
        image = as_read(image, read.bits)
        if channels == 1:  # its colour, before it goes
            note_colour(image)
        image = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
    if x.ndim == 2:
        x = x.unsqueeze(0)  # (H, W): grey
    elif x.ndim == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
        x = x.permute(2, 0, 1)  # (H, W, C), as numpy and PIL hold images
    if x.ndim != 3:
        raise CnnlabError(
            f"predict: an image of shape {tuple(x.shape)}; give (H, W), (H, W, C) or (C, H, W)"
        )
    if x.dtype == torch.uint16 and x.numel():
        note_peak(int(x.to(torch.int32).max()), read.bits)  # uint16 has no max of its own
    if x.dtype in (torch.uint8, torch.uint16):  # 16 bits: scaled as a 16-bit file is
        x = x.float().div(255 if x.dtype == torch.uint8 else 2**read.bits - 1).clamp_(0, 1)
    else:
        x = _in_unit_range(x)
    x = x[:3] if x.shape[0] == 4 else x  # RGBA: alpha dropped
    if x.shape[0] == 3 or (x.shape[0] == 1 and channels == 3):  # colour or grey, noted
        note_source(x.expand(3, -1, -1).permute(1, 2, 0).numpy(), channels)
    x = _channels(x, channels)
    h, w = x.shape[1:]
    frame = Frame(h, w, (0.0, 0.0, float(w), float(h)))  # squashed whole
    if (h, w) != tuple(size):
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.clamp_(0, 1), frame
    return x[None], frame


def _in_unit_range(x: torch.Tensor) -> torch.Tensor:
    """A float (or int) image as float, refused unless in [0, 1]: a photo made float with
    `.astype(np.float32)` keeps 0-255, and one normalized already would be normalized twice;
    either gives wrong answers without a sign."""
    dtype = str(x.dtype).removeprefix("torch.")
    x = x.float()
    lo, hi = (float(v) for v in x.aminmax()) if x.numel() else (0.0, 0.0)
    said = f"predict: image values {lo:.4g} to {hi:.4g} ({dtype})"
    if lo < -1e-3:
        raise CnnlabError(
            f"{said} look normalized already; the model normalizes its input itself, "
            "so pass pixels in [0, 1] (or uint8)"
        )
    if hi > 255 + 1e-3:  # a 16-bit microscope image read into float or int32
        raise CnnlabError(
            f"{said} look like 16-bit pixels; pass them as uint16 (scaled as the run's 16-bit "
            "files were), not as another type"
        )
    if hi > 1 + 1e-3:
        raise CnnlabError(f"{said} look like 0-255 pixels; divide them by 255 or pass uint8")
    return x


def _channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[0] == channels:
        return x
    if channels == 1 and x.shape[0] == 3:
        return colorize.luminance(x[None])[0]
    if channels == 3 and x.shape[0] == 1:
        return x.expand(3, -1, -1)
    raise CnnlabError(f"predict: an image with {x.shape[0]} channels; the model takes {channels}")


def read_file(
    path: Path, channels: int, size: int, resize: str, bits: int = 16
) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file as uint8 (channels, size, size), decoded as image_folder and table do,
    and its own (width, height), upright."""
    _a_file(path)
    try:
        return read_image(path, size, resize, "L" if channels == 1 else "RGB", bits)
    except Exception as err:  # not an image, truncated, unsupported
        raise CnnlabError(f"predict: {path} is not a readable image ({err})") from None


def _open(path: Path) -> Image.Image:
    _a_file(path)
    try:
        with open_image(path) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as err:
        raise CnnlabError(f"predict: {path} is not a readable image ({err})") from None


def _a_file(path: Path) -> None:
    """Refuse what is not a file. A folder is not expanded: the answers carry no file names,
    so its images' order would be a guess; `image_paths` lists them as the CLI does."""
    if path.is_dir():
        raise CnnlabError(
            f"predict: {path} is a folder; pass its image files: "
            f"cnnlab.predict.image_paths([{str(path)!r}]) lists them, sorted, as `cnnlab "
            "predict` does"
        )
    if not path.is_file():
        raise CnnlabError(f"predict: {path} not found")
