"""What differs between recipes, and whether their losses are one function: `cnnlab
compare`'s table and loss note (cnnlab/comparison.py) and the note under a sweep report's
group table (cnnlab/sweeps/report.py) are this one rule. Values read as YAML writes them.
"""

from __future__ import annotations

from typing import Any

# Recipe fields that change no result (where a run is written, how it logs): not differences.
BOOKKEEPING = ("name", "output_dir", "train.progress", "train.threads", "train.report",
               "train.test_at_end", "log")  # fmt: skip
MISSING = "—"  # a field a run's recipe does not have


def varying(recipes: list[dict[str, Any]]) -> list[str]:
    """The flattened recipe fields whose value is not the same in every recipe (a field one
    of them lacks included), bookkeeping left out, in the recipes' order. A section that
    some recipes lack (a task dropped with null) is one field, not each of its keys."""
    keys = list(dict.fromkeys(k for r in recipes for k in r))
    sections = [{k.rsplit(".", i)[0] for k in r for i in range(1, k.count(".") + 1)}
                for r in recipes]  # fmt: skip
    out: list[str] = []
    for k in keys:
        if any(k == b or k.startswith(f"{b}.") for b in BOOKKEEPING):
            continue
        values = [field_value(r, k) for r in recipes]
        if all(v == values[0] for v in values[1:]):
            continue
        parts = k.split(".")
        heads = (".".join(parts[:i]) for i in range(2, len(parts)))
        absent = next((h for h in heads if not all(h in s for s in sections)), k)
        out += [absent] if absent not in out else []
    return out


def field_value(recipe: dict[str, Any], key: str) -> Any:
    """A field's value, or for a section (one that other recipes lack) its type or name."""
    if key in recipe:
        return recipe[key]
    if any(k.startswith(f"{key}.") for k in recipe):
        return recipe.get(f"{key}.type") or recipe.get(f"{key}.name") or "set"
    return MISSING


def loss_note(
    members: dict[str, list[tuple[dict[str, Any], list[str]]]], differs: list[str],
    what: str, across: str,
) -> str | None:  # fmt: skip
    """Why the losses of `members` are different functions, or None when they are one:
    loss = Σ weight · task loss, so any field of a task's section but its head (type, loss,
    label smoothing, class weights, weight, target), or a task not in every run.

    `members`: a name -> its runs' flattened recipes and task names (one run per name for
    `compare`, a group's trials for a sweep's group table); `differs`: the fields that vary
    (`varying`); `what` and `across` name the numbers and the names ("loss curves", "runs")."""
    runs = [run for group in members.values() for run in group]
    common = set(runs[0][1]).intersection(*(tasks for _, tasks in runs[1:]))
    fields = [k for k in differs if k.startswith("tasks.") and k.split(".")[1] in common
              and k.split(".")[2:3] != ["head"]]  # fmt: skip
    reasons = []
    for k in fields[:3]:
        seen = {name: " or ".join(dict.fromkeys(yaml_text(field_value(r, k)) for r, _ in group))
                for name, group in members.items()}  # fmt: skip
        reasons.append(f"{k} is " + ", ".join(f"{v} in {name}" for name, v in seen.items()))
    if len(fields) > 3:
        reasons.append(f"{len(fields) - 3} more field(s) of the tasks differ")
    for task in dict.fromkeys(t for _, ts in runs for t in ts if t not in common):
        holders = [n for n, group in members.items() if any(task in ts for _, ts in group)]
        reasons.append(f"task {task} is only in {', '.join(holders)}")
    if not reasons:
        return None
    return (
        f"The {what} are not comparable across these {across}: their losses are different "
        f"functions ({'; '.join(reasons)}). Compare the metrics instead."
    )


def yaml_text(value) -> str:
    """A recipe value as YAML writes it (null, true/false, [1.0, 2.0]), not as Python does
    (None, True): what a user types in a recipe or --set."""
    import yaml

    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").strip()  # a lone scalar ends its document: "null\n..."
