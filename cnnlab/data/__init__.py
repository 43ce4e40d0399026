"""Data sources by name, and the split of a source into train / val / test.

A new source is one file with a `load(root) -> Dataset` function and one entry in SOURCES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnlab.data import fashion_mnist
from cnnlab.data.base import Dataset, ImageSet
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Source:
    load: Callable[..., Dataset]  # (root) -> Dataset
    locate: Callable[..., dict[str, Path]]  # (root, allow_download) -> files; raises if missing
    doc: str


SOURCES: dict[str, Source] = {
    "fashion_mnist": Source(
        fashion_mnist.load, fashion_mnist.locate, "Fashion-MNIST 28x28 grayscale, 10 classes + ink"
    ),
}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise CnnlabError(f"data.source {name!r} is unknown; choose one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def list_datasets() -> dict[str, str]:
    return {name: source.doc for name, source in SOURCES.items()}


def load_dataset(source: str, root: str | None = None) -> Dataset:
    return get_source(source).load(root)


__all__ = ["SOURCES", "Dataset", "ImageSet", "get_source", "list_datasets", "load_dataset"]
