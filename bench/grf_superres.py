"""GRF super-resolution: the trained model's conditional NLL gap, posterior moments, and a figure.

    python bench/grf_superres.py runs/grf_superres          # a finished `main.py` run on it
    python bench/grf_superres.py runs/grf_superres --num 40 --obs 4 --per 64
    python bench/grf_superres.py runs/grf_superres --set sample.method=unipc sample.steps=50

The posterior p(x | y) of `sgm.data.grf_superres` is Gaussian and exact, so a model is checked
three ways on the same test points:

1. the paired NLL gap: for each of `num` test fields, -log p_model(x | y) (the config's likelihood
   settings) minus the exact -log p(x | y); its mean and standard error over the fields, in
   bits/dim (nats / (D ln 2), D = 256);
2. posterior moments: for `obs` test observations, `per` model samples each (the config's
   sampler, or the one `--set sample.method=... sample.steps=...` names) against the exact mean
   mu(y) and the exact per-pixel std s (the same at every pixel):
   the RMS over pixels of (sample mean - mu) / s, and mean sample std / s; and, held against
   -H(x | y), the exact log p(x | y) of the samples. The same statistics of `per` exact
   posterior draws are the floor: a sample mean of `per` draws misses mu by s / sqrt(per);
3. figs/grf_superres.png: per observation (a row, one colour scale) the observation, the exact
   posterior mean, three model samples and three exact posterior samples.

Table on stdout; JSON in bench/results/grf_superres.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from sgm import GuidedScore, build, evaluate
from sgm import config as C
from sgm import plot as P
from sgm.data import grf_superres as sr

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "grf_superres.json"
FIGURE = HERE.parent / "figs" / "grf_superres.png"
SHOWN = 3  # model and exact samples per row of the figure


def likelihood_gap(exp, num: int) -> dict:
    """Per-point NLL of the model and of the exact posterior on the first `num` test fields."""
    t0 = time.perf_counter()
    lik = exp.heldout_likelihood(exp.state.ema, num=num, return_draws=True)
    num = lik["num"]
    model_logp = np.asarray(lik["draws"][0], np.float64)  # continuous data: one draw per point
    exact_logp = np.asarray(exp.ds.log_prob(exp.ds.test[:num], exp.ds.test_cond[:num]), np.float64)
    to_bpd = 1.0 / (exp.ds.dim * math.log(2.0))
    gap = (exact_logp - model_logp) * to_bpd
    lc = exp.cfg.likelihood
    how = (f"exact trace, rtol {lc.rtol:g}" if lc.exact else
           f"Hutchinson ({lc.probes} {'probe' if lc.probes == 1 else 'probes'}), rtol {lc.rtol:g}")
    return {"num": num, "nll": -float(model_logp.mean()), "true_nll": -float(exact_logp.mean()),
            "entropy": exp.ds.entropy, "gap_bpd": float(gap.mean()),
            "gap_bpd_stderr": float(gap.std(ddof=1) / math.sqrt(num)),
            "gap_bpd_points": gap.tolist(), "nfe": lik["nfe"], "settings": how,
            "seconds": time.perf_counter() - t0}


def model_samples(exp, cfg, y, per: int, seed: int):
    """`per` samples of the model given each observation of `y` (M, 1, n, n): (M, per, 1, n, n),
    drawn as `cfg.sample` says."""
    model = exp.state.ema
    raw = np.repeat(y, per, axis=0)
    score = GuidedScore(model, None, exp.ds.num_classes, cfg.sample.guidance)
    x, info = evaluate.draw_samples(score, model.sde, exp.preprocess, exp.ds.shape, num=len(raw),
                                    key=jax.random.key(seed), cond=exp.cond(raw),
                                    **build.sample_options(cfg))
    return np.asarray(x, np.float64).reshape(len(y), per, *exp.ds.shape), int(info["nfe"])


def moments(s, y, n: int) -> dict:
    """Posterior statistics of samples `s` (M, per, n, n) given observations `y` (M, n, n)."""
    mu = sr.posterior_mean(y)
    _, v = sr.posterior_modes(n)
    sd = math.sqrt(float(v.mean()))  # diag of F^H diag(v) F: every pixel's posterior std
    m_hat, s_hat = s.mean(1), s.std(1, ddof=1)
    logp = sr.log_prob(s, y[:, None])  # (M, per) exact log p(x | y) of each sample
    return {"mean_err_rms": float(np.sqrt(np.mean((m_hat - mu) ** 2)) / sd),
            "std_ratio": float(s_hat.mean() / sd),
            "std_ratio_min": float(s_hat.mean((1, 2)).min() / sd),
            "std_ratio_max": float(s_hat.mean((1, 2)).max() / sd),
            "exact_logp": float(logp.mean()),
            "exact_logp_stderr": float(logp.std(ddof=1) / math.sqrt(logp.size))}


def figure(y, mu, model, exact, path: Path, title: str) -> Path:
    """Rows: observations; columns: y, E[x | y], SHOWN model samples, SHOWN exact samples."""
    cols = ["observation y", "exact E[x | y]", *[f"model {i + 1}" for i in range(SHOWN)],
            *[f"exact {i + 1}" for i in range(SHOWN)]]
    fig = P.figure(1.45 * len(cols) + 0.6, 1.5 * len(y) + 0.55)
    axes = fig.subplots(len(y), len(cols), squeeze=False)
    for r in range(len(y)):
        row = [y[r], mu[r], *model[r, :SHOWN], *exact[r, :SHOWN]]
        lim = float(np.max(np.abs(np.stack([y[r], *exact[r, :SHOWN]]))))  # per row, the exact's
        for c, img in enumerate(row):
            ax = axes[r, c]
            im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, 0].set_ylabel(f"test field {r}", fontsize=9)
        fig.colorbar(im, ax=axes[r, -1], shrink=0.9, pad=0.05)
    fig.suptitle(title, fontsize=10)
    return P.save(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path, help="a finished run on the grf_superres data")
    p.add_argument("--num", type=int, default=None,
                   help="test fields for the NLL gap (default the config's likelihood.num)")
    p.add_argument("--obs", type=int, default=4, help="test observations for moments and figure")
    p.add_argument("--per", type=int, default=64, help="samples per observation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="sample.KEY=VALUE",
                   help="sampler settings for the posterior check, e.g. sample.method=unipc")
    p.add_argument("--skip-likelihood", action="store_true", help="moments and figure only")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--figure", type=Path, default=FIGURE)
    args = p.parse_args()

    exp = build.load_run(args.workdir)
    if any(not s.startswith("sample.") for s in args.set):
        raise SystemExit(f"--set takes sample.* settings only, got {args.set}.")
    cfg, ds = build.check(C.override(exp.cfg, args.set)), exp.ds
    if ds.name != "grf_superres":
        raise SystemExit(f"{args.workdir} is a run on {ds.name!r}; this benchmark needs "
                         f"grf_superres.")
    n = ds.shape[-1]
    out = {"workdir": str(args.workdir), "step": int(exp.state.step), "dim": ds.dim}

    t0 = time.perf_counter()
    y = np.asarray(ds.test_cond[: args.obs], np.float64)  # (M, 1, n, n)
    s_model, nfe = model_samples(exp, cfg, ds.test_cond[: args.obs], args.per, args.seed)
    seconds = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    s_exact = sr.posterior_sample(np.repeat(y[:, None, 0], args.per, axis=1), rng)
    out["moments"] = {"obs": args.obs, "per": args.per, "sampler": cfg.sample.method,
                      "steps": cfg.sample.steps, "nfe": nfe, "seconds": seconds,
                      "entropy": ds.entropy,
                      "model": moments(s_model[:, :, 0], y[:, 0], n),
                      "exact": moments(s_exact, y[:, 0], n)}
    mo = out["moments"]
    print(f"\n{args.workdir} (step {out['step']}): {args.obs} test observations x {args.per} "
          f"samples ({cfg.sample.method}, {cfg.sample.steps} steps, nfe {nfe}, {seconds:.0f} s)")
    print(f"  {'samples':<8}{'RMS(mean - mu)/s':>18}{'<std>/s':>9}{'range over obs':>17}"
          f"{'E log p(x|y)':>15}   (-H = {-ds.entropy:.2f} nats)")
    for who in ("model", "exact"):
        m = mo[who]
        print(f"  {who:<8}{m['mean_err_rms']:18.3f}{m['std_ratio']:9.3f}"
              f"{m['std_ratio_min']:8.3f}-{m['std_ratio_max']:.3f}"
              f"{m['exact_logp']:11.2f} ± {m['exact_logp_stderr']:.2f}")
    print(f"  (a mean of {args.per} exact draws misses mu by 1/sqrt({args.per}) = "
          f"{1 / math.sqrt(args.per):.3f} s in RMS)")

    mu = sr.posterior_mean(y[:, 0])
    title = (f"{cfg.name}: samples given a low-pass (|k| ≤ {sr.CUTOFF:g}) noisy observation, "
             f"model ({cfg.sample.method}, {cfg.sample.steps} steps) vs exact posterior")
    print(f"wrote {figure(y[:, 0], mu, s_model[:, :, 0], s_exact, args.figure, title)}")

    if not args.skip_likelihood:
        gap = likelihood_gap(exp, cfg.likelihood.num if args.num is None else args.num)
        out["likelihood"] = gap
        print(f"\n  NLL gap on {gap['num']} test fields ({gap['settings']}, nfe {gap['nfe']}, "
              f"{gap['seconds']:.0f} s)")
        print(f"  {'model NLL':>12}{'exact NLL':>12}{'entropy':>10}{'gap bits/dim':>14}{'stderr':>9}")
        print(f"  {gap['nll']:12.3f}{gap['true_nll']:12.3f}{gap['entropy']:10.3f}"
              f"{gap['gap_bpd']:14.4f}{gap['gap_bpd_stderr']:9.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
