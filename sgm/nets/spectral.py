"""Spectral convolution: channel mixing in Fourier space, a global linear filter for periodic fields.

A 3x3 convolution sees a few pixels; a filter whose gain jumps between neighbouring wavenumbers
(a band-pass, the low-pass of an observation) has a kernel as wide as the grid and cannot be built
from a few of them. On a periodic grid the Fourier transform diagonalises every shift-equivariant
linear map, so such a filter is one multiplication per mode (Li et al., "Fourier Neural Operator for
Parametric Partial Differential Equations", 2021):

    out_o = irfft2( sum_i W_oi(k) rfft2(x_i)(k) ),   W_oi(k) = 0 for |k_x| or |k_y| > modes,

with the orthonormal transform (`norm="ortho"`), so a unit weight passes a mode unchanged. The
weights of the kept modes are learned (real and imaginary parts as float32 arrays). The layer is
equivariant to every circular shift of its input, like a circular convolution.

The FFT runs in float32 whatever the compute dtype; the result is cast back to the input's dtype.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sgm.errors import ConfigError
from sgm.nets.embeddings import Image, Key


def kept_rows(h: int, modes: int) -> np.ndarray:
    """Indices of the `rfft2` rows with |k_y| <= modes (all rows when that covers the grid)."""
    if 2 * modes + 1 >= h:
        return np.arange(h)
    return np.concatenate([np.arange(modes + 1), np.arange(h - modes, h)])


class SpectralConv(eqx.Module):
    """Learned per-mode channel mixing `(c_in, h, w) -> (c_out, h, w)` of the modes |k| <= `modes`.

    Arguments (constructor):
        c_in, c_out: channels in and out.
        size: the `(h, w)` grid the layer runs on.
        modes: wavenumbers kept along each axis (|k_x|, |k_y| <= modes); at most the grid's
            Nyquist frequency is used.
        key: initialisation key.
    """

    real: Float[Array, "o i r c"]
    imag: Float[Array, "o i r c"]
    size: tuple[int, int] = eqx.field(static=True)
    rows: tuple[int, ...] = eqx.field(static=True)
    cols: int = eqx.field(static=True)

    def __init__(self, c_in: int, c_out: int, size: tuple[int, int], modes: int, *, key: Key):
        if modes < 1 or c_in < 1 or c_out < 1:
            raise ConfigError(f"SpectralConv needs positive channels and modes, got c_in={c_in}, "
                              f"c_out={c_out}, modes={modes}.")
        h, w = size
        self.size = (int(h), int(w))
        self.rows = tuple(int(r) for r in kept_rows(h, modes))
        self.cols = min(modes, w // 2) + 1
        shape = (c_out, c_in, len(self.rows), self.cols)
        # each mode starts as a random channel mixing of unit gain on average, as a 1x1 conv would
        bound = 1.0 / math.sqrt(2 * c_in)
        kr, ki = jax.random.split(key)
        self.real = jax.random.uniform(kr, shape, minval=-bound, maxval=bound)
        self.imag = jax.random.uniform(ki, shape, minval=-bound, maxval=bound)

    def __call__(self, x: Image) -> Image:
        if x.shape[1:] != self.size:
            raise ValueError(f"SpectralConv was built for {self.size} grids, got {x.shape[1:]}.")
        rows = jnp.asarray(self.rows)
        xf = jnp.fft.rfft2(x.astype(jnp.float32), norm="ortho")[:, rows, : self.cols]
        weight = self.real.astype(jnp.float32) + 1j * self.imag.astype(jnp.float32)
        yf = jnp.einsum("oirc,irc->orc", weight, xf)
        h, w = self.size
        full = jnp.zeros((weight.shape[0], h, w // 2 + 1), yf.dtype).at[:, rows, : self.cols].set(yf)
        return jnp.fft.irfft2(full, s=(h, w), norm="ortho").astype(x.dtype)
