"""Loaders for MNIST and CIFAR-10 from the user's disk (image folders are in `images`).

Formats are the standard ones, read without pickle and without network access:

- MNIST: the four idx files (`train-images-idx3-ubyte`, ..., optionally gzipped) or a
  `mnist.npz` holding `x_train, y_train, x_test, y_test` (the Keras file).
- CIFAR-10, binary version: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, each a
  run of 3073-byte records (1 label byte, then 1024 red, 1024 green, 1024 blue bytes, row-major).

Every loader returns uint8 images `(N, C, H, W)` and int32 labels, and raises `DataError` naming the
file and what was expected when something is missing, truncated or corrupt.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sgm.errors import DataError
from sgm.npz import oversized

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR10_RECORD = 1 + 3 * 32 * 32

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------------------- idx


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"Cannot read {path}: {e} (expected a readable, complete file).") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte idx file (optionally .gz): magic 0x0000 08 <ndim>, big-endian dims."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(
            f"{path} has magic number {raw[:4].hex() or 'none'}: expected an unsigned-byte idx "
            "file starting 0x00000801 (labels) or 0x00000803 (images)."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: expected an idx header of {header} bytes.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"{path} holds {len(raw)} bytes: expected {expected} for an idx array of shape {dims}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _check_labels(labels: np.ndarray, n: int, num_classes: int, where: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{where} has labels of shape {labels.shape}: expected ({n},).")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where} has labels in [{labels.min()}, {labels.max()}]: "
            f"expected 0..{num_classes - 1}."
        )
    return labels.astype(np.int32)


def _as_uint8_images(x: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) integer-valued 0..255 array -> uint8 (N, C, H, W)."""
    if x.dtype.kind not in "uif":
        raise DataError(f"{where} has dtype {x.dtype}: expected uint8 images.")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise DataError(f"{where} holds NaN or inf: expected pixel values 0..255.")
        if not np.all(x == np.round(x)):
            raise DataError(f"{where} holds non-integer pixels: expected values 0..255.")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DataError(f"{where} has pixels in [{x.min()}, {x.max()}]: expected 0..255.")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{where} has shape {x.shape}: expected (N, H, W) or (N, C, H, W).")
    return x.astype(np.uint8)


def _mnist_idx(directory: Path, paths: list[Path]) -> Split:
    out = []
    for img_path, lab_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images = read_idx(img_path)
        if images.ndim != 3:
            raise DataError(f"{img_path} has shape {images.shape}: expected (N, 28, 28) images.")
        labels = read_idx(lab_path)
        out += [images[:, None], _check_labels(labels, images.shape[0], 10, str(lab_path))]
    return tuple(out)


def read_mnist_npz(path: str | Path) -> Split:
    """Read `x_train, y_train, x_test, y_test` from an npz file (pickle disabled)."""
    path = Path(path)
    keys = ("x_train", "y_train", "x_test", "y_test")
    if (big := oversized(path)) is not None:
        raise DataError(f"{path} is damaged: the header of array {big!r} claims more data than the "
                        f"file holds.")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(
                    f"{path} lacks {', '.join(missing)}: expected arrays {', '.join(keys)}."
                )
            arrays = {k: f[k] for k in keys}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"Cannot read {path}: {e} (expected an npz file without pickles).") from e
    out = []
    for split in ("train", "test"):
        x = _as_uint8_images(arrays[f"x_{split}"], f"{path} (x_{split})")
        y = arrays[f"y_{split}"]
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise DataError(f"{path} (y_{split}) holds NaN or inf: expected labels 0..9.")
        out += [x, _check_labels(y.astype(np.int64), x.shape[0], 10, f"{path} (y_{split})")]
    return tuple(out)


def load_mnist(root: str | Path) -> Split:
    """MNIST from `root` (or `root/MNIST/raw`, `root/mnist`): the idx files, else `mnist.npz`.

    `root` may also name the npz file itself. Returns uint8 `(N, 1, 28, 28)` and int32 labels:
    `(x_train, y_train, x_test, y_test)`.
    """
    root = Path(root)
    if root.is_file():
        return read_mnist_npz(root)
    if not root.is_dir():
        raise DataError(f"MNIST directory {root} does not exist: pass the folder holding it.")
    for directory in (root, root / "MNIST" / "raw", root / "mnist"):
        paths = [_find(directory, stem) for stem in MNIST_FILES]
        if all(p is not None for p in paths):
            return _mnist_idx(directory, paths)
        if (directory / "mnist.npz").is_file():
            return read_mnist_npz(directory / "mnist.npz")
    raise DataError(
        f"MNIST not found: expected {', '.join(s + '(.gz)' for s in MNIST_FILES)} or mnist.npz "
        f"in {root}."
    )


# ------------------------------------------------------------------------------------ CIFAR-10


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: `(images (N, 3, 32, 32) uint8, labels (N,) int32)`."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR10_RECORD:
        raise DataError(
            f"{path} holds {len(raw)} bytes: expected a nonzero multiple of {CIFAR10_RECORD} "
            "(1 label byte + 3072 pixel bytes per image)."
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = _check_labels(records[:, 0], records.shape[0], 10, str(path))
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def load_cifar10(root: str | Path) -> Split:
    """CIFAR-10 (binary version) from `root` or `root/cifar-10-batches-bin`.

    Returns `(x_train (50000, 3, 32, 32) uint8, y_train int32, x_test, y_test)`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CIFAR-10 directory {root} does not exist: pass the folder holding it.")
    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
    for directory in (root, root / "cifar-10-batches-bin"):
        if all((directory / name).is_file() for name in names):
            train = [read_cifar_batch(directory / name) for name in CIFAR10_TRAIN]
            x_test, y_test = read_cifar_batch(directory / CIFAR10_TEST)
            x_train = np.concatenate([b[0] for b in train])
            y_train = np.concatenate([b[1] for b in train])
            return x_train, y_train, x_test, y_test
    raise DataError(
        f"CIFAR-10 not found: expected {', '.join(names)} (the binary version) in {root}."
    )
