"""Pretrained backbones: ImageNet weights used as they are (offline), weight files checked
key by key, the backbone's own input adaptation, freezing, and heads on cached features."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import skimage.data
import timm
import torch
from PIL import Image

from cnnlab.build import build, check_data
from cnnlab.comparison import compare
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train
from cnnlab.loop import Trainer
from cnnlab.models import create_backbone, create_model
from cnnlab.models.timm_backbone import InputAdapter, TimmConfig
from cnnlab.models.weights import lite0_file, lite0_key, load_checked, read_state_dict
from cnnlab.optim import build_optimizer
from cnnlab.recipe import load_recipe
from cnnlab.report import build_report
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.viz import make_charts
from cnnlab.viz.curves import SWITCH_LABEL as SWITCH
from cnnlab.viz.run_view import RunView
from tests.conftest import ROOT, TINY, run_cli

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
LOWDATA = ROOT / "cnnlab" / "recipes" / "fashion_finetune_lowdata.yaml"


def test_predict_names_the_cat_and_the_espresso(tmp_path: Path):
    """Part C: the offline EfficientNet-Lite0, as it is, on scikit-image's photographs."""
    cat, coffee = tmp_path / "chelsea.png", tmp_path / "mugs" / "coffee.png"
    for folder in (tmp_path / "mugs", tmp_path / ".thumbnails"):
        folder.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(cat)
    Image.fromarray(skimage.data.coffee()).save(coffee)  # in a sub-folder: found too
    Image.fromarray(skimage.data.coffee()).save(tmp_path / ".thumbnails" / "c.png")
    figure = tmp_path / "top5.png"
    out = run_cli(
        "predict", "--model", "efficientnet_lite0", str(tmp_path), "--figure", str(figure)
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    first = {
        lines[i].rsplit("/", 1)[-1]: lines[i + 1]
        for i in range(len(lines) - 1)
        if lines[i].endswith(".png")
    }
    names = timm.data.ImageNetInfo()
    cat_names = {names.index_to_description(i) for i in CATS}
    assert first["chelsea.png"].split("%", 1)[1].strip() in cat_names, out.stdout
    assert first["coffee.png"].split("%", 1)[1].strip() in ("espresso", "cup"), out.stdout
    assert len(first) == 2 and ".thumbnails" not in out.stdout  # hidden: left out
    assert figure.stat().st_size > 10_000
    assert out.stderr == (
        "no run folder named first: efficientnet_lite0's ImageNet classes answer (a run "
        "folder first answers with its own model)\n"
    )
    (tmp_path / "runs" / "cells-1").mkdir(parents=True)  # a folder of run folders
    (tmp_path / "runs" / "cells-1" / "recipe.yaml").write_text("name: cells\n")
    for first, says in (
        (
            tmp_path / "runs",
            f"holds run folders, not images; name one first: cnnlab predict "
            f"{tmp_path / 'runs' / 'cells-1'} IMAGES",
        ),
        (tmp_path / "runs" / "cels-1", "cels-1: no such run folder, exported file or image;"),
    ):
        wrong = run_cli("predict", str(first), str(cat))
        assert wrong.returncode == 2 and says in wrong.stderr, wrong.stderr
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    bad = run_cli("predict", str(tmp_path / "broken.jpg"), "--figure", str(figure))
    assert bad.returncode == 2 and "broken.jpg: not a readable image" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_key_map_places_every_packaged_weight():
    state = read_state_dict(lite0_file())
    renamed = {lite0_key(k): v for k, v in state.items()}
    model = timm.create_model("tf_efficientnet_lite0")
    assert renamed.keys() == model.state_dict().keys()  # 296 keys, none left over
    load_checked(model, renamed, "lite0")
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])


def weights_file(tmp_path: Path, change) -> str:
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    change(state)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    return str(path)


def backbone_with(weights: str):
    return create_backbone(TimmConfig(name="resnet18", weights=weights, input_size=32), 3, (32, 32))


def test_bad_weight_files_are_refused_naming_the_first_offending_key(tmp_path: Path):
    backbone_with(weights_file(tmp_path, lambda s: None))  # the right file loads
    wrong = weights_file(tmp_path, lambda s: s.update({"layer1.0.conv1.weight": torch.zeros(1)}))
    with pytest.raises(CnnlabError, match=r"key 'layer1.0.conv1.weight' has shape \(1,\)"):
        backbone_with(wrong)
    missing = weights_file(tmp_path, lambda s: s.pop("bn1.running_var"))
    with pytest.raises(CnnlabError, match="missing key 'bn1.running_var'"):
        backbone_with(missing)
    extra = weights_file(tmp_path, lambda s: s.update({"mystery.weight": torch.zeros(2)}))
    with pytest.raises(
        CnnlabError,
        match=r"1 key the model does not have, such as 'mystery.weight'; the file is for "
        r"another architecture or size$",
    ):
        backbone_with(extra)


def test_a_lightning_checkpoints_weights_load_under_their_prefix_and_a_line_says_so(
    tmp_path: Path, capsys
):
    own = timm.create_model("resnet18", num_classes=1000).state_dict()
    wrapped = {"state_dict": {f"model.{k}": v for k, v in own.items()}, "epoch": 3}
    wrapped["state_dict"]["loss_fn.weight"] = torch.ones(4)  # the module's other parts
    torch.save(wrapped, tmp_path / "lightning.ckpt")
    backbone = backbone_with(str(tmp_path / "lightning.ckpt"))
    assert torch.equal(backbone.body.conv1.weight, own["conv1.weight"])
    assert capsys.readouterr().err.strip() == (
        f"model.weights {tmp_path / 'lightning.ckpt'}: 120 tensors loaded; read under "
        "'model.'; its fc.* left out (ImageNet's classifier)"
    )


class Payload:
    """A pickled object: loading it must never run its code."""

    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_with_objects_and_a_broken_file_are_refused(tmp_path: Path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": Payload()}, f, protocol=2)
    with pytest.raises(CnnlabError, match="carries pickled Python objects and was refused"):
        backbone_with(str(evil))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CnnlabError, match="not a readable safetensors file"):
        backbone_with(str(broken))
    with pytest.raises(CnnlabError, match="not found"):
        backbone_with(str(tmp_path / "absent.pt"))
    with pytest.raises(ValueError, match="pretrained: false trains the network from scratch"):
        TimmConfig(name="resnet18", pretrained=False, weights=str(evil))  # loaded all the same
    garbage = tmp_path / "garbage.pth"  # not a pickle at all: torch says "Weights only ..."
    garbage.write_bytes(b"not a weight file")
    with pytest.raises(CnnlabError, match=r"garbage.pth is not a readable weight file: not a "):
        backbone_with(str(garbage))


def test_the_adapter_makes_three_normalized_channels_at_the_networks_size():
    adapt = InputAdapter(64, (0.5, 0.4, 0.3), (0.5, 0.25, 0.1), "bicubic")
    out = adapt(torch.full((2, 1, 28, 28), 0.5))
    assert out.shape == (2, 3, 64, 64)
    expected = torch.tensor([0.0, 0.4, 2.0]).view(1, 3, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected)


def lowdata(tmp_path: Path, *overrides: str):
    quick = [o for o in TINY if not o.startswith(("model.", "data.train_subset"))]
    quick += ["model.input_size=32", "data.train_subset=300", "data.test_subset=200"]
    return load_recipe(LOWDATA, [f"output_dir={tmp_path / 'runs'}", *quick, *overrides])


def test_freezing_strategies_train_what_they_say(tmp_path: Path):
    def trainable(freeze: str, **more) -> tuple[int, list]:
        r = lowdata(
            tmp_path, f"model.freeze={freeze}", *(f"model.{k}={v}" for k, v in more.items())
        )
        model = create_model(r.model, 1, (28, 28), check_data(r))
        body = model.backbone.body
        opt = build_optimizer(r.train.optimizer, model)
        count = sum(p.numel() for p in body.parameters() if p.requires_grad)
        return count, [(len(g["params"]), g["lr"]) for g in opt.param_groups], model

    everything = sum(
        p.numel() for p in timm.create_model("tf_efficientnet_lite0", num_classes=0).parameters()
    )
    full, groups, _ = trainable("none", backbone_lr=0.1)
    assert full == everything and {lr for _, lr in groups} == {1e-3, 1e-4}
    head, groups, model = trainable("all_but_head")
    assert head == 0 and model.backbone.frozen and {lr for _, lr in groups} == {1e-3}
    last, _, model = trainable("last_stages", train_stages=1)
    stage5 = sum(p.numel() for p in model.backbone.body.blocks[5:].parameters())
    tail = stage5 + sum(
        p.numel()
        for m in (model.backbone.body.conv_head, model.backbone.body.bn2)
        for p in m.parameters()
    )
    assert last == tail  # blocks 5 and 6 (stride 32) and the head conv, nothing before
    model.train()
    assert not model.backbone.body.bn1.training and model.backbone.body.bn2.training
    with pytest.raises(CnnlabError, match="train them all with freeze: none"):
        trainable("last_stages", train_stages=5)


def test_heads_on_cached_features_score_as_the_whole_model_does(tmp_path: Path):
    both = ["tasks.ink.type=regression", "tasks.ink.target=ink"]  # two heads, one frozen body
    run = train(lowdata(tmp_path, "model.freeze=all_but_head", "train.epochs=15", *both))
    test = json.loads(run.test_path.read_text())
    best = torch.load(run.best_path, weights_only=True)["model"]
    pretrained = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    lite0 = {lite0_key(k): v for k, v in read_state_dict(lite0_file()).items()}
    load_checked(pretrained, lite0, "lite0", skip=("classifier.",))
    for key, value in pretrained.state_dict().items():  # nothing of the network moved
        assert torch.equal(best[f"backbone.body.{key}"], value), key
    assert evaluate_run(run.path) == test  # eval: built without fetching, then cached again
    view = RunView(run.path).test_predictions  # the whole model on the test images
    accuracy = (view.pred["cls"] == view.truth["cls"]).float().mean().item()
    assert accuracy == pytest.approx(test["test.cls.accuracy"], abs=1.5 / 200)
    assert test["test.cls.accuracy"] > 0.3  # ImageNet features tell clothes apart
    # a backbone_lr of a backbone that never trains: no rate of its own, no switch marked
    assert not any("lr.backbone" in row for row in run.read_metrics())
    (chart,) = make_charts(RunView(run.path), "curves")
    assert switch_marks(chart) == [] and not chart.plotly.layout.shapes
    assert chart.caption == "Train (dashed) and validation (solid) loss and metrics per epoch."
    # the ink target, derived from each image, was cached with the features: it is learnt
    ink = view.truth["ink"]
    assert test["test.ink.rmse"] < 0.8 * (ink - ink.mean()).pow(2).mean().sqrt().item()


def test_a_report_after_cached_features_makes_its_own_test_predictions(tmp_path: Path):
    """The test pass of heads on cached features runs no image through the network: the
    report cannot take its predictions (the last conv's peaks) from it."""
    from cnnlab.experiment import _recorder

    frozen = ["model.freeze=all_but_head", "train.report=true"]
    trainer = Trainer(build(lowdata(tmp_path, *frozen)))
    trainer.settle()  # as training starts: the features are computed
    assert trainer.splits is not trainer.built.splits  # the heads' data: pooled features
    assert _recorder(trainer) is None
    images = Trainer(build(lowdata(tmp_path, *frozen, "model.cache_features=false")))
    assert _recorder(images) is not None  # images go through the network: the pass gathers


def test_an_offline_download_is_one_line_with_the_ways_out(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no waiting on a net
    r = lowdata(tmp_path, "model.name=resnet18", "model.weights=null")
    with pytest.raises(
        CnnlabError, match="could not get its pretrained weights.*model.weights=FILE"
    ):
        train(r)


def test_offline_a_download_fails_in_one_look_not_a_minute_of_retries(monkeypatch):
    """Without a connection the hub's client retried for 50 s before failing; one look at
    the host says as much, and its cache is still read (offline mode while it tries)."""
    import time

    from huggingface_hub import constants

    from cnnlab.models import timm_backbone

    monkeypatch.setattr(timm_backbone, "reachable", lambda host: False)
    before = constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(CnnlabError) as err:
        timm_backbone.pretrained_state("resnet18")
    assert time.monotonic() - start < 20
    assert str(err.value) == (
        "model.name resnet18: timm could not get its pretrained weights (no connection to "
        "huggingface.co and no copy in the hub's cache); offline, give model.weights=FILE, "
        "use efficientnet_lite0, or set model.pretrained=false"
    )
    assert constants.HF_HUB_OFFLINE is before  # put back


# gradual unfreezing: epoch 1 as `freeze` says, epoch 2 the whole backbone (model.unfreeze_at)
UNFREEZE = ["train.precision=fp32", "train.epochs=2", "model.unfreeze_at=2"]


def body_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.backbone.body.state_dict().items()}


@pytest.mark.parametrize("freeze", ["all_but_head", "last_stages"])
def test_unfreeze_at_leaves_the_frozen_part_as_it_was_until_its_epoch(
    tmp_path: Path, capsys, freeze: str
):
    """Weights and BatchNorm statistics of the frozen part bit for bit through epoch 1, the
    heads on cached features there (all_but_head); from epoch 2 every weight trains, on
    images, with the optimizer it had from the start, and the BatchNorm layers frozen before
    keep their pretrained statistics."""
    recipe = lowdata(tmp_path, f"model.freeze={freeze}", *UNFREEZE, "train.progress=true")
    seen = []
    trainer = Trainer(
        build(recipe),
        RunFolder.create(recipe),
        on_epoch=lambda row: seen.append((body_state(trainer), type(trainer.splits).__name__)),
    )
    body = trainer.model.backbone.body
    frozen = {n.rpartition(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen  # a part of the body is frozen to begin with
    is_frozen = lambda key: key.rpartition(".")[0] in frozen  # noqa: E731
    before, groups = (
        body_state(trainer),
        [list(g["params"]) for g in trainer.optimizer.param_groups],
    )
    capsys.readouterr()
    trainer.fit()
    (first, data1), (second, data2) = seen
    cached = freeze == "all_but_head"
    assert (data1, data2) == ("CachedSplits" if cached else "Splits", "Splits")
    assert all(torch.equal(first[k], v) for k, v in before.items() if is_frozen(k))
    assert cached or any(not torch.equal(first[k], v) for k, v in before.items())
    moved = {k for k, v in before.items() if not torch.equal(second[k], v)}
    assert {n for n, _ in body.named_parameters()} <= moved  # every weight trained in epoch 2
    stats = {k for k in before if k.endswith(("running_mean", "running_var"))}
    kept = {k for k in stats if is_frozen(k)}  # the pretrained statistics, for good
    assert kept and not kept & moved
    assert cached or stats - kept <= moved  # the stages that trained from the start: theirs
    assert [list(g["params"]) for g in trainer.optimizer.param_groups] == groups
    out = capsys.readouterr().out
    assert out.count("pooled features of") == int(cached)
    (line,) = [s for s in out.splitlines() if "the backbone trains" in s]
    assert line.startswith("epoch 2: the backbone trains from now on, at 0.1 × lr (")
    assert line.endswith("not cached features") == cached


@pytest.fixture(scope="module")
def unfreezing(tmp_path_factory) -> tuple:
    """A run that trains its heads on cached features in epoch 1 and everything in epoch 2,
    with SGD's momentum and a weight average; uninterrupted, for the resumes to equal."""
    more = ["train.optimizer.name=sgd", "train.optimizer.lr=0.01", "train.ema_decay=0.9"]
    tmp = tmp_path_factory.mktemp("unfreeze")
    recipe = lowdata(tmp, "model.freeze=all_but_head", *UNFREEZE, *more)
    return recipe, train(recipe)


@pytest.mark.parametrize("stop_at", [3, 11])  # in epoch 1 (cached features), in epoch 2
def test_a_run_resumed_before_or_after_unfreezing_equals_the_uninterrupted_one(
    unfreezing, stop_at: int
):
    from tests.test_train import assert_same_run, interrupted

    recipe, reference = unfreezing
    run = interrupted(recipe, stop_at)
    assert load_checkpoint(run.last_path)["loop"]["epoch"] == stop_at // 8  # 8 steps an epoch
    assert_same_run(train(recipe, resume=run.path), reference)
    # the finished run is the whole model: eval runs it on the test images, as its test did
    assert evaluate_run(reference.path) == json.loads(reference.test_path.read_text())


def switch_marks(chart) -> list[list[float]]:
    """The x of each "backbone trains from here" marker, over the chart's panels."""
    axes = [ax for ax in chart.figure.axes if ax.get_visible()]
    return [list(ln.get_xdata()) for ax in axes for ln in ax.lines if ln.get_label() == SWITCH]


def test_the_switch_shows_in_the_metrics_the_curves_and_their_caption(unfreezing, tmp_path):
    """metrics.jsonl gives the backbone's own rate from the epoch it trains; the curves mark
    the switch between epochs 1 and 2 in every panel, and the caption says what trained on
    either side, and when best.pt is from before it, that the heads-only model was tested."""
    recipe, run = unfreezing
    first, second = run.read_metrics()
    assert "lr.backbone" not in first  # epoch 1: the heads alone trained
    assert second["lr.backbone"] == pytest.approx(recipe.model.backbone_lr * second["lr"])
    (chart,) = make_charts(RunView(run.path), "curves")
    marks = switch_marks(chart)
    assert marks and all(x == [1.5, 1.5] for x in marks)
    assert len(marks) == len([ax for ax in chart.figure.axes if ax.get_visible()])
    assert [s.x0 for s in chart.plotly.layout.shapes] == [1.5] * len(marks)
    assert chart.caption.startswith("Train (dashed) and validation (solid) loss")
    assert (
        " The dotted line marks model.unfreeze_at: before it only the heads, on cached pooled "
        "features without augmentation, trained; from epoch 2 on the whole network trains, "
        "the backbone at 0.1 × lr."
    ) in chart.caption
    best = json.loads(run.test_path.read_text())["best_epoch"]
    assert ("heads-only phase" in chart.caption) == (best == 1)
    # the same run had its best validation epoch before the switch
    copy = Path(shutil.copytree(run.path, tmp_path / "heads_best"))
    ckpt = load_checkpoint(copy / "checkpoints" / "best.pt")
    ckpt["loop"]["epoch"] = 1
    torch.save(ckpt, copy / "checkpoints" / "best.pt")
    tested = json.loads(run.test_path.read_text()) | {"best_epoch": 1}
    (copy / run.test_path.name).write_text(json.dumps(tested))
    (chart,) = make_charts(RunView(copy), "curves")
    assert chart.caption.endswith(
        " The best epoch is before it: the tested model (best.pt, epoch 1) is from the "
        "heads-only phase."
    )
    report = build_report(copy, show=False).read_text()
    assert "the tested model (best.pt, epoch 1) is from the heads-only phase" in report
    assert compare([run.path, copy], out=tmp_path / "compare").table["best epoch"].tolist() == [
        best,
        1,
    ]


def test_a_run_stopped_before_the_switch_says_its_backbone_never_trained(unfreezing):
    """No marker where the run never reached model.unfreeze_at; the caption says why the
    tested model is the heads-only one."""
    from tests.test_train import interrupted

    run = interrupted(unfreezing[0], 9)  # the first step of epoch 2: 8 steps an epoch
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    (chart,) = make_charts(RunView(run.path), "curves")
    assert switch_marks(chart) == [] and not chart.plotly.layout.shapes
    assert chart.caption.endswith(
        " The run ended before epoch 2 (model.unfreeze_at): the tested model (best.pt, "
        "epoch 1) is from the heads-only phase."
    )


@pytest.mark.parametrize(
    "sets, says",
    [
        (["model.freeze=none", "model.unfreeze_at=2"], "set freeze: all_but_head"),
        (["model.freeze=all_but_head", "model.unfreeze_at=1"], "give 2 or later"),
        (["model.unfreeze_at=4", "train.epochs=3"], r"after the last epoch \(train.epochs 3\)"),
    ],
)
def test_an_unfreeze_at_that_cannot_unfreeze_is_one_line(tmp_path: Path, sets, says):
    with pytest.raises(CnnlabError, match=says) as err:
        lowdata(tmp_path, *sets)
    assert "\n" not in str(err.value)
