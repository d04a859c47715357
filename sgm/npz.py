"""Reading .npz/.npy files safely: every array header is checked against the file's size first.

`np.load` allocates what an array's header claims before it reads a byte of data, so a damaged or
crafted header (a shape of 10^11 rows in a file of a few bytes) asks for terabytes. `oversized`
reads only the headers and names the first array that claims more bytes than the file holds (or
than a given limit); `load` reads named arrays of an .npz file after that check and turns every
kind of damage (truncated, not a zip, a missing array, an object array) into one ValueError.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

#: what reading a damaged .npz/.npy file can raise, besides ValueError and OSError
DAMAGE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, struct.error,
          NotImplementedError)


def _claims(fp) -> int | None:
    """Bytes of data the .npy header at `fp` announces (None for object arrays, which
    `allow_pickle=False` refuses anyway); `fp` is left at the start of the data."""
    major, _ = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fp)
    if dtype.hasobject:
        return None
    return math.prod(shape) * dtype.itemsize


def oversized(path: str | Path, limit: int | None = None) -> str | None:
    """The name of the first array in the .npz or .npy file at `path` whose header claims more
    data than the file holds (or than `limit` bytes), or None (also when the file cannot be
    parsed: `np.load` then raises its own error)."""
    path = Path(path)
    limit = math.inf if limit is None else limit
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as fp:
                        need = _claims(fp)
                        header = fp.tell()
                    if need is not None and (need > info.file_size - header or need > limit):
                        return info.filename.removesuffix(".npy")
            return None
        with path.open("rb") as fp:
            need = _claims(fp)
            header = fp.tell()
        size = path.stat().st_size
        return "array" if need is not None and (need > size - header or need > limit) else None
    except DAMAGE:
        return None


def load(path: str | Path, names: tuple[str, ...], *, limit: int | None = None
         ) -> dict[str, np.ndarray]:
    """The arrays `names` of the .npz file at `path`, read without pickles after `oversized`.

    Raises FileNotFoundError when there is no file, and ValueError naming the file and what is
    wrong for anything else: an array header claiming more data than the file holds (or more
    than `limit` bytes), a truncated or unreadable file, not an .npz file, a missing array, an
    object array.
    """
    path = Path(path)
    if (big := oversized(path, limit)) is not None:
        raise ValueError(f"{path} is damaged: the header of array {big} claims more data than "
                         f"the file holds" + ("" if limit is None else f" or {limit} bytes"))
    try:
        f = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except DAMAGE as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not an .npz file (it holds one array)")
    with f:
        missing = [n for n in names if n not in f.files]
        if missing:
            raise ValueError(f"{path} has no array {missing[0]!r}")
        try:
            return {n: f[n] for n in names}
        except DAMAGE as e:
            raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
