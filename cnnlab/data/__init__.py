"""Data sources by name, and the split of a source into train / val / test.

A new source is one file with a `load(root) -> Dataset` function and one entry in SOURCES.
"""

from __future__ import annotations

from collections.abc import Callable

from cnnlab.data import fashion_mnist
from cnnlab.data.base import Dataset, ImageSet
from cnnlab.errors import CnnlabError

SOURCES: dict[str, tuple[Callable[..., Dataset], str]] = {
    "fashion_mnist": (fashion_mnist.load, "Fashion-MNIST 28x28 grayscale, 10 classes + ink"),
}


def list_datasets() -> dict[str, str]:
    return {name: doc for name, (_, doc) in SOURCES.items()}


def load_dataset(source: str, root: str | None = None) -> Dataset:
    if source not in SOURCES:
        raise CnnlabError(f"data.source {source!r} is unknown; choose one of: {', '.join(SOURCES)}")
    return SOURCES[source][0](root)


__all__ = ["SOURCES", "Dataset", "ImageSet", "list_datasets", "load_dataset"]
