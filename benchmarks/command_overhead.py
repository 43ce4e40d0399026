"""Where a whole `cnnlab train` goes besides its epochs: seed 002's 224 px recipe on a first run.

The command is what a user types, `cnnlab train inat_scratch --set data.root=...`, run as a
subprocess on an iNaturalist-layout folder of generated JPEGs (benchmarks/image_folder.py's,
640 training images + 160 in val/ by default, as seed 002's short check), with every cache
empty as on a fresh machine: the decode cache, the precision pick and torch's compiled
kernels (each in a fresh folder). Every line the command writes is stamped with the seconds
since it started, so the phases show where they begin; the summary splits the wall time
into the epochs (the loop's own seconds per epoch, training + validation, from
metrics.jsonl) and everything else (the report the command writes included), then times
the report alone: the whole `cnnlab report` command of the finished run, and the part the
page's own clock counts (after the imports: data, the test pass, the figures); once with
the test predictions the first report kept (checkpoints/best_test.pt), as a user's next
report is, and once without them, as a run's first look is.

Bars (issue 33): at most 30 s beyond the epochs on a first run; the report's figures in at
most 15 s.

    PYTHONPATH=. .venv/bin/python benchmarks/command_overhead.py [--images 640] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.image_folder import make_folder
from cnnlab.runs import device_name

CNNLAB = [sys.executable, "-m", "cnnlab.cli"]


def stamped(cmd: list[str], env: dict[str, str]) -> float:
    """Run `cmd`, echoing each output line with its second; the wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line.strip():
            print(f"  {time.perf_counter() - start:6.1f} s  {line[:150]}", flush=True)
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd[2:4])} failed (exit {proc.returncode})")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "inat", Path(tmp) / "runs"
        make_folder(root, args.images)
        env = {
            **os.environ,
            "XDG_CACHE_HOME": str(Path(tmp) / "cache"),  # no decode cache, no precision pick
            "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor"),  # kernels compiled afresh
        }
        sets = [f"data.root={root}", f"train.epochs={args.epochs}", f"output_dir={out}"]
        sets += ["train.progress=false", *args.sets]
        print(f"cnnlab train inat_scratch, {args.images} images, {args.epochs} epochs, first run")
        wall = stamped([*CNNLAB, "train", "inat_scratch", *(f"--set={s}" for s in sets)], env)
        (run,) = out.iterdir()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = sum(r["seconds"] for r in rows if "seconds" in r)
        reports = []
        for kept in (True, False):  # as a user's next report; as a run's first look
            if not kept:
                (run / "checkpoints" / "best_test.pt").unlink()
            print(f"cnnlab report {run.name} ({'test predictions kept' if kept else 'none kept'})")
            seconds = stamped([*CNNLAB, "report", str(run)], env)
            page = re.search(r"report built .* in ([\d.]+) s", (run / "report.html").read_text())
            reports.append(f"{seconds:.1f} s (its page {page.group(1)} s)")
    print(
        f"wall {wall:.1f} s = epochs {epochs:.1f} s + {wall - epochs:.1f} s besides "
        f"(bar: 30 s); the report, the whole command (bar: 15 s), with the test predictions "
        f"the first report kept: {reports[0]}; without (a test pass): {reports[1]}; "
        f"host {device_name(torch.device('cpu'))}",
        flush=True,
    )


if __name__ == "__main__":
    main()
