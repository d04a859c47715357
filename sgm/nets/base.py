"""The call contract every score network implements (`MLP`, `UNet`, `DiT`)."""

from __future__ import annotations

import abc

import equinox as eqx
from jaxtyping import Array, Float

from sgm.nets.embeddings import Key, Label, Param, Time


class AbstractScoreNet(eqx.Module):
    """A backbone `f(t, x) -> array like x` on ONE unbatched sample (batch with `jax.vmap`).

    It knows nothing about SDEs: `sgm.score.ScoreModel` turns its output into a score for a given
    SDE and parameterisation. Subclasses fix the shape of `x` and of a conditioning image, and
    are built for at most one kind of condition (`sgm.conditioning.Conditioning`).

    Attributes:
        num_classes: number of classes for label conditioning (the label `num_classes` is the
            null), or None.
        param_dim: length of the parameter vector for parameter conditioning, or None.
    """

    num_classes: eqx.AbstractVar[int | None]
    param_dim: eqx.AbstractVar[int | None]

    @abc.abstractmethod
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
        """Evaluate the network on one sample.

        Arguments:
            t: scalar time.
            x: one sample, of the shape the network was built for (see its class).
            label: scalar int in `[0, num_classes]`; None or `num_classes` is the null label
                (classifier-free guidance).
            param: `(param_dim,)` parameter vector.
            image: conditioning image of the shape the network was built for (see its class),
                concatenated to `x` with a presence flag; an array of NaNs is the null
                (guidance).
            key: dropout key; None means inference (deterministic).

        Returns:
            array of the shape of `x`.
        """
