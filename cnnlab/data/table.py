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

Targets: `category` (strings or integers, stripped; classes are the sorted distinct values,
or the recipe's `classes` list, in that order, a listed name matched in any case; names
alike but for case are said at loading, a line giving each category's classes and rows),
`number` (float), `vector` (several numeric columns as one target, its components named by
them) and `mask` (a path to a PNG of class indices, grey or palette, resized with nearest
neighbour; 255 means "no label"; classes from the recipe's list, else 0..max found).

Augmentation keeps labels true: a mask moves with its image (cnnlab/data/augment.py), a
category or a number is unchanged by a flip, a turn or a shift, and a vector target is
refused under a geometric transform unless the recipe says how it changes:
`hflip: same`, `hflip: {swap: [[right, left]]}`, `rot90: {cycle: [up, left, down, right]}`
(a counter-clockwise quarter turn moves each column's value to the next). The config
classes and these label maps: cnnlab/data/table_config.py.

A blank target cell (empty, or a missing-value marker such as NA, None or #N/A, except a
category's listed class: table_cells.MISSING) stops the run, or, as the target's `blank`
says, drops its row or leaves the row unlabelled for that target (class NO_CLASS, a NaN
number, a mask without a labelled pixel): its other targets train on it
(cnnlab/data/labelled.py counts them).

`describe()` reads the table and checks every row before any pixel is decoded (the cells:
cnnlab/data/table_cells.py): a missing column, an empty table, an empty cell, a value that
is not a number (a semicolon-separated table's decimal commas are read: 21,241; a thousands
separator is refused), a duplicated path, a path or link leading outside the folder, an
image or mask file that does not exist (its row skipped with a warning, or the run stopped:
`on_bad_image`), an unknown split value or a blank one (data.split.blank says where blank
rows go), a class too small to carve from. Pixels are decoded once, in parallel, into the
cache (cnnlab/data/decoded.py), which notices a changed image, mask or table. Decoding checks
each mask against its image, from the headers it opens anyway: grey or palette, and its
image's size (a colour mask or one of another size is refused with its reason, as
on_bad_image says).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnlab.data.augment import NO_LABEL
from cnnlab.data.base import DataInfo, Dataset, ImageSet, Source
from cnnlab.data.decoded import (
    WIDE,
    Refused,
    cached_decode,
    dark_warning,
    decode_mask,
    open_image,
    read_image,
)
from cnnlab.data.labelled import refuse_unlabelled
from cnnlab.data.lines import say, warn
from cnnlab.data.mapped import Pixels
from cnnlab.data.split import stratified_split
from cnnlab.data.table_cells import (
    Problems,
    alike,
    no_duplicates,
    read_categories,
    read_groups,
    read_numbers,
    read_paths,
    read_splits,
)
from cnnlab.data.table_config import Move, SplitColumn, TableConfig, TargetColumn
from cnnlab.errors import CnnlabError, counted, did_you_mean, listed
from cnnlab.tasks.base import NO_CLASS

if TYPE_CHECKING:  # imported where a table is read (_read), not with cnnlab
    import pandas

# bump when the cached arrays or their identity change meaning (2: a mask of another size
# than its image, stretched before, is refused; refusals are kept with their reasons)
FORMAT = 2
TEST_SEED = 0  # the carved test rows are the same for every run seed


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
    # target -> rows left out for a blank cell of it (data.targets.NAME.blank: drop)
    dropped: dict[str, int] = field(default_factory=dict)
    # lines about how cells were read, said once at loading (describe() stays quiet)
    notes: list[str] = field(default_factory=list)


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
        where = "" if path.is_absolute() else f" (looked for in {Path.cwd()}, where cnnlab runs)"
        raise CnnlabError(
            f"data.table: {path}: {what}{where}; point data.table at the CSV or Parquet file, "
            "or run cnnlab from the folder its path starts in (`cnnlab data shapes --out "
            "FOLDER` writes an example one)"
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


def _check_columns(path: Path, df: pandas.DataFrame, cfg: TableConfig) -> None:
    """Every column the recipe names is in the table; else one line naming the recipe field,
    the column it names and the closest the table has (a capital letter, a typo)."""
    named = {cfg.image_column: "data.image_column"}
    if cfg.split:
        named.setdefault(cfg.split.column, "data.split.column")
    if cfg.group_column:
        named.setdefault(cfg.group_column, "data.group_column")
    for name, spec in cfg.targets.items():
        field = f"data.targets.{name}.{'columns' if spec.columns else 'column'}"
        for column in spec.columns or [spec.column]:
            named.setdefault(column, field)
    have = [str(c) for c in df.columns]
    for column, field in named.items():
        if column in have:
            continue
        near = did_you_mean(str(column), have)
        if field == "data.image_column":  # 'image' suggested 'age': the paths are elsewhere
            free = [c for c in df.columns if c not in named]  # not a mask's column
            paths = [str(c) for c in free if _holds_image_paths(df[c])]
            near = did_you_mean(str(column), paths, cutoff=0.0) if paths else near
        raise CnnlabError(
            f"{field}: {path} has no column {column!r}{near}; its columns: {', '.join(have)}"
        )


def _holds_image_paths(column: pandas.Series) -> bool:
    """Whether a column's first filled cell names an image file (a suffix Pillow opens)."""
    from PIL import Image

    first = next((v for v in column if isinstance(v, str) and v.strip()), "")
    return Path(first.strip()).suffix.lower() in Image.registered_extensions()


def read_rows(cfg: TableConfig) -> Rows:
    """The table, every row checked; no pixel is read (the first image's header fixes the
    shape when the recipe does not)."""
    path = _table_path(cfg)
    df = _read(path)
    base = (Path(cfg.root).expanduser() if cfg.root else path.parent).resolve()
    _check_columns(path, df, cfg)
    if len(df) == 0:
        raise CnnlabError(f"data.table: {path} has no rows under its header")
    problems = Problems(path)
    comma = problems.csv and separator(path) == ";"  # decimal commas may be read
    absent: list[tuple[int, str, str]] = []  # files named that do not exist
    images = read_paths(df, cfg.image_column, base, problems, absent)
    masks, values, classes, notes = {}, {}, {}, []
    for name, spec in cfg.targets.items():
        blank = spec.blank
        if spec.kind == "mask":
            masks[name] = read_paths(df, spec.column, base, problems, absent, name, blank)
            if spec.classes:
                classes[name] = list(spec.classes)
        elif spec.kind == "category":
            values[name], classes[name] = read_categories(
                df, spec.column, spec.classes, problems, name, blank, notes
            )
        elif spec.kind == "number":
            values[name] = read_numbers(df, spec.column, problems, name, comma, blank=blank)
        else:
            parts = [read_numbers(df, c, problems, name, comma, True, blank) for c in spec.columns]
            values[name] = np.stack(parts, axis=1)
    split = None
    if cfg.split:
        named = cfg.split.train, cfg.split.val, cfg.split.test
        split = read_splits(df, cfg.split.column, *named, problems, cfg.split.blank, notes)
    groups = read_groups(df, cfg.group_column, split, problems) if cfg.group_column else None
    no_duplicates(images, cfg.image_column, problems)
    if cfg.on_bad_image == "stop":
        for row, column, rel in absent:
            problems.add(row, column, "no such file", rel, _fix_absent(base, True))
    problems.raise_any()
    rows = Rows(path.resolve(), base, images, masks, values, classes, split, (0, 0, 0), groups)
    rows.notes = notes
    if absent:  # on_bad_image: skip
        rows = _without_absent(rows, absent, problems)
    rows = _without_blanks(cfg, rows)
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


def _without_absent(rows: Rows, absent: list[tuple[int, str, str]], problems: Problems) -> Rows:
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
    return replace(_picked(rows, keep), absent=named)


def _picked(rows: Rows, keep: np.ndarray) -> Rows:
    """Only the rows `keep` (indices, in order)."""
    pick = lambda paths: [paths[i] for i in keep]  # noqa: E731
    return replace(
        rows,
        images=pick(rows.images),
        masks={name: pick(paths) for name, paths in rows.masks.items()},
        values={name: v[keep] for name, v in rows.values.items()},
        split=rows.split[keep] if rows.split is not None else None,
        groups=rows.groups[keep] if rows.groups is not None else None,
    )


def blank_rows(rows: Rows, target: str) -> np.ndarray:
    """(N,) bool: the rows whose cell of `target` is blank (a vector's: any component)."""
    if target in rows.masks:
        return np.array([not path for path in rows.masks[target]], dtype=bool)
    v = rows.values[target]
    return v == NO_CLASS if v.dtype.kind == "i" else np.isnan(v).reshape(len(v), -1).any(1)


def _without_blanks(cfg: TableConfig, rows: Rows) -> Rows:
    """The rows with a value in every target whose blank is drop; how many each target left
    out is kept for load()'s line (describe(), called more than once a run, says nothing)."""
    keep, dropped = np.ones(len(rows.images), dtype=bool), {}
    for name, spec in cfg.targets.items():
        if spec.blank == "drop" and (blank := blank_rows(rows, name)).any():
            keep &= ~blank
            dropped[name] = int(blank.sum())
    if not dropped:
        return rows
    if not keep.any():
        raise CnnlabError(
            f"data.table: every row of {rows.table} has a blank cell in "
            f"{listed(list(dropped), ' or ')}, and blank: drop leaves them all out; fill some "
            "in, or set data.targets.NAME.blank: unlabelled (a row trains its other targets)"
        )
    return replace(_picked(rows, np.flatnonzero(keep)), dropped=dropped)


def _say_dropped(rows: Rows) -> None:
    """One line: the rows left out for a blank cell, per target (blank: drop)."""
    if rows.dropped:
        said = [
            f"{counted(n, 'row')} without {name} (data.targets.{name}.blank: drop)"
            for name, n in rows.dropped.items()
        ]
        say(f"table: left out {listed(said, ', ')}; {len(rows.images):,} rows stay")


def _say_classes(cfg: TableConfig, rows: Rows) -> None:
    """One line per category target: its classes with their rows (blank ones left out), so
    a class split in two ('Rust' 1, 'rust' 57) or nearly empty shows before training."""
    for name, spec in cfg.targets.items():
        if spec.kind == "category":
            labels, names = rows.values[name], rows.classes[name]
            counts = np.bincount(labels[labels >= 0], minlength=len(names))
            items = [f"{c} {n:,}" for c, n in zip(names, counts.tolist(), strict=True)]
            say(
                f"table: {name} has {counted(len(names), 'class', 'classes')} (rows): "
                f"{listed(items, ', ', most=12)}"
            )
            if spec.classes is None:  # the names are the table's own
                for line in alike(names, counts.tolist(), spec.column, name):
                    say(line)


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
    labels = rows.values[target][units]
    counts = np.bincount(labels[labels >= 0], minlength=len(rows.classes[target]))  # no NO_CLASS
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
    c, s, _ = rows.shape
    said, keys = [], []  # only what the recipe left to the first image
    if cfg.channels is None:
        said.append(f"{'grey' if c == 1 else 'colour'} ({counted(c, 'channel')})")
        keys.append("data.channels")
    if cfg.image_size is None:
        said.append(f"{s} x {s} px")
        keys.append("data.image_size")
    if said:
        say(
            f"table: images become {', '.join(said)}, as the first image, {rows.images[0]}, "
            f"is; set {' and '.join(keys)} to choose"
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
    return _info(cfg, read_rows(cfg))


def checked(cfg: TableConfig) -> DataInfo:
    """As `describe`, saying what loading says of the rows (`cnnlab check`: a missing file,
    each class's rows, a cell read as blank), which `describe`, called more than once per
    run, leaves to loading."""
    rows = read_rows(cfg)
    info = _info(cfg, rows)
    say_rows(cfg, rows)
    return info


def _info(cfg: TableConfig, rows: Rows) -> DataInfo:
    n = len(rows.images)
    if rows.split is None:  # the carve load() makes, less the rows it cannot decode
        target = _stratify_target(cfg)
        labels = torch.from_numpy(rows.values[target]) if target else None
        groups = torch.from_numpy(rows.groups) if rows.groups is not None else None
        test = len(stratified_split(labels, n, cfg.test_fraction, TEST_SEED, groups)[1])
        train, val = n - test, None
    else:
        train, val, test = (int((rows.split == k).sum()) for k in range(3))
    _refuse_unlabelled(cfg, rows)
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


def _refuse_unlabelled(cfg: TableConfig, rows: Rows) -> None:
    """A target of blank: unlabelled with no labelled row in train (with the rows val is
    carved from) or in a given val stops the run before a run folder is made; a carved val
    is checked once carved (cnnlab/data/labelled.py)."""
    parts = rows.split if rows.split is not None else np.zeros(len(rows.images), dtype=np.int64)
    for name, spec in cfg.targets.items():
        if spec.blank == "unlabelled":
            has = ~blank_rows(rows, name)
            counts = {s: (int(has[parts == k].sum()), int((parts == k).sum()))
                      for k, s in enumerate(("train", "val"))}  # fmt: skip
            refuse_unlabelled(name, counts)


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
        [rel, *(stat(rows.base / rel) if rel else [None, None])] for rel in files
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
            if not paths[i]:  # a blank cell (blank: unlabelled): no pixel has a class
                out[name] = np.full((s, s), NO_LABEL, dtype=np.uint8)
                continue
            try:
                out[name] = decode_mask(rows.base / paths[i], s, cfg.resize, (rows.images[i], seen))
            except Refused as err:  # named with its path: the warning and the error say it
                raise Refused(f"the mask {paths[i]} {err.what}", err.fix) from None
        return out

    names = [
        " / ".join([rows.images[i], *(paths[i] for paths in rows.masks.values() if paths[i])])
        for i in range(len(rows.images))
    ]
    key = [str(rows.table), str(rows.base), list(rows.shape), cfg.resize, cfg.bits, FORMAT]
    say_rows(cfg, rows)
    dark_warning(rows.base / rows.images[0], cfg.bits, "table")
    stop = cfg.on_bad_image == "stop"  # an unreadable file stops the run: not "skipped"
    decoded = cached_decode(
        "table", key, _identity(rows, cfg), names, shapes, one, storage=cfg.storage, warn=not stop
    )
    _refused(cfg, decoded.refused, bool(decoded.kept))
    if decoded.skipped and stop:
        n = len(decoded.skipped)
        raise CnnlabError(
            f"data.table: {counted(n, 'row')} cannot be read (an empty or corrupt file, or "
            f"not an image; first: {decoded.skipped[0]}); fix or remove "
            f"{'it' if n == 1 else 'them'}, or set data.on_bad_image: skip"
        )
    if not decoded.kept:
        raise CnnlabError(f"data.table: no image of {rows.table} could be read")
    return decoded.pixels, decoded.kept


def say_rows(cfg: TableConfig, rows: Rows) -> None:
    """The lines of the rows before a pixel is read: files missing, each category's
    classes, cells read as blank, rows left out, the shape the first image chose."""
    _warn_absent(rows)
    for note in rows.notes:  # a marker read as blank: before the classes it leaves out
        say(note)
    _say_classes(cfg, rows)
    _say_dropped(rows)
    _say_shape(cfg, rows)


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
    warn(
        f"table: warning: {counted(len(refused), 'row')} skipped, "
        f"{'its mask' if len(refused) == 1 else 'their masks'} refused: {listed(whats)}{fixes}"
    )


def _warn_absent(rows: Rows) -> None:
    """The rows the check left out (on_bad_image: skip), in the warning's one line: told
    once per load, where describe() (called more than once per run) stays quiet."""
    if rows.absent:
        warn(
            f"table: warning: {counted(len(rows.absent), 'row')} skipped, naming a file that "
            f"does not exist: {listed(rows.absent)}; {_fix_absent(rows.base, or_skip=False)}"
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
    _say_unseen_classes(cfg, targets, tops)
    data = ImageSet(arrays["images"], targets, [rows.images[i] for i in kept])
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


def _say_unseen_classes(
    cfg: TableConfig, targets: dict[str, torch.Tensor], tops: dict[str, int]
) -> None:
    """A warning for listed classes above every mask's highest index: no pixel of theirs
    to learn. Mostly a binary mask saved as 0 and 255 (ImageJ, a thresholded image): its
    class is 255, read as no label, and training learnt the background alone (val accuracy
    0.9996, mIoU 0.50) without a word. Free: the highest indices are known already."""
    for name, top in tops.items():
        listed = cfg.targets[name].classes
        if not listed or top >= len(listed) - 1:
            continue
        unseen = ", ".join(f"{c!r} ({i})" for i, c in enumerate(listed) if i > top)
        first = targets[name][:64]  # enough masks to say how much is 255
        share = float((first == NO_LABEL).float().mean()) if len(first) else 0.0
        why = (
            f"; 255 (no label) covers {share:.0%} of the first masks' pixels: a binary mask "
            "saved as 0 and 255 (ImageJ, a thresholded image) marks its class 255, read as no "
            "label; save it as 0 and 1 (mask // 255)"
            if share
            else "; correct the masks, or list only the classes they hold"
        )
        warn(
            f"table: warning: data.targets.{name}: no mask holds class {unseen}, so no pixel "
            f"of it is learnt (the highest index in any mask is {top}){why}"
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
    checked=checked,
    doc="a CSV or Parquet table of image paths and target columns (classes, numbers, masks)",
    stats=None,  # mean/std from a streaming pass over the run's training split
)

__all__ = ["SOURCE", "Move", "SplitColumn", "TableConfig", "TargetColumn", "describe", "load"]
