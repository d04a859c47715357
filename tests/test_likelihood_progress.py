"""The likelihood solve's optional progress meter: silent by default, the same answer when shown."""

import diffrax
import jax
import numpy as np
import pytest

import sgm
from sgm import evaluate
from sgm.data import Preprocess

GAUSS = sgm.GaussianMixture.gaussian(np.full(3, 0.5), 0.7)


def _solve(sde, x, **options):
    logp, info = sgm.log_likelihood(GAUSS.score(sde), sde, x, key=jax.random.key(1), **options)
    jax.block_until_ready(logp)
    jax.effects_barrier()  # every host callback of the solve (the meter's) has run
    return np.asarray(logp), int(info["nfe"])


@pytest.mark.slow
@pytest.mark.parametrize("stepping", ["batch", "point"])
@pytest.mark.parametrize("exact", [True, False])
def test_meter_shows_the_solve_and_changes_nothing(capsys, stepping, exact):
    sde = sgm.VPSDE()
    x = GAUSS.sample(jax.random.key(0), 4)
    quiet, nfe = _solve(sde, x, control=sgm.StepControl(stepping=stepping), exact=exact)
    out = capsys.readouterr()
    assert out.out == "" and out.err == "", "the library printed without being asked"
    meter = diffrax.TqdmProgressMeter(refresh_steps=1)
    shown, nfe_shown = _solve(sde, x, exact=exact,
                              control=sgm.StepControl(stepping=stepping, progress_meter=meter))
    np.testing.assert_array_equal(shown, quiet)
    assert nfe_shown == nfe
    assert "100.00%" in capsys.readouterr().err  # tqdm's bar, filled when the solve ends


def test_heldout_likelihood_threads_the_meter(capsys):
    """`evaluate.heldout_likelihood` passes the meter on (one bar per batch) and is silent without."""
    sde = sgm.VPSDE()
    model = _Model(sde)
    x = np.asarray(GAUSS.sample(jax.random.key(2), 6))
    pre = Preprocess(None, None, None)
    quiet = evaluate.heldout_likelihood(model, pre, x, {}, key=jax.random.key(3), batch=3)
    jax.effects_barrier()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    control = sgm.StepControl(progress_meter=diffrax.TqdmProgressMeter())
    shown = evaluate.heldout_likelihood(model, pre, x, {}, key=jax.random.key(3), batch=3,
                                        control=control)
    jax.effects_barrier()
    assert shown["nll"] == quiet["nll"]
    assert capsys.readouterr().err.count("100.00%") >= 2  # one bar for each of the two batches


class _Model:
    """The Gaussian's exact score with its SDE, as `heldout_likelihood` expects of a model."""

    def __init__(self, sde):
        self.sde = sde
        self._score = GAUSS.score(sde)

    def __call__(self, t, x):
        return self._score(t, x)
