"""Loss landscapes: the grid against an analytic quadratic, the invariance filter-wise
normalization exists for, weights restored bit for bit, flatness numbers on a known bowl,
a budgeted grid continued, and the command on a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.landscape import Settings, Surface
from cnnlab.landscape.directions import filter_normalized
from cnnlab.landscape.flatness import flatness
from cnnlab.landscape.surface import fill
from cnnlab.landscape_runs import landscape
from cnnlab.viz import RunView, make_charts
from tests.conftest import run_cli


def test_the_grid_is_the_analytic_quadratic():
    """A linear map under mean squared error: the loss is an exact quadratic in the weights,
    so at (a, b) it is c + g1 a + g2 b + h11 a² + 2 h12 ab + h22 b², all known in closed form."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3, bias=False).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)

    def evaluate(m):
        return ((x @ m.weight.T - y) ** 2).mean().item(), math.nan

    dirs = [filter_normalized(model, seed) for seed in (1, 2)]
    surface = Surface.empty(Settings(dims=2, points=7, span=2.0, samples=40, seed=1))
    fill(model, surface, dirs, evaluate)
    w, d1, d2 = model.weight.detach(), dirs[0][0].double(), dirs[1][0].double()
    r, e1, e2 = x @ w.T - y, x @ d1.T, x @ d2.T  # residual and its change per unit step
    n = r.numel()
    a = np.asarray(surface.coords)[None, :]  # columns: direction 1
    b = np.asarray(surface.coords)[:, None]  # rows: direction 2
    c = (r * r).sum().item() / n
    g1, g2 = 2 * (r * e1).sum().item() / n, 2 * (r * e2).sum().item() / n
    h11, h22 = (e1 * e1).sum().item() / n, (e2 * e2).sum().item() / n
    h12 = (e1 * e2).sum().item() / n
    exact = c + g1 * a + g2 * b + h11 * a * a + 2 * h12 * a * b + h22 * b * b
    np.testing.assert_allclose(np.asarray(surface.loss), exact, rtol=1e-10)


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
    )


def grid_of(model, x, y, normalized=True) -> np.ndarray:
    def evaluate(m):
        return nn.functional.cross_entropy(m(x), y).item(), math.nan

    if normalized:
        dirs = [filter_normalized(model, s) for s in (3, 4)]
    else:  # plain Gaussian directions, the same draws
        dirs = [[torch.randn(p.shape, generator=torch.Generator().manual_seed(s + k))
                 for k, p in enumerate(model.parameters())] for s in (3, 4)]  # fmt: skip
    surface = Surface.empty(Settings(dims=2, points=5, span=1.0, samples=8, seed=3))
    fill(model, surface, dirs, evaluate)
    return np.asarray(surface.loss)


def test_rescaling_a_relu_layer_leaves_the_normalized_landscape_unchanged():
    torch.manual_seed(0)
    model = small_net()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 2, (8,))
    rescaled = small_net()
    rescaled.load_state_dict(model.state_dict())
    c = 7.0
    with torch.no_grad():  # conv 1 (weights and bias) × c, conv 2's weights / c: same function
        rescaled[0].weight.mul_(c)
        rescaled[0].bias.mul_(c)
        rescaled[2].weight.div_(c)
    torch.testing.assert_close(rescaled(x), model(x))
    np.testing.assert_allclose(grid_of(rescaled, x, y), grid_of(model, x, y), rtol=1e-4)
    # without the normalization the same rescaling changes the picture
    plain, scaled = grid_of(model, x, y, False), grid_of(rescaled, x, y, False)
    assert np.abs(plain - scaled).max() > 1e-2


def test_weights_and_buffers_come_back_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 1, 5, 5)

    def evaluate(m):
        return m(x).pow(2).mean().item(), math.nan

    dirs = [filter_normalized(model, 0, include_1d=True)]
    for bn in ("eval", "train"):  # train: batch statistics, running ones updated, then restored
        grids = []
        for _ in range(2):  # dropout stays off in both modes: the same grid twice
            surface = Surface.empty(Settings(dims=1, points=9, span=1.0, samples=16, seed=0, bn=bn))
            fill(model, surface, dirs, evaluate)
            grids.append(surface.loss)
            after = model.state_dict()
            assert all(torch.equal(after[k], v) for k, v in before.items())
        assert grids[0] == grids[1]


def test_flatness_numbers_of_a_known_bowl():
    s = Settings(dims=2, points=21, span=1.0, samples=1, seed=0)
    surface = Surface.empty(s)
    a = np.asarray(surface.coords)
    k = 3.0
    surface.loss = (0.5 + k * (a[None, :] ** 2 + a[:, None] ** 2)).tolist()
    f = flatness(surface, radius=0.5)
    assert f["loss_at_centre"] == pytest.approx(0.5)
    assert f["curvature"] == pytest.approx(4 * k)  # ∂²/∂a² + ∂²/∂b² of k(a² + b²)
    assert f["laplacian_var"] == pytest.approx(0.0, abs=1e-9)
    assert f["rise"] == pytest.approx(k * 0.25, rel=0.02)  # bilinear between grid points


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    from tests.conftest import tiny_recipe

    folder = tmp_path_factory.mktemp("landscape")
    a = train(tiny_recipe(folder, "data.train_subset=600", "train.keep_every=1", "train.epochs=3"))
    b = train(tiny_recipe(folder, "data.train_subset=600", "model.blocks=2"))
    return [a.path, b.path]


def test_a_budgeted_grid_goes_on_where_it_stopped(two_runs, tmp_path):
    run = two_runs[0]
    settings = Settings(dims=2, points=5, span=0.5, samples=100, seed=0)
    first = landscape([run], settings, budget_min=1e-9)[run.name]
    assert 0 < len(first.missing()) < 25  # a point or so, saved
    saved = Surface.load(run / "landscape" / "surface_2d.json")
    assert saved.missing() == first.missing()
    done = landscape([run], settings)[run.name]
    assert not done.missing()
    again = Surface.empty(settings)  # the same grid in one go: the same numbers
    (run / "landscape" / "surface_2d.json").unlink()
    whole = landscape([run], settings)[run.name]
    assert whole.loss == done.loss and whole.accuracy == done.accuracy
    assert again.settings == whole.settings
    assert (run / "landscape" / "landscape_contour.png").is_file()
    flat = json.loads((run / "landscape" / "flatness_2d.json").read_text())
    assert flat["loss_at_centre"] == pytest.approx(whole.loss[2][2])


def test_the_command_compares_runs_and_draws_the_training_path(two_runs, tmp_path):
    a, b = two_runs
    out = run_cli("landscape", str(a), str(b), "--dims", "1", "--points", "5", "--samples",
                  "100", "--out", str(tmp_path / "cmp"), "--names", "deeper,shallower")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "5 grid points x 100 images = 500 forward passes" in out.stdout
    assert (tmp_path / "cmp" / "landscape_1d.png").stat().st_size > 5000
    rows = json.loads((tmp_path / "cmp" / "flatness_1d.json").read_text())
    assert [r["model"] for r in rows] == ["deeper", "shallower"]
    path = run_cli("landscape", str(a), "--trajectory", "--points", "5", "--samples", "100")
    assert path.returncode == 0, path.stderr
    surface = Surface.load(a / "landscape" / "surface_2d.json")
    assert surface.settings.directions == "pca" and len(surface.extra["path"]) == 3
    assert surface.extra["path"][-1] == pytest.approx([0.0, 0.0], abs=1e-5)  # ends at w
    pca = Settings(dims=2, points=5, span=1.0, samples=100, seed=0, directions="pca")
    with pytest.raises(CnnlabError, match="train.keep_every=1"):  # b kept no epochs
        landscape([b], pca)
    shown = make_charts(RunView(a), "landscape")  # what the run's report shows
    assert {c.key for c in shown} >= {
        "landscape_contour",
        "landscape_surface",
        "landscape_curve_1d",
    }
