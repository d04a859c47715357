"""Figures: each function writes a decodable, non-blank PNG; `import sgm.plot` skips matplotlib."""

import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest
from PIL import Image

import sgm
import sgm.plot
from sgm import plot_grids
from sgm.data import toy

RNG = np.random.default_rng(0)
GM = sgm.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.5, 0.4])
GM_LOGP = jax.jit(jax.vmap(GM.log_prob))  # a jax callable on (K, 2); the tests share one grid size


def check_png(path, returned):
    """The file is where it was asked to be, a PNG, and not a single flat colour."""
    assert returned == path and path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 2
    return path


def test_import_does_not_import_matplotlib():
    code = ("import sys, sgm.plot, sgm.plot_grids, sgm.run; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_grid(tmp_path, channels):
    images = RNG.uniform(-1, 1, (10, channels, 8, 8))
    path = tmp_path / "nested" / "dir" / "grid.png"  # parents are created
    check_png(path, sgm.plot.sample_grid(images, path, nrow=4, lo=-1, hi=1, title="samples"))
    with Image.open(path) as img:  # colour samples are not squeezed into a 256-colour palette
        assert img.mode == ("P" if channels == 1 else "RGB")


def test_path_without_suffix_is_a_png(tmp_path):
    path = tmp_path / "figure"
    check_png(path, sgm.plot.sample_grid(RNG.uniform(size=(4, 1, 6, 6)), path))
    assert [p.name for p in tmp_path.iterdir()] == ["figure"]  # no ".png" added, no temp file left


def test_sample_grid_places_every_image(tmp_path):
    """Black images on white padding: 6 images, 3 per row, 1-pixel gaps at zoom z give black
    blocks in a 2 x 3 arrangement."""
    path = sgm.plot.sample_grid(np.zeros((6, 1, 5, 5)), tmp_path / "g.png", nrow=3)
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L")) < 128
    rows = np.flatnonzero(np.diff(grey.any(axis=1).astype(int)) == 1)
    cols = np.flatnonzero(np.diff(grey.any(axis=0).astype(int)) == 1)
    assert len(rows) == 2 and len(cols) == 3


def test_sample_grid_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="N, C, H, W"):
        sgm.plot.sample_grid(np.zeros((2, 2, 4, 4)), tmp_path / "bad.png")


def test_scatter_2d_with_reference_and_jax_density(tmp_path):
    x = RNG.normal(size=(300, 2)) + [1.0, 0.0]
    ref = jax.numpy.asarray(RNG.normal(size=(300, 2)))  # jax arrays are accepted too
    x[0] = [100.0, 0.0]  # an outlier is noted, not allowed to stretch the window
    x[1] = np.nan
    path = sgm.plot.scatter_2d(x, tmp_path / "s.png", reference=ref, log_prob=GM_LOGP,
                               n=40, title="mixture")
    check_png(tmp_path / "s.png", path)


def test_scatter_2d_alone(tmp_path):
    path = sgm.plot.scatter_2d(RNG.normal(size=(50, 2)), tmp_path / "s.png", lim=3)
    check_png(tmp_path / "s.png", path)


def test_density_panel_with_empty_regions(tmp_path):
    """The checkerboard's log-density is -inf off its support."""
    path = sgm.plot.scatter_2d(RNG.uniform(-4, 4, (50, 2)), tmp_path / "d.png",
                               log_prob=lambda x: toy.log_prob("checkerboard", x),
                               lim=((-5, 5), (-5, 5)), n=40, title="checkerboard")
    check_png(tmp_path / "d.png", path)


def test_density_panel_unnormalised(tmp_path):
    """A log-density too large to exponentiate is drawn relative to its maximum."""
    path = sgm.plot.scatter_2d(RNG.normal(size=(50, 2)), tmp_path / "d.png",
                               log_prob=lambda x: 1e4 - np.sum(x**2, axis=-1), lim=2, n=30)
    check_png(tmp_path / "d.png", path)


def test_bad_limits(tmp_path):
    with pytest.raises(ValueError, match="lim must be"):
        sgm.plot.scatter_2d(RNG.normal(size=(5, 2)), tmp_path / "d.png", lim=(1, 2, 3))


def test_scatter_grid(tmp_path):
    panels = {"points": RNG.normal(size=(100, 2)), "density": GM_LOGP, "blank": None}
    path = plot_grids.scatter_grid(panels, tmp_path / "grid.png", ncols=2, n=40, title="grid")
    check_png(tmp_path / "grid.png", path)


def brownian_paths(scale_end, t_rev=False, n=200, steps=50):
    ts = np.linspace(0.0, 1.0, steps + 1)
    x0 = np.where(RNG.random(n) < 0.3, -1.5, 1.5) + 0.3 * RNG.normal(size=n)
    xs = x0 + np.cumsum(RNG.normal(size=(steps + 1, n)), axis=0) * scale_end / np.sqrt(steps)
    return (ts[::-1], xs[::-1, :, None]) if t_rev else (ts, xs)


def test_sde_paths(tmp_path):
    """Linear and symlog (VE-like: wide end 50x the data end) axes, forward and reverse time."""
    paths = {"narrow": brownian_paths(1.0), "wide, reverse": brownian_paths(50.0, t_rev=True)}

    def normal(s):
        return lambda y: -0.5 * (y / s) ** 2 - np.log(s * np.sqrt(2 * np.pi))

    marginals = {"narrow": (None, normal(1.8)), "wide, reverse": (normal(50.0), None)}
    path = plot_grids.sde_paths(paths, tmp_path / "p.png", marginals=marginals, title="paths")
    check_png(tmp_path / "p.png", path)


def test_sde_paths_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="paths"):
        plot_grids.sde_paths({"bad": (np.zeros(5), np.zeros((4, 3)))}, tmp_path / "p.png")


def test_training_curves(tmp_path):
    metrics = [{"step": s, "loss": 1.0 / (1 + s), "lr": 1e-3, "note": "text"}
               for s in range(0, 200, 5)]
    metrics += [{"step": s, "eval_loss": 2.0 / (1 + s), "eval_nll": 3.0 - s / 100,
                 "bpd": np.float32(1.5)} for s in (50, 100, 150)]
    metrics.append({"step": 200, "loss": float("nan")})  # skipped, not fatal
    check_png(tmp_path / "c.png", sgm.plot.training_curves(metrics, tmp_path / "c.png"))


def test_training_curves_needs_a_metric(tmp_path):
    with pytest.raises(ValueError, match="no numeric metric"):
        sgm.plot.training_curves([{"step": 0, "note": "x"}], tmp_path / "c.png")


def test_curve_panels_group_train_and_heldout_and_drop_constants():
    metrics = [{"step": s, "loss": 1.0 / s, "lr": min(s, 20) * 1e-4, "skipped": 0, "steps_per_s": 9.0}
               for s in range(10, 110, 10)]
    metrics += [{"step": s, "eval_loss": 0.5 / s, "eval_nll": 3.0 - s / 100} for s in (50, 100)]
    metrics += [{"step": 100, "test_nll": 2.5, "test_bpd": 1.8}]
    panels = sgm.plot.curve_panels(metrics)
    assert list(panels) == ["loss", "lr", "nll"]  # skipped, steps/s and bpd are constant
    assert sorted(panels["loss"]) == ["", "eval_"] and sorted(panels["nll"]) == ["eval_", "test_"]
    assert panels["nll"]["eval_"] == ([50.0, 100.0], [2.5, 2.0])
    # a run too short for anything to vary still gets its panels
    assert list(sgm.plot.curve_panels(metrics[:1])) == ["loss", "lr", "skipped", "steps_per_s"]


def test_training_curves_figure(tmp_path):
    metrics = [{"step": s, "loss": 1.0 / s, "lr": min(s, 20) * 1e-4, "skipped": 0,
                "steps_per_s": 300.0 if s > 10 else 3.0} for s in range(10, 410, 10)]
    metrics += [{"step": s, "eval_loss": 0.5 / s, "eval_nll": 3.0 - s / 1000} for s in (100, 200, 400)]
    metrics += [{"step": 400, "test_nll": 2.5}]
    path = tmp_path / "curves.png"
    check_png(path, sgm.plot.training_curves(metrics, path, title="run"))


def test_log_axis_only_where_the_series_spans_enough():
    assert sgm.plot.log_axis("loss", [0.06, 0.6]) and sgm.plot.log_axis("eval_loss", [1.0, 3.5])
    assert not sgm.plot.log_axis("loss", [9.1, 13.8])  # the default run's: one tick on a log axis
    assert sgm.plot.log_axis("steps_per_s", [0.2, 2.5])
    assert not sgm.plot.log_axis("steps_per_s", [40.0, 80.0])
    assert not sgm.plot.log_axis("lr", [1e-5, 1e-3]) and not sgm.plot.log_axis("loss", [-1.0, 5.0])


def test_pick_frames():
    levels = np.linspace(-10.0, 9.0, 501) ** 3 / 100  # monotone, unevenly spaced in index
    idx = sgm.plot.pick_frames(levels, 8)
    assert idx[0] == 0 and idx[-1] == 500 and len(idx) == 8 and np.all(np.diff(idx) > 0)
    np.testing.assert_allclose(np.diff(levels[idx]), np.diff(levels[idx]).mean(), rtol=0.05)
    assert list(sgm.plot.pick_frames([0.0, 1.0, 2.0], 8)) == [0, 1, 2]
    coarse = sgm.plot.pick_frames([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 30.0], 8)
    assert len(set(coarse)) == 8 and coarse[0] == 0 and coarse[-1] == 9  # no frame twice


@pytest.mark.parametrize("conditions", ["labels", "images", None])
def test_reverse_process(tmp_path, conditions):
    frames = RNG.uniform(size=(8, 4, 1, 8, 8))
    cond = {"labels": [f"label {i}" for i in range(4)], "images": RNG.normal(size=(4, 1, 8, 8)),
            None: None}[conditions]
    path = tmp_path / "reverse.png"
    times = np.linspace(1.0, 1e-3, 8)
    check_png(path, sgm.plot.reverse_process(frames, times, path, conditions=cond, title="reverse"))
    with pytest.raises(ValueError, match="one time per frame"):
        sgm.plot.reverse_process(frames, times[:3], path)


def test_model_density_figure(tmp_path):
    x = np.asarray(GM.sample(jax.random.key(0), 300))
    lim = ((-4.0, 4.0), (-3.0, 3.0))
    grid = sgm.plot.density_grid(GM_LOGP, lim, 40)
    path = tmp_path / "density.png"
    check_png(path, sgm.plot.model_density_2d(x, path, model_log_prob=grid, log_prob=GM_LOGP,
                                              lim=lim, n=40, title="model\ngap"))


def test_model_density_grid_of_a_closed_form_score_is_the_exact_density():
    """The 2-D density figure's grid, computed as the command does (`Experiment.log_density`, the
    probability-flow ODE with `sgm.run.DENSITY_OPTIONS`, standardisation and its log-Jacobian included)
    for the exact score of the eight-Gaussians mixture, is the data's exact density on the grid
    up to the solver's error."""
    from sgm import build, run
    from sgm import config as C

    exp = build.experiment(C.override(C.Config(), ["data.n_train=2000", "data.n_test=100"]))
    weights, means, std = toy.eight_gaussians_mixture()
    mean, scale = np.asarray(exp.preprocess.mean), np.asarray(exp.preprocess.std)
    stds = np.broadcast_to(std / scale, means.shape)
    mixture = sgm.GaussianMixture(weights, (means - mean) / scale, stds)  # in model space
    score = mixture.score(exp.sde)

    class Exact(eqx.Module):  # a closed-form "model": the score of every marginal p_t
        sde: object

        def __call__(self, t, x):
            return score(t, x)

    lim = sgm.plot.limits(None, exp.ds.test)
    n = 14
    model = sgm.plot.density_grid(lambda p: exp.log_density(Exact(exp.sde), p, **run.DENSITY_OPTIONS),
                                  lim, n)
    exact = sgm.plot.density_grid(exp.ds.log_prob, lim, n)
    dens, true = np.exp(model), np.exp(exact)
    # measured: 0.04% of the peak and 4e-4 nats here; 0.5% and 6e-4 nats on the command's 64 x 64 grid
    assert np.max(np.abs(dens - true)) < 0.005 * true.max()
    mass = true > 1e-2 * true.max()
    assert np.median(np.abs(model - exact)[mass]) < 0.005
