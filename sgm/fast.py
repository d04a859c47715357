"""Few-step samplers on the probability-flow ODE: EDM's Heun and DPM-Solver++(2M).

Both work in the scale-free variables of Karras et al. (2022). For x_t = a(t) x_0 + s(t) eps,

    sigma(t) = s(t) / a(t),   y = x / a(t),   D(y; sigma) = E[x_0 | x_t] = (x + s^2 score) / a,

and the probability-flow ODE dx/dt = f x - g^2 score / 2 of every affine SDE (VP, SubVP, VE, with
any schedule; f = a'/a and g^2 = 2 a^2 sigma sigma') becomes, with score = (D - y) / (a sigma^2),

    dy/dsigma = (y - D(y; sigma)) / sigma                          (EDM, eq. 4 with s = 1).

The SDE enters only through the map t <-> sigma, `sde.noise_level(t)` and its inverse
`sde.noise_level_time(sigma)`: the score is called at t(sigma), a = scale(t). The inverse is
closed-form for VE and for VP/SubVP with the linear schedule and found by bisection otherwise
(see `sgm.sde`).

Both samplers step on a grid sigma_0 = sigma(t1) > ... > sigma_{N-1} = sigma(t_end) and finish with
the step to sigma_N = 0, which lands on D(y; sigma_{N-1}): Tweedie's x_0 at t_end. `steps` is N.
So both end on x_0 (`denoise` is always true for them, see `sgm.samplers`); `clip` clips every D
(as ddpm/ddim clip their x_0 prediction), hence the result too. Both take the one signature of
`sgm.samplers`: `progress` is the hook `progress(done, total)` that `sample` builds, and the NFE
(heun 2 N - 1, dpm2m N) is declared in the sampler registry there.

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
from .score import tweedie_x0
from .sde import AbstractSDE

GRIDS = ("karras", "logsnr", "time")


def sigma_grid(sde: AbstractSDE, t_end, n: int, grid: str = "karras", rho: float = 7.0):
    """n noise levels from sigma(t1) down to sigma(t_end) (the samplers then step to sigma = 0).

    - "karras": sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
      (Karras et al. 2022, eq. 5; rho = 7).
    - "logsnr": uniform in the log-SNR `sde.log_snr` = -2 log sigma, i.e. geometric in sigma
      (Lu et al.).
    - "time":   uniform in t.
    """
    if grid not in GRIDS:
        raise ConfigError(f"unknown noise-level grid {grid!r}; expected one of {', '.join(GRIDS)}")
    if grid == "karras" and not rho > 0:
        raise ConfigError(f"the karras grid needs rho > 0, got {rho}")
    s_max, s_min = sde.noise_level(sde.t1), sde.noise_level(t_end)
    u = jnp.linspace(0.0, 1.0, n)
    if grid == "karras":
        inv = 1.0 / rho
        sig = (s_max**inv + u * (s_min**inv - s_max**inv)) ** rho
    elif grid == "logsnr":
        lam_1, lam_end = sde.log_snr(sde.t1), sde.log_snr(t_end)
        sig = jnp.exp(-0.5 * (lam_1 + u * (lam_end - lam_1)))
    else:
        sig = sde.noise_level(sde.t1 + u * (t_end - sde.t1))
    sig = sig.at[0].set(s_max)
    return sig.at[-1].set(s_min) if n > 1 else sig


def _denoiser(bscore, sde, clip):
    """D(y; sigma) of a batch y in scale-free units: Tweedie's x_0 at t(sigma), maybe clipped."""

    def denoise(sigma, y):
        t = sde.noise_level_time(sigma)
        x0 = tweedie_x0(bscore, sde, t, sde.scale(t) * y)
        return x0 if clip is None else jnp.clip(x0, *clip)

    return denoise


def _path(x1, path, x, sde, sig, t_end):
    ts = sde.noise_level_time(sig).at[0].set(sde.t1)
    ts = ts.at[-1].set(t_end) if sig.shape[0] > 1 else ts
    return jnp.concatenate([x1[None], path, x[None]]), jnp.concatenate([ts, jnp.zeros(1)])


def edm_heun(bscore, sde, x1, key, *, steps, t_end, denoise, clip, progress, return_path,
             grid="karras", rho=7.0, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """Heun's method on dy/dsigma = (y - D) / sigma, last step Euler (Karras et al. 2022, Alg. 1-2).

    Steps i = 0 .. N-2 go from sigma_i to sigma_{i+1} with diffrax's Heun (2 score evaluations);
    the last step from sigma_{N-1} to 0 is Euler, which returns D(y; sigma_{N-1}); NFE = 2 N - 1.
    With `s_churn > 0` (Algorithm 2) each step first raises the noise level of y from sigma_i to
    sigma_hat = (1 + gamma) sigma_i by adding N(0, s_noise^2 (sigma_hat^2 - sigma_i^2)) noise, where
    gamma = min(s_churn / N, sqrt 2 - 1) if s_tmin <= sigma_i <= s_tmax (sigma in scale-free units)
    and 0 otherwise; sigma_hat is capped at sigma(t1) so the score is never asked beyond t1.

    Arguments: `x1` (num, ...) the prior draw at t1; `grid`/`rho` choose the noise levels (see
    `sigma_grid`, default EDM's rho = 7); `clip` clips every D to the data range; `denoise` is
    ignored (the last step is the denoising step).
    Returns `(x0, info)`, info holding the path when `return_path`.
    """
    if not s_noise >= 0 or not s_churn >= 0:
        raise ConfigError(f"heun needs s_churn >= 0 and s_noise >= 0, got {s_churn}, {s_noise}")
    sig = sigma_grid(sde, t_end, steps, grid, rho)
    gamma_max = min(s_churn / steps, math.sqrt(2) - 1)
    gamma = jnp.where((sig >= s_tmin) & (sig <= s_tmax), gamma_max, 0.0)
    sig_hat = jnp.minimum(sig * (1.0 + gamma), sig[0])
    denoiser = _denoiser(bscore, sde, clip)
    term = diffrax.ODETerm(lambda sigma, y, args: (y - denoiser(sigma, y)) / sigma)
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
        progress(i + 1, steps)
        return y, (y * sde.scale(sde.noise_level_time(s_next)) if return_path else None)

    keys = jax.random.split(key, steps)
    y1 = x1 / sde.scale(sde.t1)
    xs = (jnp.arange(steps - 1), sig[:-1], sig_hat[:-1], sig[1:], keys[:-1])
    y, path = jax.lax.scan(body, y1, xs)
    x = denoiser(sig_hat[-1], churn(y, sig[-1], sig_hat[-1], keys[-1]))
    progress(steps, steps)
    info = {}
    if return_path:
        info["path"], info["path_t"] = _path(x1, path, x, sde, sig, t_end)
    return x, info


def dpm_solver_2m(bscore, sde, x1, key, *, steps, t_end, denoise, clip, progress, return_path,
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
    Deterministic: `key` is not used; `denoise` is ignored (the last evaluation is the denoising).

    Returns `(x0, info)`, info holding the path when `return_path`.
    """
    sig = sigma_grid(sde, t_end, steps, grid, rho)
    lam = -jnp.log(sig)
    h = lam[1:] - lam[:-1]
    h_prev = jnp.concatenate([jnp.ones(1, h.dtype), h[:-1]])
    c = jnp.where(jnp.arange(steps - 1) == 0, 0.0, h / (2.0 * h_prev))  # 1 / (2 r_i); 0 first
    denoiser = _denoiser(bscore, sde, clip)

    def body(carry, inp):
        y, d_prev = carry
        i, s, s_next, h_i, c_i = inp
        d = denoiser(s, y)
        d_hat = d + c_i * (d - d_prev)
        y = jnp.exp(-h_i) * y - jnp.expm1(-h_i) * d_hat
        progress(i + 1, steps)
        return (y, d), (y * sde.scale(sde.noise_level_time(s_next)) if return_path else None)

    y1 = x1 / sde.scale(sde.t1)
    (y, _), path = jax.lax.scan(body, (y1, jnp.zeros_like(y1)),
                                (jnp.arange(steps - 1), sig[:-1], sig[1:], h, c))
    x = denoiser(sig[-1], y)
    progress(steps, steps)
    info = {}
    if return_path:
        info["path"], info["path_t"] = _path(x1, path, x, sde, sig, t_end)
    return x, info
