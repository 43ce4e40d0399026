"""A GPU check ready to run: what cnnlab claims about GPUs, tried on one, stage by stage.

1. one device: the demo recipe (fashion_fast, its 12 epochs) as `cnnlab train` trains it:
   the precision `auto` chose and why, training images/s, and the seconds of training until
   Fashion-MNIST test accuracy first reaches 93 % (benchmarks/time_to_accuracy.py's own
   measurement; not reaching it fails the stage);
2. ResNet-20 (cifar10_resnet20, 3 epochs) on CIFAR-10-format data read by the `cifar10`
   source: the real files where cnnlab finds them (or --cifar-root), else files generated
   in the official layout (50,000 + 10,000 images, each class a pattern under noise);
   images/s and precision;
3. every device under torchrun: the demo with one process per GPU, joined by NCCL (with
   --device cpu: 2 processes, gloo); every epoch must be there with finite losses;
4. kill and resume: the demo (3 epochs, a checkpoint every half second) started as
   `cnnlab train`, killed with SIGKILL in its second epoch, resumed from its last
   checkpoint, its metrics and test compared with an uninterrupted run of the same recipe
   and seed, both with `train.deterministic: true`: equal, on a GPU too (cuDNN's autotuned
   algorithms differ from process to process, and made an H200's resumed run differ by up
   to 8 % in a metric: precision.tune_cuda); its images/s show what determinism costs;
5. no host synchronization: 10 training steps of each recipe, after 3 of warm-up, with
   `torch.cuda.set_sync_debug_mode("error")`: a batch drawn or a step that waits for the
   GPU fails the stage (on a CPU: not applicable, and said so).

Each stage prints one line as it ends, PASS or FAIL with its figures; a markdown table
sums them up and the exit status is 1 when any stage failed. `--quick` shrinks the stages
to seconds (a thousand images, 1-3 epochs; stage 4 with checkpoints every 50 ms) and
starts the processes of stages 3 and 4 at the outset: CI runs `--device cpu --quick` so the
script keeps working where there is no GPU (tests/test_gpu_check.py); its figures mean
nothing. On a CPU the stages are always --quick's: the full ones are sized for a GPU (the
demo to 93 %, ResNet-20 on 50,000 images) and would take an hour there to prove nothing.
Run folders go to a temporary folder (or --out). The Fashion-MNIST files must be on the
machine (`cnnlab fetch fashion_mnist`, or --fashion-root).

    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--quick]
        [--cifar-root DIR] [--fashion-root DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.time_to_accuracy import one_seed
from cnnlab.build import build
from cnnlab.catalog import recipe_file
from cnnlab.data import cifar10
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.loop import Trainer
from cnnlab.recipe import load_recipe
from cnnlab.runs import RunFolder, device_name, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO, RESNET = "fashion_fast", "cifar10_resnet20"
TARGET = 0.93  # Fashion-MNIST test accuracy the demo is known to reach (docs/benchmarks.md)
# seconds on a CPU: a thousand images, no temperature fitted after training
QUICK_DEMO = ["data.train_subset=1000", "data.test_subset=200", "train.calibrate=false"]
TIMING = {"seconds", "images_per_s"}  # metrics columns that are clocks, not results
# resumed against uninterrupted, deterministic on any device: (relative, absolute) tolerance
TOLERANCE = (1e-6, 1e-9)
WARMUP_STEPS, CHECKED_STEPS = 3, 10  # the sync check: kernels picked first, then watched


@dataclass
class Check:
    """What every stage needs: the command line's choices and the folder runs go to."""

    device: str  # cpu | cuda
    quick: bool
    out: Path
    cifar_root: str | None
    fashion_root: str | None
    precision: str | None = None  # stage 1's choice, pinned in the demo's later runs
    cifar: tuple[str, str] | None = None  # (data.root, what it holds), once found or made
    pool: ThreadPoolExecutor = field(default_factory=ThreadPoolExecutor)
    started: dict[str, Future] = field(default_factory=dict)  # runs of other processes

    def begin(self, key: str, start: Callable[[Check], Any]) -> Future:
        """`start(check)` in a thread, once: a stage waits for what it started, or for
        what --quick started at the outset."""
        if key not in self.started:
            self.started[key] = self.pool.submit(start, self)
        return self.started[key]

    def pinned(self) -> str:
        """The precision of the demo's runs in other processes: stage 1's choice, so that
        none times it again; fp32 when --quick starts them before stage 1 on a CPU."""
        if self.precision is not None:
            return self.precision
        return "fp32" if self.device == "cpu" else "auto"

    def sets(self, folder: str, *more: str) -> list[str]:
        """Recipe overrides every run shares: its own output folder, the device, quiet."""
        base = [f"output_dir={self.out / folder}", f"train.device={self.device}"]
        return [*base, "train.progress=false", "train.report=false", *more]

    def demo_sets(self, folder: str, *more: str) -> list[str]:
        """The demo's overrides: the Fashion-MNIST folder, --quick's subset."""
        root = [f"data.root={self.fashion_root}"] if self.fashion_root else []
        return self.sets(folder, *root, *(QUICK_DEMO if self.quick else []), *more)


@dataclass
class Outcome:
    """What a stage found: its figures, and why it fails (None: it passes)."""

    figures: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


# ------------------------------------------------------------------- helpers


def finite_run(run: RunFolder, epochs: int) -> str | None:
    """What is wrong with a finished run's metrics (None: every epoch there, losses finite)."""
    rows = run.read_metrics()
    if [r["epoch"] for r in rows] != list(range(1, epochs + 1)):
        return f"epochs {[r['epoch'] for r in rows]}, expected 1..{epochs}"
    bad = [f"{k} {r[k]} at epoch {r['epoch']}" for r in rows for k in r if _not_finite(k, r[k])]
    if bad:
        return "not finite: " + ", ".join(bad[:3])
    if run.status().get("state") != "finished":
        return f"run state {run.status().get('state')!r}, not finished"
    return None


def _not_finite(key: str, value: object) -> bool:
    return key.endswith("loss") and not (isinstance(value, float) and math.isfinite(value))


def median_rate(run: RunFolder) -> float:
    """Training images/s, the median epoch (the first pays for picking kernels)."""
    rates = sorted(r["images_per_s"] for r in run.read_metrics())
    return rates[len(rates) // 2]


def chosen_precision(run: RunFolder) -> str:
    """The precision env.json recorded, and how it was chosen."""
    env = json.loads((run.path / "env.json").read_text())
    p = env["precision"]
    return f"{p['precision']} ({p['how']}{': ' + p['reason'] if p.get('reason') else ''})"


def only_run(folder: Path) -> RunFolder:
    (path,) = [p for p in folder.iterdir() if p.is_dir()]
    return RunFolder.open(path)


def cnnlab_command(args: list[str], processes: int = 1) -> list[str]:
    """`cnnlab ...` as a user starts it: one process, or under torchrun on a free port."""
    if processes == 1:
        return [sys.executable, "-m", "cnnlab", *args]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, "--nproc_per_node", str(processes), "-m", "cnnlab", *args]


def set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


# -------------------------------------------------------------- 1. one device


def one_device(check: Check) -> Outcome:
    """The demo as it trains, timed to 93 % by time_to_accuracy.py's own function."""
    epochs = ["train.epochs=1"] if check.quick else []
    folder = check.out / "one_device"  # one_seed sets output_dir itself
    r = one_seed(DEMO, 0, TARGET, check.demo_sets("one_device", *epochs), str(folder))
    check.precision = r["precision"]
    run = RunFolder.open(r["run"])
    wrong = finite_run(run, r["epochs"])
    best = max(acc for _, acc in r["curve"])
    if r["seconds_to_target"] is not None:
        epoch = next(i for i, (_, a) in enumerate(r["curve"], 1) if a >= TARGET)
        reached = f"{TARGET:.0%} test accuracy after {r['seconds_to_target']:.1f} s (epoch {epoch})"
    else:
        reached = f"{TARGET:.0%} not reached in {r['epochs']} epoch(s), best {best:.2%}"
        if check.quick:
            reached += " (--quick: not expected)"
        elif wrong is None:
            wrong = "the demo did not reach its target"
    figures = (
        f"{r['precision_why']}; {r['images_per_s']:,.0f} images/s; {reached}; "
        f"final test accuracy {r['accuracy']:.2%}"
    )
    return Outcome(figures, wrong)


# ------------------------------------------------------- 2. ResNet-20, CIFAR-10


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """One batch as the official files hold it: a protocol-2 pickle of a dict with bytes
    keys, images as uint8 rows of 3,072 values (1,024 red, then green, then blue)."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": labels.tolist(),
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"synthetic_{i:05d}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def synthetic_cifar(root: Path, per_batch: int, n_test: int) -> Path:
    """`root/cifar-10-batches-py` in the official layout, with images a network can learn:
    each class a fixed random pattern, half-hidden under noise (accuracy then means
    something, unlike labels on pure noise)."""
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (10, cifar10.PIXELS), dtype=np.uint16)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n)
        noise = rng.integers(0, 256, (n, cifar10.PIXELS), dtype=np.uint16)  # 60 MB a batch
        return ((patterns[labels] + noise) // 2).astype(np.uint8), labels

    for i, name in enumerate(cifar10.TRAIN, 1):
        write_cifar_batch(folder / name, *draw(per_batch), f"training batch {i} of 5")
    write_cifar_batch(folder / "test_batch", *draw(n_test), "testing batch 1 of 1")
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [n.encode() for n in cifar10.CLASSES],
        b"num_vis": cifar10.PIXELS,
    }
    with open(folder / cifar10.META, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def cifar_data(check: Check) -> tuple[str, str]:
    """(data.root, what it holds), found or made once: --cifar-root, else the CIFAR-10
    cnnlab finds without downloading, else generated files (official sizes, or 2,000
    training images with --quick)."""
    if check.cifar is None:
        check.cifar = _cifar_data(check)
    return check.cifar


def _cifar_data(check: Check) -> tuple[str, str]:
    if check.cifar_root:
        files = cifar10.locate(check.cifar_root, allow_download=False)
        return str(files[cifar10.META].parent), "CIFAR-10"
    try:
        files = cifar10.locate(None, allow_download=False)
        return str(files[cifar10.META].parent), "CIFAR-10 (found)"
    except CnnlabError:
        per_batch, n_test = (400, 100) if check.quick else (10_000, 10_000)
        folder = synthetic_cifar(check.out / "cifar", per_batch, n_test)
        return str(folder), f"generated CIFAR-10-format data, {5 * per_batch:,} images"


def resnet(check: Check) -> Outcome:
    """ResNet-20 through the `cifar10` source: the precision chosen and images/s."""
    root, what = cifar_data(check)
    # --quick: 200 images (real ones too) in batches of 16, which auto times on a CPU
    quick = ["data.train_subset=200", "data.test_subset=50", "train.batch_size=16"]
    epochs = 1 if check.quick else 3
    sets = [f"data.root={root}", f"train.epochs={epochs}", *(quick if check.quick else [])]
    run = train(load_recipe(recipe_file(RESNET), check.sets("resnet", *sets)))
    wrong = finite_run(run, epochs)
    trained = " (--quick: 200 of them)" if check.quick else ""
    figures = (
        f"{what}{trained}; precision {chosen_precision(run)}; {median_rate(run):,.0f} "
        f"images/s; {epochs} epoch(s), test accuracy "
        f"{run.test_metrics()['test.cls.accuracy']:.2%}"
    )
    return Outcome(figures, wrong)


# ------------------------------------------------------------ 3. every device


def processes(check: Check) -> int:
    """One process per GPU; 2 on a CPU (gloo), the fewest that make a group."""
    return torch.cuda.device_count() if check.device == "cuda" else 2


def torchrun(check: Check) -> tuple[subprocess.CompletedProcess, float, str]:
    """`torchrun -m cnnlab train` on the demo: (the finished process, seconds, precision)."""
    precision = check.pinned()
    epochs = 2 if check.quick else 8  # the demo's own 8
    sets = check.demo_sets("torchrun", f"train.epochs={epochs}", f"train.precision={precision}")
    started = time.monotonic()
    done = subprocess.run(
        cnnlab_command(["train", str(recipe_file(DEMO)), *set_args(sets)], processes(check)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300 if check.quick else 1800,
    )
    return done, time.monotonic() - started, precision


def all_devices(check: Check) -> Outcome:
    """The demo under torchrun, one process per GPU (NCCL), or 2 CPU processes (gloo)."""
    n = processes(check)
    backend = "nccl" if check.device == "cuda" else "gloo"
    if n == 1:
        backend = "none: one GPU, one process, no group to join"
    done, seconds, precision = check.begin("torchrun", torchrun).result()
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        return Outcome(f"{n} processes, exit {done.returncode}", "\n".join(tail))
    run = only_run(check.out / "torchrun")
    epochs = run.recipe().train.epochs
    env = json.loads((run.path / "env.json").read_text())
    wrong = finite_run(run, epochs)
    if wrong is None and env["processes"] != n:
        wrong = f"env.json says {env['processes']} processes, not {n}"
    figures = (
        f"{n} processes, backend {backend}, {precision}; {median_rate(run):,.0f} images/s "
        f"(all processes); {epochs} epochs, losses finite, test accuracy "
        f"{run.test_metrics()['test.cls.accuracy']:.2%}; {seconds:.0f} s with start-up"
    )
    return Outcome(figures, wrong)


# ----------------------------------------------------------- 4. kill and resume


def resumable(check: Check) -> list[str]:
    """The demo's overrides for the run that is killed and its uninterrupted twin:
    checkpoints every few steps, so that the kill lands mid-epoch."""
    epochs, every = (3, 0.05) if check.quick else (3, 0.5)  # checkpoint every `every` s
    more = [f"train.epochs={epochs}", f"train.checkpoint_minutes={every / 60}"]
    pinned = [f"train.precision={check.pinned()}", "train.deterministic=true"]
    return [*more, "train.calibrate=false", *pinned]


def killed(check: Check) -> RunFolder:
    """Start `cnnlab train`, SIGKILL it once its first epoch is written and two later
    checkpoints have replaced the one seen then (mid-epoch 2 when checkpoints come often:
    the data generator's state is restored as well); the folder it leaves behind."""
    folder = check.out / "killed"
    sets = check.demo_sets("killed", *resumable(check))
    cmd = cnnlab_command(["train", str(recipe_file(DEMO)), *set_args(sets)])
    with open(check.out / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            return _kill_when_due(proc, folder)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _kill_when_due(proc: subprocess.Popen, folder: Path) -> RunFolder:
    run, seen = None, set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CnnlabError(
                f"the run ended (exit {proc.returncode}) before it was killed; "
                f"its output: {folder.parent / folder.name}.log"
            )
        run = run or _opened(folder)
        if run is not None and run.read_metrics():
            seen.add(_identity(run.last_path))
            seen.discard(None)  # epoch 1 written, its checkpoint not yet
            if len(seen) == 3:  # two checkpoints after the one seen with epoch 1's row
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return run
        time.sleep(0.02)
    raise CnnlabError("the run wrote no epoch within 10 minutes")


def _opened(folder: Path) -> RunFolder | None:
    """The run folder once `cnnlab train` has made it (None before)."""
    paths = [p for p in folder.glob("*") if p.is_dir()] if folder.is_dir() else []
    try:
        return RunFolder.open(paths[0]) if paths else None
    except (CnnlabError, OSError):
        return None  # still being written


def _identity(path: Path) -> tuple[int, int] | None:
    """A checkpoint file's identity: checkpoints are replaced atomically (a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def largest_gap(a: list[dict], b: list[dict], rel: float, abs_: float) -> tuple[float, str]:
    """The metric furthest outside math.isclose(rel, abs): (its gap over the tolerance,
    a description); a gap up to 1 is within tolerance."""
    worst, where = 0.0, ""
    for ra, rb in zip(a, b, strict=True):
        for key in sorted(ra.keys() - TIMING):
            x, y = float(ra[key]), float(rb.get(key, math.nan))
            gap = abs(x - y) / max(rel * max(abs(x), abs(y)), abs_)
            if not gap <= worst:  # NaN counts as the worst
                worst, where = gap, f"{key} {x:.6g} vs {y:.6g} (epoch {ra.get('epoch', 'test')})"
    return worst, where


def kill_and_resume(check: Check) -> Outcome:
    """Killed, resumed, compared with the same recipe and seed trained without a break."""
    run = check.begin("killed", killed).result()
    loop = load_checkpoint(run.last_path)["loop"]
    where = f"killed at epoch {loop['epoch'] + 1}, step {loop['step']}"
    resumed = train(run.recipe(), resume=run.path)
    epochs = resumed.recipe().train.epochs
    twin = run.recipe().model_copy(update={"output_dir": str(check.out / "uninterrupted")})
    reference = train(twin)  # the killed run's own recipe, whatever was pinned when
    wrong = finite_run(resumed, epochs)
    rel, abs_ = TOLERANCE
    a = [*reference.read_metrics(), reference.test_metrics()]
    b = [*resumed.read_metrics(), resumed.test_metrics()]
    gap, worst = largest_gap(a, b, rel, abs_)
    if wrong is None and gap > 1:
        wrong = f"resumed differs from uninterrupted beyond rel {rel:g} / abs {abs_:g}: {worst}"
    compared = f"{epochs} epochs' metrics and the test against an uninterrupted run's"
    if gap == 0:
        compared += ": equal"
    else:
        compared += f": {worst}, {gap:.2g} of the tolerance (rel {rel:g}, abs {abs_:g})"
    rate = f"deterministic: {median_rate(reference):,.0f} images/s"
    figures = f"{twin.train.precision}, {rate}, {where} (SIGKILL), resumed; {compared}"
    return Outcome(figures, wrong)


# --------------------------------------------------------------- 5. host sync


def host_sync(check: Check) -> Outcome:
    """Training steps with torch's sync debug mode set to raise: a step that waits for the
    GPU (`.item()`, a copy to the host, a data-dependent shape) fails the stage."""
    if check.device != "cuda":
        return Outcome("not applicable: no CUDA on --device cpu (nothing to check)")
    lines, problems = [], []
    for name, sets in sync_recipes(check):
        trainer = Trainer(build(load_recipe(recipe_file(name), check.sets("sync", *sets))))
        trouble = watched_steps(trainer)
        precision = trainer.precision.precision
        lines.append(f"{name} ({precision}): {trouble or f'{CHECKED_STEPS} steps, no sync'}")
        problems += [f"{name}: {trouble}"] if trouble else []
    return Outcome("; ".join(lines), "; ".join(problems) or None)


def sync_recipes(check: Check) -> list[tuple[str, list[str]]]:
    """The two recipes on a few thousand images: quick to load, and one epoch holds the
    steps watched (a new epoch's shuffle is not a step)."""
    fashion = [f"data.root={check.fashion_root}"] if check.fashion_root else []
    cifar = [f"data.root={cifar_data(check)[0]}"]
    few = ["data.train_subset=4000", "data.test_subset=100"]
    return [(DEMO, [*fashion, *few]), (RESNET, [*cifar, *few])]


def watched_steps(trainer: Trainer) -> str | None:
    """WARMUP_STEPS steps unwatched (cuDNN's autotuning and the allocator may sync), then
    CHECKED_STEPS with every sync an error: the batch drawn, then the step. What synced,
    or None."""
    cfg = trainer.recipe
    if trainer.steps_per_epoch < WARMUP_STEPS + CHECKED_STEPS:
        raise CnnlabError(f"{trainer.steps_per_epoch} steps an epoch: too few to watch")
    gen = torch.Generator(device=trainer.device).manual_seed(cfg.seed)
    batches = trainer.splits.train_batches(
        cfg.train.batch_size, gen, cfg.data.augment, trainer.needed
    )
    trainer.model.train()
    for _ in range(WARMUP_STEPS):
        trainer.train_step(*next(batches))
    torch.cuda.synchronize()
    part = "drawing a batch"
    try:
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(CHECKED_STEPS):
            part = "drawing a batch"
            x, targets = next(batches)
            part = "Trainer.train_step"
            trainer.train_step(x, targets)
    except RuntimeError as err:
        return f"{part} synchronized: {str(err).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return None


# ------------------------------------------------------------------- main

STAGES: list[tuple[str, Callable[[Check], Outcome]]] = [
    (f"one device, {DEMO}", one_device),
    ("ResNet-20, CIFAR-10-format data", resnet),
    ("every device, torchrun", all_devices),
    ("kill and resume", kill_and_resume),
    ("no host sync in a step", host_sync),
]


def run_stage(number: int, title: str, stage: Callable[[Check], Outcome], check: Check) -> Outcome:
    """One stage, its line printed as it ends; an exception is its FAIL, traceback on stderr."""
    started = time.monotonic()
    try:
        outcome = stage(check)
    except Exception as err:  # every failure is this stage's FAIL line, the next stage runs
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0]
        outcome = Outcome(f"{type(err).__name__}: {first}", "the traceback is on stderr")
    mark = "PASS" if outcome.ok else "FAIL"
    took = time.monotonic() - started
    print(f"[{number}/{len(STAGES)}] {mark}  {title}: {outcome.figures} ({took:.1f} s)")
    if outcome.problem:
        print(f"      {outcome.problem}")
    sys.stdout.flush()
    return outcome


def summary(outcomes: list[Outcome]) -> str:
    """A markdown table of the stages (the docs' benchmarks page takes it as it is)."""
    rows = ["| stage | result | figures |", "| --- | --- | --- |"]
    for i, ((title, _), o) in enumerate(zip(STAGES, outcomes, strict=True), 1):
        figures = o.figures.replace("|", "/")
        rows.append(f"| {i}. {title} | {'PASS' if o.ok else 'FAIL'} | {figures} |")
    return "\n".join(rows)


def header(check: Check) -> str:
    device = torch.device("cuda" if check.device == "cuda" else "cpu")
    count = f", {torch.cuda.device_count()} GPU(s)" if check.device == "cuda" else ""
    cuda = f", CUDA {torch.version.cuda}" if check.device == "cuda" else ""
    mode = "--quick (sizes for CI, not figures)" if check.quick else "full"
    return (
        f"gpu_check on {device_name(device)}{count}: torch {torch.__version__}{cuda}, "
        f"{torch.get_num_threads()} CPU threads, {mode}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="seconds per stage (CI)")
    parser.add_argument("--cifar-root", help="folder holding cifar-10-batches-py")
    parser.add_argument("--fashion-root", help="folder holding the Fashion-MNIST files")
    parser.add_argument("--out", type=Path, help="keep the run folders here (default: temp)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible; --device cpu checks the script itself")
    if args.device == "cpu" and not args.quick:
        print("--device cpu: the stages at --quick's sizes (the full ones are a GPU's)")
        args.quick = True
    # stage 4 trains deterministically in this process too, after the first stages have
    # used cuBLAS: it reads its workspace setting once, so it must be set before them
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        check = Check(args.device, args.quick, out, args.cifar_root, args.fashion_root)
        print(header(check), flush=True)
        if check.quick:  # their processes start while this one trains: half the wait
            check.begin("torchrun", torchrun)
            check.begin("killed", killed)
        with check.pool:
            outcomes = [run_stage(i, *stage, check) for i, stage in enumerate(STAGES, 1)]
    print(summary(outcomes))
    failed = [title for (title, _), o in zip(STAGES, outcomes, strict=True) if not o.ok]
    verdict = f"FAIL: {', '.join(failed)}" if failed else "all stages PASS"
    print(f"{verdict} in {time.monotonic() - started:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
