"""Diffusion Transformer (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023).

The image is cut into `p x p` patches, each linearly embedded into a token, plus a fixed 2-D
sinusoidal position embedding. Each block conditions on the embedding `c` of `(t, label, param)`
through adaLN-Zero:

    (s1, b1, g1, s2, b2, g2) = W SiLU(c)                       (W zero at init)
    x = x + g1 * Attn(LN(x) * (1 + s1) + b1)
    x = x + g2 * MLP(LN(x) * (1 + s2) + b2)

so that every block is the identity at initialisation. A final adaLN + zero-initialised linear maps
each token back to a patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sgm.errors import ConfigError
from sgm.nets.base import AbstractScoreNet
from sgm.nets.embeddings import (
    ConditionEmbedding,
    Key,
    Label,
    Param,
    Time,
    image_hw,
    image_input_channels,
    split_key,
    with_condition_image,
    zero_init,
)

Tokens = Float[Array, "n width"]


def position_embedding(grid_h: int, grid_w: int, width: int) -> Float[np.ndarray, "n width"]:
    """Fixed 2-D sin/cos position embedding: half the channels encode the row, half the column."""
    quarter = width // 4
    freqs = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        args = pos[:, None] * freqs[None, :]
        parts += [np.sin(args), np.cos(args)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _modulate(x: Tokens, shift: Float[Array, " w"], scale: Float[Array, " w"]) -> Tokens:
    return x * (1.0 + scale) + shift


class _Block(eqx.Module):
    """One transformer block with adaLN-Zero conditioning."""

    norm1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    mlp1: eqx.nn.Linear
    mlp2: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    ada: eqx.nn.Linear

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float, *, key: Key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.LayerNorm(width, use_weight=False, use_bias=False, eps=1e-6)
        biases = dict(use_query_bias=True, use_key_bias=True, use_value_bias=True)
        self.attn = eqx.nn.MultiheadAttention(heads, width, **biases, use_output_bias=True, key=k1)
        self.norm2 = eqx.nn.LayerNorm(width, use_weight=False, use_bias=False, eps=1e-6)
        self.mlp1 = eqx.nn.Linear(width, mlp_ratio * width, key=k2)
        self.mlp2 = eqx.nn.Linear(mlp_ratio * width, width, key=k3)
        self.dropout = eqx.nn.Dropout(dropout)
        self.ada = zero_init(eqx.nn.Linear(width, 6 * width, key=k4))

    def __call__(self, x: Tokens, c: Float[Array, " width"], *, key: Key | None) -> Tokens:
        s1, b1, g1, s2, b2, g2 = jnp.split(self.ada(jax.nn.silu(c)), 6)
        k1, k2 = split_key(key, 2)
        inference = key is None
        h = _modulate(jax.vmap(self.norm1)(x), b1, s1)
        h = self.dropout(self.attn(h, h, h), key=k1, inference=inference)
        x = x + g1 * h
        h = _modulate(jax.vmap(self.norm2)(x), b2, s2)
        h = jax.nn.gelu(jax.vmap(self.mlp1)(h))
        h = jax.vmap(self.mlp2)(self.dropout(h, key=k2, inference=inference))
        return x + g2 * h


class DiT(AbstractScoreNet):
    """Diffusion Transformer `f(t, x) -> (c, h, w)` for channels-first images `(c, h, w)`.

    Called as every `AbstractScoreNet`, with `x` of shape `(channels, h, w)` and `image` of shape
    `(cond_channels, h', w')`, `h' <= h` and `w' <= w` (resized up).

    Arguments (constructor):
        channels: image channels `c`.
        image_size: `h` (square) or `(h, w)`; both must be divisible by `patch`.
        patch: patch side `p`; the sequence has `(h / p) (w / p)` tokens.
        width: token width; a multiple of 4 and of `heads`.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: hidden width of the block MLP over `width`.
        num_classes: number of classes for label conditioning, or None.
        param_dim: length of the parameter vector, or None.
        cond_channels: channels of a conditioning image concatenated to `x` (with a presence
            flag, resized to `x`'s size if smaller) before patching, so every token sees the
            patch of the condition at its own position.
        dropout: dropout rate after attention and in the MLP (active only when a key is passed).
        time_scale: the multiplier of t in the time features (`sgm.nets.time_features`).
        key: initialisation key.
    """

    embed: ConditionEmbedding
    patch_embed: eqx.nn.Linear
    blocks: list[_Block]
    norm_out: eqx.nn.LayerNorm
    ada_out: eqx.nn.Linear
    linear_out: eqx.nn.Linear
    channels: int = eqx.field(static=True)
    image_size: tuple[int, int] = eqx.field(static=True)
    patch: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    param_dim: int | None = eqx.field(static=True)
    cond_channels: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        image_size: int | Sequence[int],
        *,
        patch: int = 2,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        num_classes: int | None = None,
        param_dim: int | None = None,
        cond_channels: int = 0,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
        key: Key,
    ):
        h, w = image_hw(image_size)
        if min(channels, h, w, patch, width, depth, heads, mlp_ratio) < 1 or cond_channels < 0:
            raise ConfigError(
                "DiT sizes (channels, image_size, patch, width, ...) must be positive."
            )
        if h % patch or w % patch:
            raise ConfigError(f"DiT patch={patch} must divide the image size {(h, w)}.")
        if width % 4 or width % heads:
            raise ConfigError(f"DiT width={width} must be a multiple of 4 and of heads={heads}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"DiT dropout must lie in [0, 1), got {dropout}.")
        self.channels, self.image_size, self.patch = channels, (h, w), patch
        self.width, self.depth, self.heads, self.dropout = width, depth, heads, dropout
        self.num_classes, self.param_dim, self.cond_channels = num_classes, param_dim, cond_channels

        ke, kp, ka, ko, *kb = jax.random.split(key, 4 + depth)
        self.embed = ConditionEmbedding(width, num_classes=num_classes, param_dim=param_dim,
                                        time_scale=time_scale, key=ke)
        c_in = channels + image_input_channels(cond_channels)
        self.patch_embed = eqx.nn.Linear(c_in * patch**2, width, key=kp)
        self.blocks = [_Block(width, heads, mlp_ratio, dropout, key=k) for k in kb]
        self.norm_out = eqx.nn.LayerNorm(width, use_weight=False, use_bias=False, eps=1e-6)
        self.ada_out = zero_init(eqx.nn.Linear(width, 2 * width, key=ka))
        self.linear_out = zero_init(eqx.nn.Linear(width, channels * patch**2, key=ko))

    def __call__(
        self,
        t: Time,
        x: Float[Array, "c h w"],
        *,
        label: Label | None = None,
        param: Param | None = None,
        image: Float[Array, "c_cond h w"] | None = None,
        key: Key | None = None,
    ) -> Float[Array, "c h w"]:
        h, w = self.image_size
        p = self.patch
        if x.shape != (self.channels, h, w):
            raise ValueError(f"DiT expects x of shape {(self.channels, h, w)}, got {x.shape}.")
        x = with_condition_image("DiT", x, image, self.cond_channels)
        c = self.embed(t, label, param)

        tokens = einops.rearrange(x, "c (gh p) (gw q) -> (gh gw) (c p q)", p=p, q=p)
        tokens = jax.vmap(self.patch_embed)(tokens)
        tokens = tokens + position_embedding(h // p, w // p, self.width).astype(tokens.dtype)
        for block, k in zip(self.blocks, split_key(key, self.depth), strict=True):
            tokens = block(tokens, c, key=k)
        shift, scale = jnp.split(self.ada_out(jax.nn.silu(c)), 2)
        tokens = _modulate(jax.vmap(self.norm_out)(tokens), shift, scale)
        patches = jax.vmap(self.linear_out)(tokens)
        return einops.rearrange(patches, "(gh gw) (c p q) -> c (gh p) (gw q)", gh=h // p, p=p, q=p)
