"""The table of diffrax ODE solvers that the probability-flow sampler and the likelihood share.

Each entry is `name: OdeSolver(make, adaptive, evals_per_step)`: the diffrax solver's constructor,
whether it has an embedded error estimate (and so runs under a PID step-size controller), and the
new vector-field evaluations one step costs (FSAL solvers reuse their last stage).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .errors import ConfigError, NumericalError


class OdeSolver(NamedTuple):
    make: Callable[[], diffrax.AbstractSolver]
    adaptive: bool
    evals_per_step: int


ODE_SOLVERS: dict[str, OdeSolver] = {
    "tsit5": OdeSolver(diffrax.Tsit5, True, 6),
    "dopri5": OdeSolver(diffrax.Dopri5, True, 6),
    "dopri8": OdeSolver(diffrax.Dopri8, True, 13),
    "euler": OdeSolver(diffrax.Euler, False, 1),
    "heun": OdeSolver(diffrax.Heun, False, 2),
    "midpoint": OdeSolver(diffrax.Midpoint, False, 2),
}
#: the adaptive entries (those the likelihood can use)
ADAPTIVE = tuple(name for name, s in ODE_SOLVERS.items() if s.adaptive)
#: how a batch of adaptive solves steps: "batch", one solve with shared steps; "point", a vmapped
#: solve per sample
STEPPING = ("batch", "point")


def largest_point_rms(err) -> jax.Array:
    """The step-size controller's norm of a shared-step batch solve: each point's RMS over all its
    components (every leaf of `err` has the batch as its leading axis), the largest over the batch.
    A step is accepted only when every point meets the tolerances, as its own solve would demand;
    diffrax's default, the RMS over the whole batch, controls only the mean (one point far from
    the rest may carry up to sqrt(B) times its own tolerance)."""
    leaves = jax.tree_util.tree_leaves(err)
    batch = leaves[0].shape[0]
    per_point = sum(jnp.sum(jnp.square(leaf).reshape(batch, -1), axis=1) for leaf in leaves)
    size = sum(leaf.size // batch for leaf in leaves)
    return jnp.sqrt(jnp.max(per_point) / size)


def ode_solver(name: str) -> OdeSolver:
    """The entry `name` of `ODE_SOLVERS`, or a ConfigError listing the valid names."""
    if name not in ODE_SOLVERS:
        raise ConfigError(f"unknown ODE solver {name!r}; expected one of {', '.join(ODE_SOLVERS)}")
    return ODE_SOLVERS[name]


@contextlib.contextmanager
def step_limit(what: str, max_steps: int, fix: str) -> Iterator[None]:
    """Turns diffrax's runtime error for a solve that ran out of steps inside the block into one
    sentence: NumericalError("`what` took more than `max_steps` steps; `fix`"). The block must wait
    for its results (`jax.block_until_ready`), since the error is raised when they are computed."""
    try:
        yield
    except eqx.EquinoxRuntimeError as e:
        if "maximum number of solver steps" not in str(e):
            raise
        raise NumericalError(f"{what} took more than max_steps={max_steps} steps; {fix}") from None
