"""The adaptive `ode` sampler's step sharing, on closed-form scores: NFE against per-sample error.

    python bench/ode_stepping.py            # VP and VE, three problems, rtol = atol 1e-2 .. 1e-5
    python bench/ode_stepping.py --quick    # VP only, 1e-3 and 1e-5

Two ways to solve a batch of probability-flow ODEs adaptively (`sgm.sample(method="ode")`):

- "batch":  one solve of the whole batch with shared steps, each step accepted only when every
            sample's own RMS error meets the tolerances (`stepping="batch"`, the default);
- "point":  every sample its own solve and step control, vmapped (`stepping="point"`): the batch
            runs to its slowest sample.

Problems (`sgm.GaussianMixture`, so the score is exact and the only error is the solver's): eight
Gaussians in 2-D; a 64-D Gaussian (means in [-1, 1], stds log-spaced in [0.1, 2]); a 3-component
mixture in 8-D with component stds 0.1, 0.4 and 1. The error of a sample is the RMS over its
coordinates of its distance to the same prior draw solved at rtol = atol = 1e-8; reported as the
mean and the maximum over 1000 samples, with the NFE per sample and the seconds after compilation
(compare the two modes within one run). Table on stdout; JSON in bench/results/ode_stepping.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import sgm
from sgm.data.toy import eight_gaussians_mixture

RESULTS = Path(__file__).resolve().parent / "results" / "ode_stepping.json"
SDES = {"vp": sgm.VPSDE, "ve": sgm.VESDE}
TOLS = (1e-2, 1e-3, 1e-4, 1e-5)
QUICK_TOLS = (1e-3, 1e-5)
NUM = 1000


def problems():
    w, means, std = eight_gaussians_mixture()
    rng = np.random.default_rng(0)
    return {
        "8gauss": sgm.GaussianMixture(w, means, np.full(len(w), std)),
        "gauss64": sgm.GaussianMixture.gaussian(np.linspace(-1.0, 1.0, 64),
                                                np.geomspace(0.1, 2.0, 64)),
        "mix8": sgm.GaussianMixture(np.array([0.5, 0.3, 0.2]), rng.normal(size=(3, 8)) * 1.5,
                                    np.array([0.1, 0.4, 1.0])),
    }


def run(sde_name, name, gm, tols):
    sde = SDES[sde_name]()
    score, shape = gm.score(sde), tuple(gm.means.shape[1:])
    kw = {"key": jax.random.key(0), "num": NUM, "method": "ode"}
    ref, _ = sgm.sample(score, sde, shape, rtol=1e-8, atol=1e-8, stepping="point", **kw)
    rows = []
    for tol in tols:
        for stepping in ("point", "batch"):
            opts = dict(kw, rtol=tol, atol=tol, stepping=stepping)
            jax.block_until_ready(sgm.sample(score, sde, shape, **opts))  # compile
            start = time.perf_counter()
            x, info = jax.block_until_ready(sgm.sample(score, sde, shape, **opts))
            seconds = time.perf_counter() - start
            err = np.sqrt(np.mean(np.square(np.asarray(x - ref)).reshape(NUM, -1), axis=1))
            rows.append({"sde": sde_name, "problem": name, "tol": tol, "stepping": stepping,
                         "nfe": int(info["nfe"]), "mean_err": float(err.mean()),
                         "max_err": float(err.max()), "seconds": seconds})
            r = rows[-1]
            print(f"{sde_name:3s} {name:8s} {tol:7.0e} {stepping:6s} {r['nfe']:5d} "
                  f"{r['mean_err']:10.2e} {r['max_err']:10.2e} {seconds:8.3f}", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="VP only, two tolerances")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    sdes = ("vp",) if args.quick else tuple(SDES)
    tols = QUICK_TOLS if args.quick else TOLS
    print(f"{'sde':3s} {'problem':8s} {'rtol':>7s} {'mode':6s} {'nfe':>5s} {'mean err':>10s} "
          f"{'max err':>10s} {'seconds':>8s}")
    rows = [r for s in sdes for name, gm in problems().items() for r in run(s, name, gm, tols)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"num": NUM, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
