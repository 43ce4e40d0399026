"""Data sources by name: each one's recipe section, its cheap description and its tensors.

A new source is one file (its `DataSection` subclass, `describe`, `load`, `locate` and a
`SOURCE` entry) and one line in SOURCES, or, outside cnnlab, one `cnnlab.register_source`
call (cnnlab/components.py); the recipe's `data.source` picks it, and nothing else in cnnlab
changes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from cnnlab.data import cifar10, colorize, fashion_mnist, gsn, image_folder, skimage_photos, table
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet, Source
from cnnlab.data.colorize import TARGET
from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.registrations import register_hint

SOURCES: dict[str, Source] = {
    "fashion_mnist": fashion_mnist.SOURCE,
    "cifar10": cifar10.SOURCE,
    "image_folder": image_folder.SOURCE,
    "gsn": gsn.SOURCE,
    "table": table.SOURCE,
    "skimage_photos": skimage_photos.SOURCE,
}

DEFAULT_SOURCE = "fashion_mnist"  # a data section without `source` (older recipes) reads it


def _source_of(raw: Any) -> str | None:
    """The tag of a data section, raw or validated."""
    if isinstance(raw, dict):
        return raw.get("source", DEFAULT_SOURCE)
    return getattr(raw, "source", None)


def data_config() -> Any:
    """The recipe's `data` section as SOURCES holds it now: one config per source, told apart
    by `source` (cnnlab/recipe.py rebuilds the recipe with it after a registration). Pydantic
    accepts the tagged union with a single member too, so the errors read the same with one."""
    members = tuple(Annotated[s.config, Tag(name)] for name, s in SOURCES.items())
    return Annotated[Union[members], Discriminator(_source_of)]  # noqa: UP007 (built at run time)


DataConfig = data_config()  # the built-in sources' section


def default_data() -> DataSection:
    return SOURCES[DEFAULT_SOURCE].config()


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise CnnlabError(
            f"data.source {name!r} is unknown{did_you_mean(name, SOURCES)}; "
            f"choose one of: {', '.join(SOURCES)}; "
            f"{register_hint('source')}"
        )
    return SOURCES[name]


def list_datasets() -> dict[str, str]:
    return {name: source.doc for name, source in SOURCES.items()}


def describe(cfg: DataSection, say: bool = False) -> DataInfo:
    """What the recipe's source provides, from headers only: no pixel is read. Colorizing
    turns it into grey images with a per-pixel `colour` target. `say`: with the lines
    loading would say of the files (`cnnlab check`)."""
    entry = get_source(cfg.source)
    info = ((say and entry.checked) or entry.describe)(cfg.located())
    if cfg.colorize is None:
        return info
    colorize.check_colour(cfg.source, info.shape[0])
    names = colorize.placeholder_names(cfg.colorize)
    return replace(info, shape=(1, *info.shape[1:]), targets={**info.targets, TARGET: names})


def load_dataset(source: str, root: str | None = None) -> Dataset:
    entry = get_source(source)
    return entry.load(entry.config(root=root))


__all__ = [
    "SOURCES",
    "DataConfig",
    "DataInfo",
    "DataSection",
    "Dataset",
    "ImageSet",
    "Source",
    "data_config",
    "default_data",
    "describe",
    "get_source",
    "list_datasets",
    "load_dataset",
]
