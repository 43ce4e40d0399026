"""`data:` of a table recipe (TableConfig: the file, its target columns, its split and
group columns) and the label maps it gives augmentation: how a declared flip or quarter
turn moves a vector target's components (data.targets.NAME.hflip: {swap: ...}).

Apart from table.py, which reads the file: a subclass with fixed columns, or a check of a
recipe, needs only these classes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from cnnlab.config import Section
from cnnlab.data.augment import GEOMETRIC, LabelMap, Targets
from cnnlab.data.base import DataSection
from cnnlab.data.memory import Storage
from cnnlab.data.table_cells import Blank


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
    # a blank cell of this target: stop (the run, naming it), drop (its row left out), or
    # unlabelled (the row trains the other targets; this one has no label for it)
    blank: Blank = "stop"

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
    # a blank cell (empty, or NA): stop (the run, naming this field), or the split it joins;
    # train: validation is then carved from such rows as from train's, unless rows are val
    blank: Literal["stop", "train", "val", "test"] = "stop"

    @model_validator(mode="after")
    def _blank_said_once(self) -> SplitColumn:
        if self.blank != "stop" and any(
            not v.strip() for v in (*self.train, *self.val, *self.test)
        ):
            raise ValueError(
                f'blank: {self.blank} and "" in a list both say what a blank cell means: '
                'keep blank, take "" out of the list'
            )
        return self


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


__all__ = ["Move", "SplitColumn", "TableConfig", "TargetColumn"]
