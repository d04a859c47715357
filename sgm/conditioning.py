"""What a network is conditioned on: the kind of condition, its null for classifier-free guidance,
and how a batch's raw conditions become the keywords every network takes.

Networks (`sgm.nets`) take `label=`, `param=` or `image=`; a `Conditioning` turns a batch of raw
conditions (integer labels, parameter vectors, conditioning images) into that keyword dict and,
during training for guidance, replaces each by the null with probability `label_dropout`
(Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .errors import ConfigError

Key = PRNGKeyArray


def drop_labels(
    key: Key, labels: Int[Array, "*batch"], p: float, num_classes: int
) -> Int[Array, "*batch"]:
    """Replace each label independently by the null label `num_classes` with probability `p`.

    Used to train one network both conditionally and unconditionally for classifier-free guidance
    (Ho & Salimans 2022).

    Arguments:
        key: random key.
        labels: integer labels of any shape, values in `[0, num_classes]`.
        p: drop probability in [0, 1].
        num_classes: number of real classes; the null label is `num_classes`.

    Returns:
        labels of the same shape and dtype.
    """
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"label drop probability must lie in [0, 1], got {p}.")
    labels = jnp.asarray(labels)
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def drop_images(
    key: Key, images: Float[Array, "batch c h w"], p: float
) -> Float[Array, "batch c h w"]:
    """Replace each conditioning image independently by the null image (all NaN) with probability
    `p`: classifier-free guidance for image conditions (Ho & Salimans 2022)."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"image drop probability must lie in [0, 1], got {p}.")
    drop = jax.random.bernoulli(key, p, images.shape[:1]).reshape(-1, *([1] * (images.ndim - 1)))
    return jnp.where(drop, jnp.nan, images)


class Conditioning(eqx.Module):
    """What a network is conditioned on, and how a batch's raw conditions become its keywords.

    `kind` is "label" (integer class labels, the null label `num_classes` for classifier-free
    guidance), "param" (float parameter vectors), "image" (conditioning images, standardised as
    `(image - image_shift) / image_scale`; an all-NaN image is the null) or None (unconditional).
    Called on a batch of raw conditions it returns the keyword dict the networks take
    (`{"label": ...}`, `{"param": ...}`, `{"image": ...}` or `{}`); with a `key` and
    `label_dropout > 0` each label or image is replaced by the null with that probability
    (training for guidance).

    What callers need to know of the kind they ask through `keyword`, `uses_label`,
    `uses_param`, `uses_image`, `guidable` and `describe`, never by comparing `kind`.
    """

    kind: str | None = eqx.field(static=True, default=None)
    num_classes: int | None = eqx.field(static=True, default=None)
    label_dropout: float = eqx.field(static=True, default=0.0)
    image_shift: float = eqx.field(static=True, default=0.0)
    image_scale: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.kind not in (None, "label", "param", "image"):
            raise ConfigError(f"unknown conditioning {self.kind!r}; expected 'label', 'param', "
                              "'image' or None.")
        if self.kind == "label" and not self.num_classes:
            raise ConfigError("label conditioning needs the number of classes.")
        if not (math.isfinite(self.image_shift) and math.isfinite(self.image_scale)
                and self.image_scale > 0):
            raise ConfigError(f"image conditioning needs a finite shift and a positive scale, got "
                              f"{self.image_shift} and {self.image_scale}.")

    @property
    def keyword(self) -> str | None:
        """The keyword the networks take the condition by ("label", "param", "image"), or None
        for an unconditional model."""
        return self.kind

    @property
    def uses_label(self) -> bool:
        """Whether the network takes `label=` (built with `num_classes`)."""
        return self.kind == "label"

    @property
    def uses_param(self) -> bool:
        """Whether the network takes `param=` (built with the parameter vector's length)."""
        return self.kind == "param"

    @property
    def uses_image(self) -> bool:
        """Whether the network takes `image=` (built with the conditioning image's channels)."""
        return self.kind == "image"

    @property
    def guidable(self) -> bool:
        """Whether the condition has a null (labels: `num_classes`; images: all NaN), so that one
        network is both conditional and unconditional and classifier-free guidance applies."""
        return self.kind in ("label", "image")

    def describe(self, cond) -> list[str] | Float[Array, "batch c h w"] | None:
        """Captions of a batch of raw conditions for a figure: "label 3" per label, "(0.5, 2)"
        per parameter vector (2 significant digits), the conditioning images themselves
        `(N, C', h, w)` (drawn, not written); None for an unconditional model or no `cond`."""
        if self.kind is None or cond is None:
            return None
        if self.kind == "label":
            return [f"label {int(c)}" for c in cond]
        if self.kind == "param":
            return ["(" + ", ".join(f"{v:.2g}" for v in np.ravel(c)) + ")" for c in cond]
        return cond  # images

    def __call__(self, cond, *, key: Key | None = None) -> dict:
        if self.kind is None or cond is None:
            return {}
        drop = key is not None and self.label_dropout > 0
        if self.kind == "label" and drop:
            cond = drop_labels(key, cond, self.label_dropout, self.num_classes)
        if self.kind == "image":
            cond = (jnp.asarray(cond, jnp.float32) - self.image_shift) / self.image_scale
            if drop:
                cond = drop_images(key, cond, self.label_dropout)
        return {self.kind: cond}
