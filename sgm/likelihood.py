"""Log-likelihoods through the probability-flow ODE, and bits per dimension.

Along the probability flow dx/dt = v(t, x) = f(t, x) - g(t)^2 score(t, x) / 2 the density obeys
d log p_t(x(t)) / dt = -div v(t, x(t)), so with z = x(t1) obtained by integrating from x(t0) = x,

    log p_t0(x) = log p_prior(z) + int_{t0}^{t1} div v(t, x(t)) dt

(Chen et al. 2018; Grathwohl et al. 2019; Song et al. 2021, Appendix D.2). The divergence is exact
(forward-mode derivatives along basis vectors, `chunk` at a time, never the whole Jacobian at once)
or Hutchinson's estimate eps^T (dv/dx) eps with probes eps held fixed along the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .data.transforms import discrete_log_det
from .errors import ConfigError
from .parallel import constrain
from .samplers import ODE_SOLVERS
from .sde import AbstractSDE


def _exact_divergence(lin, dim: int, chunk: int) -> jax.Array:
    """sum_i (J e_i)_i for the linear map `lin` = J, evaluated `chunk` basis vectors at a time."""
    chunk = min(chunk, dim)
    n_chunks = -(-dim // chunk)
    idx = jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk)

    def block(rows):
        basis = jax.nn.one_hot(rows, dim)  # rows >= dim give all-zero vectors (padding)
        cols = jax.vmap(lin)(basis)
        return jnp.sum(jnp.take_along_axis(cols, jnp.minimum(rows, dim - 1)[:, None], 1)[:, 0]
                       * (rows < dim))

    if n_chunks == 1:
        return block(idx[0])
    return jnp.sum(jax.lax.map(block, idx))


def _probes(key, probes: int, dim: int, kind: str, dtype):
    if kind == "rademacher":
        return jax.random.rademacher(key, (probes, dim)).astype(dtype)
    return jax.random.normal(key, (probes, dim), dtype)


@eqx.filter_jit
def _solve(score, sde, x, cond, keys, exact, rtol, atol, probes, probe, t0, solver, chunk, hutchinson,
           max_steps, sharding):
    x, keys, cond = constrain((x, keys, cond), sharding)  # split the batch over devices
    shape = x.shape[1:]
    dim = math.prod(shape)
    make, adaptive, per_step = ODE_SOLVERS[solver]

    def field(t, state, args):
        y, _ = state
        eps, c = args

        def v(flat):
            return sde.ode_drift(partial(score, **c), t, flat.reshape(shape)).reshape(-1)

        if exact:
            dy, lin = jax.linearize(v, y)
            div = _exact_divergence(lin, dim, chunk)
        elif hutchinson == "jvp":
            dy, lin = jax.linearize(v, y)
            div = jnp.mean(jnp.sum(eps * jax.vmap(lin)(eps), axis=1))
        else:
            dy, vjp = jax.vjp(v, y)
            div = jnp.mean(jnp.sum(jax.vmap(lambda e: vjp(e)[0])(eps) * eps, axis=1))
        return dy, div

    def one(xi, ci, ki):
        y0 = xi.reshape(-1)
        eps = None if exact else _probes(ki, probes, dim, probe, y0.dtype)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), make(), t0, sde.t1, None, (y0, jnp.zeros((), y0.dtype)),
            args=(eps, ci), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
        )
        z, delta = sol.ys[0][-1], sol.ys[1][-1]
        prior = sde.prior_logp(z)
        return prior + delta, z.reshape(shape), prior, delta, sol.stats["num_steps"]

    logp, z, prior, delta, n_steps = jax.vmap(one)(x, cond, keys)
    info = {"nfe": jnp.max(n_steps) * per_step + 1, "z": z, "prior_logp": prior,
            "delta_logp": delta, "num_steps": n_steps}
    return logp, info


def log_likelihood(score: Callable, sde: AbstractSDE, x, *, key=None, exact: bool = True,
                   rtol: float = 1e-5, atol: float = 1e-5, probes: int = 1,
                   probe: str = "rademacher", t0: float | None = None, solver: str = "tsit5",
                   chunk: int = 128, hutchinson: str = "jvp", max_steps: int = 16384,
                   cond: dict | None = None, sharding=None):
    """log p_t0(x) in nats for each sample of a batch, by the probability-flow ODE.

    Arguments:
        score: `score(t, x)` of ONE sample.
        sde: the forward SDE (its prior closes the integral at t1).
        x: batch (B, *shape).
        key: PRNG key for Hutchinson probes (required when `exact=False`).
        exact: exact divergence (chunked forward mode) or Hutchinson's estimator.
        rtol, atol: tolerances of the adaptive solver (PID controller).
        probes: number of Hutchinson probes averaged per sample (fixed along the path).
        probe: "rademacher" or "gaussian".
        t0: start time (default `sde.t0`).
        solver: adaptive diffrax solver, "tsit5" or "dopri5".
        chunk: basis vectors per forward-mode batch for the exact divergence.
        hutchinson: "jvp" (forward mode) or "vjp" (reverse mode) products for the estimator.
        cond: optional dict of per-sample conditioning arrays (leading axis B), passed to the
            score as `score(t, x, **cond_i)` (labels or parameters of each test point).
        sharding: optional `jax.sharding.Sharding` of the batch axis to spread the batch over
            devices (`sgm.parallel.batch_sharding(mesh)`); B must divide over them.

    Returns:
        `(logp, info)`: logp (B,) in nats per sample; info["nfe"] = vector-field evaluations per
        sample (each one score evaluation with its derivatives), info["z"] the latents at t1,
        info["prior_logp"] and info["delta_logp"] the two terms of logp.
    """
    if solver not in ODE_SOLVERS or not ODE_SOLVERS[solver][1]:
        raise ConfigError(f"likelihood solver must be an adaptive one (tsit5, dopri5), got {solver!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ConfigError(f"unknown Hutchinson probe {probe!r}; expected 'rademacher' or 'gaussian'")
    if hutchinson not in ("jvp", "vjp"):
        raise ConfigError(f"unknown Hutchinson product {hutchinson!r}; expected 'jvp' or 'vjp'")
    if not exact and key is None:
        raise ConfigError("Hutchinson's estimator (exact=False) needs a PRNG key: pass key=...")
    if probes < 1:
        raise ConfigError(f"number of Hutchinson probes must be positive, got {probes}")
    x = jnp.asarray(x)
    keys = jax.random.split(jax.random.key(0) if key is None else key, x.shape[0])
    t0 = sde.t0 if t0 is None else t0
    return _solve(score, sde, x, cond or {}, keys, exact, rtol, atol, probes, probe, t0, solver, chunk,
                  hutchinson, max_steps, sharding)


def bits_per_dim(logp, dim: int, *, levels: int | None = 256, lo: float = -1.0, hi: float = 1.0):
    """Bits per dimension of discrete data from a log-likelihood on its scaled, dequantised form.

    Integer data k in {0, ..., levels - 1}^D is dequantised, y = (k + u) / levels with u ~ U[0, 1)^D,
    and scaled to x = lo + (hi - lo) y. Then p_y(y) = p_x(x) ((hi - lo) / levels)^D and, by Jensen,
    log P(k) >= E_u[log p_x(x)] + D log((hi - lo) / levels), so

        bpd = -(log p_x(x) + D log((hi - lo) / levels)) / (D log 2).

    With `levels=None` the data is continuous and bpd = -log p_x(x) / (D log 2).

    Arguments:
        logp: log-likelihood(s) in nats of the scaled data x (any shape).
        dim: number of dimensions D of one sample.
        levels: number of discrete levels (256 for 8-bit images, 17 for scikit-learn digits).
        lo, hi: the interval the levels were mapped onto.
    """
    if levels is not None and levels < 2:
        raise ConfigError(f"number of discrete levels must be at least 2, got {levels}")
    if not hi > lo:
        raise ConfigError(f"data range needs hi > lo, got lo={lo}, hi={hi}")
    jac = 0.0 if levels is None else discrete_log_det(dim, levels, lo, hi)
    return -(jnp.asarray(logp) + jac) / (dim * math.log(2.0))


DEQUANT_BOUNDS = ("mean", "iw")


def combine_dequantised(logp, bound: str = "mean"):
    """One bound per test point from the log-likelihoods of K dequantisations of it.

    `logp` has shape `(K, ...)`: log p(x + u_k) for K independent uniform offsets u_k of the same
    discrete points. Both reductions give a lower bound on the discrete log-probability (up to the
    constant Jacobian that `bits_per_dim` adds):

    - "mean": (1/K) sum_k log p(x + u_k). Its expectation is E_u[log p(x + u)] for every K; more
      draws only shrink the variance.
    - "iw":   log((1/K) sum_k p(x + u_k)), the importance-weighted bound with the uniform proposal:
      its expectation rises with K towards log E_u[p(x + u)] = log P(x) + const (Jensen applied to
      a K-sample mean). Exact for the exact trace; with Hutchinson's noisy log-densities the
      log-mean-exp is biased upwards and is no longer guaranteed to be a bound.
    """
    if bound not in DEQUANT_BOUNDS:
        raise ConfigError(f"unknown dequantisation bound {bound!r}; expected one of "
                          f"{', '.join(DEQUANT_BOUNDS)}")
    logp = jnp.asarray(logp)
    if bound == "mean":
        return logp.mean(0)
    return jax.scipy.special.logsumexp(logp, axis=0) - math.log(logp.shape[0])
