"""Sample quality of labelled images, computed offline: a classifier the project trains itself.

FID needs Inception weights, which many machines cannot download. This module scores samples of a
labelled image data set with a small CNN trained on that data set's own training images instead:

- **sample accuracy**: the fraction of class-conditional samples the classifier assigns to the class
  they were drawn for (the classifier's own accuracy on the real test set is the ceiling);
- **Fréchet distance** between the classifier's features (its last hidden layer) of the samples and
  of the real test set, each set summarised by its mean and covariance (Heusel et al. 2017):
  ``||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr (S_1^(1/2) S_2 S_1^(1/2))^(1/2)``.

The distance is biased upward for small sets, so every score comes with its reference: as many
real training images as there are samples, scored the same way (`frechet_reference`,
`reference_accuracy`), which is where a perfect sampler would land. Numbers from different
classifiers (another data set, another cache) are not comparable.

The classifier is trained once per data set and kept in a cache folder (the `cache_dir` argument,
else `$SGM_CACHE`, else `~/.cache/sgm`) as one file: a line naming the format, a line of JSON
saying what it was trained on, then its weights serialised by Equinox. Nothing is pickled, and a
file that is damaged or does not match its data is refused with one sentence.

A run's samples are scored by `sgm.run.score_run`, or from the command line (`sgm.quality_cli`):

    python -m sgm.quality runs/fashion_mnist_cpu        # scores runs/.../samples.npz
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import ConfigError, DataError
from .nets.conv import conv_hwc, group_norm_hwc

#: the classifier's architecture: channels of the conv stages (two 3x3 convolutions each; the
#: first of a stage halves the size while it is at least 8, 16 for the first stage: 28 -> 14 -> 7
#: -> 4, 32 -> 16 -> 8 -> 4, 8 -> 8 -> 4 -> 4), the side of the grid the last map is pooled to
#: and flattened, the feature layer's width
WIDTHS = (32, 64, 128)
GRID = 4
FEATURES = 128
#: training: steps, batch, peak learning rate (warm-up, then cosine decay to 0), weight decay;
#: measured in docs/guide/quality.md
STEPS, BATCH, LR, WEIGHT_DECAY = 1500, 128, 3e-3, 1e-4
#: images a forward pass takes at once when scoring; sets of real images a reference averages
EVAL_BATCH = 500
REFERENCE_DRAWS = 3
MAGIC = b"sgm-classifier"  # the first line of a cached file, with FORMAT
FORMAT = 2  # version of the cached file's layout and of the architecture


class Classifier(eqx.Module):
    """A small CNN for `(C, H, W)` images with values in [0, 1] (levels / (levels - 1)).

    Three stages of two 3x3 convolutions with group norm and SiLU (the first convolution of a
    stage has stride 2 while the smaller side is at least 8, or 16 for the first stage), the last
    map pooled to a `grid` x `grid` grid (antialiased resizing; 28 x 28 images already end at
    4 x 4) and flattened, a feature layer (`features`, what the Fréchet distance compares) and a
    linear head. Pooling to a grid rather than to one value per channel keeps where things are
    in the image (docs/guide/quality.md compares the two).
    """

    convs: list
    norms: list
    feature: eqx.nn.Linear
    head: eqx.nn.Linear
    shape: tuple[int, int, int] = eqx.field(static=True)
    grid: int = eqx.field(static=True)

    def __init__(self, shape: tuple[int, int, int], num_classes: int, *, widths=WIDTHS,
                 grid: int = GRID, features: int = FEATURES, key):
        c_in, h, w = shape
        if min(h, w) < 1 or c_in < 1 or num_classes < 2:
            raise ConfigError(f"a classifier needs images (C, H, W) and at least two classes, got "
                              f"shape {tuple(shape)} and {num_classes} classes.")
        keys = iter(jax.random.split(key, 2 * len(widths) + 2))
        convs, norms, size = [], [], min(h, w)
        for i, width in enumerate(widths):
            for j in range(2):
                stride = 2 if j == 0 and size >= (16 if i == 0 else 8) else 1
                size = -(-size // stride)
                convs.append(eqx.nn.Conv2d(c_in, width, 3, stride=stride, padding=1,
                                           key=next(keys)))
                norms.append(eqx.nn.GroupNorm(min(8, width), width))
                c_in = width
        self.convs, self.norms, self.shape, self.grid = convs, norms, tuple(shape), grid
        self.feature = eqx.nn.Linear(c_in * grid * grid, features, key=next(keys))
        self.head = eqx.nn.Linear(features, num_classes, key=next(keys))

    def features(self, x):
        """The feature vector `(features,)` of one image `(C, H, W)` in [0, 1]."""
        h = jnp.transpose(2.0 * x - 1.0, (1, 2, 0))  # channels-last through the convolutions
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = jax.nn.silu(group_norm_hwc(norm, conv_hwc(conv, h)))
        h = jnp.transpose(h, (2, 0, 1))
        if h.shape[1:] != (self.grid, self.grid):
            h = jax.image.resize(h, (h.shape[0], self.grid, self.grid), "linear", antialias=True)
        return jax.nn.silu(self.feature(h.reshape(-1)))

    def __call__(self, x):
        """Class logits `(num_classes,)` of one image `(C, H, W)` in [0, 1]."""
        return self.head(self.features(x))


def new_classifier(shape: tuple[int, int, int], num_classes: int, *, seed: int = 0) -> Classifier:
    """A `Classifier` with Equinox's initial weights (uniform within 1/sqrt(fan-in), group norms
    at 1 and 0), drawn by numpy from `seed`: a CPU compiles a random-number program for each
    layer's shape otherwise, which takes longer than a short training."""
    rng = np.random.default_rng(seed)
    like = eqx.filter_eval_shape(Classifier, tuple(shape), num_classes, key=jax.random.key(0))

    def fill(layer):
        w, b = layer.weight, layer.bias
        if isinstance(layer, eqx.nn.GroupNorm):
            values = (np.ones(w.shape), np.zeros(b.shape))
        else:
            bound = 1.0 / np.sqrt(np.prod(w.shape[1:]))
            values = (rng.uniform(-bound, bound, w.shape), rng.uniform(-bound, bound, b.shape))
        return eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                           tuple(jnp.asarray(v, np.float32) for v in values))

    return eqx.tree_at(lambda m: (m.convs, m.norms, m.feature, m.head), like,
                       ([fill(c) for c in like.convs], [fill(n) for n in like.norms],
                        fill(like.feature), fill(like.head)))


# ------------------------------------------------------------------------------------ the maths


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(F,)` and covariance `(F, F)` (float64, unbiased) of features `(N >= 2, F)`."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, F) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (rounding's negative
    eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (squared 2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

    ``||mu1 - mu2||^2 + tr cov1 + tr cov2 - 2 tr (cov1^(1/2) cov2 cov1^(1/2))^(1/2)``, both square
    roots from symmetric eigendecompositions in float64 (eigenvalues below 0 from rounding are
    clipped to 0), so it holds for positive semi-definite covariances of any rank, N < F included.
    Dowson & Landau (1982); as FID, Heusel et al. (2017).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1 = np.atleast_2d(np.asarray(cov1, np.float64))
    cov2 = np.atleast_2d(np.asarray(cov2, np.float64))
    s1 = _sqrt_psd(cov1)
    m = s1 @ cov2 @ s1
    cross = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None))))
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(d, 0.0)


# ------------------------------------------------------------------------------------ training


def _unit(images, levels: int | None) -> np.ndarray:
    """Images in data units as float32 in [0, 1] (integer levels / (levels - 1))."""
    x = np.asarray(images, np.float32)
    return x / (levels - 1) if levels else x


def check_data(ds) -> None:
    """Raises ConfigError unless `ds` (a `sgm.data.Dataset`) holds labelled images `(C, H, W)`,
    which the score needs."""
    if ds.num_classes is None or ds.train_cond is None or len(ds.shape) != 3:
        what = "no labels" if ds.num_classes is None else "labels"
        raise ConfigError(f"sample.quality (the offline quality score) needs labelled images "
                          f"(C, H, W): data set {ds.name!r} has samples of shape {ds.shape} and "
                          f"{what}.")


@eqx.filter_jit
def _forward(clf: Classifier, x):
    f = jax.vmap(clf.features)(x)
    return jax.vmap(clf.head)(f), f


def apply(clf: Classifier, images, *, levels: int | None = None, batch: int = EVAL_BATCH
          ) -> tuple[np.ndarray, np.ndarray]:
    """`(logits (N, K), features (N, F))` of images `(N, C, H, W)`: integer levels when `levels`
    is set, else values in [0, 1]; `batch` images a pass (the last one padded to `batch`, or
    fewer images to a power of two, so that few programs serve every call)."""
    n = len(images)
    size = batch if n > batch else min(batch, 1 << max(n - 1, 0).bit_length())
    logits, feats = [], []
    for i in range(0, n, size):
        x = _unit(images[i:i + size], levels)
        pad = size - x.shape[0]
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
        lo, fe = _forward(clf, jnp.asarray(x))
        logits.append(np.asarray(lo)[:size - pad])
        feats.append(np.asarray(fe)[:size - pad])
    if not logits:
        return np.zeros((0, clf.head.out_features)), np.zeros((0, clf.feature.out_features))
    return np.concatenate(logits), np.concatenate(feats)


def train_classifier(images, labels, *, levels: int | None, num_classes: int, steps: int = STEPS,
                     batch_size: int = BATCH, lr: float = LR, seed: int = 0,
                     progress: bool = False) -> Classifier:
    """A `Classifier` trained on images `(N, C, H, W)` (integer levels when `levels` is set, else
    values in [0, 1]) with int labels `(N,)` in [0, num_classes).

    Cross-entropy, AdamW (a warm-up of 5% of the steps, then cosine decay of `lr` to 0, weight
    decay `WEIGHT_DECAY`), batches drawn without replacement epoch by epoch, each image shifted
    at random by up to 2 pixels (1 below 16 pixels), zero-filled. `progress` prints the loss
    every 250 steps.
    """
    x = np.asarray(images)
    y = np.asarray(labels, np.int32)
    n = x.shape[0]
    if x.ndim != 4 or y.shape != (n,) or n == 0 or y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"a classifier trains on images (N, C, H, W) with labels (N,) in "
                        f"[0, {num_classes}), got images {x.shape} and labels {y.shape}.")
    key = jax.random.key(seed)
    clf = new_classifier(x.shape[1:], num_classes, seed=seed)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), max(steps, 2))
    opt = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    state = opt.init(eqx.filter(clf, eqx.is_array))
    pad = 2 if min(x.shape[2:]) >= 16 else 1

    def shift(img, k):  # a random translation by up to `pad` pixels, zero-filled
        big = jnp.pad(img, ((0, 0), (pad, pad), (pad, pad)))
        dy, dx = jax.random.randint(k, (2,), 0, 2 * pad + 1)
        return jax.lax.dynamic_slice(big, (0, dy, dx), img.shape)

    @eqx.filter_jit
    def step(clf, state, xb, yb, k):
        xb = jax.vmap(shift)(xb, jax.random.split(k, xb.shape[0]))

        def loss(m):
            logits = jax.vmap(m)(xb)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

        value, grads = eqx.filter_value_and_grad(loss)(clf)
        updates, state = opt.update(grads, state, eqx.filter(clf, eqx.is_array))
        return eqx.apply_updates(clf, updates), state, value

    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, n)
    order, at = rng.permutation(n), 0
    for i in range(steps):
        if at + batch_size > n:
            order, at = rng.permutation(n), 0
        idx = np.sort(order[at:at + batch_size])
        at += batch_size
        clf, state, value = step(clf, state, _unit(x[idx], levels), y[idx],
                                 jax.random.fold_in(key, i))
        if progress and ((i + 1) % 250 == 0 or i + 1 == steps):
            print(f"classifier: step {i + 1}/{steps}, loss {float(value):.4f}", flush=True)
    return clf


def accuracy(clf: Classifier, images, labels, *, levels: int | None) -> float:
    """The fraction of `images` (data units) whose most likely class is their label."""
    logits, _ = apply(clf, images, levels=levels)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


# ------------------------------------------------------------------------------------ the cache


def cache_folder(cache_dir=None) -> Path:
    """The classifiers' folder: `cache_dir`, else $SGM_CACHE, else ~/.cache/sgm."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SGM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sgm"


def data_hash(ds) -> str:
    """SHA-256 of the training images and labels a classifier of `ds` learns from (with their
    shape, dtype, levels and number of classes)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(ds.train.shape), str(ds.train.dtype), ds.levels,
                         ds.num_classes]).encode())
    h.update(np.ascontiguousarray(ds.train).tobytes())
    h.update(np.ascontiguousarray(ds.train_cond).astype(np.int64).tobytes())
    return h.hexdigest()


def expected_header(ds) -> dict:
    """What a cached classifier of `ds` must say it is: the data (name, shape, levels, classes,
    `data_hash`) and the architecture (format, widths, grid, features)."""
    return {"format": FORMAT, "dataset": ds.name, "shape": list(ds.shape), "levels": ds.levels,
            "num_classes": ds.num_classes, "data_hash": data_hash(ds), "widths": list(WIDTHS),
            "grid": GRID, "features": FEATURES}


def cache_path(ds, cache_dir=None) -> Path:
    """`<cache folder>/classifier-<data set>-<12 hex digits>.eqx`, the digits a hash of
    `expected_header(ds)` (other data or a new architecture: another file)."""
    key = hashlib.sha256(json.dumps(expected_header(ds), sort_keys=True).encode()).hexdigest()
    return cache_folder(cache_dir) / f"classifier-{ds.name}-{key[:12]}.eqx"


def save_classifier(clf: Classifier, path, header: dict) -> None:
    """Writes `clf` to `path` atomically: a line naming the format, `header` as one line of JSON,
    then the leaves serialised by Equinox."""
    from .checkpoint import atomic_open

    with atomic_open(path) as f:
        f.write(MAGIC + b" %d\n" % FORMAT)
        f.write(json.dumps(header).encode() + b"\n")
        eqx.tree_serialise_leaves(f, clf)


def read_header(path) -> dict:
    """The JSON header of the cached classifier file at `path`; DataError if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _header(f, path)
    except OSError as e:
        raise DataError(f"cannot read the cached classifier {path}: {e.strerror or e}.") from None


def _header(f, path: Path) -> dict:
    first = f.readline(64)
    if first.split() != [MAGIC, str(FORMAT).encode()]:
        raise DataError(f"{path} is not a cached classifier of this version (expected a file "
                        f"starting with {MAGIC.decode()} {FORMAT}): remove it to train it again.")
    try:
        header = json.loads(f.readline(1 << 20))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise DataError(f"{path} has a damaged header (expected one line of JSON describing the "
                        f"classifier): remove it to train it again.")
    return header


def load_classifier(path, expected: dict) -> tuple[Classifier, dict]:
    """The classifier cached at `path` and its header, which must agree with `expected`
    (`expected_header`) and hold a test accuracy; raises DataError for a damaged or foreign file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = _header(f, path)
            wrong = [k for k, v in expected.items() if header.get(k) != v]
            if wrong:
                raise DataError(
                    f"{path} holds a classifier of other data or another architecture ({wrong[0]} "
                    f"is {header.get(wrong[0])!r}, expected {expected[wrong[0]]!r} for data set "
                    f"{expected['dataset']!r}): remove it to train it again.")
            acc = header.get("test_accuracy")
            if not (isinstance(acc, float | int) and 0 <= acc <= 1):
                raise DataError(f"{path} has a damaged header (its test_accuracy is {acc!r}, "
                                f"expected a fraction): remove it to train it again.")
            like = eqx.filter_eval_shape(Classifier, tuple(expected["shape"]),
                                         expected["num_classes"], key=jax.random.key(0))
            try:
                clf = eqx.tree_deserialise_leaves(f, like)
                rest = f.read(1)
            except Exception:  # truncated or foreign bytes: numpy and equinox raise many kinds
                rest = None
    except OSError as e:
        raise DataError(f"cannot read the cached classifier {path}: {e.strerror or e}.") from None
    if rest != b"":
        raise DataError(f"{path} is damaged (expected the weights of a {expected['shape']} "
                        f"classifier after its header, and nothing more): remove it to train it "
                        f"again.")
    leaves = jax.tree_util.tree_leaves(eqx.filter(clf, eqx.is_array))
    if not all(bool(jnp.all(jnp.isfinite(a))) for a in leaves):
        raise DataError(f"{path} holds NaN or inf weights: remove it to train it again.")
    return clf, header


def classifier_for(ds, *, cache_dir=None, progress: bool = False, steps: int = STEPS
                   ) -> tuple[Classifier, dict]:
    """`(classifier, info)` for the labelled image data set `ds` (a `sgm.data.Dataset`).

    Loaded from the cache folder (`cache_folder(cache_dir)`) when a classifier of the same
    training data and architecture is there (`cache_path`); otherwise trained on `ds.train` with
    `steps` steps (`train_classifier`), measured on `ds.test` and saved. `info` is the file's
    header (data set, shape, levels, classes, data hash, architecture, `test_accuracy`, `steps`,
    `train_seconds`) with `path` and `cached` (loaded, not trained). Raises ConfigError for data
    without labels or not images, DataError for a damaged or foreign cached file.
    """
    check_data(ds)
    expected = expected_header(ds)
    path = cache_path(ds, cache_dir)
    if path.exists():
        clf, header = load_classifier(path, expected)
        return clf, {**header, "path": str(path), "cached": True}
    try:  # before minutes of training: the folder must be there
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the classifier cache folder {path.parent} "
                          f"({e.strerror or e}): set SGM_CACHE (or --cache) to a writable "
                          f"folder.") from None
    if progress:
        print(f"classifier: training on the {ds.train.shape[0]} training images of {ds.name} "
              f"(once; cached in {path.parent})", flush=True)
    t0 = time.perf_counter()
    clf = train_classifier(ds.train, ds.train_cond, levels=ds.levels, num_classes=ds.num_classes,
                           steps=steps, progress=progress)
    seconds = time.perf_counter() - t0
    acc = accuracy(clf, ds.test, ds.test_cond, levels=ds.levels)
    header = {**expected, "test_accuracy": acc, "num_train": int(ds.train.shape[0]),
              "num_test": int(ds.test.shape[0]), "steps": steps, "batch_size": BATCH, "lr": LR,
              "train_seconds": round(seconds, 1)}
    save_classifier(clf, path, header)
    return clf, {**header, "path": str(path), "cached": False}


# ------------------------------------------------------------------------------------ the score


def check_samples(samples, labels, ds) -> tuple[np.ndarray, np.ndarray | None]:
    """`(samples, labels)` as arrays if `score` can take them for the data set `ds`: images
    `(N >= 2, *ds.shape)` of finite numbers, labels None or `(N,)` integers in [0, classes);
    raises DataError otherwise."""
    check_data(ds)
    x = np.asarray(samples)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(ds.shape) or x.shape[0] < 2:
        raise DataError(f"samples of shape {x.shape} cannot be scored: expected (N >= 2, "
                        f"*{tuple(ds.shape)}) images of data set {ds.name!r}.")
    if x.dtype.kind not in "uif" or (x.dtype.kind == "f" and not np.all(np.isfinite(x))):
        raise DataError(f"samples of dtype {x.dtype} cannot be scored: expected finite numbers "
                        f"in data units.")
    if labels is not None:
        n, labels = x.shape[0], np.asarray(labels)
        if (labels.shape != (n,) or labels.dtype.kind not in "ui"
                or labels.min() < 0 or labels.max() >= ds.num_classes):
            raise DataError(f"labels of shape {labels.shape} and dtype {labels.dtype} cannot be "
                            f"used: expected ({n},) integers in [0, {ds.num_classes}), one per "
                            f"sample.")
    return x, labels


def reference_picks(ds, labels, n: int, *, draws: int = 1, seed: int = 0) -> list[np.ndarray]:
    """`draws` sets of indices of `n` training images of `ds` to stand in for `n` samples: with
    the samples' `labels`, as many images of each class as there are samples of it (drawing
    without replacement while a class has enough images); without, uniformly at random."""
    rng = np.random.default_rng(seed)
    y = np.asarray(ds.train_cond)
    classes, counts = (None, None) if labels is None else np.unique(labels, return_counts=True)
    picks = []
    for _ in range(draws):
        if labels is None:
            picks.append(np.sort(rng.choice(y.shape[0], n, replace=n > y.shape[0])))
            continue
        parts = []
        for c, k in zip(classes, counts, strict=True):
            pool = np.flatnonzero(y == c)
            if pool.size == 0:
                raise DataError(f"samples drawn for class {c} cannot be compared with real "
                                f"images: data set {ds.name!r} has no training image of it.")
            parts.append(rng.choice(pool, k, replace=k > pool.size))
        picks.append(np.sort(np.concatenate(parts)))
    return picks


def score(clf: Classifier, samples, labels, ds, *, batch: int = EVAL_BATCH,
          reference_draws: int = REFERENCE_DRAWS, test_accuracy: float | None = None,
          seed: int = 0) -> dict:
    """The quality numbers of `samples` drawn for `labels` from a model of the data set `ds`,
    beside their references.

    The reference stands real training images in the samples' place: as many, and with labels,
    as many of each class (`reference_picks`), so that it is where a perfect sampler would land
    at this N and class balance. It is averaged over `reference_draws` draws; their standard
    deviation is also about the noise of `frechet` itself.

    Arguments:
        clf: the classifier of `ds` (`classifier_for`).
        samples: `(N >= 2, C, H, W)` in data units as a run writes them (integer levels, uint8 for
            up to 256; floats on the same scale are taken too).
        labels: `(N,)` the class each sample was drawn for, or None (unconditional samples).
        batch: images a forward pass.
        reference_draws: sets of training images the reference averages over.
        test_accuracy: the classifier's accuracy on `ds.test` when known (else measured).
        seed: picks the training images of the reference.

    Returns a dict: `num_samples`; `sample_accuracy` (only with `labels`), the fraction of samples
    classified as their label; `frechet`, the Fréchet distance of the samples' features to the
    whole test set's; `frechet_reference`, `frechet_reference_std` and `reference_accuracy`, the
    same for the training images (mean and standard deviation over the draws);
    `classifier_test_accuracy`.
    """
    x, labels = check_samples(samples, labels, ds)
    n = x.shape[0]
    test_logits, test_feats = apply(clf, ds.test, levels=ds.levels, batch=batch)
    mu_t, cov_t = feature_stats(test_feats)
    if test_accuracy is None:
        test_accuracy = float(np.mean(np.argmax(test_logits, 1) == ds.test_cond))

    def one(images, labs):
        logits, feats = apply(clf, images, levels=ds.levels, batch=batch)
        fd = frechet_distance(*feature_stats(feats), mu_t, cov_t)
        return fd, float(np.mean(np.argmax(logits, 1) == labs)) if labs is not None else None

    refs = [one(ds.train[p], ds.train_cond[p])
            for p in reference_picks(ds, labels, n, draws=max(1, reference_draws), seed=seed)]
    fd, acc = one(x, labels)
    ref_fd = np.array([r[0] for r in refs])
    out = {"num_samples": int(n)}
    if acc is not None:
        out["sample_accuracy"] = acc
    out.update(frechet=fd, frechet_reference=float(ref_fd.mean()),
               frechet_reference_std=float(ref_fd.std(ddof=1)) if len(refs) > 1 else 0.0,
               reference_accuracy=float(np.mean([r[1] for r in refs])),
               classifier_test_accuracy=float(test_accuracy))
    return out


def describe(q: dict) -> str:
    """One line of the numbers of `score`."""
    acc = (f"{q['sample_accuracy']:.1%} recognised as their class (real images "
           f"{q['reference_accuracy']:.1%}), " if "sample_accuracy" in q else "")
    return (f"quality of {q['num_samples']} samples: {acc}Fréchet distance {q['frechet']:.3f} "
            f"(real images {q['frechet_reference']:.3f} ± {q['frechet_reference_std']:.3f}); "
            f"classifier test accuracy {q['classifier_test_accuracy']:.1%}")


# -------------------------------------------------------------------------------- samples files


def read_samples(path) -> tuple[np.ndarray, np.ndarray | None]:
    """`(samples, labels or None)` of a samples file as `main.py` writes it (arrays `samples` and,
    for conditional runs, `cond`); conditions that are not one label per sample give None."""
    from .npz import oversized

    path = Path(path)
    if (name := oversized(path)) is not None:
        raise DataError(f"{path} is damaged: its array {name!r} claims more bytes than the "
                        f"file holds.")
    try:
        with np.load(path, allow_pickle=False) as f:
            x = f["samples"]
            cond = f["cond"] if "cond" in f.files else None
    except FileNotFoundError:
        raise DataError(f"no samples at {path}: run `python main.py CONFIG --mode sample` first, "
                        f"or pass --samples FILE.") from None
    except (OSError, ValueError, KeyError, EOFError) as e:
        why = (e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip("'\"")
               or type(e).__name__)
        raise DataError(f"{path} is not a readable samples file with a 'samples' array "
                        f"({why}).") from None
    if cond is not None and (cond.ndim != 1 or cond.shape[0] != x.shape[0]
                             or cond.dtype.kind not in "ui"):
        cond = None
    return x, cond


__all__ = ["Classifier", "accuracy", "apply", "cache_folder", "cache_path", "check_data",
           "check_samples", "classifier_for", "data_hash", "describe", "expected_header",
           "feature_stats", "frechet_distance", "load_classifier", "new_classifier",
           "read_header", "read_samples", "reference_picks", "save_classifier", "score",
           "train_classifier"]

if __name__ == "__main__":
    # `python -m sgm.quality RUN`: the command reads a run's config, which only the layers above
    # this module do; it lives in sgm.quality_cli, named here rather than imported, so that this
    # module imports nothing above it (importing sgm.quality never runs this block)
    import importlib

    sys.exit(importlib.import_module("sgm.quality_cli").main())
