"""Attributions and their sanity check (Adebayo et al. 2018): Grad-CAM and its companions on a
trained run, and cascading randomization on cases whose answer is known."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.viz import RunView, make_charts
from cnnlab.viz.attributions import METHODS, Score, attribute_all
from cnnlab.viz.guided import guided_nonlinearities
from cnnlab.viz.hooks import analysis_mode, last_conv
from cnnlab.viz.sanity import CONTROL, cascade, groups, layers_top_down, spearman, verdict


class PixelWeights(nn.Module):
    """y = sum over pixels of w * x: its gradient is w, whatever the image."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(28 * 28, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.lin(x.flatten(1)).squeeze(1)}


def test_rank_correlation_and_groups():
    a = torch.rand(3, 8, 8)
    assert torch.allclose(spearman(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a), -torch.ones(3, dtype=torch.float64))
    assert [len(g) for g in groups(list(range(10)), 4)] == [2, 3, 3, 2]
    assert groups([1, 2], 6) == [[1], [2]]


def test_known_answers_the_gradient_depends_on_the_weights_the_control_does_not():
    """The gradient of a linear score is its weights: once they are random, the map is
    unrelated to the trained one (rank correlation near 0); the edge detector has no
    weights, so its correlation is exactly 1."""
    torch.manual_seed(0)
    model = PixelWeights()
    with torch.no_grad():  # "trained": weights that grow across the image, a clear pattern
        model.lin.weight.copy_(torch.linspace(0, 1, 28 * 28)[None])
    x = torch.rand(4, 1, 28, 28)
    labels, maps, rho = cascade(model, "y", x, None, methods=("gradient",))
    assert labels[0] == "trained" and len(labels) == 2  # one layer: one step
    assert torch.allclose(maps["gradient"][0][0], model.lin.weight.abs().view(28, 28))
    assert torch.allclose(rho[CONTROL][-1], torch.ones(4, dtype=torch.float64))
    assert rho["gradient"][-1].abs().max() < 0.15
    said = verdict(rho)
    assert said["gradient"] == "depends on the weights"
    assert said[CONTROL] == "barely depends on them"
    assert torch.equal(model.lin.weight, torch.linspace(0, 1, 28 * 28)[None])  # untouched


def test_layers_are_randomized_from_the_heads_down(report_run):
    view = RunView(report_run[0])
    names = [n for n, _ in layers_top_down(view.model)]
    heads = [n for n in names if n.startswith("heads.")]
    assert names[: len(heads)] == heads and heads  # the heads first
    first_conv = next(n for n in reversed(names) if "conv" in n or n.endswith(".0"))
    assert names.index(first_conv) > len(heads)  # the first layer last


def test_every_method_maps_a_trained_run_and_the_figures_draw(report_run, tmp_path):
    view = RunView(report_run[0])
    x = view.batch("test", torch.arange(3))
    target = view.test_predictions.pred["cls"][:3].long()
    for method in METHODS:
        maps = attribute_all((method,), view.model, "cls", x, target, view.splits.black)[method]
        assert maps.shape == (3, 28, 28) and (maps >= 0).all() and maps.sum() > 0, method
    every = attribute_all(METHODS, view.model, "cls", x, target, view.splits.black)
    for method in METHODS:  # all at once (one Grad-CAM map serving two methods): the same
        one = attribute_all((method,), view.model, "cls", x, target, view.splits.black)[method]
        torch.testing.assert_close(every[method], one)
    (cls, ink) = make_charts(view, "attributions", images=3)
    assert cls.key == "attributions_cls" and ink.key == "attributions_ink"
    sanity, grid = make_charts(view, "sanity", images=2, steps=3)
    rho = sanity.extra["rho"]
    assert set(rho) == {*METHODS, CONTROL} and len(sanity.extra["labels"]) == 4
    assert torch.allclose(rho[CONTROL][-1], torch.ones(2, dtype=torch.float64))
    assert sanity.save(tmp_path).stat().st_size > 2000 and grid.save(tmp_path).stat().st_size > 2000
    lowest = min(float(v.mean()) for values in rho.values() for v in values)
    assert sanity.figure.axes[0].get_ylim()[0] <= min(-0.2, lowest)  # no line cut off below
    legend = [t.get_text() for t in sanity.figure.legends[0].get_texts()]  # beneath the axes
    assert len(legend) == len(rho) and legend[-1].startswith(f"{CONTROL}: ")


def test_guided_grad_cam_from_the_grad_cam_map_equals_captums_own(report_run):
    """Guided Grad-CAM reuses the Grad-CAM map rather than computing it again in Captum's
    `GuidedGradCam`: the maps must be the same."""
    from captum.attr import GuidedGradCam

    view = RunView(report_run[0])
    x = view.batch("test", torch.arange(4))
    target = view.test_predictions.pred["cls"][:4].long()
    ours = attribute_all(("Guided Grad-CAM",), view.model, "cls", x, target)["Guided Grad-CAM"]
    score = Score(view.model, "cls", target)
    with analysis_mode(view.model), guided_nonlinearities(view.model):
        theirs = GuidedGradCam(score, last_conv(view.model)[1]).attribute(
            x.clone().requires_grad_()
        )
    torch.testing.assert_close(ours, theirs.detach().abs().sum(1).float())
    assert ours.sum() > 0


def test_grad_cam_and_the_gradient_from_one_pass_equal_captums_own(report_run):
    """Grad-CAM and the plain gradient share one backward pass rather than running Captum's
    `LayerGradCam` and `Saliency`: the maps must be the same."""
    from captum.attr import LayerAttribution, LayerGradCam, Saliency

    view = RunView(report_run[0])
    x = view.batch("test", torch.arange(4))
    target = view.test_predictions.pred["cls"][:4].long()
    ours = attribute_all(("Grad-CAM", "gradient"), view.model, "cls", x, target)
    score = Score(view.model, "cls", target)
    with analysis_mode(view.model):
        cam = LayerGradCam(score, last_conv(view.model)[1]).attribute(
            x.clone().requires_grad_(), relu_attributions=True
        )
        gradient = Saliency(score).attribute(x.clone().requires_grad_(), abs=True)
    up = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[2:]), "bilinear")
    torch.testing.assert_close(ours["Grad-CAM"], up[:, 0].float().clamp_min(0))
    torch.testing.assert_close(ours["gradient"], gradient.detach().sum(1).float())
    assert ours["Grad-CAM"].sum() > 0 and ours["gradient"].sum() > 0


def test_integrated_gradients_in_passes_that_fit_memory_equal_one_pass(report_run, monkeypatch):
    """Integrated Gradients' path images go through the model with their gradients as many
    at a time as fit EVAL_BYTES (at most 64): cut smaller, the same maps."""
    from captum.attr import IntegratedGradients

    import cnnlab.build as building

    view = RunView(report_run[0])
    x = view.batch("test", torch.arange(4))
    target = view.test_predictions.pred["cls"][:4].long()
    method = ("Integrated Gradients",)
    whole = attribute_all(method, view.model, "cls", x, target, ig_steps=8)[method[0]]
    leaves = building.map_sizes(view.model, x[:1])[1]
    monkeypatch.setattr(building, "EVAL_BYTES", 2 * 4 * leaves * 5)  # 5 images a pass
    asked = []
    attribute = IntegratedGradients.attribute

    def spy(self, *args, **kwargs):
        asked.append(kwargs["internal_batch_size"])
        return attribute(self, *args, **kwargs)

    monkeypatch.setattr(IntegratedGradients, "attribute", spy)
    cut = attribute_all(method, view.model, "cls", x, target, ig_steps=8)[method[0]]
    assert asked == [5]
    torch.testing.assert_close(cut, whole, rtol=1e-4, atol=1e-6)
