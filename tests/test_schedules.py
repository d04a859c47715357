"""Learning-rate schedules (`build.DECAYS`, `train.decay`): their values at a few update counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgm import build
from sgm import config as C

LR, WARM, STEPS = 1e-3, 100, 1000


def schedule(decay, warmup=WARM, steps=STEPS):
    cfg = C.override(C.Config(), [f"train.decay={decay}", f"train.lr={LR}", f"train.warmup={warmup}",
                                  f"train.steps={steps}"])
    return build.learning_rate(build.check(cfg))


def cosine(a, b, frac):
    """From a to b along half a cosine, `frac` of the way."""
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * frac))


EXPECTED = {  # decay -> {update count: learning rate}
    "constant": {0: 0.0, 50: LR / 2, 100: LR, 550: LR, 999: LR},
    "cosine": {0: 0.0, 50: LR / 2, 100: LR, 550: cosine(LR, LR / 100, 0.5), 1000: LR / 100},
    "linear": {0: 0.0, 50: LR / 2, 100: LR, 550: (LR + LR / 100) / 2, 1000: LR / 100},
    "onecycle": {0: LR / 25, 50: cosine(LR / 25, LR, 0.5), 100: LR,
                 550: cosine(LR, LR / 25e4, 0.5), 1000: LR / 25e4},
}


@pytest.mark.parametrize("decay", sorted(build.DECAYS))
def test_schedule_values(decay):
    assert decay in EXPECTED, f"add the expected values of the new schedule {decay!r}"
    lr = schedule(decay)
    for count, want in EXPECTED[decay].items():
        assert float(lr(count)) == pytest.approx(want, rel=1e-5, abs=1e-12), (decay, count)


@pytest.mark.parametrize("decay", sorted(build.DECAYS))
def test_schedule_peaks_at_the_end_of_the_warmup(decay):
    """Whatever the warm-up length, the rate rises to `lr` at its last update and never exceeds it
    (OneCycle's peak lies exactly there, not one step off from rounding `pct_start * steps`)."""
    for warm, steps in ((1, 10), (7, 30), (200, 15000), (333, 1000)):
        lr = schedule(decay, warm, steps)
        values = np.asarray(jax.vmap(lr)(jnp.arange(steps + 1)), dtype=np.float64)
        assert values[warm] == pytest.approx(LR, rel=1e-6)
        assert values.max() <= LR * (1 + 1e-6)
        assert np.all(np.diff(values[:warm + 1]) >= -1e-12)


def test_unknown_decay_names_the_choices():
    with pytest.raises(Exception, match="onecycle"):
        schedule("exponential")
