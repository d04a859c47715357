"""Every option of every sampler is a `sample.*` config field: its default is the library's (or
each method's own, where the methods sharing the name differ), a changed value reaches the
sampler through `build.sample_options`, one changed for a method that does not take it is refused
before anything is written, and the command samples with it."""

import dataclasses
import functools
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

import sgm
from sgm import build, run, samplers
from sgm import config as C
from sgm.config import SampleConfig
from sgm.errors import ConfigError
from sgm.ode_solvers import ODE_SOLVERS
from sgm.sigma_solvers import sigma_grid

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"

#: a valid value other than the default for every option of every sampler
CHANGED = {"snr": 0.2, "corrector_steps": 2, "variance": "forward", "eta": 0.5, "solver": "dopri5",
           "rtol": 1e-4, "atol": 1e-4, "max_steps": 1000, "stepping": "point", "grid": "time",
           "rho": 5.0, "order": 2, "variant": "bh1", "s_churn": 10.0, "s_tmin": 0.05,
           "s_tmax": 50.0, "s_noise": 1.003}
#: fields whose default stands for each method's own value ("" / none), and why: the methods
#: sharing the name differ (grid, order), or the library's default is no finite number (s_tmax)
OWN = {"grid": "", "order": None, "s_tmax": None}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SampleConfig)}
PAIRS = [(m, o) for m, e in samplers.SAMPLERS.items() for o in e.options]
OPTIONS = sorted({o for _, o in PAIRS})


def takers(option):
    return [m for m, e in samplers.SAMPLERS.items() if option in e.options]


def load(*sets):
    return build.load(EIGHT, list(sets))


def score(t, x):  # N(0, I) data under the VP SDE: every marginal is N(0, I)
    return -x


class Reached(Exception):
    """Raised by the spy once the sampler has its keywords (nothing is compiled or solved)."""


def spy_on(monkeypatch, method, *, stop=True):
    """Replaces `method`'s registry entry by one whose function records its keywords (and raises
    `Reached` with `stop`, else runs the real sampler); returns the record."""
    real = samplers.SAMPLERS[method]
    seen = {}

    @functools.wraps(real.fn)  # the same signature: the entry reads its options off it
    def spy(*args, **kwargs):
        seen.update(kwargs)
        if stop:
            raise Reached
        return real.fn(*args, **kwargs)

    monkeypatch.setitem(samplers.SAMPLERS, method, samplers.Sampler(
        spy, default_steps=real.default_steps, count=real.count, denoises=real.denoises,
        order=real.order, ends_on_x0=real.ends_on_x0))
    return seen


# ------------------------------------------------------------------------ fields and defaults


def test_the_changed_values_cover_every_option():
    assert set(CHANGED) == set(OPTIONS)
    assert all(CHANGED[o] != DEFAULTS[o] for o in OPTIONS)


@pytest.mark.parametrize("method, option", PAIRS)
def test_every_option_is_a_field_with_the_librarys_default(method, option):
    assert option in DEFAULTS, f"sample.{option} is missing from SampleConfig"
    library = samplers.SAMPLERS[method].defaults[option]
    if option in OWN:
        assert DEFAULTS[option] == OWN[option]
        values = {repr(samplers.SAMPLERS[m].defaults[option]) for m in takers(option)}
        assert len(values) > 1 or not math.isfinite(library)
    else:
        assert DEFAULTS[option] == library


@pytest.mark.parametrize("method", samplers.METHODS)
def test_defaults_leave_every_option_to_the_library(method):
    opts = build.sample_options(load(f"sample.method={method}", "sample.steps=7"))
    steps = None if method == "ode" else 7
    assert opts == {"method": method, "steps": steps, "settings": sgm.SamplerSettings()}


@pytest.mark.parametrize("method", samplers.METHODS)
def test_a_config_may_carry_every_option_at_its_default(method):
    """In the file or on the command line, options left at their defaults are not refused."""
    cfg = load(f"sample.method={method}")
    every = {o: DEFAULTS[o] for o in OPTIONS}
    cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, **every))
    assert build.sample_options(build.check(cfg))["method"] == method
    sets = [f"sample.{o}={'none' if v is None else v}" for o, v in every.items()]
    assert build.sample_options(load(f"sample.method={method}", *sets))["method"] == method


# -------------------------------------------------------------------- reaching the sampler


@pytest.mark.parametrize("method, option", PAIRS)
def test_a_changed_option_reaches_the_sampler(method, option, monkeypatch):
    """`sgm.sample(**build.sample_options(cfg))` hands the sampler the changed option alone;
    the others are the library's defaults."""
    cfg = load(f"sample.method={method}", f"sample.{option}={CHANGED[option]}")
    opts = build.sample_options(cfg)
    seen = spy_on(monkeypatch, method)
    with pytest.raises(Reached):
        sgm.sample(score, sgm.VPSDE(), (2,), key=jax.random.key(0), num=2, **opts)
    assert seen[option] == CHANGED[option]
    assert {k for k in seen if k in samplers.SAMPLERS[method].options} == {option}


@pytest.mark.parametrize("solver, steps", [("euler", 7), ("heun", 3)])
def test_the_fixed_step_ode_takes_sample_steps(solver, steps):
    opts = build.sample_options(load("sample.method=ode", f"sample.solver={solver}",
                                     f"sample.steps={steps}"))
    assert opts["steps"] == steps
    x, info = sgm.sample(score, sgm.VPSDE(), (2,), key=jax.random.key(0), num=4, **opts)
    assert info["nfe"] == steps * ODE_SOLVERS[solver].evals_per_step
    assert np.all(np.isfinite(x))


def test_the_options_set_key_the_tuned_levels(tmp_path, monkeypatch):
    """`sample.grid=tuned`: the options the config changed (and only those) are the tuning's and
    its cache key's, so unipc at sample.order=1 and at its own order keep two tuned grids."""
    tuned = []

    def searched(self, model, *, steps, t_end=None, cache_dir=None):
        return tuple(float(v) for v in sigma_grid(model.sde, model.sde.sampling_t0, steps))

    monkeypatch.setattr(build.Experiment, "searched_grid", searched)
    monkeypatch.setattr(build, "tune_grid", lambda *a, **k: tuned.append(k["options"]) or a[3])
    small = ["model.width=16", "model.depth=1", "data.n_train=256", "train.batch_size=32"]
    seen = spy_on(monkeypatch, "unipc")  # the sampler gets the tuned levels (and stops there)
    base = [*small, "sample.method=unipc", "sample.steps=4", "sample.grid=tuned"]
    built = build.experiment(load(*base))
    for sets in ([], ["sample.order=1"], ["sample.variant=bh1", "sample.rho=5"]):
        exp = dataclasses.replace(built, cfg=load(*base, *sets))
        with pytest.raises(Reached):
            exp.samples(exp.state.ema, num=4, cache_dir=tmp_path)
        assert seen.pop("grid") == searched(exp, exp.state.ema, steps=4)
    assert tuned == [{}, {"order": 1}, {"variant": "bh1", "rho": 5.0}]
    keys = []
    for path in tmp_path.glob("grid-tuned-unipc-4-*.npz"):
        with np.load(path) as f:
            keys.append(json.loads(str(f["key"]))["options"])
    assert sorted(keys, key=len) == tuned


# ------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("option", OPTIONS)
def test_a_changed_option_is_refused_for_a_method_that_does_not_take_it(option):
    others = [m for m in samplers.METHODS if m not in takers(option)]
    assert others  # em takes no option
    for method in others:
        with pytest.raises(ConfigError) as err:
            load(f"sample.method={method}", f"sample.{option}={CHANGED[option]}")
        msg = str(err.value)
        assert msg.startswith(f"sample.{option}=") and f"sample.method={method!r}" in msg
        assert f"{option} is an option of {', '.join(takers(option))} only" in msg


@pytest.mark.parametrize("sets, match", [
    (["sample.method=heun", "sample.rho=0"], "sample.rho=0.0 is invalid: expected a positive"),
    (["sample.method=unipc", "sample.order=4"], "sample.order=4 is invalid: expected an integer "
                                                "from 1 to 3 for sample.method='unipc'"),
    (["sample.method=ipndm", "sample.order=5"], "sample.order=5 is invalid: expected an integer "
                                                "from 1 to 4 for sample.method='ipndm'"),
    (["sample.method=ipndm", "sample.order=0"], "sample.order=0 is invalid"),
    (["sample.method=heun", "sample.s_churn=-1"], "sample.s_churn=-1.0 is invalid"),
    (["sample.method=heun", "sample.s_noise=-1"], "sample.s_noise=-1.0 is invalid"),
    (["sample.method=heun", "sample.s_tmin=-1"], "sample.s_tmin=-1.0 is invalid"),
    (["sample.method=heun", "sample.s_tmin=2", "sample.s_tmax=1"],
     r"sample.s_tmax=1.0 is invalid: expected a noise level of at least sample.s_tmin=2"),
    (["sample.method=heun", "sample.s_tmax=inf"], "sample.s_tmax=inf is invalid"),
    (["sample.method=pc", "sample.corrector_steps=-1"], "sample.corrector_steps=-1 is invalid"),
    (["sample.method=pc", f"sample.corrector_steps={C.CORRECTOR_LIMIT + 1}"],
     "sample.corrector_steps=101 is invalid"),
    (["sample.method=ode", "sample.rtol=1e-9"], "sample.rtol=1e-09 is invalid"),
    (["sample.method=ode", "sample.atol=0"], "sample.atol=0.0 is invalid"),
    (["sample.method=ode", "sample.max_steps=0"], "sample.max_steps=0 is invalid"),
    (["sample.method=ode", "sample.solver=rk4"], "sample.solver='rk4' is invalid: expected one "
                                                 "of tsit5, dopri5"),
    (["sample.method=ode", "sample.stepping=each"], "sample.stepping='each' is invalid"),
    (["sample.method=unipc", "sample.variant=bh3"], "sample.variant='bh3' is invalid"),
    (["sample.method=ddpm", "sample.variance=beta"], "sample.variance='beta' is invalid"),
])
def test_out_of_range_options_are_refused(sets, match):
    with pytest.raises(ConfigError, match=match):
        load(*sets)


def test_the_command_refuses_before_anything_is_written(tmp_path, capsys):
    wd = tmp_path / "wd"
    assert run.main(EIGHT, sets=["sample.method=heun", "sample.order=2"], workdir=wd,
                    progress=False) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sample.order=2 does not apply to sample.method='heun'")
    assert not wd.exists()


@pytest.mark.parametrize("method", sorted(C.MAX_ORDER))
def test_the_configs_highest_orders_are_the_librarys(method):
    top = C.MAX_ORDER[method]
    kw = dict(key=jax.random.key(0), num=2, method=method, steps=5)
    jax.eval_shape(lambda: sgm.sample(score, sgm.VPSDE(), (2,), order=top, **kw)[0])
    with pytest.raises(ConfigError, match="order"):
        jax.eval_shape(lambda: sgm.sample(score, sgm.VPSDE(), (2,), order=top + 1, **kw)[0])


def test_ddpms_variances_are_the_librarys():
    kw = dict(key=jax.random.key(0), num=2, method="ddpm", steps=5)
    for name in ("posterior", "forward"):
        opts = build.sample_options(load("sample.method=ddpm", f"sample.variance={name}"))
        assert opts.get("variance") == (None if name == "posterior" else name)  # default: unsent
        jax.eval_shape(lambda: sgm.sample(score, sgm.VPSDE(), (2,), variance=name, **kw)[0])
    with pytest.raises(ConfigError, match="variance"):
        jax.eval_shape(lambda: sgm.sample(score, sgm.VPSDE(), (2,), variance="beta", **kw)[0])


# ------------------------------------------------------------------------------ the command

TINY = ["train.steps=4", "train.batch_size=32", "train.log_every=2", "train.ckpt_every=4",
        "train.eval_every=0", "train.warmup=1", "model.width=16", "model.depth=1",
        "data.n_train=256", "data.n_test=32", "sample.num=16", "likelihood.num=8",
        "train.eval_num=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny eight-Gaussians run trained for 4 steps (its work directory)."""
    wd = tmp_path_factory.mktemp("options") / "run"
    assert run.main(EIGHT, sets=TINY, mode="train", workdir=wd, progress=False) == 0
    return wd


def samples(wd, *sets):
    assert run.main(EIGHT, sets=[*TINY, *sets], mode="sample", workdir=wd, progress=False) == 0
    with np.load(wd / "samples.npz") as f:
        return f["samples"]


@pytest.mark.slow
def test_the_command_samples_with_the_options_set(trained, monkeypatch, capsys):
    """`--mode sample --set sample.method=unipc sample.order=1` changes the samples, order=3 (the
    method's own) does not; `sample.method=heun sample.rho=3` reaches heun; an option of another
    method is refused and the samples are left as they were."""
    unipc = ("sample.method=unipc", "sample.steps=6")
    own = samples(trained, *unipc)
    assert np.all(np.isfinite(own))
    assert not np.allclose(samples(trained, *unipc, "sample.order=1"), own)
    np.testing.assert_array_equal(samples(trained, *unipc, "sample.order=3"), own)
    seen = spy_on(monkeypatch, "heun", stop=False)
    x = samples(trained, "sample.method=heun", "sample.steps=4", "sample.rho=3")
    assert seen["rho"] == 3.0 and np.all(np.isfinite(x))
    before = (trained / "samples.npz").read_bytes()
    capsys.readouterr()
    assert run.main(EIGHT, sets=[*TINY, "sample.method=heun", "sample.variant=bh1"],
                    mode="sample", workdir=trained, progress=False) == 2
    assert "variant is an option of unipc only" in capsys.readouterr().err
    assert (trained / "samples.npz").read_bytes() == before
