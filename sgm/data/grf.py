"""Gaussian random fields on a periodic n x n grid, with an exactly known density.

A stationary Gaussian field on a periodic grid has a circulant covariance, diagonal in Fourier
space. With the orthonormal 2-D DFT `F` (`norm="ortho"`), the covariance is

    C = F^H diag(lambda) F,     lambda_k = P(|k|) = A |k|^(-B),

where `k = (k_x, k_y)` runs over the integer wavevectors of the grid (`fftfreq(n) * n`, so the
smallest nonzero |k| is 1) and the k = 0 mode is given the power of the smallest nonzero
wavenumber, P(0) := P(1) = A. Since lambda depends on |k| only, lambda_k = lambda_{-k} and the
field is real. Every pixel has variance mean_k(lambda_k).

Sampling, log-density and entropy all use the same eigenvalues:

    x        = F^H diag(sqrt lambda) F w,            w ~ N(0, I)
    log p(x) = -1/2 sum_k |(F x)_k|^2 / lambda_k - 1/2 sum_k log(2 pi lambda_k)
    H        =  1/2 sum_k log(2 pi e lambda_k)

The amplitude and slope (A, B) of each field are drawn uniformly from ranges and returned as the
conditioning vector, so a conditional model's held-out NLL can be set against the exact entropy,
which no model can beat in expectation.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Float

from sgm.errors import DataError

Seed = int | np.random.Generator

AMPLITUDE_RANGE = (0.5, 2.0)
SLOPE_RANGE = (1.0, 3.0)


def wavenumbers(n: int) -> np.ndarray:
    """|k| on the n x n DFT grid in grid units (integer k_x, k_y in `fftfreq` order), `(n, n)`."""
    if n < 2:
        raise DataError(f"A Gaussian random field needs a grid of at least 2x2, got n={n}.")
    f = np.fft.fftfreq(n, d=1.0 / n)
    return np.hypot(f[:, None], f[None, :])


def spectrum(n: int, amplitude, slope) -> Float[np.ndarray, "*batch n n"]:
    """Covariance eigenvalues lambda_k = A |k|^-B with |0| read as 1; `(..., n, n)` in float64.

    `amplitude` and `slope` broadcast against each other (scalars or arrays of shape `(...)`).
    """
    a = np.asarray(amplitude, dtype=np.float64)[..., None, None]
    b = np.asarray(slope, dtype=np.float64)[..., None, None]
    if np.any(~np.isfinite(a)) or np.any(a <= 0) or np.any(~np.isfinite(b)):
        raise DataError("GRF amplitude must be finite and positive and slope finite.")
    k = np.maximum(wavenumbers(n), 1.0)
    return a * k ** (-b)


def sample_fields(n: int, amplitude, slope, seed: Seed) -> np.ndarray:
    """One field per (A, B) pair: `(..., n, n)` float64, x = F^H sqrt(lambda) F w."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lam = spectrum(n, amplitude, slope)
    w = rng.standard_normal(lam.shape)
    w_hat = np.fft.fft2(w, norm="ortho")
    return np.fft.ifft2(np.sqrt(lam) * w_hat, norm="ortho").real


def sample(
    num: int,
    n: int,
    seed: Seed,
    *,
    amplitude_range: tuple[float, float] = AMPLITUDE_RANGE,
    slope_range: tuple[float, float] = SLOPE_RANGE,
    dtype=np.float32,
) -> tuple[Float[np.ndarray, "num 1 n n"], Float[np.ndarray, "num 2"]]:
    """Draw `num` fields with A ~ U(amplitude_range), B ~ U(slope_range).

    Returns `(x (num, 1, n, n), params (num, 2))`, params holding (A, B) per field. The params are
    rounded to `dtype` before the fields are drawn, so `log_prob(x, *params.T)` is exact for the
    stored values.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    (a_lo, a_hi), (b_lo, b_hi) = amplitude_range, slope_range
    if not 0 < a_lo <= a_hi or not b_lo <= b_hi:
        raise DataError(
            f"GRF ranges must satisfy 0 < A_lo <= A_hi and B_lo <= B_hi, got amplitude_range="
            f"{amplitude_range}, slope_range={slope_range}."
        )
    params = np.stack([rng.uniform(a_lo, a_hi, num), rng.uniform(b_lo, b_hi, num)], axis=1)
    params = params.astype(dtype)
    x = sample_fields(n, params[:, 0], params[:, 1], rng)
    return x[:, None].astype(dtype), params


def log_prob(
    x: Float[np.ndarray, "*batch n n"], amplitude, slope
) -> Float[np.ndarray, "*batch"]:
    """Exact log-density (nats) of fields `x` `(..., n, n)` with parameters broadcasting to `(...)`.

        log p(x) = -1/2 sum_k |x_hat_k|^2 / lambda_k - 1/2 sum_k log(2 pi lambda_k),
        x_hat = fft2(x, norm="ortho")
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise DataError(f"GRF log_prob expects square fields of shape (..., n, n), got {x.shape}.")
    lam = spectrum(x.shape[-1], amplitude, slope)
    x_hat = np.fft.fft2(x, norm="ortho")
    quad = np.sum(np.abs(x_hat) ** 2 / lam, axis=(-2, -1))
    return -0.5 * quad - 0.5 * np.sum(np.log(2.0 * math.pi * lam), axis=(-2, -1))


def entropy(amplitude, slope, n: int) -> np.ndarray:
    """Differential entropy (nats per field) H = 1/2 sum_k log(2 pi e lambda_k); shape `(...)`."""
    lam = spectrum(n, amplitude, slope)
    return 0.5 * np.sum(np.log(2.0 * math.pi * math.e * lam), axis=(-2, -1))


def covariance(n: int, amplitude: float, slope: float) -> np.ndarray:
    """Dense covariance `(n*n, n*n)` of the row-major flattened field (small grids only).

    C[i, j] = c(r_i - r_j mod n) with c = ifft2(lambda) (the circulant kernel).
    """
    kernel = np.fft.ifft2(spectrum(n, amplitude, slope)).real
    r = np.arange(n)
    dy = (r[:, None, None, None] - r[None, None, :, None]) % n
    dx = (r[None, :, None, None] - r[None, None, None, :]) % n
    return kernel[dy, dx].reshape(n * n, n * n)
