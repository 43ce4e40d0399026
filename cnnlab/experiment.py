"""A whole run from a recipe: build, train, test the best checkpoint, write the report.

`train()` is what `cnnlab train` and `cnnlab.train()` call. It joins the other processes
under torchrun, builds the run (`cnnlab.build`), and only then makes a run folder, so a
recipe that cannot run leaves nothing behind. The Trainer loops; this module writes around
it: env.json, dashboards, calibration.json, test.json, report.html.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab import distributed
from cnnlab.build import build, resolve_device
from cnnlab.calibration import calibrate_run, summary
from cnnlab.data.batches import Splits
from cnnlab.data.lines import remembered
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import Recorder, SplitPredictions
from cnnlab.loggers import Loggers
from cnnlab.loop import Trainer
from cnnlab.models.compiled import compiled_kernels
from cnnlab.precision import record
from cnnlab.progress import console, print_metrics_table
from cnnlab.recipe import Recipe
from cnnlab.runs import RunFolder, environment, is_sweep_folder, load_checkpoint, write_json


def train(
    recipe: Recipe,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    run: RunFolder | None = None,
) -> RunFolder:
    """Train a recipe (or continue a run folder) and evaluate its best checkpoint on test.

    `on_epoch(row)` sees every epoch's metrics after they are saved; an exception it raises
    (a sweep pruning the trial) ends training with the run folder consistent. `run` is a
    fresh folder made by the caller (a sweep links it to its trial before training starts).
    """
    Loggers.check(recipe)  # a missing logging package stops before any folder is made
    saved = None
    if resume is not None:
        if is_sweep_folder(resume):  # it has a recipe.yaml too: the base
            raise CnnlabError(
                f"{resume} is a sweep folder; a sweep continues with the command that started "
                "it plus --resume (cnnlab sweep RECIPE SWEEP --resume)"
            )
        run = RunFolder.open(resume)
        if run.status().get("state") == "pruned":
            raise CnnlabError(
                f"{run.path} is a sweep trial its pruner stopped; the study keeps it pruned, "
                f"so training it on outside the sweep would disagree with it: a new run from "
                f"its weights is train.init_from={run.path}"
            )
        if not run.last_path.is_file():
            raise CnnlabError(
                f"{run.path} has no checkpoint yet (checkpoints/last.pt); start it anew"
            )
        if run.status().get("state") == "finished":
            raise CnnlabError(
                f"{run.path} has finished; nothing is left to continue (cnnlab eval tests it "
                "again, cnnlab report draws its figures; more epochs are a new run from its "
                f"weights: train.init_from={run.path})"
            )
        saved = load_checkpoint(run.last_path)
    # under torchrun: join the other processes first; each trains on its own device
    ranks, device = distributed.join(resolve_device(recipe.train.device))
    threads = torch.get_num_threads()  # train.threads holds for the run, not after it
    try:
        with remembered() as heard:  # the data's warnings, said again once it has finished
            trainer = Trainer(build(recipe, saved, device=device, ranks=ranks))
        run = distributed.run_folder(run, lambda: RunFolder.create(recipe), ranks, device)
        with run.lock():
            done = train_in(trainer, run, saved, on_epoch)
        if heard and ranks.main and recipe.train.progress:
            console.print("\n".join(["loading the data warned:", *heard]), markup=False)
        return done
    finally:
        torch.set_num_threads(threads)


def train_in(
    trainer: Trainer,
    run: RunFolder,
    saved: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> RunFolder:
    """The part of `train()` that writes, holding the run folder's lock: fit, then test
    and report on rank 0."""
    recipe, ranks = trainer.recipe, trainer.ranks
    if saved is None and run.metrics_path.is_file():  # a killed attempt's folder, started anew
        run.truncate_metrics(0)
    loggers = Loggers(recipe, run)  # W&B / TensorBoard / MLflow when the recipe asks
    try:
        trainer.run, trainer.on_epoch = run, loggers.chain(on_epoch)
        if ranks.main:
            # the folder the recipe's relative data paths are read in, kept over resumes:
            # the run read back from anywhere finds its data there (RunFolder.recipe)
            cwd = (saved is not None and run.trained_in()) or Path.cwd()
            env = {**environment(trainer.device), "processes": ranks.world, "cwd": str(cwd)}
            write_json(run.env_path, {**env, "precision": record(trainer.precision)})
            if saved is None:  # which file went where: the split is fixed from here on
                parts = trainer.built.splits  # the images, not cached features
                run.write_splits({s: getattr(parts, s).names for s in ("train", "val", "test")})
        if saved is not None:
            trainer.restore(saved)
        if saved is not None and ranks.main:  # also in a sweep worker's log, where retries resume
            console.print(f"resuming {run.path} at {trainer.where()}")
        if trainer.built.start is not None and ranks.main:  # a fresh run from another's weights
            console.print("\n".join([trainer.built.start.describe(), *trainer.built.started]))
        if recipe.train.progress:
            console.print(trainer.precision.describe())
        try:
            trainer.fit()
        except KeyboardInterrupt:
            raise CnnlabError(
                f"interrupted at epoch {trainer.state.epoch + 1}, step {trainer.state.step}; "
                f"continue with: {ranks.resume_hint(run.path)}"
            ) from None
        trainer.leave_ranks()  # trained together; the test and report are rank 0's alone
        if not ranks.main:
            return run
        recorder = _recorder(trainer)  # the test pass gathers what the report reads
        calibrated = recipe.train.calibrate and _calibrate(trainer, run, recorder)
        if recipe.train.calibrate and not calibrated and recorder is not None:
            recorder = _recorder(trainer)  # a calibration that failed may have begun one
        # Sweep trials skip the test set: it must not drive a choice.
        metrics = {}
        if recipe.train.test_at_end:  # calibrating measured the test set at its temperatures
            metrics = run.test_metrics() if calibrated else trainer.test(recorder)
        run.set_status("finished", epoch=trainer.state.epoch, best_epoch=trainer.state.best_epoch)
        if metrics and recipe.train.progress:
            print_metrics_table(metrics, "test metrics of the best checkpoint")
        if metrics and recipe.train.report:
            on_cpu = trainer.device.type == "cpu"  # the figures' data lives on the CPU
            splits = trainer.built.splits if on_cpu else None
            predictions = recorder.result() if recorder else None
            write_run_report(run, splits, predictions, recipe.train.progress)
        return run
    except Exception as err:  # a bug (in a component of one's own, say): not left "running"
        if run.status().get("state") in ("running", "trained"):
            said = (str(err).strip().splitlines() or [""])[0]
            run.set_status(
                "failed", epoch=trainer.state.epoch, reason=f"{type(err).__name__}: {said}"
            )
            if run.last_path.is_file():
                err.add_note(f"{run.path} is marked failed; once fixed, continue it where it "
                             f"stopped: {ranks.resume_hint(run.path)}")  # fmt: skip
        raise
    finally:
        loggers.close(run.test_metrics())


def _recorder(trainer: Trainer) -> Recorder | None:
    """What the report will read from the test pass, gathered by it; None where the report
    makes its own: no report or no test, a GPU (the figures' pass runs on the CPU), heads
    tested on cached features (no image goes through the network), or no conv layer whose
    peaks it would take."""
    recipe = trainer.recipe
    if not (recipe.train.report and recipe.train.test_at_end) or trainer.device.type != "cpu":
        return None
    if trainer.splits is not trainer.built.splits:  # a frozen backbone's cached features
        return None
    from cnnlab.viz.hooks import last_conv
    from cnnlab.viz.run_view import figures_recorder

    try:
        last_conv(trainer.model)
    except CnnlabError:
        return None
    return figures_recorder(trainer.tasks, len(trainer.built.splits.test))


def _calibrate(trainer: Trainer, run: RunFolder, recorder: Recorder | None) -> bool:
    """train.calibrate after training; a failure leaves the trained run intact and says so."""
    try:
        with compiled_kernels(trainer.built.fused):
            recall = trainer.recipe.train.recall or None  # {}: no threshold asked
            result = calibrate_run(
                run.path, trainer.built.splits, trainer.device, recorder, recall=recall
            )
    except CnnlabError as err:
        print(f"warning: not calibrated ({err}); retry with: cnnlab calibrate {run.path}")
        return False
    if trainer.recipe.train.progress:
        console.print("\n".join(["calibrated on validation:", *summary(result)]))
    return True


def write_run_report(
    run: RunFolder,
    splits: Splits | None = None,
    predictions: SplitPredictions | None = None,
    show: bool = True,
) -> None:
    """report.html + figures/ of a finished run; a failure leaves the trained run intact.
    `splits`, `predictions`: the data and test predictions training made, on the CPU."""
    from cnnlab.report import build_report

    try:
        build_report(run.path, splits, show, predictions)
    except CnnlabError as err:
        print(f"warning: no report ({err}); retry with: cnnlab report {run.path}")
