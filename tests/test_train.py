"""End to end on a small subset of the real Fashion-MNIST: train, eval, interrupt, resume."""

import json
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from cnnlab.build import build, resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train
from cnnlab.loop import Trainer
from cnnlab.optim import build_optimizer, build_scheduler
from cnnlab.recipe import best_row, dump_recipe
from cnnlab.runs import RunFolder, load_checkpoint
from tests import cli_process
from tests.conftest import DEMO, ROOT, TINY, run_cli

TIMING = {"seconds", "images_per_s"}


def comparable(run: RunFolder) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in run.read_metrics()]


def interrupt_after(trainer: Trainer, steps: int) -> None:
    """Ask the loop to stop (as Ctrl-C does) once `steps` batches are done."""
    update, count = trainer.train_meter.update, [0]

    def counting(*args, **kwargs):
        update(*args, **kwargs)
        count[0] += 1
        if count[0] == steps:
            trainer._stop = True

    trainer.train_meter.update = counting


def interrupted(recipe, steps: int) -> RunFolder:
    """A run of `recipe` stopped, as Ctrl-C stops it, once `steps` batches are done."""
    run = RunFolder.create(recipe)
    first = Trainer(build(recipe), run)
    interrupt_after(first, steps)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    return run


def assert_same_run(a: RunFolder, b: RunFolder) -> None:
    """The same metrics every epoch (timings aside) and the same test metrics."""
    assert comparable(a) == comparable(b)
    assert json.loads(a.test_path.read_text()) == json.loads(b.test_path.read_text())


def test_train_writes_a_complete_run_folder(tiny):
    run = train(tiny("train.epochs=2"))
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train.loss", "val.cls.accuracy", "val.ink.rmse", "val.cls.f1", "lr"} <= rows[0].keys()
    assert rows[1]["val.cls.accuracy"] > 0.5  # learns something in two tiny epochs
    test = json.loads(run.test_path.read_text())
    assert {"test.cls.accuracy", "test.ink.mae", "test.ink.rmse"} <= test.keys()
    assert run.status()["state"] == "finished"
    env = json.loads((run.path / "env.json").read_text())
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["precision"]["precision"] in ("fp32", "bf16")
    assert run.recipe_path.read_text() == dump_recipe(run.recipe())
    ckpt = load_checkpoint(run.last_path)
    assert {"model", "optimizer", "scheduler", "rng", "loop"} <= ckpt.keys()
    # eval re-reads the best checkpoint and reproduces the saved test metrics
    assert evaluate_run(run.path) == test


def test_same_recipe_same_metrics(tiny):
    assert_same_run(train(tiny()), train(tiny()))


@pytest.mark.parametrize("stop_at", [7, 29])  # mid-epoch 1, and after the last batch of epoch 1
def test_resume_reproduces_the_uninterrupted_run(tiny, stop_at):
    recipe = tiny("train.epochs=2", "train.scheduler.name=onecycle", "data.train_subset=2000")
    reference = train(recipe)

    run = interrupted(recipe, stop_at)
    assert run.status()["state"] == "interrupted"
    saved = load_checkpoint(run.last_path)
    assert saved["loop"]["step"] == stop_at
    with open(run.metrics_path, "a") as f:  # and a line torn by a full disk
        f.write('{"epoch": 2, "train.lo')

    # RNG states come back as CPU ByteTensors: a CUDA generator's set_state takes nothing else
    probe = Trainer(build(recipe), run)
    probe.restore(saved)
    assert probe.data_state.device.type == "cpu" and probe.data_state.dtype == torch.uint8
    assert saved["rng"]["torch"].device.type == "cpu"

    resumed = train(recipe, resume=run.path)
    assert_same_run(resumed, reference)
    # the epoch's rate counts this process's steps: after the last one, none ("0 img/s")
    rate = resumed.read_metrics()[0]["images_per_s"]
    assert rate is None if stop_at == 29 else rate > 0


def test_stopped_between_its_checkpoint_and_its_row_a_run_resumes_with_the_row(tiny):
    """A sweep stops a trial's processes as soon as it reads an epoch's row: the epoch's
    checkpoint is written first and holds the row, which a resume puts back if it is lost."""
    recipe = tiny("train.epochs=2", "data.train_subset=1000")
    reference = train(recipe)
    run = RunFolder.create(recipe)

    def pruned(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(build(recipe), run, on_epoch=pruned).fit()
    (row,) = run.read_metrics()
    assert load_checkpoint(run.last_path)["row"] == row  # the checkpoint was there first
    run.truncate_metrics(0)  # as if stopped after the checkpoint, before its row
    resumed = train(recipe, resume=run.path)
    assert comparable(resumed) == comparable(reference)


def test_a_bug_mid_run_marks_it_failed_and_it_resumes_once_fixed(tiny):
    """An exception from code of one's own (here the epoch callback; a registered task's
    loss alike) leaves the run `failed` with the reason, not `running`, and says how to go
    on from its last checkpoint."""
    recipe = tiny("train.epochs=2", "data.train_subset=1000")

    def bug(row: dict) -> None:
        raise RuntimeError("a bug in my own code\nits second line")

    with pytest.raises(RuntimeError) as err:
        train(recipe, on_epoch=bug)
    (folder,) = Path(recipe.output_dir).iterdir()
    status = RunFolder.open(folder).status()
    assert (status["state"], status["reason"]) == ("failed", "RuntimeError: a bug in my own code")
    assert err.value.__notes__ == [
        f"{folder} is marked failed; once fixed, continue it where it stopped: "
        f"cnnlab train --resume {folder} (in Python: cnnlab.resume({str(folder)!r}))"
    ]
    resumed = train(recipe, resume=folder)
    assert resumed.status()["state"] == "finished" and len(resumed.read_metrics()) == 2
    with pytest.raises(CnnlabError, match=f"^{folder} has finished; nothing is left to continue "):
        train(recipe, resume=folder)  # nothing is left: it says so, and changes nothing
    assert resumed.read_metrics() == RunFolder.open(folder).read_metrics()
    resumed.set_status("pruned", epoch=1)  # a sweep trial its pruner stopped: the study's
    with pytest.raises(CnnlabError, match=f"^{folder} is a sweep trial its pruner stopped; "):
        train(recipe, resume=folder)
    (folder / "sweep.json").write_text("{}")  # a sweep folder has a recipe.yaml too
    with pytest.raises(CnnlabError, match=f"^{folder} is a sweep folder; a sweep continues "):
        train(recipe, resume=folder)


def test_status_counts_the_epochs_done_while_it_trains(tiny):
    """status.json said epoch 0 until the run ended, while metrics.jsonl had 8 rows."""
    recipe = tiny("data.train_subset=1000", "train.epochs=2")
    seen = []

    def look(row: dict) -> None:
        (folder,) = Path(recipe.output_dir).iterdir()
        seen.append(RunFolder.open(folder).status())

    train(recipe, on_epoch=look)
    assert [(s["state"], s["epoch"]) for s in seen] == [("running", 1), ("running", 2)]


def test_a_run_trained_but_not_tested_resumes_to_its_test(tiny, capsys):
    """Its every epoch done, a failure in the test or report: resuming goes straight there."""
    recipe = tiny("data.train_subset=1000")  # one epoch

    def last(row: dict) -> None:
        raise RuntimeError("after the last epoch")

    with pytest.raises(RuntimeError):
        train(recipe, on_epoch=last)
    (folder,) = Path(recipe.output_dir).iterdir()
    capsys.readouterr()
    resumed = train(recipe, resume=folder)
    said = capsys.readouterr().out  # what is left: its test (train.report is off here)
    assert f"resuming {folder} at the end of epoch 1 of 1: its test\n" in said
    assert resumed.status()["state"] == "finished" and resumed.test_path.is_file()


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(tiny):
    recipe = tiny(
        "train.epochs=2",
        "train.optimizer.lr=1e12",
        "train.optimizer.name=sgd",
        "train.scheduler.name=none",
        "train.checkpoint_minutes=0.0001",
    )
    with pytest.raises(CnnlabError, match="the loss became (nan|inf).*lower train.optimizer.lr"):
        train(recipe)
    (folder,) = Path(recipe.output_dir).iterdir()
    run = RunFolder(folder)
    assert run.status()["state"] == "failed" and "non-finite" in run.status()["reason"]
    if run.last_path.exists():  # every checkpoint written holds finite weights
        weights = load_checkpoint(run.last_path)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_early_stopping_ends_the_run(tiny):
    run = train(
        tiny(
            "train.epochs=6",
            "train.early_stopping.patience=1",
            "train.early_stopping.min_delta=1.0",
        )
    )
    assert len(run.read_metrics()) == 2  # epoch 2 cannot improve by 1.0 -> stop


LR = 0.002  # the demo recipe's
# Learning rate after each of two epochs, worked out by hand from each schedule's definition:
# step / multistep decay at epoch boundaries; onecycle and cosine end near zero.
SCHEDULES = {
    "step": ("sgd", ["train.scheduler.step_size=1"], [LR * 0.1, LR * 0.01]),
    "multistep": ("adam", ["train.scheduler.milestones=[2]"], [LR, LR * 0.1]),
    "onecycle": ("adamw", [], None),
    "cosine": ("sgd", ["train.scheduler.warmup_epochs=0.5"], None),
}


@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_schedulers_and_optimizers_train(tiny, sched):
    opt, extra, expected = SCHEDULES[sched]
    nesterov = ["train.optimizer.nesterov=true"] if opt == "sgd" else []
    run = train(
        tiny(
            "train.epochs=2",
            f"train.scheduler.name={sched}",
            f"train.optimizer.name={opt}",
            f"train.optimizer.lr={LR}",
            "train.grad_clip=1.0",
            "train.precision=fp32",
            *extra,
            *nesterov,
        )
    )
    lrs = [r["lr"] for r in run.read_metrics()]
    if expected is not None:
        assert lrs == pytest.approx(expected, rel=1e-9)
    else:  # annealed to (almost) nothing by the last step, and well above that mid-way
        assert lrs[1] < LR * 0.01 < LR * 0.1 < lrs[0] <= LR


@pytest.mark.parametrize("pct", [0.25, 0.5, 0.1])
def test_onecycle_survives_any_number_of_steps(tiny, pct):
    """A short run (a sweep trial on a subset) can make the warm-up exactly one step long."""
    model = torch.nn.Linear(2, 2)
    for total in range(1, 13):
        recipe = tiny(
            "train.epochs=1", "train.scheduler.name=onecycle", f"train.scheduler.pct_start={pct}"
        )
        optimizer = build_optimizer(recipe.train.optimizer, model)
        scheduler, _ = build_scheduler(recipe.train, optimizer, steps_per_epoch=total)
        lrs = []
        for _ in range(total):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        assert all(lr > 0 for lr in lrs), (total, lrs)


def test_single_task_runs_are_the_same_recipe(tiny):
    cls_only = train(tiny("tasks.ink=null"))
    assert "test.ink.rmse" not in json.loads(cls_only.test_path.read_text())
    reg_only = train(tiny("tasks.cls=null", "train.monitor=val.ink.rmse"))
    test = json.loads(reg_only.test_path.read_text())
    assert "test.cls.accuracy" not in test and test["test.ink.rmse"] < 0.1


def test_cli_train_interrupt_resume_eval(tmp_path):
    """As a user: Ctrl-C mid-run, resume, eval; the result equals an uninterrupted run."""
    sets = [
        f"output_dir={tmp_path / 'runs'}",
        "data.train_subset=2000",
        "data.test_subset=500",
        "model.base_filters=8",
        "train.epochs=3",
        "train.progress=false",
        "train.threads=1",
        "train.report=false",
        "train.deterministic=true",  # on a GPU, cuDNN's autotuning differs from process to process
    ]
    proc = cli_process.start(
        ["train", "fashion_multitask", *(a for s in sets for a in ("--set", s))], ROOT
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/metrics.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stopped = proc.wait(timeout=120)
    err = stopped.stderr
    assert stopped.returncode == 2, err
    assert "interrupted at epoch" in err and "cnnlab train --resume" in err
    assert "Traceback" not in err
    run_dir = next((tmp_path / "runs").iterdir())

    resume = run_cli("train", "--resume", str(run_dir))
    assert resume.returncode == 0, resume.stderr
    steps = 2000 * 9 // 10 // 64 + 1  # the train split of 2,000 images in batches of 64
    where = rf"epoch [123] of 3(, step \d+ of {steps}| from its start \([012] done\))"
    assert re.search(rf"resuming {run_dir} at {where}", resume.stdout), resume.stdout
    evaluated = run_cli("eval", str(run_dir))
    assert evaluated.returncode == 0 and "test.cls.accuracy" in evaluated.stdout

    from cnnlab.recipe import load_recipe

    reference = train(load_recipe(DEMO, [*sets, f"output_dir={tmp_path / 'ref'}"]))
    assert comparable(RunFolder(run_dir)) == comparable(reference)


def test_eval_saves_an_untested_runs_first_test_and_leaves_a_run_that_goes_on(tiny):
    """A sweep's trial is never tested: its first `cnnlab eval` is kept where training's
    test would be (compare and report read it there); an interrupted run's is not, since
    its resumed training ends with its own test."""
    run = train(tiny("train.test_at_end=false"))
    assert not run.test_path.exists()
    first = run_cli("eval", str(run.path))
    assert first.returncode == 0, first.stderr
    assert f"saved: {run.test_path}" in first.stdout
    saved = json.loads(run.test_path.read_text())
    assert saved["best_epoch"] == 1 and f"{saved['test.cls.accuracy']:.4f}" in first.stdout
    again = run_cli("eval", str(run.path))
    assert again.returncode == 0 and "saved:" not in again.stdout

    run.test_path.unlink()
    run.set_status("interrupted", epoch=1, step=0)
    later = run_cli("eval", str(run.path))
    assert later.returncode == 0 and "test.cls.accuracy" in later.stdout
    assert "saved:" not in later.stdout and not run.test_path.exists()


@pytest.mark.parametrize(
    "bad, says",
    [
        ("data.source=cifar100", "data.source 'cifar100' is unknown"),
        ("tasks.cls.target=colour", "tasks.cls.target 'colour' is not provided"),
        # a GPU index past the last (on a host without a GPU: any index)
        ("train.device=cuda:8", "is visible" if torch.cuda.is_available() else "no CUDA GPU"),
        ("data.root=/nonexistent/fmnist", "/nonexistent/fmnist"),
    ],
)
def test_a_run_that_cannot_start_leaves_no_folder(tmp_path, bad, says):
    sets = [f"output_dir={tmp_path / 'runs'}", *TINY, bad]
    out = run_cli("train", str(DEMO), *(a for s in sets for a in ("--set", s)))
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_gpu_index_past_the_last_is_one_line_naming_those_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(
        CnnlabError, match=r"cuda:2 but 2 CUDA GPUs are visible \(cuda:0 to cuda:1\)"
    ):
        resolve_device("cuda:2")


def test_output_outside_a_terminal_keeps_one_line_per_epoch(tmp_path):
    """A log, CI or `| tee`: epoch lines whole, the test table as Markdown rows."""
    sets = [f"output_dir={tmp_path / 'runs'}", *TINY, "train.epochs=2", "train.progress=true"]
    out = run_cli("train", str(DEMO), *(a for s in sets for a in ("--set", s)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[1] == epochs[0] + 1, out.stdout  # no blank line between
    epochs = [lines[i] for i in epochs]
    assert all("val.cls.accuracy" in e and "val.ink.rmse" in e and "img/s" in e for e in epochs)
    assert re.search(r"^\| test\.cls\.accuracy \| 0\.\d{4} \|$", out.stdout, re.M), out.stdout
    assert any(line.startswith("precision: ") for line in lines)


def test_validation_and_test_batches_are_sized_by_the_models_largest_map(tiny, monkeypatch):
    """`train.eval_batch_size: auto` keeps a pass's maps within EVAL_BYTES: a fixed 1,000
    put seed 002's network at 224 px at 19.5 GB a validation batch."""
    import cnnlab.build as building
    from cnnlab.data.batches import Splits

    built = build(tiny())
    assert built.recipe.train.eval_batch_size == "auto" and built.eval_batch_size == 1000
    largest, leaves = building.map_sizes(built.model, torch.zeros(1, 1, 28, 28))
    assert largest >= 8 * 28 * 28  # the first block's 8 maps of 28 x 28, at least
    assert leaves > 3 * largest  # conv, norm, activation: the first block alone
    monkeypatch.setattr(building, "EVAL_BYTES", building.PEAK_PER_MAP * 4 * largest * 96)
    one = torch.zeros(1, 1, 28, 28)
    assert building.images_per_pass(built.model, one) == 96  # what export's check also asks
    assert building.images_per_pass(built.model, one, most=50) == 50
    asked: list[tuple[str, int]] = []
    cut = Splits.eval_batches

    def eval_batches(self, split, size, *rest):
        asked.append((split, size))
        return cut(self, split, size, *rest)

    monkeypatch.setattr(Splits, "eval_batches", eval_batches)
    run = train(tiny())
    assert evaluate_run(run.path) == run.test_metrics()  # training, its test and eval alike
    assert ("val", 96) in asked and ("test", 96) in asked
    assert {size for split, size in asked if split in ("val", "test")} == {96}
    assert build(tiny("train.eval_batch_size=250")).eval_batch_size == 250  # as given


def test_a_tie_of_the_monitor_keeps_the_epoch_of_lower_validation_loss(tiny):
    """Accuracy on a small validation set ties often (100 % from an early epoch on): the
    first of equals kept an epoch whose other task was far worse."""
    rows = [
        {"epoch": 1, "val.cls.accuracy": 0.9, "val.loss": 0.9},
        {"epoch": 2, "val.cls.accuracy": 1.0, "val.loss": 0.5},
        {"epoch": 3, "val.cls.accuracy": 1.0, "val.loss": 0.3},  # the same, and lower loss
        {"epoch": 4, "val.cls.accuracy": 1.0, "val.loss": 0.4},
    ]
    assert best_row(rows, "val.cls.accuracy")["epoch"] == 3
    assert best_row(rows, "val.loss")["epoch"] == 3
    recipe = tiny("train.monitor=val.cls.accuracy")
    trainer = Trainer(build(recipe), RunFolder.create(recipe))
    for row in rows:  # as the loop sees each epoch's row
        trainer.state.epoch = row["epoch"]
        trainer._track_best(row)
    assert trainer.state.best_epoch == 3  # best.pt holds the epoch best_row names
    assert load_checkpoint(trainer.run.best_path)["loop"]["best_loss"] == 0.3
