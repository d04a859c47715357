"""Sample quality of labelled images, computed offline: a classifier the project trains itself.

FID needs Inception weights, which many machines cannot download. This module scores samples of a
labelled image data set with a small CNN trained on that data set's own training images instead:

- **sample accuracy**: the fraction of class-conditional samples the classifier assigns to the class
  they were drawn for (the classifier's own accuracy on the real test set is the ceiling);
- **Fréchet distance** between the classifier's features (its last hidden layer) of the samples and
  of the real test set, each set summarised by its mean and covariance (Heusel et al. 2017):
  ``||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr (S_1^(1/2) S_2 S_1^(1/2))^(1/2)``.

The distance is biased upward for small sets, so every score comes with its reference: the same
number of real training images scored the same way (`frechet_reference`, `reference_accuracy`),
which is where a perfect sampler would land. Numbers from different classifiers (another data set,
another cache) are not comparable.

The classifier is trained once per data set and kept in a cache folder (the `cache_dir` argument,
else `$SGM_CACHE`, else `~/.cache/sgm`) as leaves serialised by Equinox plus a JSON file of what it
was trained on; nothing is pickled and a file that does not match its data is refused.

    python -m sgm.quality runs/fashion_mnist_cpu        # scores runs/.../samples.npz
"""

from __future__ import annotations

import argparse
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

from .errors import ConfigError, DataError, SGMError

#: the classifier's architecture: channels of the conv stages (each after the first halves the
#: size while it is at least 8), and the width of the feature layer
WIDTHS = (32, 64, 128)
FEATURES = 128
#: training: steps, batch, peak learning rate (cosine decay), weight decay
STEPS, BATCH, LR, WEIGHT_DECAY = 1500, 128, 3e-3, 1e-4
FORMAT = 1  # version of the cached file's layout


class Classifier(eqx.Module):
    """A small CNN for `(C, H, W)` images with values in [0, 1] (levels / (levels - 1)).

    Three stages of two 3x3 convolutions with group norm and SiLU (the first convolution of the
    second and third stages has stride 2 while the image is at least 8 pixels), global average
    pooling, a feature layer and a linear head.
    """

    convs: list
    norms: list
    strides: tuple[int, ...] = eqx.field(static=True)
    feature: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, channels: int, num_classes: int, image_size: int, *, widths=WIDTHS,
                 features: int = FEATURES, key):
        keys = iter(jax.random.split(key, 2 * len(widths) + 2))
        convs, norms, strides, c_in, size = [], [], [], channels, image_size
        for i, w in enumerate(widths):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0 and size >= 8) else 1
                size = -(-size // stride)
                convs.append(eqx.nn.Conv2d(c_in, w, 3, stride=stride, padding=1, key=next(keys)))
                norms.append(eqx.nn.GroupNorm(min(8, w), w))
                strides.append(stride)
                c_in = w
        self.convs, self.norms, self.strides = convs, norms, tuple(strides)
        self.feature = eqx.nn.Linear(c_in, features, key=next(keys))
        self.head = eqx.nn.Linear(features, num_classes, key=next(keys))

    def features(self, x: jax.Array) -> jax.Array:
        """The feature vector of one image (the layer the Fréchet distance compares)."""
        h = 2.0 * x - 1.0
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = jax.nn.silu(norm(conv(h)))
        return jax.nn.silu(self.feature(jnp.mean(h, axis=(1, 2))))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Class logits of one image."""
        return self.head(self.features(x))


# ------------------------------------------------------------------------------------ the maths


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased) of features `(N, F)`."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, F) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2).

    ``||mu1 - mu2||^2 + tr cov1 + tr cov2 - 2 tr (cov1^(1/2) cov2 cov1^(1/2))^(1/2)``, with both
    square roots from symmetric eigendecompositions in float64 (eigenvalues below 0 from rounding
    are clipped to 0), so it is exact for positive semi-definite covariances of any rank.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    s1 = _sqrt_psd(cov1)
    w = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    cross = float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(d, 0.0)


# ------------------------------------------------------------------------------------ training


def _scaled(images, levels: int | None) -> np.ndarray:
    x = np.asarray(images, np.float32)
    return x / (levels - 1) if levels else x


def check_data(ds) -> None:
    """Raises ConfigError unless `ds` holds labelled images (what the score needs)."""
    if ds.num_classes is None or ds.train_cond is None or len(ds.shape) != 3:
        raise ConfigError(f"sample.quality (the offline quality score) needs labelled images: "
                          f"data set {ds.name!r} has samples of shape {ds.shape} and "
                          f"{'no labels' if ds.num_classes is None else 'labels'}.")


def apply(clf: Classifier, images, *, batch: int = 500, what: str = "logits") -> np.ndarray:
    """Logits (or `what="features"`) of images `(N, C, H, W)` in [0, 1], `batch` at a time."""
    fn = eqx.filter_jit(lambda m, x: jax.vmap(m if what == "logits" else m.features)(x))
    x = np.asarray(images, np.float32)
    out = [np.asarray(fn(clf, x[i:i + batch])) for i in range(0, x.shape[0], batch)]
    return np.concatenate(out) if out else np.zeros((0,))


def train_classifier(images, labels, *, levels: int | None, num_classes: int, steps: int = STEPS,
                     batch_size: int = BATCH, lr: float = LR, seed: int = 0,
                     progress: bool = False) -> Classifier:
    """A `Classifier` trained on images `(N, C, H, W)` (data units: integer levels when `levels`
    is set, else values in [0, 1]) and int labels `(N,)`: AdamW with a cosine decay, random shifts
    of up to 2 pixels, cross-entropy."""
    x = _scaled(images, levels)
    y = np.asarray(labels, np.int32)
    n, c, h, _ = x.shape
    key = jax.random.key(seed)
    clf = Classifier(c, num_classes, h, key=key)
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=WEIGHT_DECAY)
    state = opt.init(eqx.filter(clf, eqx.is_array))
    pad = 2

    @eqx.filter_jit
    def step(clf, state, xb, yb, k):
        def shift(img, kk):  # a random translation by up to `pad` pixels, zero-filled
            big = jnp.pad(img, ((0, 0), (pad, pad), (pad, pad)))
            dy, dx = jax.random.randint(kk, (2,), 0, 2 * pad + 1)
            return jax.lax.dynamic_slice(big, (0, dy, dx), img.shape)

        xb = jax.vmap(shift)(xb, jax.random.split(k, xb.shape[0]))

        def loss(m):
            logits = jax.vmap(m)(xb)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

        value, grads = eqx.filter_value_and_grad(loss)(clf)
        updates, state = opt.update(grads, state, eqx.filter(clf, eqx.is_array))
        return eqx.apply_updates(clf, updates), state, value

    rng = np.random.default_rng(seed)
    order, at = rng.permutation(n), 0
    batch_size = min(batch_size, n)
    for i in range(steps):
        if at + batch_size > n:
            order, at = rng.permutation(n), 0
        idx = order[at:at + batch_size]
        at += batch_size
        clf, state, value = step(clf, state, x[idx], y[idx], jax.random.fold_in(key, i))
        if progress and (i + 1) % 250 == 0:
            print(f"classifier: step {i + 1}/{steps}, loss {float(value):.4f}", flush=True)
    return clf


def accuracy(clf: Classifier, images, labels, *, levels: int | None) -> float:
    """The fraction of `images` (data units) whose most likely class is their label."""
    logits = apply(clf, _scaled(images, levels))
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


# ------------------------------------------------------------------------------------ the cache


def cache_folder(cache_dir=None) -> Path:
    """The classifiers' folder: `cache_dir`, else $SGM_CACHE, else ~/.cache/sgm."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SGM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sgm"


def data_hash(ds) -> str:
    """A hash of the training images and labels (and their shape and levels) a classifier learns."""
    h = hashlib.sha256()
    h.update(json.dumps([ds.name, list(ds.train.shape), str(ds.train.dtype), ds.levels,
                         ds.num_classes]).encode())
    h.update(np.ascontiguousarray(ds.train).tobytes())
    h.update(np.ascontiguousarray(ds.train_cond).astype(np.int64).tobytes())
    return h.hexdigest()


def _paths(ds, cache_dir) -> tuple[Path, Path, dict]:
    digest = data_hash(ds)
    stem = cache_folder(cache_dir) / f"classifier-{ds.name}-{digest[:12]}"
    meta = {"format": FORMAT, "dataset": ds.name, "shape": list(ds.shape), "levels": ds.levels,
            "num_classes": ds.num_classes, "data_hash": digest, "widths": list(WIDTHS),
            "features": FEATURES}
    return stem.with_suffix(".eqx"), stem.with_suffix(".json"), meta


def save_classifier(clf: Classifier, path: Path, meta_path: Path, meta: dict) -> None:
    """Writes the classifier's leaves and its metadata, each file atomically."""
    from .checkpoint import atomic_open, write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        eqx.tree_serialise_leaves(f, clf)
    write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")


def load_classifier(path: Path, meta_path: Path, expected: dict) -> tuple[Classifier, dict]:
    """The cached classifier at `path` whose metadata must match `expected`; raises DataError."""
    try:
        meta = json.loads(Path(meta_path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise DataError(f"{meta_path} is damaged (expected the JSON description of the cached "
                        f"classifier {path.name}): remove both files to train it again.") from None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
        raise DataError(f"{meta_path} describes another classifier than the one for data set "
                        f"{expected['dataset']!r} {tuple(expected['shape'])}: remove it and "
                        f"{path.name} to train it again.")
    c, h, _ = expected["shape"]
    like = Classifier(c, expected["num_classes"], h, key=jax.random.key(0))
    try:
        with open(path, "rb") as f:
            clf = eqx.tree_deserialise_leaves(f, like)
    except Exception:  # a short, truncated or foreign file: equinox/numpy raise many kinds
        raise DataError(f"{path} is damaged (expected the serialised leaves of a {c}x{h}x{h} "
                        f"classifier): remove it and {Path(meta_path).name} to train it "
                        "again.") from None
    if not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(
            eqx.filter(clf, eqx.is_array))):
        raise DataError(f"{path} holds NaN or inf weights: remove it and "
                        f"{Path(meta_path).name} to train it again.")
    return clf, meta


def classifier_for(ds, *, cache_dir=None, progress: bool = False, steps: int = STEPS
                   ) -> tuple[Classifier, dict]:
    """`(classifier, info)` for the labelled image data set `ds` (a `sgm.data.Dataset`).

    Loaded from the cache when one trained on the same data is there; otherwise trained on
    `ds.train`, measured on `ds.test` and saved. `info` has the cache file, the test accuracy
    (`test_accuracy`) and, when trained now, the training time in seconds.
    """
    check_data(ds)
    path, meta_path, expected = _paths(ds, cache_dir)
    if path.exists() and meta_path.exists():
        clf, meta = load_classifier(path, meta_path, expected)
        return clf, {"path": str(path), "test_accuracy": meta["test_accuracy"],
                     "train_seconds": meta.get("train_seconds"), "cached": True}
    t0 = time.perf_counter()
    if progress:
        print(f"classifier: training on {ds.train.shape[0]} images of {ds.name} "
              f"(once; cached in {path.parent})", flush=True)
    clf = train_classifier(ds.train, ds.train_cond, levels=ds.levels, num_classes=ds.num_classes,
                           steps=steps, progress=progress)
    seconds = time.perf_counter() - t0
    acc = accuracy(clf, ds.test, ds.test_cond, levels=ds.levels)
    save_classifier(clf, path, meta_path, {**expected, "test_accuracy": acc,
                                           "train_seconds": seconds, "steps": steps})
    return clf, {"path": str(path), "test_accuracy": acc, "train_seconds": seconds,
                 "cached": False}


# ------------------------------------------------------------------------------------ the score


def score(clf: Classifier, samples, labels, ds, *, test_accuracy: float | None = None,
          seed: int = 0) -> dict:
    """The quality numbers of `samples` (data units, `(N, C, H, W)`) drawn for `labels` (`(N,)`,
    or None for unconditional samples) of the data set `ds`, with their references.

    Returns `num`, `sample_accuracy` (omitted without labels), `frechet` (samples vs test set),
    `frechet_reference` and `reference_accuracy` (N random training images in the samples' place),
    and `classifier_test_accuracy` (the classifier on the whole test set).
    """
    check_data(ds)
    x = np.asarray(samples)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(ds.shape) or x.shape[0] < 2:
        raise DataError(f"samples of shape {x.shape} cannot be scored: expected (N >= 2, "
                        f"*{ds.shape}) images of data set {ds.name!r}.")
    n = x.shape[0]
    test = _scaled(ds.test, ds.levels)
    test_logits = apply(clf, test)
    mu_t, cov_t = feature_stats(apply(clf, test, what="features"))
    if test_accuracy is None:
        test_accuracy = float(np.mean(np.argmax(test_logits, 1) == ds.test_cond))

    def one(images, labs):
        im = _scaled(images, ds.levels)
        out = {"frechet": frechet_distance(*feature_stats(apply(clf, im, what="features")),
                                           mu_t, cov_t)}
        if labs is not None:
            out["accuracy"] = float(np.mean(np.argmax(apply(clf, im), 1) == np.asarray(labs)))
        return out

    pick = np.random.default_rng(seed).choice(ds.train.shape[0], min(n, ds.train.shape[0]),
                                              replace=False)
    ref = one(ds.train[pick], ds.train_cond[pick])
    got = one(x, labels)
    res = {"num": int(n), "frechet": got["frechet"], "frechet_reference": ref["frechet"],
           "reference_accuracy": ref["accuracy"], "classifier_test_accuracy": test_accuracy}
    if labels is not None:
        res = {"num": int(n), "sample_accuracy": got["accuracy"], **{k: v for k, v in res.items()
                                                                    if k != "num"}}
    return res


def describe(q: dict) -> str:
    """One line of the numbers of `score`."""
    acc = (f"recognised as their class {q['sample_accuracy']:.1%} "
           f"(real images {q['reference_accuracy']:.1%}), " if "sample_accuracy" in q else "")
    return (f"quality of {q['num']} samples: {acc}Fréchet distance {q['frechet']:.3f} "
            f"(real images {q['frechet_reference']:.3f}); classifier test accuracy "
            f"{q['classifier_test_accuracy']:.1%}")


def score_run(workdir, *, samples=None, cache_dir=None, progress: bool = True) -> dict:
    """Scores a run's samples (`samples` or WORKDIR/samples.npz), writes WORKDIR/quality.json and
    adds the numbers to WORKDIR/summary.json under "quality". Raises SGMError on bad input."""
    from . import build
    from .checkpoint import write_atomic
    from .npz import oversized

    workdir = Path(workdir)
    cfg = build.run_config(workdir)
    build.check(cfg)
    ds = build.build_dataset(cfg)
    check_data(ds)
    path = Path(samples) if samples is not None else workdir / "samples.npz"
    try:
        if (name := oversized(path)) is not None:
            raise DataError(f"{path} is damaged: its array {name!r} claims more bytes than the "
                            "file holds.")
        with np.load(path, allow_pickle=False) as f:
            x = f["samples"]
            labels = f["cond"] if "cond" in f.files else None
    except FileNotFoundError:
        raise DataError(f"no samples at {path}: run `python main.py ... --mode sample` first, or "
                        "pass --samples FILE.") from None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(f"{path} is not a readable samples file with a 'samples' array "
                        f"({type(e).__name__}).") from None
    summary = _read_summary(workdir)  # damaged: one sentence before anything is written
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != x.shape[0]):
        labels = None  # conditions that are not one label per sample: no accuracy
    clf, info = classifier_for(ds, cache_dir=cache_dir, progress=progress)
    q = score(clf, x, labels, ds, test_accuracy=info["test_accuracy"])
    write_atomic(workdir / "quality.json", json.dumps(q, indent=2) + "\n")
    summary["quality"] = q
    write_atomic(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return q


def _read_summary(workdir: Path) -> dict:
    from .errors import CheckpointError

    path = workdir / "summary.json"
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        summary = None
    if not isinstance(summary, dict):
        raise CheckpointError(f"{path} is damaged (expected a JSON object of the commands run "
                              "before): restore it, or remove it to start a new summary.")
    return summary


def main(argv=None) -> int:
    """`python -m sgm.quality RUN [--samples FILE] [--cache DIR]`: 0, or 2 on bad input."""
    p = argparse.ArgumentParser(prog="python -m sgm.quality", description=__doc__.splitlines()[0])
    p.add_argument("run", help="work directory of a main.py run on labelled images")
    p.add_argument("--samples", default=None, help="samples file (default RUN/samples.npz)")
    p.add_argument("--cache", default=None,
                   help="classifier cache folder (default $SGM_CACHE, else ~/.cache/sgm)")
    a = p.parse_args(argv)
    try:
        q = score_run(a.run, samples=a.samples, cache_dir=a.cache)
    except SGMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(q))
    print(f"-> {Path(a.run) / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["Classifier", "accuracy", "apply", "cache_folder", "check_data", "classifier_for",
           "data_hash",
           "describe", "feature_stats", "frechet_distance", "load_classifier", "main",
           "save_classifier", "score", "score_run", "train_classifier"]
