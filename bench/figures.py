"""The project's analytic figures, drawn from closed-form scores and densities (no training).

    python bench/figures.py [--out figs] [--seed 0]
    python bench/figures.py --runs runs/fashion_mnist_cpu runs/fashion_mnist_dit_cpu

writes
    sde_paths.png         forward (Euler-Maruyama on dx = f dt + g dw) and reverse-SDE ("em")
                          paths of VP, SubVP and VE from a bimodal 1-D Gaussian mixture, with the
                          histograms at both ends held against the exact marginals p_t;
    analytic_samples.png  samples of the eight-Gaussians mixture from every sampler of each SDE,
                          driven by its exact score, beside exact draws; each panel states its NFE
                          and the mean exact log-density of its samples (-entropy for exact draws);
    toys.png              the embedded 2-D toy datasets, and the two densities known in closed form;

and with `--runs`, only
    fashion_mnist_unet_dit.png  the samples of trained class-conditional image runs side by side
                          (eight per class, row i: class i), each titled with its network, its
                          parameters and its offline quality scores (quality.json).

About a minute of CPU time on two cores, most of it compiling the 21 solves.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import sgm
from sgm import plot, plot_grids
from sgm.data import toy

SDES = {"VP": sgm.VPSDE(), "SubVP": sgm.SubVPSDE(), "VE": sgm.VESDE()}
#: sampler -> options: 500 steps are plenty for these smooth scores (ddim: its usual 50)
SAMPLER_OPTIONS = {"em": dict(steps=500), "ode": dict(), "pc": dict(steps=500),
                   "ddpm": dict(steps=500), "ddim": dict(steps=50)}
METHODS = tuple(SAMPLER_OPTIONS)
#: bimodal 1-D data for the path figure: unequal weights make a wrong mode balance visible
MIXTURE_1D = sgm.GaussianMixture([0.35, 0.65], [[-1.5], [1.5]], [0.35, 0.3])


@eqx.filter_jit
def forward_paths(sde: sgm.AbstractSDE, x0: jax.Array, key, steps: int):
    """Euler-Maruyama paths of the forward SDE from x0 (N, D) at t0 to t1: (ts (steps+1,), xs)."""

    def drift(t, x, args):
        return sde.drift(t, x)

    def diffusion(t, x, args):
        return lx.DiagonalLinearOperator(jnp.full_like(x, sde.diffusion(t)))

    bm = diffrax.UnsafeBrownianPath(shape=x0.shape, key=key)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    sol = diffrax.diffeqsolve(
        terms, diffrax.Euler(), sde.t0, sde.t1, None, x0,
        stepsize_controller=diffrax.StepTo(ts=jnp.linspace(sde.t0, sde.t1, steps + 1)),
        saveat=diffrax.SaveAt(t0=True, steps=True), adjoint=diffrax.ForwardMode(), max_steps=steps,
    )
    return sol.ts, sol.ys


def exact_logp_1d(gm: sgm.GaussianMixture, sde, t):
    """log p_t on a vector of 1-D points (K,) -> (K,)."""
    fn = jax.jit(jax.vmap(lambda y: gm.log_prob(y[None], sde, t)))
    return lambda y: np.asarray(fn(jnp.asarray(y, jnp.float32)))


def fig_sde_paths(out: Path, key, num: int = 2000, steps: int = 500) -> Path:
    """Forward and reverse paths of the three SDEs on MIXTURE_1D, both with `steps` EM steps.

    Forward paths start from exact data draws at t0 (1e-5: p_t0 is the data density to ~1e-5).
    """
    gm = MIXTURE_1D
    paths, marginals = {}, {}
    keys = jax.random.split(key, 2 * len(SDES))
    for i, (name, sde) in enumerate(SDES.items()):
        k_data, k_bm = jax.random.split(keys[2 * i])
        ts, xs = forward_paths(sde, gm.sample(k_data, num), k_bm, steps)
        paths[f"{name} forward"] = (ts, xs)
        marginals[f"{name} forward"] = (exact_logp_1d(gm, sde, ts[0]),
                                        exact_logp_1d(gm, sde, ts[-1]))
    for i, (name, sde) in enumerate(SDES.items()):
        _, info = sgm.sample(gm.score(sde), sde, (1,), key=keys[2 * i + 1], num=num, method="em",
                             steps=steps, settings=sgm.SamplerSettings(return_path=True))
        ts = info["path_t"]
        paths[f"{name} reverse (em)"] = (ts, info["path"])
        marginals[f"{name} reverse (em)"] = (exact_logp_1d(gm, sde, ts[0]),
                                             exact_logp_1d(gm, sde, ts[-1]))
    return plot_grids.sde_paths(
        paths, out / "sde_paths.png", marginals=marginals, ncols=3,
        title="1-D mixture 0.35 N(-1.5, 0.35²) + 0.65 N(1.5, 0.3²): histograms of "
              f"{num} paths vs exact marginals p_t (black)")


def fig_analytic_samples(out: Path, key, num: int = 2000) -> Path:
    """Rows VP, SubVP, VE; columns exact draws then each sampler, all from the exact score."""
    weights, means, std = toy.eight_gaussians_mixture()
    gm = sgm.GaussianMixture(weights, means, np.full(len(weights), std))
    logp = jax.jit(jax.vmap(gm.log_prob))
    panels = {}
    for i, (name, sde) in enumerate(SDES.items()):
        k_exact, *k_methods = jax.random.split(jax.random.fold_in(key, i), 1 + len(METHODS))
        x = gm.sample(k_exact, num)
        panels[f"{name} exact\nmean log p {float(jnp.mean(logp(x))):.3f}"] = x
        for method, k in zip(METHODS, k_methods):
            x, info = sgm.sample(gm.score(sde), sde, (2,), key=k, num=num, method=method,
                                 **SAMPLER_OPTIONS[method])
            ok = jnp.all(jnp.isfinite(x), axis=1)
            lp = float(jnp.mean(jnp.where(ok, logp(jnp.where(ok[:, None], x, 0.0)), jnp.nan)))
            panels[f"{name} {method}, {int(info['nfe'])} NFE\nmean log p {lp:.3f}"] = x
    return plot_grids.scatter_grid(
        panels, out / "analytic_samples.png", ncols=1 + len(METHODS), lim=4.2,
        title=f"Eight Gaussians from the exact score: {num} samples per sampler "
              f"(exact mean log p = -entropy = {-toy.entropy('eight_gaussians'):.3f})")


def fig_toys(out: Path, seed: int, num: int = 5000) -> Path:
    """Each toy's samples, followed by its exact density where one is known."""
    panels: dict[str, object] = {}
    for name in (*toy.WITH_DENSITY, *(n for n in toy.NAMES if n not in toy.WITH_DENSITY)):
        panels[name] = toy.sample(name, num, seed)
        if name in toy.WITH_DENSITY:
            panels[f"{name}: exact density"] = lambda x, name=name: toy.log_prob(name, x)
    return plot_grids.scatter_grid(panels, out / "toys.png", ncols=4, lim=4.5, n=300,
                                   title=f"Embedded 2-D toys ({num} samples each) and the "
                                         "densities known in closed form")


def fig_runs(out: Path, runs: list[Path], per_class: int = 8) -> Path:
    """Samples of finished class-conditional image runs side by side, row i: class i."""
    fig = plot.figure(4.2 * len(runs), 6.0, layout="compressed")
    for ax, run in zip(fig.subplots(1, len(runs), squeeze=False)[0], runs, strict=True):
        with np.load(run / "samples.npz") as f:
            x, labels = f["samples"], f["cond"]
        rows = [x[labels == c][:per_class] for c in sorted(set(labels.tolist()))]
        n = min(len(r) for r in rows)
        plot.show_canvas(ax, plot.tile(np.concatenate([r[:n] for r in rows]), nrow=n, hi=255.0))
        cfg = json.loads((run / "config.json").read_text())
        model, sampler = cfg["model"], cfg["sample"]
        summary = json.loads((run / "summary.json").read_text())
        name = (f"UNet, base {model['base']}" if model["net"] == "unet"
                else f"DiT, {model['patch']}x{model['patch']} patches, width {model['width']}")
        title = (f"{name}\n{summary['steps']} steps, {summary['train_seconds'] / 60:.0f} min; "
                 f"{sampler['method']}-{sampler['steps']}, guidance {sampler['guidance']:g}")
        if q := summary.get("quality"):
            title += (f"\n{q['sample_accuracy']:.0%} recognised, FD {q['frechet']:.1f} "
                      f"(real {q['frechet_reference']:.1f}, N = {q['num_samples']})")
        ax.set_title(title, fontsize=9)
    return plot.save(fig, out / "fashion_mnist_unet_dit.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("figs"),
                        help="output folder (default figs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--runs", type=Path, nargs="+", default=None,
                        help="finished image runs: draw only their samples side by side")
    args = parser.parse_args(argv)
    if args.runs:
        path = fig_runs(args.out, args.runs)
        print(f"{str(path):<32} {path.stat().st_size / 1024:7.1f} KB")
        return
    key = jax.random.key(args.seed)
    k_paths, k_samples = jax.random.split(key)
    for make in (lambda: fig_sde_paths(args.out, k_paths),
                 lambda: fig_analytic_samples(args.out, k_samples),
                 lambda: fig_toys(args.out, args.seed)):
        start = time.perf_counter()
        path = make()
        seconds = time.perf_counter() - start
        print(f"{str(path):<32} {path.stat().st_size / 1024:7.1f} KB  {seconds:6.1f} s")


if __name__ == "__main__":
    main()
