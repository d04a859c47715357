"""Residual MLP for vector data (2-D toys, flattened small images, simulation summaries).

    h_0     = W_in [x, c]
    h_{l+1} = h_l + W_2 Dropout(SiLU(W_1 SiLU(LN(h_l)) + A_l emb))
    out     = W_out SiLU(LN(h_L))          (W_out zero at init)

`emb` is the conditioning embedding of `(t, label, param)` from `embeddings.ConditionEmbedding`,
added inside every block; `c` is an optional conditioning vector concatenated to the input.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sgm.errors import ConfigError
from sgm.nets.base import AbstractScoreNet
from sgm.nets.embeddings import (
    ConditionEmbedding,
    Key,
    Label,
    Param,
    Time,
    image_input_channels,
    present_or_null,
    split_key,
    zero_init,
)


class _ResidualBlock(eqx.Module):
    """One pre-norm residual block with the embedding added between its two linear layers."""

    norm: eqx.nn.LayerNorm
    linear1: eqx.nn.Linear
    emb_proj: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    linear2: eqx.nn.Linear

    def __init__(self, width: int, emb_dim: int, dropout: float, *, key: Key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(width)
        self.linear1 = eqx.nn.Linear(width, width, key=k1)
        self.emb_proj = eqx.nn.Linear(emb_dim, width, key=k2)
        self.dropout = eqx.nn.Dropout(dropout)
        self.linear2 = eqx.nn.Linear(width, width, key=k3)

    def __call__(
        self, h: Float[Array, " width"], emb: Float[Array, " emb"], *, key: Key | None
    ) -> Float[Array, " width"]:
        z = self.linear1(jax.nn.silu(self.norm(h))) + self.emb_proj(jax.nn.silu(emb))
        z = self.dropout(jax.nn.silu(z), key=key, inference=key is None)
        return h + self.linear2(z)


class MLP(AbstractScoreNet):
    """Residual MLP score network `f(t, x) -> (d,)` for vectors `x` of shape `(d,)`.

    Called as every `AbstractScoreNet`, with `x` of `data_dim` numbers in any shape (a `(d,)`
    vector, or e.g. a `(C, H, W)` image, flattened in and reshaped out) and `image` of `cond_dim`
    numbers (flattened).

    Arguments (constructor):
        data_dim: length `d` of the data vector.
        width: hidden width.
        depth: number of residual blocks.
        time_dim: size of the conditioning embedding (a multiple of 4).
        num_classes: number of classes for label conditioning, or None.
        param_dim: length of the parameter vector, or None.
        cond_dim: length of a conditioning vector concatenated to `x`, or None.
        dropout: dropout rate inside the blocks (active only when a key is passed).
        time_scale: the multiplier of t in the time features (`sgm.nets.time_features`).
        key: initialisation key.
    """

    embed: ConditionEmbedding
    linear_in: eqx.nn.Linear
    blocks: list[_ResidualBlock]
    norm_out: eqx.nn.LayerNorm
    linear_out: eqx.nn.Linear
    data_dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    time_dim: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    param_dim: int | None = eqx.field(static=True)
    cond_dim: int | None = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        data_dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        num_classes: int | None = None,
        param_dim: int | None = None,
        cond_dim: int | None = None,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
        key: Key,
    ):
        for name, value in [("data_dim", data_dim), ("width", width), ("depth", depth)]:
            if value < 1:
                raise ConfigError(f"MLP {name} must be a positive integer, got {value}.")
        if cond_dim is not None and cond_dim < 1:
            raise ConfigError(f"MLP cond_dim must be a positive integer or None, got {cond_dim}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"MLP dropout must lie in [0, 1), got {dropout}.")
        ke, ki, ko, *kb = jax.random.split(key, 3 + depth)
        self.data_dim, self.width, self.depth, self.time_dim = data_dim, width, depth, time_dim
        self.num_classes, self.param_dim, self.cond_dim = num_classes, param_dim, cond_dim
        self.dropout = dropout
        self.embed = ConditionEmbedding(
            time_dim, num_classes=num_classes, param_dim=param_dim, time_scale=time_scale, key=ke
        )
        self.linear_in = eqx.nn.Linear(data_dim + image_input_channels(cond_dim or 0), width, key=ki)
        self.blocks = [_ResidualBlock(width, time_dim, dropout, key=k) for k in kb]
        self.norm_out = eqx.nn.LayerNorm(width)
        self.linear_out = zero_init(eqx.nn.Linear(width, data_dim, key=ko))

    def __call__(
        self,
        t: Time,
        x: Float[Array, "..."],
        *,
        label: Label | None = None,
        param: Param | None = None,
        image: Float[Array, "..."] | None = None,
        key: Key | None = None,
    ) -> Float[Array, "..."]:
        shape = x.shape
        if x.size != self.data_dim:
            raise ValueError(f"MLP expects x with {self.data_dim} numbers, got shape {x.shape}.")
        x = x.reshape(-1)
        if self.cond_dim is None:
            if image is not None:
                raise ValueError("This MLP was built with cond_dim=None; pass image=None.")
        else:
            if image is None or jnp.size(image) != self.cond_dim:
                raise ValueError(f"This MLP needs `image` with {self.cond_dim} numbers.")
            image, flag = present_or_null(jnp.asarray(image, x.dtype).reshape(-1))
            x = jnp.concatenate([x, image, flag[None].astype(x.dtype)])
        emb = self.embed(t, label, param)
        h = self.linear_in(x)
        for block, k in zip(self.blocks, split_key(key, self.depth), strict=True):
            h = block(h, emb, key=k)
        return self.linear_out(jax.nn.silu(self.norm_out(h))).reshape(shape)
