"""Datasets: embedded 2-D toys, 8x8 digits, Gaussian random fields, image files and a user's arrays.

Every dataset is one entry of `DATASETS` (name -> loader, one signature for all), and
`load(name, ...)` returns its `Dataset`: numpy train/test arrays in data units (float32 for
continuous data, uint8 integer levels for discrete data), their conditioning (labels, parameters
or conditioning images), and, where the density is known exactly, `log_prob` and `entropy` to
hold a model's likelihood against. Scaling to the network's range lives in `transforms`,
batching in `loader`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sgm.data import arrays, digits, files, grf, grf_superres, images, toy
from sgm.data.loader import Batches, batch_at, epoch_permutation
from sgm.data.transforms import Preprocess, discrete_log_det
from sgm.errors import ConfigError, DataError, check_choice

__all__ = [
    "DATASETS",
    "NAMES",
    "Batches",
    "Dataset",
    "Preprocess",
    "arrays",
    "batch_at",
    "digits",
    "discrete_log_det",
    "epoch_permutation",
    "files",
    "grf",
    "grf_superres",
    "images",
    "load",
    "split_validation",
    "toy",
    "validation_rows",
]

#: where Debian's package dataset-fashion-mnist installs the four idx files
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
_TAG = 0xDA7A  # keeps data-generation streams apart from the loader's (seed, epoch) streams
#: the default part of the training examples `load` sets aside for validation
VAL_FRACTION = 0.1


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of arrays with what a model and its evaluation need to know about them.

    Attributes:
        name: registry name.
        train, test: `(N, *shape)` arrays in data units (uint8 levels when `levels` is set).
        train_cond, test_cond: int32 labels `(N,)`, float32 parameters `(N, param_dim)`, float32
            conditioning images `(N, *cond_shape)`, or None.
        val, val_cond: the validation split and its conditions (None before `load` sets it
            aside): training-time metrics, early stopping and the best checkpoint read it; the
            test split is read once, at the end.
        shape: per-sample shape.
        levels: number of integer levels of discrete data (17 digits, 256 images), None if
            continuous.
        num_classes: number of labels when `*_cond` are labels, else None.
        param_dim: length of the parameter vector when `*_cond` are parameters, else None.
        cond_shape: `(C', h, w)` of one conditioning image when `*_cond` are images (h, w no
            larger than the samples' H, W), else None.
        log_prob: exact `log_prob(x (B, *shape), cond=None) -> (B,)` in nats, or None.
        entropy: exact differential entropy in nats per sample (for conditional data, the mean
            over the test set's conditions), or None.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    train_cond: np.ndarray | None
    test_cond: np.ndarray | None
    shape: tuple[int, ...]
    levels: int | None = None
    num_classes: int | None = None
    param_dim: int | None = None
    log_prob: Callable[..., np.ndarray] | None = None
    entropy: float | None = None
    cond_shape: tuple[int, ...] | None = None
    val: np.ndarray | None = None
    val_cond: np.ndarray | None = None

    def __post_init__(self):
        if sum(v is not None for v in (self.num_classes, self.param_dim, self.cond_shape)) > 1:
            raise DataError(f"Dataset {self.name!r} sets more than one of num_classes, param_dim "
                            "and cond_shape: expected one kind of condition.")
        if self.cond_shape is not None and (
            len(self.shape) != 3 or len(self.cond_shape) != 3
            or self.cond_shape[1] > self.shape[1] or self.cond_shape[2] > self.shape[2]
        ):
            raise DataError(f"Dataset {self.name!r} has conditioning images of shape "
                            f"{self.cond_shape}: expected (C', h, w) no larger than its samples "
                            f"{self.shape}.")
        for part in ("train", "test", "val"):
            x, cond = getattr(self, part), getattr(self, f"{part}_cond")
            if x is None:  # no validation split yet
                continue
            if tuple(x.shape[1:]) != tuple(self.shape):
                raise DataError(
                    f"Dataset {self.name!r} {part} has samples of shape {x.shape[1:]}: "
                    f"expected {self.shape}."
                )
            for what, a in ((part, x), (f"{part}_cond", cond)):
                if a is not None and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                    raise DataError(
                        f"Dataset {self.name!r} {what} holds NaN or inf: expected finite values."
                    )
            if cond is not None and cond.shape[0] != x.shape[0]:
                raise DataError(
                    f"Dataset {self.name!r} {part}_cond has {cond.shape[0]} rows: expected "
                    f"{x.shape[0]}, one per sample."
                )
            if self.cond_shape is not None and (
                cond is None or tuple(cond.shape[1:]) != tuple(self.cond_shape)
            ):
                raise DataError(
                    f"Dataset {self.name!r} {part}_cond has shape "
                    f"{None if cond is None else cond.shape}: expected (N, *{self.cond_shape})."
                )
            if self.levels is not None and x.size and (x.min() < 0 or x.max() >= self.levels):
                raise DataError(
                    f"Dataset {self.name!r} {part} has values in [{x.min()}, {x.max()}]: "
                    f"expected integer levels 0..{self.levels - 1}."
                )

    @property
    def dim(self) -> int:
        """Number of elements of one sample."""
        return math.prod(self.shape)

    def __repr__(self) -> str:
        def desc(a):
            return None if a is None else f"{a.dtype}{list(a.shape)}"

        return (
            f"Dataset(name={self.name!r}, train={desc(self.train)}, val={desc(self.val)}, "
            f"test={desc(self.test)}, "
            f"train_cond={desc(self.train_cond)}, test_cond={desc(self.test_cond)}, "
            f"shape={self.shape}, levels={self.levels}, num_classes={self.num_classes}, "
            f"param_dim={self.param_dim}, cond_shape={self.cond_shape}, entropy={self.entropy})"
        )


def _toy_log_prob(name: str, x, cond=None) -> np.ndarray:
    return toy.log_prob(name, x)


def _grf_log_prob(x, cond) -> np.ndarray:
    x, cond = np.asarray(x), np.asarray(cond)
    return grf.log_prob(x[..., 0, :, :], cond[..., 0], cond[..., 1])


def _superres_log_prob(x, cond) -> np.ndarray:
    return grf_superres.log_prob(np.asarray(x)[..., 0, :, :], np.asarray(cond)[..., 0, :, :])


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, _TAG, stream])


def _subset(name, x, y, n, part):
    if n is None:
        return x, y
    if n > x.shape[0]:
        raise DataError(f"{name} has {x.shape[0]} {part} examples, fewer than the {n} asked for.")
    return x[:n], None if y is None else y[:n]


def _toy(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    if image_size is not None:
        raise ConfigError(f"image_size applies to image data, not to the 2-D toy {name!r}.")
    train = toy.sample(name, n_train or 50_000, _rng(seed, 0))
    test = toy.sample(name, n_test or 10_000, _rng(seed, 1))
    known = name in toy.WITH_DENSITY
    return Dataset(
        name, train, test, None, None, (2,),
        log_prob=functools.partial(_toy_log_prob, name) if known else None,
        entropy=toy.entropy(name) if known else None,
    )  # fmt: skip


def _grf(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    n = image_size or 32
    train, train_p = grf.sample(n_train or 10_000, n, _rng(seed, 0))
    test, test_p = grf.sample(n_test or 1_000, n, _rng(seed, 1))
    entropy = float(np.mean(grf.entropy(test_p[:, 0], test_p[:, 1], n)))
    return Dataset(
        name, train, test, train_p, test_p, (1, n, n),
        param_dim=2, log_prob=_grf_log_prob, entropy=entropy,
    )  # fmt: skip


def _grf_superres(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    n = image_size or 16
    train, train_y = grf_superres.sample(n_train or 10_000, n, _rng(seed, 0))
    test, test_y = grf_superres.sample(n_test or 1_000, n, _rng(seed, 1))
    return Dataset(
        name, train, test, train_y, test_y, (1, n, n), cond_shape=(1, n, n),
        log_prob=_superres_log_prob, entropy=grf_superres.entropy(n),
    )  # fmt: skip


def _labelled(name, x_train, y_train, x_test, y_test, *, levels, num_classes, n_train, n_test,
              image_size=None) -> Dataset:
    """The first n_train/n_test examples of integer-level images, resized to `image_size`."""
    x_train, y_train = _subset(name, x_train, y_train, n_train, "training")
    x_test, y_test = _subset(name, x_test, y_test, n_test, "test")
    if image_size is not None:
        x_train = images.resize_images(x_train, image_size)
        x_test = images.resize_images(x_test, image_size)
    return Dataset(
        name, x_train, x_test, y_train, y_test, tuple(x_train.shape[1:]),
        levels=levels, num_classes=num_classes,
    )  # fmt: skip


def _digits(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    if image_size not in (None, 8):
        raise ConfigError(f"Digits are 8x8; image_size must be 8 or None, got {image_size}.")
    return _labelled(name, *digits.load_digits(), levels=digits.LEVELS, num_classes=10,
                     n_train=n_train, n_test=n_test)


def _root(name, root) -> Path:
    return Path("data") / name if root is None else Path(root)


def _mnist(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    return _labelled(name, *files.load_mnist(_root(name, root)), levels=256, num_classes=10,
                     n_train=n_train, n_test=n_test, image_size=image_size)


def _fashion_mnist(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    root = FASHION_MNIST_ROOT if root is None else Path(root)
    if not root.exists():
        raise DataError(f"Fashion-MNIST not found in {root}: install it with `apt-get install "
                        "dataset-fashion-mnist`, or set data.root to a folder of its idx files.")
    return _mnist(name, root=root, n_train=n_train, n_test=n_test, image_size=image_size,
                  seed=seed)


def _cifar10(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    return _labelled(name, *files.load_cifar10(_root(name, root)), levels=256, num_classes=10,
                     n_train=n_train, n_test=n_test, image_size=image_size)


def _image_folder(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    # No official split: a fixed tenth (or n_test) of the images, chosen independently of `seed`
    # so that every run evaluates on the same images.
    root = _root(name, root)
    x, labels, classes = images.load_image_folder(root, size=image_size)
    num_classes = len(classes) if len(classes) > 1 else None
    n_hold = x.shape[0] // 10 if n_test is None else n_test
    if n_hold >= x.shape[0]:
        raise DataError(f"{root} holds {x.shape[0]} images: too few to hold out {n_hold}.")
    perm = np.random.default_rng([_TAG, 2]).permutation(x.shape[0])
    test_idx, train_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    y_train = labels[train_idx] if num_classes else None
    y_test = labels[test_idx] if num_classes else None
    return _labelled(name, x[train_idx], y_train, x[test_idx], y_test, levels=256,
                     num_classes=num_classes, n_train=n_train, n_test=None)


def _array(name, *, root, n_train, n_test, image_size, seed) -> Dataset:
    if image_size is not None:
        raise ConfigError("image_size does not apply to data.name='array': store the arrays at "
                          "the size to train on.")
    a = arrays.load_arrays(root, n_test=n_test)
    x_train, c_train = _subset(name, a.x_train, a.cond_train, n_train, "training")
    x_test, c_test = _subset(name, a.x_test, a.cond_test, n_test, "test")  # split: no-op
    shape = tuple(x_train.shape[1:])
    return Dataset(
        name, x_train, x_test, c_train, c_test, shape, levels=a.levels,
        num_classes=a.num_classes,
        param_dim=c_train.shape[1] if a.kind == "params" else None,
        cond_shape=tuple(c_train.shape[1:]) if a.kind == "cond" else None,
        val=a.x_val, val_cond=a.cond_val,
    )  # fmt: skip


#: every dataset `load` knows, embedded first, then those read from disk: name -> loader, each
#: `loader(name, *, root, n_train, n_test, image_size, seed) -> Dataset` with `load`'s arguments
DATASETS: dict[str, Callable[..., Dataset]] = {
    **dict.fromkeys(toy.NAMES, _toy),
    "digits": _digits,
    "grf": _grf,
    "grf_superres": _grf_superres,
    "mnist": _mnist,
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "flowers": _image_folder,
    "folder": _image_folder,
    "array": _array,
}
NAMES: tuple[str, ...] = tuple(DATASETS)


def load(
    name: str,
    *,
    root: str | Path | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
) -> Dataset:
    """Load or generate dataset `name` (one of `NAMES`), with its validation split set aside.

    Arguments:
        name: moons, eight_gaussians, checkerboard, swiss_roll, circles (2-D toys), digits, grf,
            grf_superres (a GRF given its noisy low-pass observation, `sgm.data.grf_superres`),
            mnist, fashion_mnist, cifar10, flowers, folder (any folder of images) or array (a
            user's own arrays, see `sgm.data.arrays`).
        root: folder of a dataset read from disk (default `data/<name>`; for fashion_mnist the
            folder Debian's `dataset-fashion-mnist` installs); for `array`, the `.npz`/`.npy`
            file (required).
        n_train, n_test: number of examples. Generated sets default to 50000/10000 (toys) and
            10000/1000 (grf, grf_superres); sets from disk default to all and take the first n
            when given (for image folders and arrays without `x_test`, the test part is a fixed
            subset of n_test, default a tenth, of the samples).
        image_size: grid size of the grf (default 32) and grf_superres (default 16); for images,
            resize the shorter side and centre-crop to this size (default: keep the stored size).
        seed: seed of generated data (toys, grf, grf_superres); other sets ignore it.
        val_fraction: the part of the training examples set aside as the validation split
            (`split_validation`), unless the data bring their own (an array file's `x_val`).
    """
    check_choice("dataset", name, tuple(DATASETS))
    loader = DATASETS[name]
    ds = loader(name, root=root, n_train=n_train, n_test=n_test, image_size=image_size,
                seed=seed)
    return ds if ds.val is not None else split_validation(ds, val_fraction)


def validation_rows(n: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """The sorted indices of the `n_val` validation rows among `n` training examples and of the
    rest: a fixed random subset that depends on n alone (never on a seed, so every run and every
    seed of a sweep validates on the same examples)."""
    perm = np.random.default_rng([_TAG, 3, n]).permutation(n)
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])


def split_validation(ds: Dataset, fraction: float) -> Dataset:
    """`ds` with round(`fraction` N) (at least one) of its N training examples moved to `val`
    (and their conditions to `val_cond`): the rows `validation_rows` picks, the rest kept in their
    order. Raises ConfigError if either part would be empty."""
    n = ds.train.shape[0]
    n_val = max(1, int(round(fraction * n)))
    if not (0 < fraction < 1 and n_val < n):
        raise ConfigError(f"data.val_fraction={fraction!r} is invalid for {ds.name!r}: its {n} "
                          f"training examples would give {n_val} for validation and {n - n_val} "
                          f"for training; expected a fraction in (0, 1) that leaves at least one "
                          f"example in each (or an x_val array in the data file).")
    val, train = validation_rows(n, n_val)

    def take(a, idx):
        return None if a is None else a[idx]

    return dataclasses.replace(ds, train=ds.train[train], train_cond=take(ds.train_cond, train),
                               val=ds.train[val], val_cond=take(ds.train_cond, val))
