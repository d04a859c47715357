"""Training recipes on data with a known density: the paired held-out gap of each.

    python bench/sweep.py configs/eight_gaussians.py --recipe "model.prediction=v" --recipe "..."
    python bench/sweep.py configs/checkerboard.py --budget 120 --recipe "" --recipe "..."

Each recipe is a set of `section.field=value` overrides of the config (the empty string is the
config itself). With `--budget S` every recipe trains for S seconds of wall time: its step count
is fitted from a timed run of its own jitted step, so wider networks or costlier losses get
fewer steps (the comparison is at equal wall time, as a user's is). Each trained EMA model is
then scored on the same test points with the config's likelihood settings, next to the exact
density of those points: the gap NLL - exact NLL, with the standard error of the per-point
differences (a paired KL estimate, much less noisy than NLL minus entropy). Every later recipe is
also compared with the first one point by point: the difference of their gaps and its paired
standard error (`vs_first`, `vs_first_stderr`). Each record also holds the training loss every
`train.log_every` steps (`log`), the mean and standard deviation of one sample's term of the
held-out loss estimator (`term_mean`, `term_std`: the bound and the noise the network's gradient
sees per sample), and for a learned schedule its normalised -log SNR n(t) on a grid of t
(`network_time`; the initial schedule is close to n(t) = t). A recipe may also hold
`bench.schedule_lr=S`, which scales a learned schedule's updates by S against the network's
(0 holds the schedule at its initial shape); the JSON keeps each recipe's per-point NLLs.

Table on stdout; JSON in bench/results/sweep_<config name>.json (one record per recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgm import build, parallel, train
from sgm import config as C
from sgm.loss import dsm_loss_per_sample
from sgm.sde import LearnedSchedule

RESULTS = Path(__file__).resolve().parent / "results"


def step_seconds(cfg, n: int = 50, repeats: int = 3) -> float:
    """Seconds per training step of `cfg`: its jitted step on one fixed batch, after compiling,
    the fastest of `repeats` runs of `n` steps (a load spike on a shared machine during one timing
    would otherwise cut that recipe's steps)."""
    exp = build.experiment(cfg)
    loss = functools.partial(build._loss, options=build.loss_options(cfg))
    step = train.make_step(loss, exp.optimizer, exp.preprocess, ema=cfg.train.ema,
                           conditioning=exp.conditioning)
    state = train._copy(parallel.put_replicated(exp.state, parallel.make_mesh()))
    x = jnp.asarray(exp.ds.train[: cfg.train.batch_size])
    for i in range(3):
        state, loss_value = step(state, jnp.copy(x), None, jax.random.key(i))
    loss_value.block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            state, loss_value = step(state, jnp.copy(x), None, jax.random.key(i))
        loss_value.block_until_ready()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def estimator(exp, model, num: int, draws: int = 16) -> tuple[float, float]:
    """Mean and standard deviation of one sample's term of the held-out loss estimator of `model`
    on the first `num` test points, each drawn `draws` times (times, noise)."""
    x = exp.ds.test[:num]
    raw = exp.ds.test_cond[:num] if exp.conditioning.keyword is not None else None
    opts = build.loss_options(exp.cfg, heldout=True)

    @jax.jit
    def terms(key):
        k_pre, k_loss = jax.random.split(key)
        return dsm_loss_per_sample(model, model.sde, exp.preprocess(k_pre, jnp.asarray(x)),
                                   key=k_loss, cond=exp.cond(raw), **opts)

    per = np.concatenate([np.asarray(terms(jax.random.key(k))) for k in range(draws)])
    return float(per.mean()), float(per.std())


def scaled_schedule(exp, scale: float):
    """`exp` whose optimiser scales the updates of its learned schedule's arrays by `scale`."""
    model = exp.state.model
    params = eqx.filter(model, eqx.is_inexact_array)
    mask = eqx.tree_at(lambda m: m.sde.schedule, jax.tree_util.tree_map(lambda _: False, params),
                       jax.tree_util.tree_map(lambda _: True, params.sde.schedule))
    optimizer = optax.chain(exp.optimizer, optax.masked(optax.scale(scale), mask))
    return dataclasses.replace(exp, optimizer=optimizer, state=train.init_state(model, optimizer))


def run(cfg, schedule_lr: float | None = None) -> dict:
    exp = build.experiment(cfg)
    if schedule_lr is not None:
        exp = scaled_schedule(exp, schedule_lr)
    mesh = parallel.make_mesh()
    log = []
    t = time.perf_counter()
    state = exp.train(exp.state, mesh=mesh, on_log=lambda r: log.append([r["step"], r["loss"]]))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    out = exp.heldout_likelihood(state.ema, mesh=mesh, return_draws=True)
    lik_s = time.perf_counter() - t
    x = exp.ds.test[: out["num"]]
    draws = out.pop("draws")[0]
    rec = {"steps": cfg.train.steps, "train_s": train_s, "likelihood_s": lik_s, "nll": out["nll"],
           "nll_stderr": out["nll_stderr"], "true_nll": out.get("true_nll"), "gap": None,
           "gap_stderr": None, "nfe": out["nfe"]}
    if exp.ds.log_prob is not None:  # data without a known density (moons) report the NLL only
        gap = -draws + np.asarray(exp.ds.log_prob(np.asarray(x), None), np.float64)
        rec.update(gap=float(gap.mean()), gap_stderr=float(gap.std() / math.sqrt(gap.size)))
    rec["point_nll"] = (-np.asarray(draws, np.float64)).tolist()
    rec["term_mean"], rec["term_std"] = estimator(exp, state.ema, out["num"])
    rec["log"] = log
    schedule = getattr(state.ema.sde, "schedule", None)
    if isinstance(schedule, LearnedSchedule):
        grid = np.linspace(0.0, 1.0, 11)
        rec["network_time"] = [[float(u), float(schedule.network_time(u))] for u in grid]
    return rec


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of b - a over the same points and its standard error."""
    d = b - a
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--recipe", action="append", default=[], help="space-separated overrides")
    p.add_argument("--budget", type=float, default=None,
                   help="training seconds per recipe (default: the config's steps)")
    p.add_argument("--set", nargs="*", default=[], help="overrides applied to every recipe")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    base = C.override(C.load_file(args.config), args.set)
    rows, first = [], None
    for recipe in args.recipe or [""]:
        sets = [s for s in recipe.split() if not s.startswith("bench.schedule_lr=")]
        lr = [float(s.split("=")[1]) for s in recipe.split() if s.startswith("bench.schedule_lr=")]
        cfg = build.check(C.override(base, sets))
        per_step = None
        if args.budget is not None:
            per_step = step_seconds(cfg)
            steps = max(int(args.budget / per_step), 100)
            cfg = C.override(cfg, [f"train.steps={steps}", f"train.ckpt_every={steps}"])
        rec = {"recipe": recipe or "(config)",
               "step_ms": None if per_step is None else 1e3 * per_step,
               **run(cfg, lr[0] if lr else None)}
        nll = rec["point_nll"]
        nll = np.asarray(nll)
        first = nll if first is None else first
        rec["vs_first"], rec["vs_first_stderr"] = paired(first, nll) if rows else (None, None)
        rows.append(rec)
        gap = "" if rec["gap"] is None else f"gap {rec['gap']:.4f} ± {rec['gap_stderr']:.4f}  "
        vs = "" if rec["vs_first"] is None else (f"vs first {rec['vs_first']:+.4f} ± "
                                                 f"{rec['vs_first_stderr']:.4f}  ")
        print(f"{rec['recipe']:<70} steps {rec['steps']:>6}  train {rec['train_s']:6.1f}s  "
              f"NLL {rec['nll']:.4f} ± {rec['nll_stderr']:.4f}  {gap}{vs}nfe {rec['nfe']}  "
              f"term {rec['term_mean']:.3f} ± {rec['term_std']:.3f}", flush=True)
    out = Path(args.out) if args.out else RESULTS / f"sweep_{base.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "budget_s": args.budget, "set": args.set,
                               "rows": rows}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
