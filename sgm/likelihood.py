"""Log-likelihoods through the probability-flow ODE, and bits per dimension.

Along the probability flow dx/dt = v(t, x) = f(t, x) - g(t)^2 score(t, x) / 2 the density obeys
d log p_t(x(t)) / dt = -div v(t, x(t)), so with z = x(t1) obtained by integrating from x(t0) = x,

    log p_t0(x) = log p_prior(z) + int_{t0}^{t1} div v(t, x(t)) dt

(Chen et al. 2018; Grathwohl et al. 2019; Song et al. 2021, Appendix D.2). The divergence is exact
(forward-mode derivatives along basis vectors, `chunk` at a time, never the whole Jacobian at once)
or Hutchinson's estimate eps^T (dv/dx) eps with probes eps held fixed along the path.

By default (see `StepControl`) the whole batch is one ODE with shared steps (a vmapped batch of
per-point adaptive solves runs to its slowest point anyway), each step accepted only when every
point's own error meets the tolerances, solved by Dopri5 for VP/SubVP and
Tsit5 for VE, with the state rescaled to unit scale and integrated in t. See
`docs/results/defaults.md` for the measurements behind these defaults.

The options are small frozen objects of `sgm.likelihood_options`, re-exported here: the
divergence (`Exact` or `Hutchinson`) and how the ODE is solved (`StepControl`), with the names
their fields take (`SOLVERS`, `CLOCKS`, `STEPPING`, `ERROR_NORMS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .data.transforms import discrete_log_det
from .errors import ConfigError, DataError, check_choice
from .likelihood_options import CLOCKS, ERROR_NORMS, SOLVERS, Exact, Hutchinson, StepControl
from .ode_solvers import (STEPPING, check_count, check_number, check_solved, check_tolerances,
                          failure, largest_point_rms, ode_solver)
from .parallel import constrain
from .samplers import check_score
from .sde import VESDE, AbstractSDE, LearnedSchedule, SubVPSDE


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


def _clock(sde: AbstractSDE, clock: str, t0):
    """The variable u the ODE is integrated in: (u0, u1, t_of(u) -> (t, dt/du)).

    - "t":      u = t.
    - "logt":   u = log t, t = e^u, dt/du = t.
    - "logsnr": u = log sigma(t) = -lambda(t) / 2 (sigma = std / scale, lambda the log-SNR), t from
      `sde.noise_level_time`, dt/du = sigma / sigma'(t).

    Only the time is reparametrised: dx/du = v(t(u), x) dt/du and d(delta)/du = div v dt/du, so the
    answer is the same integral; the solver just sees it spread more evenly over its interval.
    """
    if clock == "t":
        return jnp.asarray(t0, float), jnp.asarray(sde.t1, float), lambda u: (u, jnp.ones_like(u))
    if clock == "logt":
        return jnp.log(t0), jnp.log(sde.t1), lambda u: (jnp.exp(u), jnp.exp(u))

    def t_of(u):
        t = sde.noise_level_time(jnp.exp(u))
        sig, dsig = jax.jvp(sde.noise_level, (t,), (jnp.ones_like(t),))
        return t, sig / dsig

    return jnp.log(sde.noise_level(t0)), jnp.log(sde.noise_level(sde.t1)), t_of


@eqx.filter_jit
def _solve(score, sde, x, *, cond, keys, exact, rtol, atol, probes, probe, t0, solver, chunk,
           hutchinson, max_steps, sharding, clock, stepping, error_norm, pcoeff, icoeff, rescale,
           progress_meter):
    """`log_likelihood` once its arguments are checked and its defaults resolved (solver, clock,
    t0, one key per sample). Arrays (x, cond, keys, the score's parameters) are traced; strings,
    numbers and callables are static, so equal settings reuse one compilation."""
    shape = x.shape[1:]
    check_score(score, shape, cond, x.shape[0],  # when tracing: once per compilation
                f"; x of shape {x.shape} must be a batch (B, *shape) of the score's samples")
    x, keys, cond = constrain((x, keys, cond), sharding)  # split the batch over devices
    dim = math.prod(shape)
    make, _, per_step = ode_solver(solver)
    u0, u1, t_of = _clock(sde, clock, t0)

    def marginal_scale(t):
        """m(t) = sqrt(scale^2 + std^2): the std at t of unit-variance data (1 for VP)."""
        return jnp.sqrt(sde.scale(t) ** 2 + sde.std(t) ** 2) if rescale else jnp.ones_like(t)

    def field(u, y, eps, c):
        """(dy/du, d delta/du) of ONE point, y = x / m(t) (y = x unless `rescale`)."""
        t, dt_du = t_of(u)
        m, dm = jax.jvp(marginal_scale, (t,), (jnp.ones_like(t),))

        def v(flat):
            dx = sde.ode_drift(partial(score, **c), t, (m * flat).reshape(shape)).reshape(-1)
            return (dx - dm * flat) / m * dt_du

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

    def probes_of(k, y0):
        return None if exact else _probes(k, probes, dim, probe, y0.dtype)

    def integrate(term, y0, **norm):
        return diffrax.diffeqsolve(
            term, make(), u0, u1, None, y0,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=pcoeff,
                                                      icoeff=icoeff, **norm),
            max_steps=max_steps, progress_meter=progress_meter, throw=False,
        )

    m0, m1 = marginal_scale(jnp.asarray(t0, float)), marginal_scale(jnp.asarray(sde.t1, float))
    flat = x.reshape(x.shape[0], -1) / m0
    if stepping == "point":
        def one(y0, ci, ki):
            eps = probes_of(ki, y0)
            term = diffrax.ODETerm(lambda u, state, args: field(u, state[0], eps, ci))
            sol = integrate(term, (y0, jnp.zeros((), y0.dtype)))
            return sol.ys[0][-1], sol.ys[1][-1], sol.stats["num_steps"], failure(sol)

        z, delta, n_steps, failed = jax.vmap(one)(flat, cond, keys)
        failed = jnp.max(failed)
        nfe = jnp.max(n_steps) * per_step + 1
    else:
        eps = jax.vmap(probes_of)(keys, flat)
        batched = jax.vmap(field, in_axes=(None, 0, 0, 0))
        term = diffrax.ODETerm(lambda u, state, args: batched(u, state[0], eps, cond))
        norm = {"norm": largest_point_rms} if error_norm == "point" else {}  # else diffrax's RMS
        sol = integrate(term, (flat, jnp.zeros(flat.shape[0], flat.dtype)), **norm)
        z, delta, failed = sol.ys[0][-1], sol.ys[1][-1], failure(sol)
        n_steps = jnp.broadcast_to(sol.stats["num_steps"], (flat.shape[0],))
        nfe = sol.stats["num_steps"] * per_step + 1
    # log p_x(x) = log p_y(y) - D log m(t0), and at t1 log p_y(y) = prior(m1 y) + D log m1
    z = z * m1
    delta = delta + dim * (jnp.log(m1) - jnp.log(m0))
    prior = jax.vmap(sde.prior_logp)(z)
    info = {"nfe": nfe, "z": z.reshape(x.shape), "prior_logp": prior, "delta_logp": delta,
            "num_steps": n_steps, "failure": failed}
    return prior + delta, info


def _check_points(x) -> jax.Array:
    """`x` as an array: a ConfigError unless it is a batch (B, *shape) of B >= 1 points, a
    DataError naming the points that are not finite (NaN or inf). The values are checked on the
    host (numpy) where `x` is concrete; a traced `x` (under the caller's `jax.jit`) passes."""
    if np.ndim(x) < 1 or np.shape(x)[0] < 1:
        raise ConfigError(f"x must be a batch (B, *shape) of at least one point, got shape "
                          f"{np.shape(x)}")
    if not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True):
        host = np.asarray(x)
        bad = ~np.all(np.isfinite(host.reshape(host.shape[0], -1)), axis=1)
        if bad.any():
            raise DataError(f"x holds non-finite values (NaN or inf) in {int(bad.sum())} of its "
                            f"{host.shape[0]} points (the first at index {int(np.argmax(bad))}); "
                            f"a log-likelihood needs finite data.")
    return jnp.asarray(x)


def log_likelihood(score: Callable, sde: AbstractSDE, x, *, key=None, exact: bool = True,
                   rtol: float = 1e-5, atol: float = 1e-5, probes: int = 1,
                   probe: str = "rademacher", cond: dict | None = None,
                   divergence: Exact | Hutchinson | None = None,
                   control: StepControl | None = None):
    """log p_t0(x) in nats for each sample of a batch, by the probability-flow ODE.

    `log_likelihood(score, sde, x)` takes the exact divergence and
    `log_likelihood(score, sde, x, key=key, exact=False, probes=4)` Hutchinson's estimator; every
    setting of the divergence is `divergence=Exact(chunk=...)` or
    `divergence=Hutchinson(probes=..., probe=..., product=...)`, and how the ODE is solved is
    `control=StepControl(...)`.

    Arguments:
        score: `score(t, x)` of ONE sample.
        sde: the forward SDE (its prior closes the integral at t1).
        x: batch (B, *shape).
        key: PRNG key for Hutchinson probes (required for Hutchinson's estimator).
        exact: exact divergence (chunked forward mode) or Hutchinson's estimator; with `probes`
            and `probe` a shorthand for `divergence`.
        rtol, atol: tolerances of the adaptive solver (PID controller), on the RMS of the scaled
            local errors of a point's coordinates and its log-density accumulator (see
            `StepControl.error_norm` for a batch). With D + 1 components per point, the
            accumulator's error is at most sqrt(D + 1) times its tolerance: at most the tolerance
            per dimension (D >= 2).
        probes: number of Hutchinson probes averaged per sample (fixed along the path).
        probe: "rademacher" or "gaussian".
        cond: optional dict of per-sample conditioning arrays (leading axis B), passed to the
            score as `score(t, x, **cond_i)` (labels or parameters of each test point).
        divergence: `Exact(chunk)` or `Hutchinson(probes, probe, product)`; None (the default)
            builds it from `exact`, `probes` and `probe` (`Exact()` or `Hutchinson(probes,
            probe)`). When given, `exact`, `probes` and `probe` must stay at their defaults.
        control: how and where the ODE is solved (`StepControl`: solver, clock, stepping, error
            norm, PID coefficients, rescaling, max_steps, t0, sharding, progress meter); None is
            `StepControl()`, the defaults.

    Returns:
        `(logp, info)`: logp (B,) in nats per sample; info["nfe"] = vector-field evaluations per
        sample (each one score evaluation with its derivatives), info["z"] the latents at t1,
        info["prior_logp"] and info["delta_logp"] the two terms of logp, info["num_steps"] the
        solver steps of each sample.

    Raises:
        ConfigError, before any solve: an unknown probe (and, when the objects are made, an
        unknown product, solver, clock, stepping or error norm; probes, chunk or max_steps not a
        positive integer; pcoeff or icoeff not finite); `divergence` given with `exact`,
        `probes` or `probe` changed from their defaults; Hutchinson's estimator without a key;
        rtol or atol not positive and finite; t0 outside (0, t1); `x` not a batch (B, *shape) of
        B >= 1 points of the shape the score takes (its output must have that shape too), or
        `cond` arrays without one condition per point.
        DataError: `x` holds NaN or inf (checked where `x` is a concrete array, not a tracer).
    """
    if divergence is None:
        estimator = Hutchinson(probes=probes, probe=probe)  # checks both, even for the exact trace
        divergence = Exact() if exact else estimator
    elif not isinstance(divergence, (Exact, Hutchinson)):
        raise ConfigError(f"divergence must be sgm.Exact(...) or sgm.Hutchinson(...), got "
                          f"{divergence!r}")
    elif not exact or probes != 1 or probe != "rademacher":
        raise ConfigError(f"divergence={divergence!r} was given together with exact={exact!r}, "
                          f"probes={probes!r}, probe={probe!r}: set those in the divergence "
                          f"object and leave exact, probes and probe at their defaults.")
    control = StepControl() if control is None else control
    if not isinstance(control, StepControl):
        raise ConfigError(f"control must be an sgm.StepControl(...), got {control!r}")
    hutchinson = isinstance(divergence, Hutchinson)
    if hutchinson and key is None:
        raise ConfigError("Hutchinson's estimator (exact=False, or divergence=Hutchinson(...)) "
                          "needs a PRNG key: pass key=...")
    check_tolerances(rtol, atol, control.max_steps, "the likelihood")
    learned = isinstance(getattr(sde, "schedule", None), LearnedSchedule)
    solver, clock = control.solver, control.clock
    if solver == "auto":
        solver = "tsit5" if isinstance(sde, VESDE) or (learned and isinstance(sde, SubVPSDE)) else "dopri5"
    if clock == "auto":
        clock = "logsnr" if learned else "t"
    x = _check_points(x)
    keys = jax.random.split(jax.random.key(0) if key is None else key, x.shape[0])
    t0 = sde.t0 if control.t0 is None else control.t0
    check_number("the likelihood's start time t0", t0)
    if not isinstance(t0, jax.core.Tracer) and not 0 < t0 < sde.t1:
        raise ConfigError(f"the likelihood's start time t0 must lie in (0, {sde.t1}), got {t0}")
    max_steps = control.max_steps
    fix = (f"the ODE cannot meet rtol={rtol:g}, atol={atol:g} in that many steps: loosen them "
           f"(likelihood.rtol, likelihood.atol) or raise max_steps.")
    estimator = divergence if hutchinson else Hutchinson()  # unused by the exact trace
    logp, info = _solve(
        score, sde, x, cond=cond or {}, keys=keys, exact=not hutchinson, rtol=rtol, atol=atol,
        probes=estimator.probes, probe=estimator.probe, t0=t0, solver=solver,
        chunk=Exact().chunk if hutchinson else divergence.chunk, hutchinson=estimator.product,
        max_steps=max_steps, sharding=control.sharding, clock=clock, stepping=control.stepping,
        error_norm=control.error_norm, pcoeff=control.pcoeff, icoeff=control.icoeff,
        rescale=control.rescale,
        progress_meter=(diffrax.NoProgressMeter() if control.progress_meter is None
                        else control.progress_meter))
    check_solved(info.pop("failure"), "the likelihood ODE", max_steps, fix)
    return logp, info


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

    Raises:
        ConfigError: `dim` not a positive integer, `levels` below 2, or lo, hi not finite with
        hi > lo.
    """
    check_count("the number of dimensions dim", dim)
    check_number("the data range's lo", lo)
    check_number("the data range's hi", hi)
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
    check_choice("dequantisation bound", bound, DEQUANT_BOUNDS)
    logp = jnp.asarray(logp)
    if bound == "mean":
        return logp.mean(0)
    return jax.scipy.special.logsumexp(logp, axis=0) - math.log(logp.shape[0])
