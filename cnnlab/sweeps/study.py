"""The sweep folder and its Optuna study: samplers, pruner, creating or joining.

    sweeps/<name>-<time>/        (or <out>/<study> when --study names it: every machine
      sweep.json                  running the same line joins the same folder and study)
      recipe.yaml                base recipe, resolved (defaults and --set applied)
      sweep.yaml [sweep.map.yaml] the sweep file (and name map) as given
      study.journal              the study, unless --storage names a database
      runs/trial0003-<time>/     one ordinary run folder per trial (+ trial.json link)
      selection.{json,md,csv}    written by `cnnlab select`
      selection_test.{json,md,csv}  by `cnnlab select --test` (the test results kept apart)
      report.html, *.png         written by `cnnlab report`

A sweep folder is self-contained: workers, `--resume`, select and report read only it
(and the database, when the study lives in one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cnnlab.errors import CnnlabError, counted
from cnnlab.recipe import check_registered, describe_error, dump_recipe, upgrade_saved, validate
from cnnlab.registrations import origins
from cnnlab.runs import SWEEP_FILE, is_sweep_folder, stamp, write_json, write_text
from cnnlab.sweeps.spec import SweepSpec, load_sweep
from cnnlab.tasks import Goal

META = SWEEP_FILE
INPUTS_ATTR = "cnnlab:inputs"  # study user attr: fingerprint() of what the study started from
INPUTS_WAIT = 10.0  # seconds a joining worker waits for the study's creator to store them
INPUT_NAMES = {"sweep": "sweep file", "recipe": "base recipe"}


class Settings(BaseModel):
    """How a sweep runs, decided when it starts (`cnnlab sweep`) and kept in sweep.json."""

    model_config = ConfigDict(extra="ignore")  # a newer cnnlab's extra fields: read the rest

    method: Literal["grid", "random", "bayes"]
    metric: str  # a recipe metric, e.g. val.cls.accuracy
    goal: Goal
    trials: int = Field(ge=1)  # the study's budget, counted across workers
    max_failures: int = Field(3, ge=1)  # consecutive failed trials that stop a worker
    heartbeat: int = Field(10, ge=1)  # seconds between a running trial's heartbeats
    trial_processes: int = Field(1, ge=1)  # torchrun processes per trial
    storage: str | None = None  # the database URL, password redacted; None: the journal file


class Meta(Settings):
    """sweep.json: the settings, the study's name, and where and when the sweep began."""

    study: str
    sweep_file: str
    created: str = ""
    # each user registration and where it came from (a run's env.json has the same): a
    # command on the folder that lacks one says what to import
    components: list[dict[str, str]] = []


@dataclass
class SweepFolder:
    """One sweep's folder: its saved inputs and settings, and the study they define."""

    path: Path

    meta_path = property(lambda self: self.path / META)
    recipe_path = property(lambda self: self.path / "recipe.yaml")
    sweep_path = property(lambda self: self.path / "sweep.yaml")
    map_path = property(lambda self: self.path / "sweep.map.yaml")
    runs_path = property(lambda self: self.path / "runs")

    @classmethod
    def open(cls, path: str | Path) -> SweepFolder:
        folder = cls(Path(path))
        if not folder.meta_path.is_file():
            raise CnnlabError(
                f"{path} is not a sweep folder (no {META}); `cnnlab sweep` makes them in sweeps/"
            )
        return folder

    @staticmethod
    def is_sweep(path: str | Path) -> bool:
        return is_sweep_folder(path)

    def meta(self) -> Meta:
        try:
            return Meta.model_validate(json.loads(self.meta_path.read_text()))
        except (ValueError, ValidationError) as err:
            detail = (
                describe_error(err.errors()[0], Meta, META)
                if isinstance(err, ValidationError)
                else str(err)
            )
            raise CnnlabError(
                f"{self.meta_path} is damaged ({detail}); start the sweep anew in another --out"
            ) from None

    def base(self) -> dict:
        """The saved base recipe (raw), readable whichever cnnlab version wrote it; a
        component of one's own that this process lacks is one line saying what to import."""
        raw = upgrade_saved(yaml.safe_load(self.recipe_path.read_text()))
        recorded = self.meta().components if self.meta_path.is_file() else []
        check_registered(raw, f"sweep {self.path}", recorded)
        return raw

    def spec(self) -> SweepSpec:
        mapping = self.map_path if self.map_path.is_file() else None
        return load_sweep(self.sweep_path, self.base(), mapping)

    def run_path(self, run_dir: str, trial: int) -> Path:
        """The run folder a trial's `run_dir` names, which must lie inside runs/.

        run_dir comes from the study, and a shared database may hold anything: an absolute
        or ../ value would have a worker train, or select evaluate, outside this folder."""
        path = self.path / run_dir
        if not within(self.runs_path, path):
            raise CnnlabError(
                f"trial {trial}: its run_dir {run_dir!r} in study {self.meta().study!r} lies "
                f"outside {self.runs_path}; cnnlab writes runs/<name> there, so someone else "
                "wrote this value: check who writes to the study, or use another --study"
            )
        return path


def within(root: Path, path: Path) -> bool:
    """Whether `path` lies strictly inside `root` once symlinks and .. are resolved."""
    root, path = root.resolve(), path.resolve()
    return path != root and path.is_relative_to(root)


def study_folder(out: Path, study: str) -> Path:
    """`out / study`, for a --study name that stays a single folder inside --out."""
    separators = [s for s in ("/", os.sep, os.altsep) if s]
    plain = study not in ("", ".", "..") and not any(s in study for s in separators)
    if not (plain and within(out, out / study)):  # within: a symlink in --out may lead out
        raise CnnlabError(
            f"--study {study!r}: the study name is also its folder inside --out {out}; give a "
            "plain name without /, \\ or .. (e.g. --study fmnist_lambda)"
        )
    return out / study


def base_recipe(raw: dict, source: str) -> dict:
    """The base recipe with every default filled in: what trials start from and diff against."""
    return yaml.safe_load(dump_recipe(validate(raw, source=source)))


def create_or_join(
    out: Path,
    study: str | None,
    base: dict,
    sweep_file: Path,
    map_file: Path | None,
    settings: Settings,
) -> SweepFolder:
    """A new sweep folder, or the existing one of the same named study (an earlier run of
    the same line made it): then its saved inputs must agree, or the workers, which read
    the saved ones, would quietly run the old sweep."""
    name = sweep_file.name.removesuffix(".yaml").removesuffix(".yml")
    path = study_folder(out, study) if study else _fresh(out / f"{name}-{stamp()}")
    folder = SweepFolder(path)
    if folder.meta_path.is_file():
        saved = folder.meta()
        if saved.study != (study or path.name):
            raise CnnlabError(
                f"{path} holds study {saved.study!r}, not {study!r}; choose another --out"
            )
        started = fingerprint(folder.spec(), folder.base(), saved.trials)
        given = fingerprint(load_sweep(sweep_file, base, map_file), base, settings.trials)
        same_inputs(saved.study, started, given)
        return folder
    path.mkdir(parents=True, exist_ok=True)
    write_text(folder.recipe_path, yaml.safe_dump(base, sort_keys=False))
    shutil.copyfile(sweep_file, folder.sweep_path)
    if map_file is not None:
        shutil.copyfile(map_file, folder.map_path)
    meta = Meta(
        **settings.model_dump(),
        study=study or path.name,
        sweep_file=str(sweep_file),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        components=origins(),
    )
    write_json(folder.meta_path, meta.model_dump(mode="json"))
    return folder


def _fresh(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def latest(out: Path, sweep_file: Path, study: str | None) -> SweepFolder:
    """The folder `--resume` continues: the named study's, else the newest of this sweep."""
    if study:
        return SweepFolder.open(study_folder(out, study))
    name = sweep_file.name.removesuffix(".yaml").removesuffix(".yml")
    found = sorted(
        (p for p in out.glob(f"{name}-*") if SweepFolder.is_sweep(p)),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise CnnlabError(f"--resume: no sweep folder {out}/{name}-* to continue; drop --resume")
    return SweepFolder(found[-1])


# ------------------------------------------------------------------ optuna study


def sampler_for(spec: SweepSpec, trials: int, seed: int | None):
    """grid -> GridSampler, random -> RandomSampler, bayes -> TPE (constant liar, so
    parallel workers do not all try the same point while others run)."""
    import optuna

    if spec.method == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, trials // 3))  # TPE's default 10 eats small budgets whole
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def pruner_for(spec: SweepSpec):
    """W&B's early_terminate -> successive halving on the per-epoch metric; else none.

    Not Optuna's HyperbandPruner: its brackets are drawn from a hash of the study name (so
    two runs of one sweep prune differently) and some of them never prune; W&B's agent
    stops runs as successive halving does (see spec._parse_early_terminate)."""
    import optuna

    if spec.early_terminate is None:
        return optuna.pruners.NopPruner()
    et = spec.early_terminate
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=et["min_resource"], reduction_factor=et["reduction_factor"]
    )


def load_study(folder: SweepFolder, storage, spec: SweepSpec, seed: int | None = None):
    """Create the study and store its inputs, or join it and check them. Safe when many
    workers start at once: the storage lets one of them create it, the rest join."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnlab says what happens itself
    meta = folder.meta()
    mine = fingerprint(spec, folder.base(), meta.trials)
    how = {
        "study_name": meta.study,
        "storage": storage,
        "sampler": sampler_for(spec, meta.trials, seed),
        "pruner": pruner_for(spec),
    }
    try:
        study = optuna.create_study(direction=spec.direction, **how)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**how)
        join(study, mine)
    else:
        study.set_user_attr(INPUTS_ATTR, mine)
    return study


def check_joinable(storage, name: str, mine: dict[str, Any]) -> None:
    """Before a folder is made for it: refuse to join a study in the database that was
    started from other inputs (a new name passes)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # Optuna's way of saying there is no such study
        return
    join(study, mine)


# ------------------------------------------------------------- the study's inputs


def fingerprint(spec: SweepSpec, base: dict, trials: int) -> dict[str, Any]:
    """What a study is started from: digests of the checked sweep (what is sampled, how
    trials are judged and stopped) and of the base recipe, and the trial budget. A worker
    bringing other ones would sample its own space into the study and count toward its
    budget; the notes and the names select accepts are left out, as they change neither."""
    sweep = {
        "method": spec.method,
        "metric": spec.metric,
        "goal": spec.goal,
        "params": sorted((p.describe() for p in spec.params), key=lambda p: p["name"]),
        "constants": spec.constants,
        "mapping": {name: asdict(entry) for name, entry in spec.mapping.items()},
        "early_terminate": spec.early_terminate,
        "target": spec.target,
    }
    return {"sweep": _digest(sweep), "recipe": _digest(base), "budget": trials}


def _digest(value: Any) -> str:
    text = json.dumps(_keyed_by_text(value), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _keyed_by_text(value: Any) -> Any:
    """Dict keys as text: YAML allows true, 1 and "a" as keys of one map, json cannot sort them."""
    if isinstance(value, dict):
        return {str(k): _keyed_by_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_keyed_by_text(v) for v in value]
    return value


def same_inputs(study: str, started: dict[str, Any], mine: dict[str, Any]) -> None:
    """Refuse to join `study` with other inputs than it was started with, naming them."""
    differ = [what for key, what in INPUT_NAMES.items() if started.get(key) != mine[key]]
    if started.get("budget") != mine["budget"]:
        was = started.get("budget")
        was = counted(was, "trial") if isinstance(was, int) else "none recorded"
        differ.append(f"budget ({was}, here {mine['budget']})")
    if differ:
        raise CnnlabError(
            f"study {study!r} was started with another {' and another '.join(differ)}; use "
            "another --study, or the same sweep file, recipe, --set and --trials"
        )


def join(study, mine: dict[str, Any]) -> None:
    """Check a joined study's inputs against this worker's. Its creator stores them just
    after creating it, so a worker that joins in between waits a moment for them."""
    deadline = time.monotonic() + INPUTS_WAIT
    while (started := study.user_attrs.get(INPUTS_ATTR)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if started is None:  # made before cnnlab stored inputs, or its creator died at once
        study.set_user_attr(INPUTS_ATTR, mine)
        return
    same_inputs(study.study_name, started if isinstance(started, dict) else {}, mine)
