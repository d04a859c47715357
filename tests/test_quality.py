"""The offline quality score (`sgm.quality`): the Fréchet distance against closed forms, the
classifier's training, cache and refusals on tiny synthetic images, the score's references, the
command, the sample phase's hook and the config."""

import json
import os
import types
from pathlib import Path

import equinox as eqx
import numpy as np
import pytest

from sgm import build, data, parallel, quality, quality_cli, run
from sgm import config as C
from sgm.conditioning import Conditioning
from sgm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"


def _one_sentence(e) -> str:
    text = str(e.value)
    assert "\n" not in text and text.endswith(".") and "Traceback" not in text
    return text


# ------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    mu, cov = quality.feature_stats(f)
    assert quality.frechet_distance(mu, cov, mu, cov) <= 1e-8 * np.trace(cov)
    # fewer points than features: a singular covariance, still zero
    mu, cov = quality.feature_stats(f[:10])
    assert quality.frechet_distance(mu, cov, mu, cov) <= 1e-8 * np.trace(cov)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    d = quality.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert d == pytest.approx(want, rel=1e-10)


def test_frechet_distance_of_non_commuting_gaussians_is_the_closed_form():
    # for a 2x2 positive semi-definite M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), and
    # det(cov1^(1/2) cov2 cov1^(1/2)) = det(cov1) det(cov2): no matrix square root needed
    c1 = np.array([[2.0, 0.9], [0.9, 0.7]])
    c2 = np.array([[0.4, -0.3], [-0.3, 1.5]])
    assert not np.allclose(c1 @ c2, c2 @ c1)
    tr_m = np.trace(c1 @ c2)  # tr(cov1^(1/2) cov2 cov1^(1/2)) = tr(cov1 cov2)
    cross = np.sqrt(tr_m + 2.0 * np.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.1, 0.5])
    want = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * cross
    assert quality.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-10)
    # symmetric in its two Gaussians, though the formula is not written symmetrically
    assert quality.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_agrees_with_scipy_in_many_dimensions():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    c1, c2 = a @ a.T + 0.1 * np.eye(12), b @ b.T + 0.1 * np.eye(12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    cross = np.trace(linalg.sqrtm(c1 @ c2)).real  # the usual FID formula: sqrt of cov1 cov2
    want = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * cross
    assert quality.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-8)


def test_frechet_distance_of_singular_covariances():
    # rank-one covariances along the same line: the distance of 1-D Gaussians, (s1 - s2)^2
    u = np.array([[0.6], [0.8]])
    d = quality.frechet_distance(np.zeros(2), 4.0 * u @ u.T, np.zeros(2), 1.0 * u @ u.T)
    assert d == pytest.approx(1.0, abs=1e-10)


# ------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 12)])  # 8x12 ends at 4x6, resized
def test_the_classifier_takes_images_of_any_size(shape):
    clf = quality.new_classifier(shape, 5)
    x = np.random.default_rng(0).uniform(size=(3, *shape)).astype(np.float32)
    logits, feats = quality.apply(clf, x)
    assert logits.shape == (3, 5) and feats.shape == (3, quality.FEATURES)
    np.testing.assert_allclose(logits, feats @ np.asarray(clf.head.weight).T + clf.head.bias,
                               rtol=1e-4, atol=1e-5)


def _squares(n, rng, levels=17):
    """8x8 images of three classes: a bright 3x3 square in the top left, top right or bottom
    middle, on noise."""
    y = rng.integers(0, 3, n).astype(np.int32)
    x = rng.integers(0, 5, (n, 1, 8, 8))
    for i, (r, c) in enumerate([(1, 1), (1, 4), (4, 2)]):
        x[y == i, :, r:r + 3, c:c + 3] = levels - 1
    return x.astype(np.uint8), y


@pytest.fixture(scope="module")
def squares():
    rng = np.random.default_rng(0)
    xtr, ytr = _squares(600, rng)
    xte, yte = _squares(200, rng)
    return data.Dataset("squares", xtr, xte, ytr, yte, (1, 8, 8), levels=17, num_classes=3)


def _shared_cache(tmp_path_factory, name, ds, steps):
    """A cache folder shared by the test workers, holding a classifier of `ds` trained with
    `steps` steps by the first worker that needs it (the others wait for it and load it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()  # under xdist, each worker's; its parent the session's
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    cache = root / f"quality-{name}"
    with FileLock(str(root / f"quality-{name}.lock")):
        clf, info = quality.classifier_for(ds, cache_dir=cache, steps=steps)
    return clf, info, cache


@pytest.fixture(scope="module")
def trained(squares, tmp_path_factory):
    return _shared_cache(tmp_path_factory, "squares", squares, 20)


def test_training_and_the_cache(squares, tmp_path, monkeypatch):
    """Trained when the cache has none (with the steps asked for), saved, then loaded."""
    calls = []

    def fake_training(images, labels, *, levels, num_classes, steps, progress):
        calls.append(steps)
        return quality.new_classifier(images.shape[1:], num_classes, seed=1)

    monkeypatch.setattr(quality, "train_classifier", fake_training)
    clf, info = quality.classifier_for(squares, cache_dir=tmp_path / "new", steps=7)
    assert calls == [7] and not info["cached"] and info["steps"] == 7
    path = quality.cache_path(squares, tmp_path / "new")
    assert info["path"] == str(path) and [p.name for p in path.parent.iterdir()] == [path.name]
    again, info2 = quality.classifier_for(squares, cache_dir=tmp_path / "new")
    assert calls == [7] and info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    assert eqx.tree_equal(eqx.filter(again, eqx.is_array), eqx.filter(clf, eqx.is_array))


def test_the_classifier_learns_the_classes_and_is_cached(squares, trained, monkeypatch):
    clf, info, cache = trained
    assert info["test_accuracy"] >= 0.95 and info["steps"] == 20
    path = quality.cache_path(squares, cache)
    assert path.is_file() and info["path"] == str(path)
    assert path.parent == cache and path.suffix == ".eqx"
    assert path.stem.startswith("classifier-squares-") and len(path.stem.split("-")[-1]) == 12
    header = quality.read_header(path)
    assert header["data_hash"] == quality.data_hash(squares) and header["shape"] == [1, 8, 8]
    assert header["test_accuracy"] == info["test_accuracy"] and header["levels"] == 17

    def no_training(*a, **k):
        raise AssertionError("the cached classifier was trained again")

    monkeypatch.setattr(quality, "train_classifier", no_training)
    again, info2 = quality.classifier_for(squares, cache_dir=cache)
    assert info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    x = squares.test[:50]
    np.testing.assert_array_equal(quality.apply(again, x, levels=17)[0],
                                  quality.apply(clf, x, levels=17)[0])
    # the environment names the default folder
    monkeypatch.setenv("SGM_CACHE", str(cache))
    assert quality.classifier_for(squares)[1]["path"] == str(path)


def test_other_training_data_is_another_cache_file(squares, trained):
    other = data.Dataset("squares", squares.train[:-1], squares.test, squares.train_cond[:-1],
                         squares.test_cond, (1, 8, 8), levels=17, num_classes=3)
    assert quality.data_hash(other) != quality.data_hash(squares)
    assert quality.cache_path(other, "c") != quality.cache_path(squares, "c")


def _copy_cache(trained, squares, tmp_path) -> Path:
    _, _, cache = trained
    path = quality.cache_path(squares, tmp_path)
    path.write_bytes(quality.cache_path(squares, cache).read_bytes())
    return path


def test_damaged_or_foreign_cache_files_are_one_sentence(squares, trained, tmp_path):
    path = _copy_cache(trained, squares, tmp_path)
    good = path.read_bytes()
    magic, header, weights = good.split(b"\n", 2)
    cases = {
        "is damaged \\(expected the weights": good[:len(good) - 100],  # truncated
        "and nothing more": good + b"\0",
        "is not a cached classifier": b"PK\3\4" + good,
        "damaged header": magic + b"\n{not json\n" + weights,
        "other data or another architecture \\(num_classes": magic + b"\n" + json.dumps(
            {**json.loads(header), "num_classes": 4}).encode() + b"\n" + weights,
        "test_accuracy is None": magic + b"\n" + json.dumps(
            {**json.loads(header), "test_accuracy": None}).encode() + b"\n" + weights,
    }
    for match, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(DataError, match=match) as e:
            quality.classifier_for(squares, cache_dir=tmp_path)
        assert str(path) in _one_sentence(e) and "remove it" in str(e.value)
    # NaN weights: the same file with one weight set to NaN
    clf, _, _ = trained
    bad = eqx.tree_at(lambda m: m.head.bias, clf, clf.head.bias.at[0].set(np.nan))
    quality.save_classifier(bad, path, json.loads(header))
    with pytest.raises(DataError, match="NaN or inf weights"):
        quality.classifier_for(squares, cache_dir=tmp_path)


def test_an_unwritable_cache_folder_is_refused_before_training(squares, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(quality, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError, match="cannot create the classifier cache folder") as e:
        quality.classifier_for(squares, cache_dir=tmp_path / "file" / "cache")
    _one_sentence(e)


def test_real_images_as_samples_score_like_the_reference(squares, trained):
    clf, info, _ = trained
    q = quality.score(clf, squares.test[:150], squares.test_cond[:150], squares,
                      test_accuracy=info["test_accuracy"])
    assert list(q) == ["num_samples", "sample_accuracy", "frechet", "frechet_reference",
                       "frechet_reference_std", "reference_accuracy", "classifier_test_accuracy"]
    assert 0 < q["frechet_reference_std"] < q["frechet_reference"]
    assert q["num_samples"] == 150 and q["sample_accuracy"] >= 0.95
    assert q["reference_accuracy"] >= 0.95
    assert q["classifier_test_accuracy"] == info["test_accuracy"]
    assert q["frechet"] < 2.0 * q["frechet_reference"] + 1e-3
    # measured when not given; float samples on the same scale score the same
    q2 = quality.score(clf, squares.test[:150].astype(np.float32), squares.test_cond[:150],
                       squares, batch=64)
    assert q2["classifier_test_accuracy"] == pytest.approx(info["test_accuracy"])
    assert q2["frechet"] == pytest.approx(q["frechet"], rel=1e-4, abs=1e-6)
    # samples of one class only are far from the test set, and mislabelled ones are not recognised
    one = squares.test[squares.test_cond == 0][:60]
    bad = quality.score(clf, one, np.full(60, 1), squares)
    assert bad["frechet"] > 5.0 * q["frechet_reference"] and bad["sample_accuracy"] <= 0.05
    assert "sample_accuracy" not in quality.score(clf, one, None, squares)
    assert "Fréchet distance" in quality.describe(q) and "150 samples" in quality.describe(q)


def test_the_reference_draws_real_images_of_the_samples_classes(squares):
    labels = np.array([0, 0, 0, 2, 2, 0, 2])
    picks = quality.reference_picks(squares, labels, 7, draws=3, seed=1)
    assert len(picks) == 3 and not np.array_equal(picks[0], picks[1])
    for p in picks:
        assert sorted(squares.train_cond[p].tolist()) == sorted(labels.tolist())
        assert len(set(p.tolist())) == 7
    (p,) = quality.reference_picks(squares, None, 50, seed=1)
    assert p.shape == (50,) and len(set(p.tolist())) == 50 and p.max() < 600
    # more images of a class than the training set holds: drawn again
    (p,) = quality.reference_picks(squares, np.zeros(400, int), 400)
    assert p.shape == (400,) and (squares.train_cond[p] == 0).all()


def test_samples_or_labels_that_cannot_be_scored_are_one_sentence(squares, trained):
    clf, _, _ = trained
    x, y = squares.test[:10], squares.test_cond[:10]
    for bad_x, bad_y, match in [(x[:, :, :4], y, "samples of shape"),
                                (x[:1], y[:1], "samples of shape"),
                                (np.full(x.shape, np.nan), y, "finite numbers"),
                                (x, y[:5], "labels of shape"),
                                (x, y + 3, "labels of shape")]:
        with pytest.raises(DataError, match=match) as e:
            quality.score(clf, bad_x, bad_y, squares)
        _one_sentence(e)


def test_unlabelled_or_non_image_data_are_refused():
    ds = data.load("eight_gaussians", n_train=10, n_test=10)
    with pytest.raises(ConfigError, match="needs labelled images") as e:
        quality.classifier_for(ds)
    _one_sentence(e)


# ------------------------------------------------------------------------- the config


def test_sample_quality_is_a_checked_boolean_and_old_configs_read_without_it():
    cfg = build.load(EIGHT, ["sample.quality=true"])
    assert cfg.sample.quality is True and C.from_dict(C.to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="sample.quality='maybe' is not a boolean"):
        build.load(EIGHT, ["sample.quality=maybe"])
    d = C.to_dict(build.load(EIGHT))
    del d["sample"]["quality"]  # a run written before the field existed
    assert C.from_dict(d).sample.quality is False
    d["sample"]["quality"] = "yes"
    with pytest.raises(ConfigError, match="sample.quality='yes' is invalid: expected true or"):
        build.check(C.from_dict(d))


@pytest.mark.parametrize("mode", ["all", "train"])
def test_sample_quality_on_unlabelled_data_is_refused_before_anything_is_written(tmp_path, mode):
    work = tmp_path / "run"
    with pytest.raises(ConfigError, match="sample.quality .* needs labelled images") as e:
        run.command(EIGHT, workdir=work, mode=mode, progress=False, sets=["sample.quality=true"])
    _one_sentence(e)
    assert not work.exists()


# ------------------------------------------------------------------------- the sample phase


def test_the_sample_phase_scores_its_samples(squares, trained, tmp_path, monkeypatch, capsys):
    """`sample_phase` with sample.quality: the numbers in its summary entries and quality.json,
    with the classifier of the default cache (a stand-in experiment whose "samples" are real test
    images, so no score model is trained here)."""
    _, info, cache = trained
    monkeypatch.setenv("SGM_CACHE", str(cache))
    monkeypatch.setattr(run, "reverse_figure", lambda *a, **k: None)
    x, y = squares.test[:30], squares.test_cond[:30]
    exp = types.SimpleNamespace(
        cfg=types.SimpleNamespace(name="stub", sample=types.SimpleNamespace(
            method="em", quality=True)),
        ds=squares, conditioning=Conditioning("label", num_classes=3),
        samples=lambda model, mesh, progress, between, cache_dir: (x, {"nfe": 3}, y))
    out = run.sample_phase(exp, None, step=1, mesh=parallel.make_mesh(), workdir=tmp_path)
    q = json.loads((tmp_path / "quality.json").read_text())
    assert out["quality"] == q and q["num_samples"] == 30 and q["sample_accuracy"] >= 0.9
    assert q["classifier_test_accuracy"] == info["test_accuracy"]  # the cached one
    assert "quality of 30 samples: " in capsys.readouterr().out


# ------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """The digits config, its data and a cache holding a briefly trained classifier of them."""
    cfg = build.load(ROOT / "configs" / "digits.py")
    ds = build.build_dataset(cfg)
    return cfg, ds, _shared_cache(tmp_path_factory, "digits", ds, 10)[2]


@pytest.fixture
def digits_run(digits_cache, tmp_path, monkeypatch):
    """A work directory of the digits config as main.py leaves it (config.json, samples.npz),
    holding real test digits as its samples."""
    cfg, ds, cache = digits_cache
    monkeypatch.setenv("SGM_CACHE", str(cache))
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.json").write_text(json.dumps(build.to_dict(cfg)))
    np.savez(work / "samples.npz", samples=ds.test[:40], cond=ds.test_cond[:40])
    return work


def test_the_command_scores_a_run_into_quality_json_and_the_summary(digits_run, capsys):
    (digits_run / "summary.json").write_text(json.dumps({"steps": 7}))
    assert quality_cli.main([str(digits_run)]) == 0
    q = json.loads((digits_run / "quality.json").read_text())
    assert q["num_samples"] == 40 and 0 <= q["sample_accuracy"] <= 1
    assert json.loads((digits_run / "summary.json").read_text()) == {"steps": 7, "quality": q}
    out = capsys.readouterr().out.splitlines()
    assert out[:len(q)] == [f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}"
                            for k, v in q.items()]
    # unconditional samples (no cond), from another file: no sample accuracy
    ds = build.build_dataset(build.run_config(digits_run))
    np.savez(digits_run / "other.npz", samples=ds.test[40:80])
    assert quality_cli.main([str(digits_run), "--samples", str(digits_run / "other.npz")]) == 0
    q = json.loads((digits_run / "quality.json").read_text())
    assert "sample_accuracy" not in q and q["num_samples"] == 40


def test_the_command_refuses_bad_input_with_one_sentence(digits_run, capsys, tmp_path):
    (digits_run / "summary.json").write_text("[1, 2")
    assert quality_cli.main([str(digits_run)]) == 2
    assert (digits_run / "summary.json").read_text() == "[1, 2"  # kept as it was
    assert not (digits_run / "quality.json").exists()
    (digits_run / "summary.json").unlink()
    assert quality_cli.main([str(digits_run), "--samples", str(tmp_path / "absent.npz")]) == 2
    np.savez(tmp_path / "wrong.npz", samples=np.zeros((5, 1, 4, 4), np.uint8))
    assert quality_cli.main([str(digits_run), "--samples", str(tmp_path / "wrong.npz")]) == 2
    assert quality_cli.main([str(tmp_path / "nowhere")]) == 2  # no config.json
    with open(digits_run / ".lock", "w") as f:  # a main.py of this run at work
        import fcntl

        fcntl.flock(f, fcntl.LOCK_EX)
        assert quality_cli.main([str(digits_run)]) == 2
    assert not (digits_run / "quality.json").exists() and not (digits_run / "summary.json").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err)
    assert "is in use" in err[-1] and "no config.json" in err[-2]


@pytest.mark.slow
def test_the_quality_bench_samples_per_guidance_weight_and_seed(digits_cache, tmp_path,
                                                                  monkeypatch):
    """`bench/quality.py --guidance W ... --seed S` on a finished run: a block of rows per weight,
    each drawn with that weight (the scores differ) and the seed asked for (another seed, other
    samples)."""
    import importlib.util

    _, _, cache = digits_cache
    monkeypatch.setenv("SGM_CACHE", str(cache))
    work = tmp_path / "run"
    assert run.main(ROOT / "configs" / "digits.py", workdir=work, progress=False, mode="train",
                    sets=["train.steps=3", "train.log_every=1"]) == 0
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def rows(*args):
        out = tmp_path / f"q{len(args)}.json"
        bench.main([str(work), "--methods", "ddpm", "--nfe", "3", "--num", "20", "--out", str(out),
                    *args])
        return json.loads(out.read_text())["rows"]

    a = rows("--guidance", "0", "1", "--seed", "5")
    assert [(r["label"], r["guidance"]) for r in a] == [("real", None), ("ddpm", 0.0),
                                                         ("ddpm", 1.0)]
    assert [r["seed"] for r in a[1:]] == [5, 5] and all(np.isfinite(r["frechet"]) for r in a)
    assert a[1]["frechet"] != a[2]["frechet"]  # the weight reached the sampler
    b = rows("--guidance", "0", "--seed", "6", "--methods", "ddpm")
    assert b[1]["seed"] == 6 and b[1]["frechet"] != a[1]["frechet"]
    assert b[0] == a[0]  # the real images' row does not depend on the samples' seed
