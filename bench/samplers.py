"""Sample quality of every sampler against exact samples, as a function of score evaluations.

    python bench/samplers.py             # few-step methods at NFE 5/10/20/50, em-1000, pc-1000
    python bench/samplers.py --full      # also em, pc, ddpm at NFE ~5 .. 1000 and the adaptive ode
    python bench/samplers.py --quick     # NFE 5 and 20 only, 4000 samples
    python bench/samplers.py --sde ve    # VE or SubVP instead of VP
    python bench/samplers.py --sets 10   # the mixture yardstick also as a mean over 10 sample sets

Five problems with closed-form scores (`sgm.GaussianMixture`), so the only error is the sampler's:

- "8gauss":  eight Gaussians on a circle in 2-D (`sgm.data.toy.eight_gaussians_mixture`);
- "gauss64": a 64-D Gaussian, means evenly spaced in [-1, 1], stds log-spaced in [0.1, 2];
- "mix8":    three Gaussians in 8-D with unequal stds (0.1, 0.4, 1; weights 0.5, 0.3, 0.2);
- "mix2u", "mix8u": three well-separated Gaussians of unequal widths (stds 0.5, 0.35, 0.25;
  weights 0.5, 0.3, 0.2) in 2-D (means (-2, -1), (2, -1), (0, 2)) and in 8-D (means 1.5 times
  standard normal draws, 6 or more stds apart).

Every sampler runs from the same key (deterministic samplers share one prior draw). The few-step
methods (ddim, heun, dpm2m, dpm3m, unipc, ipndm) run at the step counts that give NFE ~ 5, 10, 20, 50
(heun: 2 N - 1); em and pc run their default 1000 steps (em is the reference of the target
below), and "pc-old" is pc with the former default, one Langevin corrector step at snr 0.16 on
every SDE.
With --full, em, pc and ddpm also run the whole ladder NFE ~ 5 .. 1000 and "ode" is adaptive
Tsit5 with a Tweedie step at the end, swept over rtol = atol. Metrics on n samples:

- sw:   sliced Wasserstein-2 distance to n exact samples, sqrt(mean over L random unit directions of
        the mean squared difference of the sorted projections), same directions for every row;
- mean: RMS over dimensions of (sample mean - true mean) / true std;
- std:  RMS over dimensions of sample std / true std - 1;
- w:    the largest error of the mixture weights, each sample shared among the components by its
        true posterior probabilities (`sgm.analytic.mixture_report`);
- spr:  the largest relative error of a component's spread (its samples' RMS standardised
        distance from its mean: 3% too wide is 0.03);
- xent: the cross-entropy gap E_samples[-log p] - H(p) in nats (0 for exact draws, positive for
        samples too wide or misplaced), with its standard error; H(p) from 10^6 exact draws.

"floor" rows are the same metrics for independent exact sets of n samples (mean over 30 sets,
and their 95th percentile; |xent| for the gap): a sampler cannot be told apart from exact sampling below them. Target: with at most 10 score
evaluations on VP and 20 on SubVP and VE, each few-step method is no worse than em with 1000 steps
(per metric: "yes" if at or below em's value, "exact" if within the 95th percentile of the
exact sets (indistinguishable from exact sampling), "noise" if above em's by less than the floor,
"no" otherwise; both limits are checked on every SDE); and pc at its default 1000 steps within 1.5
floors on the std error of the 64-D Gaussian. "+gits" rows run on levels searched for the score
(`sgm.search_grid`), "+tuned" on those levels tuned for the method (`sgm.tune_grid`), kept only
if they are no worse than the searched ones by the mixture yardstick (its worst ratio to the exact
sets' 95th percentile on 4000 samples of another key; `--no-yardstick`: without that guard).
"ipndm+law" and "ipndm3+law" (orders 4 and 3, NFE <= 20) tune the searched levels on the law
itself (`sgm.analytic.mixture_tuning_loss`: each component's share and spread on 32768 draws
against their accurate solves'), under the same guard.
Table on stdout; JSON in bench/results/samplers.json.
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
import jax.numpy as jnp
import numpy as np

import sgm
import sgm.step_search
from sgm.analytic import mixture_entropy, mixture_report, mixture_tuning_loss
from sgm.data.toy import eight_gaussians_mixture
from sgm.step_search import sliced_w2, unit_directions

RESULTS = Path(__file__).resolve().parent / "results" / "samplers.json"
SDES = {"vp": sgm.VPSDE, "ve": sgm.VESDE, "subvp": sgm.SubVPSDE}
FEW = ("ddim", "heun", "dpm2m", "dpm3m", "unipc", "ipndm")  # the few-step methods
#: methods also run on levels searched for the problem's score (`sgm.step_search`), as "<m>+gits"
SEARCHED = ("ipndm", "unipc", "dpm2m")
SEARCH = {"num": 256, "fine": 100}  # warm-up trajectories and candidate levels of the search
#: methods also run on searched levels tuned for the method by gradient (`sgm.tune_grid`), "<m>+tuned"
TUNED = ("ipndm", "unipc")
#: iPNDM (orders 4 and 3) on searched levels tuned on the mixture's law itself, "<m>+law", at
#: NFE <= LAW_NFE: `sgm.analytic.mixture_tuning_loss` on 32768 fitted draws, full batches
LAW_NFE = 20
LAW = sgm.Tuning(num=40960, held_out=8192, batch=32768, iters=300, lr=0.01, schedule="cosine")
TARGETS = (5, 10, 20, 50)
FULL_TARGETS = (5, 10, 20, 50, 200, 1000)
QUICK_TARGETS = (5, 20)
OLD_PC = {"snr": 0.16, "corrector_steps": 1}  # pc's default before per-SDE correctors
RTOLS = (1e-1, 1e-2, 1e-3, 1e-4)
QUICK_RTOLS = (1e-2,)
FLOOR_SETS = 30
MIX = ("w", "spr", "xent")  # the mixture yardstick's columns
REPORT = {"w": "weight_error", "spr": "spread_error", "xent": "xent_gap"}  # mixture_report's


def problems():
    w, means, std = eight_gaussians_mixture()
    dim = 64
    return {
        "8gauss": sgm.GaussianMixture(w, means, np.full(len(w), std)),
        "gauss64": sgm.GaussianMixture.gaussian(np.linspace(-1.0, 1.0, dim),
                                                np.geomspace(0.1, 2.0, dim)),
        "mix8": sgm.GaussianMixture(np.array([0.5, 0.3, 0.2]),
                                    np.random.default_rng(0).normal(size=(3, 8)) * 1.5,
                                    np.array([0.1, 0.4, 1.0])),
        "mix2u": sgm.GaussianMixture(np.array([0.5, 0.3, 0.2]),
                                     np.array([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]]),
                                     np.array([0.5, 0.35, 0.25])),
        "mix8u": sgm.GaussianMixture(np.array([0.5, 0.3, 0.2]),
                                     np.random.default_rng(0).normal(size=(3, 8)) * 1.5,
                                     np.array([0.5, 0.35, 0.25])),
    }


def true_moments(gm):
    """Mean and per-dimension std of a Gaussian mixture."""
    w = gm.weights[:, None]
    mean = jnp.sum(w * gm.means, 0)
    var = jnp.sum(w * (gm.stds**2 + gm.means**2), 0) - mean**2
    return mean, jnp.sqrt(var)


def metrics(x, exact, dirs, mean, std, gm, entropy):
    mix = mixture_report(gm, x, entropy=entropy)
    out = {**{m: mix[REPORT[m]] for m in MIX}, "xent_se": mix["xent_se"],
           "spreads": mix["spreads"]}
    if not bool(jnp.all(jnp.isfinite(x))):
        return {"sw": math.inf, "mean": math.inf, "std": math.inf, **out}
    return {"sw": float(sliced_w2(x, exact, dirs)),
            "mean": float(jnp.sqrt(jnp.mean(((x.mean(0) - mean) / std) ** 2))),
            "std": float(jnp.sqrt(jnp.mean((x.std(0) / std - 1.0) ** 2))), **out}


def ladder(method, targets):
    """(steps, options) per NFE target; em and pc also get exactly 1000 steps (pc's default runs
    no corrector on VP/SubVP, so its NFE is steps + 1 there and 2 steps + 1 on VE)."""
    if method in ("em", "pc"):
        return [(t - 1, {}) for t in targets if t < 1000] + [(1000, {})]
    if method == "heun":
        return [((t + 1) // 2, {}) for t in targets]
    return [(t, {}) for t in targets]  # ddpm, ddim, dpm2m, unipc: NFE = steps


def plan(targets, full, rtols):
    """(label, method, steps, options) of every row."""
    runs = [(m, m, s, o) for m in FEW for s, o in ladder(m, targets)]
    runs += [(f"{m}+gits", m, s, {"grid": "searched"}) for m in SEARCHED
             for s, _ in ladder(m, targets) if s >= 2]
    runs += [(f"{m}+tuned", m, s, {"grid": "tuned"}) for m in TUNED
             for s, _ in ladder(m, targets) if s >= 2]
    # third-order iPNDM: the order that keeps a mixture's components at 10 evaluations
    runs += [(f"ipndm3{suffix}", "ipndm", s, {"order": 3, **grid})
             for s, _ in ladder("ipndm", targets) for suffix, grid in (("", {}), ("+gits", {"grid": "searched"}),
                                  ("+tuned", {"grid": "tuned"})) if s >= 2 or not grid]
    runs += [(f"ipndm{suffix}+law", "ipndm", s, {**order, "grid": "law"})
             for s, _ in ladder("ipndm", targets) if 2 <= s <= LAW_NFE
             for suffix, order in (("", {}), ("3", {"order": 3}))]
    if full:
        runs = [(m, m, s, o) for m in ("em", "pc", "ddpm") for s, o in ladder(m, FULL_TARGETS)] + runs
        runs += [("ode", "ode", None, {"rtol": r, "atol": r, "denoise": True}) for r in rtols]
    else:
        runs = [("em", "em", 1000, {})] + runs
    runs += [("pc", "pc", 1000, {}), ("pc-old", "pc", 1000, OLD_PC)]
    return list(dict.fromkeys((lab, m, s, tuple(o.items())) for lab, m, s, o in runs))


#: samples of the yardstick that judges tuned levels (`yardstick`), drawn from their own key
YARDSTICK_N = 4000


def yardstick(gm, sde, method, opts, floor_row, entropy):
    """levels -> the mixture yardstick's worst ratio to the exact sets' 95th percentile (weights,
    spreads, cross-entropy gap) for `YARDSTICK_N` samples of `method` on those levels, from a key
    the table's samples do not use: `sgm.tune_grid`'s guard on the law it can see here."""
    score = gm.score(sde)

    def judge(levels):
        x, _ = sgm.sample(score, sde, (gm.dim,), key=jax.random.key(3), num=YARDSTICK_N,
                          method=method, steps=len(levels), grid=jnp.asarray(levels), **opts)
        mix = mixture_report(gm, x, entropy=entropy)
        return max(abs(mix[REPORT[m]]) / floor_row[f"{m}_p95"] for m in MIX)
    return judge


def run_problem(name, gm, sde, n, runs, n_dirs, log, guard=True, sets=1):
    dim = gm.dim
    k_exact, k_floor, k_dirs = jax.random.split(jax.random.key(1), 3)
    exact = gm.sample(k_exact, n)
    dirs = unit_directions(k_dirs, dim, n_dirs)
    mean, std = true_moments(gm)
    score = gm.score(sde)
    entropy = mixture_entropy(gm, key=jax.random.key(5))
    floors = [metrics(gm.sample(k, n), exact, dirs, mean, std, gm, entropy)
              for k in jax.random.split(k_floor, FLOOR_SETS)]
    names = ("sw", "mean", "std", *MIX)
    rows = [dict(problem=name, method="floor", label="floor", steps=None, nfe=0,
                 **{m: float(np.mean([abs(f[m]) for f in floors])) for m in names},
                 **{f"{m}_p95": float(np.percentile([abs(f[m]) for f in floors], 95))
                    for m in names},
                 **{f"{m}_sd": float(np.std([abs(f[m]) for f in floors], ddof=1))
                    for m in MIX})]
    searched = None  # (candidate levels, jump costs) of sgm.step_search, once per problem
    for label, method, steps, opts in runs:
        opts = dict(opts)
        search = {}
        if opts.get("grid") in ("searched", "tuned", "law"):  # levels searched for the score
            if searched is None:  # one search per problem serves every step count
                t0 = time.perf_counter()
                searched = sgm.step_search.search_costs(score, sde, (dim,),
                                                        key=jax.random.key(2), **SEARCH)
                search = {"search_s": time.perf_counter() - t0,
                          "search_nfe": SEARCH["num"] * SEARCH["fine"]}
            levels = sgm.step_search.levels_for(*searched, steps)
            if opts["grid"] in ("tuned", "law"):  # then fitted to the method itself
                t0 = time.perf_counter()
                own = {k: v for k, v in opts.items() if k != "grid"}
                judge = yardstick(gm, sde, method, own, rows[0], entropy) if guard else None
                tuning = (dataclasses.replace(LAW, loss=mixture_tuning_loss(gm))
                          if opts["grid"] == "law" else sgm.Tuning())
                levels = sgm.tune_grid(score, sde, (dim,), levels, key=jax.random.key(2),
                                       method=method, options=own, yardstick=judge,
                                       tuning=tuning)
                search["tune_s"] = time.perf_counter() - t0
            opts["grid"] = levels
        t0 = time.perf_counter()
        own = {k: v for k, v in opts.items() if k != "denoise"}

        def draw(key):
            return sgm.sample(score, sde, (dim,), key=key, num=n, method=method, steps=steps,
                              settings=sgm.SamplerSettings(denoise=opts.get("denoise")), **own)

        x, info = draw(jax.random.key(0))
        x = jax.block_until_ready(x)
        row = dict(problem=name, method=method, label=label, steps=steps, nfe=int(info["nfe"]),
                   options=opts, **metrics(x, exact, dirs, mean, std, gm, entropy),
                   wall_s=time.perf_counter() - t0, **search)
        if sets > 1:  # the mixture yardstick on sets-1 more sample sets of other keys
            more = [mixture_report(gm, draw(jax.random.fold_in(jax.random.key(0), i))[0],
                                   entropy=entropy) for i in range(1, sets)]
            row["sets"] = {m: [row[m]] + [r[REPORT[m]] for r in more] for m in MIX}
        if method == "ode":
            row["rtol"] = opts["rtol"]
        rows.append(row)
        shown = {k: v for k, v in opts.items() if k != "grid" or isinstance(v, str)}
        log(f"{name} {label} steps={steps} {shown or ''} nfe={row['nfe']}")
    return rows


def target_check(rows, limit=20):
    """Few-step methods at their largest NFE <= `limit` against em with 1000 steps, metric by
    metric; pc (default, 1000 steps) against 1.5 floors in the std error."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem]
        floor = next(r for r in mine if r["method"] == "floor")
        em = next(r for r in mine if r["method"] == "em" and r["steps"] == 1000)
        for method in FEW + ("ipndm3", "ipndm3+gits", "ipndm3+tuned", "ipndm+law",
                             "ipndm3+law") + \
                tuple(f"{m}+gits" for m in SEARCHED) + \
                tuple(f"{m}+tuned" for m in TUNED):
            few = [r for r in mine if r["label"] == method and r["nfe"] <= limit]
            if not few:
                continue
            r = max(few, key=lambda r: r["nfe"])
            verdict = {}
            for m in ("sw", "mean", "std"):
                verdict[m] = ("yes" if r[m] <= em[m] else
                              "exact" if r[m] <= floor.get(f"{m}_p95", -1.0) else
                              "noise" if r[m] <= em[m] + abs(floor[m]) else "no")
            out.append(dict(problem=problem, method=method, nfe=r["nfe"], em_nfe=em["nfe"],
                            **{f"{m}": r[m] for m in ("sw", "mean", "std")},
                            **{f"em_{m}": em[m] for m in ("sw", "mean", "std")},
                            verdict=verdict, met=all(v != "no" for v in verdict.values()),
                            limit=limit))
        for label in ("pc", "pc-old") if limit == 20 else ():
            pc = [r for r in mine if r["label"] == label and r["steps"] == 1000]
            if pc:
                std = pc[0]["std"]
                out.append({"problem": problem, "method": label, "nfe": pc[0]["nfe"], "std": std,
                            "floor_std": floor["std"], "ratio": std / floor["std"],
                            "met": std <= 1.5 * floor["std"]})
    return out


def set_mean(r, m):
    """The mean size of metric `m` over a row's sample sets (`--sets`)."""
    return float(np.mean(np.abs(r["sets"][m])))


def floor_check(rows, limit=10):
    """The mixture yardstick at NFE <= `limit`: each method's weights, spreads and cross-entropy
    gap (its size) against the larger of em-1000's and the exact sets' 95th percentile. With
    several sample sets per row (`--sets K`) also their mean size against the larger of
    em-1000's and the exact sets' mean plus two standard errors of a mean of K (sd / sqrt K):
    a bias that one set's luck hides or fakes shows there."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem]
        floor = next(r for r in mine if r["method"] == "floor")
        em = next((r for r in mine if r["method"] == "em" and r["steps"] == 1000), None)
        for label in dict.fromkeys(r["label"] for r in mine):
            few = [r for r in mine if r["label"] == label and 0 < r["nfe"] <= limit]
            if not few or label in ("em", "pc", "pc-old"):
                continue
            r = max(few, key=lambda r: r["nfe"])
            bound = {m: max(floor[f"{m}_p95"], abs(em[m]) if em else 0.0) for m in MIX}
            ok = {m: abs(r[m]) <= bound[m] for m in MIX}
            c = dict(problem=problem, method=label, nfe=r["nfe"], limit=limit,
                     **{m: r[m] for m in MIX}, bound=bound, at_floor=ok, met=all(ok.values()))
            if "sets" in r:
                k = len(r["sets"]["spr"])
                c["sets"] = {m: set_mean(r, m) for m in MIX}
                c["sets_bound"] = {m: max(floor[m] + 2 * floor[f"{m}_sd"] / math.sqrt(k),
                                          set_mean(em, m) if em and "sets" in em else 0.0)
                                   for m in MIX}
                c["sets_met"] = all(c["sets"][m] <= c["sets_bound"][m] for m in MIX)
            out.append(c)
    return out


def print_table(rows):
    for problem in dict.fromkeys(r["problem"] for r in rows):
        print(f"\n{problem}")
        print(f"  {'method':<11}{'steps':>7}{'nfe':>6}{'sw':>9}{'mean':>9}{'std':>9}{'w':>8}"
              f"{'spr':>8}{'xent':>17}{'wall s':>8}")
        for r in rows:
            if r["problem"] != problem:
                continue
            steps = f"{r['rtol']:.0e}" if r["method"] == "ode" else (r["steps"] or "-")
            wall = f"{r['wall_s']:8.1f}" if "wall_s" in r else " " * 8
            se = f"+-{r['xent_se']:.4f}" if "xent_se" in r else " " * 8
            print(f"  {r['label']:<11}{steps:>7}{r['nfe']:>6}{r['sw']:>9.4f}{r['mean']:>9.4f}"
                  f"{r['std']:>9.4f}{r['w']:>8.4f}{r['spr']:>8.4f}{r['xent']:>+9.4f}{se}{wall}")
            if r["method"] == "floor":
                print(f"  {'floor p95':<24}" + "".join(
                    f"{r[m + '_p95']:>{w}.4f}" for m, w in (("sw", 9), ("mean", 9), ("std", 9),
                                                             ("w", 8), ("spr", 8), ("xent", 9))))


def markdown(rows, metric="sw", targets=TARGETS):
    """Markdown table: one row per NFE rung, one column per fixed-step sampler (`metric`, NFE in
    brackets); the 1000-step rows of em/pc that are not on a rung and the adaptive ode's rows
    (one per tolerance) follow on one line each."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem]
        floor = next(r for r in mine if r["method"] == "floor")[metric]
        labels = list(dict.fromkeys(r.get("label", r["method"]) for r in mine
                                    if r["method"] not in ("floor", "ode")))
        by = {m: [r for r in mine if r.get("label", r["method"]) == m] for m in labels}
        ladders = {m: v for m, v in by.items() if len(v) > 1}
        rungs = max((len(v) for v in ladders.values()), default=0)
        targets = FULL_TARGETS if rungs > len(targets) else targets
        out.append(f"\n{problem}: {metric} (NFE), exact-sampling floor {floor:.4f}\n")
        out.append("| NFE about | " + " | ".join(ladders) + " |")
        out.append("|---|" + "---|" * len(ladders))
        for i in range(rungs):
            cells = [f"{v[i][metric]:.4f} ({v[i]['nfe']})" if i < len(v) else ""
                     for v in ladders.values()]
            out.append(f"| {targets[i] if i < len(targets) else '-'} | " + " | ".join(cells) + " |")
        single = [f"{m} {v[0]['steps']} steps: {v[0][metric]:.4f} ({v[0]['nfe']})"
                  for m, v in by.items() if len(v) == 1]
        if single:
            out.append("\n" + "; ".join(single))
        ode = [f"rtol {r['rtol']:.0e}: {r[metric]:.4f} ({r['nfe']})" for r in mine
               if r["method"] == "ode"]
        if ode:
            out.append("\nadaptive ode (Tsit5, rtol = atol): " + "; ".join(ode))
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", choices=("sw", "mean", "std", *MIX), default=None,
                   help="only print a markdown table of this metric from the saved JSON")
    p.add_argument("--quick", action="store_true", help="fewer NFE levels, smaller sample sets")
    p.add_argument("--full", action="store_true", help="em, pc, ddpm and ode over all NFE too")
    p.add_argument("--only", default=None,
                   help="comma-separated labels to run (e.g. unipc,em), the rest are skipped")
    p.add_argument("--sde", choices=list(SDES), default="vp")
    p.add_argument("--problems", default=None,
                   help="comma-separated problems to run (default all: 8gauss, gauss64, mix8, "
                        "mix2u, mix8u)")
    p.add_argument("--n", type=int, default=None,
                   help="samples per set (default 10000, quick 4000)")
    p.add_argument("--dirs", type=int, default=256, help="random directions of the sliced W2")
    p.add_argument("--no-yardstick", action="store_true",
                   help="tune levels without the mixture yardstick's guard (sgm.tune_grid's "
                        "yardstick=): as before it existed")
    p.add_argument("--sets", type=int, default=1,
                   help="sample sets per row (keys 0 .. K-1) for the mixture yardstick's mean "
                        "over sets against the exact sets' (default 1: the table's set alone)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.table:
        saved = json.loads(args.out.read_text())
        print(markdown(saved["rows"], args.table, saved["meta"].get("targets", TARGETS)))
        return
    if args.sets < 1:
        p.error(f"--sets needs at least 1 sample set per row, got {args.sets}")
    n = args.n or (4000 if args.quick else 10000)
    targets, rtols = (QUICK_TARGETS, QUICK_RTOLS) if args.quick else (TARGETS, RTOLS)
    runs = plan(targets, args.full, rtols)
    if args.only:
        keep = set(args.only.split(","))
        runs = [r for r in runs if r[0] in keep]
    sde = SDES[args.sde]()
    start = time.perf_counter()

    def log(what):
        print(f"  [{time.perf_counter() - start:6.1f}s] {what}", flush=True)

    rows = []
    chosen = problems()
    if args.problems:
        unknown = set(args.problems.split(",")) - set(chosen)
        if unknown:
            p.error(f"unknown problems {sorted(unknown)}; expected some of {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.problems.split(",")}
    for name, gm in chosen.items():
        rows += run_problem(name, gm, sde, n, runs, args.dirs, log, guard=not args.no_yardstick,
                            sets=args.sets)
    total = time.perf_counter() - start
    check = target_check(rows, 10) + target_check(rows, 20)

    print(f"\nsamplers on closed-form scores, {args.sde} SDE, n={n} samples, sw over {args.dirs} "
          f"directions, float32; mean/std errors relative to the true per-dimension std")
    print_table(rows)
    print("\ntarget: NFE <= 10 (VP) and <= 20 (SubVP, VE) no worse than em with 1000 steps "
          "(yes / exact = within the exact sets' 95th percentile / noise = within floor of em / "
          "no); pc-1000 std error <= 1.5 floors")
    for c in check:
        met = "met" if c["met"] else "NOT met"
        if "verdict" in c:
            v = " ".join(f"{m}={c['verdict'][m]}" for m in ("sw", "mean", "std"))
            print(f"  {c['problem']:<8}{c['method']:<11} nfe={c['nfe']:<3} sw {c['sw']:.4f} vs "
                  f"{c['em_sw']:.4f}, mean {c['mean']:.4f} vs {c['em_mean']:.4f}, std "
                  f"{c['std']:.4f} vs {c['em_std']:.4f}: {v} -> {met}")
        else:
            print(f"  {c['problem']:<8}{c['method']:<11} nfe={c['nfe']:<4} std {c['std']:.4f} = "
                  f"{c['ratio']:.2f} x floor {c['floor_std']:.4f} -> {met}")
    yard = floor_check(rows, 10) + floor_check(rows, 5)
    print("\nmixture yardstick at NFE <= 10 and <= 5: w, spr, |xent| within max(em-1000, exact "
          "sets' 95th percentile)")
    for c in yard:
        v = " ".join(f"{m} {abs(c[m]):.4f}/{c['bound'][m]:.4f}{'' if c['at_floor'][m] else '!'}"
                     for m in MIX)
        print(f"  {c['problem']:<8}{c['method']:<13} nfe={c['nfe']:<3} {v} -> "
              f"{'at floor' if c['met'] else 'above'}")
        if "sets" in c:
            v = " ".join(f"{m} {c['sets'][m]:.4f}/{c['sets_bound'][m]:.4f}"
                         f"{'' if c['sets'][m] <= c['sets_bound'][m] else '!'}" for m in MIX)
            print(f"  {'':<8}{'mean of sets':<13} {'':<7}{v} -> "
                  f"{'at floor' if c['sets_met'] else 'above'}")
    print(f"total {total:.0f} s")

    meta = {"quick": args.quick, "full": args.full, "targets": targets, "sde": args.sde, "n": n,
            "yardstick_guard": not args.no_yardstick, "yardstick_n": YARDSTICK_N,
            "sets": args.sets, "dirs": args.dirs, "jax": jax.__version__, "backend": jax.default_backend(),
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "load_avg": os.getloadavg(),
            "total_s": total}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "target": check, "yardstick": yard}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
