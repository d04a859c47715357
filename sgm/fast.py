"""Few-step samplers on the probability-flow ODE: EDM's Heun and DPM-Solver++(2M).

Both work in the scale-free variables of Karras et al. (2022). For x_t = a(t) x_0 + s(t) eps,

    sigma(t) = s(t) / a(t),   y = x / a(t),   D(y; sigma) = E[x_0 | x_t] = (x + s^2 score) / a,

and the probability-flow ODE dx/dt = f x - g^2 score / 2 of every affine SDE (VP, SubVP, VE, with
any schedule; f = a'/a and g^2 = 2 a^2 sigma sigma') becomes, with score = (D - y) / (a sigma^2),

    dy/dsigma = (y - D(y; sigma)) / sigma                          (EDM, eq. 4 with s = 1).

The SDE enters only through the map t <-> sigma: the score is called at t(sigma), a = scale(t).
The inverse t(sigma) is closed-form for VE and for VP/SubVP with the linear schedule
(sigma^2 = e^B - 1 for VP, sigma = 2 sinh(B/2) for SubVP, B(t) = beta_min t + (beta_max -
beta_min) t^2 / 2) and found by bisection for any other SDE (sigma(t) increases with t).

Both samplers step on a grid sigma_0 = sigma(t1) > ... > sigma_{N-1} = sigma(t_end) and finish with
the step to sigma_N = 0, which lands on D(y; sigma_{N-1}): Tweedie's x_0 at t_end. `steps` is N.
So both end on x_0 and `sample`'s `denoise` does not apply; `clip` clips every D (as ddpm/ddim clip
their x_0 prediction), hence the result too.

Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based Generative Models"
(NeurIPS 2022), Algorithms 1-2. Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models" (2022), Algorithm 2.
"""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp

from .errors import ConfigError
from .sde import VESDE, AbstractSDE, LinearSchedule, SubVPSDE, VPSDE

GRIDS = ("karras", "logsnr", "time")


def noise_level(sde: AbstractSDE, t):
    """sigma(t) = std(t) / scale(t), the noise level of the scale-free variable x / scale(t)."""
    return sde.std(t) / sde.scale(t)


def noise_level_time(sde: AbstractSDE, sigma, *, iters: int = 64):
    """The time t in [0, t1] with noise_level(sde, t) = sigma (elementwise).

    Closed form for VE and for VP/SubVP with the linear schedule; otherwise `iters` bisection steps
    on [0, t1], which reach adjacent floats for any t above ~1e-12.
    """
    sigma = jnp.asarray(sigma, dtype=jnp.result_type(float))
    if isinstance(sde, VESDE):
        # sigma^2 = sigma_min^2 (exp(2 t log(sigma_max / sigma_min)) - 1)
        log_ratio = math.log(sde.sigma_max / sde.sigma_min)
        return jnp.log1p((sigma / sde.sigma_min) ** 2) / (2.0 * log_ratio)
    if isinstance(sde, (VPSDE, SubVPSDE)) and isinstance(sde.schedule, LinearSchedule):
        # VP: sigma^2 = e^B - 1; SubVP: sigma = e^{B/2} - e^{-B/2}. Then solve B(t) = b for t >= 0.
        b = jnp.log1p(sigma**2) if isinstance(sde, VPSDE) else 2.0 * jnp.arcsinh(0.5 * sigma)
        lo, slope = sde.schedule.beta_min, sde.schedule.beta_max - sde.schedule.beta_min
        return 2.0 * b / (lo + jnp.sqrt(lo**2 + 2.0 * slope * b))

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = noise_level(sde, mid) >= sigma
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    bounds = (jnp.zeros_like(sigma), jnp.full_like(sigma, sde.t1))
    lo, hi = jax.lax.fori_loop(0, iters, halve, bounds)
    return 0.5 * (lo + hi)


def sigma_grid(sde: AbstractSDE, t_end, n: int, grid: str = "karras", rho: float = 7.0):
    """n noise levels from sigma(t1) down to sigma(t_end) (the samplers then step to sigma = 0).

    - "karras": sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
      (Karras et al. 2022, eq. 5; rho = 7).
    - "logsnr": uniform in lambda = log(a / s) = -log sigma, i.e. geometric in sigma (Lu et al.).
    - "time":   uniform in t.
    """
    if grid not in GRIDS:
        raise ConfigError(f"unknown noise-level grid {grid!r}; expected one of {', '.join(GRIDS)}")
    if grid == "karras" and not rho > 0:
        raise ConfigError(f"the karras grid needs rho > 0, got {rho}")
    s_max, s_min = noise_level(sde, sde.t1), noise_level(sde, t_end)
    u = jnp.linspace(0.0, 1.0, n)
    if grid == "karras":
        inv = 1.0 / rho
        sig = (s_max**inv + u * (s_min**inv - s_max**inv)) ** rho
    elif grid == "logsnr":
        sig = jnp.exp(jnp.log(s_max) + u * (jnp.log(s_min) - jnp.log(s_max)))
    else:
        sig = noise_level(sde, sde.t1 + u * (t_end - sde.t1))
    sig = sig.at[0].set(s_max)
    return sig.at[-1].set(s_min) if n > 1 else sig


def _denoiser(bscore, sde, clip):
    """D(y; sigma) of a batch y in scale-free units: Tweedie's x_0 at t(sigma), maybe clipped."""

    def denoise(sigma, y):
        t = noise_level_time(sde, sigma)
        a, s = sde.scale(t), sde.std(t)
        x = a * y
        x0 = (x + s**2 * bscore(t, x)) / a
        return x0 if clip is None else jnp.clip(x0, *clip)

    return denoise


def _report(progress, done, total):
    if progress is not None:
        jax.debug.callback(lambda d: progress(float(d), total), done, ordered=False)


def _path(x1, path, x, sde, sig, t_end):
    ts = noise_level_time(sde, sig).at[0].set(sde.t1)
    ts = ts.at[-1].set(t_end) if sig.shape[0] > 1 else ts
    return jnp.concatenate([x1[None], path, x[None]]), jnp.concatenate([ts, jnp.zeros(1)])


def edm_heun(bscore, sde, x1, key, *, steps, t_end, clip, progress, return_path, grid="karras",
             rho=7.0, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """Heun's method on dy/dsigma = (y - D) / sigma, last step Euler (Karras et al. 2022, Alg. 1-2).

    Steps i = 0 .. N-2 go from sigma_i to sigma_{i+1} with diffrax's Heun (2 score evaluations);
    the last step from sigma_{N-1} to 0 is Euler, which returns D(y; sigma_{N-1}); NFE = 2 N - 1.
    With `s_churn > 0` (Algorithm 2) each step first raises the noise level of y from sigma_i to
    sigma_hat = (1 + gamma) sigma_i by adding N(0, s_noise^2 (sigma_hat^2 - sigma_i^2)) noise, where
    gamma = min(s_churn / N, sqrt 2 - 1) if s_tmin <= sigma_i <= s_tmax (sigma in scale-free units)
    and 0 otherwise; sigma_hat is capped at sigma(t1) so the score is never asked beyond t1.

    Arguments: `x1` (num, ...) the prior draw at t1; `grid`/`rho` choose the noise levels (see
    `sigma_grid`, default EDM's rho = 7); `clip` clips every D to the data range.
    Returns `(x0, info)` with info["nfe"] = 2 steps - 1.
    """
    if not s_noise >= 0 or not s_churn >= 0:
        raise ConfigError(f"heun needs s_churn >= 0 and s_noise >= 0, got {s_churn}, {s_noise}")
    sig = sigma_grid(sde, t_end, steps, grid, rho)
    gamma_max = min(s_churn / steps, math.sqrt(2) - 1)
    gamma = jnp.where((sig >= s_tmin) & (sig <= s_tmax), gamma_max, 0.0)
    sig_hat = jnp.minimum(sig * (1.0 + gamma), sig[0])
    denoise = _denoiser(bscore, sde, clip)
    term = diffrax.ODETerm(lambda sigma, y, args: (y - denoise(sigma, y)) / sigma)
    solver = diffrax.Heun()

    def churn(y, s, s_hat, k):
        if not s_churn:
            return y
        noise = s_noise * jnp.sqrt(jnp.maximum(s_hat**2 - s**2, 0.0))
        return y + noise * jax.random.normal(k, y.shape, y.dtype)

    def body(y, inp):
        i, s, s_hat, s_next, k = inp
        y = churn(y, s, s_hat, k)
        state = solver.init(term, s_hat, s_next, y, None)
        y, _, _, _, _ = solver.step(term, s_hat, s_next, y, None, state, made_jump=False)
        _report(progress, i + 1, steps)
        return y, (y * sde.scale(noise_level_time(sde, s_next)) if return_path else None)

    keys = jax.random.split(key, steps)
    y1 = x1 / sde.scale(sde.t1)
    xs = (jnp.arange(steps - 1), sig[:-1], sig_hat[:-1], sig[1:], keys[:-1])
    y, path = jax.lax.scan(body, y1, xs)
    x = denoise(sig_hat[-1], churn(y, sig[-1], sig_hat[-1], keys[-1]))
    _report(progress, steps, steps)
    info = {"nfe": 2 * steps - 1}
    if return_path:
        info["path"], info["path_t"] = _path(x1, path, x, sde, sig, t_end)
    return x, info


def dpm_solver_2m(bscore, sde, x1, key, *, steps, t_end, clip, progress, return_path,
                  grid="logsnr", rho=7.0):
    """DPM-Solver++(2M): second-order multistep exponential integrator in data prediction.

    In lambda = log(a / s) = -log sigma the ODE reads dy/dlambda = D - y, whose exact solution
    over h_i = lambda_{i+1} - lambda_i is y_{i+1} = e^{-h_i} y_i + int e^{lambda - lambda_{i+1}} D;
    with D extrapolated from its last two evaluations (Lu et al.'s second-order form),

        y_{i+1} = e^{-h_i} y_i + (1 - e^{-h_i}) [(1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1}],
        r_i = h_{i-1} / h_i,   first step first-order (D_i alone).

    Multiplied by a_{i+1} this is exactly Lu et al.'s update x_{i+1} = (s_{i+1} / s_i) x_i -
    a_{i+1} (e^{-h_i} - 1) D-hat for any a, s (their alpha_t, sigma_t), so it holds for VP, SubVP
    and VE alike. The N - 1 updates between the N grid levels evaluate D at sigma_0 .. sigma_{N-2};
    the last evaluation, at sigma_{N-1} = sigma(t_end), is the step to sigma = 0 (lambda = inf),
    y = D: Lu et al.'s Algorithm 2 with M = N - 1 steps followed by their final denoising to x_0.
    NFE = N. Default grid uniform in lambda ("logsnr"); "karras" and "time" also work.
    Deterministic: `key` is not used.

    Returns `(x0, info)` with info["nfe"] = steps.
    """
    sig = sigma_grid(sde, t_end, steps, grid, rho)
    lam = -jnp.log(sig)
    h = lam[1:] - lam[:-1]
    h_prev = jnp.concatenate([jnp.ones(1, h.dtype), h[:-1]])
    c = jnp.where(jnp.arange(steps - 1) == 0, 0.0, h / (2.0 * h_prev))  # 1 / (2 r_i); 0 first
    denoise = _denoiser(bscore, sde, clip)

    def body(carry, inp):
        y, d_prev = carry
        i, s, s_next, h_i, c_i = inp
        d = denoise(s, y)
        d_hat = d + c_i * (d - d_prev)
        y = jnp.exp(-h_i) * y - jnp.expm1(-h_i) * d_hat
        _report(progress, i + 1, steps)
        return (y, d), (y * sde.scale(noise_level_time(sde, s_next)) if return_path else None)

    y1 = x1 / sde.scale(sde.t1)
    (y, _), path = jax.lax.scan(body, (y1, jnp.zeros_like(y1)),
                                (jnp.arange(steps - 1), sig[:-1], sig[1:], h, c))
    x = denoise(sig[-1], y)
    _report(progress, steps, steps)
    info = {"nfe": steps}
    if return_path:
        info["path"], info["path_t"] = _path(x1, path, x, sde, sig, t_end)
    return x, info
