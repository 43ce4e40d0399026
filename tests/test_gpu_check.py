"""benchmarks/gpu_check.py keeps working where there is no GPU: `--device cpu --quick`, as
CI runs it, passes every stage (the host sync check says it does not apply)."""

from __future__ import annotations

import re
import runpy
import sys

import pytest

from tests import cli_process
from tests.conftest import ROOT

STAGES = [
    "one device, fashion_fast",
    "ResNet-20, CIFAR-10-format data",
    "every device, torchrun",
    "kill and resume",
    "no host sync in a step",
]


SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*argv: str) -> None:
    """`python benchmarks/gpu_check.py ARGV`, in a process that starts already imported."""
    sys.argv = [str(SCRIPT), *argv]
    runpy.run_path(str(SCRIPT), run_name="__main__")


@pytest.mark.slow
def test_the_gpu_check_passes_on_the_cpu(tmp_path):
    args = ("--device", "cpu", "--quick", "--out", str(tmp_path))
    done = cli_process.Process(gpu_check, args, ROOT).wait(timeout=600)  # its stages fresh
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
