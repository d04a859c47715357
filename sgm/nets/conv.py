"""`conv2d(layer, x)`: an `eqx.nn.Conv2d` computed channels-last, the layout XLA:CPU loops run fast.

Equinox computes a 2-D convolution channels-first (`NCHW`). XLA:CPU runs that layout slowly inside
a loop body (jax-ml/jax#12868), and a sampler's steps run in `lax.scan` or a diffrax while loop.
`conv2d` computes the same layer (its weight, bias, stride, padding and padding mode, dilation and
groups) channels-last (`NHWC`) between two transposes, with the same `(c, h, w)` in and out, so
modules, checkpoints and results are unchanged up to float rounding. The timings, inside a loop
and outside it, are in docs/results/fashion-mnist.md (`python bench/loop_eval.py`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

#: `jnp.pad` modes of Equinox's non-zero padding modes
_PAD_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect", "REPLICATE": "edge"}


def conv2d(layer: eqx.nn.Conv2d, x: Float[Array, "c h w"]) -> Float[Array, "c_out h_out w_out"]:
    """`layer(x)` for one `(c, h, w)` image, computed in the channels-last layout.

    Equals `layer(x)` up to float rounding for every `eqx.nn.Conv2d` with numeric padding (the
    layers this project builds); string padding ("SAME", "VALID") falls back to `layer(x)`.
    """
    if isinstance(layer.padding, str):
        return layer(x)
    padding = [tuple(p) for p in layer.padding]
    if layer.padding_mode != "ZEROS":
        x = jnp.pad(x, [(0, 0), *padding], _PAD_MODES[layer.padding_mode])
        padding = [(0, 0), (0, 0)]
    out = lax.conv_general_dilated(
        jnp.transpose(x, (1, 2, 0))[None], jnp.transpose(layer.weight, (2, 3, 1, 0)),
        window_strides=layer.stride, padding=padding, rhs_dilation=layer.dilation,
        feature_group_count=layer.groups, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = jnp.transpose(out[0], (2, 0, 1))
    return out if not layer.use_bias else out + layer.bias
