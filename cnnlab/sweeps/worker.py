"""The worker: takes trials from the shared study and trains each as an ordinary run.

Every worker (a process here, or on another machine) runs the same loop until the study
has its trials: fail stale trials (their worker died) -> take a waiting retry or ask the
sampler for a new point -> train -> tell. `--trials` counts the whole study, not a worker:
a worker whose remaining budget is all running elsewhere waits for those trials to end or
go stale, so a killed worker's trial is retried by whoever is left.

A trial's outcome is recorded on the trial: complete, pruned, failed with `outcome=error`
and `fail_reason`, failed with `outcome=interrupted` (Ctrl-C; a retry is queued), or failed
with no outcome (its worker stopped sending heartbeats; Optuna queued a retry).

    python -m cnnlab.sweeps.worker SWEEP_FOLDER --index I --threads T [--device D]
(the storage URL, which may hold a password, comes in $CNNLAB_SWEEP_STORAGE)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from optuna.storages import BaseStorage

from cnnlab.data.lines import quietly
from cnnlab.errors import CnnlabError, counted
from cnnlab.plugins import import_from_environment, load_entry_points
from cnnlab.recipe import best_row, validate
from cnnlab.runs import TRIAL_FILE, RunFolder, RunInUse, is_run_folder, write_json
from cnnlab.sweeps.results import SURPLUS, numbered, retry_of
from cnnlab.sweeps.spec import SweepSpec, apply_to
from cnnlab.sweeps.storage import (
    WORKER_ATTR,
    RetryStaleTrial,
    open_storage,
    redact,
    worker_id,
)
from cnnlab.sweeps.study import SweepFolder, load_study, sampler_for
from cnnlab.sweeps.torchrun import child_env, train_in_processes

STORAGE_ENV = "CNNLAB_SWEEP_STORAGE"
# GridSampler's record of a trial's grid point. Not public API: read to count the budget
# per point and reset when a trial yields; the Optuna pin in pyproject.toml covers it.
GRID_ATTR = "grid_id"
# How often a worker with nothing left to start looks whether the others' trials finished (and
# whether one went stale). Half a heartbeat (5 s) had kept a finished sweep of tiny trials
# waiting 4-5 s for a worker that was only watching
WATCH_S = 1.0


# -------------------------------------------------------------------- one trial


def trial_overrides(folder: SweepFolder, number: int, threads: int, device: str | None) -> dict:
    """Settings every trial gets on top of its sampled parameters. A trial on several
    processes shares the worker's threads among them."""
    meta = folder.meta()
    spec_metric, processes = meta.metric, meta.trial_processes
    out = {
        "output_dir": str(folder.runs_path),
        "name": f"trial{number:04d}",
        "train.progress": False,
        "train.test_at_end": False,  # select --test alone reads the test set
        "train.report": False,  # one report per sweep, not one per trial
        "train.monitor": spec_metric,  # best.pt = best epoch by the sweep metric
        "train.threads": max(1, threads // processes),
    }
    if device:
        out["train.device"] = device
    return out


def best_value(run: RunFolder, metric: str) -> tuple[float, int]:
    """The metric at the run's best epoch (the epoch whose weights best.pt holds)."""
    row = best_row(run.read_metrics(), metric)
    if row is None:
        raise CnnlabError(f"{run.path} has no finished epoch")
    return float(row[metric]), int(row["epoch"])


def epoch_reporter(trial, spec: SweepSpec, epochs: int) -> Callable[[dict], None]:
    """Per-epoch callback: feed the pruner, count epochs, prune when it says so.

    Never after the last band (W&B's rule) nor the last epoch (nothing left to save)."""
    import optuna

    et = spec.early_terminate or {}
    last = min(epochs - 1, et.get("last_band") or epochs)

    def on_epoch(row: dict) -> None:
        trial.report(row[spec.metric], row["epoch"])
        trial.set_user_attr("epochs", row["epoch"])
        if row["epoch"] <= last and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

    return on_epoch


@dataclass
class Objective:
    """Optuna's objective: one trial = one run folder, linked both ways."""

    folder: SweepFolder
    spec: SweepSpec
    threads: int
    device: str | None
    storage_name: str
    budget: int
    storage: BaseStorage  # the study's, for what Optuna's Trial does not offer
    last_outcome: str = ""
    last_number: int = -1
    base: dict = field(default_factory=dict)
    processes: int = 1
    # the data sections this process has loaded: a later trial on the same data loads it
    # without its lines (held in memory, each class's rows), said once by the first
    loaded: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.base = self.folder.base()
        self.processes = self.folder.meta().trial_processes  # torchrun per trial

    def sample(self, trial) -> dict:
        """The trial's value of every parameter (each form samples its own way)."""
        return {p.name: p.suggest(trial) for p in self.spec.params}

    def __call__(self, trial) -> float:
        import optuna

        self.last_outcome, self.last_number = "error", trial.number
        trial.set_user_attr(WORKER_ATTR, worker_id())
        if is_surplus(trial.study, self.spec, self.budget, trial.number):
            self._yield(trial)
        try:
            values = self.sample(trial)
            twin = self._finished_twin(trial)
            if twin is not None:  # a sampler may propose a trained configuration again
                trial.set_user_attr("duplicate_of", twin.number)
                trial.set_user_attr("run_dir", twin.user_attrs.get("run_dir"))
                trial.set_user_attr("epochs", 0)
                self.last_outcome = "complete"
                return twin.value
            overrides = self.spec.overrides(values)
            overrides.update(trial_overrides(self.folder, trial.number, self.threads, self.device))
            recipe = validate(apply_to(self.base, overrides), source=f"trial {trial.number}")
            run, resume = self._run_folder(trial, recipe)
        except Exception as err:
            self._failed(trial, None, err)
            raise
        try:
            from cnnlab.experiment import train

            on_epoch = epoch_reporter(trial, self.spec, recipe.train.epochs)
            with run.lock():  # a late worker may still train here: then the folder is its
                self._link(run, trial)
                if self.processes == 1:
                    data = recipe.data.model_dump_json()
                    with quietly() if data in self.loaded else contextlib.nullcontext():
                        train(recipe, resume=resume, on_epoch=on_epoch, run=run)
                    self.loaded.add(data)
            if self.processes > 1:  # torchrun's rank 0 holds the lock while the processes train
                train_in_processes(run, self.processes, on_epoch)
            value, epoch = best_value(run, self.spec.metric)
        except RunInUse as err:
            self._failed(trial, None, err)  # its status and trial.json belong to the holder
            raise
        except optuna.TrialPruned:
            run.set_status("pruned", epoch=len(run.read_metrics()))
            self.last_outcome = "pruned"
            raise
        except KeyboardInterrupt:
            self._interrupted(trial, run)
            raise
        except Exception as err:
            if run.status().get("state") == "interrupted":  # Ctrl-C became CnnlabError
                self._interrupted(trial, run)
                raise KeyboardInterrupt from None
            self._failed(trial, run, err)
            raise
        trial.set_user_attr("best_epoch", epoch)
        self.last_outcome = "complete"
        return value

    @staticmethod
    def _finished_twin(trial):
        """A completed trial with the same parameters: its result costs nothing to reuse."""
        from optuna.trial import TrialState

        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.number != trial.number and other.params == trial.params:
                return other
        return None

    def _run_folder(self, trial, recipe) -> tuple[RunFolder, Path | None]:
        """A retried trial continues its predecessor's folder from its last checkpoint."""
        previous = trial.user_attrs.get("run_dir")
        path = self.folder.run_path(previous, trial.number) if previous else None
        if path is not None and is_run_folder(path):
            run = RunFolder(path)
            # Killed before its first checkpoint: start over in the same folder.
            return run, (run.path if run.last_path.is_file() else None)
        return RunFolder.create(recipe), None

    def _link(self, run: RunFolder, trial) -> None:
        rel = run.path.relative_to(self.folder.path).as_posix()
        trial.set_user_attr("run_dir", rel)
        numbers = run.trial().get("trials", [])  # a retry continues the trial before it
        write_json(
            run.path / TRIAL_FILE,
            {
                "sweep": str(self.folder.path.resolve()),
                "study": self.folder.meta().study,
                "storage": self.storage_name,
                "trials": [*numbers, trial.number],
            },
        )

    def _failed(self, trial, run: RunFolder | None, err: BaseException) -> None:
        reason = f"{type(err).__name__}: {err}".strip()[:1000]
        trial.set_user_attr("outcome", "error")
        trial.set_user_attr("fail_reason", reason)
        if run is not None and run.status().get("state") != "failed":
            run.set_status("failed", reason=reason)
        print(f"trial {trial.number} failed: {reason}", file=sys.stderr, flush=True)

    def _yield(self, trial) -> None:
        """End a surplus trial before it samples or trains: pruned, marked, off the grid."""
        import optuna

        self.last_outcome = "surplus"
        trial.set_user_attr("outcome", SURPLUS)
        if self.spec.method == "grid":  # free its grid point for a later --resume
            self.storage.set_trial_system_attr(self._trial_id(trial), GRID_ATTR, -1)
        raise optuna.TrialPruned("surplus: the study's budget was taken by other workers")

    def _interrupted(self, trial, run: RunFolder) -> None:
        """Ctrl-C: record it apart from errors and queue a retry that resumes the run."""
        self.last_outcome = "interrupted"
        trial.set_user_attr("outcome", "interrupted")
        trial.set_user_attr("fail_reason", "interrupted by the user (Ctrl-C); retry queued")
        RetryStaleTrial()(trial.study, self.storage.get_trial(self._trial_id(trial)))

    def _trial_id(self, trial) -> int:
        """The storage's id of a running trial, through BaseStorage's public methods."""
        study_id = self.storage.get_study_id_from_name(trial.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


# ------------------------------------------------------------------- the loop


def _holds_grid_point(t) -> bool:
    """Running, waiting or settled (a point that raised an error is not run again)."""
    from optuna.trial import TrialState

    if t.state == TrialState.FAIL:
        return t.user_attrs.get("outcome") == "error"
    return True


def is_surplus(study, spec: SweepSpec, budget: int, number: int) -> bool:
    """Whether trial `number` exceeds the budget given the trials numbered before it.

    Workers check the budget and then create a trial; two can pass the check together and
    both start the last trial. Trial numbers are handed out in order by the storage, so
    ranking by number settles it the same way on every worker: the later one yields."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    earlier = [t for t in trials if t.number < number and t.user_attrs.get("outcome") != SURPLUS]
    if spec.method == "grid":
        mine = next(t for t in trials if t.number == number).system_attrs.get(GRID_ATTR)
        # A trial still inside the sampler has no grid id yet: count it as a point of its own.
        held = {
            t.system_attrs.get(GRID_ATTR, f"new{t.number}") for t in earlier if _holds_grid_point(t)
        }
        return mine in held or len(held) >= budget
    live = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
    return sum(t.state in live for t in earlier) >= budget


def study_progress(study, spec: SweepSpec, trials: int) -> tuple[int, int, int]:
    """(settled, pending, waiting) toward the budget.

    grid: a grid point is settled once any trial of it finished (a failed point is not run
    again), pending while a trial of it runs or waits. random/bayes: complete and pruned
    trials count, failed ones leave their budget to a new trial."""
    from optuna.trial import TrialState

    all_trials = [
        t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("outcome") != SURPLUS
    ]
    waiting = sum(t.state == TrialState.WAITING for t in all_trials)
    if spec.method == "grid":
        settled, pending = set(), set()
        for t in all_trials:
            gid = t.system_attrs.get(GRID_ATTR)
            if gid is None:
                continue
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                pending.add(gid)
            elif t.state.is_finished():
                settled.add(gid)
        return len(settled - pending), len(pending), waiting
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in all_trials)
    pending = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in all_trials)
    return done, pending, waiting


def run_worker(
    folder: SweepFolder,
    storage_url: str | None,
    threads: int,
    device: str | None = None,
    index: int = 0,
    drawn: int | None = None,
) -> str:
    """Work on the study until its budget is met; returns why it stopped. `drawn`: the
    study's trials when the sweep started (a resumed one's, else 0); None: as this worker
    finds it."""

    meta = folder.meta()
    spec = folder.spec()
    storage = open_storage(storage_url, folder.path, meta.heartbeat)
    # GridSampler's grid order must agree across workers: one seed. Random / TPE: seeded per
    # local worker (reproducible); unseeded with a shared database, where workers must differ.
    base_seed = validate(folder.base()).seed
    if spec.method == "grid":
        seed = base_seed
    else:
        seed = base_seed * 1000 + index if storage_url is None else None
    study = load_study(folder, storage, spec, seed)
    drawn = len(study.get_trials(deepcopy=False)) if drawn is None else drawn
    if drawn and seed is not None and spec.method != "grid":
        # a resumed sweep: from its seed alone the sampler would draw the first trials'
        # values again (twins, not trained, while the budget ran out)
        study.sampler = sampler_for(spec, meta.trials, seed + 7919 * drawn)
    objective = Objective(folder, spec, threads, device, redact(storage_url), meta.trials, storage)
    try:
        with quiet_heartbeat():
            return _work_on(study, objective, index)
    except Exception as err:
        gone = unreachable(storage)
        if gone is None:  # the database answers: a bug, with its traceback
            raise
        raise CnnlabError(
            f"the study's database stopped answering ({gone}); the trial in progress keeps its "
            "checkpoint: start the database again, then resume the sweep (--resume)"
        ) from err


def unreachable(storage) -> str | None:
    """Why the study's storage does not answer (its error's first line), or None: a stopped
    database broke a sweep in Optuna's own code, 1,300 lines of traceback ending in an
    UnboundLocalError, its trial recorded as "exceeding max length"."""
    try:
        storage.get_all_studies()
    except Exception as err:
        while err.__cause__ is not None:  # the driver's own words, not Optuna's guess ("e.g.
            err = err.__cause__  # exceeding max length"); not __context__: the error handled
        said = str(err).strip()
        return said.splitlines()[0] if said else type(err).__name__
    return None


@contextlib.contextmanager
def quiet_heartbeat() -> Iterator[None]:
    """Optuna's heartbeat thread, when the database goes away, prints its own traceback
    before the worker says so in one line: within, such a thread's error is left to it."""
    import threading

    before = threading.excepthook

    def hook(args) -> None:
        if "heartbeat" not in getattr(args.thread, "name", ""):
            before(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = before


def _work_on(study, objective: Objective, index: int) -> str:
    """Trials until the budget is met or a worker should stop; why it stopped."""
    import optuna

    spec, meta = objective.spec, objective.folder.meta()
    trials, failures = meta.trials, 0
    while True:
        optuna.storages.fail_stale_trials(study)
        settled, pending, waiting = study_progress(study, spec, trials)
        if settled >= trials:
            return "done"
        hit = next((t for t in study.get_trials(deepcopy=False) if spec.reached(t.value)), None)
        if hit is not None:
            print(f"[worker {index}] trial {hit.number} reached metric.target {spec.target:g}: "
                  "no new trial starts", flush=True)  # fmt: skip
            return "done"
        if settled + pending >= trials and not waiting:
            time.sleep(WATCH_S)  # the rest runs elsewhere: watch it
            continue
        with hush_interrupts():
            study.optimize(objective, n_trials=1, catch=(Exception,))
        if objective.last_outcome == "surplus":
            continue
        _say(study.get_trials(deepcopy=False)[objective.last_number], index, spec)
        failures = failures + 1 if objective.last_outcome == "error" else 0
        if failures >= meta.max_failures:
            return f"stopped after {counted(failures, 'consecutive failed trial')}"


def _say(trial, index: int, spec: SweepSpec) -> None:
    """One line per trial this worker ran, with its parameters' values."""
    outcome = trial.user_attrs.get("outcome") or trial.state.name.lower()
    value = f" {trial.value:.4f}" if trial.value is not None else ""
    values = {p.name: p.decode(trial.params[p.name]) for p in spec.params if p.name in trial.params}
    params = "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    epochs = counted(trial.user_attrs.get("epochs", 0), "epoch")
    twin = trial.user_attrs.get("duplicate_of")
    if twin is not None:  # "(0 epochs)" alone read as a trial that trained nothing
        epochs = f"the values of trial {twin}: its result, not trained again"
    name = numbered(trial.number, retry_of(trial))
    print(f"[worker {index}] {name} {outcome}{value} ({epochs})  {params}")
    sys.stdout.flush()


class _HushInterrupt(logging.Filter):
    """Drops Optuna's log lines from the moment it logs a KeyboardInterrupt.

    Optuna logs every trial that raised as a warning with its traceback, then re-raises.
    For an error that is the bug report, and stays (beside cnnlab's `trial N failed:` line).
    For Ctrl-C it is noise before cnnlab's one line ("error: interrupted; ... --resume"):
    the interrupt record and Optuna's "failed with value None" line after it go."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        self.interrupted = self.interrupted or isinstance(error, KeyboardInterrupt)
        return not self.interrupted


@contextlib.contextmanager
def hush_interrupts() -> Iterator[None]:
    """Quiet Optuna about a Ctrl-C within the block. On its handlers, not its logger: a
    logger's filter misses the records of Optuna's modules' own loggers (optuna.study...)."""
    hush = _HushInterrupt()
    handlers = list(logging.getLogger("optuna").handlers)
    for handler in handlers:
        handler.addFilter(hush)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hush)


# ----------------------------------------------------------- local processes


def worker_slots(workers: int, train: dict) -> list[tuple[int, str | None]]:
    """(threads, device) per local worker: the recipe's train.threads if it sets them, else
    a share of the CPU cores; on a machine with GPUs, each worker its own GPU in turn."""
    import torch

    gpus = torch.cuda.device_count() if train.get("device", "auto") in ("auto", "cuda") else 0
    threads = train.get("threads") or max(1, (os.cpu_count() or 1) // workers)
    if gpus:
        return [(threads, f"cuda:{i % gpus}") for i in range(workers)]
    return [(threads, None) for _ in range(workers)]


def oversubscribed(workers: int, train: dict) -> str | None:
    """What is wrong when local workers on the CPU ask for more threads than it has cores:
    they take turns, each trial trains slower and the sweep ends no sooner (None: they fit,
    or they train on GPUs)."""
    slots = worker_slots(workers, train)
    threads, cores = slots[0][0], os.cpu_count() or 1
    if slots[0][1] is not None or workers * threads <= cores:
        return None
    fits = max(1, cores // threads)
    return (
        f"{counted(workers, 'worker')} of {counted(threads, 'thread')} each on {cores} CPU "
        f"cores: they take turns, so each trial trains slower and the sweep ends no sooner; "
        f"--workers {fits} keeps a core for each thread"
    )


def spawn_workers(
    folder: SweepFolder, storage_url: str | None, workers: int, drawn: int = 0
) -> list[tuple[int, int]]:
    """Start `workers` processes on this machine and wait for them; returns (index, exit
    code) of each that failed (a negative code: the signal that ended it)."""
    env = child_env()
    if storage_url:
        env[STORAGE_ENV] = storage_url
    procs = []
    for index, (threads, dev) in enumerate(worker_slots(workers, folder.base()["train"])):
        cmd = [sys.executable, "-m", "cnnlab.sweeps.worker", str(folder.path)]
        cmd += ["--index", str(index), "--threads", str(threads), "--drawn", str(drawn)]
        if dev:
            cmd += ["--device", dev]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the terminal sent SIGINT to the workers too: let them save
        codes = [p.wait() for p in procs]
        raise
    return [(index, code) for index, code in enumerate(codes) if code != 0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one cnnlab sweep worker")
    parser.add_argument("folder")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--drawn", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        # the components `cnnlab sweep` knew: installed plug-ins and its --import modules
        load_entry_points()
        import_from_environment()
        why = run_worker(
            SweepFolder.open(args.folder),
            os.environ.get(STORAGE_ENV),
            args.threads,
            args.device,
            args.index,
            args.drawn,
        )
    except CnnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"[worker {args.index}] interrupted", file=sys.stderr)
        sys.exit(130)
    print(f"[worker {args.index}] {why}", flush=True)
    sys.exit(0 if why == "done" else 3)


if __name__ == "__main__":
    main()
