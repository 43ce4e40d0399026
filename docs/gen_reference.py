"""Pages generated while `mkdocs build` runs (mkdocs-gen-files), so they cannot drift:

- reference/recipe.md: every recipe section and field, from the same JSON Schema that
  `cnnlab schema` prints (cnnlab/schema.py): type, default, allowed values, meaning;
- reference/backbones.md: what `cnnlab backbones` prints;
- the gallery at the end of figures.md: every figure docs/gallery.py drew from a real run
  (docs/images/gallery/manifest.json), with the line `cnnlab figures` prints for it.

Nothing here is written by hand about a field: a field's meaning is the comment beside it in
the code, and a missing one is fixed there.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mkdocs_gen_files

from cnnlab.schema import recipe_schema

TAGS = ("source", "backbone", "type")
GALLERY = Path(__file__).resolve().parent / "images" / "gallery"


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: HTML escaped, pipes and newlines kept out."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def code(value: Any) -> str:
    return f"<code>{cell(value)}</code>"


# ------------------------------------------------------------------- walking the schema


def sections(schema: dict) -> Iterator[tuple[str, str, dict]]:
    """(anchor, where it sits in a recipe, the section's schema), each section once, in the
    order a reader meets them: the top level, then its sections, breadth first."""
    defs = schema["$defs"]
    seen: set[str] = set()
    todo: list[tuple[str, str, dict]] = [("recipe", "the whole recipe", schema)]
    while todo:
        anchor, where, section = todo.pop(0)
        if anchor in seen:
            continue
        seen.add(anchor)
        yield anchor, where, section
        for key, prop in section.get("properties", {}).items():
            path = key if anchor == "recipe" else f"{where.split(' ')[0]}.{key}"
            if key == "tasks":
                path = "tasks.<name>"
            for ref in refs(prop):
                todo.append((ref, placed(path, defs[ref]), defs[ref]))


def refs(prop: dict) -> list[str]:
    """The sections a property holds, in order (through unions, lists and maps)."""
    if "$ref" in prop:
        return [prop["$ref"].split("/")[-1]]
    found: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for member in prop.get(key, []):
            found += refs(member)
    for key in ("items", "additionalProperties"):
        if isinstance(prop.get(key), dict):
            found += refs(prop[key])
    return found


def placed(path: str, section: dict) -> str:
    """`model (backbone: cnn)`: where a section sits, with the tag that picks it."""
    props = section.get("properties", {})
    tag = next((t for t in TAGS if "const" in props.get(t, {})), None)
    if tag is None and "backbone" in props:  # timm's tag also takes a model name
        return f"{path} (backbone: timm)"
    return f"{path} ({tag}: {props[tag]['const']})" if tag else path


# ------------------------------------------------------------------- one field's row


def type_of(prop: dict) -> str:
    if "$ref" in prop:
        name = prop["$ref"].split("/")[-1]
        return f'<a href="#{name}">{cell(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in prop:
            kinds = [type_of(m) for m in prop[key]]
            return " or ".join(dict.fromkeys(kinds))
    if "allOf" in prop:
        return type_of(prop["allOf"][0])
    if "const" in prop:
        return code(json.dumps(prop["const"]))
    if "enum" in prop:  # the values are in the allowed column; their kind here
        kinds = {type(v).__name__ for v in prop["enum"]}
        return " or ".join(sorted(kinds))
    kind = prop.get("type", "any")
    if kind == "array":
        if "prefixItems" in prop:
            return "(" + ", ".join(type_of(p) for p in prop["prefixItems"]) + ")"
        return f"list of {type_of(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map: name → {type_of(prop['additionalProperties'])}"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}.get(
        kind, str(kind)
    )


def allowed(prop: dict) -> str:
    """Values or bounds a field accepts, read from the schema's keywords."""
    parts: list[str] = []
    for member in [prop, *prop.get("anyOf", []), *prop.get("items", {}).get("anyOf", [])]:
        if "enum" in member:
            parts.append(" \\| ".join(code(v) for v in member["enum"]))
        bounds = {
            "minimum": "≥",
            "exclusiveMinimum": ">",
            "maximum": "≤",
            "exclusiveMaximum": "<",
        }
        parts += [f"{sign} {member[key]}" for key, sign in bounds.items() if key in member]
        if "pattern" in member:
            parts.append(f"matches {code(member['pattern'])}")
        if member.get("minItems") and member.get("minItems") == member.get("maxItems"):
            parts.append(f"exactly {member['minItems']}")  # a pair: bounds, betas
        elif member.get("minItems") or member.get("minProperties"):
            parts.append(f"at least {member.get('minItems') or member.get('minProperties')}")
    items = prop.get("items", {})
    if "enum" in items:
        parts.append("each " + " \\| ".join(code(v) for v in items["enum"]))
    return ", ".join(parts)


def default_of(prop: dict, required: bool) -> str:
    if required:
        return "required"
    if "default" not in prop:
        return ""
    value = prop["default"]
    if isinstance(value, dict) and value:
        return "its section's defaults"
    return code(json.dumps(value, ensure_ascii=False))


def section_page(anchor: str, where: str, section: dict) -> list[str]:
    title = "The top level" if anchor == "recipe" else where
    lines = [f"## {cell(title)} {{ #{anchor} }}", ""]
    if anchor != "recipe" and section.get("description"):
        lines += [cell(section["description"]), ""]
    lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    required = set(section.get("required", []))
    for key, prop in section.get("properties", {}).items():
        row = [
            code(key),
            type_of(prop),
            default_of(prop, key in required),
            allowed(prop),
            cell(prop.get("description", "")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def recipe_reference() -> str:
    schema = recipe_schema()
    lines = [
        "# Recipe reference",
        "",
        "Generated from the recipe's schema at every build of this site (the same schema",
        "`cnnlab schema` prints and editors check recipes with, see",
        "[Recipes](../recipes.md#editor-support)); a field's meaning is the comment beside",
        "it in cnnlab's code. Components you register add their sections to",
        "`cnnlab --import my_components schema`.",
        "",
        "Some checks need the whole recipe or the data and happen when it is loaded:",
        "metric names (`train.monitor`), timm model names, and rules between fields (an",
        "optimizer's own fields, `nesterov` needing `momentum`).",
        "",
    ]
    for anchor, where, section in sections(schema):
        lines += section_page(anchor, where, section)
    return "\n".join(lines)


def backbones_page() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cnnlab", "backbones"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return "\n".join(
        [
            "# `cnnlab backbones`",
            "",
            "The output of `cnnlab backbones` at this build: every backbone a recipe's",
            "`model.backbone` can name, with its keys at their defaults.",
            "",
            "```",
            out.rstrip(),
            "```",
            "",
        ]
    )


def gallery() -> str:
    """One section per figure drawn: its name, what it shows, its pictures."""
    manifest = json.loads((GALLERY / "manifest.json").read_text())
    lines = ["", f"The run: `{cell(manifest['run'])}`.", ""]
    for name, figure in manifest["figures"].items():
        lines += [f"### `{cell(name)}`", "", cell(figure["doc"]).capitalize() + ".", ""]
        lines += [f"![{cell(name)}: {cell(f)}](images/gallery/{f})" for f in figure["files"]]
        lines.append("")
    return "\n".join(lines)


with mkdocs_gen_files.open("figures.md", "a") as f:
    f.write(gallery())
with mkdocs_gen_files.open("reference/recipe.md", "w") as f:
    f.write(recipe_reference())
with mkdocs_gen_files.open("reference/backbones.md", "w") as f:
    f.write(backbones_page())
