"""Data: exact densities and entropies first, then file formats, scaling and batching."""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import math
import struct

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sgm import data
from sgm.data import files, grf, images, toy
from sgm.data import grf_superres as superres
from sgm.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------ 2-D toys


def whole(ds):
    """`ds` with its validation split put back where `data.split_validation` took it from: the
    loader's own training set, in its order."""
    if ds.val is None:
        return ds
    n = len(ds.train) + len(ds.val)
    at_val, at_train = data.validation_rows(n, len(ds.val))

    def merge(train, val):
        if train is None:
            return None
        out = np.empty((n, *train.shape[1:]), train.dtype)
        out[at_train], out[at_val] = train, val
        return out

    return dataclasses.replace(ds, train=merge(ds.train, ds.val),
                               train_cond=merge(ds.train_cond, ds.val_cond), val=None,
                               val_cond=None)


def load(*args, **kwargs):
    """`data.load` with the validation split put back: the loaders' training sets as they are."""
    return whole(data.load(*args, **kwargs))


@pytest.mark.parametrize("name", toy.NAMES)
def test_toy_shapes_and_determinism(name):
    a = toy.sample(name, 1000, 3)
    assert a.shape == (1000, 2) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, toy.sample(name, 1000, 3))
    np.testing.assert_array_equal(a, toy.sample(name, 1000, np.random.default_rng(3)))
    assert not np.array_equal(a, toy.sample(name, 1000, 4))


@pytest.mark.parametrize("name", toy.WITH_DENSITY)
def test_toy_density_integrates_to_one(name):
    g = np.linspace(-5.0, 5.0, 1001)
    h = g[1] - g[0]
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1)
    p = np.exp(toy.log_prob(name, grid))
    # the checkerboard density jumps at square edges: a Riemann sum is accurate to O(h)
    atol = 1e-9 if name == "eight_gaussians" else 0.02
    np.testing.assert_allclose(p.sum() * h * h, 1.0, atol=atol)


def test_eight_gaussians_entropy():
    h = toy.entropy("eight_gaussians")
    _, _, std = toy.eight_gaussians_mixture()
    separated = math.log(8) + math.log(2 * math.pi * math.e * std**2)  # components apart
    assert 2.82 < h < separated < 2.84
    # Monte Carlo: H = -E log p(x), x ~ p
    lp = toy.log_prob("eight_gaussians", toy.sample("eight_gaussians", 400_000, 0))
    assert abs(-lp.mean() - h) < 4 * lp.std() / math.sqrt(lp.size)
    # the density is that of the sampler: per-component moments
    _, means, std = toy.eight_gaussians_mixture()
    x = toy.sample("eight_gaussians", 200_000, 1).astype(np.float64)
    j = np.argmin(((x[:, None] - means) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(j) / x.shape[0], 1 / 8, atol=5e-3)
    np.testing.assert_allclose((x - means[j]).std(0), std, rtol=1e-2)


def test_checkerboard_density():
    assert toy.entropy("checkerboard") == pytest.approx(math.log(32.0), abs=1e-12)
    x = toy.sample("checkerboard", 200_000, 0)
    lp = toy.log_prob("checkerboard", x)
    np.testing.assert_array_equal(lp, -math.log(32.0))
    assert x.min() >= -4 and x.max() < 4
    # occupied squares: 8 of the 16, evenly
    cells = np.floor(x / 2).astype(int) + 2
    counts = np.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    assert (counts > 0).sum() == 8
    np.testing.assert_allclose(counts[counts > 0] / x.shape[0], 1 / 8, atol=5e-3)
    outside = np.array([[4.5, 0.0], [1.0, 3.0], [-1.0, 1.0], [0.0, -5.0]])  # white or off-board
    assert np.all(np.isneginf(toy.log_prob("checkerboard", outside)))


def test_toy_log_prob_unknown():
    with pytest.raises(DataError, match="eight_gaussians"):
        toy.log_prob("moons", np.zeros((3, 2)))


# ------------------------------------------------------------------------ Gaussian random fields


def _dft_matrix(n):
    f1 = np.fft.fft(np.eye(n), norm="ortho")
    return np.kron(f1, f1)  # 2-D orthonormal DFT of a row-major flattened field


@pytest.mark.parametrize("n", [4, 5, 6])
def test_grf_log_prob_matches_dense_gaussian(n):
    a, b = 1.3, 2.2
    lam = grf.spectrum(n, a, b).reshape(-1)
    f = _dft_matrix(n)
    cov_dense = (f.conj().T @ np.diag(lam) @ f).real
    np.testing.assert_allclose(grf.covariance(n, a, b), cov_dense, atol=1e-12)
    np.testing.assert_allclose(cov_dense, cov_dense.T, atol=1e-12)
    x = grf.sample_fields(n, np.full(7, a), np.full(7, b), 0)
    mvn = multivariate_normal(np.zeros(n * n), cov_dense)
    np.testing.assert_allclose(grf.log_prob(x, a, b), mvn.logpdf(x.reshape(7, -1)), rtol=1e-10)
    np.testing.assert_allclose(grf.entropy(a, b, n), mvn.entropy(), rtol=1e-10)


def test_grf_sample_covariance():
    n, a, b, m = 4, 0.8, 1.5, 100_000
    x = grf.sample_fields(n, np.full(m, a), np.full(m, b), 1).reshape(m, -1)
    cov = grf.covariance(n, a, b)
    emp = x.T @ x / m
    # standard error of each entry is at most sqrt(2 / m) * max variance
    assert np.abs(emp - cov).max() < 5 * math.sqrt(2 / m) * cov.diagonal().max()
    np.testing.assert_allclose(cov.diagonal(), grf.spectrum(n, a, b).mean())


def test_grf_dataset_log_prob_and_entropy():
    ds = load("grf", n_train=64, n_test=2000, image_size=8, seed=3)
    assert ds.train.shape == (64, 1, 8, 8) and ds.train.dtype == np.float32
    assert ds.train_cond.shape == (64, 2) and ds.param_dim == 2
    lo, hi = grf.AMPLITUDE_RANGE, grf.SLOPE_RANGE
    assert lo[0] <= ds.test_cond[:, 0].min() and ds.test_cond[:, 0].max() <= lo[1]
    assert hi[0] <= ds.test_cond[:, 1].min() and ds.test_cond[:, 1].max() <= hi[1]
    lp = ds.log_prob(ds.test, ds.test_cond)
    assert lp.shape == (2000,)
    # -E log p(x | theta) = E H(theta): the test NLL of the true density equals its entropy
    assert abs(-lp.mean() - ds.entropy) < 4 * lp.std() / math.sqrt(lp.size)
    again = load("grf", n_train=64, n_test=4, image_size=8, seed=3)
    np.testing.assert_array_equal(ds.train, again.train)


# ----------------------------------------------------------------------------------- registry


def test_digits():
    ds = load("digits")
    assert ds.train.shape == (1500, 1, 8, 8) and ds.test.shape == (297, 1, 8, 8)
    assert ds.train.dtype == np.uint8 and ds.levels == 17 and ds.num_classes == 10
    both = np.concatenate([ds.train, ds.test])
    assert both.min() == 0 and both.max() == 16 and len(np.unique(both)) == 17
    assert set(np.unique(ds.train_cond)) == set(range(10)) == set(np.unique(ds.test_cond))
    np.testing.assert_array_equal(ds.test, load("digits").test)


def test_load_toys_and_unknown():
    ds = load("eight_gaussians", n_train=100, n_test=50, seed=1)
    assert ds.train.shape == (100, 2) and ds.test.shape == (50, 2) and ds.shape == (2,)
    assert not np.array_equal(ds.train[:50], ds.test)
    assert ds.entropy == pytest.approx(toy.entropy("eight_gaussians"))
    np.testing.assert_allclose(ds.log_prob(ds.test), toy.log_prob("eight_gaussians", ds.test))
    assert load("moons", n_train=10, n_test=10).log_prob is None
    with pytest.raises(ConfigError, match="moons.*mnist"):
        load("imagenet")
    with pytest.raises(DataError, match="NaN"):
        data.Dataset("bad", np.full((3, 2), np.nan, np.float32), np.zeros((1, 2)), None, None, (2,))


def test_every_dataset_is_one_entry_of_one_signature(monkeypatch):
    assert data.NAMES == tuple(data.DATASETS)
    keywords = ["root", "n_train", "n_test", "image_size", "seed"]
    for name, loader in data.DATASETS.items():
        params = list(inspect.signature(loader).parameters.values())
        assert [p.name for p in params] == ["name", *keywords], name
        assert all(p.kind is p.KEYWORD_ONLY for p in params[1:]), name
    with pytest.raises(ConfigError, match=r"^unknown dataset 'imagenet'; expected one of moons, .*, array$"):
        load("imagenet")
    seen = []

    def loader(name, *, root, n_train, n_test, image_size, seed):
        seen.append((name, root, n_train, n_test, image_size, seed))
        return load("moons", n_train=n_train, n_test=n_test, seed=seed)

    monkeypatch.setitem(data.DATASETS, "new", loader)  # a new dataset is one entry
    assert load("new", root="r", n_train=3, n_test=2, seed=5).train.shape == (3, 2)
    assert seen == [("new", "r", 3, 2, None, 5)]


# ------------------------------------------------------------------------------------ MNIST files


def _idx(array: np.ndarray) -> bytes:
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return magic + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _tiny_mnist(rng, n):
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_mnist_idx(directory, rng, gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    arrays = [*_tiny_mnist(rng, 5), *_tiny_mnist(rng, 3)]
    for stem, a in zip(files.MNIST_FILES, arrays):
        raw = _idx(a)
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path, gz):
    xtr, ytr, xte, yte = _write_mnist_idx(tmp_path / "MNIST" / "raw", np.random.default_rng(0), gz)
    ds = load("mnist", root=tmp_path)
    assert ds.shape == (1, 28, 28) and ds.levels == 256 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train[:, 0], xtr)
    np.testing.assert_array_equal(ds.train_cond, ytr)
    np.testing.assert_array_equal(ds.test[:, 0], xte)
    np.testing.assert_array_equal(ds.test_cond, yte)
    assert load("mnist", root=tmp_path, image_size=32).train.shape == (5, 1, 32, 32)


def test_mnist_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    (xtr, ytr), (xte, yte) = _tiny_mnist(rng, 4), _tiny_mnist(rng, 2)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    for root in (tmp_path, tmp_path / "mnist.npz"):
        ds = load("mnist", root=root)
        np.testing.assert_array_equal(ds.train[:, 0], xtr)
        np.testing.assert_array_equal(ds.test_cond, yte)


def test_mnist_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load("mnist", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match=f"MNIST not found.*{tmp_path}"):
        load("mnist", root=tmp_path)
    _write_mnist_idx(tmp_path, np.random.default_rng(0))
    images = tmp_path / files.MNIST_FILES[0]
    good = images.read_bytes()
    images.write_bytes(good[:-10])  # truncated
    with pytest.raises(DataError, match=f"{images}.*expected"):
        load("mnist", root=tmp_path)
    images.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # float idx: wrong magic
    with pytest.raises(DataError, match=f"{images} has magic number"):
        load("mnist", root=tmp_path)
    images.write_bytes(good)
    labels = tmp_path / files.MNIST_FILES[1]
    labels.write_bytes(_idx(np.array([0, 1, 2, 3, 12])))
    with pytest.raises(DataError, match=f"{labels} has labels"):
        load("mnist", root=tmp_path)
    gz = tmp_path / "gz"
    _write_mnist_idx(gz, np.random.default_rng(0), gz=True)
    bad = gz / (files.MNIST_FILES[2] + ".gz")
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DataError, match=str(bad)):
        load("mnist", root=gz)
    x = np.zeros((2, 28, 28), np.float32)
    x[0, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x_train=x, y_train=np.zeros(2), x_test=x, y_test=np.zeros(2))
    with pytest.raises(DataError, match=f"{tmp_path / 'nan.npz'}.*NaN"):
        load("mnist", root=tmp_path / "nan.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([None, 1]))
    with pytest.raises(DataError, match="obj.npz"):
        load("mnist", root=tmp_path / "obj.npz")


# --------------------------------------------------------------------------------- CIFAR-10 files


def _write_cifar(directory, rng, n=3):
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (*files.CIFAR10_TRAIN, files.CIFAR10_TEST):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        (directory / name).write_bytes(np.concatenate([y[:, None], x.reshape(n, -1)], 1).tobytes())
        out[name] = (x, y)
    return out


def test_cifar_roundtrip_and_errors(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-bin", np.random.default_rng(2))
    ds = load("cifar10", root=tmp_path)
    assert ds.train.shape == (15, 3, 32, 32) and ds.test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(ds.train[3:6], written["data_batch_2.bin"][0])
    np.testing.assert_array_equal(ds.train_cond[3:6], written["data_batch_2.bin"][1])
    np.testing.assert_array_equal(ds.test, written["test_batch.bin"][0])
    assert load("cifar10", root=tmp_path, n_train=4).train.shape == (4, 3, 32, 32)
    bad = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DataError, match=f"{bad} holds .* multiple of 3073"):
        load("cifar10", root=tmp_path)
    bad.unlink()
    with pytest.raises(DataError, match=f"CIFAR-10 not found.*data_batch_3.bin.*{tmp_path}"):
        load("cifar10", root=tmp_path)


# ---------------------------------------------------------------------------------- image folder


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    written = {}
    for cls in ("roses", "tulips"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
            written[(cls, i)] = pixels
    x, labels, classes = images.load_image_folder(tmp_path)
    assert classes == ("roses", "tulips") and x.shape == (10, 3, 6, 7)
    np.testing.assert_array_equal(labels, [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(x[7], written[("tulips", 2)].transpose(2, 0, 1))
    ds = load("flowers", root=tmp_path)
    assert ds.train.shape[0] + ds.test.shape[0] == 10 and ds.test.shape[0] == 1
    assert ds.num_classes == 2 and ds.levels == 256
    small = load("flowers", root=tmp_path, image_size=4, n_test=3)
    assert small.train.shape == (7, 3, 4, 4) and small.test.shape == (3, 3, 4, 4)
    # grey images give one channel; a larger grey image is resized, then centre-cropped
    grey = tmp_path / "grey"
    grey.mkdir()
    g = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    Image.fromarray(g).save(grey / "a.png")
    Image.fromarray(np.kron(g, np.ones((2, 4), np.uint8))).save(grey / "b.png")  # 10 x 20
    x, labels, _ = images.load_image_folder(grey, size=5)
    assert x.shape == (2, 1, 5, 5) and labels is None
    np.testing.assert_array_equal(x[0, 0], g)
    with pytest.raises(DataError, match=f"different sizes.*{grey / 'a.png'}"):
        images.load_image_folder(grey)


def test_image_folder_errors(tmp_path):
    from PIL import Image

    with pytest.raises(DataError, match=str(tmp_path / "flowers")):
        load("flowers", root=tmp_path / "flowers")
    with pytest.raises(DataError, match=f"No image files.*{tmp_path}"):
        images.load_image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DataError, match=str(tmp_path / "broken.png")):
        images.load_image_folder(tmp_path)
    (tmp_path / "broken.png").unlink()
    Image.fromarray(np.zeros((4, 4), np.uint16) + 300).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match=f"{tmp_path / 'deep.png'} has mode"):
        images.load_image_folder(tmp_path)
    (tmp_path / "deep.png").unlink()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "top.png")
    (tmp_path / "cls").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "cls" / "a.png")
    with pytest.raises(DataError, match=f"{tmp_path} holds both"):
        images.load_image_folder(tmp_path)
    (tmp_path / "top.png").unlink()
    (tmp_path / "cls" / ".hidden.png").write_bytes(b"not an image")  # skipped
    x, _, classes = images.load_image_folder(tmp_path)
    assert x.shape == (1, 1, 4, 4) and classes == ("cls",)


# ------------------------------------------------------------------------------------- transforms


def test_preprocess_discrete_round_trip_and_bound_constant():
    import jax

    levels = 17
    k = np.arange(levels).repeat(200).reshape(1, -1).astype(np.uint8)
    pre = data.Preprocess.fit(k, levels=levels)
    x = np.asarray(pre(jax.random.key(0), k))
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() < 1.0
    np.testing.assert_array_equal(pre.to_data(x), k)  # every dequantised value maps back to its level
    assert pre.clip == (-1.0, 1.0)
    # log P(k) >= E log p_x(x) + D log(2 / L): the bound's constant is the map's log-Jacobian
    assert pre.log_det((3, 4)) == pytest.approx(12 * math.log(2 / levels))
    assert data.discrete_log_det(12, levels) == pytest.approx(12 * math.log(2 / levels))


def test_preprocess_standardisation_change_of_variables():
    import jax

    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], (5000, 3)).astype(np.float32)
    pre = data.Preprocess.fit(x)
    z = np.asarray(pre(jax.random.key(0), x), np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(pre.to_data(z), x, rtol=1e-5, atol=1e-5)
    assert pre.clip is None
    # log p_x(x) = log N(z; 0, I) + log_det for the Gaussian the statistics describe
    mean, std = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
    exact = multivariate_normal(mean, np.diag(std**2)).logpdf(x[:10])
    via_z = multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z[:10]) + pre.log_det((3,))
    np.testing.assert_allclose(via_z, exact, rtol=1e-5)
    # fields and images: one scalar mean and std for every pixel
    fields = rng.normal(2.0, 3.0, (100, 1, 4, 4))
    scalar = data.Preprocess.fit(fields)
    assert scalar.log_det((1, 4, 4)) == pytest.approx(-16 * math.log(fields.std()), rel=1e-5)
    assert data.Preprocess.fit(x, standardize=False).log_det((3,)) == 0.0
    with pytest.raises(DataError, match="at least 2"):
        data.Preprocess.fit(x[:1])


# ----------------------------------------------------------------------------------------- loader


def test_batches_resume_and_epochs():
    x = np.arange(23)[:, None] * np.ones((1, 2))
    y = np.arange(23)
    it = data.Batches((x, None, y), 5, seed=7)
    assert it.steps_per_epoch == 4
    seen = [next(it) for _ in range(13)]
    for bx, none, by in seen:
        assert none is None and bx.shape == (5, 2)
        np.testing.assert_array_equal(bx[:, 0], by)
    # each epoch visits 20 distinct examples; epochs differ in order
    epoch0 = np.concatenate([b[2] for b in seen[:4]])
    epoch1 = np.concatenate([b[2] for b in seen[4:8]])
    assert len(set(epoch0)) == 20 and not np.array_equal(epoch0, epoch1)
    # resuming from a step equals continuing the original iterator, and batch_at agrees
    for k in (0, 3, 4, 9):
        resumed = data.Batches((x, None, y), 5, seed=7, start_step=k)
        for s in range(k, 13):
            np.testing.assert_array_equal(next(resumed)[2], seen[s][2])
            np.testing.assert_array_equal(data.batch_at((x, None, y), 5, 7, s)[2], seen[s][2])
    assert not np.array_equal(next(data.Batches(y, 5, seed=8)), seen[0][2])


def test_batches_process_sharding():
    y = np.arange(100)
    for step in (0, 7, 31):
        full = data.batch_at(y, 12, 3, step)
        parts = [data.batch_at(y, 12, 3, step, process_index=p, process_count=4) for p in range(4)]
        assert all(p.shape == (3,) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), full)
    it = data.Batches(y, 12, 3, process_index=2, process_count=4)
    np.testing.assert_array_equal(next(it), data.batch_at(y, 12, 3, 0)[6:9])
    with pytest.raises(ConfigError, match="divisible"):
        data.Batches(y, 10, 0, process_count=4)
    with pytest.raises(ConfigError, match="batch_size"):
        data.batch_at(y, 101, 0, 0)


# ------------------------------------------------------------------------------- a user's arrays


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_array_points_fields_and_images(tmp_path):
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(20, 3)), rng.normal(size=(5, 3))
    ds = load("array", root=_npz(tmp_path / "p.npz", x=x, x_test=x_test))
    assert ds.shape == (3,) and ds.train.dtype == np.float32 and ds.levels is None
    np.testing.assert_allclose(ds.test, x_test.astype(np.float32))
    assert load("array", root=tmp_path / "p.npz", n_train=7, n_test=2).test.shape == (2, 3)
    # fields (N, H, W) gain a channel axis; a .npy file is x alone with a fixed held-out tenth
    np.save(tmp_path / "f.npy", rng.normal(size=(30, 4, 4)).astype(np.float32))
    ds = load("array", root=tmp_path / "f.npy")
    assert ds.shape == (1, 4, 4) and ds.train.shape[0] == 27 and ds.test.shape[0] == 3
    again = load("array", root=tmp_path / "f.npy", seed=5)
    np.testing.assert_array_equal(ds.test, again.test)  # the split ignores the seed
    both = np.concatenate([ds.train, ds.test]).reshape(30, -1)
    assert len(np.unique(both, axis=0)) == 30  # train and test partition the samples
    ds = load("array", root=tmp_path / "f.npy", n_test=10)
    assert ds.train.shape[0] == 20 and ds.test.shape[0] == 10
    # discrete images with their levels and labels
    img = rng.integers(0, 17, (12, 1, 6, 6), dtype=np.uint8)
    lab = rng.integers(0, 3, 12)
    ds = load("array", root=_npz(tmp_path / "d.npz", x=img, levels=17, labels=lab), n_test=4)
    assert ds.levels == 17 and ds.train.dtype == np.uint8 and ds.num_classes == int(lab.max()) + 1
    assert ds.train_cond.dtype == np.int32 and ds.test_cond.shape == (4,)


def test_array_parameters_and_conditioning_images(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 2, 8, 8)).astype(np.float32)
    ds = load("array", root=_npz(tmp_path / "p.npz", x=x, params=rng.uniform(size=10)),
                   n_test=2)
    assert ds.param_dim == 1 and ds.train_cond.shape == (8, 1) and ds.cond_shape is None
    cond, cond_test = rng.normal(size=(10, 4, 4)), rng.normal(size=(3, 4, 4))
    ds = load("array", root=_npz(tmp_path / "c.npz", x=x, cond=cond, x_test=x[:3],
                                      cond_test=cond_test))
    assert ds.cond_shape == (1, 4, 4) and ds.train_cond.shape == (10, 1, 4, 4)
    assert ds.test_cond.dtype == np.float32 and ds.num_classes is None and ds.param_dim is None
    np.testing.assert_allclose(ds.test_cond[:, 0], cond_test.astype(np.float32))


def _bad_cases(tmp_path):
    """(what the file holds, how to load it, the error's class, a pattern of its message)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    img = rng.normal(size=(10, 1, 4, 4)).astype(np.float32)
    nan, inf = x.copy(), img[:, 0].copy()
    nan[3, 1], inf[2, 0, 0] = np.nan, np.inf
    ragged = np.empty(10, dtype=object)
    ragged[:] = [np.zeros(i) for i in range(10)]
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    np.save(tmp_path / "objects.npy", ragged, allow_pickle=True)
    return {
        "missing file": (tmp_path / "absent.npz", DataError, "absent.npz does not exist"),
        "no root": (None, ConfigError, "needs data.root"),
        "not npz": (tmp_path / "garbage.npz", DataError, "garbage.npz is neither an .npz nor"),
        "missing x": ({"labels": np.zeros(10, int)}, DataError, "lacks the key x"),
        "unknown key": ({"x": x, "label": np.zeros(10, int)}, DataError, "unknown keys label"),
        "object array": ({"x": x, "params": ragged}, DataError, r"\(params\) holds an object"),
        "object npy": (tmp_path / "objects.npy", DataError, "object array or pickled"),
        "nan x": ({"x": nan}, DataError, r"\(x\) holds NaN or inf"),
        "inf cond": ({"x": img, "cond": inf}, DataError, r"\(cond\) holds NaN or inf"),
        "nan x_test": ({"x": x, "x_test": nan}, DataError, r"\(x_test\) holds NaN"),
        "labels length": ({"x": x, "labels": np.zeros(9, int)}, DataError,
                          r"\(labels\) has 9 rows: expected 10"),
        "params length": ({"x": x, "params": np.zeros((11, 2))}, DataError, "11 rows"),
        "test shape": ({"x": x, "x_test": x[:, :2]}, DataError, r"\(x_test\) has samples of shape"),
        "cond_test shape": ({"x": img, "cond": img, "x_test": img, "cond_test": img[:, :, :2]},
                            DataError, r"\(cond_test\) has shape"),
        "float labels": ({"x": x, "labels": np.zeros(10)}, DataError, "expected integer class"),
        "negative labels": ({"x": x, "labels": -np.ones(10, int)}, DataError, "negative labels"),
        "complex x": ({"x": x.astype(np.complex64)}, DataError, "dtype complex64: expected floats"),
        "string params": ({"x": x, "params": np.array(["a"] * 10)}, DataError, "dtype <U1"),
        "ints without levels": ({"x": img.astype(np.uint8)}, DataError, "expected a `levels`"),
        "levels with floats": ({"x": x, "levels": 256}, DataError, "holds floats but"),
        "levels exceeded": ({"x": np.full((10, 2), 9, np.uint8), "levels": 4}, DataError,
                            r"values in \[9, 9\]: expected integer levels 0..3"),
        "bad levels": ({"x": np.zeros((10, 2), np.uint8), "levels": 1.5}, DataError,
                       "levels=.* expected one integer"),
        "5-d x": ({"x": np.zeros((10, 1, 1, 2, 2))}, DataError, "expected .N, D. points"),
        "two conditions": ({"x": x, "labels": np.zeros(10, int), "params": x}, DataError,
                           "labels and params: expected at most one"),
        "test without train": ({"x": x, "x_test": x, "labels_test": np.zeros(10, int)}, DataError,
                               "labels_test without labels"),
        "train without test": ({"x": x, "x_test": x, "labels": np.zeros(10, int)}, DataError,
                               "no labels_test"),
        "cond larger than x": ({"x": img[:, :, :2, :2], "cond": img}, DataError,
                               "no larger than the samples"),
        "cond of points": ({"x": x, "cond": img}, DataError, "need image data x"),
        "too few to hold out": ({"x": x[:1]}, DataError, "too few to hold out 1"),
    }


def test_array_bad_inputs_have_one_line_errors(tmp_path):
    for what, (content, cls, pattern) in _bad_cases(tmp_path).items():
        root = _npz(tmp_path / "bad.npz", **content) if isinstance(content, dict) else content
        with pytest.raises(cls, match=pattern) as e:
            load("array", root=root)
        assert "\n" not in str(e.value), what
    with pytest.raises(ConfigError, match="image_size"):
        load("array", root=tmp_path / "bad.npz", image_size=8)


def test_array_errors_exit_2_from_the_command_line(tmp_path, capsys):
    from pathlib import Path

    from sgm import run

    root = Path(__file__).resolve().parents[1]
    _npz(tmp_path / "bad.npz", x=np.zeros((10, 2)), x_test=np.full((2, 2), np.nan))
    code = run.main(root / "configs" / "eight_gaussians.py", workdir=tmp_path / "run",
                    sets=["data.name=array", f"data.root={tmp_path / 'bad.npz'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.npz (x_test) holds NaN or inf" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing written


# --------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load("fashion_mnist", root=tmp_path / "absent")


@pytest.mark.slow
@pytest.mark.skipif(not data.FASHION_MNIST_ROOT.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files_load_and_train_two_steps(tmp_path):
    from pathlib import Path

    from sgm import run

    ds = load("fashion_mnist")
    assert ds.train.shape == (60000, 1, 28, 28) and ds.test.shape == (10000, 1, 28, 28)
    assert ds.levels == 256 and ds.num_classes == 10
    assert np.bincount(ds.train_cond).tolist() == [6000] * 10  # the balanced official split
    assert np.bincount(ds.test_cond).tolist() == [1000] * 10
    root = Path(__file__).resolve().parents[1]
    # the shipped config on the real files, with a network small enough to compile in seconds
    sets = ["train.steps=2", "train.batch_size=8", "train.log_every=1", "train.eval_num=2",
            "data.n_test=2", "model.base=8", "model.channel_mults=1,2", "model.num_res_blocks=1",
            "model.attn_resolutions=", "model.heads=2"]
    assert run.main(root / "configs" / "fashion_mnist.py", workdir=tmp_path / "run", mode="train",
                    progress=False, sets=sets) == 0
    assert (tmp_path / "run" / "checkpoints" / "ckpt_000000002.npz").is_file()


# ------------------------------------------------------------------- GRF super-resolution


def _dense_lowpass(n, cutoff):
    """The low-pass operator L as a dense (n*n, n*n) matrix, applied to each basis field."""
    eye = np.eye(n * n).reshape(-1, n, n)
    m = superres.lowpass_mask(n, cutoff)
    cols = np.fft.ifft2(m * np.fft.fft2(eye, norm="ortho"), norm="ortho")
    assert np.abs(cols.imag).max() < 1e-12  # a symmetric mask keeps fields real
    return cols.real.reshape(n * n, n * n).T


def test_grf_superres_posterior_matches_dense_gaussian_conditioning():
    n, spec = 6, {"amplitude": 1.3, "slope": 2.5, "cutoff": 1.5, "noise_std": 0.2}
    rng = np.random.default_rng(0)
    c = grf.covariance(n, spec["amplitude"], spec["slope"])
    lmat = _dense_lowpass(n, spec["cutoff"])
    x = grf.sample_fields(n, spec["amplitude"], spec["slope"], rng)
    y = superres.observe(x, rng, cutoff=spec["cutoff"], noise_std=spec["noise_std"])
    # y - L x is the white noise: the observation is the dense operator's
    assert np.std(y.reshape(-1) - lmat @ x.reshape(-1)) == pytest.approx(0.2, rel=0.5)
    # brute force: joint Gaussian (x, y), conditioned by the Schur complement
    s_yy = lmat @ c @ lmat.T + spec["noise_std"] ** 2 * np.eye(n * n)
    k = c @ lmat.T @ np.linalg.inv(s_yy)
    mean, cov = k @ y.reshape(-1), c - k @ lmat @ c
    np.testing.assert_allclose(superres.posterior_mean(y, **spec).reshape(-1), mean, atol=1e-10)
    for xs in (x, grf.sample_fields(n, 1.0, 2.0, rng)):  # the true field and another one
        dense = multivariate_normal(mean, cov, allow_singular=False).logpdf(xs.reshape(-1))
        np.testing.assert_allclose(superres.log_prob(xs, y, **spec), dense, rtol=1e-9)
    _, logdet = np.linalg.slogdet(2 * math.pi * math.e * cov)
    assert superres.entropy(n, **spec) == pytest.approx(0.5 * logdet, rel=1e-10)
    # exact posterior draws have the dense mean and covariance
    draws = superres.posterior_sample(np.broadcast_to(y, (20000, n, n)), rng, **spec)
    draws = draws.reshape(20000, -1)
    np.testing.assert_allclose(draws.mean(0), mean, atol=5 * np.sqrt(cov.diagonal().max() / 2e4))
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.05 * cov.diagonal().max())


def test_grf_superres_dataset_density_and_entropy():
    ds = load("grf_superres", n_train=50, n_test=400, image_size=8, seed=3)
    assert ds.shape == ds.cond_shape == (1, 8, 8) and ds.train_cond.shape == (50, 1, 8, 8)
    nll = -ds.log_prob(ds.test, ds.test_cond)
    # the exact density is the one the data were drawn from: its mean NLL is the entropy
    assert abs(nll.mean() - ds.entropy) < 4 * nll.std() / math.sqrt(nll.size)
    shuffled = -ds.log_prob(ds.test, ds.test_cond[::-1])
    assert shuffled.mean() > ds.entropy + 10 * nll.std() / math.sqrt(nll.size)
    again = load("grf_superres", n_train=50, n_test=400, image_size=8, seed=3)
    np.testing.assert_array_equal(ds.test_cond, again.test_cond)
    with pytest.raises(DataError, match="noise_std"):
        superres.posterior_modes(8, noise_std=0.0)
