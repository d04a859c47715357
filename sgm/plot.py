"""Figures main.py draws: sample grids, 2-D samples beside the data and its density, training curves.

Every function takes numpy or jax arrays and a `path`, writes one PNG there (creating its parent
folders; the file appears whole or not at all) and returns the path as a `pathlib.Path`. matplotlib
is imported inside the functions, never at module import, and drives an Agg canvas directly: no
pyplot state and no window, on a laptop, a server or under pytest. Plots are written as 256-colour
palette PNGs (they have few colours; the files are 2-3x smaller), RGB sample grids in full colour.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike, Float

from .checkpoint import atomic_open

#: resolution of every figure (pixels per inch)
DPI = 100

LogProb = Callable[[np.ndarray], np.ndarray]
Limits = tuple[tuple[float, float], tuple[float, float]]


# --------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------


def figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: str | os.PathLike, *, palette: bool = True) -> Path:
    """Writes `fig` to `path` through a temporary file in the same folder, then renames it.

    A PNG (".png" or no suffix) goes through a 256-colour palette when `palette` (plots; not
    colour photographs, which would band); other suffixes matplotlib knows (pdf, svg, ...) are
    saved as they are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_open(path) as f:
        if fmt == "png":
            from PIL import Image

            fig.canvas.draw()
            rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            img = Image.fromarray(np.ascontiguousarray(rgb))
            if palette:
                img = img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            img.save(f, format="PNG", optimize=True)
        else:
            fig.savefig(f, dpi=DPI, format=fmt)
    return path


def limits(lim, *arrays: np.ndarray) -> Limits:
    """((xlo, xhi), (ylo, yhi)) from `lim` (L: [-L, L]^2; (lo, hi): both axes; or per axis), or
    from the 0.5-99.5 percentiles of the given point sets, padded by 10%."""
    if lim is not None:
        a = np.asarray(lim, dtype=np.float64)
        if a.shape == ():
            return (-float(a), float(a)), (-float(a), float(a))
        if a.shape == (2,):
            return (float(a[0]), float(a[1])), (float(a[0]), float(a[1]))
        if a.shape == (2, 2):
            return (float(a[0, 0]), float(a[0, 1])), (float(a[1, 0]), float(a[1, 1]))
        raise ValueError("lim must be a number L, a pair (lo, hi) or ((xlo, xhi), (ylo, yhi)); "
                         f"got {lim!r}")
    pts = np.concatenate([a[np.all(np.isfinite(a), axis=1)] for a in arrays])
    if len(pts) == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-6)
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def points(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must be 2-D points of shape (N, 2), got shape {x.shape}")
    return x


def scatter(ax, pts: np.ndarray, lim: Limits, label: str, color: str = "C0") -> None:
    """Scatter of (N, 2) points in a square-aspect panel; notes points that fall outside."""
    finite = np.all(np.isfinite(pts), axis=1)
    (x0, x1), (y0, y1) = lim
    shown = pts[finite]
    inside = (shown[:, 0] >= x0) & (shown[:, 0] <= x1) & (shown[:, 1] >= y0) & (shown[:, 1] <= y1)
    size = float(np.clip(3000.0 / max(len(pts), 1), 0.5, 8.0))
    ax.scatter(shown[:, 0], shown[:, 1], s=size, c=color, alpha=0.6, linewidths=0)
    notes = []
    if (~inside).any():
        notes.append(f"{int((~inside).sum())} outside")
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} non-finite")
    ax.set_title(label + (f"\n({', '.join(notes)})" if notes else ""), fontsize=10)
    square(ax, lim)


def square(ax, lim: Limits) -> None:
    ax.set_xlim(*lim[0])
    ax.set_ylim(*lim[1])
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=8)


def density(ax, log_prob: LogProb, lim: Limits, n: int, label: str):
    """Heat map of exp(log_prob) on an n x n grid over `lim`; returns the image for a colour bar."""
    (x0, x1), (y0, y1) = lim
    xx, yy = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    grid = np.stack([xx.ravel(), yy.ravel()], axis=-1)
    lp = np.asarray(log_prob(grid), dtype=np.float64).reshape(n, n)
    finite = np.isfinite(lp)
    with np.errstate(over="ignore", under="ignore"):
        dens = np.where(finite, np.exp(np.where(finite, lp, 0.0)), 0.0)
    relative = not np.all(np.isfinite(dens))
    if relative:  # an unnormalised log-density too large to exponentiate: relative to its max
        dens = np.where(finite, np.exp(lp - lp[finite].max()), 0.0)
    im = ax.imshow(dens, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis",
                   interpolation="nearest", vmin=0.0)
    ax.set_title(label + (" (relative)" if relative else ""), fontsize=10)
    square(ax, lim)
    return im


def colorbar(fig, im, ax) -> None:
    cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cb.ax.tick_params(labelsize=7)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def sample_grid(images: Float[ArrayLike, "n c h w"], path: str | os.PathLike, *,
                nrow: int | None = None, title: str | None = None, lo: float = 0.0, hi: float = 1.0,
                pad: int = 1) -> Path:
    """Tiles greyscale or RGB images into one grid picture.

    Arguments:
        images: (N, C, H, W) with C = 1 or 3 (or (N, H, W) greyscale), values in [lo, hi]
            (clipped there; NaN shows as black).
        path: where to write the PNG.
        nrow: images per row (torchvision's `make_grid` convention); default ceil(sqrt(N)).
        title: figure title.
        lo, hi: the value range mapped to black..white.
        pad: white pixels between images.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError("images must have shape (N, C, H, W) with N >= 1 and C = 1 or 3, "
                         f"got {x.shape}")
    if not hi > lo:
        raise ValueError(f"sample_grid needs hi > lo, got lo={lo}, hi={hi}")
    x = np.clip(np.nan_to_num((x - lo) / (hi - lo), nan=0.0), 0.0, 1.0)
    n, c, h, w = x.shape
    ncol = max(1, min(n, nrow if nrow is not None else math.ceil(math.sqrt(n))))
    rows = math.ceil(n / ncol)
    canvas = np.ones((pad + rows * (h + pad), pad + ncol * (w + pad), c))
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)

    zoom = max(1, min(8, 800 // canvas.shape[1]))  # whole pixels per image pixel, ~<= 800 px wide
    width = max(2.0, canvas.shape[1] * zoom / DPI)
    height = canvas.shape[0] * zoom / DPI + (0.35 if title else 0.0)
    fig = figure(width, height)
    ax = fig.add_subplot()
    if c == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path, palette=c == 1)


def scatter_2d(samples: Float[ArrayLike, "n 2"], path: str | os.PathLike, *,
               reference: Float[ArrayLike, "m 2"] | None = None, log_prob: LogProb | None = None,
               lim=None, n: int = 200, title: str | None = None) -> Path:
    """Scatter of 2-D samples, beside the reference data and the density exp(log_prob).

    Arguments:
        samples: (N, 2) points.
        path: where to write the PNG.
        reference: optional (M, 2) data points, drawn in their own panel first.
        log_prob: optional callable (K, 2) -> (K,) (a numpy or jax function) whose exp is drawn as a
            heat map on an n x n grid.
        lim: a number L for [-L, L]^2, a pair (lo, hi) for both axes, or ((xlo, xhi), (ylo, yhi));
            default from the reference data (else the samples). Every panel shares it.
        n: grid points per axis for the density.
        title: figure title.
    """
    samples = points(samples, "samples")
    ref = None if reference is None else points(reference, "reference")
    lim = limits(lim, *([ref] if ref is not None else [samples]))
    panels = 1 + (ref is not None) + (log_prob is not None)
    fig = figure(3.4 * panels + (0.5 if log_prob is not None else 0.0), 3.6)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    i = 0
    if ref is not None:
        scatter(axes[i], ref, lim, f"data ({len(ref)})", color="0.3")
        i += 1
    scatter(axes[i], samples, lim, f"samples ({len(samples)})")
    if log_prob is not None:
        im = density(axes[i + 1], log_prob, lim, n, "density")
        colorbar(fig, im, axes[i + 1])
    if title:
        fig.suptitle(title)
    return save(fig, path)




def _numeric(v) -> bool:
    if isinstance(v, bool | np.bool_):
        return False
    if isinstance(v, numbers.Real):
        return True
    return np.ndim(v) == 0 and np.asarray(v).dtype.kind in "iuf"


def training_curves(metrics: Sequence[Mapping[str, object]], path: str | os.PathLike, *,
                    title: str | None = None) -> Path:
    """One panel per numeric metric against "step"; log-scale y for losses (names with "loss").

    Arguments:
        metrics: a list of records, each with "step" and any numeric metrics ("loss", "eval_loss",
            "eval_nll", "bpd", ...); a metric may be missing from some records (evaluated less
            often); non-numeric values are ignored.
        path: where to write the PNG.
        title: figure title.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, rec in enumerate(metrics):
        step = float(rec.get("step", i))
        for key, v in rec.items():
            if key != "step" and _numeric(v) and math.isfinite(float(v)):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(float(v))
    if not series:
        raise ValueError("training_curves found no numeric metric besides 'step' in the records")
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = figure(3.6 * ncols, 2.7 * nrows + (0.3 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (key, (xs, ys)) in zip(axes, series.items()):
        ax.plot(xs, ys, lw=1.0, marker="o" if len(xs) <= 30 else None, ms=3)
        if "loss" in key and min(ys) > 0:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(series):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save(fig, path)
