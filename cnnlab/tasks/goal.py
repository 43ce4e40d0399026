"""Which way a metric improves: one type for the loop's best epoch, early stopping, sweeps
(W&B's `goal: maximize`), selection and the reports."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class Goal(StrEnum):
    """`minimize` or `maximize`, spelled as W&B's sweep files spell it (and stored so)."""

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    @property
    def sign(self) -> int:
        """+1 when larger is better: `sign * value` always grows with quality."""
        return 1 if self is Goal.MAXIMIZE else -1

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b`."""
        return self.sign * a > self.sign * b

    def best(self, items: Iterable[T], key: Callable[[T], float]) -> T:
        """The best of `items` by `key` (the first of equals)."""
        return (max if self is Goal.MAXIMIZE else min)(items, key=key)
