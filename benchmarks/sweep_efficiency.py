"""Does TPE with early termination find the grid's best model for a fraction of its cost?

Both sides run here, in one process, on the same small space over the Fashion-MNIST demo
recipe (short epochs on a subset) and the same trial code (`cnnlab.sweeps`):

  grid   every configuration, every epoch                (GridSampler, no pruning)
  tpe    a fixed number of trials, W&B's hyperband rule  (TPESampler + SuccessiveHalvingPruner)

A trial is deterministic (seeded data order and init), so a configuration scores the same
in both sweeps; the question is only how much training each spends to find a good one.
Prints the best validation accuracy of each, their gap in percentage points, and the
trial-epochs each spent (the bar: gap <= 0.5 pp using <= 40% of the grid's trial-epochs).

    python benchmarks/sweep_efficiency.py [--trials 16] [--repeats 3] [--epochs 3]

Each repeat uses another recipe seed (data split, initialisation, sampler seed); the bar
is judged on the medians over the repeats. The same seed gives the same figures run after
run (the sampler is seeded and the pruner depends on nothing else).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from cnnlab.catalog import RECIPES
from cnnlab.sweeps.launch import sweep
from cnnlab.sweeps.results import load_trials

ROOT = Path(__file__).resolve().parent.parent
SPACE = """
metric: {name: val.cls.accuracy, goal: maximize}
parameters:
  train.optimizer.lr: {values: [0.0001, 0.001, 0.003, 0.01]}
  model.base_filters: {values: [4, 8]}
  model.activation: {values: [relu, gelu, silu]}
"""


def run(
    method: str, folder: Path, args, seed: int, extra: str = ""
) -> tuple[float, int, int, float]:
    """(best val accuracy, trial-epochs, trials, seconds) of one sweep."""
    file = folder / f"{method}{seed}.yaml"
    file.write_text(f"method: {method}\n{SPACE}{extra}")
    overrides = [
        f"data.train_subset={args.train_subset}",
        "data.val_fraction=0.4",  # 1,200 validation images: accuracy in steps of 0.08 pp
        f"train.epochs={args.epochs}",
        "train.threads=2",
        "train.device=cpu",
        "data.test_subset=100",
        f"seed={seed}",
    ]
    started = time.monotonic()
    trials = None if method == "grid" else args.trials
    out = sweep(RECIPES / "fashion_multitask.yaml", file, overrides, trials=trials,
                out=folder / f"out{seed}")  # fmt: skip
    seconds = time.monotonic() - started
    rows = load_trials(out, None)
    best = max(r.value for r in rows if r.state == "complete")
    return best, sum(r.epochs for r in rows), len(rows), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="TPE trials per sweep")
    parser.add_argument("--repeats", type=int, default=3, help="seeds to repeat both sweeps on")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of a full trial")
    parser.add_argument("--train-subset", type=int, default=3000, help="training images")
    args = parser.parse_args()
    hyperband = "early_terminate: {type: hyperband, min_iter: 1, eta: 3}\n"
    gaps, costs = [], []
    print(f"space: 4 lr x 2 base_filters x 3 activations = 24 configs, {args.epochs} epochs,")
    print(f"       {args.train_subset} training images, 40% held out for validation")
    for seed in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            grid = run("grid", Path(tmp), args, seed)
            tpe = run("bayes", Path(tmp), args, seed, hyperband)
        gaps.append((grid[0] - tpe[0]) * 100)
        costs.append(tpe[1] / grid[1])
        print(f"seed {seed}: grid best {grid[0]:.4f} ({grid[1]} trial-epochs, {grid[3]:.0f} s)  "
              f"tpe best {tpe[0]:.4f} ({tpe[1]} trial-epochs in {tpe[2]} trials, {tpe[3]:.0f} s)  "
              f"gap {gaps[-1]:+.2f} pp  cost {costs[-1]:.0%}", flush=True)  # fmt: skip
    gap, cost = statistics.median(gaps), statistics.median(costs)
    print(f"median gap {gap:+.2f} pp (bar <= 0.5), median cost {cost:.0%} of the grid's "
          "trial-epochs (bar <= 40%)")  # fmt: skip
    print("bar: " + ("met" if gap <= 0.5 and cost <= 0.4 else "NOT met"))


if __name__ == "__main__":
    main()
