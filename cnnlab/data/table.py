"""A table of images and their targets: `images/0001.png` plus a CSV or Parquet file of
columns, the commonest layout of anyone's own data.

    data:
      source: table
      table: my_data/labels.csv        # or .parquet; relative to data.root when given
      image_column: image              # paths relative to data.root, else the table's folder
      targets:
        shape: {kind: category, column: shape}            # classes: sorted distinct values
        size: {kind: number, column: size}                # a regression target
        counts: {kind: vector, columns: [squares, circles]}
        mask: {kind: mask, column: mask, classes: [background, disc, square]}
      split: {column: split}           # optional; without it test and val are carved

Targets: `category` (strings or integers; classes are the sorted distinct values, or the
recipe's `classes` list, in that order), `number` (float), `vector` (several numeric columns
as one target, its components named by them) and `mask` (a path to a PNG of class indices,
grey or palette, resized with nearest neighbour; 255 means "no label"; classes from the
recipe's list, else 0..max found).

Augmentation keeps labels true: a mask moves with its image (cnnlab/data/augment.py), a
category or a number is unchanged by a flip, a turn or a shift, and a vector target is
refused under a geometric transform unless the recipe says how it changes:
`hflip: same`, `hflip: {swap: [[right, left]]}`, `rot90: {cycle: [up, left, down, right]}`
(a counter-clockwise quarter turn moves each column's value to the next).

`describe()` reads the table and checks every row before any pixel is decoded: a missing
column, an empty table, an empty cell, a value that is not a number (a semicolon-separated
table's decimal commas are read: 21,241; a thousands separator is refused), a duplicated
path, a path or link leading outside the folder, an image or mask file that does not
exist (its row skipped with a warning, or the run stopped: `on_bad_image`), an unknown
split value, a class too small to carve from. Pixels are decoded once, in parallel, into the cache
(cnnlab/data/decoded.py), which notices a changed image, mask or table. Decoding checks each
mask against its image, from the headers it opens anyway: grey or palette, and its image's
size (a colour mask or one of another size is refused with its reason, as on_bad_image says).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from cnnlab.config import Section
from cnnlab.data.augment import GEOMETRIC, NO_LABEL, LabelMap, Targets
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet, Source
from cnnlab.data.decoded import (
    WIDE,
    Refused,
    cached_decode,
    dark_warning,
    decode_mask,
    open_image,
    read_image,
)
from cnnlab.data.files import stays_inside
from cnnlab.data.mapped import Pixels
from cnnlab.data.memory import Storage
from cnnlab.data.split import stratified_split
from cnnlab.errors import CnnlabError, counted, listed

# bump when the cached arrays or their identity change meaning (2: a mask of another size
# than its image, stretched before, is refused; refusals are kept with their reasons)
FORMAT = 2
TEST_SEED = 0  # the carved test rows are the same for every run seed


# ------------------------------------------------------------------------------ config


class Move(Section):
    """How a geometric transform changes a vector target's components."""

    # flips: pairs of columns whose values trade places
    swap: list[tuple[str, str]] = Field(default_factory=list)
    # rot90: a quarter turn (counter-clockwise) moves each column's value to the next
    cycle: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> Move:
        if bool(self.swap) == bool(self.cycle):
            raise ValueError("give swap: [[a, b], ...] (a flip) or cycle: [a, b, ...] (rot90)")
        return self


class TargetColumn(Section):
    """One target of the table: its kind and where its values are."""

    kind: Literal["category", "number", "vector", "mask"]  # a class, a value, values, a mask
    column: str | None = None  # category, number, mask: the column read
    columns: list[str] | None = None  # vector: the components, in this order
    classes: list[str] | None = None  # category: values in class order; mask: index names
    # vector only: how each geometric transform changes it; None = not declared (refused)
    hflip: Literal["same"] | Move | None = None
    vflip: Literal["same"] | Move | None = None  # as hflip, for a vertical flip
    rot90: Literal["same"] | Move | None = None  # as hflip, for a quarter turn
    translate: Literal["same"] | None = None  # a shift: same, or refused

    @model_validator(mode="after")
    def _columns_fit_kind(self) -> TargetColumn:
        if self.kind == "vector":
            if not self.columns or self.column:
                raise ValueError("a vector target names its components with columns: [a, b, ...]")
            for name in GEOMETRIC:
                move = getattr(self, name)
                if isinstance(move, Move):
                    unknown = {c for pair in move.swap for c in pair} | set(move.cycle)
                    unknown -= set(self.columns)
                    if unknown:
                        raise ValueError(f"{name} names {sorted(unknown)}, not in columns")
                    if (move.swap and name == "rot90") or (move.cycle and name != "rot90"):
                        raise ValueError(f"{name}: flips swap columns, a rot90 cycles them")
        else:
            if not self.column or self.columns:
                raise ValueError(f"a {self.kind} target names one column: column: NAME")
            if any(getattr(self, name) is not None for name in GEOMETRIC):
                raise ValueError(
                    f"only a vector target declares moves; a {self.kind} target keeps its "
                    "label under flips, turns and shifts (a mask moves with its image)"
                )
        return self


class SplitColumn(Section):
    """Which rows are train, val and test, by the values of one column (compared as text,
    in any case: Train, TEST)."""

    column: str  # the column whose values say train, val or test
    train: list[str] = Field(default_factory=lambda: ["train"])  # values meaning train
    # none of these present: validation is carved from train
    val: list[str] = Field(default_factory=lambda: ["val", "valid", "validation"])
    test: list[str] = Field(default_factory=lambda: ["test"])  # values meaning test


class TableConfig(DataSection):
    """`data:` of a table recipe."""

    source: Literal["table"] = "table"
    table: str  # the CSV or Parquet file; relative to data.root when given, else to the cwd
    image_column: str = "image"  # the column of image paths (relative to the table's folder)
    targets: dict[str, TargetColumn] = Field(min_length=1)  # target name -> columns it is read from
    split: SplitColumn | None = None  # rows' split by a column; None: val and test carved
    # rows with one value here stay in one split (the images of one patient, object or
    # session): val and test are carved by whole groups, and a split column may not part one
    group_column: str | None = None
    # images become image_size x image_size; None: the first image's shorter side
    image_size: int | None = Field(None, ge=8)
    resize: Literal["crop", "squash"] = "crop"  # crop: the centre square of the shorter side
    # 16-bit images: the bits their values use, 2**bits - 1 read as white (12: a 12-bit
    # camera's 0-4095; as 16 bits they would keep 16 grey levels, near black)
    bits: int = Field(16, ge=9, le=16)
    channels: Literal[1, 3] | None = None  # 1 grey, 3 RGB; None: as the first image is
    test_fraction: float = Field(0.2, gt=0.0, lt=0.9)  # carved when there is no split column
    on_bad_image: Literal["skip", "stop"] = "skip"  # a missing or unreadable image or mask
    # decoded images held in memory, or mapped from the cache file and read by batch; auto:
    # mapped when the cache is over half the memory available (masks stay in memory)
    storage: Storage = "auto"
    path_fields: ClassVar[tuple[str, ...]] = ("root", "table")

    def relative_paths(self) -> dict[str, str]:
        paths = super().relative_paths()
        if self.root:  # the table is then relative to data.root, not to the working folder
            paths.pop("table", None)
        return paths

    def maps(self) -> dict[str, LabelMap | None]:
        return {name: _map(self, name) for name in GEOMETRIC if _declared(self, name)}

    def refusal(self, name: str) -> str:
        missing = [t for t, c in self.targets.items() if c.kind == "vector" and not _moves(c, name)]
        return (
            f"the vector target {missing[0]} does not declare it: add "
            f"data.targets.{missing[0]}.{name}: same (or how it moves)"
            if missing
            else ""
        )

    def per_pixel(self, target: str) -> bool:
        spec = self.targets.get(target)
        return (spec is not None and spec.kind == "mask") or super().per_pixel(target)

    def keeps_classes(self, target: str) -> bool:
        spec = self.targets.get(target)
        return spec is not None and spec.kind != "vector"


def _moves(spec: TargetColumn, name: str) -> Literal["same"] | Move | None:
    return getattr(spec, name)


def _declared(cfg: TableConfig, name: str) -> bool:
    return all(_moves(c, name) is not None for c in cfg.targets.values() if c.kind == "vector")


def _map(cfg: TableConfig, name: str) -> LabelMap | None:
    """The label map of one declared transform: None when no vector target changes."""
    moves = {
        t: (c.columns or [], m)
        for t, c in cfg.targets.items()
        if c.kind == "vector" and isinstance(m := _moves(c, name), Move)
    }
    if not moves:
        return None

    def apply(targets: Targets, drawn: torch.Tensor) -> Targets:
        out = dict(targets)
        for target, (columns, move) in moves.items():
            if target in out:
                out[target] = _moved(out[target], columns, move, drawn)
        return out

    return apply


def _moved(v: torch.Tensor, columns: list[str], move: Move, drawn: torch.Tensor) -> torch.Tensor:
    """A vector target after a flip (drawn: bool per image) or quarter turns (drawn: 0..3)."""
    at = {c: i for i, c in enumerate(columns)}
    if move.swap:
        perm = list(range(len(columns)))
        for a, b in move.swap:
            perm[at[a]], perm[at[b]] = at[b], at[a]
        return torch.where(drawn[:, None], v[:, perm], v)
    ring = torch.tensor([at[c] for c in move.cycle], device=v.device)
    n = len(ring)
    # after k turns the value at ring[q] came from ring[q - k]
    src = ring[(torch.arange(n, device=v.device)[None, :] - drawn[:, None]) % n]  # (B, n)
    out = v.clone()
    out[:, ring] = v.gather(1, src)
    return out


# ------------------------------------------------------------------------------ rows


@dataclass
class Rows:
    """The table read and checked: what describe() knows, and load() decodes."""

    table: Path  # resolved
    base: Path  # resolved folder the paths are relative to
    images: list[str]  # relative paths, as written
    masks: dict[str, list[str]]  # mask target -> relative paths
    values: dict[str, np.ndarray]  # category: (N,) class index; number (N,); vector (N, K)
    classes: dict[str, list[str]]  # category (and mask, when listed) class names
    split: np.ndarray | None  # (N,) 0 train, 1 val, 2 test; None: carved
    shape: tuple[int, int, int]
    groups: np.ndarray | None = None  # (N,) group ids (group_column); None: every row its own
    # rows left out, a file they name not existing: "line 7, column 'image': a.png", a row each
    absent: list[str] = field(default_factory=list)


def _table_path(cfg: TableConfig) -> Path:
    path = Path(cfg.table).expanduser()
    if not path.is_absolute() and cfg.root:
        path = Path(cfg.root).expanduser() / path
    return path


SEPARATORS = (",", ";", "\t", "|")


def separator(path: Path) -> str:
    """The CSV's separator, the commonest of SEPARATORS in its header line: a spreadsheet
    saved where the decimal mark is a comma writes `;`, a .tsv file tabs."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _read(path: Path) -> Any:
    """The table as a pandas DataFrame of its raw values (strings stay strings)."""
    import pandas as pd  # imported here: `import cnnlab` and other recipes need no pandas

    if not path.is_file():
        what = "no such file" if not path.exists() else "not a file"
        raise CnnlabError(
            f"data.table: {path}: {what}; point data.table at the CSV or Parquet file "
            "(`cnnlab data shapes --out FOLDER` writes an example one)"
        )
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(
            path, sep=separator(path), dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except ImportError as err:
        raise CnnlabError(f"data.table: {path}: reading Parquet needs pyarrow ({err})") from None
    except Exception as err:  # malformed CSV, not Parquet, not UTF-8
        raise CnnlabError(f"data.table: {path}: cannot read it ({err})") from None


# what to do about each kind of problem, said once at the end of the line
FILL = (
    "fill in each empty cell or remove its row (a row with an empty path or target stops "
    "the run: none is skipped)"
)
PLAIN = (
    "write each number plainly (0.25, 1e-3: a decimal point, no units or words), or remove its row"
)
COMMA = (
    "write numbers with a decimal point and no thousands separator (0.25 and 1234, not 0,25 "
    "and 1,234), or save the table separated by semicolons, whose decimal commas are read"
)
TWICE = "remove each repeated row, or correct its path"


class _Problems:
    """Bad values collected over the whole table and reported in one line: grouped by
    column and kind of problem, each group's lines listed compactly, and each kind's fix
    said once at the end. Listed one by one and cut after five, a table with dozens of bad
    cells was fixed five at a time, its hint repeated on every value."""

    def __init__(self, path: Path):
        self.path, self.csv = path, path.suffix.lower() not in (".parquet", ".pq")
        # (column, kind) -> [(row, detail)], in the order the groups are first found
        self.groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
        self.fixes: dict[tuple[str, str], dict[str, None]] = {}  # (column, kind) -> fixes

    def number(self, row: int) -> int:
        return row + 2 if self.csv else row + 1  # CSV: the header is line 1

    def where(self, row: int) -> str:
        return f"{'line' if self.csv else 'row'} {self.number(row)}"

    def add(self, row: int, column: str, kind: str, detail: str = "", fix: str = "") -> None:
        """One bad cell: its `kind` ("no class"), what is in it (its value or path) and
        what to do about it."""
        self.groups.setdefault((column, kind), []).append((row, detail))
        self.fixes.setdefault((column, kind), {})[fix] = None

    def refix(self, column: str, kind: str, fix: str) -> None:
        """A better fix for a whole group, known once the column is read."""
        if (column, kind) in self.groups:
            self.fixes[column, kind] = {fix: None}

    def _group(self, kind: str, found: list[tuple[int, str]]) -> str:
        """`not a number on lines 6 ('n/a'), 9 ('x')`; what every line holds is said
        once: `on lines 6, 9 (all 'n/a')`."""
        found = sorted(found, key=lambda f: f[0])
        details = {detail for _, detail in found}
        shared = details.pop() if len(details) == 1 else None
        items = [
            f"{self.number(row)} ({detail})" if detail and shared is None else f"{self.number(row)}"
            for row, detail in found
        ]
        unit = ("line" if self.csv else "row") + ("s" if len(found) > 1 else "")
        tail = f" ({'all ' if len(found) > 1 else ''}{shared})" if shared else ""
        return f"{kind} on {unit} {listed(items, ', ')}{tail}"

    def raise_any(self) -> None:
        """The line: the groups of a column together, in the order of their first lines,
        then each fix once, in the same order."""
        if not self.groups:
            return
        first = {key: min(row for row, _ in found) for key, found in self.groups.items()}
        by_column: dict[str, int] = {}
        for (column, _), row in sorted(first.items(), key=lambda f: f[1]):
            by_column.setdefault(column, row)
        order = sorted(self.groups, key=lambda key: (by_column[key[0]], first[key]))
        n = sum(len(found) for found in self.groups.values())
        fixes = dict.fromkeys(fix for key in order for fix in self.fixes[key] if fix)
        parts = [
            (f"column {column!r}: " if i == 0 or order[i - 1][0] != column else "")
            + self._group(kind, self.groups[column, kind])
            for i, (column, kind) in enumerate(order)
        ]
        raise CnnlabError(
            f"data.table: {self.path}: {counted(n, 'bad value')}: " + "; ".join(parts + list(fixes))
        )


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _paths(
    df: Any, column: str, base: Path, problems: _Problems, absent: list[tuple[int, str, str]]
) -> list[str]:
    """The column's relative paths, each checked to stay inside `base` (links too) and to
    exist (`absent` gets those that do not: (row, column, path)). A table written on Windows
    separates folders by backslashes: read as slashes (on Windows too)."""
    out: list[str] = []
    folders: dict[str, tuple[Path, bool]] = {}
    for row, value in enumerate(df[column].tolist()):
        rel = _text(value).strip().replace("\\", "/")
        out.append(rel)
        if not rel:
            problems.add(row, column, "no path", fix=FILL)
            continue
        found = _file_state(base, rel, folders)
        if found == "outside":
            problems.add(row, column, "a path leading outside the folder", rel, _fix_outside(base))
        elif found == "missing":
            absent.append((row, column, rel))
    return out


def _fix_outside(base: Path) -> str:
    """Where paths are read from, and why one leading out is refused (not read, not fixed):
    no path a file lists may reach beyond the folder it names its files in."""
    return (
        f"write paths relative to {base} (data.root when set, else the table's folder): an "
        "absolute path, or a path or link leading out of it, is refused, as a table's files "
        "must stay inside its folder"
    )


def _file_state(
    base: Path, rel: str, folders: dict[str, tuple[Path, bool]]
) -> Literal["there", "missing", "outside"]:
    """Whether base/rel is a file inside `base`, leads outside it, or is not there. One
    lstat per path says both whether it exists and whether it is a link (only a link is
    resolved, files.stays_inside). Built from strings, not Paths: 60,000 rows take 0.26 s,
    half the 0.51 s that checking links alone took with Paths (2-core AMD EPYC, warm cache)."""
    if os.path.isabs(rel):
        return "outside"
    path = os.path.join(base, rel)
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in it
        return "missing" if stays_inside(base, rel, folders, link=False) else "outside"
    except OSError:  # there, but not to be looked at: decoding names it as unreadable
        link = False
    if not stays_inside(base, rel, folders, link):
        return "outside"
    return "missing" if link and not os.path.exists(path) else "there"  # a dangling link


# a number's characters: digits with commas or points, an exponent (pandas: 1,5e-05)
NUMERIC = re.compile(r"[+-]?[\d.,]*\d[\d.,]*(?:[eE][+-]?\d+)?")
WHOLE = re.compile(r"[+-]?\d+")
# 1,234 or 1.234: three decimals, or a thousands separator?
THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}[.,]\d{3}")
# what a thousands separator may have written, and its fix
GROUPS = "a thousands separator", "write numbers without thousands separators: 1234,5"
MIXED = "write every number of a column with the same decimal mark"
AMBIGUOUS = (
    "thousands or three decimals?",
    "write numbers without thousands separators, and if these are decimals, the column's "
    "whole numbers with three too (850,000)",
)


def _decimal_commas(texts: list[str], column: str, problems: _Problems) -> list[str | None]:
    """A column of a semicolon-separated table (what a spreadsheet saves where the decimal
    mark is a comma) with its decimal commas read as points: 21,241 is 21.241. What a
    thousands separator may have written is refused (None), never guessed: two marks in a
    number (1.234,5), commas and points in one column, or every mark followed by three
    digits beside whole numbers written without one (850; 1,234)."""
    marked = {r: t for r, t in enumerate(texts) if NUMERIC.fullmatch(t) and not WHOLE.fullmatch(t)}
    out: list[str | None] = list(texts)

    def refuse(rows: list[int], kind: str, fix: str) -> None:
        for row in rows:
            problems.add(row, column, kind, repr(texts[row]), fix)
            out[row] = None

    refuse([r for r, t in marked.items() if t.count(",") + t.count(".") > 1], *GROUPS)
    single = {r: t for r, t in marked.items() if out[r] is not None}
    commas = [r for r, t in single.items() if "," in t]
    points = [r for r, t in single.items() if "." in t]
    if commas and points:  # the fewer are the odd ones out
        odd, marks = (
            (points, ("point", "commas"))
            if len(points) <= len(commas)
            else (commas, ("comma", "points"))
        )
        refuse(odd, "a decimal {} among decimal {}".format(*marks), MIXED)
    elif _thousands(single, texts):
        refuse(list(single), *AMBIGUOUS)
    for row in commas:
        if out[row] is not None:
            out[row] = texts[row].replace(",", ".")
    return out


def _thousands(marked: dict[int, str], texts: list[str]) -> bool:
    """Whether every marked value may be a thousands group (1,234 or 1.234, no leading 0)
    and whole numbers beside them have no mark: 850; 1,234 may be 850 and 1234."""
    shaped = bool(marked) and all(THOUSANDS.fullmatch(t) for t in marked.values())
    return shaped and any(WHOLE.fullmatch(t) for t in texts)


def _numbers(
    df: Any, column: str, problems: _Problems, target: str, comma: bool, vector: bool = False
) -> np.ndarray:
    """(N,) float32 values of a number column (of `target`, a component when `vector`);
    `comma`: the table is separated by semicolons, so a decimal comma is read
    (_decimal_commas)."""
    texts = [_text(v).strip() for v in df[column].tolist()]
    read = _decimal_commas(texts, column, problems) if comma else texts
    out = np.zeros(len(df), dtype=np.float32)
    words: list[str] = []
    for row, (text, value) in enumerate(zip(texts, read, strict=True)):
        if value is None:  # refused by _decimal_commas
            continue
        if not value:
            problems.add(row, column, "no value", fix=FILL)
            continue
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if np.isfinite(number):
            out[row] = number
            continue
        fix = COMMA if "," in text and not comma else PLAIN  # a ';' table read its commas
        problems.add(row, column, "not a number", repr(text), fix)
        words.append(text)
    if len(words) * 2 > sum(map(bool, texts)):  # most are not numbers: another kind?
        problems.refix(column, "not a number", _wrong_kind(column, target, words, vector))
    return out


def _wrong_kind(column: str, target: str, words: list[str], vector: bool) -> str:
    """The fix when most of a number column is words: it holds classes, and "327 bad
    values" gave no hint that the recipe, not the table, was wrong."""
    some = listed([repr(w) for w in dict.fromkeys(words)], ", ", most=3)
    if vector:
        return (
            f"column {column!r} holds words ({some}), not numbers: take it out of "
            f"data.targets.{target}.columns (a vector's components are numbers, and a column "
            "of classes is a target of its own, kind: category)"
        )
    return (
        f"column {column!r} holds words ({some}), not numbers: if they are classes, set "
        f"data.targets.{target}.kind: category"
    )


def _categories(
    df: Any, column: str, listed: list[str] | None, problems: _Problems, target: str
) -> tuple[np.ndarray, list[str]]:
    """(class index per row, class names): the recipe's list, else the sorted distinct values
    (numerically when every value is an integer)."""
    raw = [_text(v).strip() for v in df[column].tolist()]
    for row, value in enumerate(raw):
        if not value:
            problems.add(row, column, "no class", fix=FILL)
    present = sorted({v for v in raw if v})
    if listed is not None:
        names = list(listed)
    elif present and all(_is_int(v) for v in present):
        names = sorted(present, key=int)
    else:
        names = present
    index = {name: i for i, name in enumerate(names)}
    labels = np.zeros(len(raw), dtype=np.int64)
    for row, value in enumerate(raw):
        if value and value not in index:
            fix = f"add each such value to data.targets.{target}.classes, or correct it"
            problems.add(row, column, "not a listed class", repr(value), fix)
        labels[row] = index.get(value, 0)
    return labels, names


def _is_int(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except ValueError:
        return False


def _splits(df: Any, cfg: SplitColumn, problems: _Problems) -> np.ndarray:
    named = ((cfg.train, 0), (cfg.val, 1), (cfg.test, 2))
    codes = {v.casefold(): code for values, code in named for v in values}
    out = np.zeros(len(df), dtype=np.int64)
    for row, value in enumerate(df[cfg.column].tolist()):
        text = _text(value).strip()
        if text.casefold() not in codes:
            known = ", ".join(sorted(codes))
            fix = f"write a split as one of {known} (in any case), or add the value to "
            fix += "data.split.train, data.split.val or data.split.test"
            problems.add(row, cfg.column, "not a split value", repr(text), fix)
        out[row] = codes.get(text.casefold(), 0)
    return out


def _groups(df: Any, column: str, split: np.ndarray | None, problems: _Problems) -> np.ndarray:
    """Each row's group, named by the row it first appears on; a group parted between train,
    val and test by the split column is a problem (its images would be learnt and tested)."""
    first: dict[str, int] = {}
    out = np.zeros(len(df), dtype=np.int64)
    for row, value in enumerate(df[column].tolist()):
        text = _text(value).strip()
        if not text:
            problems.add(row, column, "no group", fix=FILL)
        out[row] = first.setdefault(text, row)
        if split is not None and split[row] != split[out[row]]:
            parts = ("train", "val", "test")
            there = f"{parts[split[out[row]]]} on {problems.where(out[row])}"
            problems.add(
                row, column, "a group in two splits",
                f"{text!r}: {parts[split[row]]} here, {there}",
                "a group's rows belong in one split: correct their split or group values",
            )  # fmt: skip
    return out


def read_rows(cfg: TableConfig) -> Rows:
    """The table, every row checked; no pixel is read (the first image's header fixes the
    shape when the recipe does not)."""
    path = _table_path(cfg)
    df = _read(path)
    base = (Path(cfg.root).expanduser() if cfg.root else path.parent).resolve()
    needed = [cfg.image_column] + ([cfg.split.column] if cfg.split else [])
    needed += [cfg.group_column] if cfg.group_column else []
    for spec in cfg.targets.values():
        needed += spec.columns or [spec.column]
    missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
    if missing:
        raise CnnlabError(
            f"data.table: {path} has no column {missing[0]!r}; its columns: "
            f"{', '.join(map(str, df.columns))}"
        )
    if len(df) == 0:
        raise CnnlabError(f"data.table: {path} has no rows under its header")
    problems = _Problems(path)
    comma = problems.csv and separator(path) == ";"  # decimal commas may be read
    absent: list[tuple[int, str, str]] = []  # files named that do not exist
    images = _paths(df, cfg.image_column, base, problems, absent)
    masks, values, classes = {}, {}, {}
    for name, spec in cfg.targets.items():
        if spec.kind == "mask":
            masks[name] = _paths(df, spec.column, base, problems, absent)
            if spec.classes:
                classes[name] = list(spec.classes)
        elif spec.kind == "category":
            values[name], classes[name] = _categories(df, spec.column, spec.classes, problems, name)
        elif spec.kind == "number":
            values[name] = _numbers(df, spec.column, problems, name, comma)
        else:
            parts = [_numbers(df, c, problems, name, comma, vector=True) for c in spec.columns]
            values[name] = np.stack(parts, axis=1)
    split = _splits(df, cfg.split, problems) if cfg.split else None
    groups = _groups(df, cfg.group_column, split, problems) if cfg.group_column else None
    _no_duplicates(images, cfg.image_column, problems)
    if cfg.on_bad_image == "stop":
        for row, column, rel in absent:
            problems.add(row, column, "no such file", rel, _fix_absent(base, True))
    problems.raise_any()
    rows = Rows(path.resolve(), base, images, masks, values, classes, split, (0, 0, 0), groups)
    if absent:  # on_bad_image: skip
        rows = _without_absent(rows, absent, problems)
    _check_split(cfg, rows)
    rows.shape = _shape(cfg, rows)
    return rows


def _fix_absent(base: Path, or_skip: bool) -> str:
    """What to do about files that do not exist (`or_skip`: or leave their rows out)."""
    return (
        "correct the path of each file that does not exist or remove its row (paths are read "
        f"from {base}: data.root when set, else the table's folder)"
        + (", or set data.on_bad_image: skip to leave such rows out" if or_skip else "")
    )


def _without_absent(rows: Rows, absent: list[tuple[int, str, str]], problems: _Problems) -> Rows:
    """The rows whose files all exist (on_bad_image: skip); the others are named, a line
    each, for load()'s warning. No row left means the paths are read from the wrong folder:
    that stops the run."""
    parts: dict[int, list[str]] = {}
    for row, column, rel in sorted(absent, key=lambda a: a[0]):
        parts.setdefault(row, []).append(f"column {column!r}: {rel}")
    named = [f"{problems.where(row)}, {', '.join(files)}" for row, files in parts.items()]
    keep = np.setdiff1d(np.arange(len(rows.images)), list(parts))
    if not len(keep):
        raise CnnlabError(
            f"data.table: {rows.table}: no file its rows name exists (first: {named[0]}); "
            + _fix_absent(rows.base, or_skip=False)
        )
    pick = lambda paths: [paths[i] for i in keep]  # noqa: E731
    return replace(
        rows,
        images=pick(rows.images),
        masks={name: pick(paths) for name, paths in rows.masks.items()},
        values={name: v[keep] for name, v in rows.values.items()},
        split=rows.split[keep] if rows.split is not None else None,
        groups=rows.groups[keep] if rows.groups is not None else None,
        absent=named,
    )


def _no_duplicates(images: list[str], column: str, problems: _Problems) -> None:
    first: dict[str, int] = {}
    for row, rel in enumerate(images):
        if not rel:  # "no path" already; two rows without one are not one path listed twice
            continue
        key = os.path.normpath(rel)
        if key in first:
            where = f"{rel}, first on {problems.where(first[key])}"
            problems.add(row, column, "a path listed twice", where, TWICE)
        first.setdefault(key, row)


def _stratify_target(cfg: TableConfig) -> str | None:
    return next((t for t, c in cfg.targets.items() if c.kind == "category"), None)


def _check_split(cfg: TableConfig, rows: Rows) -> None:
    """Every part a run needs has rows, and a stratified carve has enough of each class."""
    n = len(rows.images)
    parts = rows.split if rows.split is not None else np.zeros(n, dtype=np.int64)
    if rows.split is not None:
        for code, part in ((0, "train"), (2, "test")):
            if not (parts == code).any():
                raise CnnlabError(
                    f"data.split: no row of {rows.table} has a {part} value "
                    f"({', '.join(getattr(cfg.split, part))}); set data.split.{part}"
                )
    carves = (0 if rows.split is not None else 1) + (0 if (parts == 1).any() else 1)
    target = _stratify_target(cfg)
    units = np.flatnonzero(parts == 0)  # what a carve takes: rows, or whole groups
    if rows.groups is not None:  # a group counts once, as its first row
        units = units[np.unique(rows.groups[units], return_index=True)[1]]
    one, what = (
        ("training row", "training rows")
        if rows.groups is None
        else ("group of training rows", "groups of training rows")
    )
    if target is None or not carves:
        if len(units) < 2 + carves:
            raise CnnlabError(f"data.table: {rows.table} has too few {what} to carve from")
        return
    counts = np.bincount(rows.values[target][units], minlength=len(rows.classes[target]))
    small = np.flatnonzero((counts > 0) & (counts < carves + 1))
    if len(small):
        k = int(small[0])
        has = counted(int(counts[k]), one, what)
        raise CnnlabError(
            f"data.table: class {rows.classes[target][k]!r} of {target} has {has}; carving "
            f"{'test and validation' if carves == 2 else 'validation'} "
            f"stratified needs at least {carves + 1} per class (add rows, or give a split column)"
        )


def _shape(cfg: TableConfig, rows: Rows) -> tuple[int, int, int]:
    """(C, S, S): the recipe's, else from the first image's header (no pixel decoded)."""
    if cfg.image_size and cfg.channels:
        return (cfg.channels, cfg.image_size, cfg.image_size)
    first = rows.base / rows.images[0]
    try:
        with open_image(first) as im:
            size, mode = min(im.size), im.mode
    except Exception as err:  # one not there is left out by the check (_without_absent)
        raise CnnlabError(
            f"data.table: the first image, {first}, cannot be read ({type(err).__name__}); "
            "set data.image_size and data.channels, or fix the image"
        ) from None
    channels = cfg.channels or (1 if mode in ("1", "L", *WIDE) else 3)
    return (channels, cfg.image_size or max(8, size), cfg.image_size or max(8, size))


def _say_shape(cfg: TableConfig, rows: Rows) -> None:
    """One line when the input's channels or size came from the first image, not the recipe:
    with grey and colour files mixed, sorting the table would otherwise change the model."""
    if cfg.channels is not None and cfg.image_size is not None:
        return
    c, s, _ = rows.shape
    said = [f"{'grey' if c == 1 else 'colour'} ({counted(c, 'channel')})", f"{s} x {s} px"]
    print(
        f"table: images become {', '.join(said)}, as the first image, {rows.images[0]}, is; "
        "set data.channels and data.image_size to choose",
        file=sys.stderr,
    )


# ------------------------------------------------------------------------------ source


def _mask_names(rows: Rows, tops: dict[str, int] | None) -> dict[str, list[str]]:
    """Each mask target's class names: the recipe's list, else 0..its highest index found
    (two placeholders while describing, before any mask is read)."""
    out = {}
    for name in rows.masks:
        if name in rows.classes:
            out[name] = rows.classes[name]
        else:
            out[name] = [str(k) for k in range(tops[name] + 1 if tops is not None else 2)]
    return out


def describe(cfg: TableConfig) -> DataInfo:
    """Targets, classes and sizes from the table alone; every row is checked."""
    rows = read_rows(cfg)
    n = len(rows.images)
    if rows.split is None:  # the carve load() makes, less the rows it cannot decode
        target = _stratify_target(cfg)
        labels = torch.from_numpy(rows.values[target]) if target else None
        groups = torch.from_numpy(rows.groups) if rows.groups is not None else None
        test = len(stratified_split(labels, n, cfg.test_fraction, TEST_SEED, groups)[1])
        train, val = n - test, None
    else:
        train, val, test = (int((rows.split == k).sum()) for k in range(3))
    targets: dict[str, list[str] | None] = {}
    classes = {**rows.classes, **_mask_names(rows, None)}
    for name in cfg.targets:
        targets[name] = classes.get(name)
    sizes = {
        "train": min(train, cfg.train_subset) if cfg.train_subset else train,
        "test": min(test, cfg.test_subset) if cfg.test_subset else test,
    }
    if val:
        sizes["val"] = val
    return DataInfo(
        source=cfg.source,
        shape=rows.shape,
        targets=targets,
        sizes=sizes,
        validation="given" if val else "carved",
        components={t: list(c.columns) for t, c in cfg.targets.items() if c.columns},
    )


def _identity(rows: Rows, cfg: TableConfig) -> list:
    """The table's stat and every file's: a changed image, mask or table decodes again."""

    def stat(path: Path) -> list:
        try:
            st = path.stat()
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return [None, None]

    files = rows.images + [p for paths in rows.masks.values() for p in paths]
    return [FORMAT, str(rows.table), stat(rows.table), list(rows.shape), cfg.resize, cfg.bits] + [
        [rel, *stat(rows.base / rel)] for rel in files
    ]


def decode(cfg: TableConfig, rows: Rows) -> tuple[dict[str, Pixels], list[int]]:
    """(uint8 "images" (N, C, S, S), in memory or mapped, and each mask (N, S, S) in memory,
    the decoded rows)."""
    c, s, _ = rows.shape
    mode = "L" if c == 1 else "RGB"
    shapes = {"images": rows.shape, **{name: (s, s) for name in rows.masks}}

    def one(i: int) -> dict[str, np.ndarray]:
        image, seen = read_image(rows.base / rows.images[i], s, cfg.resize, mode, cfg.bits)
        out = {"images": image}
        for name, paths in rows.masks.items():
            try:
                out[name] = decode_mask(rows.base / paths[i], s, cfg.resize, (rows.images[i], seen))
            except Refused as err:  # named with its path: the warning and the error say it
                raise Refused(f"the mask {paths[i]} {err.what}", err.fix) from None
        return out

    names = [
        " / ".join([rows.images[i], *(paths[i] for paths in rows.masks.values())])
        for i in range(len(rows.images))
    ]
    key = [str(rows.table), str(rows.base), list(rows.shape), cfg.resize, cfg.bits, FORMAT]
    _warn_absent(rows)
    _say_shape(cfg, rows)
    dark_warning(rows.base / rows.images[0], cfg.bits, "table")
    decoded = cached_decode(
        "table", key, _identity(rows, cfg), names, shapes, one, storage=cfg.storage
    )
    _refused(cfg, decoded.refused, bool(decoded.kept))
    if decoded.skipped and cfg.on_bad_image == "stop":
        n = len(decoded.skipped)
        raise CnnlabError(
            f"data.table: {counted(n, 'row')} cannot be read (an empty or corrupt file, or "
            f"not an image; first: {decoded.skipped[0]}); fix or remove "
            f"{'it' if n == 1 else 'them'}, or set data.on_bad_image: skip"
        )
    if not decoded.kept:
        raise CnnlabError(f"data.table: no image of {rows.table} could be read")
    return decoded.pixels, decoded.kept


def _refused(cfg: TableConfig, refused: list[tuple[int, str, str]], any_kept: bool) -> None:
    """Rows whose mask cannot be their label (a colour mask, another size than its image):
    under on_bad_image: stop, or when no row is left, the first stops the run with its reason
    and fix; else one warning names them. Before, they were "files skipped (empty, corrupt,
    not an image)", then "no image could be read", the reason lost."""
    if not refused:
        return
    whats = [what for _, what, _ in refused]
    fixes = "".join(f"; {fix}" for fix in dict.fromkeys(fix for _, _, fix in refused))
    if cfg.on_bad_image == "stop" or not any_kept:
        of = f" (one of {counted(len(refused), 'mask')} refused)" if len(refused) > 1 else ""
        skip = ", or set data.on_bad_image: skip to leave such rows out" if any_kept else ""
        raise CnnlabError(f"data.table: {whats[0]}{of}; {refused[0][2]}{skip}")
    print(
        f"table: warning: {counted(len(refused), 'row')} skipped, "
        f"{'its mask' if len(refused) == 1 else 'their masks'} refused: {listed(whats)}{fixes}",
        file=sys.stderr,
    )


def _warn_absent(rows: Rows) -> None:
    """The rows the check left out (on_bad_image: skip), in the warning's one line: told
    once per load, where describe() (called more than once per run) stays quiet."""
    if rows.absent:
        print(
            f"table: warning: {counted(len(rows.absent), 'row')} skipped, naming a file that "
            f"does not exist: {listed(rows.absent)}; {_fix_absent(rows.base, or_skip=False)}",
            file=sys.stderr,
        )


def load(cfg: TableConfig) -> Dataset:
    """Images as uint8 (N, C, S, S); targets: category long (N,), number float (N,), vector
    float (N, K), mask uint8 (N, S, S) (255: no label)."""
    rows = read_rows(cfg)
    arrays, kept = decode(cfg, rows)
    index = torch.tensor(kept, dtype=torch.long)
    targets: dict[str, torch.Tensor] = {}
    for name, spec in cfg.targets.items():
        if spec.kind == "mask":
            targets[name] = arrays[name]
        else:
            targets[name] = torch.from_numpy(rows.values[name])[index]
    row_tops = {m: _row_tops(targets[m]) for m in rows.masks}  # each row's highest index
    tops = {m: int(t.max()) if len(t) else 0 for m, t in row_tops.items()}
    classes = {**rows.classes, **_mask_names(rows, tops)}
    _check_masks(row_tops, classes, rows, kept)
    data = ImageSet(arrays["images"], targets)
    split = torch.from_numpy(rows.split)[index] if rows.split is not None else None
    groups = torch.from_numpy(rows.groups)[index] if rows.groups is not None else None
    train, val, test = _parts(cfg, data, split, groups)
    return Dataset(
        name=cfg.source,
        train=data.subset(train),
        test=data.subset(test),
        val=data.subset(val) if val is not None else None,
        classes={t: classes[t] for t, c in cfg.targets.items() if c.kind in ("category", "mask")},
        components={t: list(c.columns) for t, c in cfg.targets.items() if c.columns},
        groups=groups[train] if groups is not None else None,
    )


def _row_tops(masks: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N,) each mask's highest class index, 255 (no label) left out; a chunk of rows at a
    time, so no copy of all the masks is made."""
    out = torch.zeros(len(masks), dtype=masks.dtype)
    for start in range(0, len(masks), chunk):
        part = masks[start : start + chunk]
        out[start : start + chunk] = part.masked_fill(part == NO_LABEL, 0).amax(dim=(1, 2))
    return out


def _check_masks(
    row_tops: dict[str, torch.Tensor], classes: dict[str, list[str]], rows: Rows, kept: list[int]
) -> None:
    """Every mask's indices name listed classes (`row_tops`: each row's highest); the first
    mask that holds another is named (with thousands of masks, "a mask holds class index 5"
    left the search to the user)."""
    for name, tops in row_tops.items():
        listed = len(classes[name])
        beyond = torch.nonzero(tops >= listed).flatten()
        if len(beyond):
            first = int(beyond[0])
            more = f" ({counted(len(beyond), 'mask')} hold such indices)" if len(beyond) > 1 else ""
            raise CnnlabError(
                f"data.targets.{name}: the mask {rows.masks[name][kept[first]]} holds class index "
                f"{int(tops[first])}, but {listed} classes are listed{more}; list them all in "
                f"data.targets.{name}.classes, or correct the masks (255 means no label)"
            )


def _parts(
    cfg: TableConfig, data: ImageSet, split: torch.Tensor | None, groups: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The rows of train, val (None: carved later, from train) and test."""
    if split is not None:
        train, val, test = (torch.nonzero(split == code).flatten() for code in range(3))
        return train, val if len(val) else None, test
    target = _stratify_target(cfg)
    labels = data.targets[target] if target else None
    keep, test = stratified_split(labels, len(data), cfg.test_fraction, TEST_SEED, groups)
    return keep, None, test


def locate(root: str | None, allow_download: bool = False) -> dict[str, Path]:
    """Nothing to fetch: a recipe's data.table names the file and the file names its images."""
    raise CnnlabError(
        "table: nothing to fetch; a recipe's data.table names the CSV or Parquet file and "
        "the file names its images"
    )


SOURCE = Source(
    config=TableConfig,
    describe=describe,
    load=load,
    locate=locate,
    doc="a CSV or Parquet table of image paths and target columns (classes, numbers, masks)",
    stats=None,  # mean/std from a streaming pass over the run's training split
)

__all__ = ["SOURCE", "Move", "SplitColumn", "TableConfig", "TargetColumn", "describe", "load"]
