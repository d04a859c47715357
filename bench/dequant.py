"""Bits/dim of a trained model on discrete data against the number K of uniform dequantisations.

    python bench/dequant.py runs/digits                      # K up to 8, 32 test points
    python bench/dequant.py runs/digits --k 16 --num 64 --exact

Reads the run's config.json and latest checkpoint (a finished `main.py` run on discrete data:
digits, MNIST, CIFAR-10, ...), draws K dequantisations of each of `num` test points once, and
reduces the first k = 1, 2, 4, ..., K of them both ways (`sgm.likelihood.combine_dequantised`):

- "mean": the average of k bounds. Same expectation for every k; the spread over points falls.
- "iw":   log of the mean likelihood, the importance-weighted bound, which tightens with k.

Rows give bits/dim (mean over points) with its standard error, and the spread over the K draws of
one point (the noise "mean" averages away). `--exact` uses the exact trace (a true bound for "iw");
by default the run's own likelihood settings apply (e.g. Hutchinson). Table on stdout; JSON next
to the other results in bench/results/dequant.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from sgm import build
from sgm.likelihood import bits_per_dim, combine_dequantised

RESULTS = Path(__file__).resolve().parent / "results" / "dequant.json"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path, help="a finished run on discrete data (config.json + checkpoints/)")
    p.add_argument("--k", type=int, default=8, help="dequantisations per point (largest K)")
    p.add_argument("--num", type=int, default=32, help="test points")
    p.add_argument("--exact", action="store_true", help="exact trace instead of the run's setting")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    exp = build.load_run(args.workdir)
    ds, state, lik = exp.ds, exp.state, exp.cfg.likelihood
    if ds.levels is None:
        raise SystemExit(f"{ds.name} is continuous data: dequantisation does not apply.")
    lik = dataclasses.replace(lik, exact=args.exact or lik.exact)

    t0 = time.perf_counter()
    deq = dataclasses.replace(build.dequantisation(exp.cfg), samples=args.k)
    out = exp.heldout_likelihood(state.ema, num=args.num, dequantisation=deq, exact=lik.exact,
                                 batch=min(lik.batch, args.num), return_draws=True)
    seconds = time.perf_counter() - t0
    draws = out["draws"]  # (K, num) log-likelihoods in data units (the bound's constant included)
    rows = []
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= args.k]
    for bound in ("mean", "iw"):
        for k in ks:
            bpd = np.asarray(bits_per_dim(combine_dequantised(draws[:k], bound), ds.dim,
                                          levels=None), dtype=np.float64)
            rows.append(dict(bound=bound, k=k, bpd=float(bpd.mean()),
                             stderr=float(bpd.std() / math.sqrt(bpd.size))))
    draw_bpd = np.asarray(bits_per_dim(draws, ds.dim, levels=None), dtype=np.float64)
    spread = float(draw_bpd.std(0, ddof=1).mean())

    trace = "exact trace" if lik.exact else f"Hutchinson, {lik.probes} probe(s)"
    print(f"\n{ds.name}: {args.num} test points, K = {args.k} dequantisations each, {trace}, "
          f"rtol {lik.rtol:g}; {seconds:.0f} s, nfe {out['nfe']} per solve")
    print(f"  spread of one point's bits/dim over its draws: {spread:.4f}")
    print(f"  {'bound':<6}{'K':>5}{'bits/dim':>11}{'stderr':>9}")
    for r in rows:
        print(f"  {r['bound']:<6}{r['k']:>5}{r['bpd']:>11.4f}{r['stderr']:>9.4f}")

    meta = {"workdir": str(args.workdir), "step": int(state.step), "dataset": ds.name,
            "num": args.num, "k": args.k, "exact": lik.exact, "probes": lik.probes,
            "rtol": lik.rtol, "nfe": out["nfe"], "seconds": seconds, "draw_spread_bpd": spread,
            "jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "load_avg": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
