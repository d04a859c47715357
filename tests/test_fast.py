"""Few-step samplers (EDM Heun, DPM-Solver++(2M)) on closed-form scores: order, NFE, mixture."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MIXTURE as GM
from conftest import SDES3, all_sdes, assert_reproduces_mixture, count_score_calls

import sgm
from sgm.fast import sigma_grid

# A Gaussian in 3-D: under the probability-flow ODE each coordinate keeps its z-score,
#   x_t = a(t) mu + sqrt(a(t)^2 v + s(t)^2) (x_1 - a(1) mu) / sqrt(a(1)^2 v + s(1)^2),
# so the exact output of an ODE sampler for a given prior draw is known in closed form.
MU = jnp.array([0.5, -1.0, 2.0])
SD = jnp.array([0.7, 0.2, 1.3])
GAUSS = sgm.GaussianMixture.gaussian(MU, SD)

GM_SCORES = {name: GM.score(sde) for name, sde in SDES3.items()}


def exact_ode_output(sde, x1, t_end):
    """Probability-flow map of the Gaussian from t1 to t_end, then Tweedie's x_0 at t_end."""
    a1, s1 = sde.scale(sde.t1), sde.std(sde.t1)
    a, s = sde.scale(t_end), sde.std(t_end)
    z = (x1 - a1 * MU) / jnp.sqrt(a1**2 * SD**2 + s1**2)
    xt = a * MU + jnp.sqrt(a**2 * SD**2 + s**2) * z
    return (xt + s**2 * jax.vmap(GAUSS.score(sde), in_axes=(None, 0))(t_end, xt)) / a


@pytest.mark.parametrize("name,sde", all_sdes())
def test_sigma_grid_runs_from_t1_to_t_end(name, sde):
    sig = sigma_grid(sde, 1e-3, 9)
    assert bool(jnp.all(jnp.diff(sig) < 0))
    ends = sde.noise_level(jnp.array([1.0, 1e-3]))
    np.testing.assert_allclose(sig[jnp.array([0, -1])], ends, rtol=1e-6)
    # the "logsnr" grid is uniform in the SDE's log-SNR
    lam = sde.log_snr(sde.noise_level_time(sigma_grid(sde, 1e-3, 9, "logsnr")))
    np.testing.assert_allclose(jnp.diff(lam), jnp.diff(lam)[0], rtol=2e-3)


ORDER_SDES = dict(SDES3, **{"vp-cosine": sgm.VPSDE(schedule=sgm.CosineSchedule())})


@pytest.mark.parametrize("method,steps", [("heun", (16, 64)), ("dpm2m", (32, 128))])
@pytest.mark.parametrize("name", list(ORDER_SDES))
def test_second_order_convergence(name, method, steps):
    """Pathwise error against the exact flow falls as steps^-2 (same prior draw at every N).

    "vp-cosine" has no closed-form t(sigma): the samplers find it by bisection.
    """
    sde = ORDER_SDES[name]
    key, num = jax.random.key(3), 64
    x1 = sde.prior_sample(jax.random.split(key)[0], (num, 3))  # the draw sgm.sample makes
    ref = exact_ode_output(sde, x1, sde.sampling_t0)
    errs = []
    for n in steps:
        x, _ = sgm.sample(GAUSS.score(sde), sde, (3,), key=key, num=num, method=method, steps=n)
        errs.append(float(jnp.sqrt(jnp.mean((x - ref) ** 2))))
    slope = math.log(errs[0] / errs[1]) / math.log(steps[1] / steps[0])
    assert 1.7 < slope < 2.5, (errs, slope)
    assert errs[-1] < 5e-3, errs


@pytest.mark.parametrize("method,kw,expected", [
    ("heun", dict(steps=1), 1), ("heun", dict(steps=5, s_churn=2.0), 9),
    ("dpm2m", dict(steps=1), 1), ("dpm2m", dict(steps=6, grid="karras"), 6),
])
def test_reported_nfe_counts_every_score_call(method, kw, expected):
    reported, counted = count_score_calls(sgm.VPSDE(), method, **kw)
    assert counted == reported == expected


# Means and stds within the tolerances of test_sample.py (stds: dpm2m 0.1, see below).
@pytest.mark.parametrize("method,kw,std_tol", [
    ("dpm2m", dict(steps=20), 0.1), ("heun", dict(steps=20), 0.05),
])
@pytest.mark.parametrize("name", list(SDES3))
def test_reproduces_mixture_in_few_evaluations(name, method, kw, std_tol):
    """DPM-Solver++(2M) with 20 evaluations, Heun with 39.

    With the exact score both are plain discretisation error. At 20 evaluations dpm2m widens the
    std-0.5 component by ~0.05-0.09 (the mode split near sigma ~ 2 is where its extrapolated x_0
    overshoots); Heun on EDM's grid needs about twice the evaluations: at N = 10 (19 evaluations)
    it widens even a single Gaussian by 18-32% over sigma in [0.01, 152], so N = 20 here.
    """
    sde, n = SDES3[name], 4000
    x, info = sgm.sample(GM_SCORES[name], sde, (2,), key=jax.random.key(7), num=n, method=method,
                         **kw)
    assert int(info["nfe"]) == {"dpm2m": 20, "heun": 39}[method]
    assert_reproduces_mixture(x, std_tol=std_tol)


def test_churn_path_and_progress():
    """Stochastic Heun (EDM Algorithm 2) still reproduces the mixture; path and progress line up."""
    sde, seen = SDES3["vp"], []
    x, info = sgm.sample(GM_SCORES["vp"], sde, (2,), key=jax.random.key(1), num=4000, method="heun",
                         steps=40, s_churn=20.0, s_tmin=0.05, s_tmax=10.0, return_path=True,
                         progress=lambda done, total: seen.append((done, total)))
    jax.block_until_ready(x)
    assert_reproduces_mixture(x, std_tol=0.05)
    assert info["path"].shape == (41, 4000, 2) and info["path_t"].shape == (41,)
    np.testing.assert_array_equal(info["path"][-1], x)
    ends = info["path_t"][jnp.array([0, -2, -1])]
    np.testing.assert_allclose(ends, [1.0, sde.sampling_t0, 0.0], rtol=1e-5)
    assert sorted(seen)[-1] == (40.0, 40) and len(seen) == 40


def test_bad_grid_is_rejected():
    with pytest.raises(sgm.ConfigError, match="grid"):
        sgm.sample(GM_SCORES["vp"], SDES3["vp"], (2,), key=jax.random.key(0), num=2, method="dpm2m",
                   grid="cosine")
