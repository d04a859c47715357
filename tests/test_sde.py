"""SDE marginals against closed forms and a simulated forward SDE; schedule identities."""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from conftest import SCHEDULES, all_sdes

import sgm

SDES = all_sdes()


def simulate_forward(sde, x0, t_end, key, steps=1000):
    """Euler-Maruyama on the forward SDE dx = f dt + g dw from t=0 (many small steps)."""
    bm = diffrax.UnsafeBrownianPath(shape=x0.shape, key=key)
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, x, a: sde.drift(t, x)),
        diffrax.ControlTerm(lambda t, x, a: lx.DiagonalLinearOperator(jnp.full_like(x, sde.diffusion(t))), bm),
    )
    sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, t_end, t_end / steps, x0,
                              adjoint=diffrax.ForwardMode(), max_steps=steps + 1)
    return sol.ys[-1]


@pytest.mark.parametrize("name,sde", SDES, ids=[n for n, _ in SDES])
def test_marginal_matches_simulated_forward_sde(name, sde):
    n = 20000
    x0 = jnp.full((n,), 1.5)
    for t_end, k in [(0.3, 1), (1.0, 2)]:
        xt = simulate_forward(sde, x0, t_end, jax.random.key(k))
        mean, std = sde.marginal(t_end, 1.5)
        sd_mean = float(std) / math.sqrt(n)
        assert abs(float(xt.mean()) - float(mean)) < 5 * sd_mean + 2e-3 * abs(float(mean)) + 1e-3
        rel = abs(float(xt.std()) / float(std) - 1)
        assert rel < 5 / math.sqrt(2 * n) + 5e-3, (t_end, float(xt.std()), float(std))


def test_closed_forms_reproduce_song_et_al():
    vp, subvp, ve = sgm.VPSDE(), sgm.SubVPSDE(), sgm.VESDE()
    t = 0.37
    b = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    np.testing.assert_allclose(vp.scale(t), math.exp(-b / 2), rtol=1e-6)
    np.testing.assert_allclose(vp.std(t), math.sqrt(1 - math.exp(-b)), rtol=1e-6)
    np.testing.assert_allclose(vp.diffusion(t), math.sqrt(0.1 + t * 19.9), rtol=1e-6)
    # SubVP variance is (1 - e^{-B})^2, not a power of it
    np.testing.assert_allclose(subvp.std(t) ** 2, (1 - math.exp(-b)) ** 2, rtol=1e-6)
    np.testing.assert_allclose(subvp.diffusion(t) ** 2, (0.1 + t * 19.9) * (1 - math.exp(-2 * b)), rtol=1e-5)
    sig = 0.01 * (50 / 0.01) ** t
    np.testing.assert_allclose(ve.diffusion(t), sig * math.sqrt(2 * math.log(50 / 0.01)), rtol=1e-6)
    np.testing.assert_allclose(ve.std(t), math.sqrt(sig**2 - 0.01**2), rtol=1e-6)
    assert ve.prior_std() == 50.0 and vp.prior_std() == 1.0
    # precision near t0: VP std^2 ~ beta_min t, not rounded to 0
    np.testing.assert_allclose(vp.std(1e-7) ** 2, 0.1 * 1e-7, rtol=1e-3)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_beta_is_derivative_of_integral(name):
    sch = SCHEDULES[name]
    ts = jnp.linspace(0.01, 0.99, 9)
    h = 1e-3
    fd = (jax.vmap(sch.integral)(ts + h) - jax.vmap(sch.integral)(ts - h)) / (2 * h)
    np.testing.assert_allclose(jax.vmap(sch.beta)(ts), fd, rtol=2e-3)
    assert jnp.all(jax.vmap(sch.beta)(ts) > 0)
    assert float(sch.integral(0.0)) == 0.0
    betas = sch.discrete_betas(1000)
    assert betas.shape == (1000,) and jnp.all((betas > 0) & (betas < 1))
    # the discrete chain reproduces alpha_bar(1) = exp(-B(1))
    np.testing.assert_allclose(jnp.prod(1 - betas), jnp.exp(-sch.integral(1.0)), rtol=1e-3)


def test_linear_discrete_betas_are_ddpm():
    betas = sgm.LinearSchedule().discrete_betas(1000)
    np.testing.assert_allclose(betas[0], 1e-4, rtol=0.2)
    np.testing.assert_allclose(betas[-1], 0.02, rtol=0.05)


def test_cosine_schedule_matches_nichol_dhariwal():
    sch = sgm.CosineSchedule()
    t = 0.5
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(jnp.exp(-sch.integral(t)), f(t) / f(0), rtol=1e-5)
    assert jnp.isfinite(sch.integral(1.0))


@pytest.mark.parametrize("name,sde", SDES, ids=[n for n, _ in SDES])
def test_prior_logp_and_sample(name, sde):
    x = sde.prior_sample(jax.random.key(0), (5000, 3))
    np.testing.assert_allclose(x.std(), sde.prior_std(), rtol=0.03)
    s = sde.prior_std()
    v = jnp.array([0.3, -1.0, 2.0])
    expected = float(jnp.sum(-0.5 * (v / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)))
    np.testing.assert_allclose(sde.prior_logp(v), expected, rtol=1e-6)


def test_invalid_parameters_are_rejected():
    with pytest.raises(sgm.ConfigError, match="beta_min"):
        sgm.VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(sgm.ConfigError, match="sigma_min"):
        sgm.VESDE(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(sgm.ConfigError, match="t0"):
        sgm.SubVPSDE(t0=0.0)


@pytest.mark.parametrize("name,sde", SDES, ids=[n for n, _ in SDES])
def test_noise_level_time_inverts_noise_level(name, sde):
    """t(sigma) undoes sigma(t) = std / scale: closed form (VE, linear VP/SubVP) or bisection."""
    t = jnp.array([1e-3, 0.01, 0.1, 0.37, 0.8, 1.0])
    sig = sde.noise_level(t)
    np.testing.assert_allclose(sig, sde.std(t) / sde.scale(t), rtol=1e-6)
    np.testing.assert_allclose(sde.noise_level_time(sig), t, rtol=2e-4, atol=1e-6)
    # the default (bisection) agrees with any closed-form override
    bisected = sgm.AbstractSDE.noise_level_time(sde, sig)
    np.testing.assert_allclose(bisected, t, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(sde.log_snr(t), 2 * jnp.log(sde.scale(t) / sde.std(t)), rtol=1e-5)


@pytest.mark.parametrize("name,sde", SDES, ids=[n for n, _ in SDES])
def test_noise_level_time_has_the_inverse_functions_derivative(name, sde):
    """dt/dsigma = 1 / sigma'(t) through the closed forms and through bisection (whose comparisons
    alone carry no derivative): what tuning sampler levels by gradient needs."""
    t = jnp.array([0.01, 0.1, 0.37, 0.8])
    slope = jax.vmap(jax.grad(sde.noise_level))(t)
    sig = sde.noise_level(t)
    for inverse in (sde.noise_level_time, lambda s: sgm.AbstractSDE.noise_level_time(sde, s)):
        np.testing.assert_allclose(jax.vmap(jax.grad(inverse))(sig), 1.0 / slope, rtol=2e-3)


def test_bisection_gives_a_learned_schedules_parameters_the_implicit_gradient():
    """t(sigma) on a learned schedule (bisection) depends on its parameters theta through
    sigma(t; theta) = level: dt/dtheta = -(d sigma / d theta) / sigma'(t)."""
    sched = sgm.LearnedSchedule(jax.random.key(3))
    vp = sgm.VPSDE(schedule=sched)
    level = vp.noise_level(jnp.float32(0.4))
    params, rest = eqx.partition(sched, eqx.is_inexact_array)

    def time_of(p):
        return sgm.VPSDE(schedule=eqx.combine(p, rest)).noise_level_time(level)

    def level_of(p):
        return sgm.VPSDE(schedule=eqx.combine(p, rest)).noise_level(jnp.float32(0.4))

    d_level = jax.grad(level_of)(params)
    expected = jax.tree.map(lambda d: -d / float(jax.grad(vp.noise_level)(jnp.float32(0.4))),
                            d_level)
    got = jax.grad(time_of)(params)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-3, atol=1e-6)


def test_ve_noise_level_is_not_its_geometric_sigma():
    """VE: noise_level(t) = std(t) = sqrt(sigma(t)^2 - sigma_min^2), not sigma(t) itself."""
    ve, t = sgm.VESDE(), jnp.array([0.01, 0.3, 1.0])
    np.testing.assert_allclose(ve.noise_level(t), jnp.sqrt(ve.sigma(t) ** 2 - 0.01**2), rtol=1e-5)
    assert float(ve.noise_level(0.01)) < 0.5 * float(ve.sigma(0.01))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_inverse_integral(name):
    sch = SCHEDULES[name]
    t = jnp.array([0.0, 1e-3, 0.2, 0.7, 1.0])
    np.testing.assert_allclose(sch.inverse_integral(sch.integral(t)), t, rtol=1e-4, atol=1e-6)
    # the linear schedule's closed form against the default bisection
    np.testing.assert_allclose(sgm.sde.AbstractSchedule.inverse_integral(sch, sch.integral(t)), t,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make,match", [
    (lambda: sgm.LinearSchedule(3.0, 1.0),
     "LinearSchedule needs 0 <= beta_min < beta_max, got beta_min=3.0, beta_max=1.0"),
    (lambda: sgm.QuadraticSchedule(-1.0, 1.0), "QuadraticSchedule needs 0 <= beta_min"),
    (lambda: sgm.ScaledLinearSchedule(2.0, 2.0), "ScaledLinearSchedule needs 0 <= beta_min"),
    (lambda: sgm.SigmoidSchedule(5.0, 1.0), "SigmoidSchedule needs 0 <= beta_min"),
    (lambda: sgm.SigmoidSchedule(start=1.0, end=0.0), "end > start"),
    (lambda: sgm.VPSDE(t0=0.5, t1=0.2), "VPSDE needs 0 < t0 < t1, got t0=0.5, t1=0.2"),
    (lambda: sgm.VESDE(t0=-1.0), "VESDE needs 0 < t0 < t1, got t0=-1.0"),
])
def test_range_checks_name_the_class_and_values(make, match):
    with pytest.raises(sgm.ConfigError, match=match):
        make()
