"""A user's own arrays from one `.npz` (or `.npy`) file: fields, points or images, with conditions.

Keys of the npz file (a `.npy` file holds `x` alone):

    x          (N, D) points, (N, H, W) fields or (N, C, H, W) images; floats (continuous data) or
               unsigned integers 0..levels-1 with `levels` (discrete data)
    levels     scalar integer: the number of discrete levels of integer `x` (256 for 8-bit images)
    labels     (N,) integer class labels 0..K-1               \
    params     (N, P) (or (N,)) float parameter vectors         > at most one of the three
    cond       (N, h, w) or (N, C', h, w) conditioning images   /
               (h <= H, w <= W; floats or integers)
    x_test, labels_test, params_test, cond_test: a held-out set with the same keys; without them
               a fixed subset (`n_test`, default a tenth) of `x` is held out
    x_val, labels_val, params_val, cond_val: the user's own validation set (training-time
               metrics, early stopping and the best checkpoint use it); without them a part of
               the training samples is set aside (`data.val_fraction`, see `sgm.data.load`)

Everything is read with `allow_pickle=False`; object arrays, NaN/inf, mismatched lengths and shapes,
and wrong dtypes raise `DataError` naming the file, the key and what is expected.
"""

from __future__ import annotations

import dataclasses
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sgm.errors import ConfigError, DataError
from sgm.npz import oversized

CONDITIONS = ("labels", "params", "cond")  # what the samples may be conditioned on
KEYS = ("x", "levels", *CONDITIONS, "x_test", *(f"{k}_test" for k in CONDITIONS),
        "x_val", *(f"{k}_val" for k in CONDITIONS))
MAX_LEVELS = 65536
_SPLIT_TAG = 0xA77A  # the held-out split depends on this file's content only, never on a seed


@dataclasses.dataclass(frozen=True)
class Arrays:
    """The checked train/test (and, where the file has them, validation) arrays of one file
    (`kind` names the condition, or None)."""

    x_train: np.ndarray
    x_test: np.ndarray
    cond_train: np.ndarray | None
    cond_test: np.ndarray | None
    kind: str | None
    levels: int | None
    num_classes: int | None
    x_val: np.ndarray | None = None
    cond_val: np.ndarray | None = None


def _read(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz/npy file by key, without pickle; one sentence for whatever is wrong."""
    def unreadable(e: Exception, key: str | None = None) -> DataError:
        where = f"{path} ({key})" if key else str(path)
        if "pickle" in str(e) or "Object arrays" in str(e):
            return DataError(f"{where} holds an object array or pickled data: expected numeric "
                             "arrays (sgm never loads pickles; save plain numpy arrays).")
        return DataError(f"Cannot read {where}: {e} (expected an .npz or .npy file of numpy "
                         "arrays).")

    try:
        with path.open("rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise unreadable(e) from None
    if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):  # np.load would try it as a pickle
        raise DataError(f"{path} is neither an .npz nor an .npy file (it starts {magic!r}): "
                        "expected arrays saved with numpy.savez or numpy.save.")
    if (big := oversized(path)) is not None:
        raise DataError(f"{path} is damaged: the header of array {big!r} claims more data than the "
                        f"file holds.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise unreadable(e) from None
    if isinstance(loaded, np.ndarray):  # a .npy file (np.load goes by content, not by suffix)
        return {"x": loaded}
    with loaded:
        unknown = [k for k in loaded.files if k not in KEYS]
        if unknown:
            raise DataError(f"{path} has unknown keys {', '.join(unknown)}: expected keys among "
                            f"{', '.join(KEYS)}.")
        out = {}
        for key in loaded.files:
            try:
                out[key] = loaded[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise unreadable(e, key) from None
    return out


def _finite(a: np.ndarray, where: str) -> None:
    """Refuses NaN or inf, and values that float32 (the dtype they are cast to) cannot hold."""
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise DataError(f"{where} holds NaN or inf: expected finite values.")
    big = float(np.finfo(np.float32).max)
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size and float(np.abs(a).max()) > big:
        raise DataError(f"{where} holds values beyond float32's range: expected magnitudes of at "
                        f"most {big:.3g}.")


def _samples(x: np.ndarray, levels: int | None, where: str) -> np.ndarray:
    """`x` as float32 (continuous) or uint8/int32 levels, with a channel axis added to fields."""
    if x.dtype.kind == "f":
        if levels is not None:
            raise DataError(f"{where} holds floats but the file gives levels={levels}: expected "
                            "unsigned integers 0..levels-1 with levels, or floats without it.")
        _finite(x, where)
        x = x.astype(np.float32)
    elif x.dtype.kind in "ui":
        if levels is None:
            raise DataError(f"{where} has integer dtype {x.dtype}: expected a `levels` entry in "
                            "the file (the number of discrete levels, e.g. 256) or float data.")
        if x.size and (x.min() < 0 or x.max() >= levels):
            raise DataError(f"{where} has values in [{x.min()}, {x.max()}]: expected integer "
                            f"levels 0..{levels - 1}.")
        x = x.astype(np.uint8 if levels <= 256 else np.int32)
    else:
        raise DataError(f"{where} has dtype {x.dtype}: expected floats (continuous data) or "
                        "unsigned integers with `levels` (discrete data).")
    if x.ndim in (1, 3):  # scalars per sample, or fields without a channel axis
        x = x[:, None]
    if x.ndim not in (2, 4) or x.shape[0] == 0:
        raise DataError(f"{where} has shape {x.shape}: expected (N, D) points, (N, H, W) fields "
                        "or (N, C, H, W) images with N >= 1.")
    return x


def _condition(kind: str, a: np.ndarray, x: np.ndarray, where: str) -> np.ndarray:
    """Checks labels/params/cond of the samples `x` and returns them as int32/float32 arrays."""
    n = x.shape[0]
    if a.ndim == 0 or a.shape[0] != n:
        raise DataError(f"{where} has {a.shape[0] if a.ndim else 0} rows: expected {n}, one per "
                        "sample.")
    if kind == "labels":
        if a.dtype.kind not in "ui" or a.ndim != 1:
            raise DataError(f"{where} has dtype {a.dtype} and shape {a.shape}: expected integer "
                            f"class labels of shape ({n},).")
        if a.min() < 0:
            raise DataError(f"{where} holds negative labels: expected classes 0..K-1.")
        if int(a.max()) >= n:
            raise DataError(f"{where} holds label {int(a.max())} among {n} samples: expected "
                            f"classes 0..K-1 with K at most the number of samples.")
        return a.astype(np.int32)
    if a.dtype.kind not in "uif":
        raise DataError(f"{where} has dtype {a.dtype}: expected floats or integers.")
    _finite(a, where)
    a = a.astype(np.float32)
    if kind == "params":
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] == 0:
            raise DataError(f"{where} has shape {a.shape}: expected parameter vectors (N, P) with "
                            f"P >= 1.")
        return a
    a = a[:, None] if a.ndim == 3 else a
    if x.ndim != 4:
        raise DataError(f"{where} are conditioning images, but x has shape {x.shape}: "
                        "conditioning images need image data x of shape (N, H, W) or (N, C, H, W).")
    if a.ndim != 4 or a.shape[2] > x.shape[2] or a.shape[3] > x.shape[3]:
        raise DataError(f"{where} has shape {a.shape}: expected conditioning images (N, h, w) or "
                        f"(N, C, h, w) no larger than the samples' {x.shape[2]}x{x.shape[3]}.")
    return a


def _levels(raw: dict) -> int | None:
    if "levels" not in raw:
        return None
    lv = raw["levels"]
    if lv.shape != () or lv.dtype.kind not in "ui" or not 2 <= int(lv) <= MAX_LEVELS:
        raise DataError(f"levels={lv!r} is invalid: expected one integer in 2..{MAX_LEVELS}.")
    return int(lv)


def load_arrays(path: str | Path | None, *, n_test: int | None = None) -> Arrays:
    """Reads and checks the arrays of `path` (see the module docstring for the keys).

    Arguments:
        path: an `.npz` or `.npy` file.
        n_test: without `x_test` in the file, the number of samples held out (default a tenth,
            at least 1), a fixed subset chosen independently of any seed; with `x_test`, ignored
            here (the caller takes the first `n_test`).
    """
    if path is None:
        raise ConfigError("data.name='array' needs data.root: the path of an .npz or .npy file.")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Array file {path} does not exist: expected an .npz or .npy file.")
    raw = _read(path)
    if "x" not in raw:
        raise DataError(f"{path} lacks the key x: expected the samples as x (N, ...), with "
                        f"optional {', '.join(k for k in KEYS if k != 'x')}.")
    given = [k for k in CONDITIONS if k in raw]
    if len(given) > 1:
        raise DataError(f"{path} holds {' and '.join(given)}: expected at most one of "
                        f"{', '.join(CONDITIONS)} (the one condition of every sample).")
    kind = given[0] if given else None
    for part in ("test", "val"):
        for k in CONDITIONS:
            if f"{k}_{part}" in raw and (k != kind or f"x_{part}" not in raw):
                raise DataError(f"{path} has {k}_{part} without {k} and x_{part}: expected "
                                f"{part} arrays only next to their training arrays.")
        if f"x_{part}" in raw and kind and f"{kind}_{part}" not in raw:
            raise DataError(f"{path} has x_{part} and {kind} but no {kind}_{part}: expected the "
                            f"{kind} of every {part} sample too.")
    levels = _levels(raw)
    x = _samples(raw["x"], levels, f"{path} (x)")
    cond = None if kind is None else _condition(kind, raw[kind], x, f"{path} ({kind})")
    (x_val, cond_val) = _part(raw, "val", kind, x, cond, levels, path)
    if "x_test" in raw:
        x_test, cond_test = _part(raw, "test", kind, x, cond, levels, path)
    else:
        n_hold = max(1, x.shape[0] // 10) if n_test is None else n_test
        if n_hold >= x.shape[0]:
            raise DataError(f"{path} holds {x.shape[0]} samples: too few to hold out {n_hold} "
                            "(set data.n_test, or store x_test).")
        perm = np.random.default_rng([_SPLIT_TAG, x.shape[0]]).permutation(x.shape[0])
        test, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        x, x_test = x[train], x[test]
        cond, cond_test = (None, None) if cond is None else (cond[train], cond[test])
    num_classes = None
    if kind == "labels":
        num_classes = int(max(c.max() for c in (cond, cond_test, cond_val) if c is not None)) + 1
    return Arrays(x, x_test, cond, cond_test, kind, levels, num_classes, x_val, cond_val)


def _part(raw: dict, part: str, kind: str | None, x: np.ndarray, cond: np.ndarray | None,
          levels: int | None, path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The file's `x_<part>` and its conditions, checked against the training arrays' shapes;
    (None, None) where the file has no `x_<part>`."""
    if f"x_{part}" not in raw:
        return None, None
    xp = _samples(raw[f"x_{part}"], levels, f"{path} (x_{part})")
    if xp.shape[1:] != x.shape[1:]:
        raise DataError(f"{path} (x_{part}) has samples of shape {xp.shape[1:]}: expected "
                        f"{x.shape[1:]}, the shape of x's.")
    if not kind:
        return xp, None
    where = f"{path} ({kind}_{part})"
    cp = _condition(kind, raw[f"{kind}_{part}"], xp, where)
    if cp.shape[1:] != cond.shape[1:]:
        raise DataError(f"{where} has shape {cp.shape[1:]} per sample: expected "
                        f"{cond.shape[1:]}, as in {kind}.")
    return xp, cp
