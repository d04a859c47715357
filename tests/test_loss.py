"""Denoising score matching: closed-form expectations and unbiased importance sampling of time."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SDES3

import sgm


def expected_loss(sde, s0, weighting, t0, n=200001):
    """(1/(t1-t0)) int lambda/s^2 * a^2 s0^2 / (a^2 s0^2 + s^2) dt: per-dimension DSM loss of the
    TRUE score of N(mu, s0^2 I) data (derived in the test module docstring of test_loss)."""
    log_t = jnp.linspace(math.log(t0), math.log(sde.t1), n)
    t = jnp.exp(log_t)
    a, s = jax.vmap(sde.scale)(t), jax.vmap(sde.std)(t)
    f = a**2 * s0**2 / (a**2 * s0**2 + s**2)
    if weighting == "likelihood":
        f = f * jax.vmap(sde.diffusion)(t) ** 2 / s**2
    g = f * t
    return float(jnp.sum(0.5 * (g[1:] + g[:-1]) * jnp.diff(log_t)) / (sde.t1 - t0))


# With x_t = a x0 + s eps and the true score -(x_t - a mu) / v, v = a^2 s0^2 + s^2:
# s score + eps = eps (1 - s^2 / v) - s a (x0 - mu) / v, whose mean square per dimension is
# (a^2 s0^2 / v)^2 + s^2 a^2 s0^2 / v^2 = a^2 s0^2 / v.
@pytest.mark.parametrize("name", list(SDES3))
def test_sigma2_loss_of_true_score_matches_closed_form(name):
    sde = SDES3[name]
    mu, s0 = 0.3, 0.6
    gm = sgm.GaussianMixture.gaussian(jnp.full(3, mu), s0)
    x0 = gm.sample(jax.random.key(0), 40000)
    per = sgm.dsm_loss_per_sample(gm.score(sde), sde, x0, key=jax.random.key(1))
    se = float(per.std()) / math.sqrt(per.size)
    assert abs(float(per.mean()) - expected_loss(sde, s0, "sigma2", sde.t0)) < 4 * se
    total = sgm.dsm_loss_per_sample(gm.score(sde), sde, x0, key=jax.random.key(1), reduce="sum")
    np.testing.assert_allclose(total, 3 * per, rtol=1e-5)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_importance_sampling_is_unbiased_and_reduces_variance(name):
    sde = SDES3[name]
    mu, s0 = 0.3, 0.6
    gm = sgm.GaussianMixture.gaussian(jnp.full(2, mu), s0)
    x0 = gm.sample(jax.random.key(0), 100000)
    score = gm.score(sde)
    truth = expected_loss(sde, s0, "likelihood", sde.t0)
    uni = sgm.dsm_loss_per_sample(score, sde, x0, key=jax.random.key(1), weighting="likelihood")
    imp = sgm.dsm_loss_per_sample(score, sde, x0, key=jax.random.key(1), weighting="likelihood",
                                  importance=True)
    se_imp = float(imp.std()) / math.sqrt(imp.size)
    se_uni = float(uni.std()) / math.sqrt(uni.size)
    assert abs(float(imp.mean()) - truth) < 4 * se_imp + 1e-4 * abs(truth)
    assert abs(float(uni.mean()) - truth) < 5 * se_uni
    assert float(imp.var()) < 0.2 * float(uni.var())


def test_importance_sampler_density_is_exact():
    sde = sgm.VPSDE()
    sampler = sgm.ImportanceTimeSampler(sde, 1e-5, 1.0)
    t, q = sampler.sample(jax.random.uniform(jax.random.key(0), (200000,)))
    assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0
    # q integrates to one: E_q[1/q] = t1 - t0
    np.testing.assert_allclose(jnp.mean(1.0 / q), 1.0 - 1e-5, rtol=0.02)
    # and is proportional to g^2/s^2 up to the tabulation
    w = jax.vmap(lambda u: sde.diffusion(u) ** 2 / sde.std(u) ** 2)(t)
    ratio = w / q
    np.testing.assert_allclose(ratio / ratio.mean(), 1.0, atol=1e-2)


def test_stratified_times_same_expectation():
    sde = sgm.VPSDE()
    gm = sgm.GaussianMixture.gaussian(jnp.zeros(2), 0.5)
    x0 = gm.sample(jax.random.key(100), 4096)
    vals = [float(sgm.dsm_loss(gm.score(sde), sde, x0, key=jax.random.key(k), time_sampling="stratified"))
            for k in range(8)]
    np.testing.assert_allclose(np.mean(vals), expected_loss(sde, 0.5, "sigma2", sde.t0), rtol=0.02)
    # evenly spread times: far less spread between batches than i.i.d. times
    iid = [float(sgm.dsm_loss(gm.score(sde), sde, x0, key=jax.random.key(k))) for k in range(8)]
    assert np.std(vals) < np.std(iid)


def test_conditioning_and_dropout_keys_reach_the_model():
    seen = {}

    def model(t, x, *, label, key=None):
        seen["key"] = key is not None
        return -x * (1.0 + label)

    x0 = jnp.ones((4, 2))
    cond = {"label": jnp.arange(4.0)}
    a = sgm.dsm_loss(model, sgm.VPSDE(), x0, key=jax.random.key(0), cond=cond, dropout=True)
    assert seen["key"] and jnp.isfinite(a)


@pytest.mark.parametrize("field,value", [("weighting", "l2"), ("time_sampling", "sobol"), ("reduce", "max")])
def test_unknown_options_are_rejected(field, value):
    with pytest.raises(sgm.ConfigError, match=value):
        sgm.dsm_loss(lambda t, x: -x, sgm.VPSDE(), jnp.ones((2, 2)), key=jax.random.key(0), **{field: value})


def test_heldout_loss_is_the_training_estimator_with_the_closed_form_expectation(tmp_path):
    """The held-out loss uses the training loss's time density and weights (no dropout), so on
    the true score of Gaussian data both estimate the closed-form bound."""
    import equinox as eqx

    from sgm import build, data, evaluate

    cfg = build.load(Path(__file__).resolve().parents[1] / "configs" / "eight_gaussians.py", [])
    train_opts, held = build.loss_options(cfg), build.loss_options(cfg, heldout=True)
    assert held == {**train_opts, "dropout": False} and held["importance"]

    sde = sgm.VPSDE()
    mu, s0 = 0.3, 0.6
    gm = sgm.GaussianMixture.gaussian(jnp.full(2, mu), s0)

    class Exact(eqx.Module):
        sde: sgm.VPSDE

        def __call__(self, t, x):
            return gm.score(self.sde)(t, x)

    x0 = gm.sample(jax.random.key(0), 50000)
    value = evaluate.heldout_loss(Exact(sde), data.Preprocess(None, None, None), x0, {},
                                  key=jax.random.key(1), **held)
    per = sgm.dsm_loss_per_sample(gm.score(sde), sde, x0, key=jax.random.key(2), **held)
    truth = expected_loss(sde, s0, held["weighting"], sde.t0)
    se = float(per.std()) / math.sqrt(per.size)
    assert abs(value - truth) < 4 * se + 1e-4 * abs(truth), (value, truth, se)
    assert abs(float(per.mean()) - truth) < 4 * se + 1e-4 * abs(truth)
