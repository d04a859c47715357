"""The settings every sampler of the registry takes besides its own options (`SamplerSettings`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class SamplerSettings(NamedTuple):
    """What `sgm.sample` hands every sampler implementation beside its own options: one argument
    `run` instead of six, the same for every entry of `sgm.samplers.SAMPLERS`
    (`fn(bscore, sde, x1, key, run, **options)`).

    Attributes:
        steps: the method's steps (None for the adaptive ode sampler, whose solver chooses them).
        t_end: where sampling stops (the SDE's `sampling_t0` unless the caller chose one).
        denoise: end with Tweedie's formula where the method calls for it.
        clip: the model-space data range (lo, hi) every prediction of x_0 is clipped to, or None.
        progress: `progress(done, total)` called from inside the compiled program.
        return_path: also return the trajectory (`info["path"]`, `info["path_t"]`).

    `sgm.sample` checks every field before it builds one; an implementation trusts them.
    """

    steps: int | None
    t_end: float
    denoise: bool
    clip: tuple[float, float] | None
    progress: Callable[[int, int], None]
    return_path: bool
