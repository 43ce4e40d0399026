"""`train.precision: auto`: timed on the run's own model, cached, recorded, kept on resume."""

from __future__ import annotations

import json
import time

import pytest
import torch

from cnnlab import precision
from cnnlab.build import build
from cnnlab.experiment import train
from cnnlab.loop import Trainer
from cnnlab.precision import Choice, choose
from cnnlab.runs import RunFolder, load_checkpoint
from tests.test_train import comparable, interrupt_after


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test starts with no cached choice."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


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


def test_a_precision_far_slower_is_rejected_after_one_warm_step():
    """bf16 without bf16 hardware runs 12x slower: two steps of it settle the question."""
    calls: list[str] = []
    x = torch.randn(16, 1, 16, 16)
    choice = precision.measure(torch.device("cpu"), small_model(), x, slowed_in("bf16", 0.1, calls))
    assert choice.precision == "fp32" and calls.count("bf16") == 2
    assert choice.images_per_s["fp32"] > precision.CLEAR * choice.images_per_s["bf16"]


def test_precisions_close_together_are_timed_in_interleaved_rounds():
    calls: list[str] = []
    slow = slowed_in("bf16", 0.01, calls)

    def loss_of(out: torch.Tensor) -> torch.Tensor:  # both slow, bf16 a bit more: 1.5x
        time.sleep(0.02)
        return slow(out)

    choice = precision.measure(
        torch.device("cpu"), small_model(), torch.randn(8, 1, 16, 16), loss_of
    )
    assert choice.precision == "fp32"
    assert calls.count("bf16") == calls.count("fp32") > 2 + precision.ROUNDS  # warm-up + rounds
    assert 1.2 < choice.images_per_s["fp32"] / choice.images_per_s["bf16"] < precision.CLEAR


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
