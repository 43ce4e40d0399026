"""Inductor-compiled CPU kernels for the layers where aten's are slow (Mish, 2×2 max-pool).

A layer's forward and backward are plain tensor functions compiled on first use. Anything
the compiled path does not cover runs aten's op with the same result: other devices, small
tensors, functorch transforms, code being compiled, `CNNLAB_FAST_ACT=0`, and any failure to
compile (no C++ compiler on the machine, for example), after which that kernel pair is
switched off for the process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Smaller tensors run aten: nothing to gain there, and it keeps the compiled variants few
# (dynamo specialises sizes 0 and 1 and recompiles at most 8 times per function).
MIN_NUMEL = 1 << 14


class Kernels:
    """A compiled (forward, backward) pair, built on first use; `failed` once compiling or
    running broke. `dynamic`: whether sizes are symbolic (False: the caller marks the
    dimensions that vary with torch._dynamo.mark_dynamic, the others are specialised)."""

    def __init__(self, name: str, forward: Callable, backward: Callable, dynamic: bool = True):
        self.name, self.sources, self.dynamic = name, (forward, backward), dynamic
        self.forward: Callable | None = None
        self.backward: Callable | None = None
        self.failed = os.environ.get("CNNLAB_FAST_ACT", "1") == "0"

    def get(self) -> tuple[Callable, Callable] | None:
        if self.failed:
            return None
        if self.forward is None:
            # Inductor's C++ toolchain lookup warns about CUDA_HOME on a machine without CUDA,
            # which has nothing to do with a CPU kernel; a run's output should not carry it.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            self.forward, self.backward = (
                torch.compile(fn, dynamic=self.dynamic, fullgraph=True) for fn in self.sources
            )
        return self.forward, self.backward

    def disable(self, err: BaseException) -> None:
        self.failed = True
        log.info("fused %s unavailable, using aten's: %s: %s", self.name, type(err).__name__, err)


def transforming() -> bool:
    """Inside a torch.func transform (vmap, grad), where the plain formula must run. torch
    has no public test for it; the private one is looked up, so a torch without it
    costs only this check (then a transform over the layer fails loudly, never silently)."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def usable(x: torch.Tensor, kernels: Kernels) -> bool:
    """Whether the compiled pair may run on x (see the module docstring)."""
    return (
        x.device.type == "cpu"
        and x.dtype in FAST_DTYPES
        and x.numel() >= MIN_NUMEL
        and not kernels.failed
        and not transforming()
        and not torch.compiler.is_compiling()
    )
