"""The table of diffrax ODE solvers that the probability-flow sampler and the likelihood share.

Each entry is `name: OdeSolver(make, adaptive, evals_per_step)`: the diffrax solver's constructor,
whether it has an embedded error estimate (and so runs under a PID step-size controller), and the
new vector-field evaluations one step costs (FSAL solvers reuse their last stage). Also what both
share around a solve: the checks of their options (`check_tolerances`, `check_count`,
`check_number`, on Python values, never inside the compiled program), the per-point error norm, and
`failure`/`check_solved`, which report a solve that did not reach its end after it has run (not
from inside the compiled program).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from .errors import ConfigError, NumericalError, check_choice


class OdeSolver(NamedTuple):
    make: Callable[[], diffrax.AbstractSolver]
    adaptive: bool
    evals_per_step: int


ODE_SOLVERS: dict[str, OdeSolver] = {
    "tsit5": OdeSolver(diffrax.Tsit5, True, 6),
    "dopri5": OdeSolver(diffrax.Dopri5, True, 6),
    "dopri8": OdeSolver(diffrax.Dopri8, True, 13),
    "bosh3": OdeSolver(diffrax.Bosh3, True, 3),
    "euler": OdeSolver(diffrax.Euler, False, 1),
    "heun": OdeSolver(diffrax.Heun, False, 2),
    "midpoint": OdeSolver(diffrax.Midpoint, False, 2),
}
#: the adaptive entries (those the likelihood can use)
ADAPTIVE = tuple(name for name, s in ODE_SOLVERS.items() if s.adaptive)
#: how a batch of adaptive solves steps: "batch", one solve with shared steps; "point", a vmapped
#: solve per sample
STEPPING = ("batch", "point")


def check_count(what: str, value) -> int:
    """`value` as an int, or a ConfigError unless it is a positive integer (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_number(what: str, value, *, positive: bool = False) -> None:
    """A ConfigError unless `value` is a finite real number (and > 0 when `positive`). A traced
    value (under the caller's `jax.jit`) passes unchecked: its value is not known here."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = None if isinstance(value, (str, bytes, bool)) else float(value)
    except (TypeError, ValueError):
        v = None
    if v is None or not math.isfinite(v) or (positive and not v > 0):
        expected = "a positive finite number" if positive else "a finite number"
        raise ConfigError(f"{what} must be {expected}, got {value!r}")


def check_tolerances(rtol, atol, max_steps, who: str) -> None:
    """A ConfigError unless the adaptive step control's rtol and atol are positive finite numbers
    and max_steps a positive integer (`who` names the solve: "the likelihood", ...)."""
    check_number(f"{who}'s relative tolerance rtol", rtol, positive=True)
    check_number(f"{who}'s absolute tolerance atol", atol, positive=True)
    check_count(f"{who}'s max_steps", max_steps)


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
    check_choice("ODE solver", name, ODE_SOLVERS)
    return ODE_SOLVERS[name]


#: `failure` codes: the solve reached its end; it ran out of steps; it stopped for another reason
SOLVED, OUT_OF_STEPS, FAILED = 0, 1, 2


def failure(sol: diffrax.Solution) -> jax.Array:
    """The worst outcome of a solve run with `throw=False` (of every solve, when vmapped) as one
    int32: SOLVED, OUT_OF_STEPS or FAILED. For `check_solved`, outside the compiled code.

    Solves run with `throw=False` because diffrax's `throw=True` checks its result with a host
    callback inside the compiled program, and JAX does not keep a program with a host callback in
    its persistent compilation cache: every run would compile every sampler and likelihood again.
    """
    out_of_steps = sol.result == diffrax.RESULTS.max_steps_reached
    code = jnp.where(sol.result == diffrax.RESULTS.successful, SOLVED,
                     jnp.where(out_of_steps, OUT_OF_STEPS, FAILED))
    return jnp.max(code).astype(jnp.int32)


def check_solved(code, what: str, max_steps: int, fix: str) -> None:
    """One sentence for a solve that did not reach its end (`code` from `failure`):
    NumericalError("`what` took more than `max_steps` steps; `fix`"), or, for any other failure
    (non-finite values, a collapsing step), NumericalError naming `what`."""
    code = int(code)
    if code == OUT_OF_STEPS:
        raise NumericalError(f"{what} took more than max_steps={max_steps} steps; {fix}")
    if code != SOLVED:
        raise NumericalError(f"{what} stopped before its end: the solver failed (non-finite values "
                             f"or a collapsing step size); check the model and data for NaN/inf.")
