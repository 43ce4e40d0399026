"""Every parameter form of W&B's sweep schema: 2,000 values drawn by a random sweep follow the
form's definition (a Kolmogorov-Smirnov or chi-square test against a CDF written here from
W&B's definitions with scipy, at a fixed seed), TPE (bayes) samples it for 3 trials, and a
grid takes the forms W&B grids."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from scipy import stats

from cnnlab.errors import CnnlabError
from cnnlab.recipe import read_yaml
from cnnlab.sweeps.parameters import Param, flatten_parameters, parse_param

optuna.logging.set_verbosity(optuna.logging.WARNING)
DRAWS = 2000
ALPHA = 1e-3  # a form fails when its draws are this unlikely under its definition


def uniform_cdf(lo: float, hi: float):
    return stats.uniform(lo, hi - lo).cdf


def log_cdf(lo: float, hi: float):
    """X with log X uniform on [lo, hi] (lo, hi natural logs)."""
    return lambda x: stats.uniform(lo, hi - lo).cdf(np.log(np.clip(x, 1e-300, None)))


def inv_log_cdf(lo: float, hi: float):
    """X with log(1/X) uniform on [lo, hi]."""
    return lambda x: 1 - stats.uniform(lo, hi - lo).cdf(-np.log(np.clip(x, 1e-300, None)))


# (block, CDF of the continuous form, q or None, or a pmf {value: p} for a discrete form)
CONTINUOUS = {
    "uniform": ({"min": -2.0, "max": 3.0}, uniform_cdf(-2, 3)),
    "log_uniform": ({"distribution": "log_uniform", "min": -7, "max": -1}, log_cdf(-7, -1)),
    "log_uniform_values": (
        {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        log_cdf(math.log(1e-4), math.log(0.1)),
    ),
    "inv_log_uniform": (
        {"distribution": "inv_log_uniform", "min": 1, "max": 5},
        inv_log_cdf(1, 5),
    ),
    "inv_log_uniform_values": (
        {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 2.0},
        inv_log_cdf(-math.log(2.0), -math.log(0.01)),
    ),
    "normal": ({"distribution": "normal", "mu": 1.5, "sigma": 0.3}, stats.norm(1.5, 0.3).cdf),
    "log_normal": (
        {"distribution": "log_normal", "mu": -1.0, "sigma": 0.5},
        stats.lognorm(s=0.5, scale=math.exp(-1.0)).cdf,
    ),
    "beta": ({"distribution": "beta", "a": 2.0, "b": 5.0}, stats.beta(2.0, 5.0).cdf),
}
QUANTIZED = {  # W&B: round(X / q) * q, X of the continuous form
    "q_uniform": ({"distribution": "q_uniform", "min": 0, "max": 10, "q": 2}, uniform_cdf(0, 10)),
    "q_log_uniform": (
        {"distribution": "q_log_uniform", "min": 0, "max": 4, "q": 5},
        log_cdf(0, 4),
    ),
    "q_log_uniform_values": (
        {"distribution": "q_log_uniform_values", "min": 1, "max": 100, "q": 10},
        log_cdf(0, math.log(100)),
    ),
    "q_normal": ({"distribution": "q_normal", "mu": 3, "sigma": 2, "q": 1}, stats.norm(3, 2).cdf),
    "q_log_normal": (
        {"distribution": "q_log_normal", "mu": 1, "sigma": 0.5, "q": 0.5},
        stats.lognorm(s=0.5, scale=math.e).cdf,
    ),
    "q_beta": ({"distribution": "q_beta", "a": 0.5, "b": 0.5, "q": 0.1}, stats.beta(0.5, 0.5).cdf),
}
DISCRETE = {
    "categorical": ({"values": ["a", "b", "c"]}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
    "categorical_w_probabilities": (
        {"values": [16, 32, 64], "probabilities": [0.6, 0.3, 0.1]},
        {16: 0.6, 32: 0.3, 64: 0.1},
    ),
    "int_uniform": ({"min": 3, "max": 7}, {k: 0.2 for k in range(3, 8)}),
    "constant": ({"value": [1, 2]}, None),
}
EVERY_FORM = {**CONTINUOUS, **QUANTIZED, **DISCRETE}


def random_sweep(param: Param, draws: int = DRAWS) -> list:
    """Values as a random sweep draws them: Optuna's RandomSampler asked through the form."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = []
    for _ in range(draws):
        trial = study.ask()
        values.append(param.suggest(trial))
        study.tell(trial, 0.0)
    return values


def chi_square(values: list, pmf: dict) -> float:
    """p-value of the counts against `pmf`; values below 5 expected draws pooled."""
    seen = dict.fromkeys(pmf, 0)
    for v in values:
        assert v in seen, f"{v!r} is outside the support"
        seen[v] += 1
    big = [k for k, p in pmf.items() if p * len(values) >= 5]
    observed = [seen[k] for k in big] + [sum(seen[k] for k in pmf if k not in big)]
    expected = [pmf[k] * len(values) for k in big] + [
        sum(pmf[k] for k in pmf if k not in big) * len(values)
    ]
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return stats.chisquare(observed, np.asarray(expected) * sum(observed) / sum(expected)).pvalue


def quantized_pmf(cdf, q: float) -> dict:
    """P(round(X / q) * q = k q) = F((k + 1/2) q) - F((k - 1/2) q) over X's support."""
    ks = np.arange(-2000, 2000)
    mass = cdf((ks + 0.5) * q) - cdf((ks - 0.5) * q)
    pmf = {}
    for k, p in zip(ks.tolist(), mass.tolist(), strict=True):
        if p > 1e-12:
            pmf[k * q if isinstance(q, int) else round(k * q, 10)] = p
    return pmf


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_a_continuous_form_draws_its_distribution(name):
    block, cdf = CONTINUOUS[name]
    values = random_sweep(parse_param("x", block))
    assert stats.kstest(values, cdf).pvalue > ALPHA


@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_a_quantized_form_draws_its_rounded_distribution(name):
    block, cdf = QUANTIZED[name]
    values = [
        round(v, 10) if isinstance(v, float) else v for v in random_sweep(parse_param("x", block))
    ]
    assert all(isinstance(v, int) for v in values) == isinstance(block["q"], int)
    assert chi_square(values, quantized_pmf(cdf, block["q"])) > ALPHA


@pytest.mark.parametrize("name", sorted(DISCRETE))
def test_a_discrete_form_draws_its_probabilities(name):
    block, pmf = DISCRETE[name]
    param = parse_param("x", block)
    if pmf is None:  # a constant is not sampled at all
        assert param.form.checked() == [[1, 2]] and param.form.grid("x") == ["json:[1, 2]"]
        return
    assert chi_square(random_sweep(param), pmf) > ALPHA


def test_the_tests_would_catch_a_wrong_distribution():
    """The same test on draws of another distribution fails: it has power at 2,000 draws."""
    values = random_sweep(parse_param("x", {"distribution": "normal", "mu": 1.5, "sigma": 0.36}))
    assert stats.kstest(values, stats.norm(1.5, 0.3).cdf).pvalue < ALPHA
    weighted = random_sweep(parse_param("x", {"values": [1, 2], "probabilities": [0.55, 0.45]}))
    assert chi_square(weighted, {1: 0.5, 2: 0.5}) < ALPHA


@pytest.mark.parametrize("name", sorted(EVERY_FORM))
def test_bayes_samples_every_form_for_three_trials(name):
    """TPE models the one variable each form is sampled through: after one random start, two
    trials are TPE's, and every value lies where the form puts it."""
    param = parse_param("x", EVERY_FORM[name][0])
    if name == "constant":
        return  # constants are applied to every trial, never sampled
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=1)
    study = optuna.create_study(sampler=sampler)
    values = []
    for i in range(3):
        trial = study.ask()
        values.append(param.suggest(trial))
        study.tell(trial, float(i))
    assert len(study.trials) == 3
    support = random_sweep(param, 400)
    lo, hi = min(support), max(support)
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            spread = (hi - lo) or 1.0
            assert lo - spread <= v <= hi + spread, (name, v)
        else:
            assert v in support


def test_grids_take_values_integers_and_multiples_of_q_and_refuse_ranges():
    assert parse_param("x", {"min": 2, "max": 5}).grid_values() == [2, 3, 4, 5]
    q = parse_param("x", {"distribution": "q_uniform", "min": 0.1, "max": 1.0, "q": 0.25})
    assert [q.decode(v) for v in q.grid_values()] == [0.0, 0.25, 0.5, 0.75, 1.0]
    weighted = parse_param("x", {"values": ["a", "b"], "probabilities": [0.9, 0.1]})
    assert weighted.grid_values() == ["a", "b"]
    for block in ({"min": 0.0, "max": 1.0}, {"distribution": "normal"}, {"distribution": "beta"}):
        with pytest.raises(CnnlabError, match="a continuous distribution has no grid"):
            parse_param("x", block).grid_values()


def test_nested_parameters_are_dotted_names():
    nested = {
        "train": {"parameters": {"optimizer": {"parameters": {"lr": {"min": 0.1, "max": 1.0}}}}},
        "model.blocks": {"values": [2, 3]},
    }
    assert flatten_parameters(nested, "s.yaml") == {
        "train.optimizer.lr": {"min": 0.1, "max": 1.0},
        "model.blocks": {"values": [2, 3]},
    }
    with pytest.raises(CnnlabError, match="holds nested `parameters`"):
        flatten_parameters({"train": {"parameters": {}, "values": [1]}}, "s.yaml")


# --------------------------------------------------------------- whole sweeps


def test_a_bayes_sweep_over_the_new_forms_runs_three_trials(tmp_path):
    """log_normal, weighted values, q_normal and a q_beta inside nested `parameters`, in a
    real sweep of the demo recipe (shrunk): three trials train, their values as sampled."""
    from cnnlab.sweeps.launch import sweep
    from cnnlab.sweeps.results import load_trials
    from cnnlab.sweeps.study import SweepFolder
    from tests.conftest import DEMO
    from tests.test_sweep import TINY, write

    spec = write(
        tmp_path,
        """
method: bayes
metric: {name: val.cls.accuracy, goal: maximize, target: 2.0}
parameters:
  train.optimizer.lr: {distribution: log_normal, mu: -6.9, sigma: 0.3}
  model.activation: {values: [relu, gelu], probabilities: [0.7, 0.3]}
  tasks.cls.weight: {distribution: q_normal, mu: 1.0, sigma: 0.1, q: 0.1}
  train:
    parameters:
      optimizer:
        parameters:
          weight_decay: {distribution: q_beta, a: 2, b: 5, q: 0.01}
""",
    )
    out = sweep(DEMO, spec, [*TINY, "train.progress=false"], trials=3, out=tmp_path / "out")
    rows = load_trials(SweepFolder.open(out.path), None)
    assert [r.state for r in rows] == ["complete"] * 3
    for r in rows:
        assert 0 < r.params["train.optimizer.lr"] < 0.01
        assert r.params["model.activation"] in ("relu", "gelu")
        assert (
            abs(
                r.params["train.optimizer.weight_decay"] * 100
                - round(r.params["train.optimizer.weight_decay"] * 100)
            )
            < 1e-9
        )
        recipe = read_yaml(SweepFolder.open(out.path).path / r.run_dir / "recipe.yaml")
        assert (
            recipe["train"]["optimizer"]["weight_decay"] == r.params["train.optimizer.weight_decay"]
        )
        assert recipe["tasks"]["cls"]["weight"] == r.params["tasks.cls.weight"]


def test_a_trial_that_reaches_metric_target_ends_the_sweep(tmp_path):
    """W&B's metric.target: once a trial reaches it, no new trial starts."""
    from cnnlab.sweeps.launch import sweep
    from cnnlab.sweeps.results import load_trials
    from cnnlab.sweeps.study import SweepFolder
    from tests.conftest import DEMO
    from tests.test_sweep import TINY, write

    spec = write(
        tmp_path,
        "method: random\nmetric: {name: val.cls.accuracy, goal: maximize, target: 0.05}\n"
        "parameters:\n"
        "  train.optimizer.lr: {distribution: log_uniform_values, min: 0.001, max: 0.003}\n",
    )
    out = sweep(DEMO, spec, [*TINY, "train.progress=false"], trials=4, out=tmp_path / "out")
    rows = load_trials(SweepFolder.open(out.path), None)
    assert len(rows) == 1 and rows[0].value >= 0.05
