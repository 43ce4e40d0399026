import gzip
import hashlib
import http.server
import os
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import fashion_mnist as fm
from cnnlab.data import load_dataset
from cnnlab.data.augment import hflip, translate
from cnnlab.data.base import mean_ink
from cnnlab.data.batches import prepare_splits
from cnnlab.data.split import stratified_split, stratified_subset
from cnnlab.errors import CnnlabError
from tests.conftest import run_cli


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """An idx file in the official format: 0, 0, 0x08 (uint8), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def fake_fashion(folder: Path, n_train: int = 40, n_test: int = 20, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if compress else ""
        write_idx(
            folder / f"{split}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 28, 28)),
            compress,
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)


def test_real_fashion_mnist_shapes_and_targets():
    ds = load_dataset("fashion_mnist")
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train.targets["label"]).tolist() == [6000] * 10
    assert ds.classes["label"][0] == "T-shirt/top" and len(ds.classes["label"]) == 10
    assert list(fm.official().classes) == fm.CLASSES  # the names written out are torchvision's
    # Images whose mean pixel is known by construction, scaled to [0, 1] as the model sees them.
    known = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    known[1] = 255  # all white
    known[2, :, :14] = 255  # top half white
    known[3, 0, 5, 7] = 255  # one pixel of 784
    ink = ds.derived["ink"](known.float() / 255)
    assert torch.allclose(ink, torch.tensor([0.0, 1.0, 0.5, 1 / 784]))
    real = ds.derived["ink"](ds.test.images.float() / 255)
    assert real.shape == (10000,) and (real > 0).all() and (real < 1).all()


def test_root_and_env_take_precedence_over_system(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "mine", compress=False)
    assert len(load_dataset("fashion_mnist", str(tmp_path / "mine")).train) == 40
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    fake_fashion(tmp_path / "fashion-mnist", n_train=30)
    assert len(load_dataset("fashion_mnist").train) == 30
    assert len(load_dataset("fashion_mnist", str(tmp_path / "mine")).train) == 40  # root wins


def half_copy(folder: Path) -> Path:
    """A folder holding the training files only, as an interrupted copy leaves it."""
    fake_fashion(folder)
    for path in folder.glob("t10k-*"):
        path.unlink()
    return folder


@pytest.mark.parametrize(
    "named, problem",
    [
        ("none", "(no such folder)"),
        ("half", "(missing t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"),
        ("file", "(a file, not a folder)"),
    ],
)
def test_named_root_is_used_or_the_run_stops_naming_it(tmp_path, monkeypatch, named, problem):
    """Copies sit in $CNNLAB_DATA and the system folder: root must not fall back to them."""
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    fake_fashion(tmp_path)
    half_copy(tmp_path / "half")
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / named
    with pytest.raises(CnnlabError) as err:
        load_dataset("fashion_mnist", str(root))
    msg = str(err.value)
    assert f"Fashion-MNIST is not in {root}, the folder data.root names {problem}" in msg
    assert "point data.root at the folder that holds them" in msg and "\n" not in msg


def test_cnnlab_data_is_used_alone_when_set(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "system")
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("CNNLAB_DATA", str(half_copy(tmp_path / "half")))
    with pytest.raises(CnnlabError, match=r"the folder \$CNNLAB_DATA names \(missing t10k-images"):
        fm.locate(None, allow_download=False)
    monkeypatch.setenv("CNNLAB_DATA", "")  # set but empty: as if unset, the search goes on
    assert fm.locate(None, allow_download=False)["train_images"].parent == tmp_path / "system"


def test_cli_fetch_of_a_root_without_the_data_is_one_line(tmp_path):
    out = run_cli("fetch", "fashion_mnist", "--root", str(tmp_path / "none"), "--no-download")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"Fashion-MNIST is not in {tmp_path / 'none'}" in lines[0]


def test_missing_data_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(CnnlabError) as err:
        fm.locate(None, allow_download=False)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "\n" not in str(err.value)


def test_corrupt_idx_is_refused(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))  # promises 9 bytes, holds 2
    with pytest.raises(CnnlabError, match="header promises 9 bytes"):
        fm.read_idx(bad)


def test_a_gzipped_idx_file_is_decoded_once_and_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    parsed, parse = [], fm._parse_idx
    monkeypatch.setattr(fm, "_parse_idx", lambda p: parsed.append(p) or parse(p))
    path, rng = tmp_path / "x-idx3-ubyte.gz", np.random.default_rng(0)
    first, second = rng.integers(0, 256, (2, 3, 5, 28, 28), dtype=np.uint8)
    write_idx(path, first)
    for reads in (1, 1):  # decoded and cached, then read back from the cache
        assert np.array_equal(fm.read_idx(path).numpy(), first) and len(parsed) == reads
    cached = fm.decoded_path(path)
    write_idx(path, second)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert np.array_equal(fm.read_idx(path).numpy(), second) and len(parsed) == 2
    assert [p.name for p in cached.parent.iterdir()] == [fm.decoded_path(path).name]
    fm.decoded_path(path).write_bytes(b"\x93NUMPY")  # cut short: decoded again, rewritten
    assert np.array_equal(fm.read_idx(path).numpy(), second) and len(parsed) == 3
    assert np.array_equal(np.load(fm.decoded_path(path)), second)
    (tmp_path / "no_folder").write_text("")  # a cache that cannot be written costs time only
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no_folder"))
    assert np.array_equal(fm.read_idx(path).numpy(), second) and len(parsed) == 4


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server standing in for the official mirror."""
    served = tmp_path / "served"
    fake_fashion(served)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    yield f"http://127.0.0.1:{server.server_port}/", md5
    server.shutdown()


def test_download_verifies_checksums(tmp_path, mirror):
    url, md5 = mirror
    fm.download(tmp_path / "cache", [url], md5)
    assert len(fm.load(str(tmp_path / "cache")).train) == 40
    bad = dict(md5, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(CnnlabError, match="download of t10k-labels-idx1-ubyte.gz failed"):
        fm.download(tmp_path / "other", [url], bad)
    assert not (tmp_path / "other" / "t10k-labels-idx1-ubyte.gz").exists()


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = torch.arange(1000) % 10
    keep, held = stratified_split(labels, 1000, 0.1, seed=3)
    assert len(held) == 100 and len(keep) == 900
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert torch.bincount(labels[held]).tolist() == [10] * 10
    again, _ = stratified_split(labels, 1000, 0.1, seed=3)
    other, _ = stratified_split(labels, 1000, 0.1, seed=4)
    assert torch.equal(keep, again) and not torch.equal(keep, other)
    sub = stratified_subset(labels, 1000, 200, seed=0)
    assert torch.bincount(labels[sub]).tolist() == [20] * 10


def test_hflip_flips_a_random_half():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float).view(2, 1, 2, 3).repeat(200, 1, 1, 1)
    out = hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all() and 150 < flipped.sum() < 250


def test_translate_shifts_content_with_zero_fill():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 4] = 1.0
    out = translate(x, 2, torch.Generator().manual_seed(0))
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert (out.flatten(1).sum(1) == 1).all()  # moved, never duplicated
    assert set(rows.tolist()) <= {1, 2, 3, 4, 5} and set(cols.tolist()) <= {2, 3, 4, 5, 6}
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 10


def splits_of(recipe):
    needed = {t.target for t in recipe.tasks.values()}
    return prepare_splits(recipe.data, recipe.seed, needed, torch.device("cpu"))


def test_ink_follows_the_augmented_image(tiny):
    splits = splits_of(tiny("data.augment.translate=4"))
    gen = torch.Generator().manual_seed(0)
    x, targets = next(splits.train_batches(64, gen, tiny().data.augment, {"label", "ink"}))
    raw = x * splits.std.view(1, -1, 1, 1) + splits.mean.view(1, -1, 1, 1)
    assert torch.allclose(targets["ink"], mean_ink(raw), atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_splits_are_stratified_and_disjoint_from_test(tiny):
    splits = splits_of(tiny())
    assert len(splits.train) == 1800 and len(splits.val) == 200 and len(splits.test) == 500
    assert torch.bincount(splits.val.targets["label"]).tolist() == [20] * 10
    assert 0.2 < splits.mean.item() < 0.4 and 0.3 < splits.std.item() < 0.4


def test_a_splits_values_of_a_target_are_what_its_batches_give(tiny, monkeypatch):
    """What a regression standardizes by: stored targets as they are, derived ones (ink,
    from the pixels) computed batch by batch."""
    from cnnlab.build import build
    from cnnlab.data.batches import Splits

    splits = build(tiny()).splits
    for target in ("label", "ink"):
        batched = torch.cat([t[target] for _, t in splits.eval_batches("train", 700, {target})])
        assert torch.equal(splits.values("train", target), batched)
    # a stored target is read without converting a single image to floats
    monkeypatch.setattr(Splits, "eval_batches", lambda *a: pytest.fail("images converted"))
    assert len(splits.values("train", "label")) == len(splits.train)
