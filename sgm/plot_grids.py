"""Multi-panel figures: grids of 2-D panels (`scatter_grid`) and 1-D SDE trajectories with the
marginals at both ends (`sde_paths`), as bench/figures.py draws them for figs/.

Built on the plumbing of `sgm.plot` (an Agg figure, atomic palette PNGs, shared 2-D windows);
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from . import plot as P

_LINSCALE = 1.5  # visual size of the symlog axis' linear part, in decades (room for the data end)


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
    items = [(k, v if v is None or callable(v) else P.points(v, f"panel {k!r}"))
             for k, v in panels.items()]
    ncols = ncols or min(len(items), 5)
    nrows = math.ceil(len(items) / ncols)
    arrays = [v for _, v in items if isinstance(v, np.ndarray)]
    if lim is None and not arrays:
        raise ValueError("scatter_grid with only density panels needs lim")
    lim = P.limits(lim, *arrays)
    fig = P.figure(2.6 * ncols, 2.7 * nrows + (0.3 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (label, v) in zip(axes, items):
        if v is None:
            ax.set_axis_off()
        elif callable(v):
            P.colorbar(fig, P.density(ax, v, lim, n, label), ax)
        else:
            P.scatter(ax, v, lim, label)
    for ax in axes[len(items):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return P.save(fig, path)


class _Identity:
    """The transform of a linear axis, with the two methods `sde_paths` uses."""

    def transform(self, v):
        return np.asarray(v, dtype=np.float64)

    def inverted(self):
        return self


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
    fig = P.figure(4.6 * ncols, 3.0 * nrows + (0.3 if title else 0.0))
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
    return P.save(fig, path)
