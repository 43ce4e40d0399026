"""Calibration of a trained run: `cnnlab calibrate RUN`, or `train.calibrate: true`.

Each task whose outputs are probabilities (every classification, per pixel too, and a task
type of one's own that says `probabilistic`) gets one temperature, fitted on the validation
set's outputs of the run's judged weights, with the recipe's test-time views (so it fits the
probabilities the test and every prediction give). Each regression gets a prediction
interval, split conformal on the same validation pass (tasks/intervals.py): the half-width
that holds 90 % of validation's values, which predict then gives around each value. Both
are saved in checkpoints/best.pt beside those weights: eval, predict, the figures and
export read them from there, and a later best checkpoint (a resumed run) starts without,
since they were fitted to other weights. calibration.json holds each task's numbers before
and after (an interval's share of values within it), on validation and test;
test_metrics.json is measured again at the new temperatures (accuracy cannot change; ECE,
MCE can).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from cnnlab.build import Built, build, saved_tasks
from cnnlab.data.batches import Splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import Recorder, SplitPredictions
from cnnlab.precision import autocast_for
from cnnlab.runs import RunFolder, load_checkpoint, write_json
from cnnlab.tasks import EpochMeter, Task, evaluate
from cnnlab.tasks.calibration import Rows, fit_temperature, made_worse, scores
from cnnlab.tasks.intervals import (
    COVERAGE,
    Interval,
    covered,
    errors_by_component,
    fit_interval,
    shares_said,
    widths_said,
)


def calibrated_tasks(tasks: dict[str, Task]) -> list[str]:
    """The tasks calibration fits: those whose outputs are probabilities (a temperature) and
    the regressions (an interval); a run without one stops here."""
    names = [n for n, t in tasks.items() if t.probabilistic or t.intervals]
    if not names:
        raise CnnlabError(
            "calibrate: the run has no task with probabilities (a classification, or a task "
            "type of one's own that sets `probabilistic`) for a temperature, nor a "
            "regression for an interval"
        )
    return names


@torch.inference_mode()
def collect(
    built: Built,
    split: str,
    names: list[str],
    meter: EpochMeter | None = None,
    recorder: Recorder | None = None,
) -> SplitPredictions:
    """The judged model's answers on one split: raw outputs (before any temperature) as
    rows for the tasks with probabilities, values for the regressions. The same pass feeds
    `meter` (the test metrics at the temperatures just fitted) and `recorder` (what the
    report reads), when given."""
    autocast = autocast_for(built.device, built.precision.precision)
    targets_of = {name: built.tasks[name].target for name in names}
    rows_of = [name for name in names if built.tasks[name].probabilistic]
    own = Recorder(targets_of, None, rows_of, len(getattr(built.splits, split)))
    gatherers = [own] if recorder is None else [own, recorder]

    def record(model: nn.Module, out: dict[str, torch.Tensor], targets: dict) -> None:
        for gatherer in gatherers:
            gatherer.add(model, out, targets)

    batches = built.splits.eval_batches(split, built.eval_batch_size, built.needed)
    with recorder.watching(built.model) if recorder else nullcontext():
        evaluate(built.model, meter, batches, autocast, built.views, record)
    return own.result()


def fit(
    built: Built,
    test: bool = True,
    recorder: Recorder | None = None,
    temperature: float | None = None,
    coverage: float = COVERAGE,
) -> tuple[dict[str, dict], dict[str, float]]:
    """Each probabilistic task's temperature and each regression's interval, set on
    `built.tasks`, and their numbers before and after on validation; unless `test` is off
    (a sweep trial never reads the test set), on test too, with the test metrics at the new
    temperatures from the same pass (which `recorder` also watches). `temperature`: every
    task's, given instead of fitted (1: the model's own probabilities back; the intervals
    are dropped then)."""
    names = calibrated_tasks(built.tasks)
    if temperature is not None:
        names = [name for name in names if built.tasks[name].probabilistic]
        for task in built.tasks.values():
            task.interval = None
    if not names:  # reset: no temperature to set back, and the intervals dropped
        return {}, {}
    if len(built.splits.val) == 0:
        raise CnnlabError("calibrate: the run has no validation images to fit on")
    val = collect(built, "val", names)
    result = {}
    for name in names:
        task = built.tasks[name]
        if not task.probabilistic:  # a regression: its interval
            task.interval = fit_interval(val.truth[name], val.pred[name], coverage)
            result[name] = {"coverage": coverage, "halfwidth": task.interval.halfwidth}
            result[name] |= {"components": task.info.components} if task.info.components else {}
            result[name]["val"] = _within(val, name, task.interval)
            continue
        rows = val.rows[name]
        t, flawless = (temperature, False) if temperature is not None else fitted(task, rows)
        result[name] = {"temperature": t, "val": _before_after(task, rows, t)}
        result[name] |= {"flawless": True} if flawless else {}
        task.temperature = t
    if not test:
        return result, {}
    meter = EpochMeter(built.tasks, built.device, calibration=True)
    tested = collect(built, "test", names, meter, recorder)
    for name in names:
        task = built.tasks[name]
        if task.probabilistic:
            t = result[name]["temperature"]
            result[name]["test"] = _before_after(task, tested.rows[name], t)
        else:
            result[name]["test"] = _within(tested, name, task.interval)
    return result, meter.compute("test")


def _within(split: SplitPredictions, name: str, interval: Interval) -> dict:
    """An interval's promise on a split: its labelled values, and the share within it."""
    truth, pred = split.truth[name], split.pred[name]
    rows = len(errors_by_component(truth, pred)[0])
    return {"rows": rows, "covered": covered(truth, pred, interval)}


def fitted(task: Task, rows: Rows) -> tuple[float, bool]:
    """(the temperature fitted on `rows`, whether they hold no mistake). Without one mistake
    the likelihood only rises as T falls to 0, and the fit would make every answer certain
    (seen: T = 0.017, test NLL 0.11 -> 3.07): T = 1 is kept then."""
    if scores(task, rows)["accuracy"] == 1.0:
        return 1.0, True
    return fit_temperature(task, rows), False


def _before_after(task: Task, rows: Rows, temperature: float) -> dict:
    return {
        "rows": len(rows.targets),
        "before": scores(task, rows, 1.0),
        "after": scores(task, rows, temperature),
    }


def calibrate_run(
    path: str | Path,
    splits: Splits | None = None,
    device: torch.device | str | None = None,
    recorder: Recorder | None = None,
    reset: bool = False,
    coverage: float = COVERAGE,
) -> dict[str, dict]:
    """Fit, save with the best weights, write calibration.json and test_metrics.json again.
    `splits`: the data training already loaded (train.calibrate), else loaded anew;
    `recorder`: watches the test pass; `reset`: every temperature back to 1, not fitted,
    and no interval; `coverage`: the share of values a regression's interval holds."""
    if not 0 < coverage < 1:
        raise CnnlabError(f"calibrate: coverage {coverage}: give a share between 0 and 1, e.g. 0.9")
    run = RunFolder.open(path)
    run.check_trained("calibrate")
    saved = load_checkpoint(run.best_path)
    recipe = run.recipe()
    calibrated_tasks(saved_tasks(recipe, saved))  # before any data is read
    # device None: the recipe's (a GPU when there is one)
    built = build(recipe, saved, device=device, weights="judged", splits=splits)
    # A sweep's trial leaves its test unseen (test_at_end: false) until `select --test`
    # writes one; once written, it must be at the temperature too, else it stays unseen.
    tested = recipe.train.test_at_end or run.test_path.is_file()
    with run.lock():
        result, metrics = fit(built, tested, recorder, 1.0 if reset else None, coverage)
        saved["temperature"] = {
            n: r["temperature"] for n, r in result.items() if "temperature" in r
        }
        saved["interval"] = {
            n: {"coverage": r["coverage"], "halfwidth": r["halfwidth"]}
            for n, r in result.items()
            if "halfwidth" in r
        }
        run.save_checkpoint(run.best_path, saved)
        write_json(run.calibration_path, {"best_epoch": saved["loop"]["epoch"], "tasks": result})
        if metrics:
            write_json(run.test_path, {"best_epoch": saved["loop"]["epoch"], **metrics})
    return result


UNINFORMED = 10.0  # a temperature above this flattens the probabilities to near uniform


def summary(result: dict[str, dict]) -> list[str]:
    """One line per task and split: the temperature, NLL and ECE before -> after; one per
    regression: its interval and the share within it; then `notes`' lines."""
    lines = []
    for name, r in result.items():
        if "halfwidth" in r:
            lines.append(interval_line(name, r))
            continue
        for split in ("val", "test"):
            if split not in r:
                continue
            b, a = r[split]["before"], r[split]["after"]
            lines.append(
                f"{name}: T = {r['temperature']:.3f}; {split} NLL {b['nll']:.4f} -> "
                f"{a['nll']:.4f}, ECE {b['ece']:.4f} -> {a['ece']:.4f}, "
                f"MCE {b['mce']:.4f} -> {a['mce']:.4f}"
            )
    return lines + notes(result)


def interval_line(name: str, r: dict) -> str:
    """`ink: ± 0.006885 holds 90% of values (split conformal, 3,000 validation values);
    within it: validation 90.0%, test 88.9%`: a regression's fitted interval and the share
    within it per split (a vector's per component: its widths by name, its shares split by
    `/` in the same order)."""
    widths = widths_said(r["halfwidth"], r.get("components"))  # a vector's, by name
    within = {s: r[s]["covered"] for s in ("val", "test") if s in r}
    said = ", ".join(
        f"{'validation' if s == 'val' else s} {shares_said(shares)}" for s, shares in within.items()
    )
    return (
        f"{name}: ± {widths} holds {r['coverage']:.0%} of values (split conformal, "
        f"{r['val']['rows']:,} validation values); within it: {said}"
    )


def stale_exports(run: Path) -> list[Path]:
    """The files `export` made in the run folder before a temperature changed: they answer
    with the old one (0.544 where the run now says 0.840) until exported again."""
    return sorted(
        f for f in (Path(run) / "export").glob("model.*") if f.suffix in (".onnx", ".pt2")
    )


def notes(result: dict[str, dict]) -> list[str]:
    """What a user should know of a fit beyond its numbers: a task left at T = 1 for want of
    a mistake to fit on, `uninformed` temperatures, and those that made the test set's
    probabilities worse than the model's own."""
    unbounded = [
        f"{name}: {r['val']['rows']} validation values cannot bound {r['coverage']:.0%} of "
        "values: the interval is infinite; more validation images (data.val_fraction), or a "
        "lower coverage, give one"
        for name, r in result.items()
        if any(math.isinf(w) for w in r.get("halfwidth", ()))
    ]
    kept = [
        f"{name}: validation holds no mistake ({r['val']['rows']:,} rows right), so no "
        "temperature can be fitted on it (the fit would drive T to 0, every answer certain); "
        "T = 1 kept: more validation images, or a harder validation set, give one"
        for name, r in result.items()
        if r.get("flawless")
    ]
    return unbounded + kept + uninformed(result) + worse_on_test(result)


def worse_on_test(result: dict[str, dict]) -> list[str]:
    """A line for each task whose fitted temperature raised the test NLL, the very number it
    lowered on validation: fitted on few validation images, or on ones unlike the test's,
    it does not carry over, and the model's own probabilities were the better ones. Else a
    line where it raised the test ECE: the number a user reads as "calibrated" got worse."""
    lines = []
    for name, r in result.items():
        test = r.get("test")
        if test is None or r.get("temperature", 1.0) == 1.0:
            continue
        before, after = test["before"]["nll"], test["after"]["nll"]
        ece = test["before"]["ece"], test["after"]["ece"]
        if made_worse(before, after):
            lines.append(
                f"{name}: T = {r['temperature']:.3g} made the test NLL worse ({before:.4f} -> "
                f"{after:.4f}): fitted on {r['val']['rows']} validation images, it does not "
                "carry over; more validation images fit it better, and `cnnlab calibrate "
                "RUN --reset` (`run.calibrate(reset=True)` in Python) goes back to T = 1"
            )
        elif ece[1] > max(1.1 * ece[0], ece[0] + 0.005):  # beyond a bin's noise
            lines.append(
                f"{name}: T = {r['temperature']:.3g} lowered the test NLL but raised its ECE "
                f"({ece[0]:.4f} -> {ece[1]:.4f}): a temperature fits the NLL, and the ECE's bins "
                "can still move the other way; the reliability figure shows where, and `cnnlab "
                "calibrate RUN --reset` goes back to T = 1"
            )
    return lines


def uninformed(result: dict[str, dict]) -> list[str]:
    """A line for each task whose temperature is so high that its logits barely inform its
    probabilities: a model near chance, which calibration cannot make useful."""
    return [
        f"{name}: T = {r['temperature']:.3g} flattens its probabilities to about uniform: on "
        "validation its logits tell little (a model near chance, or trained too briefly)"
        for name, r in result.items()
        if r.get("temperature", 1.0) > UNINFORMED
    ]
