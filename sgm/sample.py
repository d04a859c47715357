"""Samplers for any score function `score(t, x)` of ONE sample, built from diffrax pieces.

`sample(score, sde, shape, *, key, num, method, steps, **options)` returns `(samples, info)`,
`samples` of shape `(num, *shape)` and `info["nfe"]` the number of score evaluations per sample
(every call counts, including a final denoising step).

Methods:
- "em":   reverse-time SDE dx = [f - g^2 score] dt + g dw_bar, Euler-Maruyama through diffrax
          (Song et al. 2021, eq. 6), then a Tweedie denoising step E[x_0 | x_t].
- "ode":  probability-flow ODE dx/dt = f - g^2 score / 2 through diffrax: adaptive Tsit5 with a
          PID controller by default, or a fixed-step Euler/Heun/midpoint solver with `steps`.
- "pc":   predictor-corrector: Langevin corrector steps at a signal-to-noise ratio `snr`, then an
          Euler-Maruyama predictor step (Song et al. 2021, Algorithms 2-3).
- "ddpm": ancestral sampling on the discrete chain of the SDE's own marginals (Ho et al. 2020).
- "ddim": deterministic (eta = 0) or stochastic DDIM (Song, Meng & Ermon 2021).
- "heun", "dpm2m": few-step probability-flow ODE solvers in sigma = std/scale (EDM's Heun with
          optional churn; DPM-Solver++(2M)), ending on x_0 (see `sgm.fast`).

"ddpm" and "ddim" use the Gaussian kernel x_t = a(t) x_0 + s(t) eps of the SDE on a time grid
1 = t_N > ... > t_1 = t_end > t_0 = 0: with alpha = a_i / a_{i-1} and v = s_i^2 - alpha^2 s_{i-1}^2,
the posterior q(x_{i-1} | x_i, x_0) is Gaussian with mean (alpha s_{i-1}^2 x_i + a_{i-1} v x_0)
/ s_i^2 and variance v s_{i-1}^2 / s_i^2. For VP this is exactly DDPM's chain (a^2 = alpha_bar);
for VE it is Song et al.'s ancestral sampler for SMLD; for SubVP the same formula holds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .errors import ConfigError
from .fast import dpm_solver_2m, edm_heun
from .sde import AbstractSDE
from .score import tweedie_x0

METHODS = ("em", "ode", "pc", "ddpm", "ddim", "heun", "dpm2m")
ODE_SOLVERS = {
    # name: (constructor, adaptive, new vector-field evaluations per step)
    "tsit5": (diffrax.Tsit5, True, 6),
    "dopri5": (diffrax.Dopri5, True, 6),
    "euler": (diffrax.Euler, False, 1),
    "heun": (diffrax.Heun, False, 2),
    "midpoint": (diffrax.Midpoint, False, 2),
}


def _batched(score, cond):
    """score(t, x) on a batch x (N, ...) at one time t; `cond` a dict of per-sample arrays or None."""
    if not cond:
        return jax.vmap(score, in_axes=(None, 0))
    return lambda t, x: jax.vmap(lambda xi, ci: score(t, xi, **ci))(x, cond)


def _progress_hook(progress, done, total):
    if progress is not None:
        jax.debug.callback(lambda d: progress(float(d), total), done, ordered=False)


def _finish(bscore, sde, t, x, denoise, clip):
    """Optional Tweedie step at time t (one more score evaluation) and clipping to the data range."""
    if denoise:
        x = tweedie_x0(bscore, sde, t, x)
    if clip is not None:
        x = jnp.clip(x, *clip)
    return x, int(denoise)


def _em(bscore, sde, x1, key, *, steps, t_end, denoise, clip, progress, return_path):
    span = sde.t1 - t_end

    # Reverse time tau = t1 - t so that diffrax integrates forwards: dx = -(f - g^2 s) dtau + g dW.
    def drift(tau, x, args):
        t = sde.t1 - tau
        _progress_hook(progress, tau / span * steps, steps)
        return -(sde.drift(t, x) - sde.diffusion(t) ** 2 * bscore(t, x))

    def diffusion(tau, x, args):
        return lx.DiagonalLinearOperator(jnp.full_like(x, sde.diffusion(sde.t1 - tau)))

    bm = diffrax.UnsafeBrownianPath(shape=x1.shape, key=key)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    sol = diffrax.diffeqsolve(
        terms, diffrax.Euler(), 0.0, span, None, x1,
        stepsize_controller=diffrax.StepTo(ts=jnp.linspace(0.0, span, steps + 1)),
        saveat=diffrax.SaveAt(t1=not return_path, steps=return_path),
        adjoint=diffrax.ForwardMode(), max_steps=steps,
    )
    x = sol.ys[-1]
    x, extra = _finish(bscore, sde, t_end, x, denoise, clip)
    info = {"nfe": steps + extra}
    if return_path:
        info["path"] = jnp.concatenate([x1[None], sol.ys])
        info["path_t"] = sde.t1 - jnp.concatenate([jnp.zeros(1), sol.ts])
    return x, info


def _ode(bscore, sde, x1, key, *, steps, score, cond, t_end, denoise, clip, progress, return_path,
         solver="tsit5", rtol=1e-5, atol=1e-5, max_steps=16384):
    if solver not in ODE_SOLVERS:
        raise ConfigError(f"unknown ODE solver {solver!r}; expected one of {', '.join(ODE_SOLVERS)}")
    make, adaptive, per_step = ODE_SOLVERS[solver]
    t1 = sde.t1

    if adaptive:
        saveat = diffrax.SaveAt(ts=jnp.linspace(t1, t_end, 65)) if return_path else diffrax.SaveAt(t1=True)

        def solve_one(x, c):
            term = diffrax.ODETerm(lambda t, y, args: sde.ode_drift(partial(score, **c), t, y))
            sol = diffrax.diffeqsolve(
                term, make(), t1, t_end, None, x, saveat=saveat,
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                max_steps=max_steps,
            )
            return sol.ys, sol.stats["num_steps"]

        ys, n_steps = jax.vmap(solve_one)(x1, cond or {})
        ys = jnp.moveaxis(ys, 0, 1)
        # Tsit5/Dopri5: one evaluation to start (first-same-as-last) and 6 new ones per attempted
        # step, accepted or rejected; tests count the calls. The batch runs to its slowest sample.
        nfe = jnp.max(n_steps) * per_step + 1
    else:
        ts = jnp.linspace(t1, t_end, steps + 1)

        def bfield(t, x, args):
            _progress_hook(progress, (t1 - t) / (t1 - t_end) * steps, steps)
            return sde.ode_drift(bscore, t, x)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(bfield), make(), t1, t_end, None, x1,
            stepsize_controller=diffrax.StepTo(ts=ts), max_steps=steps,
            saveat=diffrax.SaveAt(t1=not return_path, steps=return_path),
        )
        ys = sol.ys
        nfe = steps * per_step
    x, extra = _finish(bscore, sde, t_end, ys[-1], denoise, clip)
    info = {"nfe": nfe + extra}
    if return_path:
        info["path"] = ys if adaptive else jnp.concatenate([x1[None], ys])
        info["path_t"] = jnp.linspace(t1, t_end, 65) if adaptive else jnp.linspace(t1, t_end, steps + 1)
    return x, info


def _pc(bscore, sde, x1, key, *, steps, t_end, denoise, clip, progress, return_path,
        snr=0.16, corrector_steps=1):
    ts = jnp.linspace(sde.t1, t_end, steps + 1)
    n = x1.shape[0]

    def mean_norm(v):
        # Batch-averaged norm, as in Song et al.'s reference: per-sample norms make the step size
        # explode in low dimension whenever a sample sits near a mode (score ~ 0).
        return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(v).reshape(n, -1), axis=1)))

    def body(x, inp):
        i, t, t_next, k = inp
        k_c, k_p = jax.random.split(k)
        # Langevin corrector at time t; alpha = (a(t) / a(t_next))^2 is 1 - beta_i of the discrete
        # chain for VP/SubVP and 1 for VE (Song et al. 2021, Algorithm 5).
        alpha = (sde.scale(t) / sde.scale(t_next)) ** 2
        for k_j in jax.random.split(k_c, corrector_steps):
            g = bscore(t, x)
            z = jax.random.normal(k_j, x.shape)
            eps = 2 * alpha * (snr * mean_norm(z) / jnp.maximum(mean_norm(g), 1e-20)) ** 2
            x = x + eps * g + jnp.sqrt(2 * eps) * z
        # Euler-Maruyama predictor from t to t_next (dt < 0).
        dt = t_next - t
        x = x + sde.reverse_drift(bscore, t, x) * dt + sde.diffusion(t) * jnp.sqrt(-dt) * \
            jax.random.normal(k_p, x.shape)
        _progress_hook(progress, i + 1, steps)
        return x, (x if return_path else None)

    keys = jax.random.split(key, steps)
    x, path = jax.lax.scan(body, x1, (jnp.arange(steps), ts[:-1], ts[1:], keys))
    x, extra = _finish(bscore, sde, t_end, x, denoise, clip)
    info = {"nfe": steps * (1 + corrector_steps) + extra}
    if return_path:
        info["path"], info["path_t"] = jnp.concatenate([x1[None], path]), ts
    return x, info


def _discrete(bscore, sde, x1, key, *, steps, t_end, clip, progress, return_path,
              ddim, eta=0.0, variance="posterior"):
    if variance not in ("posterior", "forward"):
        raise ConfigError(f"unknown ancestral variance {variance!r}; expected 'posterior' or 'forward'")
    ts = jnp.concatenate([jnp.linspace(sde.t1, t_end, steps), jnp.zeros(1)])

    def body(x, inp):
        i, t, t_prev, k = inp
        a, s = sde.scale(t), sde.std(t)
        a_p = jnp.where(t_prev > 0, sde.scale(t_prev), 1.0)
        s_p = jnp.where(t_prev > 0, sde.std(t_prev), 0.0)
        x0 = (x + s**2 * bscore(t, x)) / a
        if clip is not None:
            x0 = jnp.clip(x0, *clip)
        eps = (x - a * x0) / s
        alpha = a / a_p
        v = s**2 - alpha**2 * s_p**2
        post_var = v * s_p**2 / s**2
        z = jax.random.normal(k, x.shape)
        if ddim:
            c2 = eta**2 * post_var
            x = a_p * x0 + jnp.sqrt(jnp.maximum(s_p**2 - c2, 0.0)) * eps + jnp.sqrt(c2) * z
        else:
            mean = (alpha * s_p**2 * x + a_p * v * x0) / s**2
            var = post_var if variance == "posterior" else jnp.where(t_prev > 0, v, 0.0)
            x = mean + jnp.sqrt(var) * z
        _progress_hook(progress, i + 1, steps)
        return x, (x if return_path else None)

    keys = jax.random.split(key, steps)
    x, path = jax.lax.scan(body, x1, (jnp.arange(steps), ts[:-1], ts[1:], keys))
    info = {"nfe": steps}
    if return_path:
        info["path"], info["path_t"] = jnp.concatenate([x1[None], path]), ts
    return x, info


_DEFAULT_STEPS = {"em": 1000, "ode": None, "pc": 1000, "ddpm": 1000, "ddim": 50, "heun": 18,
                  "dpm2m": 20}


@eqx.filter_jit
def _run(score, sde, shape, key, num, method, steps, t_end, denoise, clip, progress, return_path,
         cond, sharding, options):
    k_prior, k_run = jax.random.split(key)
    x1 = sde.prior_sample(k_prior, (num, *shape))
    if sharding is not None:  # split the batch over devices; jit partitions everything after it
        x1 = jax.lax.with_sharding_constraint(x1, sharding)
        cond = jax.tree_util.tree_map(lambda c: jax.lax.with_sharding_constraint(c, sharding), cond)
    bscore = _batched(score, cond)
    common = dict(steps=steps, t_end=t_end, denoise=denoise, clip=clip, progress=progress,
                  return_path=return_path)
    if method == "em":
        return _em(bscore, sde, x1, k_run, **common, **options)
    if method == "ode":
        return _ode(bscore, sde, x1, k_run, score=score, cond=cond, **common, **options)
    if method == "pc":
        return _pc(bscore, sde, x1, k_run, **common, **options)
    common.pop("denoise")  # the remaining methods end on x_0 by construction
    if method == "heun":
        return edm_heun(bscore, sde, x1, k_run, **common, **options)
    if method == "dpm2m":
        return dpm_solver_2m(bscore, sde, x1, k_run, **common, **options)
    return _discrete(bscore, sde, x1, k_run, **common, ddim=method == "ddim", **options)


def sample(score: Callable, sde: AbstractSDE, shape: tuple[int, ...], *, key, num: int,
           method: str = "em", steps: int | None = None, t_end: float | None = None,
           denoise: bool | None = None, clip: tuple[float, float] | None = None,
           progress: Callable[[float, int], None] | None = None, return_path: bool = False,
           cond: dict | None = None, sharding=None, **options):
    """Draws `num` samples of shape `shape` by integrating from the prior at t1 down to `t_end`.

    Arguments:
        score: `score(t, x)` of ONE sample (network wrapper, guided score or closed form).
        sde: the forward SDE.
        shape: shape of one sample.
        key: PRNG key (prior draw and the sampler's noise).
        num: number of samples.
        method: "em", "ode", "pc", "ddpm", "ddim", "heun" or "dpm2m".
        steps: number of steps (defaults: em/pc/ddpm 1000, ddim 50; "ode" is adaptive unless a
            fixed-step `solver` is chosen, default 100 steps then); heun 18 (NFE 2 steps - 1), dpm2m
            20 (NFE = steps).
        t_end: final time (default `sde.sampling_t0`: 1e-3 for VP/SubVP, 1e-5 for VE).
        denoise: end with a Tweedie step E[x_0 | x_t_end] (default on for em/pc, off for ode).
        clip: (lo, hi) data range to clip predicted x_0 (ddpm/ddim) and the final samples.
        progress: hook `progress(steps_done, total)` called from fixed-step methods.
        return_path: also return `info["path"]` (steps, num, *shape) and `info["path_t"]`.
        cond: optional dict of per-sample conditioning arrays (leading axis `num`), passed to the
            score as `score(t, x, **cond_i)`; constant conditioning is better closed over.
        sharding: optional `jax.sharding.Sharding` of the batch axis (e.g.
            `sgm.parallel.batch_sharding(mesh)`): samples are then drawn on all devices at once.
        options: method options — ode: solver ("tsit5", "dopri5", "euler", "heun", "midpoint"),
            rtol, atol, max_steps; pc: snr, corrector_steps; ddim: eta; ddpm: variance
            ("posterior" or "forward"); heun: grid ("karras", "logsnr", "time"), rho, s_churn,
            s_tmin, s_tmax, s_noise; dpm2m: grid, rho.

    Returns:
        `(samples, info)` with samples (num, *shape) and info["nfe"] score evaluations per sample.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown sampling method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "ode":
        solver = options.get("solver", "tsit5")
        if solver in ODE_SOLVERS and not ODE_SOLVERS[solver][1] and steps is None:
            steps = 100
    steps = _DEFAULT_STEPS[method] if steps is None else steps
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"sampling steps must be a positive integer, got {steps!r}")
    if num < 1:
        raise ConfigError(f"number of samples must be positive, got {num}")
    t_end = sde.sampling_t0 if t_end is None else t_end
    if not 0 < t_end < sde.t1:
        raise ConfigError(f"sampling end time t_end must lie in (0, {sde.t1}), got {t_end}")
    if denoise is None:
        denoise = method in ("em", "pc")
    return _run(score, sde, tuple(shape), key, num, method, steps, t_end, bool(denoise),
                None if clip is None else tuple(clip), progress, return_path, cond, sharding, options)
