"""Is `cnnlab report` fast enough for a big study? Times it on 2,000 synthetic trials.

Builds a sweep folder the way `cnnlab sweep` does (journal study + one run folder per
trial with recipe.yaml and a 10-epoch metrics.jsonl), then times `build_report` (the bar:
under a minute for 2,000 trials). No training: the numbers are made up, the files real.

    python benchmarks/sweep_report_scale.py [--trials 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from cnnlab.catalog import RECIPES
from cnnlab.recipe import read_yaml
from cnnlab.sweeps.report import build_report
from cnnlab.sweeps.spec import apply_to
from cnnlab.sweeps.storage import open_storage
from cnnlab.sweeps.study import Settings, base_recipe, create_or_join

ROOT = Path(__file__).resolve().parent.parent
SWEEP = """method: random
metric: {name: val.cls.accuracy, goal: maximize}
parameters:
  train.optimizer.lr: {distribution: log_uniform_values, min: 0.0001, max: 0.01}
  model.base_filters: {values: [16, 32, 64]}
  model.activation: {values: [relu, gelu, silu, mish]}
  tasks.ink.weight: {values: [0.5, 1.0, 2.0]}
"""


def synthesize(folder_root: Path, n: int):
    base = base_recipe(read_yaml(RECIPES / "fashion_multitask.yaml"), "recipe")
    sweep_file = folder_root / "big.yaml"
    sweep_file.write_text(SWEEP)
    settings = Settings(method="random", metric="val.cls.accuracy", goal="maximize", trials=n)
    folder = create_or_join(folder_root / "out", None, base, sweep_file, None, settings)
    spec = folder.spec()
    study = optuna.create_study(study_name=folder.meta().study, direction="maximize",
                                storage=open_storage(None, folder.path, 10))  # fmt: skip
    rng = random.Random(0)
    dists = {p.name: p.form.space() for p in spec.params}
    for number in range(n):
        params = {
            "train.optimizer.lr": 10 ** rng.uniform(-4, -2),
            "model.base_filters": rng.choice([16, 32, 64]),
            "model.activation": rng.choice(["relu", "gelu", "silu", "mish"]),
            "tasks.ink.weight": rng.choice([0.5, 1.0, 2.0]),
        }
        recipe = apply_to(base, spec.overrides(params))
        recipe["train"]["monitor"] = "val.cls.accuracy"
        run = folder.runs_path / f"trial{number:04d}-20260101-000000"
        run.mkdir(parents=True)
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        skill = 0.9 - abs(params["train.optimizer.lr"] - 0.002) * 20 + rng.gauss(0, 0.01)
        rows = [
            {"epoch": e, "val.loss": 1 / e, "val.cls.accuracy": skill * (1 - 0.5 / e),
             "val.ink.rmse": 0.03 / e + rng.random() * 0.005}
            for e in range(1, 11)
        ]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, value=rows[-1]["val.cls.accuracy"],
                user_attrs={"run_dir": f"runs/{run.name}", "epochs": 10},
                intermediate_values={r["epoch"]: r["val.cls.accuracy"] for r in rows},
            )
        )  # fmt: skip
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        folder = synthesize(Path(tmp), args.trials)
        made = time.monotonic() - started
        started = time.monotonic()
        html = build_report(folder, None, "tasks.ink.weight")
        seconds = time.monotonic() - started
        size = html.stat().st_size / 1e6
    print(f"{args.trials} trials synthesized in {made:.0f} s")
    print(f"report: {seconds:.1f} s for {args.trials} trials ({size:.1f} MB html); bar < 60 s: "
          + ("met" if seconds < 60 else "NOT met"))  # fmt: skip


if __name__ == "__main__":
    main()
