"""A name map: how the names of a sweep file written for someone's own script reach the
recipe. It sits beside the sweep file as `<sweep>.map.yaml`:

    parameters:
      base_filter: model.base_filters                       # name -> recipe path
      conv_activation: {path: model.activation, values: {ReLU: relu, Mish: mish}}
      data_aug:                                             # one value -> several fields
        values: {true: {data.augment.hflip: true}, false: {data.augment.hflip: false}}
    metrics:
      val_acc: val.cls.accuracy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class MapEntry:
    """How one sweep-file name reaches the recipe: a path, and maybe a value table."""

    path: str | None
    values: dict | None = None  # written value -> recipe value, or -> {path: value, ...}

    def overrides(self, name: str, value: Any) -> dict[str, Any]:
        if self.values is not None:
            if value in self.values:
                mapped = self.values[value]
            elif str(value) in self.values:
                mapped = self.values[str(value)]
            else:
                raise CnnlabError(
                    f"sweep parameter {name!r}: value {value!r} has no entry in the name map's "
                    f"values ({', '.join(map(repr, self.values))})"
                )
            if self.path is None:
                return dict(mapped)
            return {self.path: mapped}
        return {self.path or name: value}


def parse_map(raw: Any, source: str) -> tuple[dict[str, MapEntry], dict[str, str]]:
    """A name map file -> (parameter entries, metric names)."""
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict) or set(raw) - {"parameters", "metrics"}:
        raise CnnlabError(f"name map {source}: expected the keys `parameters` and `metrics` only")
    entries: dict[str, MapEntry] = {}
    for name, spec in (raw.get("parameters") or {}).items():
        if isinstance(spec, str):
            entries[name] = MapEntry(spec)
        elif isinstance(spec, dict) and set(spec) <= {"path", "values"} and spec:
            values = spec.get("values")
            if values is not None and not isinstance(values, dict):
                raise CnnlabError(f"name map {source}: {name}.values must map value -> value")
            if spec.get("path") is None and not all(
                isinstance(v, dict) for v in (values or {0: 0}).values()
            ):
                raise CnnlabError(
                    f"name map {source}: {name} has no `path`, so each of its values must be a "
                    "mapping of recipe paths, e.g. {true: {data.augment.hflip: true}}"
                )
            entries[name] = MapEntry(spec.get("path"), values)
        else:
            raise CnnlabError(
                f"name map {source}: {name} must be a recipe path or {{path: ..., values: ...}}"
            )
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise CnnlabError(f"name map {source}: `metrics` must map names to recipe metrics")
    return entries, {str(k): str(v) for k, v in metrics.items()}
