"""Training on an image set larger than memory: the decode cache mapped from disk.

    python benchmarks/out_of_core.py [--limit-mb 1024] [--size 192] [--quick]

Generates (once, cached under ~/.cache/cnnlab-bench/out_of_core) a folder of JPEGs, one
sub-folder per class, whose decoded uint8 cache is 6x a memory limit, and a small one that
fits. Every training run is a real `cnnlab train` in a child process (a cheap strided CNN at
--size px, one torch thread, so reading the data is what is measured). Three bars:

(a) on the set that fits (no limit), images/s with `data.storage: mapped` against `memory`
    (its second epoch: both warm): at least 0.7x.
(b) under the limit (a memory cgroup: `systemd-run --scope -p MemoryMax=`, else a cgroup
    directory of our own, v2 `memory.max` or v1 `memory.limit_in_bytes`), `storage: auto`
    on the big set, whose training images are 1.5x the limit at 1x (ONE_X): the peak
    resident memory of the training process stays below the limit. Measured as the peak of
    its anonymous resident memory (RssAnon of /proc/PID/status, sampled every 0.1 s), the
    memory only it holds and the kernel cannot reclaim; the cgroup's peak usage (anonymous
    + page cache charged to it, which the kernel reclaims at the limit, so it is bounded by
    the limit by construction) and ru_maxrss (which also counts pages of torch's shared
    libraries that other processes loaded) are printed beside it. The in-memory path under
    the same limit is run too: it must be killed (or stall at the limit: then it is
    stopped), or the limit proves nothing.
(c) epoch time at 1x, 2x and 4x the images (train_subset of the big set; every pass reads
    from disk, as the cache file is evicted from the page cache before each run): the time
    per image within 15 % (max / min <= 1.15), i.e. linear in the images.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import yaml

CACHE = Path.home() / ".cache" / "cnnlab-bench" / "out_of_core"
CLASSES = 10
CGROUPS = Path("/sys/fs/cgroup")
SAMPLE_S = 0.1  # how often the child's memory is read
DISTINCT = 200  # distinct pictures per class, the files cycle through them
# The in-memory path under the limit: the kernel kills it, or, when reclaiming
# its own code pages always frees one more page, it stalls at the limit, re-reading them
# from disk (700 MB/s, no progress: minutes before any kill). Either way it trains nothing;
# it is stopped once its anonymous memory has stayed above AT_LIMIT of the limit for
# STALL_S, or after HELD_S in any case.
AT_LIMIT, STALL_S, HELD_S = 0.95, 5.0, 120
# 1x, in memory limits. An epoch reads each image once, in a shuffled order, so no image is
# read twice within it and the page cache cannot serve the larger sets better than the
# smaller: above the limit, the size changes how long an epoch takes, not how it reads.
# 1.5x (the folder 6x) keeps the script under 5 minutes; 3x (the folder 12x) took 5 min 21 s
# here, with the same bars met (1.03x spread, 871 MiB peak).
ONE_X = 1.5


def say(*parts: object) -> None:
    print(*parts, flush=True)


def host() -> str:
    model = "?"
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    return f"{model}, {os.cpu_count()} cores, avx512_bf16: {'yes' if bf16 else 'no'}"


# ------------------------------------------------------------------------------ the images


def _write(job: tuple[Path, int, int, int]) -> None:
    """One class's `count` images: DISTINCT pictures (a class colour, smooth shapes and
    noise, so they compress and decode as photos do, and a model can tell the classes
    apart), encoded once and written over and over under new names (encoding every file
    would take longer than the benchmark)."""
    folder, label, size, count = job
    rng = np.random.default_rng(label)
    from io import BytesIO

    from PIL import Image

    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    encoded = []
    for _ in range(DISTINCT):
        coarse = rng.normal(0, 40, (8, 8, 3)).astype(np.float32)
        smooth = np.kron(coarse, np.ones((size // 8, size // 8, 1), np.float32))
        img = base + smooth + rng.normal(0, 12, (size, size, 3))
        buf = BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        encoded.append(buf.getvalue())
    for i in range(count):
        path = folder / f"{i:07d}.jpg"
        if not path.exists():
            path.write_bytes(encoded[i % DISTINCT])


def generate(root: Path, n: int, size: int) -> None:
    """root/c<k>/ with n images in all, in parallel; a marker says it is complete."""
    marker = root / f".complete-{n}-{size}"
    if marker.exists():
        say(f"  {root}: {n:,} images at {size} px (generated before)")
        return
    start = time.perf_counter()
    jobs = []
    for label in range(CLASSES):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        count = n // CLASSES + (1 if label < n % CLASSES else 0)
        jobs.append((folder, label, size, count))
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_write, jobs, chunksize=1)
    marker.write_text("")
    say(f"  {root}: generated {n:,} images at {size} px in {time.perf_counter() - start:.0f} s")


def decode(root: Path, size: int, env: dict) -> None:
    """The folder's decode cache, written by a child without a limit (mapped, so the child
    holds none of it)."""
    code = (
        "from cnnlab.data import image_folder as imf; "
        f"imf.cached_pixels(imf.ImageFolderConfig(root={str(root)!r}, image_size={size}, "
        "storage='mapped'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    for line in out.stderr.splitlines():
        if "decoded" in line or "reused" in line:
            say(f"  {line.strip()}")


def evict(cache: Path) -> None:
    """Drop the decode caches' pages from the page cache: the next run reads from disk
    (pages charged to our own cgroup while decoding would otherwise be free hits)."""
    for npy in cache.rglob("*.npy"):
        fd = os.open(npy, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------ the limit


def _own_cgroup(controller: str) -> Path | None:
    """This process's cgroup folder (v1: of `controller`; v2: the unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return CGROUPS / controller / path.lstrip("/")
        if names == "" and (CGROUPS / "cgroup.controllers").exists():
            return CGROUPS / path.lstrip("/")
    return None


@contextmanager
def memory_cgroup(limit: int):
    """A memory cgroup limited to `limit` bytes: (a prefix to run a command in it, the
    folder whose files report its usage, or None). systemd-run first; without systemd as
    PID 1 (a container), a cgroup folder of our own, nested in ours."""
    probe = ["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={limit}", "true"]
    if shutil.which("systemd-run") and subprocess.run(probe, capture_output=True).returncode == 0:
        yield ["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={limit}"], None, "systemd-run"
        return
    parent = _own_cgroup("memory")
    if parent is None:
        raise SystemExit("no memory cgroup to limit the training process with")
    folder = parent / f"cnnlab_ooc_{os.getpid()}"
    folder.mkdir()
    v2 = (folder / "memory.max").exists()
    try:
        (folder / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))
        if not v2 and (folder / "memory.memsw.limit_in_bytes").exists():
            _try_write(folder / "memory.memsw.limit_in_bytes", str(limit))
        yield [], folder, f"cgroup {'v2' if v2 else 'v1'} {folder}"
    finally:
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)  # the last process is still leaving it


def _try_write(file: Path, text: str) -> None:
    with contextlib.suppress(OSError):  # no swap accounting: the memory limit alone
        file.write_text(text)


# ------------------------------------------------------------------------------ one run


class Peak:
    """The child's peak RssAnon (and the cgroup's rss), sampled in a thread. With `stall_at`
    (bytes), `kill` is called once RssAnon has stayed at or above it for STALL_S (`stalled`),
    or after HELD_S in any case (`stopped`, both)."""

    def __init__(self, pid: int, folder: Path | None, stall_at: int | None = None, kill=None):
        self.pid, self.folder, self.anon, self.group_rss = pid, folder, 0, 0
        self.stall_at, self.kill, self.stalled, self.stopped = stall_at, kill, False, False
        self.started = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        since = None
        while not self.done.wait(SAMPLE_S):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        anon = int(line.split()[1]) * 1024
                        self.anon = max(self.anon, anon)
                        since = self._stall(anon, since)
            except OSError:
                pass
            if self.folder is not None and (self.folder / "memory.stat").exists():
                for line in (self.folder / "memory.stat").read_text().splitlines():
                    if line.startswith(("total_rss ", "anon ")):
                        self.group_rss = max(self.group_rss, int(line.split()[1]))

    def _stall(self, anon: int, since: float | None) -> float | None:
        """Since when RssAnon has been at the stall mark (None: below it); kills the child
        once it has been there for STALL_S, or once HELD_S have passed."""
        if self.stall_at is None or self.stopped:
            return None
        now = time.monotonic()
        since = (since or now) if anon >= self.stall_at else None
        self.stalled = since is not None and now - since >= STALL_S
        if self.stalled or now - self.started >= HELD_S:
            self.stopped = True
            self.kill()
        return since

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def train(
    root: Path, size: int, storage: str, env: dict, work: Path, epochs: int = 1,
    subset: int | None = None, cgroup: tuple | None = None, stall_at: int | None = None,
) -> dict:  # fmt: skip
    """One `cnnlab train` in a child process (in the cgroup when given): its metrics rows,
    peaks, exit code and the data line cnnlab printed. With `stall_at`, the child is killed
    (`stopped`) once its RssAnon has stayed there for STALL_S, or after HELD_S."""
    recipe = {
        "name": f"ooc_{storage}_{subset or 'all'}",
        "output_dir": str(work / "runs"),
        "data": {
            "source": "image_folder",
            "root": str(root),
            "image_size": size,
            "storage": storage,
            "val_fraction": 0.02,
            "test_fraction": 0.02,
            "train_subset": subset,
            "augment": {"hflip": True, "translate": 0},
        },
        "model": {
            "backbone": "cnn",
            "blocks": 2,
            "base_filters": 8,
            "filter_org": "same",
            "stem": "strided",
            "pool": 4,
            "global_pool": True,
        },
        "tasks": {"cls": {"type": "classification", "target": "label"}},
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "eval_batch_size": 64,
            "progress": False,
            "device": "cpu",
            "precision": "fp32",
            "threads": 1,
            "report": False,
            "checkpoint_minutes": 60,
        },
    }
    path = work / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    prefix, folder = (cgroup[0], cgroup[1]) if cgroup else ([], None)

    def join() -> None:  # in the child, before exec: into the cgroup
        if folder is not None:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    cmd = [*prefix, sys.executable, "-m", "cnnlab.cli", "train", str(path)]
    before = set((work / "runs").glob("*")) if (work / "runs").exists() else set()
    start = time.perf_counter()
    child = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=join,
    )  # fmt: skip
    peak = Peak(child.pid, folder, stall_at, child.kill)
    err = child.stderr.read() if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    peak.stop()
    runs = sorted(set((work / "runs").glob("*")) - before) if (work / "runs").exists() else []
    rows = []
    if runs and (runs[0] / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines() if x]
    group_peak = 0
    if folder is not None and (folder / "memory.max_usage_in_bytes").exists():
        group_peak = int((folder / "memory.max_usage_in_bytes").read_text())
        (folder / "memory.max_usage_in_bytes").write_text("0")  # reset for the next run
    elif folder is not None and (folder / "memory.peak").exists():
        group_peak = int((folder / "memory.peak").read_text())
    line = next((x for x in err.splitlines() if "from disk" in x or "in memory (" in x), "")
    return {
        "rc": child.returncode, "rows": rows, "anon": peak.anon, "group_rss": peak.group_rss,
        "group_peak": group_peak, "maxrss": usage.ru_maxrss * 1024, "line": line.strip(),
        "wall": time.perf_counter() - start, "stderr": err, "stopped": peak.stopped,
        "stalled": peak.stalled,
    }  # fmt: skip


def held_outcome(held: dict, limit: int) -> tuple[str, bool]:
    """What became of the in-memory path under the limit, in words, and whether it trained
    nothing as a set over the limit must (killed, or stalled at the limit)."""
    epochs = len(held["rows"])
    if held["stopped"]:
        peak = f"peak RssAnon {mb(held['anon'])} of {mb(limit)}, {epochs} epoch(s)"
        where = f"stalled at the limit for {STALL_S:.0f} s" if held["stalled"] else "NOT stalled"
        return f"{where} ({peak}), stopped after {held['wall']:.0f} s", held[
            "stalled"
        ] and not epochs
    ran = f"exit {held['rc']} after {held['wall']:.0f} s"
    if held["rc"] != 0 and not epochs:
        return f"{ran} (killed, as a set over the limit must be)", True
    return f"{ran}, {epochs} epoch(s): NOT killed", False


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit-mb", type=int, default=1024, help="the training process's limit")
    ap.add_argument("--size", type=int, default=192, help="image side in px")
    ap.add_argument("--fits", type=int, default=6000, help="images of the set that fits")
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes (no bars)")
    args = ap.parse_args()
    limit = args.limit_mb * 2**20
    row = 3 * args.size * args.size
    n1 = math.ceil(ONE_X * limit / row / 0.96)  # 1x: the training rows alone
    n4 = 4 * n1
    fits = args.fits
    if args.quick:
        n1, n4, fits = n1 // 10, 4 * (n1 // 10), fits // 4
    say(f"host: {host()}")
    say(f"limit {mb(limit)}; images {args.size} px = {row:,} B decoded; sets: fits {fits:,}, "
        f"big {n4:,} ({n4 * row / 1e9:.1f} GB cache)")  # fmt: skip
    big, small = CACHE / f"big_{args.size}_{n4}", CACHE / f"fits_{args.size}_{fits}"
    generate(small, fits, args.size)
    generate(big, n4, args.size)
    env = {**os.environ, "XDG_CACHE_HOME": str(CACHE / "decoded"), "OMP_NUM_THREADS": "1"}
    decode(small, args.size, env)
    decode(big, args.size, env)
    work = Path(tempfile.mkdtemp(prefix="cnnlab-ooc-"))
    try:
        report(args, limit, row, n1, fits, small, big, env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, limit, row, n1, fits, small, big, env, work) -> None:
    say("\n(a) the set that fits, no limit: images/s of the second epoch (training steps)")
    rates = {}
    for storage in ("memory", "mapped"):
        out = train(small, args.size, storage, env, work, epochs=2)
        if out["rc"]:
            raise SystemExit(out["stderr"][-3000:])
        rates[storage] = out["rows"][-1]["images_per_s"]
        say(f"  {storage:>6}: {rates[storage]:,.0f} images/s   [{out['line']}]")
    ratio = rates["mapped"] / rates["memory"]
    bar_a = ratio >= 0.7
    say(f"  mapped / memory = {ratio:.2f}x  (bar >= 0.7x: {'met' if bar_a else 'NOT met'})")

    with memory_cgroup(limit) as cgroup:
        say(f"\n(b) under a {mb(limit)} limit ({cgroup[2]})")
        evict(CACHE / "decoded")
        held = train(big, args.size, "memory", env, work, subset=n1, cgroup=cgroup,
                     stall_at=int(AT_LIMIT * limit))  # fmt: skip
        outcome, killed = held_outcome(held, limit)
        say(f"  storage memory, {n1:,} images: {outcome}")
        times, peaks = {}, []
        for k in (1, 2, 4):
            evict(CACHE / "decoded")
            out = train(big, args.size, "auto", env, work, subset=k * n1, cgroup=cgroup)
            if out["rc"]:
                raise SystemExit(f"{k}x failed (exit {out['rc']}):\n{out['stderr'][-3000:]}")
            first = out["rows"][0]
            trained = k * n1
            times[k] = trained / first["images_per_s"]
            peaks.append(out["anon"])
            say(f"  {k}x: {trained:,} images ({trained * row / 1e9:.1f} GB), epoch "
                f"{times[k]:.0f} s ({first['images_per_s']:,.0f} images/s); peak RssAnon "
                f"{mb(out['anon'])}, cgroup peak {mb(out['group_peak'])} (rss "
                f"{mb(out['group_rss'])}), ru_maxrss {mb(out['maxrss'])}; "
                f"run {out['wall']:.0f} s")  # fmt: skip
            if k == 1:
                say(f"      [{out['line']}]")
    bar_b = max(peaks) < limit and killed
    say(f"  peak resident (RssAnon, max over runs) {mb(max(peaks))} < limit {mb(limit)}: "
        f"{'met' if bar_b else 'NOT met'}")  # fmt: skip
    per = {k: t / (k * n1) for k, t in times.items()}
    spread = max(per.values()) / min(per.values())
    bar_c = spread <= 1.15
    say("\n(c) time per image: " + ", ".join(f"{k}x {v * 1e3:.3f} ms" for k, v in per.items())
        + f"; max / min = {spread:.2f} (bar <= 1.15: {'met' if bar_c else 'NOT met'})")  # fmt: skip
    if args.quick:
        say("(--quick: sizes a tenth of the bars', for a look only)")


if __name__ == "__main__":
    main()
