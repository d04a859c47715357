"""Figures: sample grids, 2-D scatters and densities, SDE trajectories, training curves.

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

#: resolution of every figure (pixels per inch)
DPI = 100

LogProb = Callable[[np.ndarray], np.ndarray]
Limits = tuple[tuple[float, float], tuple[float, float]]


# --------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike, *, palette: bool = True) -> Path:
    """Writes `fig` to `path` through a temporary file in the same folder, then renames it.

    A PNG (".png" or no suffix) goes through a 256-colour palette when `palette` (plots; not
    colour photographs, which would band); other suffixes matplotlib knows (pdf, svg, ...) are
    saved as they are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = path.suffix[1:].lower() or "png"
    try:
        if fmt == "png":
            from PIL import Image

            fig.canvas.draw()
            rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            img = Image.fromarray(np.ascontiguousarray(rgb))
            if palette:
                img = img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            img.save(tmp, format="PNG", optimize=True)
        else:
            fig.savefig(tmp, dpi=DPI, format=fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _limits(lim, *arrays: np.ndarray) -> Limits:
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


def _points(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must be 2-D points of shape (N, 2), got shape {x.shape}")
    return x


def _scatter(ax, pts: np.ndarray, lim: Limits, label: str, color: str = "C0") -> None:
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
    _square(ax, lim)


def _square(ax, lim: Limits) -> None:
    ax.set_xlim(*lim[0])
    ax.set_ylim(*lim[1])
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=8)


def _density(ax, log_prob: LogProb, lim: Limits, n: int, label: str):
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
    _square(ax, lim)
    return im


def _colorbar(fig, im, ax) -> None:
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
    fig = _figure(width, height)
    ax = fig.add_subplot()
    if c == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path, palette=c == 1)


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
    samples = _points(samples, "samples")
    ref = None if reference is None else _points(reference, "reference")
    lim = _limits(lim, *([ref] if ref is not None else [samples]))
    panels = 1 + (ref is not None) + (log_prob is not None)
    fig = _figure(3.4 * panels + (0.5 if log_prob is not None else 0.0), 3.6)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    i = 0
    if ref is not None:
        _scatter(axes[i], ref, lim, f"data ({len(ref)})", color="0.3")
        i += 1
    _scatter(axes[i], samples, lim, f"samples ({len(samples)})")
    if log_prob is not None:
        im = _density(axes[i + 1], log_prob, lim, n, "density")
        _colorbar(fig, im, axes[i + 1])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def density_2d(log_prob: LogProb, path: str | os.PathLike, *, lim, n: int = 200,
               title: str | None = None) -> Path:
    """Heat map of a 2-D density exp(log_prob(x)) on an n x n grid.

    Arguments:
        log_prob: callable (K, 2) -> (K,) log-densities (-inf allowed outside the support).
        path: where to write the PNG.
        lim: the window, as in `scatter_2d`.
        n: grid points per axis.
        title: panel title.
    """
    lim = _limits(lim)
    fig = _figure(4.4, 3.8)
    ax = fig.add_subplot()
    im = _density(ax, log_prob, lim, n, title or "density")
    _colorbar(fig, im, ax)
    return _save(fig, path)


def scatter_grid(panels: Mapping[str, object], path: str | os.PathLike, *, ncols: int | None = None,
                 lim=None, n: int = 150, title: str | None = None) -> Path:
    """A grid of 2-D panels sharing one window: scatters, density heat maps and blanks.

    Arguments:
        panels: title -> (N, 2) points (a scatter), a log-density callable (K, 2) -> (K,) (a heat
            map), or None (an empty cell), filled row by row.
        path: where to write the PNG.
        ncols: panels per row (default: all in one row, at most 5).
        lim: the shared window, as in `scatter_2d`; default from all the point sets.
        n: grid points per axis of each heat map.
        title: figure title.
    """
    if not panels:
        raise ValueError("scatter_grid needs at least one panel")
    items = [(k, v if v is None or callable(v) else _points(v, f"panel {k!r}"))
             for k, v in panels.items()]
    ncols = ncols or min(len(items), 5)
    nrows = math.ceil(len(items) / ncols)
    arrays = [v for _, v in items if isinstance(v, np.ndarray)]
    if lim is None and not arrays:
        raise ValueError("scatter_grid with only density panels needs lim")
    lim = _limits(lim, *arrays)
    fig = _figure(2.6 * ncols, 2.7 * nrows + (0.3 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (label, v) in zip(axes, items):
        if v is None:
            ax.set_axis_off()
        elif callable(v):
            _colorbar(fig, _density(ax, v, lim, n, label), ax)
        else:
            _scatter(ax, v, lim, label)
    for ax in axes[len(items):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


class _Identity:
    """The transform of a linear axis, with the two methods `sde_paths` uses."""

    def transform(self, v):
        return np.asarray(v, dtype=np.float64)

    def inverted(self):
        return self


_LINSCALE = 1.5  # visual size of the symlog axis' linear part, in decades (room for the data end)


def _spread(v: np.ndarray) -> float:
    v = np.abs(v[np.isfinite(v)])
    return float(np.percentile(v, 99)) if v.size else 0.0


def _nice_ceil(v: float) -> float:
    """v rounded up to one significant digit (2.13 -> 3, 0.41 -> 0.5)."""
    p = 10.0 ** math.floor(math.log10(v))
    return math.ceil(v / p) * p


def _symlog_ticks(thresh: float, top: float) -> list[float]:
    """0, +-thresh and the powers of ten beyond it (at least 2.5x apart) up to `top`."""
    ticks = [thresh]
    k = math.ceil(math.log10(2.5 * thresh))
    while 10**k <= top * 1.05:
        ticks.append(float(10**k))
        k += 1
    return sorted([-v for v in ticks] + [0.0] + ticks)


def _path_panel(fig, cell, name, ts, xs, ends, *, max_lines, bins, yscale):
    """Trajectories in the middle of a 1 x 3 cell, histograms of both ends on either side."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.scale import SymmetricalLogTransform
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    h0 = fig.add_subplot(cell[0])
    ax = fig.add_subplot(cell[1], sharey=h0)
    h1 = fig.add_subplot(cell[2], sharey=h0)

    # y axis: linear, or symlog when one end is > 10x wider than the other (VE: 0.01 -> 50)
    narrow, wide = sorted((_spread(xs[0]), _spread(xs[-1])))
    finite = xs[np.isfinite(xs)]
    ylo, yhi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    if yscale == "symlog" or (yscale == "auto" and narrow > 0 and wide > 10 * narrow):
        thresh = _nice_ceil(narrow if narrow > 0 else max(wide, 1.0))
        h0.set_yscale("symlog", linthresh=thresh, linscale=_LINSCALE)
        h0.yaxis.set_major_locator(FixedLocator(_symlog_ticks(thresh, max(-ylo, yhi))))
        h0.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        h0.yaxis.set_minor_locator(NullLocator())
        to = SymmetricalLogTransform(10, thresh, _LINSCALE)
    else:
        to = _Identity()
    # histogram bins of equal size on the drawn axis, with 5% room above and below
    a, b = to.transform(np.array([ylo, yhi]))
    pad = 0.05 * max(b - a, 1e-6)
    u_edges = np.linspace(a - pad, b + pad, bins + 1)
    edges = to.inverted().transform(u_edges)
    h0.set_ylim(edges[0], edges[-1])

    # trajectories (at most ~250 times each), coloured by where they are at the earliest time
    stride = max(1, len(ts) // 250)
    keep = np.unique(np.append(np.arange(0, len(ts), stride), len(ts) - 1))
    data_end = xs[np.argmin(ts), :max_lines]
    lo, hi = np.nanpercentile(data_end, [2, 98])
    cmap, norm = colormaps["coolwarm"], Normalize(lo, hi if hi > lo else lo + 1.0)
    for j in range(data_end.size):
        ax.plot(ts[keep], xs[keep, j], lw=0.6, alpha=0.7, color=cmap(norm(data_end[j])))
    ax.set_xlim(ts[0], ts[-1])
    ax.set_xlabel("t", fontsize=9)
    ax.set_title(name, fontsize=10)
    ax.tick_params(labelleft=False, labelsize=8)
    ax.grid(alpha=0.25)

    # every path's value at both ends, as densities per unit of the drawn axis (so a symlog axis
    # keeps equal-looking bins), with the exact marginal p(y) |dy/du| where given
    u = np.linspace(u_edges[0], u_edges[-1], 600)
    y = to.inverted().transform(u)
    for hax, vals, logp, when in ((h0, xs[0], ends[0], ts[0]), (h1, xs[-1], ends[1], ts[-1])):
        vals = vals[np.isfinite(vals)]
        counts, _ = np.histogram(vals, bins=edges)
        hax.stairs(counts / max(vals.size, 1) / np.diff(u_edges), edges,
                   orientation="horizontal", fill=True, color="0.65")
        if logp is not None:
            dens = np.exp(np.asarray(logp(y), dtype=np.float64)) * np.gradient(y, u)
            hax.plot(dens, y, color="k", lw=1.0)
        hax.set_xticks([])
        hax.set_xlabel(f"t={when:.3g}", fontsize=8)
        hax.set_xlim(left=0)
    h0.invert_xaxis()  # bars grow away from the trajectories
    h0.tick_params(labelsize=8)
    h1.tick_params(labelleft=False)


def sde_paths(paths: Mapping[str, tuple[object, object]], path: str | os.PathLike, *,
              marginals: Mapping[str, Sequence[Callable | None]] | None = None,
              ncols: int | None = None, max_lines: int = 32, bins: int = 50,
              yscale: str = "auto", title: str | None = None) -> Path:
    """Trajectories x(t) of 1-D SDE paths, one panel each, with histograms at both ends.

    The time axis runs in the order of `ts` (so reverse-time paths read left to right from t1 to
    t0); lines are coloured by their position at the earliest time (the data end). A histogram of
    all N paths sits on each side, and `marginals` can overlay the exact densities there (on a
    symlog axis both are densities per unit of the drawn axis, so their shapes stay comparable).

    Arguments:
        paths: name -> (ts (T,), xs (T, N) or (T, N, 1)).
        path: where to write the PNG.
        marginals: name -> (log p at ts[0], log p at ts[-1]), callables (K,) -> (K,) or None.
        ncols: panels per row (default min(3, number of paths)).
        max_lines: trajectories drawn per panel (the histograms use them all).
        bins: histogram bins.
        yscale: "linear", "symlog", or "auto" (symlog when the two ends differ in spread by > 10x,
            as for the variance-exploding SDE).
        title: figure title.
    """
    if not paths:
        raise ValueError("sde_paths needs at least one path")
    if yscale not in ("auto", "linear", "symlog"):
        raise ValueError(f"yscale must be 'auto', 'linear' or 'symlog', got {yscale!r}")
    marginals = marginals or {}
    ncols = ncols or min(3, len(paths))
    nrows = math.ceil(len(paths) / ncols)
    fig = _figure(4.6 * ncols, 3.0 * nrows + (0.3 if title else 0.0))
    outer = fig.add_gridspec(nrows, ncols)
    for k, (name, (ts, xs)) in enumerate(paths.items()):
        ts, xs = np.asarray(ts, dtype=np.float64), np.asarray(xs, dtype=np.float64)
        if xs.ndim == 3 and xs.shape[-1] == 1:
            xs = xs[..., 0]
        if ts.ndim != 1 or xs.ndim != 2 or xs.shape[0] != ts.shape[0] or xs.shape[1] == 0:
            raise ValueError(f"paths[{name!r}] must be (ts (T,), xs (T, N)) with N >= 1, "
                             f"got shapes {ts.shape} and {xs.shape}")
        cell = outer[k // ncols, k % ncols].subgridspec(1, 3, width_ratios=(1, 4, 1), wspace=0.0)
        _path_panel(fig, cell, name, ts, xs, marginals.get(name, (None, None)),
                    max_lines=max_lines, bins=bins, yscale=yscale)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


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
    fig = _figure(3.6 * ncols, 2.7 * nrows + (0.3 if title else 0.0))
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
    return _save(fig, path)


def likelihood_curve(curves: Mapping[str, tuple[object, object]], path: str | os.PathLike, *,
                     reference: float | Mapping[str, float] | None = None, xlabel: str = "NFE",
                     ylabel: str = "NLL (nats)", logx: bool = True,
                     title: str | None = None) -> Path:
    """Lines y(x), e.g. NLL against score evaluations or tolerance, with reference levels.

    Arguments:
        curves: label -> (x (K,), y (K,)).
        path: where to write the PNG.
        reference: a horizontal line (e.g. the true entropy, which no model beats on held-out
            data), or label -> level for several.
        xlabel, ylabel: axis labels.
        logx: logarithmic x axis.
        title: panel title.
    """
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot()
    levels = []
    for label, (x, y) in curves.items():
        y = np.asarray(y, dtype=np.float64)
        ax.plot(np.asarray(x, dtype=np.float64), y, marker="o", ms=3, lw=1.0, label=label)
        levels.extend(y[np.isfinite(y)])
    if reference is not None:
        refs = reference if isinstance(reference, Mapping) else {"reference": reference}
        for j, (label, level) in enumerate(refs.items()):
            ax.axhline(float(level), color="k", lw=0.8, ls=("--", ":", "-.")[j % 3], label=label)
            levels.append(float(level))
    if levels:  # axhline does not widen the y range: keep every reference level in view
        lo, hi = min(levels), max(levels)
        pad = 0.06 * (hi - lo) if hi > lo else 0.5 * max(abs(lo), 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if curves or reference is not None:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
