"""Closed-form marginals, scores and log-densities for Gaussian-mixture data under any sgm SDE.

If x_0 ~ sum_k w_k N(mu_k, diag(v_k)) and x_t = a(t) x_0 + s(t) eps, then

    p_t(x) = sum_k w_k N(x; a mu_k, diag(a^2 v_k + s^2)),

so the true score and log-density are known at every t. These are the ground truth the tests and
benchmarks hold samplers and likelihoods to; a single Gaussian is the one-component case.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .sde import AbstractSDE


class GaussianMixture(eqx.Module):
    """Mixture of axis-aligned Gaussians in D dimensions.

    Arguments:
        weights: (K,) mixture weights (normalised here).
        means: (K, D) component means.
        stds: (K, D) per-dimension standard deviations (or (K,) / scalar, broadcast).
    """

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    def __init__(self, weights, means, stds):
        means = jnp.atleast_2d(jnp.asarray(means, float))
        w = jnp.asarray(weights, float)
        self.weights = w / jnp.sum(w)
        self.means = means
        stds = jnp.asarray(stds, float)
        if stds.ndim == 1:  # one isotropic std per component
            stds = stds[:, None]
        self.stds = jnp.broadcast_to(stds, means.shape)

    @classmethod
    def gaussian(cls, mean, std) -> "GaussianMixture":
        """A single Gaussian N(mean, diag(std^2))."""
        mean = jnp.atleast_1d(jnp.asarray(mean, float))
        return cls(jnp.ones(1), mean[None], jnp.broadcast_to(jnp.asarray(std, float), mean.shape)[None])

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _params(self, sde: AbstractSDE | None, t):
        if sde is None:
            return self.means, self.stds**2
        a, s = sde.scale(t), sde.std(t)
        return a * self.means, a**2 * self.stds**2 + s**2

    def _component_logp(self, sde, t, x):
        mean, var = self._params(sde, t)
        return -0.5 * jnp.sum((x - mean) ** 2 / var + jnp.log(2 * math.pi * var), axis=-1)

    def log_prob(self, x, sde: AbstractSDE | None = None, t=None):
        """log p_t(x) of ONE sample x (D,); the data density when `sde` is None."""
        return logsumexp(jnp.log(self.weights) + self._component_logp(sde, t, x))

    def responsibilities(self, x, sde: AbstractSDE | None = None, t=None):
        """Posterior component probabilities of ONE sample."""
        return jax.nn.softmax(jnp.log(self.weights) + self._component_logp(sde, t, x))

    def score(self, sde: AbstractSDE):
        """The exact score function `score(t, x)` of p_t for ONE sample of shape (D,)."""

        def fn(t, x):
            mean, var = self._params(sde, t)
            r = self.responsibilities(x, sde, t)
            return jnp.sum(r[:, None] * (mean - x) / var, axis=0)

        return fn

    def sample(self, key, n: int):
        """n exact draws, shape (n, D)."""
        k_c, k_x = jax.random.split(key)
        comp = jax.random.categorical(k_c, jnp.log(self.weights), shape=(n,))
        eps = jax.random.normal(k_x, (n, self.dim))
        return self.means[comp] + self.stds[comp] * eps
