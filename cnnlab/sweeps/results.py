"""Trials joined with their run folders: the one view that select and report read.

Reading never blocks workers: the journal file is read without its write lock, and a
database is read with ordinary SELECTs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.recipe import best_row, flatten
from cnnlab.runs import RunFolder
from cnnlab.sweeps.study import SweepFolder

SURPLUS = "surplus"  # the outcome of a trial that yielded its slot to an earlier one

# What trial_overrides() sets on every trial: not "what differs" between trials.
TRIAL_KEYS = {
    "output_dir",
    "name",
    "train.progress",
    "train.test_at_end",
    "train.report",
    "train.monitor",
    "train.threads",
    "train.device",
}


@dataclass
class TrialRow:
    """One trial: Optuna's record plus where its run folder is."""

    number: int
    state: str  # complete | pruned | fail | running | waiting
    outcome: str  # complete | pruned | error | interrupted | running | waiting
    value: float | None
    params: dict[str, Any]
    run_dir: str | None  # relative to the sweep folder
    reason: str | None
    start: datetime | None
    end: datetime | None
    epochs: int
    retried_as: int | None = None
    retry_of: int | None = None  # the trial whose run folder it continues (see numbered)
    folder: SweepFolder | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return numbered(self.number, self.retry_of)

    @property
    def run(self) -> RunFolder | None:
        if self.run_dir is None or self.folder is None:
            return None
        run = RunFolder(self.folder.run_path(self.run_dir, self.number))
        return run if run.recipe_path.is_file() else None

    @cached_property
    def metrics(self) -> list[dict]:
        run = self.run
        return run.read_metrics() if run else []

    @cached_property
    def recipe(self) -> dict:
        import yaml

        run = self.run
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 30x faster at scale
        return yaml.load(run.recipe_path.read_text(), Loader=loader) if run else {}

    def at_best_epoch(self) -> dict:
        """The metrics row of the epoch best.pt holds (by the sweep metric)."""
        monitor = self.recipe.get("train", {}).get("monitor", "val.loss")
        return best_row(self.metrics, monitor) or {}


def open_study(folder: SweepFolder, storage_url: str | None):
    import optuna

    from cnnlab.sweeps.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = folder.meta()
    if storage_url is None and meta.storage:
        raise CnnlabError(
            f"{folder.path}'s study lives in {meta.storage}; give --storage with its URL"
        )
    storage = open_storage(storage_url, folder.path, meta.heartbeat)
    return optuna.load_study(study_name=meta.study, storage=storage)


def load_trials(folder: SweepFolder, storage_url: str | None, study=None) -> list[TrialRow]:
    """Every trial of the sweep's study, with outcome, parameters and run folder."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    study = study or open_study(folder, storage_url)
    spec = folder.spec()
    decode = {p.name: p.decode for p in spec.params}
    trials = study.get_trials(deepcopy=False)
    retried = {}
    for t in trials:
        history = RetryHeartbeatStaleTrialCallback.retry_history(t)
        if history:
            retried[history[-1]] = t.number
    rows = []
    for t in trials:
        if t.user_attrs.get("outcome") == SURPLUS:  # yielded before running: not a trial of ours
            continue
        state = t.state.name.lower()
        outcome = state
        reason = t.user_attrs.get("fail_reason")
        if state == "fail":
            outcome = t.user_attrs.get("outcome", "interrupted")
            if "outcome" not in t.user_attrs:
                reason = "its worker stopped sending heartbeats (killed or lost)"
        rows.append(
            TrialRow(
                number=t.number,
                state=state,
                outcome=outcome,
                value=t.value if state in ("complete", "pruned") else None,
                params={k: decode.get(k, lambda v: v)(v) for k, v in t.params.items()},
                run_dir=t.user_attrs.get("run_dir"),
                reason=reason if state == "fail" else None,
                start=t.datetime_start,
                end=t.datetime_complete,
                epochs=int(t.user_attrs.get("epochs", 0)),
                retried_as=retried.get(t.number),
                retry_of=retry_of(t),
                folder=folder,
            )
        )
    return rows


def retry_of(trial) -> int | None:
    """The first trial of a retry's chain: a retry (and a retry of a retry) continues that
    trial's run folder, so its number is the one in the folder's name (unless that trial
    stopped before it made one: then the retry makes its own)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[0] if history else None


def numbered(number: int, first: int | None) -> str:
    """How a user reads a trial: its number, and for a retry the trial it continues.

    Both are Optuna's trial numbers (from 0), as in the run folders' names, trial.json and
    the tables; a retry gets a number of its own but trains on in its first trial's folder,
    so `trial 3` beside `runs/trial0002-...` says "retry of trial 2"."""
    return f"trial {number}" if first is None else f"trial {number} (retry of trial {first})"


def with_runs(rows: list[TrialRow]) -> list[TrialRow]:
    """The trials whose run folder holds metrics, each folder once: a trial retried as
    another handed its folder on, and counting both would count one run twice in a study."""
    return [r for r in rows if r.retried_as is None and r.metrics]


def differs(recipe: dict, base: dict) -> dict[str, Any]:
    """Recipe fields that differ from the base recipe, minus what every trial sets."""
    a, b = flatten(recipe), flatten(base)
    return {k: v for k, v in a.items() if k not in TRIAL_KEYS and b.get(k, object()) != v}
