"""`cnnlab count`: parameters and MACs per layer, two ways, and seeds 001 and 002's closed
forms."""

from __future__ import annotations

import pytest
import torch

from cnnlab.catalog import RECIPES
from cnnlab.closed_forms import closed_forms, seed_for
from cnnlab.closed_forms.colorizer_counts import colorizer_terms
from cnnlab.closed_forms.plain_cnn_counts import first_classifier, plain_cnn_terms
from cnnlab.count import count_recipe, measure, parse_input
from cnnlab.errors import CnnlabError
from cnnlab.models import BACKBONES, MultiTaskModel, create_backbone
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
    terms = plain_cnn_terms(costs, model, shape, "cls")
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
    terms = {(t.layer, t.what): t for t in plain_cnn_terms(costs, model, shape, "cls")}
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
        plain_cnn_terms(costs, model, shape, "cls")


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
    assert (
        "parameters outside the formulas of the iNaturalist report (seed 002): none" in out.stdout
    )


def test_formulas_are_for_the_plain_cnn_only():
    recipe = load_recipe(DEMO, ["model={backbone: resnet, n: 1}", "tasks.ink=null"])
    model, shape, costs = count_recipe(recipe, (3, 32, 32))
    with pytest.raises(CnnlabError, match="this model's backbone is a ResNet"):
        plain_cnn_terms(costs, model, shape, "cls")


def test_formulas_refuse_a_strided_stem():
    recipe = load_recipe(DEMO, ["model.stem=strided", "tasks.ink=null"])
    model, shape, costs = count_recipe(recipe, (1, 28, 28))
    with pytest.raises(CnnlabError, match="first block is one strided convolution"):
        plain_cnn_terms(costs, model, shape, "cls")


# ------------------------------------------------------------------ seed 001's colorizer

COLORIZE = RECIPES / "colorize.yaml"  # NIC 1, NF 32, k 5, NC 24 = decoder_out
SMALL = ["model.filters=8", "model.kernel_size=3", "data.colorize.colours=10",
         "model.decoder_out=10"]  # fmt: skip
SIZES = {(): (32, 5, 24), tuple(SMALL): (8, 3, 10)}  # overrides: NF, k, NC
DECONVS = ["deconv 1", "deconv 2", "deconv 3"]


def seed001(overrides=(), size=32):
    """{(layer, quantity): term} of the shipped colorize recipe's real model at size×size."""
    recipe = load_recipe(COLORIZE, list(overrides))
    model, shape, costs = count_recipe(recipe, (1, size, size))
    return {(t.layer, t.what): t for t in colorizer_terms(costs, model, shape, "colour")}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("overrides", list(SIZES))
def test_seed001s_encoder_weights_and_classifier_are_the_models(overrides, size):
    nf, k, nc = SIZES[overrides]
    terms = seed001(overrides, size)
    weights = {layer: terms[(layer, "weights")] for layer in ["conv 1", "conv 2", "conv 3"]}
    assert [t.measured for t in weights.values()] == [nf * k * k, 2 * nf * nf * k * k,
                                                      8 * nf * nf * k * k]  # fmt: skip
    assert all(t.agrees and t.formula == t.measured for t in weights.values())
    for what, value in [("weights", nc * nc), ("outputs", nc * size * size),
                        ("MACs", nc * nc * size * size)]:  # fmt: skip
        term = terms[("classifier", what)]
        assert term.formula == term.measured == value and not term.why


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("overrides", list(SIZES))
def test_seed001s_deconv_connections_are_four_times_the_real_ones(overrides, size):
    nf, _, nc = SIZES[overrides]
    terms = seed001(overrides, size)
    area = size * size
    # every input pixel meets every weight once: weights × INPUT area
    real = [8 * nf * nf * 4 * area // 64, 2 * nf * nf * 4 * area // 16, nf * nc * 4 * area // 4]
    areas = [("HW/16", "HW/64"), ("HW/4", "HW/16"), ("HW", "HW/4")]  # output, input
    for layer, macs, (out_area, in_area) in zip(DECONVS, real, areas, strict=True):
        term = terms[(layer, "MACs")]
        assert term.measured == macs and term.formula == 4 * macs and not term.agrees
        assert term.why == (  # the one reason
            f"seed 001 multiplies a transposed conv's weights by its output area {out_area}; "
            f"each weight is used once per INPUT pixel ({in_area}): 4× fewer"
        )
        assert terms[(layer, "weights")].agrees and terms[(layer, "outputs")].agrees
    assert terms[("total", "MACs")].why == "it carries the disagreement of " + ", ".join(DECONVS)
    wrong = [key for key, t in terms.items() if not t.agrees]
    assert wrong == [*((layer, "MACs") for layer in DECONVS), ("total", "MACs")]


@pytest.mark.parametrize("overrides", [(), tuple(SMALL), ("data.colorize.colours=10",)])
def test_seed001s_totals_are_the_sums_of_its_own_terms(overrides):
    """A check of seed 001's algebra: its simplified totals against its per-layer terms."""
    terms = seed001(overrides)
    for what in ["weights", "outputs", "MACs"]:
        own = [t for (layer, w), t in terms.items() if w == what and layer != "total"]
        assert len(own) == 7
        total = terms[("total", what)]
        assert total.formula == pytest.approx(sum(t.formula for t in own), abs=1e-6)
        assert total.measured == sum(t.measured for t in own)


@pytest.mark.parametrize("overrides", list(SIZES))
def test_weights_do_not_grow_with_the_image_outputs_and_macs_do_fourfold(overrides):
    small, large = seed001(overrides, 32), seed001(overrides, 64)
    for key, term in small.items():
        scale = 1 if key[1] == "weights" else 4
        assert large[key].formula == scale * term.formula, key
        assert large[key].measured == scale * term.measured, key


def test_a_decoder_that_does_not_end_in_nc_channels_is_named():
    terms = seed001(["data.colorize.colours=10"])  # NC 10, decoder_out still 24
    deconv = terms[("deconv 3", "weights")]
    assert (deconv.formula, deconv.measured) == (32 * 10 * 4, 32 * 24 * 4)
    assert "deconv 3 gives NC = 10 channels; this one gives 24 (model.decoder_out)" in deconv.why
    classifier = terms[("classifier", "weights")]
    assert (classifier.formula, classifier.measured) == (100, 240)
    assert "classifier reads NC = 10 channels; this one reads 24" in classifier.why
    assert terms[("conv 3", "weights")].agrees and terms[("classifier", "outputs")].agrees


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("tasks.colour.head.hidden=[16]", r"1 hidden layer before it: set its head.hidden to \[\]"),
        ("tasks.colour.stage=2", r"reads encoder.2: set tasks.colour.stage to -1"),
    ],
)
def test_seed001s_formulas_need_its_classifier_on_the_last_stage(override, match):
    recipe = load_recipe(COLORIZE, [override])
    model, shape, costs = count_recipe(recipe, (1, 32, 32))
    with pytest.raises(CnnlabError, match=match):
        closed_forms(seed_for(model), recipe, model, costs, shape)


def test_each_backbone_gets_its_seeds_formulas():
    colorizer = load_recipe(COLORIZE, [])
    model, shape, costs = count_recipe(colorizer, (1, 32, 32))
    assert seed_for(model) == "001" and first_classifier(colorizer) is None  # not seed 002's
    forms = closed_forms("001", colorizer, model, costs, shape)
    assert forms.at == "NIC 1, NF 32, k 5, NC 24, H×W 32×32"
    assert sum(n for _, n in forms.outside) == 2 * (32 + 64 + 128 + 64 + 32 + 24) + 24
    cnn = load_recipe(DEMO, SEED002)
    assert seed_for(count_recipe(cnn, (3, 32, 32))[0]) == "002"


def test_counting_the_colorizer_reads_no_pixels(monkeypatch):
    from cnnlab.data import colorize, skimage_photos

    def no(*args, **kwargs):
        raise AssertionError("count read pixels")

    monkeypatch.setattr(skimage_photos, "read_photo", no)  # every photograph's pixels
    monkeypatch.setattr(colorize, "fit_palette", no)  # k-means on the training pixels
    _, shape, costs = count_recipe(load_recipe(COLORIZE, []), None)
    assert shape == (1, 32, 32)  # the grey image colorizing makes of the source's 3×32×32
    ups = [c for c in costs if c.kind == "ConvTranspose2d"]
    assert len(ups) == 3 and all(c.macs == c.counted_macs for c in ups)
    assert [c.macs for c in costs] == [c.counted_macs for c in costs]


def test_cli_count_puts_the_colorizer_beside_seed001s_formulas():
    out = run_cli("count", "colorize", "--input", "1x32x32")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    up = "| backbone.decoder.0.0 | ConvTranspose2d | 64×8×8 | 32,768 | 524,288 | 524,288 |"
    assert up in text  # both MAC columns: weights × the 4×4 input
    at = "NIC 1, NF 32, k 5, NC 24, H×W 32×32"
    assert f"closed forms of the colorization assignment (seed 001) at {at}" in text
    assert "| layer |  | formula | value | measured | agrees |" in text
    assert "| conv 1 | weights | NF·NIC·k² | 800 | 800 | yes |" in text
    assert "| deconv 1 | MACs | 32NF²·HW/16 | 2,097,152 | 524,288 | no: seed 001 multiplies" in text
    assert text.count("4× fewer |") == 3 and text.count("| no:") == 4
    weights = "k²(NF·NIC + 10NF²) + 40NF² + 4NF·NC + NC²"
    assert f"| total | weights | {weights} | 301,408 | 301,408 | yes |" in text
    outside = "parameters outside the formulas of the colorization assignment (seed 001): "
    assert outside + "backbone.encoder.0.1 64," in text


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_shapes_and_the_flop_counter_agree_on_every_backbone(backbone):
    """Every layer type a registered backbone is made of (convs strided or not, transposed
    convs, linear layers, and the parameter-free ones), counted both ways, layer by layer."""
    cfg = BACKBONES[backbone].config()
    body = create_backbone(cfg, 3, (32, 32))
    net = MultiTaskModel(body, {"cls": torch.nn.Linear(body.num_features, 10)})
    costs = measure(net, (3, 32, 32))
    kinds = {c.kind for c in costs if c.macs}
    assert kinds and [c.macs for c in costs] == [c.counted_macs for c in costs], kinds
