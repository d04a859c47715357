"""Sample quality of every sampler against exact samples, as a function of score evaluations.

    python bench/samplers.py             # full sweep, NFE ~5 .. 1000 (~8 min on 2 busy cores)
    python bench/samplers.py --quick     # NFE ~5 and ~20 plus em at 1000 steps (~2 min)
    python bench/samplers.py --sde ve    # VE or SubVP instead of VP

Two problems with closed-form scores (`sgm.GaussianMixture`), so the only error is the sampler's:

- "8gauss":  eight Gaussians on a circle in 2-D (`sgm.data.toy.eight_gaussians_mixture`);
- "gauss64": a 64-D Gaussian, means evenly spaced in [-1, 1], stds log-spaced in [0.1, 2].

Every sampler runs from the same key (deterministic samplers share one prior draw) at a ladder of
step counts chosen so that NFE ~ 5, 10, 20, 50, 200, 1000 (em's last rung is exactly 1000
steps, the reference of the target below); "ode" is adaptive Tsit5 with a Tweedie step at the end,
swept over rtol = atol, so its NFE is whatever the controller spends. Metrics on n samples:

- sw:   sliced Wasserstein-2 distance to n exact samples, sqrt(mean over L random unit directions of
        the mean squared difference of the sorted projections), same directions for every row;
- mean: RMS over dimensions of (sample mean - true mean) / true std;
- std:  RMS over dimensions of sample std / true std - 1.

"floor" rows are the same metrics for independent exact sets of n samples (mean over 5 sets): a
sampler cannot be told apart from exact sampling below them. Target: with at most 20 score
evaluations, heun and dpm2m are no worse than em with 1000 steps (per metric: "yes" if at or below
em's value, "noise" if above it by less than the floor, "no" otherwise).
Table on stdout; JSON in bench/results/samplers.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sgm
from sgm.data.toy import eight_gaussians_mixture

RESULTS = Path(__file__).resolve().parent / "results" / "samplers.json"
SDES = {"vp": sgm.VPSDE, "ve": sgm.VESDE, "subvp": sgm.SubVPSDE}
TARGETS = (5, 10, 20, 50, 200, 1000)
QUICK_TARGETS = (5, 20)
RTOLS = (1e-1, 1e-2, 1e-3, 1e-4)
QUICK_RTOLS = (1e-2,)
FLOOR_SETS = 5


def problems():
    w, means, std = eight_gaussians_mixture()
    dim = 64
    return {
        "8gauss": sgm.GaussianMixture(w, means, np.full(len(w), std)),
        "gauss64": sgm.GaussianMixture.gaussian(np.linspace(-1.0, 1.0, dim),
                                                np.geomspace(0.1, 2.0, dim)),
    }


def true_moments(gm):
    """Mean and per-dimension std of a Gaussian mixture."""
    w = gm.weights[:, None]
    mean = jnp.sum(w * gm.means, 0)
    var = jnp.sum(w * (gm.stds**2 + gm.means**2), 0) - mean**2
    return mean, jnp.sqrt(var)


def sliced_w2(x, y, dirs):
    """Sliced Wasserstein-2 between equal-size sets x, y (n, D) along unit directions (D, L)."""
    px, py = jnp.sort(x @ dirs, axis=0), jnp.sort(y @ dirs, axis=0)
    return float(jnp.sqrt(jnp.mean((px - py) ** 2)))


def metrics(x, exact, dirs, mean, std):
    if not bool(jnp.all(jnp.isfinite(x))):
        return {"sw": math.inf, "mean": math.inf, "std": math.inf}
    return {"sw": sliced_w2(x, exact, dirs),
            "mean": float(jnp.sqrt(jnp.mean(((x.mean(0) - mean) / std) ** 2))),
            "std": float(jnp.sqrt(jnp.mean((x.std(0) / std - 1.0) ** 2)))}


def ladder(method, targets):
    """(steps, options) per NFE target; em also gets exactly 1000 steps."""
    if method == "em":
        return [(t - 1, {}) for t in targets if t < 1000] + [(1000, {})]
    if method == "pc":
        return [(max((t - 1) // 2, 1), {}) for t in targets]
    if method == "heun":
        return [((t + 1) // 2, {}) for t in targets]
    return [(t, {}) for t in targets]  # ddpm, ddim, dpm2m: NFE = steps


def run_problem(name, gm, sde, n, targets, rtols, n_dirs, log):
    dim = gm.dim
    k_exact, k_floor, k_dirs = jax.random.split(jax.random.key(1), 3)
    exact = gm.sample(k_exact, n)
    dirs = jax.random.normal(k_dirs, (dim, n_dirs))
    dirs = dirs / jnp.linalg.norm(dirs, axis=0)
    mean, std = true_moments(gm)
    score = gm.score(sde)
    floors = [metrics(gm.sample(k, n), exact, dirs, mean, std)
              for k in jax.random.split(k_floor, FLOOR_SETS)]
    rows = [dict(problem=name, method="floor", steps=None, nfe=0,
                 **{m: float(np.mean([f[m] for f in floors])) for m in floors[0]})]
    runs = [(m, s, o) for m in ("em", "pc", "ddpm", "ddim", "heun", "dpm2m")
            for s, o in ladder(m, targets)]
    runs += [("ode", None, dict(rtol=r, atol=r, denoise=True)) for r in rtols]
    for method, steps, opts in runs:
        t0 = time.perf_counter()
        x, info = sgm.sample(score, sde, (dim,), key=jax.random.key(0), num=n, method=method,
                             steps=steps, **opts)
        x = jax.block_until_ready(x)
        row = dict(problem=name, method=method, steps=steps, nfe=int(info["nfe"]),
                   **metrics(x, exact, dirs, mean, std), wall_s=time.perf_counter() - t0)
        if method == "ode":
            row["rtol"] = opts["rtol"]
        rows.append(row)
        log(f"{name} {method} steps={steps} {opts or ''} nfe={row['nfe']}")
    return rows


def target_check(rows):
    """heun / dpm2m at their largest NFE <= 20 against em with 1000 steps, metric by metric."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem]
        floor = next(r for r in mine if r["method"] == "floor")
        em = next(r for r in mine if r["method"] == "em" and r["steps"] == 1000)
        for method in ("heun", "dpm2m"):
            few = [r for r in mine if r["method"] == method and r["nfe"] <= 20]
            if not few:
                continue
            r = max(few, key=lambda r: r["nfe"])
            verdict = {}
            for m in ("sw", "mean", "std"):
                verdict[m] = ("yes" if r[m] <= em[m] else
                              "noise" if r[m] <= em[m] + abs(floor[m]) else "no")
            out.append(dict(problem=problem, method=method, nfe=r["nfe"], em_nfe=em["nfe"],
                            **{f"{m}": r[m] for m in ("sw", "mean", "std")},
                            **{f"em_{m}": em[m] for m in ("sw", "mean", "std")},
                            verdict=verdict, met=all(v != "no" for v in verdict.values())))
    return out


def print_table(rows):
    for problem in dict.fromkeys(r["problem"] for r in rows):
        print(f"\n{problem}")
        print(f"  {'method':<7}{'steps':>7}{'nfe':>6}{'sw':>10}{'mean':>10}{'std':>10}")
        for r in rows:
            if r["problem"] != problem:
                continue
            steps = f"{r['rtol']:.0e}" if r["method"] == "ode" else (r["steps"] or "-")
            print(f"  {r['method']:<7}{steps:>7}{r['nfe']:>6}{r['sw']:>10.4f}{r['mean']:>10.4f}"
                  f"{r['std']:>10.4f}")


def markdown(rows, metric="sw"):
    """Markdown table: one row per NFE rung, one column per fixed-step sampler (`metric`, NFE in
    brackets); the adaptive ode's rows (one per tolerance) follow on one line."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem]
        floor = next(r for r in mine if r["method"] == "floor")[metric]
        methods = list(dict.fromkeys(r["method"] for r in mine if r["method"] not in ("floor", "ode")))
        by = {m: [r for r in mine if r["method"] == m] for m in methods}
        rungs = max(len(v) for v in by.values())
        out.append(f"\n{problem}: {metric} (NFE), exact-sampling floor {floor:.4f}\n")
        out.append("| NFE about | " + " | ".join(methods) + " |")
        out.append("|---|" + "---|" * len(methods))
        for i in range(rungs):
            cells = [f"{by[m][i][metric]:.4f} ({by[m][i]['nfe']})" if i < len(by[m]) else ""
                     for m in methods]
            target = TARGETS[i] if i < len(TARGETS) else "-"
            out.append(f"| {target} | " + " | ".join(cells) + " |")
        ode = [f"rtol {r['rtol']:.0e}: {r[metric]:.4f} ({r['nfe']})" for r in mine if r["method"] == "ode"]
        if ode:
            out.append("\nadaptive ode (Tsit5, rtol = atol): " + "; ".join(ode))
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", choices=("sw", "mean", "std"), default=None,
                   help="only print a markdown table of this metric from the saved JSON")
    p.add_argument("--quick", action="store_true", help="fewer NFE levels, smaller sample sets")
    p.add_argument("--sde", choices=list(SDES), default="vp")
    p.add_argument("--n", type=int, default=None,
                   help="samples per set (default 10000, quick 4000)")
    p.add_argument("--dirs", type=int, default=256, help="random directions of the sliced W2")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.table:
        print(markdown(json.loads(args.out.read_text())["rows"], args.table))
        return
    n = args.n or (4000 if args.quick else 10000)
    targets, rtols = (QUICK_TARGETS, QUICK_RTOLS) if args.quick else (TARGETS, RTOLS)
    sde = SDES[args.sde]()
    start = time.perf_counter()

    def log(what):
        print(f"  [{time.perf_counter() - start:6.1f}s] {what}", flush=True)

    rows = []
    for name, gm in problems().items():
        rows += run_problem(name, gm, sde, n, targets, rtols, args.dirs, log)
    total = time.perf_counter() - start
    check = target_check(rows)

    print(f"\nsamplers on closed-form scores, {args.sde} SDE, n={n} samples, sw over {args.dirs} "
          f"directions, float32; mean/std errors relative to the true per-dimension std")
    print_table(rows)
    print("\ntarget: NFE <= 20 no worse than em with 1000 steps (yes / noise = within floor / no)")
    for c in check:
        v = " ".join(f"{m}={c['verdict'][m]}" for m in ("sw", "mean", "std"))
        print(f"  {c['problem']:<8}{c['method']:<6} nfe={c['nfe']:<3} sw {c['sw']:.4f} vs "
              f"{c['em_sw']:.4f}, mean {c['mean']:.4f} vs {c['em_mean']:.4f}, std {c['std']:.4f} "
              f"vs {c['em_std']:.4f}: {v} -> {'met' if c['met'] else 'NOT met'}")
    print(f"total {total:.0f} s")

    meta = {"quick": args.quick, "sde": args.sde, "n": n, "dirs": args.dirs, "jax": jax.__version__,
            "backend": jax.default_backend(), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "load_avg": os.getloadavg(),
            "total_s": total}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "target": check}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
