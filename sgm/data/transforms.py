"""The one map between data units and the network's space, with its change-of-variables term.

Discrete data (integers k in 0..L-1; L = 256 for 8-bit images, 17 for the digits) are dequantised
uniformly and mapped affinely onto [lo, hi) = [-1, 1):

    x = lo + (hi - lo) (k + u) / L,   u ~ U[0, 1)^D       (Uria et al. 2013; Ho et al. 2019)

so that log P(k) >= E_u[log p_x(x)] + D log((hi - lo) / L): `Preprocess.log_det` is that constant
and a model log-density plus `log_det` is the dequantisation bound in data units.

Any density q(u) on the unit bin [0, 1)^D gives the variational bound (`Preprocess.dequantise`)

    log P(k) >= E_q[log p_x(x) - log q(u)] + D log((hi - lo) / L),

u measured in levels (data units), so the uniform q = 1 is the line above. "tn" is the truncated
normal of Zheng et al. (2023, i-DODE, Sec. 4): per dimension N(1/2, s^2) cut to [0, 1), with

    log q(u) = sum_d [-(u_d - 1/2)^2 / (2 s^2) - log(s sqrt(2 pi)) - log Z],  Z = erf(1 / (2 sqrt(2) s)).

Against a density constant on each bin it loses KL(q || U) = -H(q) per dimension (`tn_kl`); it
gains where the model's density peaks inside the bins.

Continuous data are standardised with a mean and standard deviation fitted on the training set,
x = (y - mean) / std, and log p_y(y) = log p_x(x) - sum log std (`log_det` again).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sgm.errors import ConfigError, DataError, check_choice

#: dequantisation densities q(u) on the unit bin (see the module docstring)
DEQUANTS = ("uniform", "tn")


def truncated_normal_offsets(key, shape: tuple[int, ...], std, *, sample_ndim: int | None = None):
    """Offsets u ~ N(1/2, std^2) truncated to [0, 1) per element, and log q(u) summed per sample.

    Arguments:
        key: PRNG key.
        shape: shape of the batch of offsets `(B, *sample_shape)`.
        std: the normal's standard deviation in levels (bins have width 1), > 0.
        sample_ndim: trailing axes of one sample (default all but the first).

    Returns `(u, log_q)` with `u` of `shape` and `log_q` of shape `shape[:-sample_ndim]`.
    """
    half = 0.5 / std
    z = jax.random.truncated_normal(key, -half, half, shape)
    u = jnp.clip(0.5 + std * z, 0.0, jnp.nextafter(jnp.float32(1.0), jnp.float32(0.0)))
    log_z = jnp.log(jax.scipy.special.erf(half / math.sqrt(2.0)))
    log_q = -0.5 * z ** 2 - jnp.log(std * math.sqrt(2.0 * math.pi)) - log_z
    nd = len(shape) - 1 if sample_ndim is None else sample_ndim
    return u, log_q.sum(tuple(range(len(shape) - nd, len(shape))))


def tn_kl(std: float) -> float:
    """KL(q || U[0, 1)) = -H(q) per dimension of the truncated normal N(1/2, std^2) on [0, 1).

    H = log(sqrt(2 pi e) std Z) - (b phi(b) - a phi(a)) / (2 Z) with b = -a = 1 / (2 std).
    """
    b = 0.5 / std
    z = math.erf(b / math.sqrt(2.0))
    phi = math.exp(-0.5 * b * b) / math.sqrt(2.0 * math.pi)
    return -(math.log(math.sqrt(2.0 * math.pi * math.e) * std * z) - b * phi / z)


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
        return self.dequantise(key, x)[0]

    def dequantise(self, key, x, *, dequant: str = "uniform", std: float | None = None):
        """A batch `(B, *shape)` to model space, with log q(u) of each sample's offsets `(B,)`.

        `dequant` names q (`DEQUANTS`): "uniform" (log q = 0) or "tn" (truncated normal of std
        `std` levels, see `truncated_normal_offsets`). Continuous data: log q = 0, no noise.
        The dequantisation bound of each sample in data units is
        log p_x(x) + `log_det` - log q.
        """
        zero = jnp.zeros(x.shape[:1], jnp.float32)
        if self.levels is None:
            x = x.astype(jnp.float32)
            return (x if self.mean is None else (x - self.mean) / self.std), zero
        if dequant == "uniform":
            u, log_q = jax.random.uniform(key, x.shape), zero
        elif dequant == "tn":
            if std is None or not std > 0:
                raise ConfigError(f"truncated-normal dequantisation needs a std > 0 (in levels), got {std}.")
            u, log_q = truncated_normal_offsets(key, x.shape, std)
        else:
            check_choice("dequantisation", dequant, DEQUANTS)
        return self.lo + (self.hi - self.lo) * (x.astype(jnp.float32) + u) / self.levels, log_q

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
