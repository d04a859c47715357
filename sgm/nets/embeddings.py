"""Embeddings shared by every network: time, class label and parameter vectors; conditioning images.

A network turns its conditioning `(t, label, param)` into one vector `emb` of size `dim`:

    emb = MLP_t(features(t)) + E[label] + MLP_p(param)

where `features(t)` are sinusoids of both `s t` (s = `time_scale`, 1000 by default) and `log t`. The
`log t` half keeps very small times apart (t = 1e-5 and t = 1e-3 are 4.6 apart in log t but only
0.001 apart in t), which is where the score of the data changes fastest. The label table has
`num_classes + 1` rows; the last one is the "null" label used for classifier-free guidance (Ho &
Salimans, "Classifier-Free Diffusion Guidance", 2022).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from sgm.errors import ConfigError

# Shared shape aliases for the networks.
Time = Float[ArrayLike, ""]
Label = Int[ArrayLike, ""]
Param = Float[Array, " param_dim"]
Image = Float[Array, "c h w"]
Key = PRNGKeyArray

_LOG_T_MIN = math.log(1e-12)  # t is clipped here so that t = 0 does not give log(0) = -inf


def split_key(key: Key | None, num: int) -> list[Key | None]:
    """Split `key` into `num` keys, or return `num` Nones in inference mode (`key=None`)."""
    if key is None:
        return [None] * num
    return list(jax.random.split(key, num))


def zero_init(layer: eqx.Module) -> eqx.Module:
    """Return `layer` (Linear or Conv) with its weight and bias set to zero."""
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.zeros_like(layer.weight))
    if getattr(layer, "bias", None) is not None:
        layer = eqx.tree_at(lambda m: m.bias, layer, jnp.zeros_like(layer.bias))
    return layer


def time_features(t: Time, dim: int, scale: float = 1000.0) -> Float[Array, " dim"]:
    """Fixed sinusoidal features of `scale * t` (first half) and of `log t` (second half).

    Each half holds `sin(w_k u), cos(w_k u)` with geometric frequencies: `w_k` from 1 down to 1e-4
    for `u = scale * t` (Vaswani et al. 2017; Ho et al. 2020, whose 1000 discrete steps give the
    default scale 1000) and from 1 down to 1e-2 for `u = log t`, so that the lowest frequencies are
    near-linear in `log t` over [1e-12, 1].

    The highest frequency of the first half is `scale` radians per unit of t: a network fed
    sin(1000 t) can vary that fast in t, and the probability-flow ODE of a continuous-time model
    must then take steps short enough to follow it. A smaller scale (say 10) gives a field that is
    smooth in t; the `log t` half still tells small times apart.

    Arguments:
        t: scalar time.
        dim: number of features, a multiple of 4.
        scale: the multiplier of t in the first half (positive).

    Returns:
        `(dim,)` features, each in [-1, 1].
    """
    quarter = dim // 4
    frac = jnp.arange(quarter, dtype=jnp.float32) / max(quarter - 1, 1)
    t = jnp.asarray(t, jnp.float32)
    log_t = jnp.log(jnp.maximum(t, math.exp(_LOG_T_MIN)))
    args = jnp.concatenate([scale * t * 1e-4**frac, log_t * 1e-2**frac])
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)])


class TimeEmbedding(eqx.Module):
    """Time embedding: `MLP(time_features(t, features, scale))` with one SiLU hidden layer of size
    `dim`."""

    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear
    features: int = eqx.field(static=True)
    scale: float = eqx.field(static=True, default=1000.0)

    def __init__(self, dim: int, *, features: int | None = None, scale: float = 1000.0,
                 key: Key):
        features = dim if features is None else features
        if features % 4 != 0 or features < 4:
            raise ConfigError(f"time features must be a positive multiple of 4, got {features}.")
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"the time embedding's scale must be a positive number, got {scale}.")
        k1, k2 = jax.random.split(key)
        self.features, self.scale = features, float(scale)
        self.linear1 = eqx.nn.Linear(features, dim, key=k1)
        self.linear2 = eqx.nn.Linear(dim, dim, key=k2)

    def __call__(self, t: Time) -> Float[Array, " dim"]:
        """Embed a scalar time `t` into a `(dim,)` vector (in the dtype of the weights)."""
        features = time_features(t, self.features, self.scale).astype(self.linear1.weight.dtype)
        return self.linear2(jax.nn.silu(self.linear1(features)))


class ConditionEmbedding(eqx.Module):
    """Sum of the time, label and parameter embeddings; the one vector a network conditions on.

    Arguments (constructor):
        dim: embedding size.
        num_classes: number of classes, or None for no label input; the table gets one extra
            "null" row, index `num_classes`.
        param_dim: length of the parameter vector, or None for no parameter input.
        time_scale: the multiplier of t in the time features (`time_features`' scale).
        key: initialisation key.
    """

    time: TimeEmbedding
    label: eqx.nn.Embedding | None
    param: eqx.nn.MLP | None
    dim: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    param_dim: int | None = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        num_classes: int | None = None,
        param_dim: int | None = None,
        time_scale: float = 1000.0,
        key: Key,
    ):
        if num_classes is not None and num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer or None, got {num_classes}.")
        if param_dim is not None and param_dim < 1:
            raise ConfigError(f"param_dim must be a positive integer or None, got {param_dim}.")
        kt, kl, kp = jax.random.split(key, 3)
        self.dim = dim
        self.num_classes = num_classes
        self.param_dim = param_dim
        self.time = TimeEmbedding(dim, scale=time_scale, key=kt)
        self.label = None if num_classes is None else eqx.nn.Embedding(num_classes + 1, dim, key=kl)
        self.param = (
            None
            if param_dim is None
            else eqx.nn.MLP(param_dim, dim, dim, depth=2, activation=jax.nn.silu, key=kp)
        )

    def __call__(
        self, t: Time, label: Label | None = None, param: Param | None = None
    ) -> Float[Array, " dim"]:
        """Embed `(t, label, param)`; `label=None` means the null label."""
        emb = self.time(t)
        if self.label is None:
            if label is not None:
                raise ValueError("This network was built with num_classes=None; pass label=None.")
        else:
            index = self.num_classes if label is None else jnp.asarray(label, jnp.int32)
            emb = emb + self.label(index)
        if self.param is None:
            if param is not None:
                raise ValueError("This network was built with param_dim=None; pass param=None.")
        else:
            if param is None:
                raise ValueError(
                    f"This network needs `param`, a vector of length {self.param_dim}."
                )
            dtype = self.param.layers[0].weight.dtype  # float32, or the mixed-precision dtype
            emb = emb + self.param(jnp.asarray(param, dtype).reshape(self.param_dim))
        return emb


def image_hw(image_size) -> tuple[int, int]:
    """`(h, w)` from a square size `h` or a pair."""
    h, w = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    return int(h), int(w)


def image_input_channels(cond_channels: int) -> int:
    """Channels a conditioning image adds to the network input: its own and a presence flag."""
    return cond_channels + 1 if cond_channels else 0


def present_or_null(image: Array) -> tuple[Array, Array]:
    """`(image, 1)` for a conditioning image, `(zeros, 0)` for the null image (any NaN in it).

    The flag tells the network apart the null from an image that happens to be zero.
    """
    null = jnp.any(jnp.isnan(image))
    return jnp.where(null, 0.0, image), jnp.where(null, 0.0, 1.0)


def with_condition_image(net: str, x: Image, image: Image | None, cond_channels: int) -> Image:
    """`x` with the conditioning image and its presence flag concatenated along channels.

    An image smaller than `x` is resized (bilinear) to `x`'s height and width first; an image of
    NaNs is the null condition (classifier-free guidance), entered as zeros with flag 0.
    """
    hw = x.shape[1:]
    if cond_channels:
        if (image is None or image.ndim != 3 or image.shape[0] != cond_channels
                or image.shape[1] > hw[0] or image.shape[2] > hw[1]):
            got = None if image is None else image.shape
            raise ValueError(f"This {net} needs `image` of shape ({cond_channels}, h, w) with "
                             f"h, w at most {tuple(hw)}, got {got}.")
        image, flag = present_or_null(image.astype(x.dtype))
        if image.shape[1:] != hw:
            image = jax.image.resize(image, (cond_channels, *hw), "linear")
        return jnp.concatenate([x, image, jnp.broadcast_to(flag, (1, *hw)).astype(x.dtype)])
    if image is not None:
        raise ValueError(f"This {net} was built with cond_channels=0; pass image=None.")
    return x
