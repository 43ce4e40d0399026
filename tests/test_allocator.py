"""The process keeps freed memory: a step that frees and reallocates large maps stops
faulting pages in from the kernel. Each case runs in its own process, as the policy is
process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cnnlab.allocator import glibc

# Allocate, touch and free a 64 MB map (larger than glibc's adaptive mmap limit) as a step's
# activations are; report the page faults of eight steps after ten. The first few steps grow
# the heap until freed blocks coalesce into one that fits; after that no page is new.
PROBE = """
import json, resource, torch
from cnnlab.allocator import keep_freed_memory
kept = keep_freed_memory()
def step():
    x = torch.ones(16 * 2**20)
    return float(x[-1])
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"kept": kept, "faults": (after - before) / 8}))
"""


def _probe(keep: str) -> dict:
    env = {**os.environ, "CNNLAB_KEEP_FREED": keep}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    glibc() is None, reason="the policy is glibc's mallopt; other C libraries keep theirs"
)
def test_freed_maps_are_reused_without_page_faults():
    kept, system = _probe("1"), _probe("0")
    assert kept["kept"] and not system["kept"]
    # glibc's own policy maps the 64 MB afresh every time: one fault per 4 KB page
    assert system["faults"] > 10_000
    assert kept["faults"] < system["faults"] / 100
