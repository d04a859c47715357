"""Channels-last layers for the UNet: convolutions and group norms in the `(h, w, c)` layout.

Equinox computes a 2-D convolution channels-first (`NCHW`). XLA:CPU runs that layout slowly, most
of all inside a loop body (jax-ml/jax#12868), and a sampler's steps run in `lax.scan` or a diffrax
while loop. The UNet therefore keeps its features channels-last from its first convolution to its
last: `conv_hwc` applies an `eqx.nn.Conv2d` (its weight, bias, stride, padding and padding mode,
dilation and groups) to an `(h, w, c)` array and `group_norm_hwc` an `eqx.nn.GroupNorm`, so the
modules, and the checkpoints that hold them, are the same as channels-first ones and the results
agree up to float rounding. `conv2d` is the one-layer form for `(c, h, w)` images, between two
transposes. The timings are in docs/results/fashion-mnist.md (`python bench/nets.py`,
`python bench/loop_eval.py`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

#: `jnp.pad` modes of Equinox's non-zero padding modes
_PAD_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect", "REPLICATE": "edge"}


def conv_hwc(layer: eqx.nn.Conv2d, x: Float[Array, "h w c"]) -> Float[Array, "h_out w_out c_out"]:
    """`layer` applied to one channels-last image `(h, w, c)`; the result is channels-last too.

    Equals `layer` on the channels-first image up to float rounding, for every `eqx.nn.Conv2d`
    with numeric padding (the layers this project builds).
    """
    if isinstance(layer.padding, str):
        raise ValueError(f"conv_hwc needs numeric padding, got {layer.padding!r}.")
    padding = [tuple(p) for p in layer.padding]
    if layer.padding_mode != "ZEROS":
        x = jnp.pad(x, [*padding, (0, 0)], _PAD_MODES[layer.padding_mode])
        padding = [(0, 0), (0, 0)]
    out = lax.conv_general_dilated(
        x[None], jnp.transpose(layer.weight, (2, 3, 1, 0)),
        window_strides=layer.stride, padding=padding, rhs_dilation=layer.dilation,
        feature_group_count=layer.groups, dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    return out if not layer.use_bias else out + layer.bias[:, 0, 0]


def group_norm_hwc(norm: eqx.nn.GroupNorm, x: Float[Array, "h w c"]) -> Float[Array, "h w c"]:
    """`norm` applied to one channels-last image `(h, w, c)`: as Equinox's, the statistics in at
    least float32 (two passes: the mean, then the mean squared deviation) and the result in `x`'s
    dtype.

    Each statistic is a sum over the pixels per channel (the leading axis of an `(h w, c)` matrix),
    then over the channels of each group: XLA:CPU runs that, and its gradient, about four times
    as fast as one reduction over the pixels and the channels of a group together.
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    h, w, c = x.shape
    size = c // norm.groups
    flat = x.astype(dtype).reshape(h * w, c)
    count = h * w * size

    def per_channel(group_sums):  # (groups,) -> (c,), each group's value on its channels
        return jnp.repeat(group_sums, size, total_repeat_length=c)

    mean = per_channel(jnp.sum(flat, axis=0).reshape(norm.groups, size).sum(axis=1) / count)
    dev = flat - mean
    var = jnp.sum(dev * dev, axis=0).reshape(norm.groups, size).sum(axis=1) / count
    scale = per_channel(lax.rsqrt(var + norm.eps))
    if norm.channelwise_affine:
        out = dev * (scale * norm.weight.astype(dtype)) + norm.bias.astype(dtype)
    else:
        out = dev * scale
    return out.reshape(h, w, c).astype(x.dtype)


def conv2d(layer: eqx.nn.Conv2d, x: Float[Array, "c h w"]) -> Float[Array, "c_out h_out w_out"]:
    """`layer(x)` for one `(c, h, w)` image, computed in the channels-last layout.

    Equals `layer(x)` up to float rounding for every `eqx.nn.Conv2d` with numeric padding; string
    padding ("SAME", "VALID") falls back to `layer(x)`.
    """
    if isinstance(layer.padding, str):
        return layer(x)
    return jnp.transpose(conv_hwc(layer, jnp.transpose(x, (1, 2, 0))), (2, 0, 1))

