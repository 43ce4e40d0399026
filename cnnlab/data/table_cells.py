"""The table's cells, checked and converted one column at a time: paths, numbers (a
semicolon-separated table's decimal commas read), classes, split values and groups.

Why a module of its own: every problem of every row is collected (`Problems`) and said in
one line, grouped by column and kind, each kind's fix once, before any pixel is decoded.
A table with dozens of bad cells is then fixed in one pass, not five values at a time.
table.py reads the file and decides what each column is; these functions only read cells.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cnnlab.data.files import stays_inside
from cnnlab.errors import CnnlabError, counted, listed
from cnnlab.tasks.base import NO_CLASS

Blank = Literal["stop", "drop", "unlabelled"]  # a target's blank cells (TargetColumn.blank)

# what to do about each kind of problem, said once at the end of the line
FILL = (
    "fill in each empty cell or remove its row (a row with an empty image path or group "
    "stops the run: none is skipped)"
)
PLAIN = (
    "write each number plainly (0.25, 1e-3: a decimal point, no units or words), or remove its row"
)
COMMA = (
    "write numbers with a decimal point and no thousands separator (0.25 and 1234, not 0,25 "
    "and 1,234), or save the table separated by semicolons, whose decimal commas are read"
)
TWICE = "remove each repeated row, or correct its path"
# what pandas, R, Excel, SQL and Python write for a missing value (pandas' read_csv
# na_values), compared in any case: in a target's column such a cell is blank, as an empty
# one is (a cell of spaces alone is empty: cells are stripped), and its `blank` decides
MISSING = frozenset(
    ["na", "n/a", "nan", "-nan", "<na>", "#n/a", "#n/a n/a", "#na", "null", "none",
     "-1.#ind", "1.#ind", "-1.#qnan", "1.#qnan"]
)  # fmt: skip
MARKED = "{} (read as missing)"  # the kind of a marked cell: "no value (read as missing)"


def is_missing(text: str) -> bool:
    """Whether a stripped cell is a missing-value marker (NA, N/A, NaN, null, None, #N/A)."""
    return text.casefold() in MISSING


def fill(target: str | None) -> str:
    """The fix of an empty cell: of a target's column, also the recipe field that keeps
    the row (its other targets labelled) or leaves it out."""
    if target is None:
        return FILL
    return (
        "fill in each empty cell or remove its row, or set data.targets."
        f"{target}.blank: drop (such rows left out) or unlabelled (a row trains its other "
        "targets)"
    )


def plain(target: str, blank: Blank) -> str:
    """The fix of a cell that is not a number: where blanks are allowed, emptying the cell
    keeps its row (removing it, as PLAIN says, would lose the row's other labels)."""
    if blank == "stop":
        return PLAIN
    return (
        "write each number plainly (0.25, 1e-3: a decimal point, no units or words), or empty "
        f"the cell (data.targets.{target}.blank: {blank} {BLANKS[blank]})"
    )


BLANKS = {"drop": "leaves its row out", "unlabelled": "keeps its row for the other targets"}


class Problems:
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


def read_paths(
    df: Any, column: str, base: Path, problems: Problems, absent: list[tuple[int, str, str]],
    target: str | None = None, blank: Blank = "stop",
) -> list[str]:  # fmt: skip
    """The column's relative paths, each checked to stay inside `base` (links too) and to
    exist (`absent` gets those that do not: (row, column, path)); an empty one is "" (a
    mask `target`'s when its `blank` allows, and so is a missing-value marker there). A
    table written on Windows separates folders by backslashes: read as slashes (on Windows
    too)."""
    out: list[str] = []
    folders: dict[str, tuple[Path, bool]] = {}
    for row, value in enumerate(df[column].tolist()):
        rel = _text(value).strip().replace("\\", "/")
        marked = target is not None and is_missing(rel)  # a mask's NA: no file is named NA
        out.append("" if marked else rel)
        if not rel or marked:
            if blank == "stop":
                kind, detail = (MARKED.format("no path"), repr(rel)) if marked else ("no path", "")
                problems.add(row, column, kind, detail, fill(target))
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


def _decimal_commas(texts: list[str], column: str, problems: Problems) -> list[str | None]:
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


def read_numbers(
    df: Any, column: str, problems: Problems, target: str, comma: bool, vector: bool = False,
    blank: Blank = "stop",
) -> np.ndarray:  # fmt: skip
    """(N,) float32 values of a number column (of `target`, a component when `vector`);
    `comma`: the table is separated by semicolons, so a decimal comma is read
    (_decimal_commas); an empty cell, or a missing-value marker (NA), is NaN when `blank`
    allows."""
    texts = [_text(v).strip() for v in df[column].tolist()]
    read = _decimal_commas(texts, column, problems) if comma else texts
    out = np.zeros(len(df), dtype=np.float32)
    words: list[str] = []
    for row, (text, value) in enumerate(zip(texts, read, strict=True)):
        if value is None:  # refused by _decimal_commas
            continue
        if not value or is_missing(value):
            if blank == "stop":
                kind, detail = (
                    (MARKED.format("no value"), repr(text)) if value else ("no value", "")
                )
                problems.add(row, column, kind, detail, fill(target))
            out[row] = np.nan
            continue
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if np.isfinite(number):
            out[row] = number
            continue
        # a ';' table read its commas
        fix = COMMA if "," in text and not comma else plain(target, blank)
        problems.add(row, column, "not a number", repr(text), fix)
        words.append(text)
    filled = sum(1 for t in texts if t and not is_missing(t))
    if len(words) * 2 > filled:  # most are not numbers: another kind?
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


def read_categories(
    df: Any, column: str, listed: list[str] | None, problems: Problems, target: str,
    blank: Blank = "stop", notes: list[str] | None = None,
) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """(class index per row, class names): the recipe's list, else the sorted distinct values
    (numerically when every value is an integer); an empty cell is NO_CLASS when `blank`
    allows, and so is a missing-value marker the list does not name (_marked_blank).

    A class name never has surrounding spaces (cells are stripped, and a listed name is
    matched without them); its case counts, but a listed name is matched in any case
    (unlisted names that differ only in case are said with the class counts: `alike`)."""
    raw = [_text(v).strip() for v in df[column].tolist()]
    if blank == "stop":  # empty ones; a marker (NA) is said by _marked_blank, not twice
        for row in (row for row, value in enumerate(raw) if not value):
            problems.add(row, column, "no class", fix=fill(target))
    raw = _marked_blank(raw, column, listed, problems, target, blank, notes)
    present = sorted({v for v in raw if v})
    if listed is not None:
        names = [name.strip() for name in listed]  # a class name has no surrounding spaces
    elif present and all(_is_int(v) for v in present):
        names = sorted(present, key=int)
    else:
        names = present
    find = _finder(names, listed is not None)
    labels = np.zeros(len(raw), dtype=np.int64)
    for row, value in enumerate(raw):
        found = find(value) if value else NO_CLASS
        if found is None:
            fix = f"add each such value to data.targets.{target}.classes, or correct it"
            problems.add(row, column, "not a listed class", repr(value), fix)
        labels[row] = 0 if found is None else found
    return labels, names


def _finder(names: list[str], listed: bool) -> Callable[[str], int | None]:
    """A cell's class index (None: no such class). A listed name is matched as written, else
    in any case, where that names one listed class only
    (listing [A, a] keeps them apart): listing the classes is how `Rust` and `rust` become
    one class."""
    exact = {name: i for i, name in enumerate(names)}
    folded: dict[str, list[int]] = {}
    for i, name in enumerate(names if listed else []):
        folded.setdefault(_folded(name), []).append(i)

    def find(value: str) -> int | None:
        if value in exact:
            return exact[value]
        found = folded.get(_folded(value), [])
        return found[0] if len(found) == 1 else None

    return find


def _folded(name: str) -> str:
    """A class name as a listed name matches it and `_alike` compares it: in any case, with
    spaces, `_` and `-` alike (`Leaf spot`, `leaf_spot`, `leaf-spot`)."""
    return re.sub(r"[\s_-]+", " ", name.casefold())


def alike(names: list[str], counts: list[int], column: str, target: str) -> list[str]:
    """One line naming the classes of `column` that differ only in case or spacing (`Rust`
    in one row, `rust` in 57; `leaf spot` and `leaf_spot`: training went on with both, the
    one row a class of its own), with the rows each class has (`counts`, as the line of
    classes before it counts them). Not an error: they may be meant apart."""
    counts = dict(zip(names, counts, strict=True))
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_folded(name), []).append(name)
    alike = [
        " and ".join(f"{n!r} ({counted(counts[n], 'row')})" for n in group)
        for group in groups.values()
        if len(group) > 1
    ]
    if not alike:
        return []
    return [
        f"table: classes {listed(alike, '; ', most=3)} of column {column!r} differ only in "
        "case or spacing: if they are one class, write them alike, or list the classes in "
        f"data.targets.{target}.classes (a listed name is read in any case, with spaces, _ "
        "and - alike)"
    ]


def _marked_blank(
    raw: list[str], column: str, listed: list[str] | None, problems: Problems, target: str,
    blank: Blank, notes: list[str] | None,
) -> list[str]:  # fmt: skip
    """The cells with each missing-value marker (NA, None) blanked, unless the recipe's
    classes name it: a class may be called "None" (no disease), so a marker read as blank
    is said, under stop in the run's refusal, else in a line at loading (`notes`)."""
    named = {name.strip().casefold() for name in listed or []}
    marked = [row for row, v in enumerate(raw) if is_missing(v) and v.casefold() not in named]
    if not marked:
        return raw
    counts: dict[str, int] = {}
    for row in marked:
        counts[raw[row]] = counts.get(raw[row], 0) + 1
    marks, where = " or ".join(repr(m) for m in counts), f"data.targets.{target}.classes"
    if blank == "stop":
        kind = MARKED.format("no class")
        for row in marked:
            problems.add(row, column, kind, repr(raw[row]), fill(target))
        problems.fixes[column, kind][f"if {marks} is a class, list the classes in {where}"] = None
    elif notes is not None:
        cells = ", ".join(f"{m!r} ({counted(n, 'row')})" for m, n in counts.items())
        notes.append(
            f"table: column {column!r}: {cells} read as blank (a missing value; "
            f"data.targets.{target}.blank: {blank}); if {marks} is a class, list the classes "
            f"in {where}"
        )
    out = list(raw)
    for row in marked:
        out[row] = ""
    return out


def _is_int(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except ValueError:
        return False


SPLITS = ("train", "val", "test")  # a split's code is its place here


def read_splits(
    df: Any, column: str, train: list[str], val: list[str], test: list[str], problems: Problems,
    blank: Literal["stop", "train", "val", "test"] = "stop", notes: list[str] | None = None,
) -> np.ndarray:  # fmt: skip
    """(N,) 0 train, 1 val, 2 test: each row's value of `column` among the values meaning
    each (data.split's lists), compared in any case; a blank cell (empty, or a missing-value
    marker no list names) joins the split `blank` names, said in `notes`, or under stop is a
    problem of its own, not "not a split value" ('' was no word a user had written)."""
    named = ((train, 0), (val, 1), (test, 2))
    codes = {v.strip().casefold(): code for values, code in named for v in values}
    out = np.zeros(len(df), dtype=np.int64)
    blanks = 0
    for row, value in enumerate(df[column].tolist()):
        text = _text(value).strip()
        if text.casefold() in codes:
            out[row] = codes[text.casefold()]
        elif not text or is_missing(text):
            blanks += 1
            if blank == "stop":
                kind = MARKED.format("no split value") if text else "no split value"
                problems.add(row, column, kind, repr(text) if text else "", _blank_split(column))
            out[row] = SPLITS.index(blank) if blank != "stop" else 0
        else:
            known = ", ".join(sorted(c for c in codes if c))
            fix = f"write a split as one of {known} (in any case), or add the value to "
            fix += "data.split.train, data.split.val or data.split.test"
            problems.add(row, column, "not a split value", repr(text), fix)
    if blanks and blank != "stop" and notes is not None:
        notes.append(
            f"table: {counted(blanks, 'row')} with a blank {column!r} cell "
            f"{'go' if blanks > 1 else 'goes'} to {blank} (data.split.blank: {blank})"
        )
    return out


def _blank_split(column: str) -> str:
    """The fix of blank split cells: what a blank may be made to mean, in the YAML to write
    (the only way out was `train: [train, ""]`)."""
    return (
        "a blank split cell says no split: fill in each, or say where blank rows go with "
        f"data.split.blank: train (validation is carved from them as from train's rows, "
        f"unless rows are val), val or test: `split: {{column: {column}, blank: train}}`"
    )


def read_groups(df: Any, column: str, split: np.ndarray | None, problems: Problems) -> np.ndarray:
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


def no_duplicates(images: list[str], column: str, problems: Problems) -> None:
    first: dict[str, int] = {}
    for row, rel in enumerate(images):
        if not rel:  # "no path" already; two rows without one are not one path listed twice
            continue
        key = os.path.normpath(rel)
        if key in first:
            where = f"{rel}, first on {problems.where(first[key])}"
            problems.add(row, column, "a path listed twice", where, TWICE)
        first.setdefault(key, row)
