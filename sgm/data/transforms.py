"""The one map between data units and the network's space, with its change-of-variables term.

Discrete data (integers k in 0..L-1; L = 256 for 8-bit images, 17 for the digits) are dequantised
uniformly and mapped affinely onto [lo, hi) = [-1, 1):

    x = lo + (hi - lo) (k + u) / L,   u ~ U[0, 1)^D       (Uria et al. 2013; Ho et al. 2019)

so that log P(k) >= E_u[log p_x(x)] + D log((hi - lo) / L): `Preprocess.log_det` is that constant
and a model log-density plus `log_det` is the dequantisation bound in data units.

Continuous data are standardised with a mean and standard deviation fitted on the training set,
x = (y - mean) / std, and log p_y(y) = log p_x(x) - sum log std (`log_det` again).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sgm.errors import DataError


def discrete_log_det(dim: int, levels: int, lo: float = -1.0, hi: float = 1.0) -> float:
    """D log((hi - lo) / levels): log |dx/dy| of y = k + u in [0, levels)^D mapped onto [lo, hi)^D."""
    return dim * math.log((hi - lo) / levels)


class Preprocess(eqx.Module):
    """Raw batch -> model space: dequantise + scale to [lo, hi) (discrete) or standardise.

    Attributes:
        mean, std: arrays broadcasting against one sample (continuous data), or None.
        levels: number of integer levels of discrete data, or None for continuous data.
        lo, hi: the interval discrete data are mapped onto.
    """

    mean: jax.Array | None
    std: jax.Array | None
    levels: int | None = eqx.field(static=True)
    lo: float = eqx.field(static=True, default=-1.0)
    hi: float = eqx.field(static=True, default=1.0)

    @classmethod
    def fit(cls, x_train, *, levels: int | None = None, standardize: bool = True) -> Preprocess:
        """The preprocessing of a training set `(N, *shape)`.

        Discrete data (`levels` set) need no statistics. Continuous data are standardised when
        `standardize`: per coordinate for vectors, with one scalar mean/std for fields and images
        (which keeps their translation structure). Coordinates with zero spread keep std 1.
        """
        if levels is not None:
            return cls(None, None, int(levels))
        if not standardize:
            return cls(None, None, None)
        x = np.asarray(x_train, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] < 2:
            raise DataError(f"standardisation needs at least 2 training samples, got shape {x.shape}.")
        shape = x.shape[1:]
        if len(shape) == 1:
            mean, std = x.mean(0), x.std(0)
        else:
            mean, std = np.full(shape, x.mean()), np.full(shape, x.std())
        std = np.where(std > 0, std, 1.0)
        return cls(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), None)

    def __call__(self, key, x):
        """Data units -> model space (`key` draws the dequantisation noise of discrete data)."""
        if self.levels is not None:
            u = jax.random.uniform(key, x.shape)
            return self.lo + (self.hi - self.lo) * (x.astype(jnp.float32) + u) / self.levels
        x = x.astype(jnp.float32)
        return x if self.mean is None else (x - self.mean) / self.std

    def inverse(self, x):
        """Model space -> data units (a continuous value in [0, levels) for discrete data)."""
        if self.levels is not None:
            return (x - self.lo) / (self.hi - self.lo) * self.levels
        return x if self.mean is None else x * self.std + self.mean

    def to_data(self, x) -> np.ndarray:
        """Model-space samples as data (host numpy): integer levels (uint8 up to 256) if discrete."""
        y = np.asarray(self.inverse(x))
        if self.levels is None:
            return y
        k = np.clip(np.floor(y), 0, self.levels - 1)
        return k.astype(np.uint8 if self.levels <= 256 else np.int32)

    @property
    def clip(self) -> tuple[float, float] | None:
        """The model-space range samples are clipped to: (lo, hi) for discrete data, else None."""
        return None if self.levels is None else (self.lo, self.hi)

    def log_det(self, shape: tuple[int, ...]) -> float:
        """log |d model / d data| of one sample of `shape`, added to model log-densities.

        Discrete data: `discrete_log_det` (the dequantisation bound's constant); continuous data:
        -sum log std; 0 without standardisation.
        """
        if self.levels is not None:
            return discrete_log_det(math.prod(shape), self.levels, self.lo, self.hi)
        if self.std is None:
            return 0.0
        return float(-jnp.sum(jnp.log(jnp.broadcast_to(self.std, shape))))
