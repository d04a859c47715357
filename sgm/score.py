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
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .errors import ConfigError
from .sde import AbstractSDE

PREDICTIONS = ("eps", "score", "x0", "v", "edm")


class ScoreModel(eqx.Module):
    """Turns `net(t, x_in, **cond)` into `score(t, x, **cond)` on ONE sample for `sde`.

    Arguments:
        net: backbone, called as `net(t, x_in, key=..., **cond)` with `x_in` shaped like `x`.
        sde: the forward SDE whose marginals define a(t), s(t).
        prediction: what the network predicts: "eps", "score", "x0", "v" or "edm".
        sigma_data: data standard deviation used by the input scaling and EDM weights.
    """

    net: eqx.Module
    sde: AbstractSDE
    prediction: str = eqx.field(static=True, default="eps")
    sigma_data: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"unknown score parameterisation {self.prediction!r}; expected one of "
                              f"{', '.join(PREDICTIONS)}")

    def __call__(self, t, x, *, key=None, **cond):
        a, s = self.sde.scale(t), self.sde.std(t)
        c_in = jax.lax.rsqrt(a**2 * self.sigma_data**2 + s**2)
        kw = dict(cond) if key is None else dict(cond, key=key)
        out = self.net(t, c_in * x, **kw)
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
    """Classifier-free guidance (Ho & Salimans 2022) for a label-conditioned score model.

        score = (1 + w) score(t, x | label) - w score(t, x | null)

    With `label` set it is a plain `score(t, x)` every sampler accepts; with `label=None` the label
    is given per call, `score(t, x, label=...)` (per-sample labels through the samplers' `cond`).
    `null_label` is the extra "no label" index the network was trained with (label dropout).
    """

    model: eqx.Module
    label: jax.Array | None
    null_label: int = eqx.field(static=True)
    weight: float = 1.0

    def __call__(self, t, x, label=None):
        label = self.label if label is None else label
        cond = self.model(t, x, label=label)
        if isinstance(self.weight, (int, float)) and self.weight == 0:
            return cond
        uncond = self.model(t, x, label=jnp.asarray(self.null_label))
        return (1.0 + self.weight) * cond - self.weight * uncond


def tweedie_x0(score, sde: AbstractSDE, t, x):
    """Posterior mean E[x_0 | x_t] = (x_t + s^2 score(t, x_t)) / a (Tweedie's formula)."""
    a, s = sde.scale(t), sde.std(t)
    return (x + s**2 * score(t, x)) / a
