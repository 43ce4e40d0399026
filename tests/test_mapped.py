"""`data.storage`: decoded pixels held in memory or mapped from the cache file. The choice
`auto` makes, reading mapped images by index, a corrupt file skipped, a shard read alone,
and a mapped run that trains, resumes and ends exactly as the in-memory one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.api import load_recipe
from cnnlab.data import image_folder as imf
from cnnlab.data import memory, stats
from cnnlab.data.mapped import MappedImages, pixels_at, read_ahead
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from tests.test_image_folder import cfg_of, folder_recipe, make_tree, train_counts

TIMING = {"seconds", "images_per_s"}


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    return make_tree(tmp_path)


def recipe(tree: Path, tmp_path: Path, storage: str, epochs: int = 2) -> dict:
    out = folder_recipe(tree, tmp_path / "runs" / storage, f"folder_{storage}", epochs)
    out["seed"] = 3
    out["data"]["storage"] = storage
    return out


def metrics(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in run.read_metrics()]


# ------------------------------------------------------------------------ the choice


def test_auto_maps_a_cache_over_half_the_available_memory(tree, monkeypatch, capsys):
    monkeypatch.setattr(memory, "available", lambda: (10_000, "cgroup limit, fake"))
    assert memory.choose("auto", 5_001)[0] and not memory.choose("auto", 5_000)[0]
    assert memory.choose("memory", 10**15) == (False, "data.storage: memory")
    assert memory.choose("mapped", 1)[0]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes: each would hold a copy
    assert memory.choose("auto", 2_501)[0]
    monkeypatch.delenv("LOCAL_WORLD_SIZE")

    ds = imf.load(cfg_of(tree))  # the tree's cache is ~40 kB, far above 5 kB
    assert isinstance(ds.train.images, MappedImages)
    assert "image_folder: mapped from disk (auto: " in capsys.readouterr().err
    monkeypatch.setattr(memory, "available", lambda: (10**12, "MemAvailable"))
    ds = imf.load(cfg_of(tree))
    assert isinstance(ds.train.images, torch.Tensor)
    assert "image_folder: held in memory (auto: " in capsys.readouterr().err


def test_a_cgroup_limit_below_memavailable_wins(monkeypatch, tmp_path):
    limit = tmp_path / "memory.max"
    limit.write_text("123456789\n")
    assert memory._read_limit(limit) == (123456789, str(limit))
    limit.write_text("max\n")
    assert memory._read_limit(limit)[0] == memory.NO_LIMIT
    monkeypatch.setattr(memory, "meminfo_available", lambda: 10**10)
    monkeypatch.setattr(memory, "cgroup_limit", lambda: (10**9, "memory.max"))
    assert memory.available() == (10**9, "cgroup limit, memory.max")
    monkeypatch.setattr(memory, "cgroup_limit", lambda: (memory.NO_LIMIT, ""))
    assert memory.available() == (10**10, "MemAvailable")


def test_a_wrong_storage_is_one_line_naming_the_choices(tree, tmp_path):
    with pytest.raises(CnnlabError) as err:
        load_recipe(recipe(tree, tmp_path, "disk"))
    text = str(err.value)
    assert "\n" not in text and "data.storage" in text
    assert all(choice in text for choice in ("auto", "memory", "mapped"))


# ------------------------------------------------------------------------ reading


def test_mapped_images_read_what_memory_holds_and_skip_the_corrupt(tree, capsys):
    held = imf.load(cfg_of(tree, storage="memory"))
    mapped = imf.load(cfg_of(tree, storage="mapped"))
    assert "4 files skipped" in capsys.readouterr().err
    for name in ("train", "test"):
        a, b = getattr(held, name), getattr(mapped, name)
        assert isinstance(b.images, MappedImages)
        assert b.images.shape == a.images.shape and len(b) == len(a)
        assert torch.equal(b.images[:], a.images)
        assert torch.equal(b.targets["label"], a.targets["label"])
    a, b = held.train, mapped.train
    assert a.images.shape[0] == sum(train_counts())
    idx = torch.tensor([7, 0, 31, 7, 2])
    assert torch.equal(b.images[idx], a.images[idx])
    assert torch.equal(b.images[3], a.images[3]) and torch.equal(b.images[-1], a.images[-1])
    assert torch.equal(b.images[2:9], a.images[2:9])
    part = b.subset(torch.tensor([5, 1, 4]))  # composes the index: nothing is read
    assert isinstance(part.images, MappedImages)
    assert torch.equal(part.images[:], a.images[torch.tensor([5, 1, 4])])
    assert part.to("cpu").images.file is b.images.file
    gen = torch.Generator().manual_seed(0)  # colorizing's palette samples pixels by index
    at = [torch.randint(n, (3000,), generator=gen) for n in (len(a), 16, 16)]
    assert torch.equal(pixels_at(b.images, *at), pixels_at(a.images, *at))


def test_a_large_set_is_measured_on_a_sample_the_same_in_either_storage(tree, monkeypatch):
    held = imf.load(cfg_of(tree, storage="memory")).train.images
    mapped = imf.load(cfg_of(tree, storage="mapped")).train.images
    n, c, h, w = held.shape
    monkeypatch.setattr(stats, "SAMPLE_BYTES", 10 * c * h * w)  # ten images' pixels
    rows = stats.sample_rows(n, c * h * w)
    assert len(rows) == 10 and torch.equal(rows, rows.sort().values)
    assert torch.equal(rows, stats.sample_rows(n, c * h * w))  # seeded: the same every time
    sampled = stats.channel_stats(held)
    assert all(torch.equal(a, b) for a, b in zip(sampled, stats.channel_stats(mapped), strict=True))
    direct = held[rows].double().div(255)
    assert torch.allclose(sampled[0].double(), direct.mean(dim=(0, 2, 3)), rtol=1e-6, atol=0)
    assert torch.allclose(sampled[1].double(), direct.std(dim=(0, 2, 3)), rtol=1e-5, atol=0)
    monkeypatch.setattr(stats, "SAMPLE_BYTES", 1 << 30)
    assert stats.sample_rows(n, c * h * w) is None  # a set within it is measured whole
    assert not torch.equal(stats.channel_stats(held)[0], sampled[0])


def test_a_rank_reads_only_its_shard_of_each_batch(tree):
    images = imf.load(cfg_of(tree, storage="mapped")).train.images
    batches = [torch.arange(0, 10), torch.tensor([9, 3, 20, 1, 14, 2, 8])]
    whole = list(read_ahead(images, batches))
    for i in range(3):
        shards = read_ahead(images, batches, (i, 3))
        for idx, full, shard in zip(batches, whole, shards, strict=True):
            n = len(idx)
            lo, hi = n * i // 3, n * (i + 1) // 3
            assert torch.equal(shard[lo:hi], full[lo:hi]) and shard.shape == full.shape
            assert not shard[:lo].any() and not shard[hi:].any()


# ------------------------------------------------------------------------ training


def test_mapped_training_matches_memory_and_resumes_exactly(tree, tmp_path):
    held = train(load_recipe(recipe(tree, tmp_path, "memory")))
    mapped = train(load_recipe(recipe(tree, tmp_path, "mapped")))
    assert len(metrics(held)) == 2 and metrics(mapped) == metrics(held)
    assert mapped.test_metrics() == held.test_metrics()
    a = torch.load(held.best_path, map_location="cpu", weights_only=False)["model"]
    b = torch.load(mapped.best_path, map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    def stop_after_first(row: dict) -> None:
        raise KeyboardInterrupt

    cfg = load_recipe(recipe(tree, tmp_path, "mapped"))
    with pytest.raises(CnnlabError, match="interrupted"):
        train(cfg, on_epoch=stop_after_first)
    (stopped,) = set((tmp_path / "runs" / "mapped").iterdir()) - {mapped.path}
    resumed = train(cfg, resume=stopped)
    assert metrics(resumed) == metrics(mapped)
