"""Sweeps under hostile study data, mismatched inputs, broken databases and odd results:
one clear line, nothing written outside, and unexpected errors left to speak.

Most tests read one finished two-trial sweep (`finished`), each on its own copy.
"""

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.recipe import read_yaml
from cnnlab.sweeps.launch import sweep
from cnnlab.sweeps.results import load_trials, open_study
from cnnlab.sweeps.select import select
from cnnlab.sweeps.storage import open_storage
from cnnlab.sweeps.study import (
    INPUTS_ATTR,
    Settings,
    SweepFolder,
    base_recipe,
    create_or_join,
    fingerprint,
    load_study,
    study_folder,
)
from cnnlab.sweeps.worker import run_worker
from tests import cli_process
from tests.conftest import DEMO, ROOT, run_cli
from tests.test_runs import LOCK_AND_WAIT
from tests.test_sweep import DIVERGES, TINY, lr_sweep, sets, write

LR_GRID = "method: grid\nparameters: {train.optimizer.lr: {values: [0.001, 0.003]}}\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """A two-point grid with no metric, run from the shell with train.monitor = val.ink.rmse:
    (its sweep folder, the command's stdout). Tests that write to it use `copy_of`."""
    tmp = tmp_path_factory.mktemp("finished")
    file = write(tmp, LR_GRID)
    done = run_cli("sweep", str(DEMO), str(file), "--study", "tiny", "--out", str(tmp / "out"),
                   *sets("train.monitor=val.ink.rmse"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out" / "tiny", done.stdout


def copy_of(finished: tuple[Path, str], tmp_path: Path) -> SweepFolder:
    return SweepFolder(Path(shutil.copytree(finished[0], tmp_path / "out" / "tiny")))


def add_trial(folder: SweepFolder, state: str, run_dir: str) -> None:
    """A trial written straight into the study, as anyone with access to it could."""
    lr = folder.spec().param("train.optimizer.lr")
    open_study(folder, None).add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState[state],
            value=0.5 if state == "COMPLETE" else None,
            params={lr.name: lr.form.space().choices[0]},
            distributions={lr.name: lr.form.space()},
            user_attrs={"run_dir": run_dir},
        )
    )


# ------------------------------------------------------------ metric left out


def test_a_sweep_without_a_metric_ranks_by_train_monitor_and_says_so(finished):
    path, stdout = finished
    said = " ".join(stdout.split())  # rich wraps long lines outside a terminal
    assert (
        "note: no metric in the sweep file: minimizing the recipe's train.monitor, val.ink.rmse"
        in said
    )
    meta = SweepFolder(path).meta()
    assert (meta.metric, meta.goal) == ("val.ink.rmse", "minimize")
    rows = load_trials(SweepFolder(path), None)
    assert [r.state for r in rows] == ["complete", "complete"]
    best = min(rows, key=lambda r: r.value)
    assert f"best val.ink.rmse = {best.value:.4f}" in said


# ----------------------------------------------------------------------- select


def test_select_on_a_metric_nan_in_every_trial_says_so(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    for metrics in folder.runs_path.glob("*/metrics.jsonl"):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        metrics.write_text("".join(json.dumps(r | {"val.cls.accuracy": math.nan}) + "\n"
                                   for r in rows))  # fmt: skip
    done = run_cli("select", str(folder.path), "--metric", "val.cls.accuracy")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--metric val.cls.accuracy: no complete trial has a value" in done.stderr
    assert not (folder.path / "selection.md").exists()


def test_select_says_when_trials_ran_on_a_machine_whose_folders_are_not_here(finished, tmp_path):
    """Two machines sharing a study but not --out: select on one ranked its own trials, and
    the other's better one went unsaid."""
    folder = copy_of(finished, tmp_path)
    shutil.rmtree(sorted(folder.runs_path.iterdir())[0])  # trained on another machine
    done = run_cli("select", str(folder.path), "--metric", "val.cls.accuracy")
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "warning: 1 of 2 complete trials have no run folder here (trained on another "
        "machine, whose --out this one does not share): chosen among the 1 here\n"
    )


def test_select_prints_the_markdown_table_outside_a_terminal(finished, tmp_path):
    """In a log or CI (stdout not a terminal) rich would fold the table at 80 columns."""
    folder = copy_of(finished, tmp_path)
    done = run_cli("select", str(folder.path), "--metric", "val.cls.accuracy",
                   "--metric", "val.ink.rmse")  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = (folder.path / "selection.md").read_text().splitlines()
    assert max(len(line) for line in table) > 80  # wider than rich's default
    printed = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert printed == table  # every row whole, on one line


def test_select_without_test_keeps_the_tested_selection(finished, tmp_path):
    """A look at another metric after `select --test` used to overwrite selection.md, the
    table with the test results, with one without them."""
    folder = copy_of(finished, tmp_path)
    tested = run_cli("select", str(folder.path), "--metric", "val.ink.rmse", "--test")
    assert tested.returncode == 0, tested.stderr
    kept = (folder.path / "selection_test.md").read_text()
    assert "test.cls.accuracy" in kept and "test.ink.rmse" in kept
    looked = run_cli("select", str(folder.path), "--metric", "val.cls.accuracy")
    assert looked.returncode == 0, looked.stderr
    assert (folder.path / "selection_test.md").read_text() == kept
    assert json.loads((folder.path / "selection_test.json").read_text())["test"] is True
    plain = (folder.path / "selection.md").read_text()
    assert "best val.cls.accuracy" in plain and "test." not in plain
    assert f"kept {folder.path / 'selection_test.md'}" in looked.stdout
    from cnnlab.sweeps.report import _selection

    header, _ = _selection(folder)  # the report shows the table with the test results
    assert "val.ink.rmse" in header and "test.cls.accuracy" in header


def test_an_older_tested_selection_is_moved_aside_not_overwritten(finished, tmp_path):
    """A sweep folder from before selection_test.*: its --test table is named selection.*."""
    folder = copy_of(finished, tmp_path)
    select(folder, ["val.ink.rmse"], test=True)
    for suffix in (".md", ".json", ".csv"):  # as an older cnnlab saved it
        (folder.path / f"selection_test{suffix}").rename(folder.path / f"selection{suffix}")
    tested = (folder.path / "selection.md").read_text()
    assert "test.ink.rmse" in tested
    select(folder, ["val.cls.accuracy"])
    assert (folder.path / "selection_test.md").read_text() == tested
    assert json.loads((folder.path / "selection_test.json").read_text())["test"] is True
    assert "test." not in (folder.path / "selection.md").read_text()


def test_report_refuses_a_group_by_that_names_nothing_and_writes_nothing(finished, tmp_path):
    """A typo used to put every trial in one group "X = None" and overwrite study.md."""
    folder = copy_of(finished, tmp_path)
    (folder.path / "study.md").write_text("the study of an earlier report\n")
    done = run_cli("report", str(folder.path), "--group-by", "train.optimiser.lr")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (
        "--group-by 'train.optimiser.lr' names no recipe field and no swept parameter; did you "
        "mean train.optimizer.lr? group by a swept parameter (train.optimizer.lr) or a dotted "
        f"field of {folder.recipe_path}"
    ) in done.stderr
    assert (folder.path / "study.md").read_text() == "the study of an earlier report\n"
    assert not (folder.path / "report.html").exists()
    assert not list(folder.path.glob("*.png"))


def test_run_paths_open_from_where_the_user_is(finished, tmp_path, monkeypatch):
    """The sweep's `best` line, Sweep.results and Sweep.select give the same run folder, as
    a path that exists from the current folder (it used to be runs/... in the sweep folder)."""
    from cnnlab.api import Sweep

    said = " ".join(finished[1].split())
    trial, printed = re.search(r"best val\.ink\.rmse = \S+: trial (\d+) (\S+)", said).groups()
    assert Path(printed).is_dir() and Path(printed).parent == finished[0] / "runs"
    folder = copy_of(finished, tmp_path)
    monkeypatch.chdir(tmp_path)
    found = Sweep(folder.path.relative_to(tmp_path))
    picked = found.select("val.ink.rmse").iloc[0]
    results = found.results
    assert picked["trial"] == int(trial)
    assert picked["run"] == results.loc[results["trial"] == picked["trial"], "run"].item()
    assert not Path(picked["run"]).is_absolute() and Path(picked["run"]).is_dir()
    saved = json.loads((folder.path / "selection.json").read_text())
    assert saved["picks"][0]["run"] == f"runs/{Path(picked['run']).name}"  # the folder moves


@pytest.mark.parametrize(
    ("command", "flag", "helps"),
    [("select", "--test", "evaluate the chosen"), ("sweep", "--resume", "continue the latest")],
)
def test_flags_show_as_flags_in_the_help(command, flag, helps):
    """Typer's help showed `--test <bool>`, and `--test true` then failed."""
    done = run_cli(command, "--help")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if re.match(rf"\W*{flag} ", line)]
    assert helps in line and "<bool>" not in line


# ------------------------------------------------------- paths from the study


@pytest.mark.parametrize("run_dir", ["../../elsewhere", "ABSOLUTE", "runs/..", "runs"])
def test_a_run_dir_outside_runs_is_refused(finished, tmp_path, run_dir):
    """A value nobody but cnnlab should write, pointing at a real run folder elsewhere."""
    folder = copy_of(finished, tmp_path)
    shutil.copytree(next(folder.runs_path.iterdir()), tmp_path / "elsewhere")
    if run_dir == "ABSOLUTE":
        run_dir = str(tmp_path / "elsewhere")
    add_trial(folder, "COMPLETE", run_dir)
    with pytest.raises(CnnlabError, match=r"trial 2: its run_dir .* lies outside .*runs"):
        select(folder, ["val.ink.rmse"])
    assert not (folder.path / "selection.md").exists()


def one_failed_trial(tmp_path: Path) -> tuple[SweepFolder, object]:
    """A sweep stopped by its one diverging trial: (its folder, the trial, with a run folder
    and a checkpoint); its budget of 2 leaves room for one more trial."""
    file = lr_sweep(tmp_path, "random", "{values: [1.0e+12]}")
    with pytest.raises(CnnlabError, match="stopped after 1 consecutive failed trial"):
        sweep(DEMO, file, [*TINY, *DIVERGES], trials=2, out=tmp_path / "out", max_failures=1)
    (path,) = (tmp_path / "out").iterdir()
    folder = SweepFolder(path)
    (first,) = load_trials(folder, None)
    return folder, first


def test_a_worker_refuses_a_retry_whose_run_dir_leads_outside(tmp_path):
    folder, first = one_failed_trial(tmp_path)
    outside = Path(shutil.copytree(first.run.path, tmp_path / "outside"))  # a run to resume
    before = {p: p.stat().st_mtime_ns for p in outside.rglob("*")}
    add_trial(folder, "WAITING", "../../outside")  # a retry, as a shared database could hold

    assert run_worker(folder, None, threads=1) == "stopped after 1 consecutive failed trial"
    hostile = load_trials(folder, None)[1]
    assert hostile.outcome == "error" and "run_dir '../../outside'" in hostile.reason
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before
    assert len(list(folder.runs_path.iterdir())) == 1


def test_a_retry_whose_run_folder_is_in_use_leaves_that_folder_alone(tmp_path):
    """A late worker still trains in the folder: its retry fails, writing nothing there."""
    folder, first = one_failed_trial(tmp_path)
    before = {p: p.read_bytes() for p in first.run.path.rglob("*") if p.is_file()}
    add_trial(folder, "WAITING", first.run_dir)  # the retry of a trial whose worker is late

    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_AND_WAIT, str(first.run.path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_worker(folder, None, threads=1) == "stopped after 1 consecutive failed trial"
    finally:
        holder.kill()
        holder.wait()
    retry = load_trials(folder, None)[1]
    assert retry.outcome == "error" and "is in use by another trainer" in retry.reason
    after = {p: p.read_bytes() for p in first.run.path.rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p.name != ".lock"} == {
        p: b for p, b in before.items() if p.name != ".lock"
    }


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "/tmp/escape", "link"])
def test_study_names_stay_inside_out(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)  # inside --out by name, outside once resolved
    with pytest.raises(CnnlabError, match=f"--study '{name}': the study name is also its"):
        study_folder(out, name)
    assert study_folder(out, "fmnist_lambda") == out / "fmnist_lambda"


def test_a_study_name_with_a_path_writes_nothing(tmp_path):
    done = run_cli("sweep", str(DEMO), "fashion_lambda", "--study", "../escape",
                   "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--study '../escape'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------ one study, one set of inputs


@pytest.mark.parametrize(
    ("sweep_text", "extra", "message"),
    [
        (LR_GRID.replace("0.003", "0.01"), [], "another sweep file;"),
        (LR_GRID, ["--set", "model.blocks=2"], "another base recipe;"),
        (LR_GRID, ["--trials", "1"], "another budget (2 trials, here 1);"),
    ],
    ids=["sweep-file", "recipe", "budget"],
)
def test_joining_a_study_with_other_inputs_is_refused(finished, tmp_path, sweep_text, extra,
                                                      message):  # fmt: skip
    """The same --study again, one input changed: the workers would run the old sweep."""
    folder = copy_of(finished, tmp_path)
    saved = folder.sweep_path.read_text()
    done = run_cli("sweep", str(DEMO), str(write(tmp_path, sweep_text)), "--study", "tiny",
                   "--out", str(folder.path.parent), *sets("train.monitor=val.ink.rmse"),
                   *extra)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"study 'tiny' was started with {message} use another --study" in done.stderr
    assert folder.sweep_path.read_text() == saved


def test_a_worker_with_an_edited_sweep_file_is_refused_by_the_study(finished, tmp_path):
    """The study itself holds its inputs: a folder whose files changed cannot join it."""
    folder = copy_of(finished, tmp_path)
    folder.sweep_path.write_text(LR_GRID.replace("0.003", "0.01"))
    storage = open_storage(None, folder.path, 1)
    with pytest.raises(CnnlabError, match="study 'tiny' was started with another sweep file;"):
        load_study(folder, storage, folder.spec())


def test_a_folder_holding_another_study_is_one_line(tmp_path):
    """--study names a folder whose sweep.json holds another study (moved or renamed)."""
    base = base_recipe(read_yaml(DEMO), "demo")
    file = write(tmp_path, LR_GRID)
    settings = Settings(method="grid", metric="val.loss", goal="minimize", trials=2)
    create_or_join(tmp_path / "out", "first", base, file, None, settings)
    (tmp_path / "out" / "first").rename(tmp_path / "out" / "second")
    with pytest.raises(CnnlabError, match="holds study 'first', not 'second'; choose another"):
        create_or_join(tmp_path / "out", "second", base, file, None, settings)


def join_study(folder: str, url: str, start: str, journal: str) -> None:
    """One machine's worker in the race: opens the study at time `start`; the refusal is
    its output and exit code 2."""
    study, storage = SweepFolder(Path(folder)), open_storage(url or None, Path(journal), 1)
    time.sleep(max(0.0, float(start) - time.time()))
    try:
        load_study(study, storage, study.spec())
    except CnnlabError as err:
        print(err)
        sys.exit(2)


def race_to_start(tmp_path: Path, url: str | None = None) -> None:
    """Four workers, two from each of two sweep files, start one study at the same moment:
    exactly those with the inputs the study stored get in, whoever created it."""
    base = base_recipe(read_yaml(DEMO), "demo")
    folders = []
    for i, high in enumerate(["0.003", "0.01"]):
        file = write(tmp_path, LR_GRID.replace("0.003", high), f"s{i}.yaml")
        settings = Settings(method="grid", metric="val.loss", goal="minimize", trials=2)
        folders.append(create_or_join(tmp_path / f"m{i}", "race", base, file, None, settings))
    # once every process has started (forked already imported; fresh ones import cnnlab)
    start = str(time.time() + (6 if cli_process.fresh() else 1.5))
    args = lambda f: (str(f.path), url or "", start, str(tmp_path))  # noqa: E731
    procs = [(f, cli_process.Process(join_study, args(f), ROOT)) for f in folders * 2]
    ended = [(f, p.wait(timeout=120)) for f, p in procs]
    study = optuna.load_study(study_name="race", storage=open_storage(url, tmp_path, 1))
    stored = study.user_attrs[INPUTS_ATTR]
    (winner,) = [f for f in folders if fingerprint(f.spec(), f.base(), 2) == stored]
    for f, done in ended:
        if f is winner:
            assert done.returncode == 0, done.stdout + done.stderr
        else:
            assert done.returncode == 2, done.stdout + done.stderr
            assert "study 'race' was started with another sweep file;" in done.stdout


def test_workers_racing_to_start_a_study_agree_on_its_inputs(tmp_path):
    race_to_start(tmp_path)


# ------------------------------------------------- errors that are not the user's


def test_a_database_of_an_unknown_optuna_schema_keeps_its_own_error(tmp_path):
    """Not "cannot open ... check the URL": Optuna's message says what to run."""
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_storage(url, tmp_path, 1)  # Optuna makes its tables
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as db:  # as a newer Optuna would leave them
        db.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v99.0.0.a'"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="no longer compatible with the table schema"):
        open_storage(url, tmp_path, 1)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:secret@host:notaport/db", "--storage 'host:notaport/db' is not a da"),
        ("nosuchdb://host/db", "cannot open the study database nosuchdb://host/db: Can't load"),
        ("postgres://u:secret@host/db", "names PostgreSQL postgresql://, not postgres://"),
        (  # pip install 'psycopg[binary]' did not help a URL that names psycopg2
            "postgresql+psycopg2://u:secret@host/db",
            r"driver \(psycopg2\) is not installed; postgresql:// uses psycopg",
        ),
    ],
)
def test_a_bad_database_url_is_one_line(tmp_path, url, message):
    with pytest.raises(CnnlabError, match=message):
        open_storage(url, tmp_path, 1)


def test_importance_errors_are_not_too_few_trials(finished, tmp_path, monkeypatch):
    """Below 3 complete trials the page says "too few"; an error in Optuna is raised."""
    from optuna.importance import PedAnovaImportanceEvaluator

    from cnnlab.sweeps.statistics import importances

    folder = copy_of(finished, tmp_path)
    study = open_study(folder, None)
    assert importances(study, "val.ink.rmse") == {}  # two complete trials
    add_trial(folder, "COMPLETE", "runs/x")
    assert set(importances(study, "val.ink.rmse")) == {"train.optimizer.lr"}

    def broken(*args, **kwargs):
        raise ValueError("a bug in the evaluator")

    monkeypatch.setattr(PedAnovaImportanceEvaluator, "evaluate", broken)
    with pytest.raises(ValueError, match="a bug in the evaluator"):
        importances(study, "val.ink.rmse")


# ------------------------------------------------------------ Optuna's API


def test_a_surplus_trial_yields_and_frees_its_grid_point(finished, tmp_path):
    """The grid is done: a late worker's trial is pruned as surplus, off the grid, untrained."""
    from cnnlab.sweeps.worker import GRID_ATTR, Objective

    folder = copy_of(finished, tmp_path)
    storage, spec = open_storage(None, folder.path, 1), folder.spec()
    study = load_study(folder, storage, spec, seed=0)
    late = Objective(folder, spec, 1, None, "study.journal", 2, storage)
    study.optimize(late, n_trials=1, catch=(Exception,))
    trial = study.trials[-1]
    assert (trial.state.name, trial.user_attrs["outcome"]) == ("PRUNED", "surplus")
    assert trial.system_attrs[GRID_ATTR] == -1 and late.last_outcome == "surplus"
    assert len(list(folder.runs_path.iterdir())) == 2
