"""From a network's output to a score, for a given SDE.

A backbone (MLP, UNet, DiT) maps `(t, x_in, **conditioning)` to an array shaped like `x` and knows
nothing about noise. `ScoreModel` wraps it with one parameterisation, chosen by its `prediction` field:

    x_t = a x_0 + s eps,   a = sde.scale(t), s = sde.std(t),   score = -eps / s = (a x_0 - x_t) / s^2

- "eps":   the network predicts eps                     (Ho et al. 2020)
- "score": the network predicts the score directly        (Song & Ermon 2019)
- "x0":    the network predicts x_0
- "v":     the network predicts v = a eps - s x_0         (Salimans & Ho 2022)
- "edm":   x_0 = c_skip x + c_out F(c_in x) in the scale-free variable x/a (Karras et al. 2022)

The network input is x_t / sqrt(a^2 sigma_data^2 + s^2) (unit variance when the data has std
sigma_data), so VE's large noise levels reach the network at unit scale.

Mixed precision: with `dtype="bfloat16"` the network runs on bfloat16 copies of its weights and
inputs (made at the call, so the stored parameters, their gradients and the optimiser state stay
float32; equinox's GroupNorm/LayerNorm and attention softmax compute in float32 internally), and
its output is cast back to the dtype of `x` before the parameterisation: the SDE, the loss, the
samplers' and likelihoods' states all stay float32.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .errors import check_choice
from .sde import AbstractSDE

PREDICTIONS = ("eps", "score", "x0", "v", "edm")
DTYPES = ("float32", "bfloat16")  # the network's compute dtype (parameters are float32 either way)


def cast_floats(tree, dtype):
    """Every floating-point array leaf of `tree` cast to `dtype` (integers, keys, statics kept)."""
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


class ScoreModel(eqx.Module):
    """Turns `net(t, x_in, **cond)` into `score(t, x, **cond)` on ONE sample for `sde`.

    Arguments:
        net: backbone, called as `net(t, x_in, key=..., **cond)` with `x_in` shaped like `x`.
        sde: the forward SDE whose marginals define a(t), s(t).
        prediction: what the network predicts: "eps", "score", "x0", "v" or "edm".
        sigma_data: data standard deviation used by the input scaling and EDM weights.
        dtype: the network's compute dtype, "float32" or "bfloat16" (see the module docstring).
    """

    net: eqx.Module
    sde: AbstractSDE
    prediction: str = eqx.field(static=True, default="eps")
    sigma_data: float = eqx.field(static=True, default=1.0)
    dtype: str = eqx.field(static=True, default="float32")

    def __check_init__(self):
        check_choice("score parameterisation", self.prediction, PREDICTIONS)
        check_choice("compute dtype", self.dtype, DTYPES)

    def _net(self, t, x_in, kw):
        """The backbone at `x_in`, computed in `self.dtype`, returned in the dtype of `x_in`."""
        if self.dtype == "float32":
            return self.net(t, x_in, **kw)
        low = jnp.dtype(self.dtype)  # t stays float32: the time features need its precision
        out = cast_floats(self.net, low)(t, x_in.astype(low), **cast_floats(kw, low))
        return out.astype(x_in.dtype)

    def __call__(self, t, x, *, key=None, **cond):
        a, s = self.sde.scale(t), self.sde.std(t)
        c_in = jax.lax.rsqrt(a**2 * self.sigma_data**2 + s**2)
        kw = dict(cond) if key is None else dict(cond, key=key)
        out = self._net(self.sde.network_time(t), c_in * x, kw)
        if self.prediction == "eps":
            return -out / s
        if self.prediction == "score":
            return out
        if self.prediction == "x0":
            return (a * out - x) / s**2
        if self.prediction == "v":
            # x = a x0 + s eps, v = a eps - s x0  =>  eps = (s x + a v) / (a^2 + s^2)
            eps = (s * x + a * out) / (a**2 + s**2)
            return -eps / s
        # EDM preconditioning in the scale-free variable y = x / a with noise level sig = s / a.
        sig = s / a
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sig**2 + sd2)
        c_out = sig * self.sigma_data * jax.lax.rsqrt(sig**2 + sd2)
        x0 = c_skip * (x / a) + c_out * out
        return (a * x0 - x) / s**2


class GuidedScore(eqx.Module):
    """Classifier-free guidance (Ho & Salimans 2022) for a label- or image-conditioned score model.

        score = (1 + w) score(t, x | c) - w score(t, x | null)

    With `label` set it is a plain `score(t, x)` every sampler accepts; with `label=None` the label
    is given per call, `score(t, x, label=...)` (per-sample labels through the samplers' `cond`).
    `null_label` is the extra "no label" index the network was trained with (label dropout). A
    conditioning image comes per call, `score(t, x, image=...)`; its null is an image of NaNs
    (what image dropout trained the network on), and `null_label` may then be None.
    """

    model: eqx.Module
    label: jax.Array | None
    null_label: int | None = eqx.field(static=True)
    weight: float = 1.0

    def __call__(self, t, x, label=None, image=None):
        label = self.label if label is None else label
        given = {k: v for k, v in (("label", label), ("image", image)) if v is not None}
        cond = self.model(t, x, **given)
        if isinstance(self.weight, (int, float)) and self.weight == 0:
            return cond
        null = {"label": jnp.asarray(self.null_label)} if "label" in given else {}
        if image is not None:
            null["image"] = jnp.full_like(image, jnp.nan)
        uncond = self.model(t, x, **null)
        return (1.0 + self.weight) * cond - self.weight * uncond


def tweedie_x0(score, sde: AbstractSDE, t, x):
    """Posterior mean E[x_0 | x_t] = (x_t + s^2 score(t, x_t)) / a (Tweedie's formula)."""
    a, s = sde.scale(t), sde.std(t)
    return (x + s**2 * score(t, x)) / a
