"""Label-aware whole-batch augmentation: flips and quarter turns that change GSN's counts as
the picture changes, photometric transforms that never touch targets, and the refusal of a
transform a source does not declare."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.data import gsn_generator as gen
from cnnlab.data.augment import (
    AugmentConfig,
    BrightnessConfig,
    ContrastConfig,
    EraseConfig,
    NoiseConfig,
    augment,
    brightness,
    contrast,
    erase,
    flip_where,
    noise,
    rotate_where,
)
from cnnlab.data.batches import prepare_splits
from cnnlab.data.fashion_mnist import FashionMNISTConfig
from cnnlab.data.gsn import GSNConfig, pair_class
from cnnlab.errors import CnnlabError
from cnnlab.recipe import load_recipe
from tests.conftest import DEMO

TRIANGLES = ("up", "right", "down", "left")  # columns 2..5 of counts


def triangles() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One large centred triangle of each type, (4, 1, 28, 28) in [0, 1], with counts
    "squares 9 + <triangle> 1" (the squares are in the label only) and their pair."""
    kinds = np.arange(2, 6)
    on = gen.masks(kinds, np.full(4, 14.0), np.full(4, 14.0), np.full(4, 12.0))
    x = torch.from_numpy(on).float()[:, None]
    counts = torch.zeros(4, 6)
    counts[:, 0] = 9
    counts[torch.arange(4), torch.from_numpy(kinds)] = 1
    return x, {"pair": pair_class(counts), "counts": counts}


def pointing(img: torch.Tensor) -> str:
    """Where a lone centred triangle's apex points, from its pixels alone: the base half
    holds most of the pixels."""
    m = img[0]
    top, bottom = m[:14].sum(), m[14:].sum()
    left, right = m[:, :14].sum(), m[:, 14:].sum()
    if bottom > 2 * top and left == right:
        return "up"
    if top > 2 * bottom and left == right:
        return "down"
    if left > 2 * right and top == bottom:
        return "right"
    if right > 2 * left and top == bottom:
        return "left"
    raise AssertionError("not a lone triangle")


# The 8 symmetries of the square as augment applies them: hflip, then vflip, then turns.
SYMMETRIES = {
    "identity": (False, False, 0),
    "rot90": (False, False, 1),
    "rot180": (False, False, 2),
    "rot270": (False, False, 3),
    "hflip": (True, False, 0),
    "vflip": (False, True, 0),
    "main diagonal": (True, False, 1),
    "anti diagonal": (True, False, 3),
}


@pytest.mark.parametrize("name", list(SYMMETRIES))
def test_gsn_label_maps_follow_the_picture(name):
    h, v, k = SYMMETRIES[name]
    x, targets = triangles()
    maps = GSNConfig.label_maps
    hmask, vmask = torch.full((4,), h), torch.full((4,), v)
    turns = torch.full((4,), k)
    x = rotate_where(flip_where(flip_where(x, hmask, 3), vmask, 2), turns)
    targets = maps["rot90"](maps["vflip"](maps["hflip"](targets, hmask), vmask), turns)
    counts = targets["counts"]
    assert torch.equal(counts[:, :2], torch.tensor([[9.0, 0.0]] * 4))
    for i in range(4):
        (col,) = torch.nonzero(counts[i, 2:]).flatten().tolist()
        assert TRIANGLES[col] == pointing(x[i]), (name, i)
    assert torch.equal(targets["pair"], pair_class(counts))
    if name == "identity":
        assert torch.equal(targets["pair"], triangles()[1]["pair"])
    else:  # every other symmetry moves some triangle to another type: the class changes
        assert not torch.equal(targets["pair"], triangles()[1]["pair"])


def test_augment_draws_what_the_transforms_apply():
    """augment itself = flip_where / rotate_where with the masks and turns it draws."""
    x, targets = triangles()
    x, targets = (
        x.repeat(8, 1, 1, 1),
        {k: v.repeat(8, *[1] * (v.dim() - 1)) for k, v in targets.items()},
    )
    cfg = AugmentConfig(hflip=True, vflip=True, rot90=True, translate=0)
    out, got = augment(x, targets, cfg, torch.Generator().manual_seed(3), GSNConfig.label_maps)
    g = torch.Generator().manual_seed(3)
    hmask = torch.rand(32, generator=g) < 0.5
    vmask = torch.rand(32, generator=g) < 0.5
    turns = torch.randint(0, 4, (32,), generator=g)
    assert torch.equal(out, rotate_where(flip_where(flip_where(x, hmask, 3), vmask, 2), turns))
    assert len(set(turns.tolist())) == 4 and 0 < hmask.sum() < 32
    for i in range(32):  # and the labels follow each picture
        (col,) = torch.nonzero(got["counts"][i, 2:]).flatten().tolist()
        assert TRIANGLES[col] == pointing(out[i])
    assert torch.equal(got["pair"], pair_class(got["counts"]))


def _old_augment(x: torch.Tensor, shift: int, g: torch.Generator) -> torch.Tensor:
    """hflip + translate exactly as before label-aware augmentation."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    b, _, h, w = x.shape
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=g)
    padded = F.pad(x, (shift, shift, shift, shift))
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.arange(w)
    out = padded.permute(0, 2, 3, 1)[
        torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]
    ]
    return out.permute(0, 3, 1, 2)


def test_default_config_is_unchanged():
    x = torch.rand(16, 3, 10, 10)
    targets = {"label": torch.arange(16)}
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    out, got = augment(x, targets, AugmentConfig(), g1)
    assert torch.equal(out, _old_augment(x, 2, g2)) and got is targets
    assert torch.equal(g1.get_state(), g2.get_state())  # the same draws, no more


PHOTOMETRIC = {
    "brightness": (brightness, BrightnessConfig, {"max": 1.0}),
    "contrast": (contrast, ContrastConfig, {"max": 1.0}),
    "noise": (noise, NoiseConfig, {"std": 1.0}),
    "erase": (erase, EraseConfig, {"max_frac": 0.3}),
}


@pytest.mark.parametrize("name", list(PHOTOMETRIC))
def test_photometric_keeps_targets_range_and_probability(name):
    fn, section, strong = PHOTOMETRIC[name]
    x = torch.rand(32, 3, 16, 16) * 0.6 + 0.2
    targets = {"counts": torch.rand(32, 6), "pair": torch.arange(32)}
    off = AugmentConfig(hflip=False, translate=0)
    g = torch.Generator().manual_seed(0)
    same, got = augment(x, targets, off.model_copy(update={name: section(p=0.0, **strong)}), g)
    assert same is x and got is targets
    assert torch.equal(fn(x, section(p=0.0, **strong), g), x)  # drawn, but no image chosen
    cfg = off.model_copy(update={name: section(p=1.0, **strong)})
    out, got = augment(x, targets, cfg, torch.Generator().manual_seed(1))
    assert got is targets
    assert out.min() >= 0 and out.max() <= 1
    assert ((out - x).abs().flatten(1).amax(1) > 0).all()  # every image changed
    again, _ = augment(x, targets, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    half, _ = augment(x, targets, off.model_copy(update={name: section(p=0.5)}), g)
    changed = ((half - x).abs().flatten(1).amax(1) > 0).sum()
    assert 4 < changed < 28
    if name == "erase":  # one rectangle, at most max_frac of the area
        zeros = (out == 0).all(1).flatten(1).sum(1)
        assert (zeros >= 1).all() and (zeros <= 0.3 * 16 * 16).all()


def test_undeclared_transforms_are_refused(tmp_path):
    gsn = ["data.source=gsn", f"data.root={tmp_path}"]
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, gsn)  # the demo's translate: 2
    msg = str(err.value)
    assert "\n" not in msg and msg == (
        f"{DEMO}: data.augment.translate: gsn does not say how a shift changes its targets "
        "(counts change when a shape is cut off); turn it off (translate: 0) or use hflip / "
        "vflip / rot90"
    )
    ok = load_recipe(DEMO, [*gsn, "data.augment.translate=0", "data.augment.rot90=true"])
    assert ok.data.augment.rot90 and ok.data.augment.translate == 0
    assert GSNConfig(root=str(tmp_path)).augment.geometric() == []  # GSN: off by default
    fm = load_recipe(DEMO, ["data.augment.rot90=true", "data.augment.vflip=true"])
    assert isinstance(fm.data, FashionMNISTConfig) and fm.data.augment.rot90
    with pytest.raises(CnnlabError, match="data.augment.hflip: the source does not say"):
        augment(torch.rand(2, 1, 4, 4), {}, AugmentConfig(), torch.Generator(), {})


def test_gsn_batches_with_flips_and_turns(tmp_path):
    gen.write(tmp_path, 40, seed=5)
    cfg = GSNConfig(root=str(tmp_path), val_rows=8, augment={"vflip": True, "rot90": True})
    splits = prepare_splits(cfg, 0, {"pair", "counts"}, torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    perm = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(2))
    _, targets = next(splits.train_batches(32, g, cfg.augment, {"pair", "counts"}))
    before = splits.train.targets["counts"][perm[:32]]
    counts = targets["counts"]
    assert torch.equal(targets["pair"], pair_class(counts))
    assert torch.equal(counts[:, :2], before[:, :2])  # squares and circles never move
    assert torch.equal(counts[:, 2:].sort(1).values, before[:, 2:].sort(1).values)
    assert not torch.equal(counts, before)  # some triangles turned into others


def test_rot90_needs_square_images(monkeypatch):
    from cnnlab.data import batches
    from cnnlab.data.base import Dataset, ImageSet

    wide = ImageSet(torch.zeros(20, 1, 4, 6, dtype=torch.uint8), {"label": torch.arange(20) % 2})
    fake = type("S", (), {"load": staticmethod(lambda cfg: Dataset("x", wide, wide, {}))})
    monkeypatch.setattr(batches, "get_source", lambda name: fake)
    cfg = FashionMNISTConfig(augment={"rot90": True})
    with pytest.raises(CnnlabError, match=r"data.augment.rot90: fashion_mnist images are 6x4"):
        prepare_splits(cfg, 0, {"label"}, torch.device("cpu"))
