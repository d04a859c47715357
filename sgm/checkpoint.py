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

import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .errors import CheckpointError

_NAME = re.compile(r"^ckpt_(\d{9})\.npz$")
_MANIFEST = "__manifest__"


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
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp_ckpt_", suffix=".npz", dir=directory)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {e.strerror or e}; the previous "
                              f"checkpoint is intact.") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
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
    """The manifest of a checkpoint file (raises CheckpointError if unreadable)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(bytes(f[_MANIFEST]).decode())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found.") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or not an sgm checkpoint ({e}).") from None


def load(path: str | Path, template):
    """Reads a checkpoint into the structure of `template`; returns `(tree, manifest)`.

    Raises CheckpointError naming the first leaf whose path, shape or dtype differs.
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
                values.append(f[f"a{i}"])
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt ({e}).") from None
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
