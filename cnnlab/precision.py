"""Which precision trains fastest here: `train.precision: auto` measures instead of guessing.

bf16 autocast is 2.4x faster than fp32 for matrix products on one of this project's CPUs
(AMD EPYC with AVX-512 BF16) and 1.9x slower on another (Intel Xeon without AMX), so no
fixed default is right. On a CPU without bf16 instructions (no `avx512_bf16`, `amx_bf16` or
Arm's `bf16` in /proc/cpuinfo, like most laptops) bf16 is emulated and about 10x slower, so
`auto` takes fp32 without timing (timing it cost half a minute at 224 px). On a CPU with
them, or where /proc/cpuinfo does not say, `auto` times a few forward + backward passes of
the run's own model on (part of) one real batch in each precision, interleaved so that a
load change on the machine hits both alike, and keeps the faster. The answer is cached per
machine (its CPU's name and flags), thread count, torch version, model and batch shape, so
it costs a few seconds once; a CPU without bf16 takes fp32 before the cache is read, so a
home folder shared by machines of one name but not one kind cannot hand it bf16.
On a CUDA GPU nothing is timed: the device's compute capability decides (`for_gpu`).
bf16 where the GPU computes it natively (8.0 and up: Ampere, Ada, Hopper, Blackwell);
fp16 with loss scaling (`torch.amp.GradScaler`) on 7.x, whose tensor cores take fp16 but
not bf16 (Volta, Turing); fp32 below 7.0, where there are no tensor cores and fp16
arithmetic is slow or no faster (Pascal's GTX cards run it at 1/64 rate). On a CPU fp16 is
never offered: its autocast is slow there and loss scaling buys nothing; bf16 or fp32 is.
These GPU paths are tested with the capability faked, and ran on an H200 (auto: bf16).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError

PRECISIONS = ("fp32", "bf16")  # what `auto` times on a CPU (fp16: only on CUDA)
MARGIN = 0.97  # bf16 must be at least 3 % faster: on a tie fp32 keeps its extra accuracy
BUDGET_S = 2.0  # rough ceiling on the timed part, whatever the model costs
# The timed batch holds at most this many pixels (8 images at 224 px; a whole batch of small
# ones): per image, a step at 224 px is large enough to keep the cores busy, and on seed
# 002's network bf16 / fp32 came out 1.44-1.52 on 8 images against 1.49-1.62 on 32, in a
# quarter the time
PROBE_PIXELS = 8 * 224 * 224
ROUNDS = 5  # interleaved rounds at most (2 at least); each precision's time is its fastest
WARMUP = 3  # untimed steps per precision: the first ones pick kernels and allocate
CLEAR = 3.0  # one precision this many times slower on a warm step: no rounds needed
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # /proc/cpuinfo: x86's and Arm's bf16
NO_BF16 = "no bf16 instructions on this CPU (avx512_bf16, amx_bf16): bf16 would be emulated"

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast's dtype per precision
LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # model outputs -> scalar loss


@dataclass
class Choice:
    """The precision a run trains in, and why."""

    precision: str  # fp32 | bf16 | fp16
    how: str  # recipe | measured | cached | device | saved (a resumed or evaluated run's own)
    images_per_s: dict[str, float] | None = None  # forward + backward, per precision
    reason: str | None = None  # how == "device": what about the GPU decided it

    def describe(self) -> str:
        if self.how in ("recipe", "saved"):
            why = "recipe" if self.how == "recipe" else "the one this run trained in"
            return f"precision: {self.precision} ({why})"
        if self.how == "device":
            return (
                f"precision: {self.precision} (auto: {self.reason or 'what the device supports'})"
            )
        figures = ", ".join(f"{p} {v:,.0f}" for p, v in (self.images_per_s or {}).items())
        return f"precision: {self.precision} (auto, {self.how}: {figures} images/s)"


def autocast_for(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument context factory: bf16 or fp16 autocast, or nothing for fp32."""
    if precision in HALF:
        return lambda: torch.autocast(device.type, dtype=HALF[precision])
    return contextlib.nullcontext


def scaler_for(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaler, None otherwise. fp16 keeps 5 exponent bits: small gradients
    underflow to zero unless the loss is scaled up first; the scaler unscales them before
    the step, skips steps whose gradients overflowed and lowers the scale. bf16 has fp32's
    exponent range and needs none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def for_gpu(capability: tuple[int, int], bf16_native: bool) -> tuple[str, str]:
    """(precision, reason) for a CUDA GPU of this compute capability; `bf16_native`: the
    device computes bf16 itself (torch.cuda.is_bf16_supported(including_emulation=False)),
    not through fp32 emulation, which would be slower than fp32."""
    cc = f"compute capability {capability[0]}.{capability[1]}"
    if bf16_native:
        return "bf16", f"{cc}: native bf16 tensor cores, fp32's range, no loss scaling"
    if capability >= (7, 0):
        return "fp16", f"{cc}: fp16 tensor cores but no native bf16; fp16 with loss scaling"
    return "fp32", f"{cc}: no tensor cores, half precision would save memory but not time"


def tune_cuda(deterministic: bool = False) -> None:
    """What speeds up training on CUDA at little cost in accuracy: cuDNN times its
    convolution algorithms once per input shape and keeps the fastest (every batch but the
    last has one shape), and fp32 matrix products use TF32 tensor cores where the GPU has
    them (8.0 and up; cuDNN's convolutions already do by default). The autotuned choice
    differs from process to process, so a run resumed in a new process matches the
    uninterrupted one closely, not bit for bit (on an H200: the test's max calibration
    error 0.187 against 0.173). `deterministic` (train.deterministic) trades the autotuning
    for cuDNN's deterministic algorithms and torch's deterministic kernels, which made a
    killed and resumed run equal the uninterrupted one exactly there (docs/benchmarks.md).
    An operation without a deterministic kernel warns rather than stops the run."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:  # cuBLAS needs it before its first handle, or it warns
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_float32_matmul_precision("high")


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnlab" / "precision.json"


def choose(
    requested: str,
    device: torch.device,
    model: nn.Module,
    x: torch.Tensor,
    loss_of: LossFn,
) -> Choice:
    """The precision to train in. The measurement trains on one real batch `x` (B, C, H, W)
    with `loss_of(outputs)` as the loss."""
    if requested == "fp16" and device.type == "cpu":
        raise CnnlabError(
            "train.precision=fp16 needs a CUDA GPU (fp16 autocast on a CPU is slow and its "
            "loss scaling buys nothing); on a CPU set train.precision to bf16, fp32 or auto"
        )
    if requested != "auto":
        return Choice(requested, "recipe")
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        chosen, reason = for_gpu(capability, native)
        return Choice(chosen, "device", reason=reason)
    if device.type != "cpu":
        return Choice("fp32", "device")
    if cpu_bf16() is False:
        return Choice("fp32", "device", reason=NO_BF16)
    key = _cache_key(device, model, x)
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and cached.get("precision") in PRECISIONS:
        return Choice(cached["precision"], "cached", cached.get("images_per_s"))
    choice = measure(device, model, x, loss_of)
    _write_cache(key, choice)
    return choice


def probe_size(batch_size: int, pixels_per_image: int) -> int:
    """How many images of a training batch `auto` times: PROBE_PIXELS' worth, at least one."""
    return max(1, min(batch_size, PROBE_PIXELS // max(pixels_per_image, 1)))


def cpu_flags() -> frozenset[str] | None:
    """The CPU's flags (x86) or features (Arm) from /proc/cpuinfo; None where that file does
    not say (another OS)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return None


def cpu_bf16() -> bool | None:
    """Whether this CPU has bf16 instructions; None where /proc/cpuinfo does not say:
    `auto` then measures."""
    flags = cpu_flags()
    return None if flags is None else bool(BF16_FLAGS & flags)


def measure(
    device: torch.device,
    model: nn.Module,
    x: torch.Tensor,
    loss_of: LossFn,
) -> Choice:
    """Time forward + backward of a copy of `model` in each precision; the RNG is left as it
    was, so a run that measured and a run that read the cache train identically.

    Two warm steps each come first, interleaved: where one precision is more than CLEAR
    times slower in its faster one (bf16 without bf16 hardware, 7 images/s at 224 px), that
    settles it; timing the slow one further would cost a minute and change nothing. One
    step alone was not enough: on a busy machine one fp32 step once took 64 times its time,
    and the choice it made is cached."""
    rng = torch.get_rng_state()
    probe = copy.deepcopy(model).train()
    try:
        step = _stepper(device, probe, x, loss_of)
        for precision in PRECISIONS:
            step(precision, 1)  # the first step picks kernels and allocates
        one = {p: step(p, 1) for p in PRECISIONS}
        one = {p: min(t, step(p, 1)) for p, t in one.items()}  # each precision's faster step
        if far_slower({p: 1 / t for p, t in one.items()}):
            seconds = {p: (t, 1) for p, t in one.items()}
        else:
            seconds = _fastest_rounds(step, max(one.values()))
    finally:
        torch.set_rng_state(rng)
    per_s = {p: x.shape[0] * steps / t for p, (t, steps) in seconds.items()}
    faster = "bf16" if per_s["bf16"] * MARGIN > per_s["fp32"] else "fp32"
    return Choice(faster, "measured", {p: round(v, 1) for p, v in per_s.items()})


def far_slower(rates: dict[str, float]) -> set[str]:
    """The precisions more than CLEAR times slower than the fastest (rates: higher is
    faster): one warm step tells them apart, and timing them further changes nothing."""
    fastest = max(rates.values())
    return {p for p, v in rates.items() if v * CLEAR < fastest}


def _fastest_rounds(step: Callable[[str, int], float], one: float) -> dict[str, tuple[float, int]]:
    """Interleaved rounds, each precision's fastest: (seconds, steps) per precision. Rounds,
    steps per round and the extra warm-up steps all fit BUDGET_S (where one step of each
    takes longer, two rounds of one step): timing whole batches at 224 px, a second a step,
    5 rounds with 3 warm-ups had made the measurement 20 s of a 30-step run."""
    both = 2 * max(one, 1e-4)  # one step of each precision
    rounds = int(min(ROUNDS, max(2, BUDGET_S / both)))
    steps = int(min(6, max(1, BUDGET_S / (rounds * both))))
    if (WARMUP - 1) * both <= BUDGET_S / 3:  # cheap: settle the kernels further first
        for precision in PRECISIONS:
            step(precision, WARMUP - 1)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for precision in PRECISIONS:
            times[precision].append(step(precision, steps))
    return {p: (min(t), steps) for p, t in times.items()}


def _stepper(
    device: torch.device, model: nn.Module, x: torch.Tensor, loss_of: LossFn
) -> Callable[[str, int], float]:
    """(precision, steps) -> seconds for that many forward + backward passes."""

    def run(precision: str, steps: int) -> float:
        autocast = autocast_for(device, precision)
        start = time.perf_counter()
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_of(model(x))
            loss.backward()
        loss.detach().float().item()  # wait for the device, as the end of an epoch does
        return time.perf_counter() - start

    return run


# ------------------------------------------------------------------------ cache


def _cache_key(device: torch.device, model: nn.Module, x: torch.Tensor) -> str:
    from cnnlab.runs import device_name

    layout = "channels_last" if x.is_contiguous(memory_format=torch.channels_last) else "nchw"
    shape = hashlib.sha1(f"{model}|{tuple(x.shape)}|{layout}".encode()).hexdigest()[:16]
    threads = torch.get_num_threads()
    flags = hashlib.sha1(" ".join(sorted(cpu_flags() or ())).encode()).hexdigest()[:8]
    return (
        f"{device_name(device)}|flags {flags}|{threads} threads|torch {torch.__version__}|{shape}"
    )


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, choice: Choice) -> None:
    from cnnlab.runs import write_json

    data = _read_cache()
    data[key] = {"precision": choice.precision, "images_per_s": choice.images_per_s}
    with contextlib.suppress(OSError):  # a read-only home only costs a measurement next time
        write_json(cache_path(), data)


def record(choice: Choice) -> dict:
    """What env.json keeps of the choice."""
    return {k: v for k, v in asdict(choice).items() if v is not None}
