"""A `cnnlab` command collects its oldest generation rarely and leaves without walking its
heap (cnnlab/collector.py); Python used as a library keeps its defaults."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import atexit, gc
atexit.register(lambda: print("collector", gc.get_threshold()[2], gc.get_freeze_count() > 0))
"""


def test_a_command_sets_the_collector_and_freezes_its_heap_before_it_exits(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    args = [sys.executable, "-m", "cnnlab.cli", "--import", str(tmp_path / "probe.py"), "recipes"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    third = 100 if sys.version_info < (3, 14) else 0  # 3.14's incremental collector: none
    assert out.stdout.splitlines()[-1] == f"collector {third} True"  # at exit, after it ran


def test_python_using_cnnlab_keeps_its_own_collector():
    code = (
        "import gc; before = gc.get_threshold(); import cnnlab, cnnlab.cli; "
        "print(gc.get_threshold() == before, gc.get_freeze_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "0"], out.stderr
