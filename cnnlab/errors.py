"""One exception type for every problem a user can fix.

The CLI prints `CnnlabError` as a single line (what is wrong and how to fix it) and exits
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class CnnlabError(Exception):
    """A problem with the user's input or environment, stated with its fix. `also`: the
    other problems found in the same input (a recipe's every wrong key), a line each, so
    that one run of a command names them all."""

    def __init__(self, message: str, also: Iterable[str] = ()):
        super().__init__(message)
        self.also = list(also)

    def lines(self) -> list[str]:
        return [str(self), *self.also]

    def _render_traceback_(self) -> list[str]:
        """What IPython and Jupyter show of it: its lines, as the command line does, not the
        frames of cnnlab's insides above it (IPython's hook for exceptions of a library)."""
        return [f"{type(self).__name__}: {line}" for line in self.lines()]


SHOWN = 5  # items one message line names before "and N more"


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` and the noun agreeing with it ("1 file", "2 files", "1,000 rows"): a message
    read by a person says "1 file skipped", not "1 files"."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def listed(items: list[str], sep: str = "; ", most: int = SHOWN) -> str:
    """The first `most` items a message line names, and how many more there are."""
    more = f"{sep}and {len(items) - most} more" if len(items) > most else ""
    return sep.join(items[:most]) + more


def did_you_mean(
    word: str, choices: Iterable[str], shown: Callable[[str], str] = str, cutoff: float = 0.7
) -> str:
    """' (did you mean 'X'?)' for the choice a mistyped `word` most likely meant: the one
    that differs only in case, else the closest spelling; '' when none is close. `shown`
    writes the choice as the message names it (a recipe key with its section). `cutoff`:
    0.7, not difflib's 0.6, which offered 'feature-maps' for 'heatmap'; among a few short
    names of the user's own (tasks), 0.6 finds 'cls' for 'clz'."""
    choices = [str(c) for c in choices]
    close = [c for c in choices if c.casefold() == word.casefold()]
    close = close or difflib.get_close_matches(word, choices, 1, cutoff=cutoff)
    return f" (did you mean {shown(close[0])!r}?)" if close else ""
