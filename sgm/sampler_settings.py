"""The settings every sampler of the registry takes besides its own options (`SamplerSettings`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class SamplerSettings(NamedTuple):
    """The settings every method of `sgm.sample` shares, as one argument: pass
    `sgm.sample(..., settings=SamplerSettings(t_end=1e-4, return_path=True))` to change them; a
    field left at None takes its default.

    Attributes:
        steps: the method's steps; None: the method's default (`SAMPLERS[method].default_steps`;
            the adaptive ode sampler chooses them itself). `sample`'s own `steps=` says the same.
        t_end: where sampling stops, in (0, t1); None: the SDE's `sampling_t0`.
        denoise: end with Tweedie's formula E[x_0 | x_t_end]; None: the method's default
            (`SAMPLERS[method].denoises`). False is refused by the methods that always end on x_0.
        clip: the model-space data range (lo, hi) every prediction of x_0 and the final samples
            are clipped to, or None (no clipping).
        progress: `progress(done, total)` reporting the steps of fixed-step methods, or None.
        return_path: also return the trajectory (`info["path"]`, `info["path_t"]`).

    `sgm.sample` checks every field and resolves the defaults before the implementations see
    one: the sampler registry's implementations (`fn(bscore, sde, x1, key, run, **options)`)
    receive `run` with every field filled in (steps an int, or None for the adaptive ode; t_end a
    number; denoise a bool; clip a (lo, hi) pair of floats or None; progress a hook that traced
    code may call, a no-op without a user's `progress`) and trust them.
    """

    steps: int | None = None
    t_end: float | None = None
    denoise: bool | None = None
    clip: tuple[float, float] | None = None
    progress: Callable[[int, int], None] | None = None
    return_path: bool = False
