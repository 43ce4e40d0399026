"""Sweeps on one machine: the λ grid from the shell, failures, Ctrl-C + --resume, selection."""

import dataclasses
import io
import json
import logging
import math
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from cnnlab.cli import _not_a_run as not_a_run
from cnnlab.comparison import compare
from cnnlab.errors import CnnlabError
from cnnlab.sweeps import charts as sweep_charts
from cnnlab.sweeps.inside import Group, dead_rows
from cnnlab.sweeps.launch import sweep
from cnnlab.sweeps.report import _loss_note as report_loss_note
from cnnlab.sweeps.report import _trial as report_trial
from cnnlab.sweeps.report import build_report as build_sweep_report
from cnnlab.sweeps.results import TrialRow, load_trials, with_runs
from cnnlab.sweeps.select import Pick, pareto_front, select
from cnnlab.sweeps.select import table as selection_table
from cnnlab.sweeps.spec import load_sweep
from cnnlab.sweeps.statistics import group_fields, group_order, group_table, groups, importances
from cnnlab.sweeps.storage import open_storage
from cnnlab.sweeps.study import SweepFolder
from cnnlab.sweeps.worker import hush_interrupts
from tests import cli_process
from tests.browser import chromium, visit
from tests.conftest import DEMO, ROOT, run_cli
from tests.conftest import TINY as CONFTEST_TINY
from tests.test_report import FIGURES_JS

TINY = [*CONFTEST_TINY, "data.train_subset=1000", "train.threads=1"]  # a core per worker


def sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# Plain SGD in fp32 with no schedule: a huge learning rate makes the loss non-finite.
DIVERGES = ["train.optimizer.name=sgd", "train.scheduler.name=none", "train.precision=fp32"]


def lr_sweep(tmp_path: Path, method: str, lr: str) -> Path:
    """A sweep over the learning rate alone, e.g. lr = '{values: [1.0e+12, 0.001]}'."""
    return write(
        tmp_path,
        f"method: {method}\nmetric: {{name: val.cls.accuracy}}\n"
        f"parameters: {{train.optimizer.lr: {lr}}}\n",
    )


def test_lambda_grid_then_select_and_report_from_the_shell(tmp_path):
    out = tmp_path / "sweeps"
    done = run_cli("sweep", "fashion_multitask", "fashion_lambda",
                   "--workers", "2", "--out", str(out), *sets())  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    (path,) = out.iterdir()
    folder = SweepFolder.open(path)
    rows = load_trials(folder, None)
    assert len(rows) == 9 and {r.state for r in rows} == {"complete"}
    assert len({tuple(sorted(r.params.items())) for r in rows}) == 9  # each grid point once
    for r in rows:  # linked both ways
        link = json.loads((r.run.path / "trial.json").read_text())
        assert link["trials"] == [r.number] and link["study"] == folder.meta().study
        assert not r.run.test_path.exists()  # the test set is not read during the sweep

    picked = run_cli("select", str(path), "--metric", "val.cls.accuracy",
                     "--metric", "val.ink.rmse", "--test")  # fmt: skip
    assert picked.returncode == 0, picked.stderr[-3000:]
    table = (path / "selection_test.md").read_text()  # --test: kept apart from selection.md
    assert "best val.cls.accuracy" in table and "best val.ink.rmse" in table
    assert "test.cls.accuracy" in table and "test.ink.mae" in table and "tasks." in table
    saved = json.loads((path / "selection_test.json").read_text())
    assert all(p["test"]["test.cls.accuracy"] > 0.3 for p in saved["picks"])

    report = run_cli("report", str(path), "--group-by", "tasks.cls.weight,tasks.ink.weight")
    assert report.returncode == 0, report.stderr[-3000:]
    page = (path / "report.html").read_text()
    assert "tasks.cls.weight &gt; tasks.ink.weight" in page  # seed 001's colouring, escaped
    header, body = group_table(rows, groups(rows, "tasks.cls.weight"), ["val.cls.accuracy"])
    by_weight = {r[0]: r for r in body}  # 3 weights × 3 trials each, mean ± std of 3
    assert header[-1] == "training minutes" and len(by_weight) == 3
    values = [
        r.at_best_epoch()["val.cls.accuracy"]
        for r in rows
        if r.recipe["tasks"]["cls"]["weight"] == rows[0].recipe["tasks"]["cls"]["weight"]
    ]
    mean, std = statistics.mean(values), statistics.stdev(values)
    label = f"tasks.cls.weight = {rows[0].recipe['tasks']['cls']['weight']}"
    assert by_weight[label][1:3] == ["3", f"{mean:.4f} ± {std:.4f}"]
    assert "mean ± std over complete trials" in page
    assert "<script src=" not in page and "<link" not in page  # self-contained, offline
    assert "best val.cls.accuracy" in page
    charts = ("metric_vs_time", "parallel_coordinates", "importance", "learning_curves")
    for png in charts:
        assert (path / f"{png}.png").stat().st_size > 5000
    with chromium() as browser:  # every interactive chart drawn, nothing broken on the page
        seen = visit(browser, (path / "report.html").as_uri(), FIGURES_JS)
    assert not seen.console_errors and not seen.dialogs
    drawn = {f["id"]: f["drawn"] and f["w"] > 300 for f in seen.value}
    assert all(drawn[f"plot-{key}"] for key in charts), drawn


def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path, capfd):
    file = lr_sweep(tmp_path, "grid", "{values: [1.0e+12, 0.001]}")
    folder = sweep(DEMO, file, [*TINY, *DIVERGES], out=tmp_path / "out")
    rows = sorted(load_trials(folder, None), key=lambda r: r.params["train.optimizer.lr"])
    assert [r.outcome for r in rows] == ["complete", "error"]
    assert "non-finite" in rows[1].reason or "loss became" in rows[1].reason
    assert rows[1].run.status()["state"] == "failed"
    out, err = capfd.readouterr()
    assert "grid over 1 parameter, 2 trials, " in out and ", 1 worker" in out  # counted
    assert f"trial {rows[1].number} failed: CnnlabError: " in err


def test_optuna_keeps_an_errors_traceback_and_drops_an_interrupts():
    """Optuna's warning with the traceback is an error's bug report (kept); after Ctrl-C it
    is noise before cnnlab's one line (dropped, and Optuna's line after it)."""
    said = io.StringIO()
    handler = logging.StreamHandler(said)
    logging.getLogger("optuna").addHandler(handler)
    log = logging.getLogger("optuna.study._optimize")  # where Optuna logs a failed trial
    try:
        with hush_interrupts():
            log.warning("Trial 1 failed: ValueError", exc_info=_raised(ValueError("bad")))
            log.warning("Trial 1 failed with value None.")
        with hush_interrupts():
            log.warning("Trial 2 failed: KeyboardInterrupt", exc_info=_raised(KeyboardInterrupt()))
            log.warning("Trial 2 failed with value None.")
        log.warning("after the block")
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    text = said.getvalue()
    assert "Trial 1 failed: ValueError" in text and "ValueError: bad" in text
    assert "Trial 1 failed with value None." in text
    assert "Trial 2" not in text and "KeyboardInterrupt" not in text
    assert "after the block" in text


def _raised(error: BaseException) -> tuple:
    """`error` as sys.exc_info() gives it once raised (with a traceback)."""
    try:
        raise error
    except BaseException:
        return sys.exc_info()


def test_a_worker_stops_after_consecutive_failures(tmp_path):
    file = lr_sweep(tmp_path, "random", "{min: 1.0e+11, max: 1.0e+12}")
    with pytest.raises(CnnlabError, match="stopped after 2 consecutive failed trials"):
        sweep(DEMO, file, [*TINY, *DIVERGES], trials=10, out=tmp_path / "out", max_failures=2)
    (path,) = (tmp_path / "out").iterdir()
    rows = load_trials(SweepFolder(path), None)
    assert len(rows) == 2 and all(r.outcome == "error" for r in rows)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_sweep_resumes_the_trial_from_its_checkpoint(tmp_path, sig):
    out = tmp_path / "out"
    args = ["sweep", str(DEMO), "fashion_lambda", "--trials", "2", "--out", str(out)]
    proc = cli_process.start([*args, *sets("train.epochs=3")], ROOT)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/runs/trial0000-*/metrics.jsonl")):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(proc.wait(timeout=10).stderr[-3000:])
        time.sleep(0.1)
    proc.send_signal(sig)
    stopped = proc.wait(timeout=120)  # killed after that long
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0
    (path,) = out.iterdir()
    first = load_trials(SweepFolder(path), None)[0]
    if sig == signal.SIGINT:  # the worker said so itself, in cnnlab's one line only
        assert first.outcome == "interrupted" and "Ctrl-C" in first.reason
        assert "error: interrupted; " in said and "--resume" in said
        assert "Traceback" not in said, said
        assert not [line for line in said.splitlines() if line.startswith("[W ")], said
    else:  # nobody said anything: the trial still looks running until --resume looks
        assert first.state == "running"

    done = run_cli("sweep", str(DEMO), "fashion_lambda", "--out", str(out),
                   "--resume")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r.number: r for r in load_trials(SweepFolder(path), None)}
    assert rows[0].outcome == "interrupted"  # recorded apart from "raised an error"
    assert sum(r.state == "complete" for r in rows.values()) == 2
    retry = rows[rows[0].retried_as]
    assert retry.run_dir == rows[0].run_dir  # continued the same run folder
    # ...named after trial 0: every line that shows the retry's number says whose folder it is
    assert Path(retry.run_dir).name.startswith("trial0000-") and retry.retry_of == 0
    assert f"] trial {retry.number} (retry of trial 0) complete " in done.stdout
    assert (  # not read as three trials of a two-trial sweep; the retry counted where it is
        "trials: 2 complete (1 a retry), 1 interrupted; a retry trains on in the folder of the "
        "trial it continues"
    ) in done.stdout
    assert json.loads((retry.run.path / "trial.json").read_text())["trials"] == [0, retry.number]
    assert [m["epoch"] for m in retry.run.read_metrics()] == [1, 2, 3]
    assert len(list((path / "runs").iterdir())) == 2  # nothing ran twice
    complete = sorted(n for n, r in rows.items() if r.state == "complete")
    assert sorted(r.number for r in with_runs(list(rows.values()))) == complete  # once each


def test_a_resumed_random_sweep_draws_new_values_not_its_first_trials_again(tmp_path, monkeypatch):
    """Resumed, the sampler started again from its seed: the trial after the retry drew
    trial 0's values, a twin counted as a trial and never trained, so a 3-trial sweep had
    two distinct settings."""
    from cnnlab import experiment

    file = lr_sweep(
        tmp_path, "random", "{min: 1.0e-4, max: 1.0e-2, distribution: log_uniform_values}"
    )
    real = experiment.train

    def ctrl_c_in_trial_1(recipe, **kw):
        if kw["run"].path.name.startswith("trial0001-"):
            raise KeyboardInterrupt
        return real(recipe, **kw)

    monkeypatch.setattr(experiment, "train", ctrl_c_in_trial_1)
    with pytest.raises(CnnlabError, match="interrupted; .* plus --resume, without its --set"):
        sweep(DEMO, file, TINY, trials=3, out=tmp_path / "out")
    monkeypatch.setattr(experiment, "train", real)
    sweep(DEMO, file, [], trials=3, out=tmp_path / "out", resume=True)
    (path,) = (tmp_path / "out").iterdir()
    rows = load_trials(SweepFolder(path), None)
    complete = [r for r in rows if r.state == "complete"]
    assert [r.number for r in complete] == [0, 2, 3]  # 1 interrupted, 2 its retry
    assert rows[2].retry_of == 1 and rows[2].params == rows[1].params
    lrs = {r.params["train.optimizer.lr"] for r in complete}
    assert len(lrs) == 3  # three settings, each trained
    assert all(r.epochs > 0 for r in complete)


def test_a_killed_worker_is_named_and_fails_the_sweep_only_if_trials_are_left(
    tmp_path, monkeypatch, capsys
):
    """ "1 of 2 workers stopped early; see above" with nothing above, and an error though
    the other worker had settled every trial: now the worker and its signal are named, and
    a sweep whose trials all settled ends well, with a warning."""
    import cnnlab
    from cnnlab.sweeps import worker

    def one_worker_then_a_kill(folder, storage, workers, drawn=0):
        worker.run_worker(folder, storage, 1, None, 0, drawn)  # does every trial
        return [(1, -signal.SIGKILL)]

    file = lr_sweep(tmp_path, "grid", "{values: [0.001, 0.002]}")
    monkeypatch.setattr(worker, "spawn_workers", one_worker_then_a_kill)
    sweep(DEMO, file, [*TINY, "train.optimizer.lr=0.5"], workers=2, out=tmp_path / "a")
    said = capsys.readouterr().out
    assert "warning: worker 1 was killed (SIGKILL); the other workers settled every trial" in said
    assert (  # a --set the sweep overrules changed nothing: said
        "note: --set train.optimizer.lr is a parameter of the sweep file, which sets it for "
        "every trial: the sweep's value wins (change it there)"
    ) in said
    assert "trials: 2 complete" in said

    monkeypatch.setattr(worker, "spawn_workers", lambda *a: [(0, -signal.SIGKILL), (1, 3)])
    with pytest.raises(CnnlabError) as err:
        sweep(DEMO, file, TINY, workers=2, out=tmp_path / "b")
    assert str(err.value) == (
        "worker 0 was killed (SIGKILL); worker 1 stopped early (exit code 3) before the "
        "sweep's 2 trials were settled; see above, then resume the sweep (--resume, or "
        "resume=True from Python)"
    )
    # from Python, overrides on a resume were dropped without a word: the saved recipe runs
    with pytest.raises(CnnlabError, match="^sweep: resume=True continues with the sweep "):
        cnnlab.sweep(DEMO, file, {"train.epochs": 6}, resume=True, out=tmp_path / "b")


def test_a_database_that_stops_answering_is_one_line(tmp_path, monkeypatch):
    """A PostgreSQL server stopped mid-sweep broke it in Optuna's own code: 1,300 lines of
    traceback ending in an UnboundLocalError. A bug with the database answering keeps its."""
    from cnnlab.sweeps import worker

    def closed(*args, **kwargs):
        raise ConnectionError("server closed the connection unexpectedly\n\tThis probably...")

    def optuna_breaks(study, objective, index):
        raise UnboundLocalError("cannot access local variable 'updated_state'")

    file = lr_sweep(tmp_path, "grid", "{values: [0.001]}")
    monkeypatch.setattr(worker, "_work_on", optuna_breaks)
    with pytest.raises(UnboundLocalError):  # the database answers: a bug, told as one
        sweep(DEMO, file, TINY, out=tmp_path / "a")

    def the_database_goes(study, objective, index):
        monkeypatch.setattr(type(objective.storage), "get_all_studies", closed)
        optuna_breaks(study, objective, index)

    monkeypatch.setattr(worker, "_work_on", the_database_goes)
    with pytest.raises(CnnlabError) as err:
        sweep(DEMO, file, TINY, out=tmp_path / "b")
    assert str(err.value) == (
        "the study's database stopped answering (server closed the connection unexpectedly); "
        "the trial in progress keeps its checkpoint: start the database again, then resume "
        "the sweep (--resume)"
    )


def test_journal_file_takes_parallel_writers(tmp_path):
    """Four processes writing one local study at full speed: nothing is lost or locked."""
    optuna.create_study(study_name="s", storage=open_storage(None, tmp_path, heartbeat=1))
    cmd = [sys.executable, "-m", "tests.journal_writer", str(tmp_path), "25"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    assert not any("locked" in err for _, err in results)
    study = optuna.load_study(study_name="s", storage=open_storage(None, tmp_path, heartbeat=1))
    assert len(study.trials) == 100 and all(t.state.name == "COMPLETE" for t in study.trials)


def test_the_selection_table_names_the_trial_a_retry_continues():
    """A retry trains on in its first trial's folder: the table says so beside the name."""
    picks = [
        Pick("best val.loss", 3, "/s/runs/trial0002-x", {}, {"val.loss": 0.5}, retry_of=2),
        Pick("pareto", 4, "/s/runs/trial0004-x", {}, {"val.loss": 0.6}),
    ]
    _, rows = selection_table(picks, ["val.loss"])
    assert [r[1:3] for r in rows] == [
        ["3 (retry of trial 2)", "trial0002-x"],
        ["4", "trial0004-x"],
    ]


def test_the_report_names_the_trial_a_retry_continues_and_counts_its_runs():
    row = TrialRow(3, "complete", "complete", 0.5, {}, "runs/trial0002-x", None, None, None,
                   2, retry_of=2)  # fmt: skip
    assert report_trial(row)["reason_text"] == "retry of trial 2"
    assert row.label == "trial 3 (retry of trial 2)"
    header, _ = dead_rows([Group("x = 1", 1, {"conv (8)": [0.5]}), Group("x = 2", 2)])
    assert header[1:] == ["x = 1 (1 run)", "x = 2 (2 runs)"]


def test_pareto_front():
    points = [
        {"acc": 0.9, "rmse": 0.03},
        {"acc": 0.8, "rmse": 0.01},
        {"acc": 0.85, "rmse": 0.02},
        {"acc": 0.8, "rmse": 0.03},  # dominated by every other point
        {"acc": math.nan, "rmse": 0.0},  # not reported: off the front, and dominates nothing
    ]
    names = ["val.cls.accuracy", "val.ink.rmse"]
    renamed = [{names[0]: p["acc"], names[1]: p["rmse"]} for p in points]
    assert pareto_front(renamed, names) == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method: grid\nmetric: {name: val_acc}\nparameters: {x: {values: [1]}}",
         "not reported"),
        ("method: grid\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}\n"
         "early_terminate: {type: hyperband, min_iter: 1, eta: 1}", "early_terminate.eta = 1"),
        ("method: bayes\nparameters: {model.blocks: {values: [2, 3]}}",
         "method bayes models the metric, so it needs one"),
    ],
    ids=["unknown-metric", "eta-1", "bayes-without-metric"],
)  # fmt: skip
def test_bad_sweep_input_writes_nothing(tmp_path, text, message):
    file = write(tmp_path, text)
    done = run_cli("sweep", str(DEMO), str(file), "--trials", "2", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_missing_data_stops_the_sweep_before_any_folder(tmp_path):
    file = write(tmp_path, "method: grid\nparameters: {model.blocks: {values: [2]}}")
    done = run_cli("sweep", str(DEMO), str(file), "--set", f"data.root={tmp_path / 'none'}",
                   "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "Fashion-MNIST is not in" in done.stderr and "no such folder" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreachable_database_stops_before_any_folder(tmp_path):
    url = "postgresql://someone:secret@127.0.0.1:1/nowhere"  # nothing listens on port 1
    done = run_cli("sweep", str(DEMO), "fashion_lambda", "--storage", url,
                   "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "cannot open the study database" in done.stderr and "secret" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_workers_later_trials_read_their_data_without_its_lines(tmp_path, capfd, monkeypatch):
    """The first trial in a worker says how its data was read; later ones on the same data
    section say nothing of it (a table's lines came again with every trial)."""
    from cnnlab.data import shapes_table
    from tests.test_table import recipe_dict

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shapes_table.write(tmp_path / "shapes", 120, 16, seed=3)
    recipe = write(tmp_path, yaml.safe_dump(recipe_dict(tmp_path / "shapes", tmp_path)), "t.yaml")
    spec = write(tmp_path, "method: grid\nmetric: {name: val.kind.accuracy}\n"
                 "parameters: {train.optimizer.lr: {values: [0.001, 0.002, 0.004]}}\n")  # fmt: skip
    folder = sweep(recipe, spec, [], out=tmp_path / "out")
    assert [r.outcome for r in load_trials(folder, None)] == ["complete"] * 3
    err = capfd.readouterr().err
    assert err.count("table: kind has 3 classes") == 1 and err.count("held in memory") == 1


def test_a_repeated_configuration_reuses_the_finished_run(tmp_path):
    """Random search over two configurations: repeats cost no training and share a folder."""
    spec = write(tmp_path, "method: random\nmetric: {name: val.cls.accuracy, goal: maximize}\n"
                 "parameters:\n  model.activation: {values: [relu, gelu]}\n")  # fmt: skip
    recipe_sets = [*TINY, "train.progress=false"]
    folder = SweepFolder.open(sweep(DEMO, spec, recipe_sets, trials=6, out=tmp_path / "out").path)
    rows = load_trials(folder, None)
    assert len(rows) == 6 and {r.state for r in rows} == {"complete"}
    trained = [r for r in rows if r.epochs > 0]
    assert len(trained) == len({r.params["model.activation"] for r in rows}) <= 2
    by_config = {r.params["model.activation"]: r for r in trained}
    for r in rows:
        assert r.value == by_config[r.params["model.activation"]].value
        assert r.run_dir == by_config[r.params["model.activation"]].run_dir
    assert len(list((folder.path / "runs").iterdir())) == len(trained)


@pytest.mark.parametrize("method", ["grid", "random"])
def test_two_workers_racing_for_the_last_trial_leave_one_to_run(tmp_path, method):
    """Both passed the budget check and both created a trial: the later number yields."""
    from cnnlab.sweeps.study import base_recipe
    from cnnlab.sweeps.worker import is_surplus

    base = base_recipe(yaml.safe_load(DEMO.read_text()), "demo")
    spec = load_sweep(lr_sweep(tmp_path, method, "{values: [0.1, 0.01, 0.001]}"), base)
    sampler = optuna.samplers.GridSampler(spec.grid(), seed=0) if method == "grid" else None
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    study = optuna.create_study(storage=optuna.storages.JournalStorage(journal), sampler=sampler)
    for _ in range(2):
        trial = study.ask()
        trial.suggest_categorical("train.optimizer.lr", [0.1, 0.01, 0.001])
        study.tell(trial, 0.5)
    last, extra = study.ask(), study.ask()  # two workers at once, one point left
    assert not is_surplus(study, spec, 3, last.number)
    assert is_surplus(study, spec, 3, extra.number)
    if method == "random":  # neither a yielded nor a failed trial holds a slot
        extra.set_user_attr("outcome", "surplus")
        study.tell(extra, state=optuna.trial.TrialState.PRUNED)
        study.tell(last, state=optuna.trial.TrialState.FAIL)
        assert not is_surplus(study, spec, 3, study.ask().number)


# Hand-picked val.cls.accuracy per epoch of six trials, in the order they run.
CURVES = [
    [0.50, 0.60, 0.80, 0.85],
    [0.60, 0.65, 0.70, 0.75],
    [0.40, 0.45, 0.50, 0.55],
    [0.70, 0.80, 0.90, 0.92],
    [0.55, 0.60, 0.65, 0.70],
    [0.65, 0.70, 0.95, 0.96],
]
C, P = "complete", "pruned"


@pytest.mark.parametrize(
    ("early", "epochs", "expected"),
    [
        # Bands at epochs 1 and 3 (min_iter·3^k). At a band a trial goes on if it is in the
        # best 1/3 of the trials that reached it, or the best one while fewer than 3 did.
        # Epoch 1: trial 2 (0.40; best of 3 is 0.60) and 4 (0.55; best of 5 is 0.70) stop,
        # trial 5 (0.65) is 2nd of 6, inside the best 2. Epoch 3: trial 1 (0.70 < 0.80) stops.
        ("{type: hyperband, min_iter: 1, eta: 3}", 4,
         [(C, 4), (P, 3), (P, 1), (C, 4), (P, 1), (C, 4)]),
        # Epoch 3 is the last: stopping there saves nothing, so trial 1 finishes.
        ("{type: hyperband, min_iter: 1, eta: 3}", 3,
         [(C, 3), (C, 3), (P, 1), (C, 3), (P, 1), (C, 3)]),
        # max_iter 3, s 1: a single band at epoch 3/3 = 1, none after it.
        ("{type: hyperband, max_iter: 3, s: 1, eta: 3}", 4,
         [(C, 4), (C, 4), (P, 1), (C, 4), (P, 1), (C, 4)]),
    ],
    ids=["bands-1-3", "last-epoch", "max-iter"],
)  # fmt: skip
def test_early_terminate_stops_the_trials_worked_out_by_hand(tmp_path, early, epochs, expected):
    """The worker's per-epoch reporter and the sweep's pruner in a real journal study, fed
    the curves above instead of training."""
    from cnnlab.sweeps.study import base_recipe, pruner_for
    from cnnlab.sweeps.worker import epoch_reporter

    text = "method: random\nmetric: {name: val.cls.accuracy}\n"
    text += f"parameters: {{model.blocks: {{values: [2, 3]}}}}\nearly_terminate: {early}\n"
    spec = load_sweep(write(tmp_path, text), base_recipe(yaml.safe_load(DEMO.read_text()), "d"))
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    study = optuna.create_study(storage=optuna.storages.JournalStorage(journal),
                                pruner=pruner_for(spec), direction=spec.direction)  # fmt: skip
    for curve in CURVES:
        trial = study.ask()
        on_epoch = epoch_reporter(trial, spec, epochs)
        try:
            for epoch, value in enumerate(curve[:epochs], start=1):
                on_epoch({"epoch": epoch, "val.cls.accuracy": value})
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, curve[epochs - 1])
    got = [(t.state.name.lower(), t.user_attrs["epochs"]) for t in study.trials]
    assert got == expected


def test_early_terminate_in_a_real_sweep(tmp_path):
    """End to end: a stopped trial trained one epoch and its run says pruned; the others
    trained all three; the first trial, with nobody to lose to, is never stopped."""
    file = lr_sweep(tmp_path, "grid", "{values: [3.0e-3, 1.0e-3, 1.0e-5, 1.0e-7, 1.0e-2]}")
    file.write_text(file.read_text() + "early_terminate: {type: hyperband, min_iter: 1, eta: 3}\n")
    folder = sweep(DEMO, file, [*TINY, "train.epochs=3"], out=tmp_path / "out")
    rows = sorted(load_trials(folder, None), key=lambda r: r.number)
    shapes = {(P, 1, 1, "pruned"), (C, 3, 3, "finished")}
    assert {(r.state, r.epochs, len(r.metrics), r.run.status()["state"]) for r in rows} <= shapes
    assert len(rows) == 5 and rows[0].state == C and any(r.state == P for r in rows)
    first_epoch = [r.metrics[0]["val.cls.accuracy"] for r in rows]
    for i, r in enumerate(rows):  # a stopped trial was behind some trial before it
        assert r.state == C or first_epoch[i] < max(first_epoch[:i])


def test_report_groups_by_a_swept_parameter_name():
    """gsn_settings sweeps `setting`, a name its map turns into task weights: a group."""

    def row(number: int, setting: str) -> TrialRow:
        return TrialRow(number, "COMPLETE", "complete", 0.5, {"setting": setting, "seed": 1},
                        None, None, None, None, 1)  # fmt: skip

    rows = [row(0, "joint"), row(1, "counts"), row(2, "joint")]
    assert groups(rows, "setting") == ["setting = joint", "setting = counts", "setting = joint"]


def test_groups_of_numbers_come_in_numeric_order():
    """Not as text: "16" sorts before "8" as text, and a study read 8, 16, 32 backwards."""

    def row(number: int, filters) -> TrialRow:
        return TrialRow(number, "COMPLETE", "complete", 0.5, {"model.base_filters": filters},
                        None, None, None, None, 1)  # fmt: skip

    rows = [row(0, 16), row(1, 8), row(2, 32), row(3, 8), row(4, None)]
    labels = groups(rows, "model.base_filters")
    _, body = group_table(rows, labels, [])
    assert [(r[0], r[1]) for r in body] == [
        ("model.base_filters = 8", "2"),
        ("model.base_filters = 16", "1"),
        ("model.base_filters = 32", "1"),
        ("model.base_filters = None", "1"),  # no value: after the numbers
    ]
    lrs = ["lr = 0.001", "lr = 0.0003", "lr = 1e-05", "lr = relu", "complete"]
    assert sorted(lrs, key=group_order) == [
        "complete", "lr = 1e-05", "lr = 0.0003", "lr = 0.001", "lr = relu"
    ]  # fmt: skip


def test_group_by_names_a_recipe_field_or_a_swept_parameter():
    fields = ["model.base_filters", "model.filters", "tasks.cls.weight", "tasks.ink.weight"]
    assert group_fields("setting", ["setting"], fields, "r.yaml") == ["setting"]
    pair = "tasks.cls.weight, tasks.ink.weight"
    assert group_fields(pair, [], fields, "r.yaml") == ["tasks.cls.weight", "tasks.ink.weight"]
    with pytest.raises(CnnlabError) as err:
        group_fields("tasks.cls.weight,model.base_filtres", ["setting"], fields, "r.yaml")
    assert str(err.value) == (
        "--group-by 'model.base_filtres' names no recipe field and no swept parameter; did you "
        "mean model.base_filters? group by a swept parameter (setting) or a dotted field of r.yaml"
    )
    for bad in ("a,b,c", "tasks.cls.weight,", ""):
        with pytest.raises(CnnlabError, match="give one field, or two as A,B"):
            group_fields(bad, [], fields, "r.yaml")


def test_select_test_saves_test_metrics_and_the_table_shows_what_was_swept(tmp_path):
    """A user's walk: a sweep of a loss field, select --test on f1, the report grouped by the
    field, then `compare` of two trials. The picked run keeps its test metrics as a trained
    run does; the table shows the swept value (not a field fixed for every trial) and
    the test value of the metric selected on; the group table says its losses differ."""
    file = write(tmp_path, "method: grid\nmetric: {name: val.cls.accuracy}\n"
                 "parameters: {tasks.cls.label_smoothing: {values: [0.0, 0.1]},\n"
                 "             model.base_filters: {value: 4}}\n")  # fmt: skip
    folder = sweep(DEMO, file, TINY, out=tmp_path / "out")
    rows = sorted(load_trials(folder, None), key=lambda r: r.number)
    assert not any(r.run.test_path.exists() for r in rows)  # the sweep never reads the test set
    picks = select(folder, ["val.cls.f1"], test=True)
    (pick,) = picks
    saved = json.loads((Path(pick.run) / "test_metrics.json").read_text())
    assert saved == pick.test and "test.cls.f1" in saved and "best_epoch" in saved
    header, (row,) = selection_table(picks, ["val.cls.f1"])
    assert header[3:6] == ["swept parameters", "val.cls.f1", "test.cls.f1"]
    assert "test.cls.accuracy" in header and row[5] == f"{saved['test.cls.f1']:.4f}"
    assert row[3] == f"tasks.cls.label_smoothing={pick.params['tasks.cls.label_smoothing']}"

    page = build_sweep_report(folder, None, "tasks.cls.label_smoothing").read_text()
    study = (folder.path / "study.md").read_text()
    field = "tasks.cls.label_smoothing"
    note = ("The loss columns are not comparable across these groups: their losses are "
            f"different functions ({field} is 0.0 in {field} = 0.0, 0.1 in {field} = 0.1). "
            "Compare the metrics instead.")  # fmt: skip
    assert f"Note: {note}" in study and 'id="loss-note"' in page

    found = compare([r.run.path for r in rows], out=tmp_path / "cmp")
    assert found.numbers == "val at the best epoch"  # one of them was never tested
    run_lines = found.lines()[: len(rows)]  # then the recall per class
    assert all("best epoch 1  val at the best epoch: loss " in x for x in run_lines)


def test_a_group_table_of_one_loss_function_has_no_note():
    def row(number: int, lr: float) -> TrialRow:
        trial = TrialRow(number, "complete", "complete", 0.5, {"lr": lr}, None, None, None,
                         None, 1)  # fmt: skip
        trial.__dict__["recipe"] = {"train": {"optimizer": {"lr": lr}},
                                    "tasks": {"cls": {"label_smoothing": 0.1}}}  # fmt: skip
        return trial

    runs = [row(0, 0.1), row(1, 0.01)]
    assert report_loss_note(runs, groups(runs, "lr"), ["group", "val.loss"]) is None


def test_equal_importances_stay_off_the_terminal_and_the_caption_says_so():
    """Optuna warns when its best trials are all the trials (values tie): the report says
    so under the chart instead of a raw UserWarning on the terminal."""
    study = optuna.create_study()
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for x in (0.1, 0.5, 0.9):
        params, dists = {"a": x, "b": 1 - x}, {"a": dist, "b": dist}
        trial = optuna.trial.create_trial(params=params, distributions=dists, value=0.5)
        study.add_trial(trial)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that got out would raise here
        imp = importances(study, "val.loss")
    assert set(imp) == {"a", "b"} and len(set(imp.values())) == 1
    assert sweep_charts.importance(imp, 3).caption == (
        "The importances are all equal: from 3 trials, PED-ANOVA's best 10 % is 1 trial, too "
        "few (or too alike) to tell the parameters apart. More trials may separate them."
    )
    assert sweep_charts.importance({"a": 0.99, "b": 0.01}, 4).caption.startswith(
        "A first hint only: from 4 trials, PED-ANOVA's best 10 % is 1 trial, where Optuna "
        "advises at least 5"
    )  # a walkthrough's 4 trials gave one parameter 0.99, and nothing said how little that is
    assert sweep_charts.importance({"a": 0.7, "b": 0.3}, 60).caption == ""


def test_report_of_sweeps_or_of_a_sweeps_runs_points_at_the_sweep_report(tmp_path):
    """A folder of sweep folders (each with sweep.json and its base recipe.yaml) is no
    folder of runs to compare, and SWEEP/runs is reported by `cnnlab report SWEEP`."""
    sweeps = tmp_path / "sweeps"
    for name in ("a", "b"):
        run = sweeps / name / "runs" / "trial0000-x"
        run.mkdir(parents=True)
        for f in (sweeps / name / "sweep.json", sweeps / name / "recipe.yaml", run / "recipe.yaml"):
            f.write_text("{}")
    out = run_cli("report", str(sweeps))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: {sweeps} is not a run folder but holds 2 sweeps; report each one: "
        f"cnnlab report {sweeps / 'a'} ; cnnlab report {sweeps / 'b'}"
    )
    out = run_cli("report", str(sweeps / "a" / "runs"))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: {sweeps / 'a' / 'runs'} holds a sweep's trials; its report compares them: "
        f"cnnlab report {sweeps / 'a'}"
    )
    (sweeps / "b" / "sweep.json").unlink()
    with pytest.raises(CnnlabError, match=f"it holds a sweep: cnnlab report {sweeps / 'a'}$"):
        not_a_run(sweeps)


def test_the_metric_over_time_names_in_its_legend_only_the_outcomes_there_are():
    """A sweep without a pruned trial had "pruned" in its legend, with no point of it."""
    from datetime import datetime, timedelta

    from cnnlab.tasks import Goal

    start = datetime(2026, 12, 5, 12, 0)
    rows = [
        TrialRow(n, "complete", "complete", v, {"lr": v}, None, None,
                 start + timedelta(minutes=n), start + timedelta(minutes=n + 1), 1)
        for n, v in enumerate([0.6, 0.7, 0.65])
    ]  # fmt: skip
    chart = sweep_charts.metric_vs_time(rows, "val.cls.accuracy", Goal("maximize"))
    labels = [t.get_text() for t in chart.figure.axes[0].get_legend().get_texts()]
    assert labels == ["complete", "best so far"]
    assert [trace.name for trace in chart.plotly.data] == ["complete", "best so far"]
    rows[1] = dataclasses.replace(rows[1], state="pruned", outcome="pruned")
    chart = sweep_charts.metric_vs_time(rows, "val.cls.accuracy", Goal("maximize"))
    assert [trace.name for trace in chart.plotly.data] == ["complete", "pruned", "best so far"]


def test_a_few_trials_each_get_a_colour_named_by_their_parameters():
    """A 4-trial sweep's learning curves were one colour ("complete"): the best could not be
    told from the rest. Grouped (--group-by) or many, they stay groups."""
    from cnnlab.sweeps.report import _curve_labels

    def trial(number: int, lr: float, retry_of: int | None = None) -> TrialRow:
        row = TrialRow(number, "complete", "complete", 0.5, {"train.optimizer.lr": lr}, None,
                       None, None, None, 2, retry_of=retry_of)  # fmt: skip
        row.__dict__["metrics"] = [{"epoch": 1, "val.loss": 1.0}, {"epoch": 2, "val.loss": lr}]
        return row

    rows = [trial(0, 0.01), trial(3, 0.003, retry_of=1)]
    assert _curve_labels(rows, ["complete"] * 2, None) is None
    chart = sweep_charts.curves(rows, None, "val.loss")
    names = [t.get_text() for t in chart.figure.axes[0].get_legend().get_texts()]
    assert names == ["trial 0: lr=0.01", "trial 3 (retry of trial 1): lr=0.003"]
    assert _curve_labels(rows, ["lr = 0.01", "lr = 0.003"], "lr") == ["lr = 0.01", "lr = 0.003"]
    many = [trial(n, 0.01) for n in range(11)]
    assert _curve_labels(many, ["complete"] * 11, None) == ["complete"] * 11


def test_a_groups_mean_leaves_out_its_pruned_and_failed_trials():
    """A pruned trial's best epoch is one of its first: averaged in, it pulled its group's
    mean down as if the setting were worse (seen: a Hyperband study of settings x seeds)."""

    def row(number: int, outcome: str, accuracy: float, epochs: int) -> TrialRow:
        r = TrialRow(number, outcome, outcome, accuracy, {"lr": 0.1}, None, None, None, None,
                     epochs)  # fmt: skip
        rows = [{"epoch": e, "val.loss": 1 / e, "val.cls.accuracy": accuracy, "seconds": 60.0}
                for e in range(1, epochs + 1)]  # fmt: skip
        r.metrics, r.recipe = rows, {"train": {"monitor": "val.loss"}}
        return r

    rows = [row(0, "complete", 0.9, 4), row(1, "pruned", 0.3, 1), row(2, "complete", 0.8, 4)]
    rows += [row(3, "error", 0.1, 2)]
    header, body = group_table(rows, groups(rows, "lr"), ["val.cls.accuracy"])
    assert header == ["group", "trials", "val.cls.accuracy", "training minutes"]
    assert body == [["lr = 0.1", "2 (2 not complete, left out)", "0.8500 ± 0.0707", "4.00 ± 0.00"]]


def test_more_worker_threads_than_cores_is_a_warning(monkeypatch):
    """`--workers 8` on a laptop's cores: eight trials taking turns, each slower, none sooner."""
    from cnnlab.sweeps.worker import oversubscribed

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cpu = {"device": "cpu"}
    assert oversubscribed(2, cpu) is None  # a core each (train.threads unset: a share)
    assert oversubscribed(4, {**cpu, "threads": 1}) == (
        "4 workers of 1 thread each on 2 CPU cores: they take turns, so each trial trains "
        "slower and the sweep ends no sooner; --workers 2 keeps a core for each thread"
    )
    assert oversubscribed(2, {**cpu, "threads": 2}).endswith(
        "--workers 1 keeps a core for each thread"
    )
