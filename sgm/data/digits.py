"""scikit-learn's 8x8 handwritten digits (UCI "optdigits" test set, 1797 images), no download.

Each pixel counts the set bits of a 4x4 block of a 32x32 bitmap, so pixels are integers in
0..16: 17 grey levels. Images are returned as uint8 `(N, 1, 8, 8)` with labels 0..9.

The split is fixed: the first 1500 images train, the last 297 test (the classes are interleaved
through the file, so both parts hold every digit in near-equal numbers).
"""

from __future__ import annotations

import numpy as np

from sgm.errors import DataError

#: grey levels of a pixel (values 0..16)
LEVELS = 17
NUM_TEST = 297
SHAPE = (1, 8, 8)


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as `(x_train (1500, 1, 8, 8) uint8, y_train (1500,) int32, x_test, y_test)`."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    data = np.asarray(bunch.data)
    if data.shape != (1797, 64) or data.min() < 0 or data.max() > LEVELS - 1:
        raise DataError(
            f"scikit-learn's digits have an unexpected shape {data.shape} or range "
            f"[{data.min()}, {data.max()}]: expected (1797, 64) integers in 0..16."
        )
    x = np.rint(data).astype(np.uint8).reshape(-1, *SHAPE)
    y = np.asarray(bunch.target, dtype=np.int32)
    return x[:-NUM_TEST], y[:-NUM_TEST], x[-NUM_TEST:], y[-NUM_TEST:]
