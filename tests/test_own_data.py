"""A user's own data: the validation split, the best checkpoint and early stopping, per-point
likelihoods in data units, the classical baselines beside them and the tabular recipe."""

import dataclasses
import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

import sgm
from sgm import build, data, parallel, run, train
from sgm import checkpoint as ckpt
from sgm import config as C
from sgm.data import toy
from sgm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"
TABULAR = ROOT / "configs" / "tabular.py"
TINY = ["train.steps=8", "train.batch_size=32", "train.log_every=4", "train.ckpt_every=4",
        "train.eval_every=4", "train.warmup=2", "model.width=16", "model.depth=1",
        "data.n_train=256", "data.n_test=32", "sample.num=16", "sample.steps=8",
        "likelihood.num=8", "likelihood.batch=8", "likelihood.rtol=1e-2", "likelihood.atol=1e-2",
        "train.eval_num=8", "train.log_to=[]"]


def tiny(*extra, ckpt_dir=None):
    return build.experiment(build.load(EIGHT, [*TINY, *extra]), ckpt_dir=ckpt_dir)


def rows(a):
    return {tuple(r) for r in np.asarray(a).reshape(len(a), -1).tolist()}


# ------------------------------------------------------------------------ the validation split


def test_validation_split_is_disjoint_fixed_and_leaves_the_test_split_alone():
    x = np.arange(400, dtype=np.float32).reshape(200, 2)
    ds = data.Dataset("t", x, x[:10] + 1000, None, None, (2,))
    a, b = data.split_validation(ds, 0.2), data.split_validation(ds, 0.2)
    assert a.val.shape == (40, 2) and a.train.shape == (160, 2)
    assert not rows(a.val) & rows(a.train) and rows(a.val) | rows(a.train) == rows(x)
    assert not (rows(a.val) | rows(a.train)) & rows(a.test)
    np.testing.assert_array_equal(a.val, b.val)  # the same examples every time
    np.testing.assert_array_equal(a.test, ds.test)
    assert np.all(np.diff(a.train[:, 0]) > 0)  # the rest kept in order
    loaded = data.load("moons", n_train=500, n_test=50)
    assert loaded.val.shape == (50, 2) and loaded.train.shape == (450, 2)
    assert not rows(loaded.val) & rows(loaded.train)


def test_an_array_file_brings_its_own_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    x, x_val, x_test = (rng.normal(size=(n, 3)).astype(np.float32) for n in (50, 7, 9))
    np.savez(tmp_path / "t.npz", x=x, x_val=x_val, x_test=x_test)
    ds = data.load("array", root=tmp_path / "t.npz")
    np.testing.assert_array_equal(ds.train, x)
    np.testing.assert_array_equal(ds.val, x_val)
    np.testing.assert_array_equal(ds.test, x_test)
    np.savez(tmp_path / "bad.npz", x=x, x_val=x_val[:, :2])
    with pytest.raises(DataError, match=r"x_val\) has samples of shape \(2,\): expected \(3,\)"):
        data.load("array", root=tmp_path / "bad.npz")


@pytest.mark.parametrize("sets, match", [
    (["data.val_fraction=0.999"], "data.val_fraction=0.999 is invalid for 'array'"),
    (["data.val_fraction=0.0"], "data.val_fraction=0.0 is invalid"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0 is invalid"),
    (["train.patience=0"], "train.patience=0 is invalid"),
    (["train.patience=3", "train.eval_every=0"], "train.patience=3 is invalid: expected none "
                                                 "without train.eval_every"),
])
def test_bad_validation_and_patience_settings_are_one_sentence_and_write_nothing(
        tmp_path, capsys, sets, match):
    np.savez(tmp_path / "t.npz", x=np.random.default_rng(0).normal(size=(60, 3)))
    wd = tmp_path / "w"
    code = run.main(TABULAR, sets=[f"data.root={tmp_path / 't.npz'}", *sets], workdir=wd,
                    progress=False)
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1
    assert not wd.exists()


class Poisoned(np.ndarray):
    """An array that fails the test whenever its values are read."""

    def __getitem__(self, item):
        raise AssertionError("the test split was read during training")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the test split was read during training")


def test_no_metric_during_training_reads_the_test_set(tmp_path, monkeypatch):
    exp = tiny()
    test = np.asarray(exp.ds.test).view(Poisoned)
    exp = dataclasses.replace(exp, ds=dataclasses.replace(exp.ds, test=test))
    asked, split = [], build.Experiment.split
    monkeypatch.setattr(build.Experiment, "split",
                        lambda self, name: asked.append(name) or split(self, name))
    state, done = run.train_phase(exp, mesh=parallel.make_mesh(), workdir=tmp_path)
    assert asked and set(asked) == {"val"}
    assert done["steps"] == 8 and np.isfinite(done["eval_loss"])
    assert done["best_step"] in (4, 8)


# ------------------------------------------------------- the best checkpoint and early stopping


def _state():
    model = sgm.nets.MLP(2, width=4, depth=1, key=jax.random.key(0))
    return train.init_state(model, build.build_optimizer(C.Config()))


def test_best_checkpoint_keeps_the_best_score_and_is_read_back(tmp_path):
    best = train.BestCheckpoint(tmp_path / "best", patience=2, eval_every=10)
    assert best.step is None and not best.stopped(100)
    state = _state()
    assert best.update(state, 10, 5.0) and best.update(state, 20, 3.0)
    assert not best.update(state, 30, 4.0) and not best.update(state, 40, float("nan"))
    assert (best.step, best.score) == (20, 3.0)
    assert not best.stopped(30) and best.stopped(40)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "best")] == ["ckpt_000000020.npz"]
    again = train.BestCheckpoint(tmp_path / "best", patience=2, eval_every=10)
    assert (again.step, again.score) == (20, 3.0) and again.stopped(40)
    bad = eqx.tree_at(lambda s: s.bad_step, state, jax.numpy.asarray(5))
    assert not again.update(bad, 50, 1.0)  # a state after a skipped NaN step is never kept


def test_an_evaluation_that_says_stop_ends_training_with_a_checkpoint(tmp_path):
    exp = tiny("train.steps=40", "train.ckpt_every=0")
    seen = []

    def on_eval(s, step):
        seen.append(step)
        return {"stop": step == 8}

    state = exp.train(exp.state, mesh=parallel.make_mesh(), ckpt_dir=tmp_path, on_eval=on_eval)
    assert int(state.step) == 8 and seen == [4, 8]
    assert ckpt.latest_step(tmp_path) == 8


@pytest.mark.slow
def test_best_checkpoint_and_early_stopping_survive_resume(tmp_path):
    """Interrupted and resumed, a run keeps the best checkpoint and stops where an uninterrupted
    one does; the sample and likelihood phases evaluate that checkpoint."""
    # a constant learning rate after the warm-up: a run to step 12 is the start of a run to 60
    sets = ["train.steps=60", "train.patience=2", "train.ckpt_every=4", "train.log_to=jsonl",
            "train.decay=constant"]

    def go(wd, *more, mode="train"):
        assert run.main(EIGHT, sets=[*TINY, *sets, *more], workdir=wd, mode=mode,
                        progress=False, density_grid=0) == 0
        return json.loads((wd / "summary.json").read_text())

    whole = go(tmp_path / "a")
    go(tmp_path / "b", "train.steps=12")
    parts = go(tmp_path / "b")
    rows_a = [r for r in sgm.track.read_jsonl(tmp_path / "a" / "metrics.jsonl") if "eval_nll" in r]
    rows_b = [r for r in sgm.track.read_jsonl(tmp_path / "b" / "metrics.jsonl") if "eval_nll" in r]
    assert rows_a == rows_b
    nll = {r["step"]: r["eval_nll"] for r in rows_a}
    assert whole["best_step"] == parts["best_step"] == min(nll, key=nll.get)
    assert whole["steps"] == parts["steps"] == max(nll)
    # stopped at the second evaluation without a better NLL, or at train.steps
    assert whole["steps"] == (whole["best_step"] + 2 * 4 if whole["stopped_early"] else 60)
    a, b = (ckpt.latest(tmp_path / w / "checkpoints" / "best") for w in "ab")
    assert a.name == b.name == f"ckpt_{whole['best_step']:09d}.npz"
    with np.load(a) as fa, np.load(b) as fb:
        assert all(np.array_equal(fa[k], fb[k]) for k in fa.files)
    out = go(tmp_path / "a", mode="likelihood")
    assert out["evaluated_step"] == whole["best_step"]
    assert run.main(EIGHT, sets=[*TINY, *sets], workdir=tmp_path / "a", mode="likelihood",
                    progress=False, density_grid=0, checkpoint="latest") == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["evaluated_step"] == \
        whole["steps"]


# -------------------------------------------------------- likelihoods in data units, baselines


def test_per_point_likelihoods_are_in_data_units_with_the_baselines(tmp_path, capsys):
    """For the exact score (in the standardised model space), the likelihood phase's per-point
    log-likelihoods are the data's exact density in data units (the standardisation's Jacobian
    included) and equal `Experiment.log_density` on the same points; the baselines are fitted
    and paired with them."""
    exp = build.experiment(build.load(EIGHT, ["data.n_train=2000", "data.n_test=40",
                                              "likelihood.num=24", "likelihood.batch=24",
                                              "likelihood.baselines=true"]))
    weights, means, std = toy.eight_gaussians_mixture()
    mean, scale = np.asarray(exp.preprocess.mean), np.asarray(exp.preprocess.std)
    assert np.all(np.abs(np.log(scale)) > 0.3)  # a Jacobian far from one
    mixture = sgm.GaussianMixture(weights, (means - mean) / scale,
                                  np.broadcast_to(std / scale, means.shape))
    score = mixture.score(exp.sde)

    class Exact(eqx.Module):
        sde: object

        def __call__(self, t, x):
            return score(t, x)

    model = Exact(exp.sde)
    out = run.likelihood_phase(exp, model, step=0, mesh=None, workdir=tmp_path, density_grid=0)
    lik = out["likelihood"]
    with np.load(tmp_path / "likelihood.npz", allow_pickle=False) as f:
        points = {k: f[k] for k in f.files}
    x = exp.ds.test[:24]
    np.testing.assert_array_equal(points["index"], np.arange(24))
    true = exp.ds.log_prob(x)
    np.testing.assert_allclose(points["log_likelihood"], true, atol=2e-3)
    np.testing.assert_allclose(points["log_likelihood"], exp.log_density(model, x), atol=1e-5)
    assert lik["nll"] == pytest.approx(-points["log_likelihood"].mean(), abs=1e-5)
    assert lik["nll_per_dim"] == pytest.approx(lik["nll"] / 2)
    assert lik["solver_check_num"] == 20  # at least min(num, 20) points
    assert set(lik["baselines"]) == {"gaussian", "gmm", "kde"}
    for name, b in lik["baselines"].items():
        d = (-points["log_likelihood"] + points[f"baseline_{name}"]) / 2
        assert b["diff"] == pytest.approx(d.mean(), abs=1e-9)
        assert b["diff_stderr"] == pytest.approx(d.std(ddof=1) / np.sqrt(24), abs=1e-9)
    line = capsys.readouterr().out
    assert f"= {lik['nll_per_dim']:.4f} nats/dim" in line and "gmm:" in line


def test_the_likelihood_progress_bar_counts_the_solver_check():
    exp = tiny()  # 8 test points, all of them in the error bar's solves
    calls = []
    exp.heldout_likelihood(exp.state.ema, progress=lambda d, t: calls.append((d, t)))
    total = 8 + 2 * 8
    assert {t for _, t in calls} == {total} and calls[-1] == (total, total)


# -------------------------------------------------------------------------- the tabular recipe


def test_tabular_recipe_builds_where_the_batch_is_larger_than_the_table(tmp_path, monkeypatch,
                                                                      capsys):
    """The recipe built on a 60-row table (it trains in tests/test_configs.py): the batch is capped at the training split, the work
    directory is named after the file, and the refusal of another data set's run names the field."""
    np.savez(tmp_path / "small.npz", x=np.random.default_rng(0).normal(size=(60, 3)))
    cfg = build.load(TABULAR, [f"data.root={tmp_path / 'small.npz'}"])
    exp = build.experiment(cfg)
    assert exp.cfg.train.batch_size == exp.ds.train.shape[0] == 43  # 54 training rows, a fifth val
    assert build.default_workdir(cfg) == Path("runs") / "tabular-small"
    monkeypatch.chdir(tmp_path)
    assert run.main(EIGHT, sets=[*TINY, "train.steps=4"], workdir="w", mode="train",
                    progress=False) == 0
    code = run.main(EIGHT, sets=[*TINY, "data.name=array", "data.n_train=none", "data.n_test=none",
                                 "train.batch_size=16", f"data.root={tmp_path / 'small.npz'}"],
                    workdir="w", mode="train", progress=False)
    err = capsys.readouterr().err
    assert code == 2 and "data.name='eight_gaussians', not 'array'" in err and "--workdir" in err
