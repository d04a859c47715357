"""The option objects of the likelihood and the samplers: each refuses a bad field with one
sentence when it is made, gives the numbers the keywords it stands for gave, keeps equal settings
on one compilation, and is what a config's fields turn into at the builder's edge."""

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MIXTURE

import sgm
from sgm import build, likelihood, samplers
from sgm.evaluate import Dequantisation

SDE = sgm.VPSDE()
SCORE = MIXTURE.score(SDE)
X = np.asarray(MIXTURE.sample(jax.random.key(0), 6))
EIGHT = Path(__file__).resolve().parents[1] / "configs" / "eight_gaussians.py"
SMALL = ["model.width=16", "model.depth=1", "data.n_train=256", "data.n_test=64",
         "train.batch_size=32", "likelihood.num=4", "likelihood.batch=4", "likelihood.rtol=1e-2",
         "likelihood.atol=1e-2", "likelihood.solver_check=0"]


# ------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("make,match", [
    (lambda: sgm.Exact(chunk=0), "^the exact divergence's chunk must be a positive integer, got 0"),
    (lambda: sgm.Exact(chunk=2.5), "chunk must be a positive integer, got 2.5"),
    (lambda: sgm.Hutchinson(probes=0), "^the number of Hutchinson probes must be a positive "
                                       "integer, got 0"),
    (lambda: sgm.Hutchinson(probes=True), "probes must be a positive integer, got True"),
    (lambda: sgm.Hutchinson(probe="uniform"), "^unknown Hutchinson probe 'uniform'; expected "
                                              "one of rademacher, gaussian$"),
    (lambda: sgm.Hutchinson(product="fwd"), "^unknown Hutchinson product 'fwd'; expected one of "
                                            "jvp, vjp$"),
    (lambda: sgm.StepControl(solver="rk4"), r"^likelihood solver must be 'auto' or an adaptive "
                                            r"one \(tsit5, dopri5, dopri8, bosh3\), got 'rk4'"),
    (lambda: sgm.StepControl(solver="euler"), "adaptive one"),
    (lambda: sgm.StepControl(clock="sigma"), "^unknown likelihood clock 'sigma'; expected one of "
                                             "auto, t, logt, logsnr"),
    (lambda: sgm.StepControl(stepping="shared"), "^unknown likelihood stepping 'shared'"),
    (lambda: sgm.StepControl(error_norm="max"), "^unknown likelihood error norm 'max'; expected "
                                                "one of point, batch"),
    (lambda: sgm.StepControl(max_steps=0), "^the likelihood's max_steps must be a positive "
                                           "integer, got 0"),
    (lambda: sgm.StepControl(pcoeff=math.nan), "^the PID controller's pcoeff must be a finite"),
    (lambda: sgm.StepControl(icoeff=math.inf), "^the PID controller's icoeff must be a finite"),
    (lambda: sgm.StepControl(t0="soon"), "^the likelihood's start time t0 must be a finite"),
    (lambda: Dequantisation(kind="beta"), "^unknown dequantisation 'beta'; expected one of "
                                          "uniform, tn"),
    (lambda: Dequantisation(bound="max"), "^unknown dequantisation bound 'max'; expected one of "
                                          "mean, iw"),
    (lambda: Dequantisation(samples=0), "^the dequantisation's samples must be a positive "
                                        "integer, got 0"),
    (lambda: Dequantisation(kind="tn", std=0.0), "std must be a positive finite number, got 0.0"),
    (lambda: Dequantisation(kind="tn", std=math.nan), "std must be a positive finite number"),
])
def test_each_object_refuses_a_bad_field_when_it_is_made(make, match):
    with pytest.raises(sgm.ConfigError, match=match):
        make()


@pytest.mark.parametrize("bad", [{"exact": False}, {"probes": 2}, {"probe": "gaussian"}])
def test_a_divergence_object_with_the_flat_keywords_changed_is_refused(bad):
    with pytest.raises(sgm.ConfigError, match=r"^divergence=Hutchinson\(.*\) was given together "
                                              r"with exact=.*: set those in the divergence object"):
        sgm.log_likelihood(SCORE, SDE, X, key=jax.random.key(0),
                           divergence=sgm.Hutchinson(probes=2), **bad)


def test_objects_of_the_wrong_kind_are_refused():
    with pytest.raises(sgm.ConfigError, match=r"^divergence must be sgm.Exact\(...\) or "
                                              r"sgm.Hutchinson\(...\), got 'exact'"):
        sgm.log_likelihood(SCORE, SDE, X, divergence="exact")
    with pytest.raises(sgm.ConfigError, match=r"^control must be an sgm.StepControl"):
        sgm.log_likelihood(SCORE, SDE, X, control={"stepping": "point"})
    with pytest.raises(sgm.ConfigError, match="^Hutchinson's estimator .* needs a PRNG key"):
        sgm.log_likelihood(SCORE, SDE, X, divergence=sgm.Hutchinson())
    with pytest.raises(sgm.ConfigError, match=r"^settings must be an sgm.SamplerSettings"):
        sgm.sample(SCORE, SDE, (2,), key=jax.random.key(0), num=2, settings={"t_end": 0.1})
    with pytest.raises(sgm.ConfigError, match=r"^dequantisation must be an "
                                              r"sgm.evaluate.Dequantisation"):
        sgm.evaluate.heldout_likelihood(None, None, X, {}, key=jax.random.key(0),
                                        dequantisation="tn")


def test_the_objects_are_frozen_and_equal_settings_hash_alike():
    a, b = sgm.StepControl(stepping="point"), sgm.StepControl(stepping="point")
    assert a == b and hash(a) == hash(b) and a != sgm.StepControl()
    assert hash(sgm.Hutchinson(2, "gaussian")) == hash(sgm.Hutchinson(probes=2, probe="gaussian"))
    for obj, field in ((a, "stepping"), (sgm.Exact(), "chunk"), (sgm.Hutchinson(), "probes"),
                       (Dequantisation(), "samples")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)


# ------------------------------------------------------------------- the same numbers as before

def test_a_hutchinson_object_gives_the_flat_spellings_numbers():
    key = jax.random.key(4)
    flat, i_flat = sgm.log_likelihood(SCORE, SDE, X, key=key, exact=False, probes=2,
                                      probe="gaussian")
    obj, i_obj = sgm.log_likelihood(SCORE, SDE, X, key=key,
                                    divergence=sgm.Hutchinson(probes=2, probe="gaussian"))
    np.testing.assert_array_equal(obj, flat)
    assert int(i_obj["nfe"]) == int(i_flat["nfe"])
    exact, _ = sgm.log_likelihood(SCORE, SDE, X)
    chunked, _ = sgm.log_likelihood(SCORE, SDE, X, divergence=sgm.Exact())
    np.testing.assert_array_equal(chunked, exact)


def test_the_default_control_is_no_control():
    a, _ = sgm.log_likelihood(SCORE, SDE, X)
    b, _ = sgm.log_likelihood(SCORE, SDE, X, control=sgm.StepControl())
    np.testing.assert_array_equal(a, b)


def test_a_step_control_reaches_the_solve_as_the_flat_keywords_did(monkeypatch):
    """`StepControl(stepping="point", ...)` gives the numbers of the solve called with those
    keywords, and every field reaches it."""
    seen = {}
    real = likelihood._solve

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(likelihood, "_solve", spy)
    control = sgm.StepControl(stepping="point", clock="logt", solver="tsit5", pcoeff=0.1,
                              icoeff=0.9, rescale=False, max_steps=4000, t0=2e-3)
    logp, info = sgm.log_likelihood(SCORE, SDE, X, key=jax.random.key(1), rtol=1e-4, atol=1e-4,
                                    divergence=sgm.Hutchinson(probes=3, product="vjp"),
                                    control=control)
    want = {"stepping": "point", "clock": "logt", "solver": "tsit5", "pcoeff": 0.1, "icoeff": 0.9,
            "rescale": False, "max_steps": 4000, "t0": 2e-3, "exact": False, "probes": 3,
            "probe": "rademacher", "hutchinson": "vjp", "rtol": 1e-4, "atol": 1e-4}
    assert {k: seen[k] for k in want} == want
    flat, _ = real(SCORE, SDE, jnp.asarray(X), **seen)  # the private solve, flat keywords
    np.testing.assert_array_equal(logp, flat)
    # per-point steps: each point as its own solve would have it (the closed form within tol)
    point, _ = sgm.log_likelihood(SCORE, SDE, X, control=sgm.StepControl(stepping="point"))
    for i in range(2):
        alone, _ = sgm.log_likelihood(SCORE, SDE, X[i:i + 1])
        np.testing.assert_allclose(point[i], alone[0], rtol=1e-5)


def test_equal_settings_reuse_one_compilation():
    traces = []

    def score(t, x):
        traces.append(1)  # runs while tracing only
        return SCORE(t, x)

    sgm.log_likelihood(score, SDE, X, control=sgm.StepControl(stepping="point"))
    n = len(traces)
    sgm.log_likelihood(score, SDE, X, control=sgm.StepControl(stepping="point"))
    assert n > 0 and len(traces) == n


# ------------------------------------------------------------------------ sampler settings

def test_sampler_settings_set_the_end_and_the_path():
    t_end = 0.02
    settings = sgm.SamplerSettings(t_end=t_end, return_path=True)
    x, info = sgm.sample(SCORE, SDE, (2,), key=jax.random.key(0), num=8, method="em", steps=10,
                         settings=settings)
    assert x.shape == (8, 2) and info["path"].shape == (11, 8, 2)
    np.testing.assert_allclose(info["path_t"][-1], t_end, rtol=1e-5)
    same, _ = sgm.sample(SCORE, SDE, (2,), key=jax.random.key(0), num=8, method="em",
                         settings=settings._replace(steps=10))
    np.testing.assert_array_equal(same, x)


def test_steps_given_twice_must_agree():
    kw = {"key": jax.random.key(0), "num": 2, "method": "ddim"}
    with pytest.raises(sgm.ConfigError, match=r"^steps=4 and settings.steps=5 differ"):
        sgm.sample(SCORE, SDE, (2,), steps=4, settings=sgm.SamplerSettings(steps=5), **kw)
    a, _ = sgm.sample(SCORE, SDE, (2,), steps=4, settings=sgm.SamplerSettings(steps=4), **kw)
    b, _ = sgm.sample(SCORE, SDE, (2,), steps=4, **kw)
    np.testing.assert_array_equal(a, b)


class Reached(Exception):
    """Raised by the spy once the implementation has its settings."""


def test_implementations_receive_every_field_resolved(monkeypatch):
    real = samplers.SAMPLERS["ddim"]
    seen = []

    @functools.wraps(real.fn)
    def spy(bscore, sde, x1, key, run, **options):
        seen.append(run)
        raise Reached

    monkeypatch.setitem(samplers.SAMPLERS, "ddim", samplers.Sampler(
        spy, default_steps=real.default_steps, count=real.count, denoises=real.denoises,
        order=real.order, ends_on_x0=real.ends_on_x0))
    with pytest.raises(Reached):
        sgm.sample(SCORE, SDE, (2,), key=jax.random.key(0), num=2, method="ddim",
                   settings=sgm.SamplerSettings(clip=(-1, 2)))
    (run,) = seen
    assert (run.steps, run.t_end, run.denoise, run.clip, run.return_path) == (
        50, SDE.sampling_t0, True, (-1.0, 2.0), False)
    assert callable(run.progress) and run.progress(1, 50) is None  # a no-op hook


# ------------------------------------------------------------------- from a config's fields

def test_the_config_fields_become_the_objects():
    cfg = build.load(EIGHT, ["likelihood.stepping=point", "likelihood.solver=tsit5",
                             "likelihood.clock=logt", "likelihood.error_norm=batch",
                             "likelihood.dequant=tn", "likelihood.dequant_samples=3",
                             "likelihood.dequant_bound=iw", "sample.t_end=0.01"])
    assert build.likelihood_control(cfg) == sgm.StepControl(solver="tsit5", clock="logt",
                                                            stepping="point", error_norm="batch")
    assert build.dequantisation(cfg) == Dequantisation(kind="tn", samples=3, bound="iw")
    opts = build.likelihood_options(cfg)
    assert {k: opts[k] for k in ("exact", "rtol", "atol", "probes", "batch")} == {
        "exact": True, "rtol": 5e-6, "atol": 5e-6, "probes": 1, "batch": 250}
    assert build.sample_options(cfg)["settings"] == sgm.SamplerSettings(t_end=0.01)


def test_the_time_scale_reaches_the_network_and_old_configs_keep_1000():
    """model.time_scale from the command line is the network's; a config.json written before the
    field existed reads as 1000, the scale its checkpoint was trained with."""
    from sgm import config as C

    cfg = build.load(EIGHT, ["model.time_scale=10"])
    ds = build.build_dataset(cfg)
    net = build.build_model(cfg, ds, build.build_sde(cfg), build.build_conditioning(cfg, ds),
                            key=jax.random.key(0)).net
    assert net.embed.time.scale == 10.0
    old = C.to_dict(build.load(EIGHT))
    del old["model"]["time_scale"]
    assert C.from_dict(old).model.time_scale == 1000.0


@pytest.mark.slow
def test_a_configs_stepping_reaches_the_solve(monkeypatch):
    """likelihood.stepping=point, through `Experiment.heldout_likelihood` (what the command's
    likelihood phase calls), reaches the solve; so do the config's other likelihood fields."""
    seen = []
    real = likelihood._solve

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(likelihood, "_solve", spy)
    exp = build.experiment(build.load(EIGHT, [*SMALL, "likelihood.stepping=point",
                                              "likelihood.clock=logt", "likelihood.exact=false",
                                              "likelihood.probes=2"]))
    out = exp.heldout_likelihood(exp.state.ema)
    assert out["num"] == 4 and math.isfinite(out["nll"])
    (kw,) = seen
    assert (kw["stepping"], kw["clock"], kw["exact"], kw["probes"], kw["rtol"]) == (
        "point", "logt", False, 2, 1e-2)


def test_the_experiments_sampler_takes_settings_fields_as_overrides():
    exp = build.experiment(build.load(EIGHT, [*SMALL, "sample.method=ddim", "sample.steps=3"]))
    x, info, _ = exp.samples(exp.state.ema, num=4, return_path=True, t_end=0.05)
    assert x.shape == (4, 2) and info["path"].shape == (4, 4, 2)
    np.testing.assert_allclose(info["path_t"][-2], 0.05, rtol=1e-5)
