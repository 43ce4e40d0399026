"""benchmarks/gpu_check.py keeps working where there is no GPU: `--device cpu --quick`, as
CI runs it, passes every stage (the host sync check says it does not apply)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STAGES = [
    "one device, fashion_fast",
    "ResNet-20, CIFAR-10-format data",
    "every device, torchrun",
    "kill and resume",
    "no host sync in a step",
]


@pytest.mark.slow
def test_the_gpu_check_passes_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = {i: line for line in out.splitlines() for i in range(1, 6) if line.startswith(f"[{i}/")}
    for i, stage in enumerate(STAGES, 1):
        assert lines[i].startswith(f"[{i}/5] PASS  {stage}: "), out
    assert re.search(r"precision: (fp32|bf16) \(auto", lines[1])  # the choice, and why
    assert "gloo" in lines[3] and "2 processes" in lines[3]
    assert "(SIGKILL), resumed" in lines[4] and "run's: equal (" in lines[4]  # exact on a CPU
    assert "not applicable" in lines[5]
    assert "| 4. kill and resume | PASS |" in out  # the summary table
    assert out.rstrip().splitlines()[-1].startswith("all stages PASS")
