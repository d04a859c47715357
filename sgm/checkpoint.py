"""Atomic, pickle-free checkpoints of any pytree of arrays.

A checkpoint is one `.npz` file (a zip of `.npy` arrays, read with `allow_pickle=False`) holding the
array leaves of a pytree, plus a JSON manifest with each leaf's path, shape and dtype and free-form
metadata (step, config). Loading never runs code: the structure comes from a template pytree the
caller builds from its config, and every leaf is checked against the manifest, so a file saved for
another model fails with a message naming the first mismatching leaf.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the
final name (atomic on POSIX), so a crash at any moment leaves either the old or the new file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .errors import CheckpointError, CorruptCheckpointError
from .npz import oversized

_NAME = re.compile(r"^ckpt_(\d{9})\.npz$")
_MANIFEST = "__manifest__"
TMP_PREFIX = ".tmp_"  # temporary files of `atomic_open`; a killed writer may leave one behind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_leftovers(directory: str | Path) -> int:
    """Deletes temporary files a killed writer left in `directory`; returns how many.

    Only call it while no other process writes there (main.py holds the work directory's lock).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    stale = [p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _leaves(tree):
    """(path-string, array) pairs of the array leaves of `tree`; PRNG keys as their raw data."""
    arrays = eqx.filter(tree, eqx.is_array)
    flat, _ = jax.tree_util.tree_flatten_with_path(arrays)
    out = []
    for path, leaf in flat:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)  # replicated over processes: any local copy is the value
        out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
    return out


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator:
    """Opens a temporary file beside `path` for writing; renamed onto `path` when the block ends.

    The data is flushed and fsynced first, so `path` holds either its old content or the whole new
    one, whatever happens; on an error the temporary file is removed and the error passes on.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.stem}_", suffix=path.suffix, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # what open() would give (mkstemp's files are 0600)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:  # e.g. `path` is a folder: name it, not the temporary file
            raise type(e)(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Writes text or bytes to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


def tree_digest(tree) -> str:
    """SHA-256 (hex) of a pytree's array leaves (shapes, dtypes and bytes, in order): equal for
    equal weights, so results computed from a model can be cached under it."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array)):
        a = np.asarray(leaf)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save(directory: str | Path, step: int, tree, metadata: dict | None = None, *, keep: int = 2) -> Path:
    """Writes `tree` as `directory/ckpt_<step>.npz` atomically and prunes to the newest `keep`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint folder {directory}: {e.strerror or e}.") from None
    leaves = _leaves(tree)
    manifest = {
        "step": int(step),
        "metadata": metadata or {},
        "leaves": [{"path": p, "shape": list(a.shape), "dtype": str(a.dtype)} for p, a in leaves],
    }
    arrays = {f"a{i}": a for i, (_, a) in enumerate(leaves)}
    arrays[_MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    final = directory / f"ckpt_{int(step):09d}.npz"
    try:
        with atomic_open(final) as f:
            np.savez(f, **arrays)
    except OSError as e:
        last = latest(directory)
        kept = (f"the previous checkpoint, {last.name}, is intact" if last is not None
                else f"no earlier checkpoint is in {directory}")
        raise CheckpointError(f"cannot write checkpoint {final}: {e.strerror or e}; "
                              f"{kept}.") from None
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest first (temporary files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def read_manifest(path: str | Path) -> dict:
    """The manifest of a checkpoint file; raises CheckpointError if unreadable, and
    CorruptCheckpointError if its step is not the one its name (`ckpt_<step>.npz`) says."""
    path = Path(path)
    if (big := oversized(path)) is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: the header of array {big} "
                                     f"claims more data than the file holds.")
    try:
        with np.load(path, allow_pickle=False) as f:
            manifest = json.loads(bytes(f[_MANIFEST]).decode())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found.") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
        raise CorruptCheckpointError(f"checkpoint {path} is unreadable or not an sgm checkpoint "
                                     f"({e}).") from None
    leaves = manifest.get("leaves") if isinstance(manifest, dict) else None
    if not (isinstance(leaves, list) and all(isinstance(x, dict) and isinstance(x.get("path"), str)
                                             and isinstance(x.get("shape"), list)
                                             and isinstance(x.get("dtype"), str) for x in leaves)
            and isinstance(manifest.get("metadata", {}), dict)
            and type(manifest.get("step")) is int and manifest["step"] >= 0):
        raise CorruptCheckpointError(f"checkpoint {path} has a damaged manifest: expected an object "
                                     f"with a non-negative step, a list of leaves (path, shape, "
                                     f"dtype) and a metadata object.")
    named = _NAME.match(path.name)
    if named is not None and int(named.group(1)) != manifest["step"]:  # renamed or copied over
        raise CorruptCheckpointError(f"checkpoint {path} holds step {manifest['step']} by its "
                                     f"manifest, not step {int(named.group(1))} as its name says.")
    return manifest


def load(path: str | Path, template):
    """Reads a checkpoint into the structure of `template`; returns `(tree, manifest)`.

    Raises CheckpointError naming the first leaf whose path, shape or dtype differs, and
    CorruptCheckpointError for a damaged file: an array header claiming more data than the file
    holds, a manifest of the wrong structure, or a floating-point array holding NaN or inf.
    """
    path = Path(path)
    manifest = read_manifest(path)
    expected = _leaves(template)
    stored = manifest["leaves"]
    if len(stored) != len(expected):
        raise CheckpointError(f"checkpoint {path} holds {len(stored)} arrays but the configured model "
                              f"has {len(expected)}: it was saved for a different model or config.")
    values = []
    try:
        with np.load(path, allow_pickle=False) as f:
            for i, ((p, a), s) in enumerate(zip(expected, stored, strict=True)):
                if s["path"] != p or tuple(s["shape"]) != a.shape or s["dtype"] != str(a.dtype):
                    raise CheckpointError(
                        f"checkpoint {path} does not match the configured model at {p}: stored "
                        f"{s['path']} {tuple(s['shape'])} {s['dtype']}, expected {a.shape} {a.dtype}.")
                value = f[f"a{i}"]
                if (not isinstance(value, np.ndarray) or value.shape != a.shape
                        or value.dtype != a.dtype):
                    what = (f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray)
                            else type(value).__name__)
                    raise CorruptCheckpointError(
                        f"checkpoint {path} is corrupt: array {p} holds {what}, but its manifest "
                        f"and the configured model say {a.shape} {a.dtype}.")
                if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
                    raise CorruptCheckpointError(
                        f"checkpoint {path} is damaged: array {p} holds NaN or inf.")
                values.append(value)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt ({e}).") from None
    arrays, static = eqx.partition(template, eqx.is_array)
    flat, treedef = jax.tree_util.tree_flatten(arrays)
    restored = []
    for old, new in zip(flat, values, strict=True):
        if jnp.issubdtype(old.dtype, jax.dtypes.prng_key):
            restored.append(jax.random.wrap_key_data(jnp.asarray(new), impl=jax.random.key_impl(old)))
        else:
            restored.append(jnp.asarray(new))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, restored), static), manifest


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint in `directory`, or None."""
    files = list_checkpoints(directory)
    return files[-1] if files else None


def latest_step(directory: str | Path) -> int | None:
    """The step of the newest checkpoint in `directory` (from its name), or None."""
    last = latest(directory)
    return None if last is None else int(_NAME.match(last.name).group(1))


def lock_workdir(directory: str | Path):
    """Takes the exclusive lock of a work directory; returns the open lock file (keep it open).

    An advisory `flock` on `directory/.lock`: a second process asking for it gets a
    CheckpointError at once instead of interleaving its checkpoints and metrics with the first.
    The kernel drops the lock when its holder exits or dies (SIGKILL and crashes included), so a
    crashed run never leaves it stuck. `flock` is per host: on a shared file system it does not
    exclude a process on another host.
    """
    import fcntl

    path = Path(directory) / ".lock"
    f = open(path, "a+")  # noqa: SIM115 (held open for the life of the run)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise CheckpointError(f"work directory {directory} is in use by {holder}: wait for it to "
                              f"finish, or work in another directory.") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()}\n")
    f.flush()
    return f
