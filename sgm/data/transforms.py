"""Maps between data units and the network's range, with the log-Jacobians likelihoods need.

Discrete data (integers k in 0..L-1, e.g. L = 256 for 8-bit images, 17 for the digits) are
dequantised uniformly and then mapped affinely to [lo, hi):

    y = (k + u) / L,  u ~ U[0, 1)^D        (Uria et al. 2013; Ho et al., "Flow++", 2019)
    z = lo + (hi - lo) y

so that log P(k) >= E_u[log p_z(z)] + D log(hi - lo) - D log L, the bound `bits_per_dim` reports.

Continuous data are standardised with a mean and standard deviation fitted on the training set,
z = (x - mean) / std, and log p_x(x) = log p_z(z) + `forward_log_det`, where
`forward_log_det = -sum log std` (summed over one sample's elements).

Everything here is plain arithmetic: it works on numpy arrays on the host and on jax arrays
inside `jit` alike, except `dequantize` which draws from a numpy Generator or a jax key.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sgm.errors import DataError


def dequantize(key_or_rng, k, levels: int, dtype=np.float32):
    """Uniform dequantisation y = (k + u) / levels in [0, 1), u ~ U[0, 1) elementwise.

    Args:
        key_or_rng: a `numpy.random.Generator` (returns numpy) or a jax PRNG key (returns jax,
            traceable under `jit`).
        k: integer levels in 0..levels-1, any shape.
        levels: number of levels L.
        dtype: float dtype of the result. Values that rounding would carry up to 1.0 are held
            at the largest float below 1.
    """
    top = np.nextafter(np.asarray(1.0, dtype), np.asarray(0.0, dtype))
    if isinstance(key_or_rng, np.random.Generator):
        k = np.asarray(k)
        u = key_or_rng.random(k.shape)
        return np.minimum(((k + u) / levels).astype(dtype), top)
    import jax
    import jax.numpy as jnp

    k = jnp.asarray(k)
    u = jax.random.uniform(key_or_rng, k.shape, dtype=dtype)
    return jnp.minimum((k.astype(dtype) + u) / levels, top)


def centre(k, levels: int):
    """Deterministic mid-bin value (k + 1/2) / levels, for evaluation without noise."""
    return (k + 0.5) / levels


def quantize(y, levels: int) -> np.ndarray:
    """Inverse of `dequantize`: k = clip(floor(y * levels), 0, levels - 1) as int32 (numpy)."""
    y = np.asarray(y, dtype=np.float64)
    return np.clip(np.floor(y * levels), 0, levels - 1).astype(np.int32)


def to_model(y, lo: float = -1.0, hi: float = 1.0):
    """Affine map of [0, 1] onto the network's range [lo, hi]: z = lo + (hi - lo) y."""
    return lo + (hi - lo) * y


def from_model(z, lo: float = -1.0, hi: float = 1.0):
    """Inverse of `to_model`: y = (z - lo) / (hi - lo)."""
    return (z - lo) / (hi - lo)


def to_model_log_det(num_dims: int, lo: float = -1.0, hi: float = 1.0) -> float:
    """log |det dz/dy| of `to_model` over one sample of `num_dims` elements: D log(hi - lo).

    log p_y(y) = log p_z(z) + D log(hi - lo).
    """
    return num_dims * math.log(hi - lo)


def to_uint8(z, levels: int = 256, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Model output back to integer levels (uint8 when levels <= 256): quantize(from_model(z))."""
    k = quantize(from_model(np.asarray(z, dtype=np.float64), lo, hi), levels)
    return k.astype(np.uint8) if levels <= 256 else k


@dataclasses.dataclass(frozen=True, eq=False)
class Standardizer:
    """z = (x - mean) / std with statistics fitted on training data.

    Attributes:
        mean, std: float64 arrays broadcasting against one sample (per-sample shape, or `()` when
            fitted with `per_feature=False`).
        shape: per-sample shape the statistics were fitted on.
    """

    mean: np.ndarray
    std: np.ndarray
    shape: tuple[int, ...]

    def __post_init__(self):
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std))):
            raise DataError("Standardizer statistics hold NaN or inf: expected finite values.")
        if np.any(self.std <= 0):
            raise DataError("Standardizer standard deviations must be positive.")

    @classmethod
    def fit(cls, x, *, per_feature: bool = True) -> Standardizer:
        """Fit on `x` `(N, *shape)`: per element of a sample, or one scalar pair for all of them.

        Elements with zero variance get std 1 (they are left centred, not scaled).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] < 2:
            raise DataError(f"Standardizer.fit needs at least 2 samples, got shape {x.shape}.")
        if not np.all(np.isfinite(x)):
            raise DataError("Data passed to Standardizer.fit hold NaN or inf: expected finite.")
        axis = 0 if per_feature else None
        mean, std = x.mean(axis=axis), x.std(axis=axis)
        std = np.where(std > 0, std, 1.0)
        return cls(np.asarray(mean), np.asarray(std), tuple(x.shape[1:]))

    def forward(self, x):
        """Data units to standardised units."""
        dtype = np.result_type(getattr(x, "dtype", np.float64), np.float32)
        return (x - self.mean.astype(dtype)) / self.std.astype(dtype)

    def inverse(self, z):
        """Standardised units back to data units."""
        dtype = np.result_type(getattr(z, "dtype", np.float64), np.float32)
        return z * self.std.astype(dtype) + self.mean.astype(dtype)

    @property
    def forward_log_det(self) -> float:
        """log |det dz/dx| for one sample: -sum of log std over its elements.

        log p_x(x) = log p_z(forward(x)) + forward_log_det.
        """
        return float(-np.sum(np.broadcast_to(np.log(self.std), self.shape)))
