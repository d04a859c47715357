"""Super-resolution of Gaussian random fields with an exact conditional density.

A field x ~ N(0, C) on a periodic n x n grid (`sgm.data.grf`: C = F^H diag(lambda) F, lambda_k =
A |k|^-B) is observed through a low-pass filter plus white noise of known variance:

    y = L x + e,    L = F^H diag(m) F,  m_k = 1 if |k| <= cutoff else 0,    e ~ N(0, s^2 I).

Every operator is diagonal in the orthonormal Fourier basis, so each mode is an independent
Gaussian problem, y_k = m_k x_k + e_k, and the posterior is exact (e.g. Bishop, PRML, 2.3.3):

    x | y ~ N(mu, F^H diag(v) F),   mu = F^H diag(g) F y,
    g_k = m_k lambda_k / (lambda_k + s^2),   v_k = lambda_k (1 - m_k lambda_k / (lambda_k + s^2)).

Kept modes are shrunk towards the observation, the others keep their prior variance. Hence

    log p(x | y) = -1/2 sum_k |(F (x - mu))_k|^2 / v_k - 1/2 sum_k log(2 pi v_k),
    H(x | y)     =  1/2 sum_k log(2 pi e v_k)                 (the same for every y),

which a conditional model's held-out NLL can be held against, as the unconditional GRF's is.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Float

from sgm.data import grf
from sgm.errors import DataError

AMPLITUDE, SLOPE = 1.0, 2.0  # the prior P(k) = A |k|^-B of every field
CUTOFF = 3.0  # |k| <= CUTOFF is observed
NOISE_STD = 0.1  # per-pixel standard deviation s of the white observation noise


def _check(n: int, cutoff: float, noise_std: float) -> None:
    if not (math.isfinite(cutoff) and cutoff >= 0):
        raise DataError(f"super-resolution cutoff={cutoff} is invalid: expected |k| >= 0.")
    if not (math.isfinite(noise_std) and noise_std > 0):
        raise DataError(f"super-resolution noise_std={noise_std} is invalid: expected s > 0.")


def lowpass_mask(n: int, cutoff: float = CUTOFF) -> Float[np.ndarray, "n n"]:
    """m_k = 1 for the observed modes |k| <= cutoff, else 0 (symmetric in k, so L x is real)."""
    return (grf.wavenumbers(n) <= cutoff).astype(np.float64)


def posterior_modes(n: int, *, amplitude: float = AMPLITUDE, slope: float = SLOPE,
                    cutoff: float = CUTOFF, noise_std: float = NOISE_STD):
    """`(g, v)`: per-mode gain of the posterior mean and posterior variance, each `(n, n)`."""
    _check(n, cutoff, noise_std)
    lam = grf.spectrum(n, amplitude, slope)
    m = lowpass_mask(n, cutoff)
    shrink = m * lam / (lam + noise_std**2)
    return shrink, lam * (1.0 - shrink)


def observe(x: Float[np.ndarray, "*batch n n"], rng: np.random.Generator, *,
            cutoff: float = CUTOFF, noise_std: float = NOISE_STD) -> np.ndarray:
    """y = L x + e: the low-pass part of each field plus white noise, float64 `(..., n, n)`."""
    x = np.asarray(x, dtype=np.float64)
    _check(x.shape[-1], cutoff, noise_std)
    low = np.fft.ifft2(lowpass_mask(x.shape[-1], cutoff) * np.fft.fft2(x, norm="ortho"),
                       norm="ortho").real
    return low + noise_std * rng.standard_normal(x.shape)


def posterior_mean(y: Float[np.ndarray, "*batch n n"], **spec) -> np.ndarray:
    """E[x | y] = F^H diag(g) F y, `(..., n, n)` float64.

    `spec` (here and below): the keywords of `posterior_modes` (amplitude, slope, cutoff,
    noise_std), defaults the module's constants.
    """
    y = np.asarray(y, dtype=np.float64)
    g, _ = posterior_modes(y.shape[-1], **spec)
    return np.fft.ifft2(g * np.fft.fft2(y, norm="ortho"), norm="ortho").real


def posterior_sample(y: Float[np.ndarray, "*batch n n"], rng: np.random.Generator,
                     **spec) -> np.ndarray:
    """One exact draw of x | y per observation: mu + F^H sqrt(v) F w, w ~ N(0, I)."""
    y = np.asarray(y, dtype=np.float64)
    _, v = posterior_modes(y.shape[-1], **spec)
    w_hat = np.fft.fft2(rng.standard_normal(y.shape), norm="ortho")
    return posterior_mean(y, **spec) + np.fft.ifft2(np.sqrt(v) * w_hat, norm="ortho").real


def log_prob(x: Float[np.ndarray, "*batch n n"], y: Float[np.ndarray, "*batch n n"],
             **spec) -> Float[np.ndarray, "*batch"]:
    """Exact log p(x | y) in nats for fields `x` and their observations `y` (`(..., n, n)`)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape[-2:] != y.shape[-2:] or x.shape[-1] != x.shape[-2]:
        raise DataError(f"super-resolution log_prob expects square fields and observations of "
                        f"one shape (..., n, n), got {x.shape} and {y.shape}.")
    _, v = posterior_modes(x.shape[-1], **spec)
    r_hat = np.fft.fft2(x - posterior_mean(y, **spec), norm="ortho")
    quad = np.sum(np.abs(r_hat) ** 2 / v, axis=(-2, -1))
    return -0.5 * quad - 0.5 * np.sum(np.log(2.0 * math.pi * v))


def entropy(n: int, **spec) -> float:
    """Conditional differential entropy H(x | y) in nats per field (independent of y)."""
    _, v = posterior_modes(n, **spec)
    return float(0.5 * np.sum(np.log(2.0 * math.pi * math.e * v)))


def sample(num: int, n: int, rng: np.random.Generator, *, dtype=np.float32,
           **spec) -> tuple[Float[np.ndarray, "num 1 n n"], Float[np.ndarray, "num 1 n n"]]:
    """`num` pairs: fields x ~ N(0, C) and their observations y, each `(num, 1, n, n)`."""
    amplitude, slope = spec.get("amplitude", AMPLITUDE), spec.get("slope", SLOPE)
    x = grf.sample_fields(n, np.full(num, amplitude), np.full(num, slope), rng)
    y = observe(x, rng, cutoff=spec.get("cutoff", CUTOFF),
                noise_std=spec.get("noise_std", NOISE_STD))
    return x[:, None].astype(dtype), y[:, None].astype(dtype)
