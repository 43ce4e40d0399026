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
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from cnnlab.build import Built, Recall, build, saved_tasks, thresholds_asked
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
from cnnlab.tasks.thresholds import fit_threshold, found, found_said, too_few


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
    rows_of = [name for name in names if built.tasks[name].probabilistic]
    tasks = {name: built.tasks[name] for name in names}
    own = Recorder(tasks, None, rows_of, len(getattr(built.splits, split)))
    gatherers = [own] if recorder is None else [own, recorder]

    def record(model: nn.Module, out: dict[str, torch.Tensor], targets: dict) -> None:
        for gatherer in gatherers:
            gatherer.add(model, out, targets)

    batches = built.splits.eval_batches(split, built.eval_batch_size, built.needed)
    with recorder.watching(built.model) if recorder else nullcontext():
        evaluate(built.model, meter, batches, autocast, built.views, record)
    return own.result()


def recall_option(values: list[str]) -> Recall | None:
    """`--recall` as given, once or more: `0.95` alone, or `[task.]class=0.95` each."""
    if not values:
        return None
    try:
        if len(values) == 1 and "=" not in values[0]:
            return float(values[0])
        return {key: float(share) for key, _, share in (v.rpartition("=") for v in values)}
    except ValueError:
        raise CnnlabError(
            f"calibrate --recall {' '.join(values)}: give a share, 0.95, or a class's, "
            "malignant=0.95 (diag.malignant=0.95 where two tasks have it), once per class"
        ) from None


def fit(
    built: Built,
    test: bool = True,
    recorder: Recorder | None = None,
    temperature: float | None = None,
    coverage: float = COVERAGE,
    recall: Recall | None = None,
) -> tuple[dict[str, dict], dict[str, float]]:
    """Each probabilistic task's temperature, each regression's interval and each threshold
    asked (`recall`, `thresholds_asked`), set on `built.tasks`, and their numbers before and
    after on validation; unless `test` is off (a sweep trial never reads the test set), on
    test too, with the test metrics at the new temperatures and thresholds from the same pass
    (which `recorder` also watches). `temperature`: every task's, given instead of fitted (1:
    the model's own probabilities back; the intervals and thresholds are dropped then)."""
    names = calibrated_tasks(built.tasks)
    asked = thresholds_asked(built.tasks, recall) if temperature is None else {}
    for task in built.tasks.values():
        task.threshold = None  # fitted again below, to the new temperature
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
        if name in asked:
            result[name]["threshold"] = _threshold(task, rows, *asked[name])
    if not test:
        return result, {}
    meter = EpochMeter(built.tasks, built.device, calibration=True)
    tested = collect(built, "test", names, meter, recorder)
    for name in names:
        task = built.tasks[name]
        if task.probabilistic:
            t, rows = result[name]["temperature"], tested.rows[name]
            result[name]["test"] = _before_after(task, rows, t)
            if task.threshold is not None:
                p = task.probabilities(rows.logits)
                result[name]["threshold"]["test"] = found(p, rows.targets, task.threshold)
        else:
            result[name]["test"] = _within(tested, name, task.interval)
    return result, meter.compute("test")


def _threshold(task: Task, rows: Rows, positive: int, recall: float) -> dict:
    """Fit the task's threshold on validation's rows at its fitted temperature; what it is,
    and what it does there."""
    probabilities = task.probabilities(rows.logits)
    name = (task.info.classes or [])[positive]
    task.threshold = fit_threshold(probabilities, rows.targets, positive, name, recall)
    return {**asdict(task.threshold), "val": found(probabilities, rows.targets, task.threshold)}


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
    recall: Recall | None = None,
) -> dict[str, dict]:
    """Fit, save with the best weights, write calibration.json and test_metrics.json again.
    `splits`: the data training already loaded (train.calibrate), else loaded anew;
    `recorder`: watches the test pass; `reset`: every temperature back to 1, not fitted,
    and no interval or threshold; `coverage`: the share of values a regression's interval
    holds; `recall`: the share of a two-class task's class its threshold finds
    (`thresholds_asked`; None: the thresholds the run has, fitted again)."""
    if not 0 < coverage < 1:
        raise CnnlabError(f"calibrate: coverage {coverage}: give a share between 0 and 1, e.g. 0.9")
    if reset and recall is not None:
        raise CnnlabError(
            "calibrate: --reset drops every threshold, --recall fits one: give one of them"
        )
    run = RunFolder.open(path)
    run.check_trained("calibrate")
    saved = load_checkpoint(run.best_path)
    recipe = run.recipe()
    tasks = saved_tasks(recipe, saved)
    calibrated_tasks(tasks)  # before any data is read
    if not reset:
        thresholds_asked(tasks, recall)
    # device None: the recipe's (a GPU when there is one)
    built = build(recipe, saved, device=device, weights="judged", splits=splits)
    # A sweep's trial leaves its test unseen (test_at_end: false) until `select --test`
    # writes one; once written, it must be at the temperature too, else it stays unseen.
    tested = recipe.train.test_at_end or run.test_path.is_file()
    with run.lock():
        temperature = 1.0 if reset else None
        result, metrics = fit(built, tested, recorder, temperature, coverage, recall)
        saved["temperature"] = {
            n: r["temperature"] for n, r in result.items() if "temperature" in r
        }
        saved["interval"] = {
            n: {"coverage": r["coverage"], "halfwidth": r["halfwidth"]}
            for n, r in result.items()
            if "halfwidth" in r
        }
        saved["threshold"] = {
            n: asdict(t.threshold) for n, t in built.tasks.items() if t.threshold is not None
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
        if "threshold" in r:
            lines.append(threshold_line(name, r["threshold"]))
    return lines + notes(result)


def threshold_line(name: str, t: dict) -> str:
    """`diag: answers malignant at p ≥ 0.231, fitted to find 95% of it (split conformal, 212
    validation images of it); validation: finds 95.3% of them (212 images), flags 12.0% of
    the others, precision 61.2%; test: ...`."""
    said = "; ".join(
        f"{'validation' if s == 'val' else s}: {found_said(t[s])}"
        for s in ("val", "test")
        if s in t
    )
    return (
        f"{name}: answers {t['name']} at p ≥ {t['probability']:.3g}, fitted to find "
        f"{t['recall']:.0%} of it (split conformal, {t['val']['positives']:,} validation "
        f"images of it); {said}"
    )


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
    unbounded += [
        f"{name}: {r['threshold']['val']['positives']} validation images of "
        f"{r['threshold']['name']} cannot bound {r['threshold']['recall']:.0%} of them: every "
        f"image is answered {r['threshold']['name']}; more validation images "
        "(data.val_fraction), or a lower recall, give a threshold"
        for name, r in result.items()
        if "threshold" in r
        and too_few(r["threshold"]["val"]["positives"], r["threshold"]["recall"])
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
