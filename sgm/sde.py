"""Forward SDEs of score-based models and their noise schedules.

Every SDE here is affine with a scalar diffusion, so its transition kernel is Gaussian:

    dx = f(t) x dt + g(t) dw,        x_t | x_0 ~ N(scale(t) x_0, std(t)^2 I).

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations" (ICLR 2021), Section 3.4 and Appendix B.

VP/SubVP take a schedule object that defines the integrated noise rate B(t) = int_0^t beta(s) ds;
beta(t) itself is obtained from B by forward-mode differentiation, so each schedule writes one
formula and both quantities agree to rounding.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .errors import ConfigError

Scalar = Float[ArrayLike, ""]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _bisect(f, target, hi, iters: int = 64):
    """The x in [0, hi] with f(x) = target (elementwise), for f increasing on [0, hi].

    `iters` halvings of [0, hi] reach adjacent floats for any root above ~1e-12 * hi.
    """
    target = jnp.asarray(target, dtype=jnp.result_type(float))

    def halve(_, bounds):
        lo, up = bounds
        mid = 0.5 * (lo + up)
        above = f(mid) >= target
        return jnp.where(above, lo, mid), jnp.where(above, mid, up)

    lo, up = jax.lax.fori_loop(0, iters, halve, (jnp.zeros_like(target), jnp.full_like(target, hi)))
    root = jax.lax.stop_gradient(0.5 * (lo + up))
    # The bisection's comparisons carry no derivative; the implicit function theorem does:
    # dx = (d target - df) / f'(x). One Newton correction whose value is cancelled (so the root is
    # the bisection's to the last bit) carries exactly that derivative, for target and for any
    # parameters f closes over (a learned schedule's), e.g. to tune sampler levels by gradient.
    value, slope = jax.jvp(f, (root,), (jnp.ones_like(root),))
    step = (target - value) / jnp.where(slope > 0, slope, 1.0)
    return root + (step - jax.lax.stop_gradient(step))


# --------------------------------------------------------------------------------------------
# Noise schedules for VP / SubVP: each defines B(t) = int_0^t beta(s) ds on t in [0, 1].
# --------------------------------------------------------------------------------------------


class AbstractSchedule(eqx.Module):
    """A continuous-time noise schedule: the integrated rate B(t) and the rate beta(t) = B'(t)."""

    @abc.abstractmethod
    def integral(self, t: Scalar) -> Array:
        """B(t) = int_0^t beta(s) ds."""

    def beta(self, t: Scalar) -> Array:
        """beta(t) = dB/dt, by forward-mode differentiation of `integral`."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return jax.jvp(self.integral, (t,), (jnp.ones_like(t),))[1]

    def inverse_integral(self, b: Scalar, t_max: float = 1.0) -> Array:
        """The time t in [0, t_max] with B(t) = b (elementwise); bisection, as B increases."""
        return _bisect(self.integral, b, t_max)

    def network_time(self, t: Scalar) -> Array:
        """The time the score network is given: t itself (a learned schedule gives its noise level)."""
        return jnp.asarray(t)

    def discrete_betas(self, num_steps: int) -> Array:
        """DDPM betas of an N-step chain on t_i = i/N: beta_i = 1 - exp(-(B(t_i) - B(t_{i-1})))."""
        ts = jnp.linspace(0.0, 1.0, num_steps + 1)
        return -jnp.expm1(-jnp.diff(jax.vmap(self.integral)(ts)))


class AbstractBetaRangeSchedule(AbstractSchedule):
    """A schedule whose rate runs from beta_min at t = 0 to beta_max at t = 1 (0 <= min < max)."""

    beta_min: eqx.AbstractVar[float]
    beta_max: eqx.AbstractVar[float]

    def __check_init__(self):
        _check(0 <= self.beta_min < self.beta_max,
               f"{type(self).__name__} needs 0 <= beta_min < beta_max, got beta_min={self.beta_min}, "
               f"beta_max={self.beta_max}")


class LinearSchedule(AbstractBetaRangeSchedule):
    """beta(t) = beta_min + t (beta_max - beta_min); Song et al. (2021) and Ho et al. (2020)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def integral(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def inverse_integral(self, b, t_max=1.0):
        """Closed form: the root t >= 0 of beta_min t + (beta_max - beta_min) t^2 / 2 = b.

        Written as 2 b / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) b)), which has no
        cancellation for small b. `t_max` is not needed (kept for the common signature).
        """
        b = jnp.asarray(b, dtype=jnp.result_type(float))
        lo, slope = self.beta_min, self.beta_max - self.beta_min
        den = lo + jnp.sqrt(lo**2 + 2.0 * slope * b)
        return jnp.where(den > 0, 2.0 * b / jnp.where(den > 0, den, 1.0), 0.0)  # b = 0, beta_min = 0


class QuadraticSchedule(AbstractBetaRangeSchedule):
    """beta(t) = beta_min + (beta_max - beta_min) t^2: slow start, fast end."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def integral(self, t):
        return self.beta_min * t + (self.beta_max - self.beta_min) * t**3 / 3.0


class ScaledLinearSchedule(AbstractBetaRangeSchedule):
    """beta(t) = (sqrt(beta_min) + t (sqrt(beta_max) - sqrt(beta_min)))^2: latent diffusion ("LDM").

    The defaults are the continuous-time form (N * beta) of Rombach et al. (2022)'s
    betas 0.00085 -> 0.012 over N = 1000 steps.
    """

    beta_min: float = 0.85
    beta_max: float = 12.0

    def integral(self, t):
        a, b = math.sqrt(self.beta_min), math.sqrt(self.beta_max)
        # int_0^t (a + (b - a) s)^2 ds
        return a**2 * t + a * (b - a) * t**2 + (b - a) ** 2 * t**3 / 3.0


class SigmoidSchedule(AbstractBetaRangeSchedule):
    """beta(t) = beta_min + (beta_max - beta_min) sigmoid(start + (end - start) t) (GeoDiff-style)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    start: float = -6.0
    end: float = 6.0

    def __check_init__(self):
        _check(self.end > self.start, f"sigmoid schedule needs end > start, got {self.start}, {self.end}")

    def integral(self, t):
        k = self.end - self.start
        # int sigmoid(start + k s) ds = softplus(start + k s) / k
        sig = (jax.nn.softplus(self.start + k * t) - jax.nn.softplus(self.start)) / k
        return self.beta_min * t + (self.beta_max - self.beta_min) * sig


class CosineSchedule(AbstractSchedule):
    """Cosine schedule of Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(theta(t)) / cos^2(theta(0)).

    theta(t) = (t + s) / (1 + s) * pi / 2. Its rate beta(t) = pi / (1 + s) tan(theta(t)) diverges at
    t = 1; as in the discrete original, which clips betas, the rate is capped at `max_beta` from the
    time t* where it reaches that value (B stays C^1 and finite: B(1) = B(t*) + max_beta (1 - t*)).
    """

    s: float = 0.008
    max_beta: float = 50.0

    def __check_init__(self):
        _check(self.s > 0, f"cosine schedule needs s > 0, got {self.s}")
        _check(self.max_beta > math.pi / (1 + self.s) * math.tan(self.s / (1 + self.s) * math.pi / 2),
               f"cosine schedule max_beta={self.max_beta} is below the rate at t=0")

    def integral(self, t):
        c = math.pi / (2 * (1 + self.s))
        theta_star = math.atan(self.max_beta / (2 * c))
        t_star = theta_star / c - self.s
        tan0 = math.tan(self.s * c)

        def raw(u):
            # -2 log(cos(theta0 + c u) / cos(theta0)), written with log1p so it is exact near u = 0
            return -2.0 * jnp.log1p(-2.0 * jnp.sin(0.5 * c * u) ** 2 - tan0 * jnp.sin(c * u))

        t_clip = jnp.minimum(t, t_star)
        return raw(t_clip) + self.max_beta * jnp.maximum(t - t_star, 0.0)


class AbstractLogSNRSchedule(AbstractSchedule):
    """A VP schedule written through its normalised -log SNR n(t) between fixed end points.

    gamma(t) = -log SNR(t) = gamma_0 + (gamma_1 - gamma_0) n(t), gamma_0 = -logsnr_max at t0 and
    gamma_1 = -logsnr_min at t1, and B(t) = softplus(gamma(t)) on [t0, t1] (so that VP's
    scale^2 = sigmoid(-gamma), std^2 = sigmoid(gamma)); below t0 B ramps linearly from B(0) = 0 to
    B(t0), so x_t | x_0 is the kernel of the SDE started at x_0 at t = 0 for every t. Concrete
    schedules implement n(t) as `network_time` (the network sees n, not t).
    """

    logsnr_max: eqx.AbstractVar[float]
    logsnr_min: eqx.AbstractVar[float]
    t0: eqx.AbstractVar[float]
    t1: eqx.AbstractVar[float]

    @abc.abstractmethod
    def network_time(self, t: Scalar) -> Array:
        """n(t) = (gamma(t) - gamma_0) / (gamma_1 - gamma_0), in [0, 1] on [t0, t1]."""

    def gamma(self, t: Scalar) -> Array:
        """gamma(t) = -log SNR(t) of the VP SDE on this schedule (increasing in t)."""
        g0, g1 = -self.logsnr_max, -self.logsnr_min
        return g0 + (g1 - g0) * self.network_time(t)

    def integral(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        b = jax.nn.softplus(self.gamma(t))
        if self.t0 == 0:
            return b
        ramp = jax.nn.softplus(-self.logsnr_max) * t / self.t0
        return jnp.where(t < self.t0, ramp, b)


class LearnedSchedule(AbstractLogSNRSchedule):
    """A learned noise schedule: a monotone network for the log-SNR between fixed end points.

    On [t0, t1] the normalised -log SNR (`AbstractLogSNRSchedule`) is

        n(t) = (h(u) - h(0)) / (h(1) - h(0)),   u = (t - t0) / (t1 - t0),

    where h is increasing: h(u) = c u + mean_j a_j sigmoid(w_j (2u - 1) + b_j) with c, a_j, w_j > 0
    (softplus of the raw parameters), the monotone network of Kingma, Salimans, Poole & Ho,
    "Variational Diffusion Models" (2021), Appendix H.

    Its parameters are arrays of the score model (trained, kept in the EMA and in checkpoints).
    With its end points fixed, the continuous-time variational bound does not depend on the shape
    of gamma when the network sees the noise level, not t (`network_time`): the shape is trained
    to lower the variance of the bound's estimate instead (`sgm.loss.dsm_loss`).

    Arguments:
        key: initialisation of the network (near linear in gamma: a_j = `curvature` on average).
        logsnr_max: log SNR at t0 (the least noisy end; 13.8 is the linear VP schedule's at 1e-5).
        logsnr_min: log SNR at t1 (-10.05 is the linear VP schedule's at t = 1).
        t0, t1: the times of the end points (the SDE's).
        width: units of the network's hidden layer.
    """

    c: Array
    w: Array
    b: Array
    a: Array
    logsnr_max: float = eqx.field(static=True)
    logsnr_min: float = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, *, logsnr_max: float = 13.8, logsnr_min: float = -10.05,
                 t0: float = 1e-5, t1: float = 1.0, width: int = 1024, curvature: float = 0.05):
        _check(logsnr_max > logsnr_min, f"learned schedule needs logsnr_max > logsnr_min, got "
                                        f"logsnr_max={logsnr_max}, logsnr_min={logsnr_min}")
        _check(0 <= t0 < t1, f"learned schedule needs 0 <= t0 < t1, got t0={t0}, t1={t1}")
        _check(curvature > 0 and width >= 1, "learned schedule needs curvature > 0 and width >= 1")
        k_w, k_b, k_a = jax.random.split(key, 3)
        inv_softplus = lambda y: y + jnp.log(-jnp.expm1(-y))
        self.c = inv_softplus(jnp.ones(()))
        self.w = inv_softplus(jnp.exp(jax.random.normal(k_w, (width,))) * 2.0)
        self.b = jax.random.normal(k_b, (width,)) * 2.0
        self.a = inv_softplus(curvature * jnp.exp(0.5 * jax.random.normal(k_a, (width,))))
        self.logsnr_max, self.logsnr_min, self.t0, self.t1 = logsnr_max, logsnr_min, t0, t1

    def _h(self, u):
        """h(u) and h'(u), elementwise in u."""
        sp = jax.nn.softplus
        w, a, c = sp(self.w), sp(self.a), sp(self.c)
        s = jax.nn.sigmoid(w * (2.0 * u[..., None] - 1.0) + self.b)
        return c * u + s @ a / a.size, c + (s * (1.0 - s)) @ (2.0 * a * w) / a.size

    def _n(self, t):
        """n(t) and its rate dn/dt, elementwise in t (the rate written out: what `beta`'s
        forward-mode derivative of `integral` gives, in one pass over the hidden units)."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        u = jnp.clip((t - self.t0) / (self.t1 - self.t0), 0.0, 1.0)
        (h, slope), (h0, _), (h1, _) = self._h(u), self._h(jnp.zeros(())), self._h(jnp.ones(()))
        rate = jnp.where((t > self.t0) & (t < self.t1), slope / (self.t1 - self.t0), 0.0)
        return (h - h0) / (h1 - h0), rate / (h1 - h0)

    def network_time(self, t: Scalar) -> Array:
        """n(t) = (gamma(t) - gamma_0) / (gamma_1 - gamma_0) in [0, 1] on [t0, t1]."""
        return self._n(t)[0]

    def local(self, t) -> LocalSchedule:
        """This schedule as seen at the time `t`: n(t) and n'(t) as a `LocalSchedule` (for an
        array of times, a batch of them, one per time)."""
        value, rate = self._n(t)
        return LocalSchedule(at=jnp.asarray(t, value.dtype), value=value, rate=rate,
                             logsnr_max=self.logsnr_max, logsnr_min=self.logsnr_min, t0=self.t0,
                             t1=self.t1)


class LocalSchedule(AbstractLogSNRSchedule):
    """A log-SNR schedule known at one time only: n(at) and its rate n'(at), NaN at any other time.

    An SDE holding it gives, at t = `at`, the scale, std, diffusion and network time of the
    schedule it was taken from (`LearnedSchedule.local`), to rounding: each depends on the
    schedule only through B(t) and beta(t), that is through n(t) and n'(t), so

        n(t) = value + rate (t - at)        at t = at (exact in value and first derivative).

    A sample evaluated at its own time t_i depends on a learned schedule's parameters through these
    two numbers: the loss differentiates a batch of them (`sgm.loss.dsm_loss`) instead of a copy of
    the schedule's network per sample.
    """

    at: Array
    value: Array
    rate: Array
    logsnr_max: float = eqx.field(static=True)
    logsnr_min: float = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def network_time(self, t: Scalar) -> Array:
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return jnp.where(t == self.at, self.value + self.rate * (t - self.at), jnp.nan)


# --------------------------------------------------------------------------------------------
# SDEs
# --------------------------------------------------------------------------------------------


class AbstractSDE(eqx.Module):
    """A forward SDE dx = f(t, x) dt + g(t) dw with Gaussian transition kernel from x_0.

    Concrete SDEs implement `scale(t)` and `std(t)` (so x_t = scale(t) x_0 + std(t) eps), the drift,
    the diffusion and the prior. Time runs from `t0` (small, avoids the singular score at 0) to `t1`.
    """

    t0: eqx.AbstractVar[float]
    t1: eqx.AbstractVar[float]

    def __check_init__(self):
        _check(0 < self.t0 < self.t1,
               f"{type(self).__name__} needs 0 < t0 < t1, got t0={self.t0}, t1={self.t1}")

    @abc.abstractmethod
    def scale(self, t: Scalar) -> Array:
        """Mean coefficient of x_t given x_0."""

    @abc.abstractmethod
    def std(self, t: Scalar) -> Array:
        """Standard deviation of x_t given x_0."""

    @abc.abstractmethod
    def drift(self, t: Scalar, x: Array) -> Array:
        """f(t, x)."""

    @abc.abstractmethod
    def diffusion(self, t: Scalar) -> Array:
        """g(t), a scalar."""

    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior N(0, prior_std^2 I) at t1."""

    @property
    def sampling_t0(self) -> float:
        """Where samplers stop by default (Song et al. use 1e-3 for VP/SubVP, 1e-5 for VE)."""
        return self.t0

    def marginal(self, t: Scalar, x0: Array) -> tuple[Array, Array]:
        """Mean and std of the transition kernel p_{0t}(x_t | x_0)."""
        return self.scale(t) * x0, self.std(t)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """Draws from the prior N(0, prior_std^2 I) with the given (batched) shape."""
        return self.prior_std() * jax.random.normal(key, shape)

    def prior_logp(self, x: Array) -> Array:
        """log N(x; 0, prior_std^2 I) of ONE sample (summed over all its elements)."""
        s = self.prior_std()
        n = x.size
        return -0.5 * jnp.sum(x**2) / s**2 - n * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def noise_level(self, t: Scalar) -> Array:
        """The noise level of the scale-free variable x / scale(t): std(t) / scale(t).

        x_t / scale(t) = x_0 + noise_level(t) eps; Karras et al. (2022)'s sigma(t). (For the VE SDE
        this is sqrt(sigma(t)^2 - sigma_min^2), not `VESDE.sigma(t)`.)
        """
        return self.std(t) / self.scale(t)

    def noise_level_time(self, level: Scalar, *, iters: int = 64) -> Array:
        """The time t in [0, t1] with noise_level(t) = level (elementwise), the inverse map.

        Bisection on [0, t1] by default (noise_level increases with t), `iters` halvings, which
        reach adjacent floats for any t above ~1e-12; SDEs with a closed form override it.
        """
        return _bisect(self.noise_level, level, self.t1, iters)

    def log_snr(self, t: Scalar) -> Array:
        """lambda(t) = log(scale^2 / std^2) = -2 log noise_level(t)."""
        return -2.0 * jnp.log(self.noise_level(t))

    def network_time(self, t: Scalar) -> Array:
        """The time input of a score network on this SDE: t, unless the schedule says otherwise."""
        return jnp.asarray(t)

    def reverse_drift(self, score, t: Scalar, x: Array) -> Array:
        """Drift of the reverse-time SDE, f - g^2 score (Anderson 1982; Song et al. eq. 6)."""
        return self.drift(t, x) - self.diffusion(t) ** 2 * score(t, x)

    def ode_drift(self, score, t: Scalar, x: Array) -> Array:
        """Probability-flow ODE velocity, f - g^2 score / 2 (Song et al. eq. 13)."""
        return self.drift(t, x) - 0.5 * self.diffusion(t) ** 2 * score(t, x)


class AbstractBetaSDE(AbstractSDE):
    """SDEs driven by a noise rate beta(t): drift -beta x / 2, scale exp(-B/2), B = int beta.

    VP and SubVP share everything but their std and diffusion; the schedule defines B(t).
    """

    schedule: AbstractSchedule
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, schedule=None,
                 t0: float = 1e-5, t1: float = 1.0):
        self.schedule = LinearSchedule(beta_min, beta_max) if schedule is None else schedule
        self.t0, self.t1 = t0, t1

    @property
    def sampling_t0(self):
        return max(self.t0, 1e-3)

    @abc.abstractmethod
    def _integral_at_noise_level(self, level: Scalar) -> Array:
        """B with noise_level = level (VP: sigma^2 = e^B - 1; SubVP: sigma = 2 sinh(B / 2))."""

    def noise_level_time(self, level, *, iters=64):
        """t(sigma) = B^{-1}(b(sigma)): b in closed form, B^{-1} from the schedule (closed form for
        the linear schedule, bisection on [0, t1] otherwise)."""
        level = jnp.asarray(level, dtype=jnp.result_type(float))
        return self.schedule.inverse_integral(self._integral_at_noise_level(level), self.t1)

    def network_time(self, t):
        return self.schedule.network_time(t)

    def scale(self, t):
        return jnp.exp(-0.5 * self.schedule.integral(t))

    def drift(self, t, x):
        return -0.5 * self.schedule.beta(t) * x

    def prior_std(self):
        return 1.0


class VPSDE(AbstractBetaSDE):
    """Variance-preserving SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (DDPM in continuous time).

    scale = exp(-B/2), std^2 = 1 - exp(-B). With the default linear schedule (beta_min=0.1,
    beta_max=20) this is exactly Song et al. (2021)'s VP SDE.
    """

    def std(self, t):
        return jnp.sqrt(-jnp.expm1(-self.schedule.integral(t)))

    def diffusion(self, t):
        return jnp.sqrt(self.schedule.beta(t))

    def _integral_at_noise_level(self, level):
        return jnp.log1p(level**2)


class SubVPSDE(AbstractBetaSDE):
    """Sub-VP SDE: dx = -beta x / 2 dt + sqrt(beta (1 - exp(-2B))) dw (Song et al. 2021, eq. 11).

    scale = exp(-B/2), std = 1 - exp(-B) (so the variance is (1 - e^{-B})^2, never above VP's).
    """

    def std(self, t):
        return -jnp.expm1(-self.schedule.integral(t))

    def diffusion(self, t):
        b = self.schedule.integral(t)
        return jnp.sqrt(self.schedule.beta(t) * -jnp.expm1(-2.0 * b))

    def _integral_at_noise_level(self, level):
        return 2.0 * jnp.arcsinh(0.5 * level)


class VESDE(AbstractSDE):
    """Variance-exploding SDE dx = sqrt(d sigma^2 / dt) dw with geometric (log-linear) sigma.

    sigma(t) = sigma_min (sigma_max / sigma_min)^t and g(t) = sigma(t) sqrt(2 log(sigma_max /
    sigma_min)) (Song et al. 2021, eq. 9; SMLD/NCSN in continuous time). Started from x_0 at t = 0 the
    kernel std is sqrt(sigma(t)^2 - sigma_min^2), the exact solution of this SDE; the prior is
    N(0, sigma_max^2 I).
    """

    sigma_min: float = eqx.field(static=True)
    sigma_max: float = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, t0: float = 1e-5,
                 t1: float = 1.0):
        self.sigma_min, self.sigma_max, self.t0, self.t1 = sigma_min, sigma_max, t0, t1

    def __check_init__(self):
        _check(0 < self.sigma_min < self.sigma_max,
               f"VE SDE needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Scalar) -> Array:
        """The geometric sigma(t) = sigma_min (sigma_max / sigma_min)^t that defines g(t).

        Not the kernel's std (that is `std(t)` = `noise_level(t)` = sqrt(sigma(t)^2 - sigma_min^2)).
        """
        return self.sigma_min * jnp.exp(t * self._log_ratio)

    def scale(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def std(self, t):
        return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * t * self._log_ratio))

    def drift(self, t, x):
        return jnp.zeros_like(x)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def noise_level_time(self, level, *, iters=64):
        """Closed form: level^2 = sigma_min^2 (exp(2 t log(sigma_max / sigma_min)) - 1)."""
        level = jnp.asarray(level, dtype=jnp.result_type(float))
        return jnp.log1p((level / self.sigma_min) ** 2) / (2.0 * self._log_ratio)

    def prior_std(self):
        return self.sigma_max
