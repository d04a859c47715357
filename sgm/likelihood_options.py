"""The options of `sgm.log_likelihood` as small frozen objects, each checked once when it is made.

- `Exact` and `Hutchinson`: how the divergence of the probability-flow field is taken (the
  `divergence` argument), exactly by forward-mode derivatives along basis vectors or by
  Hutchinson's estimator with probes held fixed along the path.
- `StepControl`: how and where the ODE is solved (solver, time variable, shared or per-point
  steps, the PID controller, the start time, devices and a progress meter); the tolerances rtol
  and atol stay arguments of `log_likelihood` itself.

Every field is checked in `__post_init__` (a ConfigError names the field and what it expects), so
an object that exists holds valid settings; fields that need the SDE (the range of `t0`) are
checked by `log_likelihood`. The objects are frozen and hashable, so equal settings compare equal
and reuse one compilation.
"""

from __future__ import annotations

import dataclasses

import diffrax
import jax

from .errors import ConfigError, check_choice
from .ode_solvers import ADAPTIVE, STEPPING, check_count, check_number

#: the likelihood's solvers: "auto" (Dopri5 for VP/SubVP, Tsit5 for VE) or an adaptive one
SOLVERS = ("auto", *ADAPTIVE)
#: the time variables the ODE may be integrated in (see `sgm.likelihood._clock`)
CLOCKS = ("auto", "t", "logt", "logsnr")
#: how a shared-step solve measures its error: each point's RMS, the largest; or the batch's RMS
ERROR_NORMS = ("point", "batch")
#: Hutchinson's probe distributions and the products that apply the Jacobian to them
PROBES = ("rademacher", "gaussian")
PRODUCTS = ("jvp", "vjp")


@dataclasses.dataclass(frozen=True)
class Exact:
    """The exact divergence: sum_i (J e_i)_i by forward-mode derivatives along the basis vectors
    e_i, `chunk` of them at a time (never the whole Jacobian at once). Costs D Jacobian-vector
    products per evaluation for D dimensions.

    Arguments:
        chunk: basis vectors per forward-mode batch (a positive integer).

    Raises:
        ConfigError: `chunk` not a positive integer.
    """

    chunk: int = 128

    def __post_init__(self):
        object.__setattr__(self, "chunk", check_count("the exact divergence's chunk", self.chunk))


@dataclasses.dataclass(frozen=True)
class Hutchinson:
    """Hutchinson's estimate of the divergence, the mean over `probes` probes eps of
    eps^T (dv/dx) eps, each probe drawn once per point and held fixed along the path
    (Hutchinson 1989; Grathwohl et al. 2019). Unbiased for the log-likelihood; needs a PRNG key.

    Arguments:
        probes: the number of probes averaged per point (a positive integer).
        probe: their distribution, "rademacher" (entries +-1) or "gaussian" (standard normal).
        product: "jvp" (forward-mode products J eps) or "vjp" (reverse-mode eps^T J).

    Raises:
        ConfigError: `probes` not a positive integer, or an unknown probe or product.
    """

    probes: int = 1
    probe: str = "rademacher"
    product: str = "jvp"

    def __post_init__(self):
        check_choice("Hutchinson probe", self.probe, PROBES)
        check_choice("Hutchinson product", self.product, PRODUCTS)
        object.__setattr__(self, "probes",
                           check_count("the number of Hutchinson probes", self.probes))


@dataclasses.dataclass(frozen=True)
class StepControl:
    """How and where the likelihood's ODE is solved, beside its tolerances rtol and atol.

    Arguments:
        solver: adaptive diffrax solver: "tsit5", "dopri5", "dopri8", "bosh3" (third order,
            3 evaluations a step), or "auto" (the default): Dopri5 for VP and SubVP, Tsit5 for
            VE (whose flow grows like sigma(t)) and for SubVP on a learned schedule. See `docs/results/defaults.md` for the measurements behind
            this default.
        clock: the time variable of the solve, "t", "logt" or "logsnr" (log sigma(t)). The
            integral is the same; the number of steps is not. "auto" (the default) is "logsnr"
            on a learned schedule (the ODE in the noise level does not depend on the schedule's
            shape) and "t" on every other SDE.
        stepping: "batch" (the default: one solve of the whole batch with shared steps) or
            "point" (every sample its own steps and error control; a vmapped batch of them still
            runs until its slowest sample is done, so it costs that sample's steps for every
            sample).
        error_norm: how a shared-step solve measures its error. "point" (the default): each
            point's RMS, the largest over the batch, so every point meets rtol/atol as its own
            solve would. "batch": the RMS over the whole batch (score_sde's whole-batch solve),
            which controls only the mean: one outlier among B points (a far out-of-sample point,
            say) may carry up to sqrt(B) times its own tolerance; it takes fewer steps. Ignored
            with `stepping="point"`.
        pcoeff, icoeff: the PID controller's proportional and integral coefficients.
        rescale: integrate y = x / m(t), m(t) = sqrt(scale(t)^2 + std(t)^2) (the std at t of
            unit-variance data: 1 for VP, sqrt(1 + sigma^2) for VE), so the state stays O(1) and
            the VE flow's growth with sigma(t) is taken out of what the solver has to track.
            Exact: y's divergence is x's minus D m'/m and log p_x = log p_y - D log m.
        max_steps: the most steps one solve may take.
        t0: start time (default `sde.t0`); `log_likelihood` checks that it lies in (0, t1).
        sharding: optional `jax.sharding.Sharding` of the batch axis to spread the batch over
            devices (`sgm.parallel.batch_sharding(mesh)`); B must divide over them.
        progress_meter: a diffrax progress meter of the solve, e.g.
            `diffrax.TqdmProgressMeter()` (a bar of the fraction of [t0, t1] integrated, one per
            call); None (the default) prints nothing. It does not change the result.

    Raises:
        ConfigError: an unknown solver, clock, stepping or error norm; max_steps not a positive
        integer; pcoeff, icoeff or t0 not a finite number.
    """

    solver: str = "auto"
    clock: str = "auto"
    stepping: str = "batch"
    error_norm: str = "point"
    pcoeff: float = 0.0
    icoeff: float = 1.0
    rescale: bool = True
    max_steps: int = 16384
    t0: float | None = None
    sharding: jax.sharding.Sharding | None = None
    progress_meter: diffrax.AbstractProgressMeter | None = None

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ConfigError(f"likelihood solver must be 'auto' or an adaptive one "
                              f"({', '.join(SOLVERS[1:])}), got {self.solver!r}")
        check_choice("likelihood clock", self.clock, CLOCKS)
        check_choice("likelihood stepping", self.stepping, STEPPING)
        check_choice("likelihood error norm", self.error_norm, ERROR_NORMS)
        object.__setattr__(self, "max_steps",
                           check_count("the likelihood's max_steps", self.max_steps))
        check_number("the PID controller's pcoeff", self.pcoeff)
        check_number("the PID controller's icoeff", self.icoeff)
        if self.t0 is not None:
            check_number("the likelihood's start time t0", self.t0)
