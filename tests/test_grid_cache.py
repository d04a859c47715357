"""The searched and tuned noise-level grids a run keeps in its work directory: the command samples
on levels tuned for its method, a cache is used only when it was written for the same key and
holds a valid grid (damaged ones are computed again and replaced), and a search that overflows
names its cause."""

import dataclasses
import io
import json
import shutil
import zipfile
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

import sgm
from sgm import build, run
from sgm.errors import NumericalError

ROOT = Path(__file__).resolve().parents[1]
MOONS = ROOT / "configs" / "moons.py"
TINY = ["train.steps=2", "train.batch_size=32", "train.log_every=1", "train.eval_every=0",
        "train.warmup=1", "train.eval_num=8", "model.width=16", "model.depth=1",
        "data.n_train=256", "data.n_test=32", "sample.num=16", "likelihood.num=8"]


@pytest.fixture
def small_search(monkeypatch):
    """A search of 16 warm-up draws over 12 candidates and a tuning of 5 gradient steps on
    20-level targets: the path of a real run at a fraction of its cost. Returns the recorded
    calls: ("search", candidates) and ("tune", method, steps, options)."""
    calls = []
    search, tune = build.search_costs, build.tune_grid

    def searching(*args, **kwargs):
        calls.append(("search", kwargs["fine"]))
        return search(*args, **kwargs)

    def tuning(*args, **kwargs):
        calls.append(("tune", kwargs["method"], len(args[3]), kwargs["options"]))
        quick = dataclasses.replace(kwargs["tuning"], iters=5, reference_steps=20)
        return tune(*args, **{**kwargs, "tuning": quick})

    monkeypatch.setattr(build, "search_costs", searching)
    monkeypatch.setattr(build, "tune_grid", tuning)
    monkeypatch.setattr(build, "SEARCH_WARMUP", 16)
    monkeypatch.setattr(build, "SEARCH_CANDIDATES", 12)
    return calls


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A moons run trained for 2 steps (its work directory)."""
    wd = tmp_path_factory.mktemp("moons") / "run"
    assert run.main(MOONS, sets=TINY, mode="train", workdir=wd, progress=False) == 0
    return wd


def copy(trained, tmp_path) -> Path:
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    return wd


def sample(wd, *sets, progress=False) -> int:
    return run.main(MOONS, sets=[*TINY, *sets], mode="sample", workdir=wd, progress=progress)


def finite_samples(wd) -> bool:
    with np.load(wd / "samples.npz") as f:
        return bool(np.all(np.isfinite(f["samples"])))


def kept(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def valid(levels, steps) -> bool:
    """`steps` levels decreasing from the run's sigma(t1) to sigma(t_end) > 0."""
    sde = build.build_sde(build.load(MOONS, TINY))
    hi, lo = float(sde.noise_level(sde.t1)), float(sde.noise_level(sde.sampling_t0))
    levels = np.asarray(levels)
    return bool(levels.shape == (steps,) and np.all(np.diff(levels) < 0) and levels[-1] > 0
                and np.isclose(levels[0], hi, rtol=1e-3) and np.isclose(levels[-1], lo, rtol=1e-3))


TUNED4 = ("sample.steps=4", "sample.grid=tuned")


# ------------------------------------------------------------------- the command, tuned levels


@pytest.mark.slow
@pytest.mark.parametrize("method, progress", [("dpm2m", True), ("unipc", False)])
def test_command_samples_on_levels_tuned_for_its_method(trained, tmp_path, small_search, method,
                                                        progress):
    """`--mode sample --set sample.method=<m> sample.steps=4 sample.grid=tuned`, with and
    without progress bars: tuning gets the method's own options only (none from the config;
    the sampling controls progress=, return_path= never), and the samples are finite."""
    wd = copy(trained, tmp_path)
    assert sample(wd, f"sample.method={method}", *TUNED4, progress=progress) == 0
    assert ("tune", method, 4, {}) in small_search and finite_samples(wd)
    (cache,) = wd.glob(f"grid-tuned-{method}-4-*.npz")
    assert valid(kept(cache)["levels"], 4)


def test_samples_give_tuning_the_methods_own_options_alone(tmp_path, small_search, monkeypatch):
    """Library path: progress=, return_path= and the config's other keywords stay with the
    sampler; an override that is one of the method's options (unipc's order) reaches tuning."""
    monkeypatch.setattr(build, "tune_grid", lambda *a, **k: (
        small_search.append(("tune", k["method"], len(a[3]), k["options"])) or tuple(a[3])))
    exp = build.experiment(build.load(MOONS, [*TINY, "sample.method=unipc", *TUNED4]))
    model = exp.state.ema
    x, info, _ = exp.samples(model, num=4, cache_dir=tmp_path, progress=lambda *_: None,
                             return_path=True, order=2)
    assert [c for c in small_search if c[0] == "tune"] == [("tune", "unipc", 4, {"order": 2})]
    assert np.all(np.isfinite(x)) and "path" in info


# ------------------------------------------------------------------------- damaged caches


@pytest.mark.slow
def test_command_tunes_again_over_levels_outside_the_noise_range(trained, tmp_path,
                                                                 small_search):
    """A tuned cache holding 4 decreasing positive levels far outside sigma(t_end)..sigma(t1)
    is never sampled on: the command tunes again, replaces it, and writes finite samples."""
    wd = copy(trained, tmp_path)
    assert sample(wd, "sample.method=dpm2m", *TUNED4) == 0
    (cache,) = wd.glob("grid-tuned-dpm2m-4-*.npz")
    good = kept(cache)
    np.savez(cache, **{**good, "levels": np.array([1e30, 1e20, 1.0, 1e-30])})
    assert sample(wd, "sample.method=dpm2m", *TUNED4) == 0
    assert [c[0] for c in small_search].count("tune") == 2 and finite_samples(wd)
    np.testing.assert_array_equal(kept(cache)["levels"], good["levels"])  # tuned again, same


@pytest.mark.slow
def test_command_searches_and_tunes_again_over_truncated_caches(trained, tmp_path, small_search):
    """Both caches cut to their first 200 bytes: the command searches and tunes again, exit 0."""
    wd = copy(trained, tmp_path)
    assert sample(wd, "sample.method=ipndm", *TUNED4) == 0
    caches = sorted(wd.glob("grid-*.npz"))
    assert len(caches) == 2 and [c[0] for c in small_search] == ["search", "tune"]
    before = {c: c.read_bytes() for c in caches}
    for c in caches:
        c.write_bytes(before[c][:200])
    assert sample(wd, "sample.method=ipndm", *TUNED4) == 0
    assert [c[0] for c in small_search] == ["search", "tune"] * 2 and finite_samples(wd)
    assert {c: c.read_bytes() for c in caches} == before  # replaced by the same content


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _claiming(levels_rows: int, other: dict) -> bytes:
    """An .npz whose `levels` header claims `levels_rows` float64s and holds 16 bytes."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (levels_rows,)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("levels.npy", head.getvalue() + bytes(16))
        for k, v in other.items():
            a = io.BytesIO()
            np.save(a, v)
            zf.writestr(f"{k}.npy", a.getvalue())
    return buf.getvalue()


def _costs_with(costs, value):
    c = costs.copy()
    c[0, 1] = value
    return c


DAMAGE = {  # name -> (which cache, kept arrays -> new file content)
    "truncated": ("both", lambda good, raw: raw[:200]),
    "random-bytes": ("both", lambda good, raw: np.random.default_rng(0).bytes(len(raw))),
    "claims-1e11-levels": ("both", lambda good, raw: _claiming(
        10**11, {k: v for k, v in good.items() if k != "levels"})),
    "2d-levels": ("both", lambda good, raw: _npz(**{**good, "levels": np.stack(
        [good["levels"]] * 2, axis=1)})),
    "nan-levels": ("both", lambda good, raw: _npz(**{**good, "levels": np.where(
        np.arange(len(good["levels"])) == 1, np.nan, good["levels"])})),
    "negative-levels": ("both", lambda good, raw: _npz(**{**good, "levels": -good["levels"]})),
    "increasing-levels": ("both", lambda good, raw: _npz(**{**good,
                                                            "levels": good["levels"][::-1]})),
    "too-few-levels": ("both", lambda good, raw: _npz(**{**good, "levels": good["levels"][1:]})),
    "out-of-range": ("both", lambda good, raw: _npz(**{**good, "levels": good["levels"] * 1e3})),
    "text-levels": ("both", lambda good, raw: _npz(**{**good, "levels": np.array(
        ["1.0"] * len(good["levels"]))})),
    "no-key": ("both", lambda good, raw: _npz(**{k: v for k, v in good.items() if k != "key"})),
    "another-key": ("both", lambda good, raw: _npz(**{**good, "key": np.asarray("{}")})),
    "nan-costs": ("searched", lambda good, raw: _npz(**{**good, "costs": _costs_with(
        good["costs"], np.nan)})),
    "negative-costs": ("searched", lambda good, raw: _npz(**{**good, "costs": _costs_with(
        good["costs"], -1.0)})),
    "finite-backward-costs": ("searched", lambda good, raw: _npz(**{**good, "costs": np.where(
        np.isinf(good["costs"]), 0.0, good["costs"])})),
    "no-costs": ("searched", lambda good, raw: _npz(**{k: v for k, v in good.items()
                                                       if k != "costs"})),
}


@pytest.fixture(scope="module")
def ipndm_experiment():
    exp = build.experiment(build.load(MOONS, [*TINY, "sample.method=ipndm", *TUNED4]))
    return exp, exp.state.ema


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_is_computed_again_and_replaced(ipndm_experiment, tmp_path,
                                                        small_search, monkeypatch, damage):
    """Truncated, random, a header claiming 10^11 levels, 2-D, NaN, negative, increasing, too
    few, out-of-range or non-numeric levels, NaN, negative or finite backward costs, a missing
    array, another key: the grid is computed again (the same levels as the first time), and
    the cache is replaced by a valid one; nothing raises and nothing damaged is returned."""
    monkeypatch.setattr(build, "tune_grid", lambda *a, **k: (  # tuning's own cost is not tested
        small_search.append(("tune", k["method"], len(a[3]), k["options"]))
        or tuple(a[3][:1]) + tuple(0.9 * np.asarray(a[3][1:-1])) + tuple(a[3][-1:])))
    exp, model = ipndm_experiment
    which, make = DAMAGE[damage]
    searched = exp.searched_grid(model, steps=4, cache_dir=tmp_path)
    tuned = exp.tuned_grid(model, method="ipndm", steps=4, cache_dir=tmp_path)
    assert [c[0] for c in small_search] == ["search", "tune"]
    (s_cache,) = tmp_path.glob("grid-None-*.npz")
    (t_cache,) = tmp_path.glob("grid-tuned-ipndm-4-*.npz")
    targets = {"both": (s_cache, t_cache), "searched": (s_cache,)}[which]
    good = {p: (kept(p), p.read_bytes()) for p in targets}
    for p in targets:
        p.write_bytes(make(*good[p]))
    if s_cache in targets:
        assert exp.searched_grid(model, steps=4, cache_dir=tmp_path) == searched
        assert [c[0] for c in small_search] == ["search", "tune", "search"]
    assert exp.tuned_grid(model, method="ipndm", steps=4, cache_dir=tmp_path) == tuned
    assert [c[0] for c in small_search].count("tune") == (2 if t_cache in targets else 1)
    assert valid(tuned, 4) and valid(searched, 4)
    for p in targets:
        np.testing.assert_array_equal(kept(p)["levels"], good[p][0]["levels"])
        assert not list(tmp_path.glob(".*"))  # no temporary file left behind


# --------------------------------------------------------------------------- the cache key


def test_the_cache_key_covers_the_methods_options_and_the_search(ipndm_experiment, tmp_path,
                                                                 small_search, monkeypatch):
    """unipc of order 3 is not given the levels tuned for order 1 (nor the other way round);
    another number of warm-up draws, candidates or seed searches again; the same key reads
    back."""
    monkeypatch.setattr(build, "tune_grid", lambda *a, **k: (
        small_search.append(("tune", k["method"], len(a[3]), k["options"])) or tuple(a[3])))
    exp, model = ipndm_experiment
    for order in (1, 3, 1, 3):
        exp.tuned_grid(model, method="unipc", steps=5, options={"order": order},
                       cache_dir=tmp_path)
    tunes = [c for c in small_search if c[0] == "tune"]
    assert tunes == [("tune", "unipc", 5, {"order": 1}), ("tune", "unipc", 5, {"order": 3})]
    assert len(list(tmp_path.glob("grid-tuned-unipc-5-*.npz"))) == 2
    with np.load(next(tmp_path.glob("grid-tuned-unipc-5-*.npz"))) as f:
        key = json.loads(str(f["key"]))
        assert key["options"]["order"] in (1, 3)
        assert key["tuning"] == dataclasses.asdict(sgm.Tuning(num=build.SEARCH_WARMUP))
        assert key["tuning"]["loss"] == "rms"  # levels fitted another way are tuned again
    searches = lambda: [c for c in small_search if c[0] == "search"]  # noqa: E731
    assert len(searches()) == 1
    monkeypatch.setattr(build, "SEARCH_WARMUP", 8)
    exp.searched_grid(model, steps=4, cache_dir=tmp_path)
    assert len(searches()) == 2
    monkeypatch.setattr(build, "SEARCH_CANDIDATES", 10)
    exp.searched_grid(model, steps=4, cache_dir=tmp_path)
    assert searches()[-1] == ("search", 10) and len(searches()) == 3
    seeded = dataclasses.replace(exp, cfg=dataclasses.replace(
        exp.cfg, sample=dataclasses.replace(exp.cfg.sample, seed=5)))
    seeded.searched_grid(model, steps=4, cache_dir=tmp_path)
    assert len(searches()) == 4
    exp.searched_grid(model, steps=4, cache_dir=tmp_path)
    seeded.searched_grid(model, steps=4, cache_dir=tmp_path)
    assert len(searches()) == 4  # read back
    assert len(list(tmp_path.glob("grid-None-*.npz"))) == 4


# --------------------------------------------------------------------------- overflowing search


def _labelled_points(path) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 2)) + labels[:, None]
    np.savez(path, x=x.astype(np.float32), labels=labels)
    return path


def _guided(exp, guidance):
    return dataclasses.replace(exp, cfg=dataclasses.replace(
        exp.cfg, sample=dataclasses.replace(exp.cfg.sample, guidance=guidance)))


def test_a_guided_search_or_tuning_that_overflows_names_the_guidance(tmp_path, small_search,
                                                                     monkeypatch):
    """At a guidance that overflows the score the search and the tuning are refused with one
    sentence naming sample.guidance and what to do; without guidance the sentence blames the
    model's score."""
    sets = [*TINY, "data.name=array", f"data.root={_labelled_points(tmp_path / 'p.npz')}",
            "model.conditional=true", "model.label_dropout=0.2", "sample.method=dpm2m"]
    exp = build.experiment(build.load(MOONS, sets))
    model, loud = exp.state.ema, _guided(exp, 1e30)
    with pytest.raises(NumericalError, match=r"search's warm-up trajectories are not finite; the likely cause is "
                                             r"classifier-free guidance at sample.guidance=1e\+30.*"
                                             r"lower sample.guidance"):
        loud.searched_grid(model, steps=4)
    levels = np.geomspace(float(model.sde.noise_level(model.sde.t1)),
                          float(model.sde.noise_level(model.sde.sampling_t0)), 12)
    costs = np.where(np.triu(np.ones((12, 12)), 1) > 0, 1.0, np.inf)
    searching = build.search_costs
    monkeypatch.setattr(build, "search_costs", lambda *a, **k: (levels, costs))
    with pytest.raises(NumericalError, match=r"tune dpm2m's levels are not finite; the likely cause is "
                                             r"classifier-free guidance at sample.guidance=1e\+30"):
        loud.tuned_grid(model, method="dpm2m", steps=4)
    broken = jax.tree.map(lambda a: a * np.nan if eqx.is_inexact_array(a) else a, model)
    monkeypatch.setattr(build, "search_costs", searching)
    with pytest.raises(NumericalError, match="score returns NaN or inf: use a checkpoint"):
        _guided(exp, 0.0).searched_grid(broken, steps=4)


@pytest.mark.slow
def test_command_names_the_guidance_that_overflows_the_search(tmp_path, capsys, small_search):
    """`--set sample.guidance=1e30 sample.method=dpm2m sample.grid=searched` on a label-conditional
    run: exit 2 and one line naming sample.guidance."""
    sets = ["data.name=array", f"data.root={_labelled_points(tmp_path / 'p.npz')}",
            "model.conditional=true", "model.label_dropout=0.2"]
    wd = tmp_path / "run"
    assert run.main(MOONS, sets=[*TINY, *sets], mode="train", workdir=wd, progress=False) == 0
    capsys.readouterr()
    assert sample(wd, *sets, "sample.guidance=1e30", "sample.method=dpm2m", "sample.steps=4",
                  "sample.grid=searched") == 2
    err = capsys.readouterr().err
    assert "sample.guidance" in err and "Traceback" not in err
