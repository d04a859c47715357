"""Samplers driven by the closed-form score of a 2-D Gaussian mixture reproduce the mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MIXTURE as GM
from conftest import SDES3, assert_reproduces_mixture, count_score_calls

import sgm

N = 4000
METHODS = {  # id: (method, options); pc's default runs a corrector on VE only
    "em": ("em", {"steps": 500}),
    "ode": ("ode", {}),
    "pc": ("pc", {"steps": 300}),
    "pc-corrected": ("pc", {"steps": 300, "snr": 0.16, "corrector_steps": 1}),
    "ddpm": ("ddpm", {"steps": 300}),
    "ddim": ("ddim", {"steps": 100}),
}


@pytest.mark.parametrize("case", list(METHODS))
@pytest.mark.parametrize("name", list(SDES3))
def test_sampler_reproduces_mixture(name, case):
    sde, (method, options) = SDES3[name], METHODS[case]
    x, info = sgm.sample(GM.score(sde), sde, (2,), key=jax.random.key(7), num=N, method=method,
                         **options)
    assert x.shape == (N, 2)
    assert_reproduces_mixture(x, std_tol=0.05)
    assert int(info["nfe"]) > 0


@pytest.mark.slow
def test_em_error_shrinks_with_steps():
    sde = sgm.VPSDE()
    gm = sgm.GaussianMixture.gaussian(jnp.array([0.5, -1.0]), jnp.array([0.7, 0.2]))
    errs = []
    for steps in (4, 16, 64, 256):
        x, _ = sgm.sample(gm.score(sde), sde, (2,), key=jax.random.key(1), num=40000, method="em",
                          steps=steps)
        errs.append(float(jnp.sum(jnp.abs(x.mean(0) - gm.means[0])) +
                          jnp.sum(jnp.abs(x.std(0) - gm.stds[0]))))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[3] < 0.03 and errs[0] > 4 * errs[3], errs


@pytest.mark.parametrize("method,kw,expected", [
    ("em", {"steps": 20}, 21),
    ("em", {"steps": 20, "settings": sgm.SamplerSettings(denoise=False)}, 20),
    ("ode", {"solver": "heun", "steps": 10}, 20), ("ode", {"solver": "euler", "steps": 7}, 7),
    ("ode", {}, None), ("pc", {"steps": 10}, 11),
    ("pc", {"steps": 10, "corrector_steps": 1}, 21), ("pc", {"steps": 5, "corrector_steps": 2}, 16),
    ("ddpm", {"steps": 15}, 15), ("ddim", {"steps": 7}, 7),
])
def test_reported_nfe_counts_every_score_call(method, kw, expected):
    reported, counted = count_score_calls(sgm.VPSDE(), method, **kw)
    assert counted == reported
    if expected is not None:
        assert reported == expected


def test_pc_default_is_not_biased_on_vp():
    """An 8-D Gaussian (stds 0.1 .. 2), 500 steps, 20,000 samples: the mean over dimensions of
    sample std / true std - 1 (standard error 0.0018). pc's default on VP (no corrector) measures
    -0.0015; one Langevin step per step at snr 0.16 inflates it by ~snr^2 / 2: +0.013."""
    sde = sgm.VPSDE()
    gm = sgm.GaussianMixture.gaussian(np.linspace(-1.0, 1.0, 8), np.geomspace(0.1, 2.0, 8))
    bias = {}
    for label, kw in (("default", {}), ("corrected", {"snr": 0.16, "corrector_steps": 1})):
        x, info = sgm.sample(gm.score(sde), sde, (8,), key=jax.random.key(2), num=20000,
                             method="pc", steps=500, **kw)
        assert int(info["nfe"]) == (501 if label == "default" else 1001)
        bias[label] = float(jnp.mean(x.std(0) / gm.stds[0]) - 1)
        np.testing.assert_allclose(x.mean(0), gm.means[0], atol=0.03)
    assert abs(bias["default"]) < 0.005 and bias["corrected"] > 0.008, bias


def test_clip_and_path_and_progress():
    sde = sgm.VPSDE()
    seen = []
    settings = sgm.SamplerSettings(clip=(-1.0, 1.0), return_path=True,
                                   progress=lambda done, total: seen.append((done, total)))
    x, info = sgm.sample(GM.score(sde), sde, (2,), key=jax.random.key(0), num=64, method="ddim",
                         steps=10, settings=settings)
    jax.block_until_ready(x)
    assert float(jnp.abs(x).max()) <= 1.0
    assert info["path"].shape == (11, 64, 2) and info["path_t"].shape == (11,)
    assert len(seen) == 10 and seen[-1] == (10.0, 10)
    x, info = sgm.sample(GM.score(sde), sde, (2,), key=jax.random.key(0), num=8, method="em",
                         steps=50, settings=sgm.SamplerSettings(return_path=True))
    assert info["path"].shape == (51, 8, 2)


def test_ddim_eta0_is_deterministic_given_prior():
    sde = sgm.VESDE()
    a, _ = sgm.sample(GM.score(sde), sde, (2,), key=jax.random.key(0), num=16, method="ddim", steps=30)
    b, _ = sgm.sample(GM.score(sde), sde, (2,), key=jax.random.key(0), num=16, method="ddim", steps=30)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad,match", [
    ({"method": "rk4"}, "sampling method"), ({"steps": 0}, "steps"),
    ({"method": "ode", "solver": "rk9"}, "ODE solver"),
    ({"settings": sgm.SamplerSettings(t_end=2.0)}, "t_end"),
])
def test_bad_options_are_rejected(bad, match):
    with pytest.raises(sgm.ConfigError, match=match):
        sgm.sample(lambda t, x: -x, sgm.VPSDE(), (2,), key=jax.random.key(0), num=2, **bad)


@pytest.mark.parametrize("method", [pytest.param("em", marks=pytest.mark.slow),
                                    pytest.param("ode", marks=pytest.mark.slow), "ddim"])
def test_per_sample_conditioning(method):
    """A conditional closed-form score N(mu, 0.1^2): each sample follows its own mu."""
    sde = sgm.SubVPSDE()

    def score(t, x, mu):
        return sgm.GaussianMixture.gaussian(mu, 0.1).score(sde)(t, x)

    mu = jnp.repeat(jnp.array([[-1.0, 2.0], [3.0, 0.5]]), 200, axis=0)
    x, _ = sgm.sample(score, sde, (2,), key=jax.random.key(3), num=400, method=method, steps=200,
                      cond={"mu": mu})
    np.testing.assert_allclose(x[:200].mean(0), [-1.0, 2.0], atol=0.03)
    np.testing.assert_allclose(x[200:].mean(0), [3.0, 0.5], atol=0.03)
    np.testing.assert_allclose(x[200:].std(0), [0.1, 0.1], atol=0.02)
    mus = jnp.array([[-1.0, 2.0], [3.0, 0.5]])
    lp, _ = sgm.log_likelihood(score, sde, x[::200], cond={"mu": mus})
    for i in range(2):
        ref, _ = sgm.log_likelihood(lambda t, y, mu=mus[i]: score(t, y, mu), sde,
                                    x[200 * i:200 * i + 1])
        np.testing.assert_allclose(lp[i], ref[0], rtol=1e-5, atol=1e-4)
