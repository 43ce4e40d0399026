"""The weight average: its arithmetic, what a run saves, and an exact resume with it on."""

import json

import torch
from torch import nn

from cnnlab.ema import WeightAverage
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train
from cnnlab.runs import load_checkpoint
from tests.test_train import assert_same_run, interrupted


def test_the_average_follows_the_formula_and_copies_integer_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(step=100)  # warmed up: (1 + 100) / (10 + 100) > 0.9, the decay itself
    torch.testing.assert_close(ema.module[0].weight, w0 + 0.1)  # 0.9 * w0 + 0.1 * (w0 + 1)
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((2,), 0.2))
    assert ema.module[1].num_batches_tracked.item() == 7
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_the_decay_warms_up_from_the_first_step():
    """At 0.99 from the first step a short run's average leaned on its random start (the
    demo on 5,000 images: validation fell each epoch while the model rose)."""
    model = nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.99)
    assert [ema.decay_at(t) for t in (0, 8, 890, 5000)] == [0.1, 0.5, 0.99, 0.99]
    with torch.no_grad():
        model.weight.add_(1.0)
    w = model.weight.detach().clone()
    ema.update(step=0)  # the first average is nine tenths the model's
    torch.testing.assert_close(ema.module.weight, w - 0.1)


def test_a_run_is_judged_by_its_average(tiny):
    run = train(tiny("train.epochs=2", "train.ema_decay=0.99", "data.train_subset=2000"))
    best = load_checkpoint(run.best_path)
    assert best["model"].keys() == best["train_model"].keys()
    differs = [k for k, v in best["model"].items() if not torch.equal(v, best["train_model"][k])]
    assert differs  # the average is not the trained weights
    assert evaluate_run(run.path) == json.loads(run.test_path.read_text())


def test_resume_with_an_average_reproduces_the_uninterrupted_run(tiny):
    recipe = tiny("train.epochs=2", "train.ema_decay=0.9", "data.train_subset=2000")
    reference = train(recipe)
    run = interrupted(recipe, 7)
    assert_same_run(train(recipe, resume=run.path), reference)
