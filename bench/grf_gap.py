"""Where a Gaussian-random-field model loses likelihood: its score error against the exact score,
time by time.

    python bench/grf_gap.py runs/grf                 # a finished `main.py configs/grf.py` run
    python bench/grf_gap.py runs/grf --num 100 --times 31
    python bench/grf_gap.py runs/grf_superres        # a run on grf_superres: the posterior's score

A GRF is Gaussian with a known spectrum, so every marginal p_t is Gaussian and its score is exact:
in the standardised units the model sees, x_t = a x_0 + s eps with x_0 ~ N(mu, F^H diag(lam) F),

    grad log p_t(x) = -F^H diag(1 / (a^2 lam_k + s^2)) F (x - a mu).

On grf_superres the same holds for x_0 | y with mu = mu(y) and lam = the posterior variances v_k
(`sgm.data.grf_superres`); there the error is also split between the observed modes (|k| <= the
cutoff) and the others.

For each time on a log grid from t0 to t1 the script draws x_t from `num` test fields and reports

    e(t) = 1/2 g(t)^2 E || s_theta(x_t, t) - grad log p_t(x_t) ||^2      (nats per field per unit t)

and the relative error ||s_theta - grad log p_t||^2 / ||grad log p_t||^2. Integrated over t, e(t)
is the KL bound of the reverse SDE's model (Song, Durkan, Murray & Ermon 2021, Theorem 1, up to the
prior term); the probability-flow likelihood's gap is not bounded by it but lives where it lives.
Columns "per log t" give t e(t), the contribution per unit of log t: the table shows which noise
levels a better network or loss must fix. Table on stdout; JSON in bench/results/grf_gap.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sgm import build
from sgm.data import grf
from sgm.data import grf_superres as sr

RESULTS = Path(__file__).resolve().parent / "results" / "grf_gap.json"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path, help="a finished run on the grf data")
    p.add_argument("--num", type=int, default=200, help="test fields")
    p.add_argument("--times", type=int, default=26, help="points of the log-time grid")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    exp = build.load_run(args.workdir)
    cfg, ds, state, pre = exp.cfg, exp.ds, exp.state, exp.preprocess
    if ds.name not in ("grf", "grf_superres"):
        raise SystemExit(f"{args.workdir} is a run on {ds.name!r}; this benchmark needs grf or "
                         "grf_superres.")
    model, sde = state.ema, state.ema.sde

    num = min(args.num, ds.test.shape[0])
    n = ds.shape[-1]
    par = ds.test_cond[:num]
    mean = 0.0 if pre.mean is None else float(np.asarray(pre.mean).reshape(-1)[0])
    std = 1.0 if pre.std is None else float(np.asarray(pre.std).reshape(-1)[0])
    x0 = (ds.test[:num, 0].astype(np.float64) - mean) / std
    if ds.name == "grf":
        lam = grf.spectrum(n, par[:, 0], par[:, 1]) / std**2  # eigenvalues in model units
        mu = -mean / std  # the fields have mean zero in data units
        observed = np.zeros((n, n), bool)
    else:  # the posterior given each observation y
        y = np.asarray(par[:, 0], np.float64)
        lam = np.broadcast_to(sr.posterior_modes(n)[1] / std**2, x0.shape)
        mu = (sr.posterior_mean(y) - mean) / std
        observed = sr.lowpass_mask(n) > 0
    cond = exp.cond(par)  # {} for an unconditional model

    @eqx.filter_jit
    def score(t, x, c):
        return jax.vmap(lambda xi, ci: model(t, xi, **ci))(x, c)

    rows, key = [], jax.random.key(0)
    times = np.geomspace(sde.t0, sde.t1, args.times)
    for t in times:
        key, k = jax.random.split(key)
        a, s = float(sde.scale(t)), float(sde.std(t))
        g2 = float(jnp.mean(jnp.asarray(sde.diffusion(t)) ** 2))
        xt = a * x0 + s * np.asarray(jax.random.normal(k, x0.shape), np.float64)
        xh = np.fft.fft2(xt - a * mu, norm="ortho")
        true = -np.fft.ifft2(xh / (a**2 * lam + s**2), norm="ortho").real
        est = np.asarray(score(jnp.float32(t), jnp.asarray(xt[:, None], jnp.float32), cond),
                         np.float64)[:, 0]
        err = np.abs(np.fft.fft2(est - true, norm="ortho")) ** 2  # per mode (Parseval)
        sq = err.sum(axis=(1, 2))
        e = 0.5 * g2 * float(sq.mean())
        e_obs = 0.5 * g2 * float(err[:, observed].sum(-1).mean())
        rows.append({"t": float(t), "e": e, "per_log_t": float(t) * e, "observed": e_obs,
                     "rel": float(sq.mean() / np.sum(true**2, axis=(1, 2)).mean())})

    def integral(key):  # of e(t) dt as the trapezoid rule in log t on t e(t)
        f = times * np.array([r[key] for r in rows])
        return float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(np.log(times))))

    total, total_obs = integral("e"), integral("observed")

    print(f"\n{args.workdir} (step {int(state.step)}), {num} test fields, {cfg.model.net} "
          f"prediction={cfg.model.prediction}, weighting={cfg.train.weighting}")
    print(f"  {'t':>9}{'e(t)':>13}{'per log t':>11}{'obs/log t':>10}{'rel err':>10}")
    for r in rows:
        print(f"  {r['t']:9.2e}{r['e']:13.3f}{r['per_log_t']:11.4f}"
              f"{r['t'] * r['observed']:10.4f}{r['rel']:10.2e}")
    print(f"  integral of e(t) dt = {total:.3f} nats per field "
          f"({total / (ds.dim * math.log(2)):.4f} bits/dim)")
    if observed.any():
        print(f"  of which {total_obs:.3f} in the {int(observed.sum())} observed modes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"workdir": str(args.workdir), "step": int(state.step),
                                    "num": num, "rows": rows, "integral_nats": total,
                                    "observed_nats": total_obs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
