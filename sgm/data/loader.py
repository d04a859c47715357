"""Deterministic shuffled batches whose whole state is the step number.

Epoch e visits the training set in the order `permutation(seed, e)`, drawn from a generator seeded
with (seed, e); step s is batch `s mod steps_per_epoch` of epoch `s div steps_per_epoch`, the last
incomplete batch of each epoch being dropped. So the batch at any step can be rebuilt from
(seed, step) alone: a run resumed from a checkpoint at step k sees exactly the batches the
uninterrupted run would have seen.

With several processes (multi-host training), every process computes the same global batch and
takes its own contiguous slice of `batch_size / process_count` rows: process p holds rows
[p * b, (p + 1) * b) of the global batch, so the slices partition it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sgm.errors import ConfigError, DataError

Arrays = np.ndarray | Sequence[np.ndarray | None]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Order in which epoch `epoch` visits `n` examples, a permutation seeded by (seed, epoch)."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"Data seed and epoch must be non-negative, got {seed} and {epoch}.")
    return np.random.default_rng([seed, epoch]).permutation(n)


def _length(arrays: Arrays) -> int:
    if isinstance(arrays, np.ndarray):
        return arrays.shape[0]
    lengths = {a.shape[0] for a in arrays if a is not None}
    if len(lengths) != 1:
        raise DataError(
            f"Arrays batched together must share their first dimension, got lengths {lengths}."
        )
    return lengths.pop()


def _take(arrays: Arrays, index: np.ndarray):
    if isinstance(arrays, np.ndarray):
        return arrays[index]
    return tuple(None if a is None else a[index] for a in arrays)


def check_batches(n: int, batch_size: int, process_index: int, process_count: int, *,
                  what: str = "batch_size") -> int:
    """Raises ConfigError unless `n` examples give batches of `batch_size` split over the
    processes; returns the number of whole batches per epoch."""
    if batch_size < 1 or batch_size > n:
        raise ConfigError(f"{what}={batch_size} is invalid: expected 1..{n} (the number of "
                          f"training examples).")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ConfigError(
            f"process_index must be in 0..process_count-1, got {process_index} of {process_count}."
        )
    if batch_size % process_count:
        raise ConfigError(
            f"{what}={batch_size} must be divisible by the number of processes {process_count}."
        )
    return n // batch_size


def _rows(perm, i, batch_size, process_index, process_count):
    local = batch_size // process_count
    start = i * batch_size + process_index * local
    return perm[start : start + local]


def batch_at(
    arrays: Arrays,
    batch_size: int,
    seed: int,
    step: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
):
    """This process's part of the global batch at `step`.

    Arguments:
        arrays: one array or a sequence of arrays (entries may be `None`, passed through) sharing
            their first dimension N.
        batch_size: global batch size, divisible by `process_count`.
        seed: data-order seed (non-negative).
        step: global step, from 0.

    Returns:
        Same structure as `arrays`, each entry holding `batch_size / process_count` rows.
    """
    n = _length(arrays)
    per_epoch = check_batches(n, batch_size, process_index, process_count)
    epoch, i = divmod(step, per_epoch)
    perm = epoch_permutation(n, seed, epoch)
    return _take(arrays, _rows(perm, i, batch_size, process_index, process_count))


class Batches:
    """Endless iterator of `batch_at(arrays, batch_size, seed, step)` for step = start_step, ...

    It keeps the current epoch's permutation, so each step costs one gather of the batch rows.
    `step` is the step of the next batch; checkpoint it, and `Batches(..., start_step=step)`
    continues exactly where this one stopped.
    """

    def __init__(
        self,
        arrays: Arrays,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if start_step < 0:
            raise ConfigError(f"start_step must be non-negative, got {start_step}.")
        self.arrays = arrays if isinstance(arrays, np.ndarray) else tuple(arrays)
        self.n = _length(self.arrays)
        self.batch_size = batch_size
        self.seed = seed
        self.step = start_step
        self.process_index = process_index
        self.process_count = process_count
        self.steps_per_epoch = check_batches(self.n, batch_size, process_index, process_count)
        self._epoch, self._perm = -1, None

    def __iter__(self) -> Batches:
        return self

    def __next__(self):
        epoch, i = divmod(self.step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(self.n, self.seed, epoch)
        rows = _rows(self._perm, i, self.batch_size, self.process_index, self.process_count)
        self.step += 1
        return _take(self.arrays, rows)
