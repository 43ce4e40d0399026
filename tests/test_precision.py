"""`train.precision: auto`: timed on the run's own model on a CPU, cached, recorded, kept
on resume; on a GPU decided by its compute capability (faked here: the decision runs on the
CPU); fp16's loss scaler in the loop, its checkpoints and resume (on the CPU, which torch's
fp16 autocast and GradScaler also serve). Tests marked `gpu` need a real CUDA GPU."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from cnnlab import precision
from cnnlab.build import build
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.loop import Trainer
from cnnlab.precision import Choice, choose, for_gpu, record
from cnnlab.recipe import Recipe, load_recipe
from cnnlab.runs import RunFolder, load_checkpoint
from tests.conftest import DEMO
from tests.test_train import comparable, interrupt_after

READ_FLAGS = precision.cpu_bf16  # the real reader (the fixture below replaces it)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test starts with no cached choice, on a CPU that has bf16 instructions (so auto
    measures, whatever this host has)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)


def test_a_cpu_without_bf16_instructions_takes_fp32_untimed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)
    calls: list = []
    x = torch.randn(4, 1, 16, 16)
    choice = choose("auto", torch.device("cpu"), small_model(), x, slowed_in("fp32", 0.1, calls))
    assert (choice.precision, choice.how, calls) == ("fp32", "device", [])  # nothing timed
    assert "no bf16 instructions" in choice.describe()
    assert not precision.cache_path().exists()


def test_a_cached_bf16_is_not_taken_by_a_cpu_without_bf16_or_with_other_flags(monkeypatch):
    """One home folder, machines of one name but not one kind (a cluster's nodes)."""
    x, model = torch.randn(16, 1, 16, 16), small_model()
    flags = frozenset({"sse2", "avx512_bf16"})
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    first = choose("auto", torch.device("cpu"), model, x, slowed_in("fp32"))
    assert (first.how, first.precision) == ("measured", "bf16")
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)
    calls: list = []
    without = choose("auto", torch.device("cpu"), model, x, slowed_in("fp32", 0.1, calls))
    assert (without.how, without.precision, calls) == ("device", "fp32", [])
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    assert choose("auto", torch.device("cpu"), model, x, slowed_in("fp32")).how == "cached"
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags | {"amx_bf16"})
    other = choose("auto", torch.device("cpu"), model, x, slowed_in("bf16"))
    assert (other.how, other.precision) == ("measured", "fp32")  # its own entry
    assert len(json.loads(precision.cache_path().read_text())) == 2


def test_the_cpu_flags_are_read_from_proc_cpuinfo():
    flags = Path("/proc/cpuinfo")
    if not flags.exists():
        assert READ_FLAGS() is None
        return
    text = flags.read_text()
    expected = any(f in text.split() for f in precision.BF16_FLAGS)
    assert READ_FLAGS() is expected


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 16 * 16, 10),
    )  # fmt: skip


def slowed_in(slow: str, seconds: float = 0.1, calls: list | None = None):
    """A loss that costs `seconds` more per step in the `slow` precision (100 ms: far above
    what a busy machine adds to this model's sub-millisecond step); `calls` collects the
    precision of every step."""

    def loss_of(out: torch.Tensor) -> torch.Tensor:
        in_bf16 = torch.is_autocast_enabled("cpu")
        if calls is not None:
            calls.append("bf16" if in_bf16 else "fp32")
        if in_bf16 == (slow == "bf16"):
            time.sleep(seconds)
        return out.float().square().mean()

    return loss_of


def test_a_precision_far_slower_is_rejected_after_two_warm_steps():
    """bf16 without bf16 hardware runs 12x slower: three steps of it settle the question."""
    calls: list[str] = []
    x = torch.randn(16, 1, 16, 16)
    choice = precision.measure(torch.device("cpu"), small_model(), x, slowed_in("bf16", 0.1, calls))
    assert choice.precision == "fp32" and calls.count("bf16") == 3
    assert choice.images_per_s["fp32"] > precision.CLEAR * choice.images_per_s["bf16"]


def test_one_step_slowed_by_a_busy_machine_decides_nothing():
    """The first timed fp32 step held up (another process took the core) looks far slower
    than bf16; the second look at each precision shows them close, and rounds decide."""
    calls: list[str] = []
    slow = slowed_in("bf16", 0.02, calls)

    def loss_of(out: torch.Tensor) -> torch.Tensor:
        if calls.count("fp32") == 1 and not torch.is_autocast_enabled("cpu"):
            time.sleep(0.5)  # fp32's first timed step, after its untimed one
        time.sleep(0.04)
        return slow(out)

    choice = precision.measure(
        torch.device("cpu"), small_model(), torch.randn(8, 1, 16, 16), loss_of
    )
    assert choice.precision == "fp32" and calls.count("fp32") > 3  # timed in rounds


def test_precisions_close_together_are_timed_in_interleaved_rounds():
    calls: list[str] = []
    slow = slowed_in("bf16", 0.02, calls)

    # both slow, bf16 a bit more (1.5x): a busy machine would have to delay one bf16 step
    # by 60 ms to make it look 3x slower
    def loss_of(out: torch.Tensor) -> torch.Tensor:
        time.sleep(0.04)
        return slow(out)

    choice = precision.measure(
        torch.device("cpu"), small_model(), torch.randn(8, 1, 16, 16), loss_of
    )
    assert choice.precision == "fp32"
    assert calls.count("bf16") == calls.count("fp32") > 2 + precision.ROUNDS  # warm-up + rounds
    assert 1.2 < choice.images_per_s["fp32"] / choice.images_per_s["bf16"] < precision.CLEAR


def test_slow_steps_keep_the_timed_rounds_within_the_budget():
    """Large images: `auto` times 8 of them at 224 px (a whole batch of small ones), and a slow
    step gets two interleaved rounds of one step each, no extra warm-up, instead of 5 rounds
    after 2 more warm-up steps (20 s of a short run)."""
    assert precision.probe_size(32, 224 * 224) == 8
    assert precision.probe_size(32, 448 * 448) == 2 and precision.probe_size(32, 4096**2) == 1
    assert precision.probe_size(256, 28 * 28) == 256 and precision.probe_size(4, 32 * 32) == 4
    spent: list[tuple[str, float]] = []

    def step(p: str, n: int) -> float:  # simulated: fp32 0.5 s a step, bf16 0.4 s
        spent.append((p, n * (0.5 if p == "fp32" else 0.4)))
        return spent[-1][1]

    result = precision._fastest_rounds(step, 0.5)
    assert sum(t for _, t in spent) <= precision.BUDGET_S
    assert [p for p, _ in spent] == ["fp32", "bf16", "fp32", "bf16"]
    assert result == {"fp32": (0.5, 1), "bf16": (0.4, 1)}


@pytest.mark.parametrize("slow", ["bf16", "fp32"])
def test_auto_keeps_the_faster_precision_and_caches_it(slow):
    x = torch.randn(16, 1, 16, 16)
    model = small_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    first = choose("auto", torch.device("cpu"), model, x, slowed_in(slow))
    assert first.how == "measured"
    assert first.precision == ("fp32" if slow == "bf16" else "bf16")
    other = "bf16" if first.precision == "fp32" else "fp32"
    assert first.images_per_s[first.precision] > first.images_per_s[other]
    # the probe trains a copy and leaves the RNG alone: measuring changes no result
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())

    again = choose("auto", torch.device("cpu"), model, x, slowed_in(first.precision))
    assert (again.how, again.precision) == ("cached", first.precision)
    wider = choose("auto", torch.device("cpu"), model, torch.randn(32, 1, 16, 16), slowed_in(slow))
    assert wider.how == "measured"  # another batch shape is another entry


def test_a_recipe_precision_is_not_measured():
    choice = choose("fp32", torch.device("cpu"), small_model(), torch.randn(2, 1, 16, 16), None)
    assert choice == Choice("fp32", "recipe")
    assert not precision.cache_path().exists()


def test_a_damaged_cache_is_measured_again():
    precision.cache_path().parent.mkdir(parents=True)
    precision.cache_path().write_text("{not json")
    x = torch.randn(8, 1, 16, 16)
    assert choose("auto", torch.device("cpu"), small_model(), x, slowed_in("bf16")).how == (
        "measured"
    )
    assert len(json.loads(precision.cache_path().read_text())) == 1


def test_the_run_records_its_choice_and_keeps_it_on_resume(tiny):
    recipe = tiny("train.epochs=2")
    assert recipe.train.precision == "auto"  # the default
    run = RunFolder.create(recipe)
    first = Trainer(build(recipe), run)
    chosen = first.precision.precision
    interrupt_after(first, 7)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert load_checkpoint(run.last_path)["precision"] == chosen

    # The machine now prefers the other precision: the resumed run must not switch.
    cache = json.loads(precision.cache_path().read_text())
    flipped = "bf16" if chosen == "fp32" else "fp32"
    for entry in cache.values():
        entry["precision"] = flipped
    precision.cache_path().write_text(json.dumps(cache))

    resumed = train(recipe, resume=run.path)
    env = json.loads((resumed.path / "env.json").read_text())
    assert env["precision"]["precision"] == chosen and env["precision"]["how"] == "saved"
    assert load_checkpoint(resumed.best_path)["precision"] == chosen

    fresh = train(recipe)  # a new run follows the (flipped) cache
    assert json.loads((fresh.path / "env.json").read_text())["precision"] == {
        "precision": flipped,
        "how": "cached",
        "images_per_s": next(iter(cache.values()))["images_per_s"],
    }
    assert comparable(fresh) != comparable(resumed)  # the precision really changes results


# ------------------------------------------------------------------- GPUs, faked


def fake_gpu(monkeypatch, capability: tuple[int, int], bf16_native: bool) -> None:
    """torch.cuda answering as a GPU of this capability would; bf16 asked without emulation."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        assert including_emulation is False, "emulated bf16 is slower than fp32: ask natively"
        return bf16_native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize(
    ("capability", "native", "expected"),
    [
        ((7, 5), False, "fp16"),
        ((8, 0), True, "bf16"),
        ((9, 0), True, "bf16"),
        ((6, 1), False, "fp32"),
    ],
)
def test_auto_on_a_gpu_follows_its_compute_capability(monkeypatch, capability, native, expected):
    """Turing (7.5): fp16 tensor cores, no bf16 -> fp16 with a scaler; Ampere (8.0) and
    Hopper (9.0): native bf16; Pascal (6.1): no tensor cores -> fp32. Nothing is timed."""
    fake_gpu(monkeypatch, capability, native)
    choice = choose("auto", torch.device("cuda"), small_model(), torch.randn(2, 1, 16, 16), None)
    assert (choice.precision, choice.how) == (expected, "device")
    assert f"compute capability {capability[0]}.{capability[1]}" in choice.reason
    assert choice.reason in choice.describe()
    assert record(choice) == {"precision": expected, "how": "device", "reason": choice.reason}
    assert not precision.cache_path().exists()


def test_the_decision_is_a_pure_function_of_capability_and_native_bf16():
    assert for_gpu((7, 0), False)[0] == "fp16"  # Volta
    assert for_gpu((8, 6), True)[0] == "bf16"
    assert for_gpu((8, 0), False)[0] == "fp16"  # bf16 not native (emulated): fp16 instead
    assert for_gpu((5, 2), False)[0] == "fp32"


def test_a_recipe_precision_is_kept_on_a_gpu(monkeypatch):
    fake_gpu(monkeypatch, (7, 5), False)
    assert choose("fp32", torch.device("cuda"), small_model(), None, None) == Choice(
        "fp32", "recipe"
    )
    assert choose("fp16", torch.device("cuda"), small_model(), None, None).precision == "fp16"


def test_fp16_on_a_cpu_is_one_clear_error(tiny):
    recipe = tiny("train.precision=fp16")
    assert recipe.train.precision == "fp16"  # the recipe accepts it: a GPU may run it
    with pytest.raises(CnnlabError, match="fp16 needs a CUDA GPU.*set train.precision to bf16"):
        build(recipe)
    with pytest.raises(CnnlabError) as err:
        choose("fp16", torch.device("cpu"), small_model(), None, None)
    assert "\n" not in str(err.value)


def test_tune_cuda_turns_on_cudnn_autotuning_and_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.get_float32_matmul_precision()
    try:
        precision.tune_cuda()
        assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.deterministic is False
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_deterministic_trades_autotuning_for_deterministic_kernels(monkeypatch):
    """train.deterministic: no autotuning, deterministic kernels, and the cuBLAS workspace
    setting they need; a later run without it gets autotuning back (one notebook, two runs).
    On a real GPU, benchmarks/gpu_check.py's stage 4 shows a resume equal bit for bit."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    recipe = load_recipe(DEMO, ["train.deterministic=true"])
    assert recipe.train.deterministic is True
    before = torch.get_float32_matmul_precision()
    try:
        precision.tune_cuda(recipe.train.deterministic)
        assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.deterministic is True
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        precision.tune_cuda()
        assert torch.backends.cudnn.benchmark is True
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_float32_matmul_precision(before)


# ------------------------------------------------------- fp16's loss scaler, on the CPU

HUGE_SCALE = 2.0**24  # overflows fp16 gradients: the first steps are skipped, the scale halves


def fp16_trainer(recipe: Recipe, run: RunFolder) -> Trainer:
    """A Trainer in fp16 on the CPU: the recipe cannot ask for it there (choose refuses),
    so the built run's precision is replaced, as a GPU's `auto` on 7.x would choose it.
    The scaler starts so high that its first steps overflow and are skipped."""
    trainer = Trainer(dataclasses.replace(build(recipe), precision=Choice("fp16", "device")), run)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=HUGE_SCALE)
    return trainer


def test_fp16_scales_counts_skipped_steps_and_resumes_exactly(tiny):
    # few images: fp16 runs many times slower than fp32 on a CPU
    sets = ["data.train_subset=400", "data.test_subset=100", "train.scheduler.name=none"]
    recipe = tiny("train.epochs=2", *sets)
    reference = RunFolder.create(recipe)
    whole = fp16_trainer(recipe, reference)
    whole.fit()
    rows = reference.read_metrics()
    skipped = [r["train.skipped_steps"] for r in rows]
    scale = whole.scaler.get_scale()
    # the scale only halved (2,000 clean steps would be needed to grow it): once per skip
    assert sum(skipped) == math.log2(HUGE_SCALE / scale) and skipped[0] > 0
    assert all(math.isfinite(r["train.loss"]) for r in rows)  # overflowing grads: no error
    assert skipped[1] < whole.steps_per_epoch  # the scale came down to where steps are taken
    saved = load_checkpoint(reference.last_path)  # weights_only: plain numbers load
    assert saved["precision"] == "fp16" and saved["scaler"]["state"]["scale"] == scale

    run = RunFolder.create(recipe)
    first = fp16_trainer(recipe, run)
    interrupt_after(first, 3)  # mid-skipping: the epoch's count so far must be kept
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    mid = load_checkpoint(run.last_path)["scaler"]
    assert mid["skipped"] == 3 and mid["state"]["scale"] == HUGE_SCALE / 8
    resumed = train(recipe, resume=run.path)  # the saved precision: fp16, the saved scale
    assert comparable(resumed) == comparable(reference)


def test_runs_without_a_scaler_keep_the_checkpoint_format(tiny):
    recipe = tiny("train.precision=fp32", "data.train_subset=200")
    run = train(recipe)
    saved = load_checkpoint(run.last_path)
    assert "scaler" not in saved
    assert "train.skipped_steps" not in run.read_metrics()[0]
    # an fp16 trainer continuing from a checkpoint without a scaler starts a fresh one
    trainer = fp16_trainer(recipe, run)
    trainer.restore(saved)
    assert trainer.scaler.get_scale() == HUGE_SCALE


# ------------------------------------------------------------------- real GPUs

gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("requested", ["auto", "fp16"])
@gpu[0]
@gpu[1]
def test_a_real_gpu_trains_in_its_precision(tiny, requested):
    """Not yet run on a real GPU: auto follows the device's capability, fp16 keeps its
    scaler's state in the checkpoint, cuDNN autotunes."""
    recipe = tiny("train.device=cuda", f"train.precision={requested}", "data.train_subset=400")
    run = train(recipe)
    env = json.loads((run.path / "env.json").read_text())
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    expected = for_gpu(torch.cuda.get_device_capability(), native)[0]
    assert env["precision"]["precision"] == (expected if requested == "auto" else "fp16")
    assert torch.backends.cudnn.benchmark is True
    saved = load_checkpoint(run.last_path)
    assert ("scaler" in saved) == (saved["precision"] == "fp16")
    assert all(math.isfinite(r["train.loss"]) for r in run.read_metrics())
