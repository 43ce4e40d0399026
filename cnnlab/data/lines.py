"""The lines a data source says as it loads: how it was read (held in memory, the cache
reused, rows left out, each class's rows). Said when data is loaded to train or resume; a
trained run's data read again for its figures, eval, calibration or export stays quiet,
where a notebook showed the same lines under every `run.figure(...)` and `run.export()`.
Warnings (files skipped, a 16-bit image that decodes dark) are printed every time: the
files may have changed since training.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_QUIET: ContextVar[bool] = ContextVar("cnnlab_quiet_loading", default=False)
_HEARD: ContextVar[list[str] | None] = ContextVar("cnnlab_loading_warnings", default=None)


def say(line: str) -> None:
    """One loading line on stderr, unless loading `quietly`."""
    if not _QUIET.get():
        print(line, file=sys.stderr)


@contextmanager
def quietly() -> Iterator[None]:
    """Loading lines left unsaid within: a trained run's data read again."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def warn(line: str) -> None:
    """A loading warning on stderr, always, and kept for `remembered` to say again."""
    print(line, file=sys.stderr)
    heard = _HEARD.get()
    if heard is not None:
        heard.append(line)


@contextmanager
def remembered() -> Iterator[list[str]]:
    """The warnings said while loading within, gathered: a run says them again once it has
    finished, where a skipped row's line would otherwise sit hundreds of lines up."""
    heard: list[str] = []
    token = _HEARD.set(heard)
    try:
        yield heard
    finally:
        _HEARD.reset(token)
