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
import numpy as np
from jax.scipy.special import logsumexp

from .errors import ConfigError
from .sde import AbstractSDE


def _array(name: str, value) -> jax.Array:
    """`value` as a float array, or a ConfigError naming the argument (ragged lists, strings)."""
    try:
        return jnp.asarray(value, float)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"GaussianMixture's {name} must be an array of numbers, got "
                          f"{value!r}") from err


def _check_values(name: str, a: jax.Array, positive: bool) -> None:
    """A ConfigError unless every entry of `a` is finite (and > 0 when `positive`); read on the
    host, and skipped for a traced `a` (a mixture built inside the caller's `jax.jit`)."""
    if isinstance(a, jax.core.Tracer):
        return
    v = np.asarray(a)
    bad = ~np.isfinite(v) | ((v <= 0) if positive else False)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "positive finite numbers" if positive else "finite numbers"
        raise ConfigError(f"GaussianMixture's {name} must be {what}; {int(bad.sum())} of its "
                          f"{v.size} entries fail that (the first, at index {first}: "
                          f"{float(v[first]):g})")


class GaussianMixture(eqx.Module):
    """Mixture of axis-aligned Gaussians in D dimensions.

    Arguments:
        weights: (K,) positive, finite mixture weights (normalised here to sum to 1).
        means: (K, D) finite component means (a (D,) vector is one component).
        stds: (K, D) positive, finite per-dimension standard deviations, or (K,) one per
            component, or a scalar for all.

    A ConfigError refuses anything else: weights that are not positive and finite, a standard
    deviation that is not positive and finite, non-finite means, or shapes that disagree (K
    weights for another number of means, stds that are neither a scalar, (K,) nor (K, D)).
    """

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    def __init__(self, weights, means, stds):
        w, means, stds = _array("weights", weights), _array("means", means), _array("stds", stds)
        means = jnp.atleast_2d(means)
        if means.ndim != 2 or 0 in means.shape:
            raise ConfigError(f"GaussianMixture's means must be (K, D): K >= 1 components in "
                              f"D >= 1 dimensions, got shape {means.shape}")
        k = means.shape[0]
        if w.shape != (k,):
            raise ConfigError(f"GaussianMixture needs one weight per component: {k} means of "
                              f"dimension {means.shape[1]}, but weights of shape {w.shape}")
        _check_values("weights", w, positive=True)
        _check_values("means", means, positive=False)
        _check_values("stds", stds, positive=True)
        if stds.ndim == 1:  # one isotropic std per component
            if stds.shape != (k,):
                raise ConfigError(f"GaussianMixture's stds of shape {stds.shape} must be one per "
                                  f"component ({k},), (K, D) = {means.shape} or a scalar")
            stds = stds[:, None]
        if stds.ndim > 2 or not all(n in (1, m) for n, m in zip(stds.shape[::-1],
                                                                means.shape[::-1])):
            raise ConfigError(f"GaussianMixture's stds of shape {stds.shape} must be a scalar, "
                              f"one per component ({k},) or (K, D) = {means.shape}")
        self.weights = w / jnp.sum(w)
        self.means = means
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


# ------------------------------------------------------------ a yardstick for samples of a mixture


def component_statistics(gm: GaussianMixture, x):
    """`(shares, spreads)`, each (K,), of samples `x` (n, D) as `mixture_report` defines them:
    the share of the samples each component receives by the true posterior, and its spread
    relative to its true one. Plain jax: it differentiates with respect to `x` (the
    responsibilities held fixed, so a gradient moves samples within their components)."""
    resp = jax.lax.stop_gradient(jax.vmap(gm.responsibilities)(x))  # (n, K)
    z2 = jnp.mean(((x[:, None, :] - gm.means[None]) / gm.stds[None]) ** 2, axis=-1)  # (n, K)
    total = jnp.maximum(jnp.sum(resp, 0), 1e-30)
    return resp.mean(0), jnp.sqrt(jnp.sum(resp * z2, 0) / total + 1e-30)


def mixture_tuning_loss(gm: GaussianMixture):
    """A loss for `sgm.Tuning(loss=...)` that fits a few-step sampler's levels to the mixture
    `gm`'s law rather than to each draw's endpoint: `loss(x, ref)` is the sum over components of
    the squared differences of `component_statistics` (shares and spreads) between the sampler's
    samples `x` and their accurate endpoints `ref` (same prior draws, so the draws' own sampling
    noise cancels). A draw that lands in another component than its endpoint costs only through
    the shares; a component a fraction eps too wide costs eps^2 however its draws are paired.
    Use large batches (thousands of draws): the statistics are means over the batch."""

    def loss(x, ref):
        x, ref = x.reshape(x.shape[0], -1), ref.reshape(ref.shape[0], -1)
        (w, s), (w0, s0) = component_statistics(gm, x), component_statistics(gm, ref)
        return jnp.sum(jnp.square(s - s0)) + jnp.sum(jnp.square(w - w0))

    return loss


def mixture_report(gm: GaussianMixture, x, *, entropy: float | None = None) -> dict:
    """How samples `x` (n, D) of a sampler differ from the mixture `gm`, per component.

    Every sample is assigned to the components by the true posterior (responsibilities at t = 0,
    soft, so nothing is thrown away at a boundary). Then:

    - `weights` (K,): the share of the samples each component receives (the true weights are
      `gm.weights`); `weight_error` the largest |share - weight|.
    - `spreads` (K,): each component's spread relative to its true one, the root of the
      responsibility-weighted mean of ||(x - mu_k) / sigma_k||^2 / D (1 for exact draws; a
      component 3% too wide gives 1.03); `spread_error` the largest |spread - 1|.
    - `xent`: the mean of -log p(x) over the samples in nats, with its standard error
      `xent_se`; with the mixture's `entropy` H(p) given (`mixture_entropy`), `xent_gap` =
      xent - H(p). For exact draws it is 0 up to noise; samples too wide raise it (about
      D * eps * w_k nats for component k too wide by a fraction eps), and it falls below 0 only
      for samples piled into the modes.

    Non-finite samples make every error infinite. Compare with `mixture_floor`: the same numbers
    for exact draws of the same size.
    """
    x = jnp.asarray(x)
    n, k = x.shape[0], gm.weights.shape[0]
    if not bool(jnp.all(jnp.isfinite(x))):
        inf = float("inf")
        out = {"weights": [inf] * k, "spreads": [inf] * k, "weight_error": inf,
               "spread_error": inf, "xent": inf, "xent_se": inf}
        if entropy is not None:
            out["xent_gap"] = inf
        return out
    share, spreads = component_statistics(gm, x)
    logp = jax.vmap(gm.log_prob)(x)
    weights, spreads = np.asarray(share, np.float64), np.asarray(spreads, np.float64)
    logp = np.asarray(logp, np.float64)
    out = {"weights": weights.tolist(), "spreads": spreads.tolist(),
           "weight_error": float(np.max(np.abs(weights - np.asarray(gm.weights)))),
           "spread_error": float(np.max(np.abs(spreads - 1.0))),
           "xent": float(-logp.mean()), "xent_se": float(logp.std() / math.sqrt(n))}
    if entropy is not None:
        out["xent_gap"] = out["xent"] - float(entropy)
    return out


def mixture_entropy(gm: GaussianMixture, *, key, num: int = 1_000_000) -> float:
    """The differential entropy H(p) = -E_p[log p] of the mixture in nats, by `num` exact draws
    (standard error about std(log p) / sqrt(num): 1e-3 nats for the defaults and a few
    dimensions)."""
    total, done = 0.0, 0
    for k in jax.random.split(key, -(-num // 100_000)):
        m = min(100_000, num - done)
        total += float(jnp.sum(jax.vmap(gm.log_prob)(gm.sample(k, m))))
        done += m
    return -total / num


FLOOR_KEYS = ("weight_error", "spread_error", "xent_gap")


def mixture_floor(gm: GaussianMixture, n: int, *, key, sets: int = 30,
                  entropy: float | None = None, quantile: float = 95.0) -> dict:
    """`mixture_report`'s errors for `sets` independent exact sets of `n` draws: the level below
    which a sampler's error cannot be told from exact sampling. Returns, for each of
    `weight_error`, `spread_error` and |`xent_gap`|, the mean and the `quantile` percentile
    (keys `<name>` and `<name>_p95`). The entropy is estimated once if not given."""
    if entropy is None:
        entropy = mixture_entropy(gm, key=jax.random.fold_in(key, 1))
    reports = [mixture_report(gm, gm.sample(k, n), entropy=entropy)
               for k in jax.random.split(key, sets)]
    out = {}
    for name in FLOOR_KEYS:
        vals = np.abs([r[name] for r in reports])
        out[name] = float(vals.mean())
        out[f"{name}_p95"] = float(np.percentile(vals, quantile))
    return out
