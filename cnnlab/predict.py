"""`cnnlab predict`: an ImageNet-pretrained network used as it is (seed 002, Part C).

Each image goes through timm's own evaluation transform for the model (resize, centre crop,
its mean and std), the network gives its 1,000 ImageNet probabilities, and the top classes
are printed by timm's ImageNet names and drawn beside the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from cnnlab.data.decoded import DECODE_THREADS, HEIF, as_read, open_image, warn_skipped
from cnnlab.errors import CnnlabError
from cnnlab.models.timm_backbone import pretrained_state, timm_arch
from cnnlab.models.weights import load_checked
from cnnlab.runs import is_run_folder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", *HEIF}


@dataclass
class Prediction:
    path: Path
    image: Image.Image  # as it was read, RGB
    top: list[tuple[str, float]]  # (ImageNet class name, probability), best first


def image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """The files named, and the images inside any folder named, its sub-folders' too (a data
    set's class folders), sorted; hidden files and folders are left out. A folder's file
    that does not decode (truncated, not an image) is skipped and named in one warning, as
    training skips it, so one bad file does not stop the rest; a file named is kept, and
    its reader stops on it with one line."""
    paths: list[Path] = []
    skipped: list[Path] = []
    for item in map(Path, inputs):
        if is_run_folder(item):  # its report's PNGs read as images, unsaid
            raise CnnlabError(
                f"predict: {item} is a run folder, not images; name the run first and the "
                f"images after it: cnnlab predict {item} IMAGES"
            )
        if item.is_dir():
            found = _in_folder(item)
            with ThreadPoolExecutor(DECODE_THREADS) as pool:  # Pillow decodes without the GIL
                readable = list(pool.map(_readable, found))
            for path, ok in zip(found, readable, strict=True):
                (paths if ok else skipped).append(path)
        elif item.is_file():
            paths.append(item)
        else:
            raise CnnlabError(
                f"predict: {item}: no such file or folder; give image files or a folder"
            )
    warn_skipped("predict", [str(p) for p in skipped])
    if not paths:
        said = f"{len(skipped)} found, none of them decodes" if skipped else "none found"
        raise CnnlabError(
            f"no readable images in {', '.join(map(str, inputs))} ({said}); give image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return paths


def _in_folder(folder: Path) -> list[Path]:
    """A folder's image files by suffix, its sub-folders' too, sorted; hidden ones left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _readable(path: Path) -> bool:
    """Whether the file decodes to its end: a truncated one opens, then fails to load. A
    JPEG is decoded at an eighth of its size, which still reads all of its data."""
    try:
        with open_image(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (1, 1))
            im.load()
        return True
    except Exception:  # whatever the file held: skipped and named, as training does
        return False


def read_rgb(path: Path) -> Image.Image:
    try:
        with open_image(path) as img:
            return as_read(img).convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise CnnlabError(f"{path}: not a readable image ({err}); remove it or fix it") from None


def imagenet_model(name: str, weights: str | None = None) -> torch.nn.Module:
    """timm's network for cnnlab's `name` with its ImageNet classifier, weights checked."""
    import timm

    model = timm.create_model(timm_arch(name), pretrained=False)
    state, source = pretrained_state(name, weights)
    load_checked(model, state, source, say=False)  # used as it is: its answers say enough
    return model.eval()


@torch.inference_mode()
def predict(
    name: str, inputs: list[Path], top: int = 5, weights: str | None = None, batch: int = 32
) -> list[Prediction]:
    """Top-`top` ImageNet classes of every image."""
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    paths = image_paths(inputs)  # a wrong argument is said before the model loads
    model = imagenet_model(name, weights)
    transform = create_transform(**resolve_data_config({}, model=model))
    info = ImageNetInfo()
    out: list[Prediction] = []
    for lo in range(0, len(paths), batch):
        chunk = paths[lo : lo + batch]
        images = [read_rgb(p) for p in chunk]
        x = torch.stack([transform(img) for img in images])
        probs = model(x).float().softmax(1)
        values, index = probs.topk(top, dim=1)
        for path, img, v, i in zip(chunk, images, values, index, strict=True):
            names = [info.index_to_description(int(k)) for k in i]
            out.append(Prediction(path, img, list(zip(names, v.tolist(), strict=True))))
    return out


def draw(predictions: list[Prediction], path: Path, title: str) -> Path:
    """Each image beside a bar chart of its top classes; one row per image."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no window

    rows = len(predictions)
    fig = Figure(figsize=(9, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False, width_ratios=[1, 1.6])
    for (ax_img, ax_bar), p in zip(axes, predictions, strict=True):
        ax_img.imshow(p.image)
        ax_img.set_title(p.path.name, fontsize=9)
        ax_img.axis("off")
        names = [n.split(",")[0] for n, _ in p.top][::-1]
        ax_bar.barh(names, [v for _, v in p.top][::-1], color="#4c72b0")
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability")
        ax_bar.tick_params(labelsize=8)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
