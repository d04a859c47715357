"""The sampler registry and `sample`, for any score function `score(t, x)` of ONE sample.

`sample(score, sde, shape, *, key, num, method, steps, **options)` returns `(samples, info)`,
`samples` of shape `(num, *shape)` and `info["nfe"]` the number of score evaluations per sample
(every call counts, including a final denoising step).

Every method is one `Sampler` entry of `SAMPLERS`, and every implementation takes one signature,

    fn(bscore, sde, x1, key, run, **options) -> (x0, info)

with `bscore(t, x)` the score on a batch x (num, ...) at one time t, `x1` the prior draw at t1,
`run` the settings every method takes (`SamplerSettings`: steps, t_end, denoise, clip, the
`progress(done, total)` hook traced code may call, return_path), and `options` the method's own
keywords (their
names and defaults are read off `fn`'s signature). The entry declares the rest:

    method  default_steps  nfe(steps)                denoises    order
    em      1000           steps + denoise           yes         1 (weak)
    ode     adaptive       measured (Tsit5/Dopri5);  no          1 with solver="euler"
                           fixed: steps * k + denoise              (2 for "heun"/"midpoint")
    pc      1000           steps (1 + corrector_steps) + denoise   yes    1 (weak; see below)
                           (corrector_steps: VE 1, VP/SubVP 0 by default)
    ddpm    1000           steps                     always      1 (weak)
    ddim    50             steps                     always      1
    heun    18             2 steps - 1               always      2
    dpm2m   20             steps                     always      2
    dpm3m   20             steps                     always      2 (third-order steps after a
                                                                 first-order first step)
    unipc   20             steps (corrector free)    always      3
    ipndm   10             steps                     always      2 (fourth-order Adams-Bashforth
                                                                 weights on a graded grid)

"always": the method's last step lands on Tweedie's x_0 = E[x_0 | x_t_end] by construction, so
`denoise=True` is a no-op for it and `denoise=False` a ConfigError. `order` is the convergence order
in the step size on a smooth problem (weak order for the stochastic methods), checked for every
entry by tests/test_samplers.py. pc's corrector takes Langevin steps whose size is set by `snr`,
not by the time step, so it adds a bias O(snr^2) in the variance that does not shrink with the step:
order 1 holds while the discretisation error dominates it. That is why pc runs no corrector on
VP and SubVP unless asked (`corrector_steps`), as Song et al.'s VP/SubVP configs do (see `_pc`).

Methods:
- "em":   reverse-time SDE dx = [f - g^2 score] dt + g dw_bar, Euler-Maruyama through diffrax
          (Song et al. 2021, eq. 6), then a Tweedie denoising step E[x_0 | x_t].
- "ode":  probability-flow ODE dx/dt = f - g^2 score / 2 through diffrax: adaptive Tsit5 with a
          PID controller by default (the batch shares its steps, each sample's error controlled),
          or a fixed-step Euler/Heun/midpoint solver with `steps`.
- "pc":   predictor-corrector: Langevin corrector steps at a signal-to-noise ratio `snr`, then an
          Euler-Maruyama predictor step (Song et al. 2021, Algorithms 2-3); by default one
          corrector step on VE and none on VP/SubVP.
- "ddpm": ancestral sampling on the discrete chain of the SDE's own marginals (Ho et al. 2020).
- "ddim": deterministic (eta = 0) or stochastic DDIM (Song, Meng & Ermon 2021).
- "heun", "dpm2m", "dpm3m", "unipc", "ipndm": few-step probability-flow ODE solvers in
          sigma = std/scale (EDM's Heun with optional churn; DPM-Solver++(2M) and (3M); UniPC, a
          third-order multistep predictor with a corrector that re-uses the next evaluation;
          iPNDM, Adams-Bashforth steps of up to fourth order), ending on x_0
          (see `sgm.sigma_solvers`).

"ddpm" and "ddim" use the Gaussian kernel x_t = a(t) x_0 + s(t) eps of the SDE on a time grid
1 = t_N > ... > t_1 = t_end > t_0 = 0: with alpha = a_i / a_{i-1} and v = s_i^2 - alpha^2 s_{i-1}^2,
the posterior q(x_{i-1} | x_i, x_0) is Gaussian with mean (alpha s_{i-1}^2 x_i + a_{i-1} v x_0)
/ s_i^2 and variance v s_{i-1}^2 / s_i^2. For VP this is exactly DDPM's chain (a^2 = alpha_bar);
for VE it is Song et al.'s ancestral sampler for SMLD; for SubVP the same formula holds.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .errors import ConfigError, SGMError, check_choice
from .ode_solvers import (STEPPING, check_count, check_number, check_solved, check_tolerances,
                          failure, largest_point_rms, ode_solver)
from .parallel import constrain
from .score import tweedie_x0
from .sampler_settings import SamplerSettings
from .sigma_solvers import dpm_solver_2m, dpm_solver_3m, edm_heun, ipndm, unipc
from .sde import AbstractBetaSDE, AbstractSDE

ODE_FIXED_STEPS = 100  # steps of a fixed-step ODE solver when `steps` is not given
#: the arguments every implementation takes before its options: fn(bscore, sde, x1, key, run, ...)
COMMON = ("bscore", "sde", "x1", "key", "run")


class BatchedScore(eqx.Module):
    """`score(t, x)` of ONE sample applied to a batch x (N, ...) at one time t.

    `cond` is a dict of per-sample arrays (leading axis N) passed as `score(t, x_i, **cond_i)`, or
    None. The adaptive ODE with stepping="point" solves each sample on its own and reads
    `score`/`cond` directly.
    """

    score: Callable
    cond: dict | None

    def __call__(self, t, x):
        if not self.cond:
            return jax.vmap(self.score, in_axes=(None, 0))(t, x)
        return jax.vmap(lambda xi, ci: self.score(t, xi, **ci))(x, self.cond)


def check_score(score: Callable, shape: tuple[int, ...], cond: dict | None, batch: int,
                hint: str = "") -> None:
    """A ConfigError unless `score(t, x, **cond_i)` maps ONE sample x of `shape` to an array of that
    shape, and every array of `cond` has a leading axis of `batch` (one condition per sample).
    `hint` ends the sentence of a shape error (where the caller's samples come from).

    Only traces the score on one abstract sample (`jax.eval_shape`): nothing is compiled or run.
    `sample` and `log_likelihood` call it inside their jitted entry points, so it runs once per
    compilation, not on every call.
    """
    cond = cond or {}
    for name, value in cond.items():
        for leaf in jax.tree_util.tree_leaves(value):
            if np.shape(leaf)[:1] != (batch,):
                raise ConfigError(f"cond[{name!r}] has shape {np.shape(leaf)}, but its leading "
                                  f"axis must hold one condition for each of the {batch} samples.")

    def one(leaf):
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        return jax.ShapeDtypeStruct(np.shape(leaf)[1:], jax.dtypes.canonicalize_dtype(dtype))

    dtype = jnp.result_type(float)
    spec = jax.ShapeDtypeStruct(tuple(shape), dtype)
    cond_one = jax.tree_util.tree_map(one, cond)
    with_cond = f" with conditions {', '.join(cond)}" if cond else ""
    try:
        out = jax.eval_shape(lambda t, x, c: score(t, x, **c), jax.ShapeDtypeStruct((), dtype),
                             spec, cond_one)
    except SGMError:
        raise
    except Exception as err:  # the score cannot take a sample of this shape
        reason = (str(err).strip().splitlines() or [""])[0].rstrip(".") or "no message"
        tail = hint or ("; it must take one sample of that shape" +
                        (" and its conditions" if cond else ""))
        raise ConfigError(f"the score cannot be evaluated on one sample of shape {tuple(shape)}"
                          f"{with_cond} ({type(err).__name__}: {reason}){tail}.") from err
    if getattr(out, "shape", None) != tuple(shape):
        got = out.shape if hasattr(out, "shape") else type(out).__name__
        raise ConfigError(f"the score maps one sample of shape {tuple(shape)}{with_cond} to "
                          f"{got}; it must return an array of the sample's shape{hint}.")


def progress_hook(progress: Callable[[float, int], None] | None):
    """The user's `progress(done, total)` as a hook that traced code calls: a host callback, or
    nothing at all when `progress` is None. Used by every sampler (here and in `sgm.sigma_solvers`)."""
    if progress is None:
        return lambda done, total: None

    def hook(done, total):
        jax.debug.callback(lambda d: progress(float(d), total), done, ordered=False)

    return hook


def _finish(bscore, sde, t, x, denoise, clip):
    """Optional Tweedie step E[x_0 | x_t] at time t (one more score evaluation), then clipping."""
    if denoise:
        x = tweedie_x0(bscore, sde, t, x)
    return x if clip is None else jnp.clip(x, *clip)


def _em(bscore, sde, x1, key, run: SamplerSettings):
    """Euler-Maruyama on the reverse-time SDE from t1 to t_end (`steps` uniform steps)."""
    steps, t_end, denoise, clip, progress, return_path = run
    span = sde.t1 - t_end

    # Reverse time tau = t1 - t so that diffrax integrates forwards: dx = -(f - g^2 s) dtau + g dW.
    def drift(tau, x, args):
        progress(tau / span * steps, steps)
        return -sde.reverse_drift(bscore, sde.t1 - tau, x)

    def diffusion(tau, x, args):
        return lx.DiagonalLinearOperator(jnp.full_like(x, sde.diffusion(sde.t1 - tau)))

    bm = diffrax.UnsafeBrownianPath(shape=x1.shape, key=key)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    sol = diffrax.diffeqsolve(
        terms, diffrax.Euler(), 0.0, span, None, x1,
        stepsize_controller=diffrax.StepTo(ts=jnp.linspace(0.0, span, steps + 1)),
        saveat=diffrax.SaveAt(t1=not return_path, steps=return_path),
        adjoint=diffrax.ForwardMode(), max_steps=steps, throw=False,  # fixed steps: cannot fail
    )
    x = _finish(bscore, sde, t_end, sol.ys[-1], denoise, clip)
    info = {}
    if return_path:
        info["path"] = jnp.concatenate([x1[None], sol.ys])
        info["path_t"] = sde.t1 - jnp.concatenate([jnp.zeros(1), sol.ts])
    return x, info


def _ode(bscore, sde, x1, key, run: SamplerSettings, *,
         solver="tsit5", rtol=1e-5, atol=1e-5, max_steps=16384, stepping="batch"):
    """The probability-flow ODE from t1 to t_end: adaptive (PID) or `steps` fixed steps.

    Adaptive `stepping`: "batch" (the default) solves the whole batch as one ODE with shared steps,
    a step accepted only when every sample's own RMS error meets rtol/atol
    (`sgm.ode_solvers.largest_point_rms`); "point" gives every sample its own solve (vmapped, so
    the batch still runs to its slowest sample, at that sample's steps for every sample).
    """
    steps, t_end, denoise, clip, progress, return_path = run
    make, adaptive, per_step = ode_solver(solver)
    check_tolerances(rtol, atol, max_steps, "the ode sampler")
    check_choice("ode stepping", stepping, STEPPING)
    t1 = sde.t1
    info = {}

    if adaptive:
        saveat = diffrax.SaveAt(ts=jnp.linspace(t1, t_end, 65)) if return_path else diffrax.SaveAt(t1=True)
        controller = partial(diffrax.PIDController, rtol=rtol, atol=atol)
        if stepping == "batch":
            term = diffrax.ODETerm(lambda t, x, args: sde.ode_drift(bscore, t, x))
            sol = diffrax.diffeqsolve(
                term, make(), t1, t_end, None, x1, saveat=saveat, max_steps=max_steps,
                stepsize_controller=controller(norm=largest_point_rms), throw=False,
            )
            ys, n_steps, failed = sol.ys, sol.stats["num_steps"], failure(sol)
        else:
            def solve_one(x, c):
                score = partial(bscore.score, **c)
                term = diffrax.ODETerm(lambda t, y, args: sde.ode_drift(score, t, y))
                sol = diffrax.diffeqsolve(term, make(), t1, t_end, None, x, saveat=saveat,
                                          stepsize_controller=controller(), max_steps=max_steps,
                                          throw=False)
                return sol.ys, sol.stats["num_steps"], failure(sol)

            ys, n_steps, failed = jax.vmap(solve_one)(x1, bscore.cond or {})
            ys, failed = jnp.moveaxis(ys, 0, 1), jnp.max(failed)
        path_t = jnp.linspace(t1, t_end, 65)
        # Tsit5/Dopri5: one evaluation to start (first-same-as-last) and 6 new ones per attempted
        # step, accepted or rejected; tests count the calls. A vmapped batch runs to its slowest
        # sample.
        info["nfe"] = jnp.max(n_steps) * per_step + 1 + int(denoise)
        info["failure"] = failed  # checked by `sample` (`check_solved`), outside the compiled code
    else:
        steps = ODE_FIXED_STEPS if steps is None else steps
        path_t = jnp.linspace(t1, t_end, steps + 1)

        def bfield(t, x, args):
            progress((t1 - t) / (t1 - t_end) * steps, steps)
            return sde.ode_drift(bscore, t, x)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(bfield), make(), t1, t_end, None, x1,
            stepsize_controller=diffrax.StepTo(ts=path_t), max_steps=steps,
            saveat=diffrax.SaveAt(t1=not return_path, steps=return_path), throw=False,
        )
        ys = jnp.concatenate([x1[None], sol.ys]) if return_path else sol.ys
    x = _finish(bscore, sde, t_end, ys[-1], denoise, clip)
    if return_path:
        info["path"], info["path_t"] = ys, path_t
    return x, info


def _ode_nfe(steps, denoise, solver="tsit5", **_):
    """Score calls of the fixed-step ODE: k per step (euler 1, heun/midpoint 2), + 1 for `denoise`;
    None for the adaptive solvers, whose count `_ode` measures."""
    _, adaptive, per_step = ode_solver(solver)
    if adaptive:
        return None
    return (ODE_FIXED_STEPS if steps is None else steps) * per_step + int(denoise)


def pc_corrector_steps(sde: AbstractSDE, corrector_steps: int | None) -> int:
    """pc's Langevin steps per step; None is Song et al.'s choice per SDE: one on VE, none on VP
    and SubVP (their VP/SubVP configs run the predictor alone)."""
    if corrector_steps is not None:
        return corrector_steps
    if sde is None:
        raise TypeError("pc's default corrector_steps depends on the SDE: pass sde=")
    return 0 if isinstance(sde, AbstractBetaSDE) else 1


def _pc(bscore, sde, x1, key, run: SamplerSettings, *,
        snr=0.16, corrector_steps=None):
    """Euler-Maruyama predictor with `corrector_steps` Langevin corrector steps per step.

    The corrector at time t is x <- x + eps score + sqrt(2 eps) z, z ~ N(0, I), with
    eps = 2 alpha (snr |z| / |score|)^2 (norms averaged over the batch): Song et al.'s
    Algorithm 5. Its step is set by `snr`, not by the time step: on a Gaussian of variance v,
    eps ~ 2 snr^2 v, and each unadjusted Langevin step inflates the variance by ~eps^2 / v, a
    bias that does not shrink with more steps. So the default `corrector_steps=None` follows
    Song et al.'s configs: no corrector on VP and SubVP (pc is then em's algorithm), one step at
    `snr` on VE. Ask for `corrector_steps=1` on VP, or a smaller `snr`, where an imperfect
    learned score gains more from the Langevin steps than the bias costs; with the exact score
    it only costs. See `docs/results/defaults.md` for the measurements behind this default.
    """
    steps, t_end, denoise, clip, progress, return_path = run
    corrector_steps = pc_corrector_steps(sde, corrector_steps)
    check_number("pc's snr", snr, positive=True)
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ConfigError(f"pc needs a non-negative integer corrector_steps, got "
                          f"{corrector_steps!r}")
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
        progress(i + 1, steps)
        return x, (x if return_path else None)

    keys = jax.random.split(key, steps)
    x, path = jax.lax.scan(body, x1, (jnp.arange(steps), ts[:-1], ts[1:], keys))
    x = _finish(bscore, sde, t_end, x, denoise, clip)
    info = {}
    if return_path:
        info["path"], info["path_t"] = jnp.concatenate([x1[None], path]), ts
    return x, info


def _discrete(bscore, sde, x1, key, run: SamplerSettings, update):
    """The chain t1 = t_N > ... > t_1 = t_end > t_0 = 0 shared by ddpm and ddim.

    Each step predicts x_0 by Tweedie's formula (clipped to `clip`) and hands it to
    `update(x, x0, a, s, a_prev, s_prev, t_prev, z)`, z ~ N(0, I); the step to t_0 = 0 (a = 1,
    s = 0) lands on the x_0 prediction at t_end.
    """
    steps, t_end, denoise, clip, progress, return_path = run
    ts = jnp.concatenate([jnp.linspace(sde.t1, t_end, steps), jnp.zeros(1)])

    def body(x, inp):
        i, t, t_prev, k = inp
        a, s = sde.scale(t), sde.std(t)
        a_p = jnp.where(t_prev > 0, sde.scale(t_prev), 1.0)
        s_p = jnp.where(t_prev > 0, sde.std(t_prev), 0.0)
        x0 = tweedie_x0(bscore, sde, t, x)
        if clip is not None:
            x0 = jnp.clip(x0, *clip)
        x = update(x, x0, a, s, a_p, s_p, t_prev, jax.random.normal(k, x.shape))
        progress(i + 1, steps)
        return x, (x if return_path else None)

    keys = jax.random.split(key, steps)
    x, path = jax.lax.scan(body, x1, (jnp.arange(steps), ts[:-1], ts[1:], keys))
    info = {}
    if return_path:
        info["path"], info["path_t"] = jnp.concatenate([x1[None], path]), ts
    return x, info


def _ddpm(bscore, sde, x1, key, run: SamplerSettings, *,
          variance="posterior"):
    """Ancestral sampling: x_{i-1} ~ q(x_{i-1} | x_i, x_0-hat) with the posterior variance
    v s_{i-1}^2 / s_i^2 ("posterior", Ho et al.'s sigma^2 = beta-tilde) or v ("forward", beta)."""
    if variance not in ("posterior", "forward"):
        raise ConfigError(f"unknown ancestral variance {variance!r}; expected 'posterior' or 'forward'")

    def update(x, x0, a, s, a_p, s_p, t_prev, z):
        alpha = a / a_p
        v = s**2 - alpha**2 * s_p**2
        mean = (alpha * s_p**2 * x + a_p * v * x0) / s**2
        var = v * s_p**2 / s**2 if variance == "posterior" else jnp.where(t_prev > 0, v, 0.0)
        return mean + jnp.sqrt(var) * z

    return _discrete(bscore, sde, x1, key, run, update)


def _ddim(bscore, sde, x1, key, run: SamplerSettings, *, eta=0.0):
    """DDIM: x_{i-1} = a_{i-1} x_0-hat + sqrt(s_{i-1}^2 - c^2) eps-hat + c z with
    c^2 = eta^2 v s_{i-1}^2 / s_i^2 (eta = 0 deterministic, eta = 1 the ddpm posterior noise)."""
    check_number("ddim's eta", eta)
    if not eta >= 0:
        raise ConfigError(f"ddim needs eta >= 0, got {eta}")

    def update(x, x0, a, s, a_p, s_p, t_prev, z):
        eps = (x - a * x0) / s
        alpha = a / a_p
        v = s**2 - alpha**2 * s_p**2
        c2 = eta**2 * (v * s_p**2 / s**2)
        return a_p * x0 + jnp.sqrt(jnp.maximum(s_p**2 - c2, 0.0)) * eps + jnp.sqrt(c2) * z

    return _discrete(bscore, sde, x1, key, run, update)


class Sampler(eqx.Module):
    """One entry of the sampler registry: an implementation and what it declares about itself.

    Arguments:
        fn: `fn(bscore, sde, x1, key, run, **options) -> (x0, info)`, `run` the common
            `SamplerSettings`; its own keyword-only arguments are its options.
        default_steps: steps when `sample` is given none (None: adaptive, the ODE).
        count: `count(steps, denoise, *, sde, **options) -> int | None`, the score evaluations
            per sample (None where the method measures them itself: the adaptive ODE); `sde` may
            be None where the count does not depend on it; see `nfe`.
        denoises: whether it ends with a Tweedie denoising step by default.
        ends_on_x0: its last step is Tweedie's x_0 by construction (`denoise` cannot be turned off).
        order: convergence order in the step size on a smooth problem (weak order if stochastic).

    `options` (names) and `defaults` (name -> default) are read off `fn`'s signature.
    """

    fn: Callable = eqx.field(static=True)
    default_steps: int | None = eqx.field(static=True)
    count: Callable[..., int | None] = eqx.field(static=True)
    denoises: bool = eqx.field(static=True)
    ends_on_x0: bool = eqx.field(static=True)
    order: int = eqx.field(static=True)
    options: tuple[str, ...] = eqx.field(static=True)

    def __init__(self, fn, *, default_steps, count, denoises, order, ends_on_x0=False):
        params = inspect.signature(fn).parameters
        if tuple(params)[:len(COMMON)] != COMMON:
            raise TypeError(f"sampler {fn.__name__} must take {', '.join(COMMON)} first, then "
                            f"its options as keywords")
        self.fn, self.default_steps, self.count = fn, default_steps, count
        self.denoises, self.ends_on_x0, self.order = denoises, ends_on_x0, order
        self.options = tuple(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY)

    @property
    def defaults(self) -> dict:
        """Each option's default value."""
        params = inspect.signature(self.fn).parameters
        return {n: params[n].default for n in self.options}

    def nfe(self, steps: int | None = None, *, denoise: bool | None = None,
            sde: AbstractSDE | None = None, **options) -> int | None:
        """Score evaluations per sample for these settings (defaults filled in, as `sample` does);
        pc's default corrector depends on `sde`."""
        steps = self.default_steps if steps is None else steps
        denoise = self.denoises if denoise is None else denoise
        return self.count(steps, bool(denoise), sde=sde, **dict(self.defaults, **options))


SAMPLERS: dict[str, Sampler] = {
    "em": Sampler(_em, default_steps=1000, count=lambda steps, denoise, **_: steps + denoise,
                  denoises=True, order=1),
    "ode": Sampler(_ode, default_steps=None, count=_ode_nfe, denoises=False, order=1),
    "pc": Sampler(_pc, default_steps=1000, denoises=True, order=1,
                  count=lambda steps, denoise, corrector_steps, sde=None, **_:
                  steps * (1 + pc_corrector_steps(sde, corrector_steps)) + denoise),
    "ddpm": Sampler(_ddpm, default_steps=1000, count=lambda steps, denoise, **_: steps,
                    denoises=True, ends_on_x0=True, order=1),
    "ddim": Sampler(_ddim, default_steps=50, count=lambda steps, denoise, **_: steps,
                    denoises=True, ends_on_x0=True, order=1),
    "heun": Sampler(edm_heun, default_steps=18, count=lambda steps, denoise, **_: 2 * steps - 1,
                    denoises=True, ends_on_x0=True, order=2),
    "dpm2m": Sampler(dpm_solver_2m, default_steps=20, count=lambda steps, denoise, **_: steps,
                     denoises=True, ends_on_x0=True, order=2),
    "dpm3m": Sampler(dpm_solver_3m, default_steps=20, count=lambda steps, denoise, **_: steps,
                     denoises=True, ends_on_x0=True, order=2),
    "unipc": Sampler(unipc, default_steps=20, count=lambda steps, denoise, **_: steps,
                     denoises=True, ends_on_x0=True, order=3),
    "ipndm": Sampler(ipndm, default_steps=10, count=lambda steps, denoise, **_: steps,
                     denoises=True, ends_on_x0=True, order=2),
}
METHODS = tuple(SAMPLERS)


def _describe(entry: Sampler) -> str:
    return ", ".join(f"{n}={v!r}" for n, v in entry.defaults.items()) or "none"


@eqx.filter_jit
def _run(score, sde, shape, key, num, method, settings, cond, sharding, options):
    """`sample` once its arguments are checked and `settings` resolved, but for the progress hook,
    made here (inside the compiled function) so that equal settings reuse one compilation."""
    entry = SAMPLERS[method]
    check_score(score, shape, cond, num)  # when tracing: once per compilation
    k_prior, k_run = jax.random.split(key)
    x1 = sde.prior_sample(k_prior, (num, *shape))
    x1, cond = constrain((x1, cond), sharding)  # split the batch; jit partitions everything after
    run = settings._replace(progress=progress_hook(settings.progress))
    x, info = entry.fn(BatchedScore(score, cond), sde, x1, k_run, run, **options)
    nfe = entry.nfe(settings.steps, denoise=settings.denoise, sde=sde, **options)
    return x, {"nfe": nfe, **info}  # a measured count (adaptive ODE) replaces the declared None


def _sample_shape(shape) -> tuple[int, ...]:
    """The shape of one sample as a tuple of positive integers, or a ConfigError."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                               and d > 0 for d in dims):
        raise ConfigError(f"the sample shape must be a tuple of positive integers, got {shape!r}")
    return tuple(int(d) for d in dims)


def _clip_range(clip) -> tuple[float, float]:
    """`clip` as a (lo, hi) pair of finite numbers with lo < hi, or a ConfigError."""
    try:
        lo, hi = (float(c) for c in clip)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"clip must be a data range (lo, hi) of finite numbers with lo < hi, "
                          f"got {clip!r}")
    return lo, hi


def sample(score: Callable, sde: AbstractSDE, shape: tuple[int, ...], *, key, num: int,
           method: str = "em", steps: int | None = None, settings: SamplerSettings | None = None,
           cond: dict | None = None, sharding=None, **options):
    """Draws `num` samples of shape `shape` by integrating from the prior at t1 down to `t_end`.

    x_1 ~ N(0, prior_std^2 I), then the method's reverse-time solve (see the module docstring and
    `SAMPLERS` for the methods, their defaults, NFE and order). The settings every method shares
    (where it stops, the final denoising, clipping, a progress hook, the path) are one
    `SamplerSettings`: `sample(score, sde, shape, key=key, num=n, method="ddim", steps=50,
    settings=SamplerSettings(t_end=1e-4, clip=(-1.0, 1.0)))`.

    Arguments:
        score: `score(t, x)` of ONE sample (network wrapper, guided score or closed form).
        sde: the forward SDE.
        shape: shape of one sample.
        key: PRNG key (prior draw and the sampler's noise).
        num: number of samples.
        method: a key of `SAMPLERS`: "em", "ode", "pc", "ddpm", "ddim", "heun", "dpm2m", "dpm3m"
            "unipc" or "ipndm".
        steps: number of steps (default `SAMPLERS[method].default_steps`: em/pc/ddpm 1000, ddim 50,
            heun 18, dpm2m/dpm3m/unipc 20, ipndm 10; "ode" is adaptive unless a fixed-step
            `solver` is chosen, 100 steps then); the same as `settings.steps` (give either, or
            both equal).
        settings: the shared settings (`SamplerSettings`; None: every default), each field None
            for its default:
            t_end, the final time (default `sde.sampling_t0`: 1e-3 for VP/SubVP, 1e-5 for VE);
            denoise, end with a Tweedie step E[x_0 | x_t_end] (default
            `SAMPLERS[method].denoises`: on for em/pc, off for ode; ddpm, ddim, heun, dpm2m,
            dpm3m, unipc and ipndm always end on x_0: True is a no-op for them and False a
            ConfigError);
            clip, a (lo, hi) data range to clip predicted x_0 (ddpm, ddim and the few-step
            solvers) and the final samples;
            progress, a hook `progress(steps_done, total)` called from fixed-step methods;
            return_path, also return `info["path"]` (steps, num, *shape) and `info["path_t"]`.
        cond: optional dict of per-sample conditioning arrays (leading axis `num`), passed to the
            score as `score(t, x, **cond_i)`; constant conditioning is better closed over.
        sharding: optional `jax.sharding.Sharding` of the batch axis (e.g.
            `sgm.parallel.batch_sharding(mesh)`): samples are then drawn on all devices at once.
        options: the method's own options (`SAMPLERS[method].defaults`) — ode: solver ("tsit5",
            "dopri5", "euler", "heun", "midpoint"), rtol, atol, max_steps, stepping ("batch",
            "point"); pc: snr, corrector_steps (None: 1 on VE, 0 on VP/SubVP); ddim: eta; ddpm:
            variance ("posterior" or "forward"); heun: grid ("karras", "logsnr", "time"), rho,
            s_churn, s_tmin, s_tmax, s_noise; dpm2m, dpm3m: grid, rho; unipc: grid, rho, order
            (1-3), variant ("bh1", "bh2"); ipndm: grid, rho, order (1-4).

    Returns:
        `(samples, info)` with samples (num, *shape) and info["nfe"] score evaluations per sample.

    Raises:
        ConfigError, before any solve: an unknown method or option; `settings` that is not a
        `SamplerSettings`; `steps` and `settings.steps` both given and different; `num`, `steps`
        or a dimension of `shape` that is not a positive integer; `t_end` outside (0, t1);
        `clip` that is not a finite range lo < hi; an option out of its range (ode: rtol and atol
        not positive and finite, max_steps not a positive integer; pc: snr not positive and
        finite; ddim: eta not finite and non-negative; ...); a score that does not map one sample
        of `shape` (with its conditions) to an array of that shape, or `cond` arrays without one
        condition per sample.
    """
    check_choice("sampling method", method, METHODS)
    entry = SAMPLERS[method]
    unknown = [name for name in options if name not in entry.options]
    if unknown:
        raise ConfigError(f"sampling method {method!r} does not take {', '.join(map(repr, unknown))}; "
                          f"its options are: {_describe(entry)}.")
    run = _resolve(SamplerSettings() if settings is None else settings, steps, entry, method, sde)
    num = check_count("the number of samples num", num)
    shape = _sample_shape(shape)
    opts = dict(entry.defaults, **options)
    x, info = _run(score, sde, shape, key, num, method, run, cond, sharding, options)
    if "failure" in info:  # an adaptive solve: it may have run out of steps
        fix = (f"it cannot meet rtol={opts['rtol']:g}, atol={opts['atol']:g} in that many steps: "
               f"loosen them or raise max_steps (the sampler's options).")
        check_solved(info.pop("failure"), f"the {method} sampler", opts["max_steps"], fix)
    return x, info


def _resolve(settings: SamplerSettings, steps: int | None, entry: Sampler, method: str,
             sde: AbstractSDE) -> SamplerSettings:
    """The user's `settings` (and `sample`'s own `steps`) checked, with every default filled in:
    what the implementations receive, but for the progress hook (`_run` makes it from
    `progress`, the user's function or None)."""
    if not isinstance(settings, SamplerSettings):
        raise ConfigError(f"settings must be an sgm.SamplerSettings(...), got {settings!r}")
    if steps is not None and settings.steps is not None and steps != settings.steps:
        raise ConfigError(f"steps={steps!r} and settings.steps={settings.steps!r} differ: give "
                          f"the number of steps once.")
    steps = settings.steps if steps is None else steps
    steps = entry.default_steps if steps is None else steps
    if steps is not None:
        steps = check_count("sampling steps", steps)
    clip = None if settings.clip is None else _clip_range(settings.clip)
    t_end = sde.sampling_t0 if settings.t_end is None else settings.t_end
    if not 0 < t_end < sde.t1:
        raise ConfigError(f"sampling end time t_end must lie in (0, {sde.t1}), got {t_end}")
    denoise = settings.denoise
    if denoise is None:
        denoise = entry.denoises
    elif entry.ends_on_x0 and not denoise:
        raise ConfigError(f"sampling method {method!r} always ends on Tweedie's x_0 at t_end, so "
                          f"denoise=False does not apply to it.")
    return SamplerSettings(steps=steps, t_end=t_end, denoise=bool(denoise), clip=clip,
                           progress=settings.progress, return_path=settings.return_path)
