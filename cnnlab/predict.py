"""`cnnlab predict`: an ImageNet-pretrained network used as it is (seed 002, Part C).

Each image goes through timm's own evaluation transform for the model (resize, centre crop,
its mean and std), the network gives its 1,000 ImageNet probabilities, and the top classes
are printed by timm's ImageNet names and drawn beside the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from cnnlab.data.decoded import HEIF, as_read, open_image
from cnnlab.errors import CnnlabError
from cnnlab.models.timm_backbone import pretrained_state, timm_arch
from cnnlab.models.weights import load_checked

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", *HEIF}


@dataclass
class Prediction:
    path: Path
    image: Image.Image  # as it was read, RGB
    top: list[tuple[str, float]]  # (ImageNet class name, probability), best first


def image_paths(inputs: list[Path]) -> list[Path]:
    """The files named, and the images inside any folder named, its sub-folders' too (a data
    set's class folders), sorted; hidden files and folders are left out."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(item).parts)
                and p.is_file()
            )
        elif item.is_file():
            paths.append(item)
        else:
            raise CnnlabError(f"{item}: no such file or folder; give image files or a folder")
    if not paths:
        raise CnnlabError(
            f"no images in {', '.join(map(str, inputs))} ({', '.join(IMAGE_SUFFIXES)})"
        )
    return paths


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
    load_checked(model, state, source)
    return model.eval()


@torch.inference_mode()
def predict(
    name: str, inputs: list[Path], top: int = 5, weights: str | None = None, batch: int = 32
) -> list[Prediction]:
    """Top-`top` ImageNet classes of every image."""
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    model = imagenet_model(name, weights)
    transform = create_transform(**resolve_data_config({}, model=model))
    info = ImageNetInfo()
    paths = image_paths(inputs)
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
