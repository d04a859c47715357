"""Few-step samplers on the probability-flow ODE: EDM's Heun, DPM-Solver++(2M) and (3M), UniPC.

All work in the scale-free variables of Karras et al. (2022). For x_t = a(t) x_0 + s(t) eps,

    sigma(t) = s(t) / a(t),   y = x / a(t),   D(y; sigma) = E[x_0 | x_t] = (x + s^2 score) / a,

and the probability-flow ODE dx/dt = f x - g^2 score / 2 of every affine SDE (VP, SubVP, VE, with
any schedule; f = a'/a and g^2 = 2 a^2 sigma sigma') becomes, with score = (D - y) / (a sigma^2),

    dy/dsigma = (y - D(y; sigma)) / sigma                          (EDM, eq. 4 with s = 1),

or, in lambda = -log sigma (half the log-SNR), dy/dlambda = D - y: the multistep solvers
(dpm2m, dpm3m, unipc) integrate the linear part exactly and a polynomial in lambda through past
values of D (exponential integrators, see `multistep`).

The SDE enters only through the map t <-> sigma, `sde.noise_level(t)` and its inverse
`sde.noise_level_time(sigma)`: the score is called at t(sigma), a = scale(t). The inverse is
closed-form for VE and for VP/SubVP with the linear schedule and found by bisection otherwise
(see `sgm.sde`).

All samplers step on a grid sigma_0 = sigma(t1) > ... > sigma_{N-1} = sigma(t_end) and finish with
the step to sigma_N = 0, which lands on D(y; sigma_{N-1}): Tweedie's x_0 at t_end. `steps` is N.
So all end on x_0 (`denoise` is always true for them, see `sgm.samplers`); `clip` clips every D
(as ddpm/ddim clip their x_0 prediction), hence the result too. All take the one signature of
`sgm.samplers`: `progress` is the hook `progress(done, total)` that `sample` builds, and the NFE
(heun 2 N - 1; dpm2m, dpm3m, unipc N) is declared in the sampler registry there.

Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based Generative Models"
(NeurIPS 2022), Algorithms 1-2. Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models" (2022), Algorithm 2. Zhao, Bai, Rao, Zhou & Lu,
"UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models" (NeurIPS
2023).
"""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .errors import ConfigError, check_choice
from .ode_solvers import check_number
from .score import tweedie_x0
from .sampler_settings import SamplerSettings
from .sde import AbstractSDE

GRIDS = ("karras", "logsnr", "time")


def sigma_grid(sde: AbstractSDE, t_end, n: int, grid: str = "karras", rho: float = 7.0):
    """n noise levels from sigma(t1) down to sigma(t_end) (the samplers then step to sigma = 0).

    - "karras": sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
      (Karras et al. 2022, eq. 5; rho = 7).
    - "logsnr": uniform in the log-SNR `sde.log_snr` = -2 log sigma, i.e. geometric in sigma
      (Lu et al.).
    - "time":   uniform in t.
    - a sequence of n decreasing positive levels, used as given (e.g. `sgm.step_search`'s).
    """
    if not isinstance(grid, str):
        try:
            levels = np.asarray(grid, dtype=np.float64)
        except jax.errors.TracerArrayConversionError:  # levels being tuned (`sgm.tune_grid`)
            return jnp.asarray(grid, jnp.result_type(float))
        if levels.shape != (n,) or not np.all(np.isfinite(levels)) or not np.all(levels > 0) \
                or not np.all(np.diff(levels) < 0):
            raise ConfigError(f"a grid of noise levels must be {n} decreasing positive numbers "
                              f"(one per step), got {tuple(np.round(levels, 6).tolist())}")
        return jnp.asarray(levels, jnp.result_type(float))
    check_choice("noise-level grid", grid, GRIDS)
    if grid == "karras":
        check_number("the karras grid's rho", rho, positive=True)
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


def edm_heun(bscore, sde, x1, key, run: SamplerSettings, *,
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
    steps, t_end, _, clip, progress, return_path = run
    for name, value in (("s_churn", s_churn), ("s_noise", s_noise)):
        check_number(f"heun's {name}", value)
    if not s_noise >= 0 or not s_churn >= 0:
        raise ConfigError(f"heun needs s_churn >= 0 and s_noise >= 0, got {s_churn}, {s_noise}")
    if not s_tmin <= s_tmax:  # also refuses NaN; s_tmax may be inf (no upper bound)
        raise ConfigError(f"heun needs s_tmin <= s_tmax, got {s_tmin}, {s_tmax}")
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


def dpm_solver_2m(bscore, sde, x1, key, run: SamplerSettings, *,
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
    It is `multistep` at order 2 without corrector ("bh2" is this weight) and without lowering
    the order of the last steps.

    Returns `(x0, info)`, info holding the path when `return_path`.
    """
    return multistep(bscore, sde, x1, run, grid=grid, rho=rho, order=2, corrector=False,
                     variant="bh2", lower_final=False)


def dpm_solver_3m(bscore, sde, x1, key, run: SamplerSettings, *,
                  grid="logsnr", rho=7.0):
    """DPM-Solver++(3M): the third-order multistep predictor of `multistep`, without corrector.

    Each step integrates exactly (against e^{lambda - lambda_{i+1}}) the quadratic in lambda through
    D_i, D_{i-1}, D_{i-2}: Lu et al.'s 3M step with its phi_2 / phi_3 weights. The first two steps
    have only one and two evaluations behind them (orders 1 and 2, the 2M weight), and on grids of
    at most `SHORT_GRID` levels the last two steps fall back to orders 2 and 1. The first-order
    first step leaves an O(h^2) error that no later step removes, so the method converges with
    order 2 in the step, however third-order its other steps are (checked by
    tests/test_samplers.py; see `docs/results/defaults.md` for the fitted slopes). NFE = N.
    Deterministic: `key` and `denoise` are ignored, as for dpm2m.

    Lu et al., "DPM-Solver++" (2022), Sec. 4 and Appendix B (the multistep solvers).
    """
    return multistep(bscore, sde, x1, run, grid=grid, rho=rho, order=3, corrector=False,
                     variant="bh2", lower_final=True)


def unipc(bscore, sde, x1, key, run: SamplerSettings, *,
          grid="logsnr", rho=7.0, order=3, variant="bh2"):
    """UniPC: the multistep predictor UniP-`order` with the corrector UniC, in data prediction.

    Each step predicts y~_{i+1} from D_i .. D_{i-order+1} (at order 3 the `dpm3m` step), evaluates
    D~ = D(y~_{i+1}; sigma_{i+1}) and corrects y_{i+1} with the polynomial through D~ as well, one
    order higher. D~ is also the next step's D_{i+1}, so the corrector costs no evaluation:
    NFE = N, as for dpm2m. The last evaluation, at sigma(t_end), is the answer x_0 (nothing is
    corrected after it). Warm-up and (on grids of at most `SHORT_GRID` levels) the last steps
    use lower orders, as in `dpm3m`. `variant` is UniPC's B(h) ("bh1": h, "bh2": 1 - e^{-h}); it
    only matters where a single difference is used (the first step, the last steps).

    Order: the corrected first step (predictor order 1, corrector 2) has a local error O(h^3), so
    UniPC-3 converges with order 3 (its later steps are of order 4; checked by
    tests/test_samplers.py). The defaults are the "logsnr" grid, `order=3` and `variant="bh2"`.
    See `docs/results/defaults.md` for the fitted slopes and the measurements behind these
    defaults.
    Deterministic: `key` and `denoise` are ignored.

    Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
    of Diffusion Models" (NeurIPS 2023), Sec. 3 (UniC, UniP) and Appendix (data prediction, B(h)).
    """
    return multistep(bscore, sde, x1, run, grid=grid, rho=rho, order=order, corrector=True,
                     variant=variant, lower_final=True)


#: Adams-Bashforth weights of orders 1-4 on equal steps, newest derivative first (iPNDM)
AB_WEIGHTS = np.array([[1.0, 0.0, 0.0, 0.0],
                       [3.0, -1.0, 0.0, 0.0],
                       [23.0, -16.0, 5.0, 0.0],
                       [55.0, -59.0, 37.0, -9.0]]) / np.array([1.0, 2.0, 12.0, 24.0])[:, None]


def ipndm(bscore, sde, x1, key, run: SamplerSettings, *,
          grid="logsnr", rho=7.0, order=4):
    """iPNDM: Adams-Bashforth steps on dy/dsigma = (y - D) / sigma with the past derivatives.

    On the N levels of `sigma_grid` and then to sigma = 0, step i moves y by
    (sigma_{i+1} - sigma_i) sum_j w_j d_{i-j}, d = (y - D(y; sigma)) / sigma, with the
    Adams-Bashforth weights of order k = min(order, i + 1) for equal steps (`AB_WEIGHTS`): lower
    orders while the history fills, then order `order`, one evaluation per step, NFE = N. The last
    step lands on sigma = 0, the data (so `denoise` does not apply; with order 1 it is Tweedie's
    x_0 D(y; sigma_{N-1})). The fixed weights are exact for equal steps; on a smoothly graded grid
    (the default "logsnr", geometric in sigma) the node offsets differ from the equal ones by
    O(h^2), so the method converges with order 2 as the grid refines; it is made for the few-step
    counts before that. `clip` clips every D and the result. See `docs/results/samplers.md` for
    the grids measured at 5-20 NFE.
    Deterministic: `key` is ignored.

    Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator" (ICLR 2023),
    the improved PNDM; Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on
    Manifolds" (ICLR 2022).
    """
    steps, t_end, _, clip, progress, return_path = run
    if order not in (1, 2, 3, 4):
        raise ConfigError(f"ipndm's order must be 1, 2, 3 or 4, got {order!r}")
    sig = sigma_grid(sde, t_end, steps, grid, rho)
    sig_next = jnp.concatenate([sig[1:], jnp.zeros(1)])
    orders = np.minimum(order, np.arange(steps) + 1)
    orders[-1] = 1  # the step to sigma = 0 is Euler's: it lands on D(y; sigma_{N-1})
    weights = jnp.asarray(AB_WEIGHTS[orders - 1], x1.dtype)
    denoiser = _denoiser(bscore, sde, clip)

    def body(carry, inp):
        y, d1, d2, d3 = carry  # y_i and the last three derivatives
        j, s, s_next, w = inp
        d = (y - denoiser(s, y)) / s
        y = y + (s_next - s) * (w[0] * d + w[1] * d1 + w[2] * d2 + w[3] * d3)
        progress(j + 1, steps)
        out = y * sde.scale(sde.noise_level_time(jnp.maximum(s_next, sig[-1]))) \
            if return_path else None
        return (y, d, d1, d2), out

    y1 = x1 / sde.scale(sde.t1)
    zero = jnp.zeros_like(y1)
    (x, _, _, _), path = jax.lax.scan(body, (y1, zero, zero, zero),
                                      (jnp.arange(steps), sig, sig_next, weights))
    x = x if clip is None else jnp.clip(x, *clip)
    info = {}
    if return_path:
        info["path"], info["path_t"] = _path(x1, path[:-1], x, sde, sig, t_end)
    return x, info


# ------------------------------------------------------------ multistep exponential integrators

#: grids of at most this many levels lower the order of their last steps, as Lu et al. and Zhao et
#: al. do for few steps. See docs/results/defaults.md for the measurements behind this value.
SHORT_GRID = 7
VARIANTS = ("bh1", "bh2")


def _phi_weights(h, kmax: int):
    """g_k = k! h phi_{k+1}(-h) = (k! / h^k) int_0^h e^{u - h} u^k / k! du, k = 0 .. kmax.

    With D(lambda_i + u) = sum_k D^(k) u^k / k!, the exact step of dy/dlambda = D - y is
    y_{i+1} = e^{-h} y_i + sum_k (h^k / k!) g_k D^(k); g_0 = 1 - e^{-h}. Integration by parts,
    b_k = h^k / k! - b_{k-1} for b_k = h^k g_k / k!, cancels badly for small h: there the series
    g_k = k! h sum_j (-h)^j / (j + k + 1)! is used (12 terms: exact in float32 for h < 1).
    """
    small = h < 1.0
    hs, hl = jnp.where(small, h, 0.5), jnp.where(small, 1.0, h)  # both branches finite
    out, b = [], -jnp.expm1(-hl)
    for k in range(kmax + 1):
        if k:
            b = hl**k / math.factorial(k) - b
        series = sum((-hs) ** j * (1.0 / math.factorial(j + k + 1)) for j in range(12))
        out.append(math.factorial(k) * jnp.where(small, hs * series, b / hl**k))
    return out


def _difference_weights(r, g, n: int, b_h):
    """Weights w_j of the differences D(lambda_i + r_j h) - D_i for the first `n` offsets r_j
    (arrays over the transitions): sum_j w_j r_j^k = g_k for k = 1 .. n, so the difference term is
    the exact step's sum_{k<=n} (h^k / k!) g_k D^(k) (up to O(h^{n+2})).

    This is Zhao et al.'s R_p a_p = g_p / B(h) with w_j = B(h) a_j / r_j, where B cancels. For a
    single difference UniPC takes a_1 = 1/2 instead, w = B(h) / (2 r): there B shows ("bh1": h,
    "bh2": 1 - e^{-h}, which is also DPM-Solver++(2M)'s weight).
    """
    if n == 0:
        return []
    if n == 1:
        return [b_h / (2.0 * r[0])]
    mat = jnp.stack([jnp.stack([r[j] ** k for j in range(n)], -1) for k in range(1, n + 1)], -2)
    w = jnp.linalg.solve(mat, jnp.stack(g[1:n + 1], -1)[..., None])[..., 0]
    return [w[..., j] for j in range(n)]


def _pick(which, choices, width):
    """(transitions, width) weights: row i is choices[which[i]] (a list of arrays), zero-padded."""
    cols = []
    for j in range(width):
        col = jnp.zeros(which.shape)
        for n, ws in choices.items():
            if j < len(ws):
                col = jnp.where(which == n, ws[j], col)
        cols.append(col)
    return jnp.stack(cols, -1)


def multistep_orders(transitions: int, order: int, lower_final: bool) -> np.ndarray:
    """Order of each of the N - 1 transitions: min(order, i + 1) (warm-up: i + 1 evaluations
    exist) and, on a grid of at most `SHORT_GRID` levels, at most N - 1 - i (1 on the last)."""
    i = np.arange(transitions)
    k = np.minimum(order, i + 1)
    if lower_final and transitions + 1 <= SHORT_GRID:
        k = np.minimum(k, transitions - i)
    return k


def multistep(bscore, sde, x1, run: SamplerSettings, *, grid, rho, order, corrector, variant,
              lower_final):
    """Exponential multistep predictor (and corrector) on dy/dlambda = D - y: dpm2m, dpm3m, unipc.

    Transition i goes from lambda_i to lambda_{i+1} = lambda_i + h over the N levels of
    `sigma_grid`. Its predictor of order k integrates exactly the polynomial in lambda through
    D_i, D_{i-1}, .., D_{i-k+1} (offsets r_j h, r_j < 0): y~ = e^{-h} y_i + g_0 D_i +
    sum_j w_j (D_{i-j} - D_i). The corrector (if `corrector`) adds the evaluation at the predicted
    point, D~ = D(y~; sigma_{i+1}) (offset r = 1), to the same nodes, one order higher, and that
    evaluation is the next transition's D_{i+1}: the corrector costs no evaluation. The last
    evaluation, at sigma_{N-1} = sigma(t_end), is the answer x_0 (no correction after it), so
    NFE = N. `multistep_orders` gives the order of each transition.
    """
    steps, t_end, _, clip, progress, return_path = run
    if order not in (1, 2, 3):
        raise ConfigError(f"the multistep order must be 1, 2 or 3, got {order!r}")
    check_choice("UniPC variant", variant, VARIANTS)
    sig = sigma_grid(sde, t_end, steps, grid, rho)
    lam = -jnp.log(sig)
    m = steps - 1
    denoiser = _denoiser(bscore, sde, clip)
    y1 = x1 / sde.scale(sde.t1)
    d0 = denoiser(sig[0], y1)
    if m == 0:  # one level: the answer is D at sigma(t1)
        progress(steps, steps)
        none = jnp.zeros((0, *x1.shape), x1.dtype)
        info = dict(zip(("path", "path_t"), _path(x1, none, d0, sde, sig, t_end))) if return_path \
            else {}
        return d0, info
    # Per transition, vectorised: e^{-h}, g_0, the predictor's weights on (D_{i-1} - D_i,
    # D_{i-2} - D_i) and the corrector's on (D~ - D_i, D_{i-1} - D_i, D_{i-2} - D_i).
    h = lam[1:] - lam[:-1]
    g = _phi_weights(h, 3)
    b_h = -jnp.expm1(-h) if variant == "bh2" else h
    i = jnp.arange(m)
    r = [jnp.where(i >= j, (lam[jnp.maximum(i - j, 0)] - lam[:-1]) / h, -float(j))
         for j in (1, 2)]  # placeholders where the node does not exist (never weighted)
    ks = multistep_orders(m, order, lower_final)
    wp = _pick(jnp.asarray(ks), {n: _difference_weights(r, g, n - 1, b_h)
                                 for n in range(1, order + 1)}, 2)
    if corrector:
        nc = np.where(np.arange(m) == m - 1, 0, ks)  # the last transition is not corrected
        choices = {n: _difference_weights([jnp.ones_like(h)] + r, g, n, b_h)
                   for n in range(1, order + 1)}
        choices[0] = [jnp.zeros_like(h), wp[:, 0], wp[:, 1]]  # = the prediction
        wc = _pick(jnp.asarray(nc), choices, 3)
    else:
        wc = jnp.concatenate([jnp.zeros_like(wp[:, :1]), wp], -1)

    def body(carry, inp):
        y, d, d1, d2 = carry  # y_i, D_i, D_{i-1}, D_{i-2}
        j, s_next, e, a0, p, c = inp
        base = e * y + a0 * d
        d_new = denoiser(s_next, base + p[0] * (d1 - d) + p[1] * (d2 - d))
        y = base + c[0] * (d_new - d) + c[1] * (d1 - d) + c[2] * (d2 - d)
        progress(j + 1, steps)
        out = y * sde.scale(sde.noise_level_time(s_next)) if return_path else None
        return (y, d_new, d, d1), out

    zero = jnp.zeros_like(y1)
    (_, x, _, _), path = jax.lax.scan(body, (y1, d0, zero, zero),
                                      (i, sig[1:], jnp.exp(-h), g[0], wp, wc))
    progress(steps, steps)
    info = {}
    if return_path:
        info["path"], info["path_t"] = _path(x1, path, x, sde, sig, t_end)
    return x, info
