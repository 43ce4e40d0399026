"""How much memory this process may fill, and whether a decoded cache is held in it or mapped.

A set held in memory costs its whole size in every training process; a mapped one costs
what the page cache keeps of it, which the kernel reclaims. `data.storage: auto` maps a cache
larger than a share (SHARE) of the memory available: the smaller of /proc/meminfo's
MemAvailable and the limit of this process's memory cgroup (v2 `memory.max`, v1
`memory.limit_in_bytes`), as a container or `systemd-run -p MemoryMax=` enforces it. Under
torchrun the share is divided by the processes of this machine, each of which would hold
its own copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

Storage = Literal["auto", "memory", "mapped"]
SHARE = 0.5  # auto maps a cache above this share of the available memory
NO_LIMIT = 1 << 60  # cgroup v1 writes ~2**63 for "no limit"
CGROUPS = Path("/sys/fs/cgroup")


def meminfo_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (what the kernel can give without swapping)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return NO_LIMIT


def cgroup_limit() -> tuple[int, str]:
    """(the memory limit of this process's cgroup in bytes, the file it was read from);
    (NO_LIMIT, "") when none is set or the cgroup files are not readable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return NO_LIMIT, ""
    found = [(NO_LIMIT, "")]
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            found.append(_read_limit(CGROUPS / rel / "memory.max"))
            found.append(_read_limit(CGROUPS / "unified" / rel / "memory.max"))
        elif "memory" in controllers.split(","):  # v1: the memory controller's own
            found.append(_read_limit(CGROUPS / "memory" / rel / "memory.limit_in_bytes"))
    return min(found)


def _read_limit(file: Path) -> tuple[int, str]:
    try:
        text = file.read_text().strip()
    except OSError:
        return NO_LIMIT, ""
    if text == "max" or not text.isdigit() or int(text) >= NO_LIMIT:
        return NO_LIMIT, ""
    return int(text), str(file)


def available() -> tuple[int, str]:
    """(bytes this process may fill, where that figure comes from), the smaller wins."""
    limit, where = cgroup_limit()
    free = meminfo_available()
    return (limit, f"cgroup limit, {where}") if limit < free else (free, "MemAvailable")


def choose(storage: Storage, size: int) -> tuple[bool, str]:
    """(map the cache?, why, for the one stderr line) for a cache of `size` bytes."""
    if storage != "auto":
        return storage == "mapped", f"data.storage: {storage}"
    room, where = available()
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = room * SHARE / processes
    each = f" per process of {processes}" if processes > 1 else ""
    verdict = "above" if size > share else "within"
    return size > share, (
        f"auto: {gb(size)} {verdict} half of the {gb(room)} available{each} ({where})"
    )


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
