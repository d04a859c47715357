"""Dequantisation bounds against hand-computed answers: uniform and truncated-normal q.

A Gaussian density in model space has closed-form bin probabilities P(k) (differences of the normal
CDF), and the variational bound E_q[log p - log q] + log_det is a 1-D integral over the bin that
quadrature computes to 1e-10; the implementation's Monte-Carlo estimate must agree with it, never
exceed log P(k), and its importance-weighted form must approach log P(k) (E_q[p / q] = P(k) exactly).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import sgm
import sgm.evaluate
from sgm.data.transforms import DEQUANTS, Preprocess, tn_kl, truncated_normal_offsets
from sgm.errors import ConfigError

LEVELS, MEAN, STD = 5, 0.1, 0.45  # p_x = N(MEAN, STD^2) on the model space [-1, 1)
PRE = Preprocess.fit(None, levels=LEVELS)
LOG_DET = PRE.log_det((1,))  # log(2 / 5)


def x_of(k, u):
    return -1.0 + 2.0 * (k + u) / LEVELS


def log_p_bin(k):
    """log P(k) = log of the Gaussian's mass on bin k."""
    a, b = x_of(k, 0.0), x_of(k, 1.0)
    return math.log(stats.norm.cdf(b, MEAN, STD) - stats.norm.cdf(a, MEAN, STD))


def tn_pdf(u, s):
    return stats.truncnorm.pdf(u, -0.5 / s, 0.5 / s, loc=0.5, scale=s)


def bound_quad(k, s):
    """E_q[log p_x(x) + log_det - log q(u)] by quadrature (s=None: the uniform q)."""
    def f(u):
        q = 1.0 if s is None else tn_pdf(u, s)
        return q * (stats.norm.logpdf(x_of(k, u), MEAN, STD) + LOG_DET - math.log(q))
    return integrate.quad(f, 0.0, 1.0, epsabs=1e-12, epsrel=1e-12)[0]


def draws(k, s, n, seed=0):
    """The implementation's per-draw bounds log p_x(x) + log_det - log q on n copies of level k."""
    kind = "uniform" if s is None else "tn"
    x, log_q = PRE.dequantise(jax.random.key(seed), jnp.full((n, 1), k, jnp.uint8), dequant=kind, std=s)
    logp = jax.scipy.stats.norm.logpdf(x[:, 0], MEAN, STD)
    return np.asarray(logp + LOG_DET - log_q, np.float64)


def test_log_q_is_the_truncated_normal_density():
    u, log_q = truncated_normal_offsets(jax.random.key(1), (64, 3), 0.3)
    assert u.shape == (64, 3) and log_q.shape == (64,)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    ref = stats.truncnorm.logpdf(np.asarray(u, np.float64), -0.5 / 0.3, 0.5 / 0.3, loc=0.5, scale=0.3)
    np.testing.assert_allclose(np.asarray(log_q), ref.sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s", [0.05, 0.25, 1.0])
def test_tn_kl_closed_form(s):
    """KL(q || U) = -H(q) from the closed form equals the quadrature of q log q."""
    kl = integrate.quad(lambda u: tn_pdf(u, s) * math.log(tn_pdf(u, s)), 0.0, 1.0, epsabs=1e-12)[0]
    assert tn_kl(s) == pytest.approx(kl, abs=1e-9)


@pytest.mark.parametrize("k", [0, 2, 4])
@pytest.mark.parametrize("s", [None, 0.1, 0.3])
def test_bound_matches_quadrature_and_stays_below_log_p(k, s):
    exact = log_p_bin(k)
    quad = bound_quad(k, s)
    assert quad <= exact + 1e-12  # Jensen: the bound never exceeds log P(k)
    d = draws(k, s, 20000)
    se = d.std() / math.sqrt(d.size)
    assert abs(d.mean() - quad) < 4 * se + 1e-5
    # importance-weighted (K = 20000 draws): log-mean-exp of log p - log q -> log P(k), since
    # E_q[p / q] = P(k) exactly (only for a q wide enough that the weights p / q stay bounded)
    if s is None or s >= 0.3:
        iw = float(sgm.likelihood.combine_dequantised(d[:, None], "iw")[0])
        w = np.exp(d - d.max())
        assert iw == pytest.approx(exact, abs=4 * w.std() / w.mean() / math.sqrt(d.size) + 1e-5)


def test_constant_density_on_each_bin():
    """p constant on each bin: the uniform bound is exact, the TN bound is below by KL(q || U)."""
    probs = np.array([0.1, 0.4, 0.2, 0.25, 0.05])
    k = jnp.asarray(np.arange(LEVELS).repeat(4000)[:, None], jnp.uint8)
    logp_x = jnp.log(jnp.asarray(probs))[k[:, 0]] - LOG_DET  # density P(k) / bin width in x units
    for kind, s in (("uniform", None), ("tn", 0.2)):
        x, log_q = PRE.dequantise(jax.random.key(3), k, dequant=kind, std=s)
        assert bool(jnp.all(PRE.to_data(x) == np.asarray(k)))  # the offsets stay in their bins
        bound = np.asarray(logp_x + LOG_DET - log_q, np.float64)
        if kind == "uniform":
            np.testing.assert_allclose(bound, np.log(probs)[np.asarray(k[:, 0])], atol=1e-6)
        else:
            gap = np.log(probs)[np.asarray(k[:, 0])] - bound  # = log q(u), E_q = KL(q || U)
            assert gap.mean() == pytest.approx(tn_kl(0.2), abs=4 * gap.std() / math.sqrt(gap.size))


def test_heldout_likelihood_tn_end_to_end():
    """The probability-flow ODE of a closed-form Gaussian: heldout's TN bound = quadrature."""
    sde = sgm.VPSDE()
    gauss = sgm.analytic.GaussianMixture.gaussian(jnp.array([MEAN]), STD)
    t0 = sde.t0
    score = gauss.score(sde)

    class Model(eqx.Module):
        sde: object

        def __call__(self, t, x):
            return score(t, x)

    k = np.array([0, 2, 4] * 40, np.uint8)[:, None]
    s = 0.2
    deq = sgm.evaluate.Dequantisation(kind="tn", samples=2, std=s)
    out = sgm.evaluate.heldout_likelihood(Model(sde), PRE, k, {}, key=jax.random.key(0), batch=120,
                                          dequantisation=deq, return_draws=True, rtol=1e-6,
                                          atol=1e-6)
    assert out["dequant"] == "tn" and out["dequant_std"] == s

    # quadrature with the model's own density p_t0 (the Gaussian convolved with the t0 kernel)
    a, sd = float(sde.scale(t0)), float(sde.std(t0))
    m0, s0 = a * MEAN, math.sqrt(a ** 2 * STD ** 2 + sd ** 2)

    def quad(kk):
        def f(u):
            q = tn_pdf(u, s)
            return q * (stats.norm.logpdf(x_of(kk, u), m0, s0) + LOG_DET - math.log(q))
        return integrate.quad(f, 0.0, 1.0, epsabs=1e-12)[0]

    want = np.array([quad(int(kk)) for kk in k[:, 0]])
    d = out["draws"]  # (2, 120)
    se = d.std() / math.sqrt(d.size)
    assert abs(d.mean() - want.mean()) < 4 * se + 1e-4
    assert out["nll"] == pytest.approx(-d.mean(), rel=1e-6)
    # the default std is the diffusion's noise at t0 in levels
    assert sgm.evaluate.tn_std(sde, PRE) == pytest.approx(sd / a * LEVELS / 2, rel=1e-6)


def test_bad_dequant():
    assert DEQUANTS == ("uniform", "tn")
    with pytest.raises(ConfigError, match="dequantisation"):
        PRE.dequantise(jax.random.key(0), jnp.zeros((2, 1), jnp.uint8), dequant="beta")
    with pytest.raises(ConfigError, match="std > 0"):
        PRE.dequantise(jax.random.key(0), jnp.zeros((2, 1), jnp.uint8), dequant="tn", std=0.0)
