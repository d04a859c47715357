"""Any folder of images (Flowers or anything else), read with Pillow, and image resizing.

Images in class subfolders get the subfolder's index (sorted names) as their label. Every image is
converted to 8-bit grey ("L") or colour ("RGB"), optionally resized so its shorter side has a
given size and centre-cropped to a square, and returned as uint8 `(N, C, H, W)`. Unreadable files,
modes without a lossless 8-bit conversion and, without a target size, images of different sizes
raise `DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgm.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# 8-bit modes Pillow converts to L or RGB without having to choose a scaling
_CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "La"})


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _image_files(directory: Path) -> list[Path]:
    """Image files anywhere under `directory`, skipping hidden files and folders, sorted."""
    return sorted(
        p
        for p in directory.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def resize_crop(image, size: int):
    """Resize a PIL image so its shorter side is `size`, then crop the central size x size square.

    Large reductions halve with a box filter first, then a bicubic resize finishes (as in
    Dhariwal & Nichol's guided-diffusion), which avoids aliasing.
    """
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    new = tuple(max(size, round(s * scale)) for s in image.size)
    if new != image.size:
        image = image.resize(new, resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image_folder(
    root: str | Path, *, size: int | None = None, mode: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Every image under `root`, as uint8 `(N, C, H, W)`, with labels from class subfolders.

    Arguments:
        root: a folder of images, or of class subfolders of images (searched recursively).
        size: resize the shorter side to `size` and centre-crop to size x size; `None` keeps the
            images as they are, which requires them all to have one size.
        mode: "RGB" (C = 3) or "L" (C = 1); `None` picks "L" when every image is grey, else "RGB".

    Returns:
        `(images, labels, classes)`: labels int32 `(N,)` (index into the sorted subfolder names
        `classes`) when the images sit in subfolders, else `None` and `()`.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist: expected a folder of images.")
    if mode not in (None, "RGB", "L"):
        raise DataError(f"Image mode {mode!r} is not supported: expected 'RGB', 'L' or None.")
    top = sorted(p for p in root.iterdir() if _is_image(p) and not p.name.startswith("."))
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [(d.name, _image_files(d)) for d in subdirs]
    per_class = [(name, files) for name, files in per_class if files]
    if top and per_class:
        raise DataError(
            f"{root} holds both images and class subfolders: expected one or the other."
        )
    if per_class:
        classes = tuple(name for name, _ in per_class)
        files = [f for _, fs in per_class for f in fs]
        labels = np.concatenate(
            [np.full(len(fs), i, dtype=np.int32) for i, (_, fs) in enumerate(per_class)]
        )
    else:
        classes, files, labels = (), top, None
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"No image files ({exts}) found in {root}.")

    def open_image(path: Path):
        try:
            image = Image.open(path)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"Cannot read image {path}: {e}.") from e
        if image.mode not in _CONVERTIBLE_MODES:
            raise DataError(
                f"Image {path} has mode {image.mode}, which has no lossless 8-bit conversion: "
                "expected an 8-bit grey, palette or colour image."
            )
        return image

    # First pass reads headers only: the modes pick the channels, the sizes must agree.
    sizes, grey = {}, True
    for path in files:
        with open_image(path) as image:
            sizes.setdefault(image.size, path)
            grey &= image.mode in _GREY_MODES
    mode = mode or ("L" if grey else "RGB")
    if size is None and len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DataError(
            f"Images in {root} have different sizes ({p1} is {s1[0]}x{s1[1]}, {p2} is "
            f"{s2[0]}x{s2[1]}): pass an image size to resize and crop them to."
        )
    width, height = (size, size) if size is not None else next(iter(sizes))
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(files):
        with open_image(path) as image:
            try:
                image = image.convert(mode)
                if size is not None:
                    image = resize_crop(image, size)
                pixels = np.asarray(image, dtype=np.uint8)
            except (OSError, ValueError) as e:
                raise DataError(f"Cannot decode image {path}: {e}.") from e
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out, labels, classes


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Resize-and-centre-crop uint8 images `(N, C, H, W)` (C = 1 or 3) to `(N, C, size, size)`."""
    from PIL import Image

    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if c not in (1, 3):
        raise DataError(f"Cannot resize images with {c} channels: expected 1 or 3.")
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        image = Image.fromarray(x[i, 0] if c == 1 else x[i].transpose(1, 2, 0))
        pixels = np.asarray(resize_crop(image, size), dtype=np.uint8)
        out[i] = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
    return out
