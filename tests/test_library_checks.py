"""The library's public functions refuse bad arguments with one sentence, before anything is solved.

`sgm.sample`, `sgm.log_likelihood`, `sgm.bits_per_dim` and `sgm.GaussianMixture` check their
options (tolerances, counts, ranges), the data (finite points, batched as the score's samples)
and the score (it maps one sample to an array of that sample's shape) on the Python side: a
ConfigError for a bad argument, a DataError for bad data. Every refused call here returns before
any solve is compiled, so the module runs in seconds.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgm

SDE = sgm.VPSDE()
MIXTURE = sgm.GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.5, 1.0]], [0.3, 0.5])  # D = 2
SCORE = MIXTURE.score(SDE)
X = np.asarray(MIXTURE.sample(jax.random.key(0), 8))  # (8, 2)


def draw(score=SCORE, shape=(2,), **kw):
    kw = {"key": jax.random.key(0), "num": 2, **kw}
    return sgm.sample(score, SDE, shape, **kw)


def conditional_score(t, x, mu):
    """The score of N(mu, 0.1^2 I) data: conditioning through a keyword, as `cond=` passes it."""
    return sgm.GaussianMixture.gaussian(mu, 0.1).score(SDE)(t, x)


# ------------------------------------------------------------------------ options: tolerances

@pytest.mark.parametrize("bad,match", [
    ({"rtol": -1.0}, "relative tolerance rtol must be a positive finite number, got -1.0"),
    ({"rtol": 0.0}, "rtol must be a positive"), ({"rtol": math.nan}, "rtol must be a positive"),
    ({"atol": 0.0}, "absolute tolerance atol must be a positive finite number, got 0.0"),
    ({"atol": math.inf}, "atol must be a positive"),
])
def test_likelihood_refuses_tolerances_that_are_not_positive_and_finite(bad, match):
    with pytest.raises(sgm.ConfigError, match=f"^the likelihood's .*{match}"):
        sgm.log_likelihood(SCORE, SDE, X, **bad)


def test_the_step_control_refuses_max_steps_that_is_not_a_positive_integer():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(sgm.ConfigError, match="^the likelihood's max_steps must be a positive "
                                                  "integer"):
            sgm.StepControl(max_steps=bad)


@pytest.mark.parametrize("bad,match", [
    ({"rtol": -1.0}, "rtol must be a positive finite number, got -1.0"),
    ({"atol": 0.0}, "atol must be a positive finite number, got 0.0"),
    ({"rtol": math.inf}, "rtol must be a positive"), ({"max_steps": -3}, "max_steps"),
])
def test_ode_sampler_refuses_tolerances_that_are_not_positive_and_finite(bad, match):
    with pytest.raises(sgm.ConfigError, match=f"^the ode sampler's .*{match}"):
        draw(method="ode", **bad)


# --------------------------------------------------------------- options: counts and ranges

@pytest.mark.parametrize("bad,match", [
    ({"probes": 1.5, "exact": False, "key": jax.random.key(0)}, "Hutchinson probes must be a "
                                                                 "positive integer, got 1.5"),
    ({"probes": 0}, "Hutchinson probes must be a positive integer, got 0"),
    ({"probe": "uniform"}, "unknown Hutchinson probe 'uniform'"),
    ({"control": sgm.StepControl(t0=0.0)}, r"start time t0 must lie in \(0, 1.0\), got 0.0"),
    ({"control": sgm.StepControl(t0=1.5)}, r"start time t0 must lie in \(0, 1.0\)"),
])
def test_likelihood_refuses_counts_and_ranges_out_of_bounds(bad, match):
    with pytest.raises(sgm.ConfigError, match=match):
        sgm.log_likelihood(SCORE, SDE, X, **bad)


@pytest.mark.parametrize("make,match", [
    (lambda: sgm.Exact(chunk=0), "chunk must be a positive integer, got 0"),
    (lambda: sgm.StepControl(t0=math.nan), "t0 must be a finite number"),
    (lambda: sgm.StepControl(pcoeff=math.nan), "pcoeff must be a finite number"),
    (lambda: sgm.StepControl(icoeff=math.inf), "icoeff must be a finite number"),
])
def test_the_likelihoods_options_refuse_counts_and_ranges_out_of_bounds(make, match):
    with pytest.raises(sgm.ConfigError, match=match):
        make()


@pytest.mark.parametrize("bad,match", [
    ({"num": 2.5}, "number of samples num must be a positive integer, got 2.5"),
    ({"num": True}, "num must be a positive integer"),
    ({"shape": (0,)}, r"sample shape must be a tuple of positive integers, got \(0,\)"),
    ({"shape": (2.0,)}, "sample shape must be a tuple of positive integers"),
    ({"settings": sgm.SamplerSettings(clip=(1.0, -1.0))},
     r"clip must be a data range \(lo, hi\) .* lo < hi"),
    ({"settings": sgm.SamplerSettings(clip=(-1.0, math.nan))}, "clip must be a data range"),
    ({"method": "pc", "steps": 2, "snr": math.inf}, "pc's snr must be a positive finite number"),
    ({"method": "ddim", "steps": 2, "eta": math.nan}, "ddim's eta must be a finite number"),
    ({"method": "heun", "steps": 2, "s_churn": math.inf}, "heun's s_churn must be a finite"),
    ({"method": "heun", "steps": 2, "s_tmin": 2.0, "s_tmax": 1.0}, "s_tmin <= s_tmax"),
    ({"method": "heun", "steps": 2, "rho": math.inf}, "karras grid's rho must be a positive"),
    ({"method": "ipndm", "steps": 3, "grid": [math.inf, 1.0, 0.1]}, "3 decreasing positive"),
])
def test_sample_refuses_counts_and_ranges_out_of_bounds(bad, match):
    with pytest.raises(sgm.ConfigError, match=match):
        draw(**bad)


def test_bits_per_dim_refuses_a_dimension_or_range_out_of_bounds():
    with pytest.raises(sgm.ConfigError, match="dim must be a positive integer, got 0"):
        sgm.bits_per_dim(-1.0, 0, levels=None)
    with pytest.raises(sgm.ConfigError, match="hi must be a finite number"):
        sgm.bits_per_dim(-1.0, 2, levels=256, lo=0.0, hi=math.inf)


# ----------------------------------------------------------------------------- data: finite x

def test_likelihood_refuses_non_finite_points_up_front():
    x = X.copy()
    x[3, 1], x[5, 0] = np.nan, np.inf
    with pytest.raises(sgm.DataError, match=r"^x holds non-finite values \(NaN or inf\) in 2 of "
                                            r"its 8 points \(the first at index 3\)"):
        sgm.log_likelihood(SCORE, SDE, x)
    with pytest.raises(sgm.DataError, match="1 of its 8 points"):  # a device array too
        sgm.log_likelihood(SCORE, SDE, jnp.asarray(X).at[7, 0].set(jnp.nan))


def test_the_finite_check_passes_a_traced_batch():
    """Under the caller's jit the values of x are unknown: the check leaves them alone."""
    from sgm.likelihood import _check_points

    x = jnp.asarray(X).at[0, 0].set(jnp.nan)
    out = jax.jit(_check_points)(x)
    np.testing.assert_array_equal(out, x)  # unchanged, its NaN included


# ------------------------------------------------------------------ the score and the shapes

def test_sample_refuses_a_shape_the_score_does_not_take():
    with pytest.raises(sgm.ConfigError, match=r"^the score cannot be evaluated on one sample of "
                                              r"shape \(3,\) .*Incompatible shapes"):
        draw(shape=(3,), method="ddim", steps=2)
    with pytest.raises(sgm.ConfigError, match=r"^the score maps one sample of shape \(3,\) to "
                                              r"\(2,\); it must return an array of the sample's"):
        draw(score=lambda t, x: -x[:2], shape=(3,), method="em", steps=2)


@pytest.mark.parametrize("x,match", [
    (np.zeros((8, 3)), r"one sample of shape \(3,\) .*x of shape \(8, 3\) must be a batch "
                       r"\(B, \*shape\)"),
    (np.zeros(2), r"maps one sample of shape \(\) to \(2,\); .*x of shape \(2,\) must be a batch"),
    (np.zeros(()), r"x must be a batch \(B, \*shape\) of at least one point, got shape \(\)"),
    (np.zeros((0, 2)), r"at least one point, got shape \(0, 2\)"),
])
def test_likelihood_refuses_points_that_are_not_a_batch_of_the_scores_samples(x, match):
    with pytest.raises(sgm.ConfigError, match=match):
        sgm.log_likelihood(SCORE, SDE, x)


def test_the_shape_check_sees_conditional_scores_through_cond():
    """Conditions reach the score as keywords (`cond=`): the check passes each sample's own."""
    mu = jnp.ones((2, 2))
    with pytest.raises(sgm.ConfigError, match=r"one sample of shape \(3,\) with conditions mu"):
        draw(score=conditional_score, shape=(3,), method="ddim", steps=2, cond={"mu": mu})
    with pytest.raises(sgm.ConfigError, match=r"cond\['mu'\] has shape \(3, 2\), but its leading "
                                              r"axis must hold one condition for each of the 2"):
        draw(score=conditional_score, method="ddim", steps=2, cond={"mu": jnp.ones((3, 2))})
    with pytest.raises(sgm.ConfigError, match="missing 1 required positional argument: 'mu'"):
        draw(score=conditional_score, method="ddim", steps=2)
    with pytest.raises(sgm.ConfigError, match=r"cond\['mu'\] has shape \(1, 2\)"):
        sgm.log_likelihood(conditional_score, SDE, X[:2], cond={"mu": mu[:1]})


# ------------------------------------------------------------------ the analytic mixture

@pytest.mark.parametrize("args,match", [
    (([-0.5, 1.5], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]),
     r"weights must be positive finite numbers; 1 of its 2 entries fail that \(the first, at "
     r"index \(0,\): -0.5\)"),
    (([0.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]), "weights must be positive"),
    (([0.5, math.nan], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]), "weights must be positive"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [1.0, 0.0]), "stds must be positive finite numbers"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, math.inf]]), "stds must be"),
    (([0.5, 0.5], [[0.0, math.nan], [1.0, 1.0]], 1.0), "means must be finite numbers"),
    (([0.2, 0.3, 0.5], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]),
     r"one weight per component: 2 means of dimension 2, but weights of shape \(3,\)"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0, 1.0]),
     r"stds of shape \(3,\) must be one per component \(2,\)"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], np.ones((2, 3))), r"stds of shape \(2, 3\)"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0, 1.0]], 1.0), "means must be an array of numbers"),
    (([1.0], np.zeros((1, 2, 2)), 1.0), r"means must be \(K, D\)"),
])
def test_gaussian_mixture_refuses_bad_weights_stds_and_shapes(args, match):
    with pytest.raises(sgm.ConfigError, match=match):
        sgm.GaussianMixture(*args)


def test_gaussian_mixture_normalises_its_weights_and_broadcasts_its_stds():
    gm = sgm.GaussianMixture([2.0, 6.0], [[0.0, 0.0], [1.0, 1.0]], [0.5, 2.0])
    np.testing.assert_allclose(gm.weights, [0.25, 0.75])
    np.testing.assert_allclose(gm.stds, [[0.5, 0.5], [2.0, 2.0]])
    one = sgm.GaussianMixture(1.0 * np.ones(1), [0.0, 1.0, 2.0], [[0.1, 0.2, 0.3]])
    assert one.means.shape == one.stds.shape == (1, 3)
