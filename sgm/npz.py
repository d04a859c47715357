"""Reading .npz/.npy files safely: every array header is checked against the file's size first.

`np.load` allocates what an array's header claims before it reads a byte of data, so a damaged or
crafted header (a shape of 10^11 rows in a file of a few bytes) asks for terabytes. `oversized`
reads only the headers and names the first array that claims more bytes than the file holds.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np


def _claims(fp) -> int | None:
    """Bytes of data the .npy header at `fp` announces (None for object arrays, which
    `allow_pickle=False` refuses anyway); `fp` is left at the start of the data."""
    major, _ = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fp)
    if dtype.hasobject:
        return None
    return math.prod(shape) * dtype.itemsize


def oversized(path: str | Path) -> str | None:
    """The name of the first array in the .npz or .npy file at `path` whose header claims more
    data than the file holds, or None (also when the file cannot be parsed: `np.load` then raises
    its own error)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as fp:
                        need = _claims(fp)
                        header = fp.tell()
                    if need is not None and need > info.file_size - header:
                        return info.filename.removesuffix(".npy")
            return None
        with path.open("rb") as fp:
            need = _claims(fp)
            header = fp.tell()
        size = path.stat().st_size
        return "array" if need is not None and need > size - header else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
