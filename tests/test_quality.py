"""The offline quality score (`sgm.quality`): the Fréchet distance against closed forms, the
classifier's training, cache and refusals on tiny synthetic images, the command and the config."""

import json

import numpy as np
import pytest

from pathlib import Path

from sgm import data, quality, run
from sgm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    mu, cov = quality.feature_stats(f)
    assert quality.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8 * np.trace(cov))


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert quality.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_of_non_commuting_gaussians_is_the_closed_form():
    # for 2x2 positive semi-definite M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    c1 = np.array([[2.0, 0.9], [0.9, 0.7]])
    c2 = np.array([[0.4, -0.3], [-0.3, 1.5]])
    assert not np.allclose(c1 @ c2, c2 @ c1)
    w, v = np.linalg.eigh(c1)
    s1 = v @ np.diag(np.sqrt(w)) @ v.T
    m = s1 @ c2 @ s1
    cross = np.sqrt(np.trace(m) + 2.0 * np.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.1, 0.5])
    want = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * cross
    assert quality.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-10)
    # symmetric in its two Gaussians, though the formula is not written symmetrically
    assert quality.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_of_singular_covariances():
    # rank-one covariances along the same line: the distance of 1-D Gaussians, (s1 - s2)^2
    u = np.array([[0.6], [0.8]])
    d = quality.frechet_distance(np.zeros(2), 4.0 * u @ u.T, np.zeros(2), 1.0 * u @ u.T)
    assert d == pytest.approx(1.0, abs=1e-10)


# ------------------------------------------------------------------------- the classifier


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


@pytest.fixture(scope="module")
def trained(squares, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    clf, info = quality.classifier_for(squares, cache_dir=cache, steps=150)
    return clf, info, cache


def test_the_classifier_learns_the_classes_and_is_cached(squares, trained):
    clf, info, cache = trained
    assert not info["cached"] and info["test_accuracy"] >= 0.95
    files = sorted(p.name for p in cache.iterdir())
    assert [p.split(".")[-1] for p in files] == ["eqx", "json"]
    again, info2 = quality.classifier_for(squares, cache_dir=cache, steps=150)
    assert info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    x = squares.test[:50]
    np.testing.assert_array_equal(quality.apply(again, x / 16.0), quality.apply(clf, x / 16.0))


def test_real_images_as_samples_score_like_the_reference(squares, trained):
    clf, info, _ = trained
    q = quality.score(clf, squares.test[:150], squares.test_cond[:150], squares)
    assert q["num"] == 150 and q["sample_accuracy"] >= 0.95
    assert q["classifier_test_accuracy"] == pytest.approx(info["test_accuracy"])
    assert q["frechet"] < 2.0 * q["frechet_reference"] + 1e-3
    # samples of one class only are far from the test set, and mislabelled ones are not recognised
    one = squares.test[squares.test_cond == 0][:60]
    bad = quality.score(clf, one, np.full(60, 1), squares)
    assert bad["frechet"] > 5.0 * q["frechet_reference"] and bad["sample_accuracy"] <= 0.05
    assert "sample_accuracy" not in quality.score(clf, one, None, squares)


def test_damaged_or_foreign_cache_files_are_one_sentence(squares, trained, tmp_path):
    _, _, cache = trained
    for p in cache.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    weights = next(tmp_path.glob("*.eqx"))
    meta = next(tmp_path.glob("*.json"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DataError, match="is damaged.*remove it"):
        quality.classifier_for(squares, cache_dir=tmp_path)
    good = json.loads(meta.read_text())
    meta.write_text(json.dumps({**good, "num_classes": 4}))
    with pytest.raises(DataError, match="another classifier"):
        quality.classifier_for(squares, cache_dir=tmp_path)
    meta.write_text("{not json")
    with pytest.raises(DataError, match="is damaged"):
        quality.classifier_for(squares, cache_dir=tmp_path)


def test_unlabelled_or_non_image_data_are_refused():
    ds = data.load("eight_gaussians", n_train=10, n_test=10)
    with pytest.raises(ConfigError, match="needs labelled images"):
        quality.classifier_for(ds)


def test_sample_quality_on_unlabelled_data_is_refused_before_anything_is_written(tmp_path):
    work = tmp_path / "run"
    with pytest.raises(ConfigError, match="sample.quality .* needs labelled images"):
        run.command(ROOT / "configs" / "eight_gaussians.py", workdir=work, mode="all",
                    progress=False, sets=["sample.quality=true"])
    assert not work.exists()


# ------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """The digits config, its data and a cache holding a briefly trained classifier of them."""
    from sgm import build

    cfg = build.load(ROOT / "configs" / "digits.py")
    ds = build.build_dataset(cfg)
    cache = tmp_path_factory.mktemp("digits_cache")
    quality.classifier_for(ds, cache_dir=cache, steps=30)
    return cfg, ds, cache


@pytest.fixture
def digits_run(digits_cache, tmp_path, monkeypatch):
    """A work directory of the digits config holding real test digits as its "samples"."""
    from sgm import build

    cfg, ds, cache = digits_cache
    monkeypatch.setenv("SGM_CACHE", str(cache))
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.json").write_text(json.dumps(build.to_dict(cfg)))
    np.savez(work / "samples.npz", samples=ds.test[:40], cond=ds.test_cond[:40])
    return work


def test_the_command_scores_a_run_into_quality_json_and_the_summary(digits_run, capsys):
    (digits_run / "summary.json").write_text(json.dumps({"steps": 7}))
    assert quality.main([str(digits_run)]) == 0
    q = json.loads((digits_run / "quality.json").read_text())
    assert q["num"] == 40 and 0 <= q["sample_accuracy"] <= 1
    assert json.loads((digits_run / "summary.json").read_text()) == {"steps": 7, "quality": q}
    assert "Fréchet distance" in capsys.readouterr().out


def test_the_command_refuses_bad_input_with_one_sentence(digits_run, capsys, tmp_path):
    (digits_run / "summary.json").write_text("[1, 2")
    assert quality.main([str(digits_run)]) == 2
    assert (digits_run / "summary.json").read_text() == "[1, 2"  # kept as it was
    assert not (digits_run / "quality.json").exists()
    (digits_run / "summary.json").unlink()
    assert quality.main([str(digits_run), "--samples", str(tmp_path / "absent.npz")]) == 2
    assert quality.main([str(tmp_path)]) == 2  # no config.json
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
