"""Inductor-compiled CPU kernels for the layers where aten's are slow (Mish, 2×2 max-pool).

A layer's forward and backward are plain tensor functions compiled on first use, and only
inside a `compiled_kernels(True)` block: where cnnlab decided the work pays for compiling,
the training loop (`train.fused_kernels`) and a loss landscape's many passes. One pass over
a split (`cnnlab eval`, `calibrate`, `predict`, export's check, the figures) or a user's own
call of the model runs without them: seed 002's `cnnlab eval` took 17.4 s with them on an
empty kernel cache and 9.6 s on a warm one, against 6.8 s without (its `cnnlab predict` of
13 images 16.8 and 8.0 s, against 3.6). Anything the compiled path does not cover runs
aten's op with the same result: other devices, small tensors, functorch transforms, code
being compiled or exported, `CNNLAB_FAST_ACT=0`, and any failure to compile (no C++
compiler on the machine, for example), after which that kernel pair is switched off for
the process. (A layer may have a second, uncompiled path of its own for where the compiled
one is off: Mish does, cnnlab/models/activations.py.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar

import torch

log = logging.getLogger(__name__)

FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Smaller tensors run aten: nothing to gain there, and it keeps the compiled variants few
# (dynamo specialises sizes 0 and 1 and recompiles at most 8 times per function).
MIN_NUMEL = 1 << 14
OFF = os.environ.get("CNNLAB_FAST_ACT", "1") == "0"  # aten's ops everywhere
_ALLOWED: ContextVar[bool] = ContextVar("cnnlab_fused_kernels", default=False)


@contextlib.contextmanager
def compiled_kernels(enabled: bool) -> Iterator[None]:
    """Allow (or not) the compiled kernels in the code this wraps, this thread only."""
    token = _ALLOWED.set(enabled)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


class Kernels:
    """Compiled (forward, backward) pairs, built on first use; `failed` once compiling or
    running broke.

    With `dynamic`, one pair serves every size. Without, sizes are specialised (a symbolic
    size can cost a loop its vectorisation) and each `key` (the sizes that matter) gets its
    own pair, compiled from its own copy of the functions: dynamo keeps at most 8 variants
    per code object, and a network's layers, two precisions or a sweep over widths need
    more."""

    def __init__(self, name: str, forward: Callable, backward: Callable, dynamic: bool = True):
        self.name, self.sources, self.dynamic = name, (forward, backward), dynamic
        self.compiled: dict[Hashable, tuple[Callable, Callable]] = {}
        self.failed = OFF

    def get(self, key: Hashable = None) -> tuple[Callable, Callable] | None:
        if self.failed:
            return None
        if key not in self.compiled:
            # Inductor's C++ toolchain lookup warns about CUDA_HOME on a machine without CUDA,
            # which has nothing to do with a CPU kernel; a run's output should not carry it.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            tag = len(self.compiled)
            fns = self.sources if self.dynamic else tuple(_copy(f, tag) for f in self.sources)
            forward, backward = (
                torch.compile(fn, dynamic=self.dynamic, fullgraph=True) for fn in fns
            )
            self.compiled[key] = (forward, backward)
        return self.compiled[key]

    def run(self, direction: int, *tensors: torch.Tensor, key: Hashable = None):
        """The compiled forward (0) or backward (1) on `tensors`, outside autocast (the
        kernels do their own fp32 arithmetic); None when it is off or fails, after which it
        stays off and the caller runs aten's."""
        pair = self.get(key)
        if pair is None:
            return None
        try:
            with torch.autocast("cpu", enabled=False):
                return pair[direction](*tensors)
        except Exception as err:  # no compiler, inductor bug: aten from now on
            self.disable(err)
            return None

    def disable(self, err: BaseException) -> None:
        self.failed = True
        log.info("fused %s unavailable, using aten's: %s: %s", self.name, type(err).__name__, err)


def _copy(fn: Callable, tag: int) -> Callable:
    """The same function with its own code object, so its compiled variants are its own."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def transforming() -> bool:
    """Inside a torch.func transform (vmap, grad), where the plain formula must run. torch
    has no public test for it; the private one is looked up, so a torch without it
    costs only this check (then a transform over the layer fails loudly, never silently)."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def tracing() -> bool:
    """Inside torch.compile or torch.export (the ONNX exporter's), where sizes may be
    symbolic: a test of one there becomes a guard, and an exported batch dimension takes
    none (a map smaller per image than MIN_NUMEL made seed 002's network unexportable)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.7
    return torch.compiler.is_compiling() or exporting()


def eligible(x: torch.Tensor) -> bool:
    """Whether x is a tensor a layer's own CPU kernels are for (see the module docstring),
    whether or not the compiled ones may run here. The size is tested last: not at all
    while tracing."""
    return (
        not OFF
        and not tracing()
        and not transforming()
        and x.device.type == "cpu"
        and x.dtype in FAST_DTYPES
        and x.numel() >= MIN_NUMEL
    )


def allowed(kernels: Kernels) -> bool:
    """Whether the compiled pair may run in this block and still works."""
    return not kernels.failed and _ALLOWED.get()


def usable(x: torch.Tensor, kernels: Kernels) -> bool:
    """Whether the compiled pair may run on x."""
    return eligible(x) and allowed(kernels)
