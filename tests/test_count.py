"""`cnnlab count`: parameters and MACs per layer, two ways, and seed 002's closed forms."""

from __future__ import annotations

import pytest
import torch

from cnnlab.count import count_recipe, measure, parse_input, seed002_terms
from cnnlab.errors import CnnlabError
from cnnlab.recipe import load_recipe
from tests.conftest import DEMO, run_cli

M, K, N = 16, 5, 64  # seed 002's m filters of k×k in every layer, n dense neurons
SEED002 = [  # its CNN: 5 conv-activation-maxpool blocks, one dense layer, 10 classes
    "model.blocks=5", f"model.base_filters={M}", "model.filter_org=same",
    f"model.kernel_size={K}", "model.batch_norm=false", "model.init=default",
    f"tasks.cls.head.hidden=[{N}]", "tasks.ink=null", "train.monitor=val.cls.accuracy",
]  # fmt: skip


def seed002_totals(size: int, c: int = 3, layers: int = 5) -> tuple[int, int]:
    """Seed 002's answer, as its report writes it: total parameters and computations."""
    m = [c] + [M] * layers
    width = [size // 2**i for i in range(layers + 1)]
    d = width[layers]
    params = sum(m[i] * (K * K * m[i - 1] + 1) for i in range(1, layers + 1))
    params += (d * d * m[layers] + 1) * N + 10 * (N + 1)
    ops = 2 * K * K * sum(width[i - 1] ** 2 * m[i - 1] * m[i] for i in range(1, layers + 1))
    ops += 2 * d * d * m[layers] * N + 20 * N
    return params, ops


def test_a_seed002_cnn_costs_what_seed002_derived():
    recipe = load_recipe(DEMO, SEED002)
    model, shape, costs = count_recipe(recipe, (3, 224, 224))
    params, ops = seed002_totals(224)
    assert sum(p.numel() for p in model.parameters()) == params
    assert 2 * sum(c.macs for c in costs) == ops
    terms = seed002_terms(costs, model, shape, "cls")
    assert len(terms) == 2 * 5 + 4 and all(t.agrees for t in terms), terms


def test_the_two_measurements_agree_and_see_every_layer():
    model, _, costs = count_recipe(load_recipe(DEMO, []), None)
    assert [c.counted_macs for c in costs] == [c.macs for c in costs]
    assert sum(c.params for c in costs) == sum(p.numel() for p in model.parameters())
    conv = costs[0]
    assert (conv.kind, conv.shape, conv.macs) == ("Conv2d", (32, 28, 28), 28 * 28 * 32 * 9)


def test_measure_counts_transposed_convolutions():
    """MACs of a transposed conv: every input pixel meets every kernel weight once."""
    up = torch.nn.Sequential(torch.nn.ConvTranspose2d(8, 4, 2, stride=2))
    (cost,) = measure(up, (8, 5, 5))
    assert cost.shape == (4, 10, 10) and cost.macs == 5 * 5 * 8 * 4 * 2 * 2 == cost.counted_macs


def test_where_a_formula_disagrees_it_names_the_layer_and_the_term():
    recipe = load_recipe(DEMO, [*SEED002, "model.batch_norm=true"])
    model, shape, costs = count_recipe(recipe, (3, 100, 100))  # 100 is not a multiple of 32
    terms = {(t.layer, t.what): t for t in seed002_terms(costs, model, shape, "cls")}
    bias = terms[("conv 2", "parameters")]
    assert bias.formula - bias.measured == M and "16 biases" in bias.why
    assert terms[("conv 1", "computations")].agrees  # 100×100 is exact for the first layer
    late = terms[("conv 4", "computations")]
    assert not late.agrees and "W = I/2^(i-1) = 12.5; the layer really sees 12×12" in late.why
    assert "D = I/2^L = 3.125" in terms[("dense", "parameters")].why


def test_formulas_need_one_dense_layer():
    recipe = load_recipe(DEMO, [*SEED002, "tasks.cls.head.hidden=[64, 32]"])
    model, shape, costs = count_recipe(recipe, (3, 64, 64))
    with pytest.raises(CnnlabError, match=r"has 2 dense layers: set its head.hidden to one"):
        seed002_terms(costs, model, shape, "cls")


@pytest.mark.parametrize("text", ["3x224", "0x8x8", "axbxc", "3*224*224"])
def test_a_bad_input_shape_is_one_line(text):
    with pytest.raises(CnnlabError, match="give channels x height x width"):
        parse_input(text)


def test_cli_count_prints_the_layers_and_the_formulas():
    sets = [a for s in SEED002 for a in ("--set", s)]
    out = run_cli("count", "fashion_multitask", "--input", "3x224x224", *sets)
    assert out.returncode == 0, out.stderr
    params, _ = seed002_totals(224)
    assert f"| total |  |  | {params:,} |" in out.stdout
    assert out.stdout.count("| yes |") == 14 and "| no:" not in out.stdout
    assert "parameters outside seed 002's formulas: none" in out.stdout


def test_formulas_are_for_the_plain_cnn_only():
    recipe = load_recipe(DEMO, ["model={backbone: resnet, n: 1}", "tasks.ink=null"])
    model, shape, costs = count_recipe(recipe, (3, 32, 32))
    with pytest.raises(CnnlabError, match="this model's backbone is a ResNet"):
        seed002_terms(costs, model, shape, "cls")
