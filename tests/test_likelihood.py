"""Probability-flow likelihoods against closed-form Gaussian log-densities; Hutchinson; bits/dim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SDES3

import sgm
from sgm.ode_solvers import largest_point_rms


def flow_latent(sde, mu, s0, x, t0):
    """Exact probability-flow map of N(mu, s0^2 I) data from t0 to t1 (it is affine)."""
    a0, a1 = sde.scale(t0), sde.scale(sde.t1)
    v0 = a0**2 * s0**2 + sde.std(t0) ** 2
    v1 = a1**2 * s0**2 + sde.std(sde.t1) ** 2
    return a1 * mu + jnp.sqrt(v1 / v0) * (x - a0 * mu)


@pytest.mark.parametrize("dim", [2, 64])
@pytest.mark.parametrize("name", list(SDES3))
def test_exact_likelihood_equals_closed_form(name, dim):
    sde = SDES3[name]
    mu, s0 = 0.5, 0.7
    gm = sgm.GaussianMixture.gaussian(jnp.full(dim, mu), s0)
    x = gm.sample(jax.random.key(3), 6)
    logp, info = sgm.log_likelihood(gm.score(sde), sde, x)
    t0 = sde.t0
    true = jax.vmap(lambda xi: gm.log_prob(xi, sde, t0))(x)
    # The prior N(0, prior_std^2) is not exactly p_t1 (e.g. VP's true mean at t1 is ~0.003 mu):
    # the computed value is log p_t1-replaced-by-prior, so add that difference explicitly.
    z = jax.vmap(lambda xi: flow_latent(sde, mu, s0, xi, t0))(x)
    np.testing.assert_allclose(info["z"], z, atol=2e-3 * max(1.0, sde.prior_std()))
    prior_term = jax.vmap(sde.prior_logp)(z) - jax.vmap(lambda zi: gm.log_prob(zi, sde, sde.t1))(z)
    err = jnp.abs(logp - (true + prior_term)) / dim
    # the defaults (rtol = atol = 1e-5, shared steps, Dopri5 for VP/SubVP and Tsit5 for VE) hold
    # every SDE to 1e-5 nats per dimension on average over the batch
    assert float(err.mean()) < 1e-5, err
    assert float(err.max()) < 5e-5, err
    assert int(info["nfe"]) > 0


MIXTURE = sgm.GaussianMixture([0.3, 0.7], [[-1.0, 0.0, 0.5], [1.5, 1.0, -0.5]],
                              [[0.3, 0.2, 0.4], [0.5, 0.3, 0.2]])


@pytest.mark.parametrize("name", [n if n == "vp" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in SDES3])
def test_clock_and_stepping_give_the_closed_form(name):
    """Every time variable and both steppings integrate the same ODE: each lands on the
    mixture's exact log-density within the solver error of rtol = atol = 1e-5."""
    sde = SDES3[name]
    x = MIXTURE.sample(jax.random.key(4), 64)
    true = jax.vmap(lambda xi: MIXTURE.log_prob(xi, sde, sde.t0))(x)
    for clock in sgm.likelihood.CLOCKS[1:]:  # "auto" is one of them
        for stepping in sgm.likelihood.STEPPING:
            logp, info = sgm.log_likelihood(
                MIXTURE.score(sde), sde, x, control=sgm.StepControl(clock=clock, stepping=stepping))
            z = info["z"]
            prior_term = (jax.vmap(sde.prior_logp)(z)
                          - jax.vmap(lambda zi: MIXTURE.log_prob(zi, sde, sde.t1))(z))
            err = np.abs(np.asarray(logp - true - prior_term)) / 3
            # measured on 64 points: mean 5e-6..6e-5 over SDEs, clocks and steppings; per point
            # up to 2e-4 with its own steps, 3e-3 with shared steps (the batch's RMS is controlled)
            assert err.mean() < 1e-4, (clock, stepping, err)
            assert err.max() < (5e-4 if stepping == "point" else 5e-3), (clock, stepping, err)
            steps = np.asarray(info["num_steps"])
            if stepping == "batch":  # one solve: every point took the same steps
                assert (steps == steps[0]).all()
                assert int(info["nfe"]) == steps[0] * 6 + 1


@pytest.mark.parametrize("name", [n if n == "vp" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in SDES3])
def test_the_third_order_solver_gives_the_closed_form(name):
    """Bosh3 (3 evaluations a step) reaches the mixture's exact log-density at rtol = atol = 1e-5
    within 1e-5 nats per dimension on average, every point within 5e-5."""
    sde = SDES3[name]
    x = MIXTURE.sample(jax.random.key(4), 64)
    true = jax.vmap(lambda xi: MIXTURE.log_prob(xi, sde, sde.t0))(x)
    logp, info = sgm.log_likelihood(MIXTURE.score(sde), sde, x,
                                    control=sgm.StepControl(solver="bosh3"))
    z = info["z"]
    prior_term = (jax.vmap(sde.prior_logp)(z)
                  - jax.vmap(lambda zi: MIXTURE.log_prob(zi, sde, sde.t1))(z))
    err = np.abs(np.asarray(logp - true - prior_term)) / 3
    assert err.mean() < 1e-5 and err.max() < 5e-5, err
    assert int(info["nfe"]) == int(info["num_steps"][0]) * 3 + 1


def test_shared_steps_equal_per_point_steps_and_cost_less_on_a_spread_batch():
    """Points far apart in the tails take different step counts alone; the shared-step solve of
    the batch, its error measured point by point, matches the per-point answers within solver
    error, at no more evaluations than a vmapped per-point batch, which runs to its slowest
    point. The far point is as accurate as in a tight solve of its own."""
    sde = sgm.VPSDE()
    x = jnp.concatenate([MIXTURE.sample(jax.random.key(5), 16), jnp.array([[6.0, -5.0, 4.0]])])
    point, ip = sgm.log_likelihood(MIXTURE.score(sde), sde, x,
                                   control=sgm.StepControl(stepping="point"))
    batch, ib = sgm.log_likelihood(MIXTURE.score(sde), sde, x,
                                   control=sgm.StepControl(stepping="batch"))
    tight, _ = sgm.log_likelihood(MIXTURE.score(sde), sde, x[16:], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(batch[:16], point[:16], atol=3e-4)
    # log p ~ -493: the far point meets the relative tolerance on its own (6e-3 nats measured, its
    # own solve 3e-3; the batch's RMS left it 0.15 off)
    assert abs(float(batch[16] - tight[0])) < 2e-5 * abs(float(tight[0]))
    n = np.asarray(ip["num_steps"])
    assert n.max() > n.min()
    assert int(ib["nfe"]) <= int(ip["nfe"])


def test_the_error_norm_of_shared_steps_is_the_worst_points_rms():
    """The controller's norm is each point's RMS over its D + 1 components, the largest over the
    batch; the batch's RMS (error_norm="batch") lets a far point drift, at fewer steps."""
    y = jnp.array([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])
    delta = jnp.array([0.0, 1.0, 6.0])
    norm = largest_point_rms((y, delta))
    assert float(norm) == pytest.approx(math.sqrt(36 / 3))
    sde = sgm.VPSDE()
    x = jnp.concatenate([MIXTURE.sample(jax.random.key(5), 63), jnp.array([[6.0, -5.0, 4.0]])])
    true = jax.vmap(lambda xi: MIXTURE.log_prob(xi, sde, sde.t0))(x)
    errs, nfes = {}, {}
    for error_norm in sgm.likelihood.ERROR_NORMS:
        logp, info = sgm.log_likelihood(MIXTURE.score(sde), sde, x,
                                        control=sgm.StepControl(error_norm=error_norm))
        z = info["z"]
        prior_term = (jax.vmap(sde.prior_logp)(z)
                      - jax.vmap(lambda zi: MIXTURE.log_prob(zi, sde, sde.t1))(z))
        errs[error_norm] = np.abs(np.asarray(logp - true - prior_term))
        nfes[error_norm] = int(info["nfe"])
    assert errs["point"][:63].mean() / 3 < 1e-5, errs["point"]
    assert errs["point"][63] < errs["batch"][63]
    assert nfes["batch"] <= nfes["point"]


def test_unknown_clock_and_stepping_are_config_errors():
    with pytest.raises(sgm.ConfigError, match="clock"):
        sgm.StepControl(clock="sigma")
    with pytest.raises(sgm.ConfigError, match="stepping"):
        sgm.StepControl(stepping="shared")
    with pytest.raises(sgm.ConfigError, match="error norm 'max'; expected one of point, batch"):
        sgm.StepControl(error_norm="max")
    with pytest.raises(sgm.ConfigError, match="adaptive"):
        sgm.StepControl(solver="euler")


def test_prior_term_is_not_negligible_for_vp():
    """Guards the test above: without the prior correction the VP error is visible at mu = 0.5."""
    sde = sgm.VPSDE()
    np.testing.assert_allclose(sde.scale(1.0) * 0.5, 0.5 * math.exp(-10.05 / 2), rtol=1e-5)
    assert float(sde.scale(1.0) * 0.5) > 3e-3


@pytest.mark.parametrize("probe,product", [("rademacher", "jvp"),
                                           pytest.param("gaussian", "vjp", marks=pytest.mark.slow)])
def test_hutchinson_agrees_with_exact_in_expectation(probe, product):
    """Anisotropic Gaussian mixture: the Jacobian is not a multiple of the identity."""
    sde = sgm.VPSDE()
    gm = sgm.GaussianMixture([0.4, 0.6], [[1.0, -0.5, 0.0], [-1.0, 0.5, 0.3]],
                             [[0.2, 0.6, 1.0], [0.5, 0.3, 0.8]])
    x0 = gm.sample(jax.random.key(0), 1)
    n = 96
    x = jnp.repeat(x0, n, axis=0)
    exact, _ = sgm.log_likelihood(gm.score(sde), sde, x[:1], rtol=1e-4, atol=1e-4)
    hutchinson = sgm.Hutchinson(probe=probe, product=product)
    est, info = sgm.log_likelihood(gm.score(sde), sde, x, key=jax.random.key(1), rtol=1e-4,
                                   atol=1e-4, divergence=hutchinson)
    se = float(est.std()) / math.sqrt(n)
    assert float(est.std()) > 0.05  # a real estimator with real variance
    assert abs(float(est.mean()) - float(exact[0])) < 4 * se
    # averaging probes reduces the spread
    est4, _ = sgm.log_likelihood(gm.score(sde), sde, x, key=jax.random.key(2), exact=False,
                                 probe=probe, probes=4, rtol=1e-4, atol=1e-4)
    assert float(est4.std()) < 0.75 * float(est.std())


def test_exact_divergence_chunking_matches_dense():
    sde = sgm.VESDE()
    gm = sgm.GaussianMixture([0.5, 0.5], jnp.stack([jnp.linspace(-1, 1, 10), jnp.zeros(10)]),
                             [0.3, 0.9])
    x = gm.sample(jax.random.key(0), 2)
    a, _ = sgm.log_likelihood(gm.score(sde), sde, x, divergence=sgm.Exact(chunk=3))
    b, _ = sgm.log_likelihood(gm.score(sde), sde, x, divergence=sgm.Exact(chunk=64))
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_likelihood_handles_image_shaped_data():
    sde = sgm.SubVPSDE()
    gm = sgm.GaussianMixture.gaussian(jnp.zeros(12), 0.5)
    score = lambda t, x: gm.score(sde)(t, x.reshape(-1)).reshape(x.shape)
    x = gm.sample(jax.random.key(0), 3)
    flat, _ = sgm.log_likelihood(gm.score(sde), sde, x)
    img, _ = sgm.log_likelihood(score, sde, x.reshape(3, 3, 2, 2))
    np.testing.assert_allclose(flat, img, rtol=1e-5)


def test_bits_per_dim_by_hand():
    # A model uniform on [-1, 1] assigns density 1/2 per dimension; on L levels each bin then has
    # probability 1/L, so the answer is log2(L) bits per dimension, worked out by hand.
    for levels, dim in [(4, 1), (17, 64), (256, 3072)]:
        logp = dim * math.log(0.5)
        np.testing.assert_allclose(sgm.bits_per_dim(logp, dim, levels=levels), math.log2(levels),
                                   rtol=1e-6)
    # data scaled to [0, 1] instead: uniform density 1 there, 8 bits for 256 levels
    np.testing.assert_allclose(sgm.bits_per_dim(0.0, 5, levels=256, lo=0.0, hi=1.0), 8.0, rtol=1e-6)
    # continuous data: just nats -> bits per dimension
    np.testing.assert_allclose(sgm.bits_per_dim(-2 * math.log(2), 2, levels=None), 1.0, rtol=1e-6)


def test_counted_score_evaluations_match_reported_nfe():
    gm = sgm.GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.5, 1.0]], [0.3, 0.5])
    sde = sgm.VPSDE()
    calls = []
    base = gm.score(sde)

    def score(t, x):
        jax.debug.callback(lambda _: calls.append(1), t)
        return base(t, x)

    cases = [("dopri5", "batch", 1e-3), ("dopri5", "batch", 1e-6), ("dopri5", "point", 1e-6),
             ("tsit5", "point", 1e-3), ("tsit5", "batch", 1e-6), ("dopri8", "batch", 1e-3),
             ("bosh3", "batch", 1e-4)]
    for solver, stepping, rtol in cases:
        calls.clear()
        lp, info = sgm.log_likelihood(score, sde, gm.sample(jax.random.key(2), 1), rtol=rtol,
                                      atol=rtol,
                                      control=sgm.StepControl(solver=solver, stepping=stepping))
        jax.block_until_ready(lp)
        assert len(calls) == int(info["nfe"]), (solver, stepping, rtol)


def test_hutchinson_needs_key():
    with pytest.raises(sgm.ConfigError, match="key"):
        sgm.log_likelihood(lambda t, x: -x, sgm.VPSDE(), jnp.zeros((1, 2)), exact=False)


def test_dequantisation_bounds_closed_form():
    """Two levels on [0, 1) under the density p(y) = 2y: P(0) = 1/4, P(1) = 3/4 exactly.

    "mean" has expectation E_u log p((k + u) / 2) for every K; "iw" rises with K to log P(k).
    """
    from sgm.likelihood import combine_dequantised

    rng = np.random.default_rng(0)
    probs = np.array([0.25, 0.75])
    mean_bound = np.array([-1.0, 2.0 * math.log(2.0) - 1.0])  # E_u log(k + u), k = 0, 1

    def bpd(k, draws, bound):
        logp = np.log(2.0 * (k + draws) / 2.0)  # log p(y) at y = (k + u) / 2
        return np.asarray(sgm.bits_per_dim(combine_dequantised(logp, bound), 1, levels=2,
                                           lo=0.0, hi=1.0))

    for k in (0, 1):
        u = rng.uniform(size=(64, 4000))  # K = 64 draws for each of 4000 repeats
        assert np.allclose(bpd(k, u[:1], "iw"), bpd(k, u[:1], "mean"))
        m = bpd(k, u, "mean").mean()
        assert m == pytest.approx(-(mean_bound[k] - math.log(2.0)) / math.log(2.0), abs=2e-3)
        iw = [bpd(k, u[:n], "iw").mean() for n in (1, 4, 16, 64)]
        assert all(a > b for a, b in zip(iw, iw[1:]))  # tighter with K
        assert -math.log2(probs[k]) <= iw[-1] < -math.log2(probs[k]) + 0.02
    with pytest.raises(sgm.ConfigError, match="dequantisation bound"):
        combine_dequantised(np.zeros((2, 3)), "max")


@pytest.mark.parametrize("name", [n if n == "vp" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in SDES3])
def test_reported_solver_error_bounds_the_true_error(name):
    """`evaluate.solver_error` (a second solve at a tenth of the tolerances) bounds the mean
    per-point error and the error of the mean, on the closed-form mixture."""
    import equinox as eqx

    from sgm import data, evaluate

    sde = SDES3[name]

    class Exact(eqx.Module):  # a score model: it carries its SDE
        sde: sgm.AbstractSDE

        def __call__(self, t, x):
            return MIXTURE.score(self.sde)(t, x)

    model = Exact(sde)
    x = MIXTURE.sample(jax.random.key(1), 64)
    check = evaluate.solver_error(model, data.Preprocess(None, None, None), x, {},
                                  key=jax.random.key(2), batch=64)
    logp, info = sgm.log_likelihood(model, sde, x)
    true = jax.vmap(lambda xi: MIXTURE.log_prob(xi, sde, sde.t0))(x)
    z = info["z"]
    err = np.asarray(logp - true - (jax.vmap(sde.prior_logp)(z)
                                    - jax.vmap(lambda zi: MIXTURE.log_prob(zi, sde, sde.t1))(z)))
    assert check["solver_check_num"] == 64
    assert np.abs(err).mean() <= check["solver_error"], (np.abs(err).mean(), check)
    assert abs(err.mean()) <= check["solver_error"]
