"""Per-point accuracy of the likelihood's error control, on closed-form scores.

    python bench/likelihood_norm.py            # every SDE and problem, 64 points (16 in 784-D)
    python bench/likelihood_norm.py --quick    # VP only, D <= 64

Three ways to control the error of a batch's probability-flow solve (`sgm.log_likelihood`):

- "batch-rms":  shared steps, the RMS of the scaled local errors over the whole batch
                (`error_norm="batch"`);
- "point-max":  shared steps, each point's RMS, the largest over the batch (`error_norm="point"`,
                the default);
- "vmapped":    every point its own solve (`stepping="point"`), vmapped.

For Gaussians and Gaussian mixtures log p_t0 is closed-form, so the error of each point is known:
|log p - (log p_t0 + prior(z) - log p_t1(z))| / D (the solve ends on the prior, not on p_t1; z is
the solve's own latent). Every batch also holds one far point (6 stds out of the first component
in every dimension; for "mix3" the point (6, -5, 4), log p ~ -490), whose error is reported in
nats, and against its own tight solve: the far point alone at rtol = atol = 1e-7 ("far vs own",
the issue's measure; the closed form also counts that solve's own error). `--x64` runs it all in
float64, which separates float32's rounding from the error control: a far point's log p of
-14000 nats (784-D) is held to about 1e-3 nats in float32 by each addition alone. Prints a table
and writes JSON (mean and max per-point error in nats/dim, the far point's errors, NFE, seconds
after compilation).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import sgm
from sgm.data.toy import eight_gaussians_mixture

RESULTS = Path(__file__).resolve().parent / "results" / "likelihood_norm.json"
MODES = {
    "batch-rms": {"stepping": "batch", "error_norm": "batch"},
    "point-max": {"stepping": "batch", "error_norm": "point"},
    "vmapped": {"stepping": "point"},
}
SDES = {"vp": sgm.VPSDE(), "subvp": sgm.SubVPSDE(), "ve": sgm.VESDE()}


def problems(quick: bool) -> dict:
    w, means, std = eight_gaussians_mixture()
    rng = np.random.default_rng(0)
    out = {
        "gauss2": sgm.GaussianMixture.gaussian(np.array([0.5, -0.5]), np.array([0.3, 1.0])),
        "gauss64": sgm.GaussianMixture.gaussian(np.linspace(-1.0, 1.0, 64),
                                                np.geomspace(0.1, 2.0, 64)),
        "mix2": sgm.GaussianMixture(w, means, np.full(len(w), std)),
        "mix8": sgm.GaussianMixture([0.5, 0.3, 0.2], rng.normal(size=(3, 8)),
                                    [[0.1] * 8, [0.4] * 8, [1.0] * 8]),
        "mix3": sgm.GaussianMixture([0.3, 0.7], [[-1.0, 0.0, 0.5], [1.5, 1.0, -0.5]],
                                    [[0.3, 0.2, 0.4], [0.5, 0.3, 0.2]]),
    }
    if not quick:
        out["gauss784"] = sgm.GaussianMixture.gaussian(np.linspace(-1.0, 1.0, 784),
                                                       np.geomspace(0.05, 1.0, 784))
    return out


#: the far point of "mix3" (log p ~ -490), as in tests/test_likelihood.py
FAR = {"mix3": jnp.array([6.0, -5.0, 4.0])}


def batch_of(name: str, gm, n: int) -> jax.Array:
    """n - 1 samples of `gm` and one far point: the first component's mean plus 6 of its stds
    (or `FAR[name]`)."""
    x = gm.sample(jax.random.key(1), n - 1)
    far = FAR.get(name, gm.means[0] + 6.0 * gm.stds[0])
    return jnp.concatenate([x, far[None]])


def run(gm, sde, x, options) -> dict:
    """`options`: fields of `sgm.StepControl` (one of `MODES`)."""
    score = gm.score(sde)

    def call():
        logp, info = sgm.log_likelihood(score, sde, x, control=sgm.StepControl(**options))
        return jax.block_until_ready(logp), info

    call()  # compile
    t = time.perf_counter()
    logp, info = call()
    seconds = time.perf_counter() - t
    z = info["z"]
    true = jax.vmap(lambda xi: gm.log_prob(xi, sde, sde.t0))(x)
    prior_term = jax.vmap(sde.prior_logp)(z) - jax.vmap(lambda zi: gm.log_prob(zi, sde, sde.t1))(z)
    err = np.abs(np.asarray(logp - true - prior_term, np.float64))
    dim = x.shape[1]
    own, _ = sgm.log_likelihood(score, sde, x[-1:], rtol=1e-7, atol=1e-7,
                                control=sgm.StepControl(**{**options, "max_steps": 65536}))
    return {"mean_err": float(err[:-1].mean() / dim), "max_err": float(err[:-1].max() / dim),
            "far_err_nats": float(err[-1]), "far_vs_own_nats": float(abs(logp[-1] - own[0])),
            "nfe": int(info["nfe"]), "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="VP only, D <= 64")
    p.add_argument("--only", default=None, help="comma-separated problems (e.g. gauss784,mix3)")
    p.add_argument("--x64", action="store_true", help="everything in float64")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    sdes = {"vp": SDES["vp"]} if args.quick else SDES
    rows = []
    print(f"{'problem':9s} {'sde':5s} {'mode':10s} {'mean err':>9s} {'max err':>9s} "
          f"{'far (nats)':>10s} {'vs own':>9s} {'nfe':>5s} {'seconds':>8s}")
    for pname, gm in problems(args.quick).items():
        if args.only and pname not in args.only.split(","):
            continue
        x = batch_of(pname, gm, 16 if gm.dim > 64 else 64)
        for sname, sde in sdes.items():
            for mode, options in MODES.items():
                r = {"problem": pname, "sde": sname, "mode": mode, "points": int(x.shape[0]),
                     **run(gm, sde, x, options)}
                rows.append(r)
                print(f"{pname:9s} {sname:5s} {mode:10s} {r['mean_err']:9.2e} {r['max_err']:9.2e} "
                      f"{r['far_err_nats']:10.2e} {r['far_vs_own_nats']:9.2e} {r['nfe']:5d} "
                      f"{r['seconds']:8.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rtol": 1e-5, "atol": 1e-5, "x64": args.x64, "rows": rows},
                                   indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
