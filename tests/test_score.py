"""Each parameterisation of ScoreModel turns an oracle network into the exact score."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SDES3

import sgm

GM = sgm.GaussianMixture([0.5, 0.5], [[1.0, -1.0], [-1.0, 0.5]], [0.4, 0.7])


class Oracle:
    """A 'network' that outputs what parameterisation `param` asks for, computed from the truth."""

    def __init__(self, sde, param, sigma_data):
        self.sde, self.param, self.sd = sde, param, sigma_data
        self.true = GM.score(sde)

    def __call__(self, t, x_in):
        a, s = self.sde.scale(t), self.sde.std(t)
        x = x_in * jnp.sqrt(a**2 * self.sd**2 + s**2)  # undo the input scaling
        score = self.true(t, x)
        x0 = (x + s**2 * score) / a
        eps = -s * score
        if self.param == "eps":
            return eps
        if self.param == "score":
            return score
        if self.param == "x0":
            return x0
        if self.param == "v":
            return a * eps - s * x0
        sig = s / a
        c_skip = self.sd**2 / (sig**2 + self.sd**2)
        c_out = sig * self.sd / jnp.sqrt(sig**2 + self.sd**2)
        return (x0 - c_skip * x / a) / c_out


@pytest.mark.parametrize("param", ["eps", "score", "x0", "v", "edm"])
@pytest.mark.parametrize("name", list(SDES3))
def test_parameterisations_recover_true_score(name, param):
    sde = SDES3[name]
    model = sgm.ScoreModel(Oracle(sde, param, 0.5), sde, prediction=param, sigma_data=0.5)
    x = jnp.array([0.3, -0.2])
    for t in (0.01, 0.3, 0.9):
        xt = sde.scale(t) * x + 0.5 * sde.std(t)
        # x0- and EDM-outputs reach the score through (a x0 - x) / s^2: float32 rounding of x is
        # amplified by 1/s^2, so the tolerance scales with it
        tol = 1e-6 * float(jnp.max(jnp.abs(xt)) / sde.std(t) ** 2)
        np.testing.assert_allclose(model(t, xt), GM.score(sde)(t, xt), rtol=2e-4, atol=tol)


def test_guided_score_mixes_conditional_and_unconditional():
    def model(t, x, *, label):
        return jnp.where(label == 3, 2.0, 1.0) * x

    g = sgm.GuidedScore(model, label=jnp.asarray(1), null_label=3, weight=2.0)
    np.testing.assert_allclose(g(0.5, jnp.ones(2)), 3.0 * 1.0 - 2.0 * 2.0)
    assert float(sgm.GuidedScore(model, jnp.asarray(1), 3, 0.0)(0.5, jnp.ones(2))[0]) == 1.0


def test_tweedie_recovers_mean_for_point_mass_limit():
    sde = sgm.VPSDE()
    gm = sgm.GaussianMixture.gaussian(jnp.array([2.0, -1.0]), 1e-3)
    x = sde.scale(0.5) * gm.means[0] + sde.std(0.5) * jnp.array([0.7, -1.2])
    np.testing.assert_allclose(sgm.tweedie_x0(gm.score(sde), sde, 0.5, x), gm.means[0], atol=1e-3)


def test_unknown_parameterisation():
    with pytest.raises(sgm.ConfigError, match="parameterisation"):
        sgm.ScoreModel(lambda t, x: x, sgm.VPSDE(), prediction="flow")
