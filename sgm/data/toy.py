"""Two-dimensional toy distributions, generated on the fly from a seed.

The definitions follow the ones common in the flow and diffusion literature (Grathwohl et al.,
"FFJORD", 2019), with every draw coming from a `numpy.random.Generator` so that a seed fixes the
data. Two of them have a density known in closed form:

    eight_gaussians   p(x) = 1/8 sum_j N(x; c_j / sqrt 2, (0.5 / sqrt 2)^2 I),
                      c_j = 4 (+-1, 0), 4 (0, +-1), 4 (+-1/sqrt 2, +-1/sqrt 2)
    checkerboard      p(x) = 1/32 on 8 squares of side 2 inside [-4, 4)^2, 0 elsewhere

and expose `log_prob(name, x)` and `entropy(name)` (nats). Moons, swiss roll and circles have no
closed-form density (they are noisy curves) and expose neither.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from jaxtyping import Float
from scipy.special import logsumexp

from sgm.errors import DataError

Seed = int | np.random.Generator

_SQRT2 = math.sqrt(2.0)
#: component standard deviation of eight_gaussians: 0.5 N(0, I) divided by sqrt 2
EIGHT_GAUSSIANS_STD = 0.5 / _SQRT2


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def eight_gaussians_mixture() -> tuple[np.ndarray, np.ndarray, float]:
    """The mixture behind `eight_gaussians`: `(weights (8,), means (8, 2), std)` (isotropic)."""
    s = 1.0 / _SQRT2
    centres = 4.0 * np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=np.float64
    )
    return np.full(8, 1.0 / 8.0), centres / _SQRT2, EIGHT_GAUSSIANS_STD


def moons(n: int, seed: Seed) -> np.ndarray:
    """Two interleaved half circles with Gaussian noise 0.1, scaled by 2 and shifted by (-1, -0.2).

    The angle along each half circle is uniform on [0, pi] (scikit-learn's `make_moons` spaces it
    evenly instead); the half circle of each point is a fair coin.
    """
    rng = _rng(seed)
    t = rng.uniform(0.0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], axis=1) + 0.1 * rng.standard_normal((n, 2))
    return 2.0 * pts + np.array([-1.0, -0.2])


def eight_gaussians(n: int, seed: Seed) -> np.ndarray:
    """Equal mixture of 8 Gaussians on a circle: x = (0.5 z + c_j) / sqrt 2, z ~ N(0, I)."""
    rng = _rng(seed)
    _, means, std = eight_gaussians_mixture()
    j = rng.integers(0, 8, n)
    return means[j] + std * rng.standard_normal((n, 2))


def checkerboard(n: int, seed: Seed) -> np.ndarray:
    """Uniform on the 8 "black" squares of a 4x4 board of side-2 squares covering [-4, 4)^2.

        x1 ~ U[-2, 2),  x2 ~ U[0, 1) - 2 B + (floor(x1) mod 2),  B ~ Bernoulli(1/2),  x = 2 (x1, x2)
    """
    rng = _rng(seed)
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.mod(np.floor(x1), 2.0)
    return 2.0 * np.stack([x1, x2], axis=1)


def swiss_roll(n: int, seed: Seed) -> np.ndarray:
    """scikit-learn's swiss roll (noise 1.0) projected on its (x, z) plane and divided by 5.

        t ~ 1.5 pi (1 + 2 U[0, 1)),  x = (t cos t, t sin t) + N(0, I),  returned / 5
    """
    rng = _rng(seed)
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return pts / 5.0


def circles(n: int, seed: Seed) -> np.ndarray:
    """Two concentric circles (radii 1 and 0.5, Gaussian noise 0.08), scaled by 3."""
    rng = _rng(seed)
    t = rng.uniform(0.0, 2.0 * math.pi, n)
    radius = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    pts = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return 3.0 * (pts + 0.08 * rng.standard_normal((n, 2)))


_SAMPLERS: dict[str, Callable[[int, Seed], np.ndarray]] = {
    "moons": moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "circles": circles,
}
#: names of the toys, in a fixed order
NAMES: tuple[str, ...] = tuple(_SAMPLERS)
#: the toys whose density is known in closed form
WITH_DENSITY: tuple[str, ...] = ("eight_gaussians", "checkerboard")


def _check_name(name: str, allowed: tuple[str, ...]) -> None:
    if name not in allowed:
        raise DataError(f"Unknown toy {name!r}: expected one of {', '.join(allowed)}.")


def sample(name: str, n: int, seed: Seed = 0, dtype=np.float32) -> Float[np.ndarray, "n 2"]:
    """Draw `n` points `(n, 2)` of the toy `name` from `seed` (an int or a numpy Generator).

    Points are drawn in float64 and cast to `dtype`; for the checkerboard, the rare points that
    rounding pushes onto the wrong side of a square's edge are drawn again, so every sample has a
    finite `log_prob`.
    """
    _check_name(name, NAMES)
    rng = _rng(seed)
    x = _SAMPLERS[name](n, rng).astype(dtype)
    if name == "checkerboard":
        bad = ~np.isfinite(log_prob(name, x))
        while bad.any():
            x[bad] = _SAMPLERS[name](int(bad.sum()), rng).astype(dtype)
            bad = ~np.isfinite(log_prob(name, x))
    return x


def log_prob(name: str, x: Float[np.ndarray, "*batch 2"]) -> Float[np.ndarray, "*batch"]:
    """Exact log-density (nats) of `x` `(..., 2)` under toy `name`; returns `(...)` in float64.

    eight_gaussians: logsumexp over the 8 components. checkerboard: -log 32 on the support,
    -inf outside it.
    """
    _check_name(name, WITH_DENSITY)
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1:] != (2,):
        raise DataError(f"log_prob of {name!r} expects points of shape (..., 2), got {x.shape}.")
    if name == "eight_gaussians":
        weights, means, std = eight_gaussians_mixture()
        sq = np.sum((x[..., None, :] - means) ** 2, axis=-1)  # (..., 8)
        comp = -0.5 * sq / std**2 - math.log(2.0 * math.pi * std**2)
        return logsumexp(comp + np.log(weights), axis=-1)
    u = x / 2.0
    cell = np.floor(u)
    inside = np.all((u >= -2.0) & (u < 2.0), axis=-1) & (np.mod(cell.sum(-1), 2.0) == 0.0)
    return np.where(inside, -math.log(32.0), -np.inf)


@functools.cache
def _eight_gaussians_entropy(order: int = 80) -> float:
    """H = -E log p by tensor Gauss-Hermite quadrature on one component (all 8 are alike by
    symmetry: the mixture is invariant under the rotations that permute its components)."""
    nodes, w = np.polynomial.hermite_e.hermegauss(order)  # weight exp(-z^2 / 2)
    w = w / w.sum()
    _, means, std = eight_gaussians_mixture()
    z = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), axis=-1).reshape(-1, 2)
    weights = np.outer(w, w).reshape(-1)
    return float(-np.sum(weights * log_prob("eight_gaussians", means[0] + std * z)))


def entropy(name: str) -> float:
    """Differential entropy (nats) of toy `name`: ln 32 for the checkerboard, ~2.838 for the
    eight Gaussians (quadrature, accurate to ~1e-10; the components barely overlap, so it is
    close to ln 8 + ln(2 pi e sigma^2))."""
    _check_name(name, WITH_DENSITY)
    if name == "checkerboard":
        return math.log(32.0)
    return _eight_gaussians_entropy()
