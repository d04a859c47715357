"""Score networks: they map `(t, x)` and optional conditioning to an array shaped like `x`.

Every network takes ONE unbatched sample (batch with `jax.vmap`) and knows nothing about SDEs;
`sgm.score` turns its output into a score for a given SDE and parameterisation.

    MLP   vectors `(d,)`                        residual MLP
    UNet  images `(c, h, w)`                    Ho et al. 2020 / Song et al. 2021
    DiT   images `(c, h, w)`                    Peebles & Xie 2023

All implement `AbstractScoreNet`'s call `net(t, x, *, label=None, param=None, image=None,
key=None)`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from sgm.nets.base import AbstractScoreNet
from sgm.nets.conv import conv2d, conv_hwc, group_norm_hwc
from sgm.nets.embeddings import ConditionEmbedding, TimeEmbedding, time_features
from sgm.nets.mlp import MLP
from sgm.nets.transformer import DiT
from sgm.nets.unet import UNet

__all__ = [
    "MLP",
    "AbstractScoreNet",
    "ConditionEmbedding",
    "DiT",
    "TimeEmbedding",
    "UNet",
    "conv2d",
    "conv_hwc",
    "group_norm_hwc",
    "param_count",
    "time_features",
]


def param_count(model: eqx.Module) -> int:
    """Number of trainable scalars: the total size of every floating-point array leaf."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))
