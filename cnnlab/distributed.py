"""Data-parallel training across processes and machines: torchrun starts the processes,
PyTorch's DistributedDataParallel keeps their weights equal, this file says who does what.

Under `torchrun --nproc_per_node N -m cnnlab train RECIPE` every process ("rank") runs the
same loop on the same seeded batch order. Each global batch (the recipe's batch_size) is
drawn and augmented whole on every rank, then each rank trains on its own contiguous slice
of it: the draws are those of a one-process run, so N processes follow the same path as
one process with the same batch (within float tolerance; BatchNorm sees each rank's slice,
as in any DDP run, unless `train.sync_bn` on GPUs). Validation batches are dealt out in
turn and the metric sums added up across ranks. Rank 0 alone writes the run folder.

Nothing here pickles: the few strings ranks agree on travel as byte tensors.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from cnnlab.errors import CnnlabError
from cnnlab.plugins import import_flags
from cnnlab.runs import RunFolder

TIMEOUT = timedelta(minutes=10)  # a rank silent this long is taken for dead


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """The one rank that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def resume_hint(self, path: object) -> str:
        """The command that continues a run folder with as many processes as now."""
        flags = import_flags()  # what the run's components came from
        if not self.active:
            return f"cnnlab{flags} train --resume {path} (in Python: cnnlab.resume({str(path)!r}))"
        nodes = self.world // max(self.local_world, 1)
        launch = f"torchrun --nproc_per_node {self.local_world}"
        if nodes > 1:
            launch += f" --nnodes {nodes} (and the same rendezvous)"
        return f"{launch} -m cnnlab{flags} train --resume {path}"


def from_environment() -> Ranks:
    """The ranks torchrun (or any launcher setting its variables) put in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def join(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun set up (once per process): NCCL on GPUs, gloo on
    CPUs. Each rank of a machine takes its own GPU. One process: nothing to join."""
    ranks = from_environment()
    if not ranks.active:
        return ranks, device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CnnlabError(f"data-parallel training runs on CPUs or CUDA GPUs, not {device.type}")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=TIMEOUT, device_id=_device_id(device))
        except Exception as err:
            raise CnnlabError(
                f"rank {ranks.rank} could not join the other {ranks.world - 1} processes "
                f"({_first_line(err)}); check torchrun's --rdzv-endpoint and the network"
            ) from None
    return ranks, device


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def leave() -> None:
    """Close the process group once the ranks are done training together."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(
    x: torch.Tensor, targets: dict[str, torch.Tensor], ranks: Ranks
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """This rank's contiguous slice of a global batch, and the factor that makes the mean
    of its loss, averaged over ranks by DDP, the mean over the global batch (slices differ
    by one image when the batch does not divide evenly)."""
    if not ranks.active:
        return x, targets, 1.0
    n = x.shape[0]
    lo, hi = n * ranks.rank // ranks.world, n * (ranks.rank + 1) // ranks.world
    part = {k: v[lo:hi] for k, v in targets.items()}
    return x[lo:hi], part, (hi - lo) * ranks.world / n


def rank_seed(seed: int, epoch: int, ranks: Ranks) -> int:
    """The global generator's seed for one rank's epoch (dropout draws): distinct per rank,
    and a run resumed at an epoch's start draws what the uninterrupted one drew."""
    return (seed * 1_000_003 + epoch) * 1009 + ranks.rank + 1


def add_up(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum `t` in place over the ranks (a meter's running sums)."""
    if ranks.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def from_main(text: str | None, ranks: Ranks, device: torch.device) -> str:
    """Rank 0's `text` on every rank (a run folder's path, a precision): as bytes, not pickle."""
    if not ranks.active:
        return text or ""
    data = (text or "").encode() if ranks.main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if ranks.main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


class Halted(Exception):
    """A data-parallel rank was signalled to stop (Ctrl-C, or torchrun after a rank failed)."""


def halt(signum: int, frame: object) -> None:
    raise Halted(f"{signal.Signals(signum).name}: one process failed or all were interrupted")


def peers_lost(err: BaseException) -> bool:
    """What a rank sees when the others are gone: a signal (torchrun stopping it), or a
    collective that failed (gloo raises a plain RuntimeError naming its transport)."""
    if isinstance(err, (Halted, dist.DistError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(k in text for k in ("gloo", "NCCL", "Connection"))


def stopped(err: BaseException, ranks: Ranks, run_path: object, epoch: int) -> CnnlabError:
    """One line for a rank that stopped with the others (one killed, crashed, interrupted)."""
    return CnnlabError(
        f"rank {ranks.rank} of {ranks.world} stopped in epoch {epoch + 1} ({_first_line(err)}); "
        f"the run folder keeps its last checkpoint; continue with: {ranks.resume_hint(run_path)}"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


class Follower(RunFolder):
    """The run folder as a rank other than 0 holds it: it reads (a resume's checkpoint) but
    never writes, so N ranks leave exactly what one process would."""

    def lock(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def set_status(self, state: str, **extra: object) -> None:
        pass

    def save_checkpoint(self, path: Path, state: dict) -> None:
        pass

    def append_metrics(self, row: dict) -> None:
        pass

    def truncate_metrics(self, epochs: int) -> None:
        pass


def run_folder(
    run: RunFolder | None, make: Callable[[], RunFolder], ranks: Ranks, device: torch.device
) -> RunFolder:
    """The run folder every rank trains in: rank 0 makes it (`make`) unless given; the
    others learn its path and follow."""
    if not ranks.active:
        return run or make()
    if ranks.main:
        run = run or make()
    path = from_main(str(run.path) if ranks.main else None, ranks, device)
    return run if ranks.main else Follower(path)
