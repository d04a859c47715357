"""Figures main.py draws: sample grids, 2-D samples beside the data and its density, the model's
2-D density beside the exact one, the reverse process of image samples, training curves.

Every function takes numpy or jax arrays and a `path`, writes one PNG there (creating its parent
folders; the file appears whole or not at all) and returns the path as a `pathlib.Path`. matplotlib
is imported inside the functions, never at module import, and drives an Agg canvas directly: no
pyplot state and no window, on a laptop, a server or under pytest. Plots are written as 256-colour
palette PNGs (they have few colours, so the files are smaller; see `docs/results/defaults.md`),
RGB sample grids in full colour.
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


def figure(width: float, height: float, layout: str = "constrained"):
    """A matplotlib Figure on an Agg canvas, with constrained layout ("compressed" packs panels of
    fixed aspect, such as square 2-D windows, more tightly)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
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


def density_grid(log_prob: LogProb, lim: Limits, n: int) -> np.ndarray:
    """log_prob on an n x n grid over `lim`: `out[i, j]` at (x_j, y_i), x and y from
    `np.linspace` over each axis (row 0 at the bottom, as `imshow(origin="lower")` draws it)."""
    (x0, x1), (y0, y1) = lim
    xx, yy = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    grid = np.stack([xx.ravel(), yy.ravel()], axis=-1)
    return np.asarray(log_prob(grid), dtype=np.float64).reshape(n, n)


def density(ax, log_prob: LogProb | np.ndarray, lim: Limits, n: int, label: str,
            vmax: float | None = None):
    """Heat map of exp(log_prob) on an n x n grid over `lim` (`log_prob` a callable, or its
    `density_grid` already computed); returns the image for a colour bar. `vmax` fixes the top of
    the colour scale (to compare panels)."""
    lp = log_prob if isinstance(log_prob, np.ndarray) else density_grid(log_prob, lim, n)
    (x0, x1), (y0, y1) = lim
    finite = np.isfinite(lp)
    with np.errstate(over="ignore", under="ignore"):
        dens = np.where(finite, np.exp(np.where(finite, lp, 0.0)), 0.0)
    relative = not np.all(np.isfinite(dens))
    if relative:  # an unnormalised log-density too large to exponentiate: relative to its max
        dens = np.where(finite, np.exp(lp - lp[finite].max()), 0.0)
        vmax = None
    im = ax.imshow(dens, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis",
                   interpolation="nearest", vmin=0.0, vmax=vmax)
    ax.set_title(label + (" (relative)" if relative else ""), fontsize=10)
    square(ax, lim)
    return im


def colorbar(fig, im, ax) -> None:
    cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cb.ax.tick_params(labelsize=7)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def tile(images: Float[ArrayLike, "n c h w"], *, nrow: int | None = None, lo: float = 0.0,
         hi: float = 1.0, pad: int = 1) -> np.ndarray:
    """Greyscale or RGB images tiled into one `(H, W, C)` canvas in [0, 1], row by row.

    Arguments:
        images: (N, C, H, W) with C = 1 or 3 (or (N, H, W) greyscale), values in [lo, hi]
            (clipped there; NaN shows as black).
        nrow: images per row (torchvision's `make_grid` convention); default ceil(sqrt(N)).
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
    return canvas


def show_canvas(ax, canvas: np.ndarray) -> None:
    """A `tile` canvas on an axis, pixel for pixel, without axes."""
    if canvas.shape[-1] == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()


def sample_grid(images: Float[ArrayLike, "n c h w"], path: str | os.PathLike, *,
                nrow: int | None = None, title: str | None = None, lo: float = 0.0, hi: float = 1.0,
                pad: int = 1) -> Path:
    """Tiles greyscale or RGB images into one grid picture (`tile`) and writes it to `path` (a
    PNG), with an optional `title`; the other arguments are `tile`'s."""
    canvas = tile(images, nrow=nrow, lo=lo, hi=hi, pad=pad)
    c = canvas.shape[-1]
    zoom = max(1, min(8, 800 // canvas.shape[1]))  # whole pixels per image pixel, ~<= 800 px wide
    width = max(2.0, canvas.shape[1] * zoom / DPI)
    height = canvas.shape[0] * zoom / DPI + (0.35 if title else 0.0)
    fig = figure(width, height)
    ax = fig.add_subplot()
    show_canvas(ax, canvas)
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


def model_density_2d(samples: Float[ArrayLike, "n 2"], path: str | os.PathLike, *,
                     model_log_prob: LogProb | np.ndarray, log_prob: LogProb | None = None,
                     lim=None, n: int = 64, title: str | None = None) -> Path:
    """2-D samples beside the model's density and the exact one (each with its colour bar).

    Arguments:
        samples: (N, 2) points (they also set the window when `lim` is None).
        path: where to write the PNG.
        model_log_prob: the model's log-density, a callable (K, 2) -> (K,) or its `density_grid`
            on the n x n grid over `lim` (main.py's comes from the probability-flow ODE).
        log_prob: the exact log-density, if known.
        lim, n: the window (as `scatter_2d`'s) and grid points per axis.
        title: figure title (main.py puts the paired NLL gap there).
    """
    samples = points(samples, "samples")
    lim = limits(lim, samples)
    model = (model_log_prob if isinstance(model_log_prob, np.ndarray)
             else density_grid(model_log_prob, lim, n))
    exact = None if log_prob is None else density_grid(log_prob, lim, n)
    panels = 2 + (exact is not None)
    fig = figure(3.4 + 4.0 * (panels - 1), 3.6 + 0.25 * (title or "").count("\n"), "compressed")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    scatter(axes[0], samples, lim, f"samples ({len(samples)})")
    # each density on its own colour scale: a poor model's shape stays visible beside the truth
    colorbar(fig, density(axes[1], model, lim, n, "model density"), axes[1])
    if exact is not None:
        colorbar(fig, density(axes[2], exact, lim, n, "exact density"), axes[2])
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def pick_frames(levels: ArrayLike, k: int = 8) -> np.ndarray:
    """Indices of `k` entries of a monotone sequence `levels` (e.g. the log-SNR along a sampler's
    path) as evenly spaced in value as it allows, first and last included."""
    lv = np.asarray(levels, dtype=np.float64)
    if lv.ndim != 1 or len(lv) == 0:
        raise ValueError(f"levels must be a non-empty 1-D sequence, got shape {lv.shape}")
    k = min(k, len(lv))
    finite = np.isfinite(lv)  # a path ending on x_0 at t = 0 has an infinite log-SNR there
    if not finite.any():
        return np.linspace(0, len(lv) - 1, k).round().astype(int)
    ends = lv[finite][[0, -1]]
    idx = np.empty(k, dtype=int)
    for i, v in enumerate(np.linspace(ends[0], ends[1], k)):
        gap = np.where(finite, np.abs(np.where(finite, lv, 0.0) - v), np.inf)
        idx[i] = int(np.argmin(gap))
    for i in range(1, k):  # where the sequence is coarse two targets fall on one entry: spread
        idx[i] = max(idx[i], idx[i - 1] + 1)
    idx[-1] = len(lv) - 1
    for i in range(k - 2, -1, -1):
        idx[i] = min(idx[i], idx[i + 1] - 1)
    return idx


def reverse_process(frames: Float[ArrayLike, "t n c h w"], times: Sequence[float],
                    path: str | os.PathLike, *, lo: float = 0.0, hi: float = 1.0,
                    conditions: Sequence[str] | np.ndarray | None = None,
                    title: str | None = None) -> Path:
    """Samples on their way from the prior to the data: one row per sample, one column per time.

    Arguments:
        frames: (T, N, C, H, W) states x_t of N samples at T times (C = 1 or 3), values in [lo, hi]
            (clipped).
        times: the T times, printed over the columns.
        path: where to write the PNG.
        lo, hi: the value range mapped to black..white.
        conditions: what each sample was conditioned on: N strings (labels, parameters), drawn to
            the left of the rows, or N conditioning images (N, C', H, W) drawn as a first column.
        title: figure title.
    """
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 5 or x.shape[2] not in (1, 3) or len(times) != x.shape[0]:
        raise ValueError("frames must have shape (T, N, C, H, W) with C = 1 or 3 and one time per "
                         f"frame, got {x.shape} and {len(times)} times")
    if not hi > lo:
        raise ValueError(f"reverse_process needs hi > lo, got lo={lo}, hi={hi}")
    x = np.clip(np.nan_to_num((x - lo) / (hi - lo), nan=0.0), 0.0, 1.0)
    steps, n = x.shape[:2]
    images = conditions is not None and np.ndim(conditions) == 4
    cols = steps + images
    cell = 0.95 if x.shape[-1] <= 16 else 1.2
    fig = figure(cell * cols + (0.7 if conditions is not None and not images else 0.2),
                 cell * n + 0.35 + (0.35 if title else 0.0))
    axes = fig.subplots(n, cols, squeeze=False)
    for r in range(n):
        if images:
            c = np.asarray(conditions[r], dtype=np.float64)
            c = (c - c.min()) / max(c.max() - c.min(), 1e-12)
            _show(axes[r, 0], c)
            if r == 0:
                axes[r, 0].set_title("condition", fontsize=8)
        for j in range(steps):
            ax = axes[r, j + images]
            _show(ax, x[j, r])
            if r == 0:
                ax.set_title(f"t = {float(times[j]):.3g}", fontsize=8)
        if conditions is not None and not images:
            axes[r, 0].set_ylabel(str(conditions[r]), fontsize=8, rotation=0, ha="right",
                                  va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, palette=x.shape[2] == 1)


def _show(ax, img: np.ndarray) -> None:
    """One (C, H, W) image in [0, 1] on an axis without ticks (a y label stays possible)."""
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img[:3].transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------

#: a panel's title by the metric it shows (a metric's name less an "eval_"/"test_" prefix)
PANEL_TITLES = {"loss": "loss", "lr": "learning rate", "steps_per_s": "steps / s",
                "nll": "NLL (nats)", "bpd": "bits / dim", "skipped": "skipped steps"}
#: where a series comes from, by prefix: (legend label, matplotlib style)
SOURCES = {"": ("train", {"lw": 1.0}),
           "eval_": ("held-out", {"lw": 1.0, "marker": "o", "ms": 4, "color": "C1"}),
           "test_": ("test", {"lw": 0, "marker": "*", "ms": 10, "color": "C3"})}


def _numeric(v) -> bool:
    if isinstance(v, bool | np.bool_):
        return False
    if isinstance(v, numbers.Real):
        return True
    return np.ndim(v) == 0 and np.asarray(v).dtype.kind in "iuf"


def curve_panels(metrics: Sequence[Mapping[str, object]]
                 ) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """The panels `training_curves` draws: {quantity: {prefix: (steps, values)}}, prefix "" for
    the training series, "eval_" and "test_" for held-out ones; constant panels left out (unless
    all are). Raises ValueError when the records hold no numeric metric."""
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for i, rec in enumerate(metrics):
        step = float(rec.get("step", i))
        for key, v in rec.items():
            if key != "step" and _numeric(v) and math.isfinite(float(v)):
                prefix = next((p for p in ("eval_", "test_") if key.startswith(p) and key != p), "")
                xs, ys = panels.setdefault(key[len(prefix):], {}).setdefault(prefix, ([], []))
                xs.append(step)
                ys.append(float(v))
    if not panels:
        raise ValueError("training_curves found no numeric metric besides 'step' in the records")
    varying = {k: p for k, p in panels.items() if any(np.ptp(ys) > 0 for _, ys in p.values())}
    return varying or panels


def log_axis(name: str, values: Sequence[float]) -> bool:
    """Whether a training-curve panel gets a log scale: losses spanning over a factor 3 and a
    steps/s spanning over a decade (a narrower log axis shows one tick label or none)."""
    span = 3.0 if "loss" in name else 10.0 if name == "steps_per_s" else None
    low, high = min(values), max(values)
    return span is not None and low > 0 and high > span * low


def training_curves(metrics: Sequence[Mapping[str, object]], path: str | os.PathLike, *,
                    title: str | None = None, objective: str | None = None) -> Path:
    """Metrics against "step", one panel per quantity, training and held-out series together.

    "loss" and "eval_loss" share a panel (the training series as a line, the held-out one as
    points joined by lines), as do "eval_nll" and "test_nll", and so on; a panel whose series are
    all constant (a single point included: "skipped" = 0, a one-off held-out value) is left out,
    unless every panel is. Log scales as `log_axis` decides.

    Arguments:
        metrics: a list of records, each with "step" and any numeric metrics ("loss", "lr",
            "eval_loss", "eval_nll", ...); a metric may be missing from some records (evaluated less
            often); non-numeric and non-finite values are ignored.
        path: where to write the PNG.
        title: figure title.
        objective: what the loss panel's series estimate (e.g. "likelihood weighting,
            importance-sampled t"), in its title.
    """
    panels = curve_panels(metrics)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = figure(3.7 * ncols, 2.8 * nrows + (0.3 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, series) in zip(axes, panels.items()):
        values = []
        for prefix, (label, style) in SOURCES.items():
            if prefix in series:
                xs, ys = series[prefix]
                ax.plot(xs, ys, label=label, **style)
                values += ys
        if log_axis(name, values):
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False, scilimits=(-3, 4))
        if len(series) > 1:
            ax.legend(fontsize=8, frameon=False)
        head = PANEL_TITLES.get(name, name)
        ax.set_title(f"{head} ({objective})" if name == "loss" and objective else head, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save(fig, path)
