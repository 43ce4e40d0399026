"""`cnnlab sweep`: check everything, make or find the sweep folder, run the workers."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

from cnnlab.build import check_data, check_metric_classes
from cnnlab.errors import CnnlabError, counted
from cnnlab.plugins import import_flags, left_behind
from cnnlab.progress import console
from cnnlab.recipe import apply_overrides, parse_override, read_yaml, validate
from cnnlab.sweeps.spec import load_sweep
from cnnlab.sweeps.study import (
    Settings,
    SweepFolder,
    base_recipe,
    check_joinable,
    create_or_join,
    fingerprint,
    latest,
)


def sweep(
    recipe_path: Path | dict,
    sweep_path: Path,
    overrides: list[str],
    map_path: Path | None = None,
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    study: str | None = None,
    out: Path = Path("sweeps"),
    resume: bool = False,
    max_failures: int = 3,
    heartbeat: int = 10,
    trial_processes: int = 1,
) -> SweepFolder:
    """Run (or continue, or join) a sweep and return its folder. `recipe_path`: the base
    recipe's file, or the recipe itself as a dict (from Python)."""
    if workers < 1 or trial_processes < 1:
        raise CnnlabError("--workers and --trial-processes must be at least 1")
    if resume:
        if overrides or map_path:
            raise CnnlabError(
                "--resume continues with the saved recipe and sweep; drop --set/--map"
            )
        folder = latest(out, sweep_path, study)
        spec = folder.spec()
        console.print(f"resuming {folder.path} (its saved recipe and sweep file)")
    else:
        given = isinstance(recipe_path, dict)
        raw = dict(recipe_path) if given else read_yaml(recipe_path)
        source = "base recipe" if given else str(recipe_path)
        base = base_recipe(apply_overrides(raw, overrides), source)
        if map_path is None:
            beside = sweep_path.with_name(sweep_path.name.removesuffix(".yaml") + ".map.yaml")
            map_path = beside if beside.is_file() else None
        spec = load_sweep(sweep_path, base, map_path)  # every check, before any trial
        checked = validate(base, source="base recipe")
        tasks = check_data(checked)  # the data is there (headers only)
        check_metric_classes(checked, tasks, spec.metric, f"sweep file {sweep_path}: metric")
        check_reachable(json.dumps(base) + sweep_path.read_text(), workers, trial_processes)
        total = _budget(spec, trials)
        settings = Settings(
            method=spec.method,
            metric=spec.metric,
            goal=spec.goal,
            trials=total,
            max_failures=max_failures,
            heartbeat=heartbeat,
            trial_processes=trial_processes,  # a resume or a joining worker keeps them
            storage=None if storage is None else _redact(storage),
        )
        # An unreachable database, or a study in it started from other inputs, stops here,
        # before a folder is made.
        if storage is not None:
            from cnnlab.sweeps.storage import open_storage

            db = open_storage(storage, out, heartbeat)
            if study:
                check_joinable(db, study, fingerprint(spec, base, total))
        folder = create_or_join(out, study, base, sweep_path, map_path, settings)
    for note in spec.notes + _swept_sets(overrides, spec):
        console.print(f"note: {note}")
    meta = folder.meta()
    if trials is not None and resume and trials != meta.trials:
        raise CnnlabError(f"--resume keeps the study's budget of {counted(meta.trials, 'trial')}")
    processes = meta.trial_processes
    console.print(
        f"sweep {folder.path}: {spec.method} over {counted(len(spec.params), 'parameter')}, "
        f"{counted(meta.trials, 'trial')}, {meta.goal} {spec.metric}, {counted(workers, 'worker')}"
        + (f", {processes} processes a trial (torchrun)" if processes > 1 else "")
    )
    try:
        _work(folder, storage, workers)
    except KeyboardInterrupt:
        kept = (
            ", without its --set and --map (the folder keeps them)" if overrides or map_path else ""
        )
        raise CnnlabError(
            "interrupted; the trial in progress keeps its checkpoint and is queued again. "
            f"Continue with the same command plus --resume{kept}; in Python, the same call "
            f"with resume=True (folder {folder.path})"
        ) from None
    summarize(folder, storage)
    return folder


def _swept_sets(overrides: list[str], spec) -> list[str]:
    """A --set of a key the sweep file sweeps: each trial gets the sweep's value, so the
    --set changed nothing, unsaid (train.epochs=6 beside a sweep's `{value: 3}`)."""
    swept = {p.name for p in spec.params}
    keys = [".".join(parse_override(text)[0]) for text in overrides]
    return [
        f"--set {key} is a parameter of the sweep file, which sets it for every trial: the "
        "sweep's value wins (change it there)"
        for key in keys
        if key in swept
    ]


def _work(folder: SweepFolder, storage: str | None, workers: int) -> None:
    from cnnlab.sweeps.storage import open_storage
    from cnnlab.sweeps.study import load_study
    from cnnlab.sweeps.worker import (
        oversubscribed,
        run_worker,
        spawn_workers,
        study_progress,
        worker_slots,
    )

    meta = folder.meta()
    text = folder.recipe_path.read_text() + folder.sweep_path.read_text()
    check_reachable(text, workers, meta.trial_processes)  # a resumed one too
    if workers == 1:  # the worker opens the study, and counts its trials itself
        threads, device = worker_slots(1, folder.base()["train"])[0]
        why = run_worker(folder, storage, threads, device)
        if why != "done":
            raise CnnlabError(f"worker {why}; see the reasons above, fix them, then --resume")
        return
    # Created here, once, rather than by N workers racing; its trials so far move a
    # resumed sweep's samplers on from the values they drew before.
    study = load_study(folder, open_storage(storage, folder.path, meta.heartbeat), folder.spec())
    drawn = len(study.get_trials(deepcopy=False))
    crowded = oversubscribed(workers, folder.base()["train"])
    if crowded:
        console.print(f"warning: {crowded}")
    bad = spawn_workers(folder, storage, workers, drawn)
    if not bad:
        return
    ended = "; ".join(_ended(index, code) for index, code in bad)
    if study_progress(study, folder.spec(), meta.trials)[0] >= meta.trials:
        console.print(f"warning: {ended}; the other workers settled every trial")
        return
    raise CnnlabError(
        f"{ended} before the sweep's {counted(meta.trials, 'trial')} were settled; see above, "
        "then resume the sweep (--resume, or resume=True from Python)"
    )


def _ended(index: int, code: int) -> str:
    """How a worker process ended: killed by a signal (the out-of-memory killer's SIGKILL
    leaves no line of its own), or with its exit code (its reason is above)."""
    if code < 0:
        return f"worker {index} was killed ({signal.Signals(-code).name})"
    return f"worker {index} stopped early (exit code {code})"


def check_reachable(text: str, workers: int, processes: int) -> None:
    """Refuse, before a folder or a process is made, a sweep whose `text` (its recipe and
    sweep) names a component that processes it starts could not import."""
    if workers == 1 and processes == 1:
        return  # every trial runs in this process
    behind = left_behind(text)
    if behind:
        who = f"its {workers} worker" if workers > 1 else f"a trial's {processes}"
        raise CnnlabError(
            f"the sweep names {', '.join(behind)}, registered in this notebook or script "
            f"(__main__), which {who} processes cannot import: move it into a .py file and "
            "import that (a notebook's `import my_components` is handed on), or sweep with "
            "workers=1"
        )


def _budget(spec, trials: int | None) -> int:
    """--trials, else a grid's size, else the file's run_cap; run_cap caps every sweep, as W&B
    caps its runs, and a grid never runs a point twice."""
    if trials is not None and trials < 1:
        raise CnnlabError("--trials must be at least 1")
    budget = trials or (spec.grid_size() if spec.method == "grid" else spec.run_cap)
    if budget is None:
        raise CnnlabError(
            f"method {spec.method} needs a budget: give --trials N (or run_cap in the file)"
        )
    if spec.run_cap:
        budget = min(budget, spec.run_cap)
    return min(budget, spec.grid_size()) if spec.method == "grid" else budget


def _redact(url: str) -> str:
    from cnnlab.sweeps.storage import redact

    return redact(url)


def summarize(folder: SweepFolder, storage: str | None) -> None:
    """Counts by outcome, the best trial, and the commands that come next. Paths are the
    sweep folder's as given (like the `next:` commands): they open from where the sweep ran."""
    from cnnlab.sweeps.results import load_trials

    rows = load_trials(folder, storage)
    counts = Counter(r.outcome for r in rows)
    again = Counter(r.outcome for r in rows if r.retry_of is not None)  # trials of their own
    said = ", ".join(
        f"{n} {k}"
        + (f" ({again[k]} {'a retry' if again[k] == 1 else 'retries'})" if again[k] else "")
        for k, n in sorted(counts.items())
    )  # each outcome its own retries: "(2 of them retries)" stood after the last outcome
    if again:
        said += "; a retry trains on in the folder of the trial it continues"
    console.print("trials: " + said)
    meta = folder.meta()
    done = [r for r in rows if r.state == "complete"]
    if done:
        pick = meta.goal.best
        best = pick(done, key=lambda r: r.value)
        run = folder.run_path(best.run_dir, best.number) if best.run_dir else "(no run folder)"
        console.print(f"best {meta.metric} = {best.value:.4f}: {best.label} {run}")
    db = f" --storage {meta.storage}" if meta.storage else ""  # password redacted
    imports = import_flags()  # they know the components
    console.print(
        f"next: cnnlab{imports} select {folder.path} --metric {meta.metric} --test{db} ; "
        f"cnnlab{imports} report {folder.path}{db}"
    )
