"""Cost of a training step with a learned noise schedule, against the fixed schedule's.

    python bench/learned_schedule.py [--config configs/eight_gaussians.py] [--seconds 10]

Times, in one run and in alternation (so a shared machine's load hits all alike), the jitted
training step (loss, gradient, Adam update, EMA; `sgm.train.make_step`) of the config's network
and batch for:

- "fixed + IS": the config's fixed schedule with importance-sampled times;
- "learned, two passes": a learned schedule by two passes of the network (the bound with the
  schedule held fixed, then the second moment with everything else held fixed);
- "learned, per-sample copies": one pass of the network in which every sample evaluates its own
  copy of the schedule's network, differentiated per sample;
- "learned, fused": one pass of the network in which every sample sees the schedule through two
  numbers, n(t_i) and n'(t_i), from one batched evaluation of the schedule (`dsm_loss`).

The schedule is VDM's monotone network with 1024 hidden units: on a small MLP its batched
evaluation and gradient are a visible part of the step.

Prints the best and median time per step and the ratios of the best times to the first row's;
JSON in bench/results/learned_schedule.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sgm import build, parallel, train
from sgm import config as C
from sgm.loss import _draws, _options, _schedule_mask, _term, _two_pass_loss, dsm_loss

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "learned_schedule.json"


def _copies_loss(model, sde, x0, *, key, **options):
    """The fused objective with a copy of the schedule's arrays per sample (broadcast along the
    batch): one pass of the network, the schedule differentiated once per sample."""
    return _copies_mean((model, sde), _schedule_mask((model, sde)), x0, key, options)


def _copies_parts(pair, mask, x0, key, options):
    options = dict(options)
    cond = options.pop("cond", None)
    options = _options(options)
    tree_map, float_ = jax.tree_util.tree_map, eqx.is_inexact_array
    sched_mask = tree_map(lambda a, m: bool(m) and float_(a), pair, mask)
    rest_mask = tree_map(lambda a, m: not m and float_(a), pair, mask)
    sched, rest = eqx.filter(pair, sched_mask), eqx.filter(pair, rest_mask)
    other = eqx.filter(pair, tree_map(lambda a, b: not (a or b), sched_mask, rest_mask))
    stacked = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (x0.shape[0], *a.shape)), sched)
    draws, scale = _draws(pair[1], x0, key, cond, options)

    def terms(rest, stacked):
        def one(sched_i, *d):
            return _term(*eqx.combine(sched_i, rest, other), *d, **options)

        return jax.vmap(one)(stacked, *draws) * scale

    return terms, rest, stacked


@eqx.filter_custom_vjp
def _copies_mean(pair, mask, x0, key, options):
    return dsm_loss(*pair, x0, key=key, **options)


@_copies_mean.def_fwd
def _copies_fwd(perturbed, pair, mask, x0, key, options):
    terms, rest, stacked = _copies_parts(pair, mask, x0, key, options)
    per, pullback = jax.vjp(terms, rest, stacked)
    return jnp.mean(per), (per, pullback)


@_copies_mean.def_bwd
def _copies_bwd(residuals, grad_obj, perturbed, pair, mask, x0, key, options):
    per, pullback = residuals
    g_rest, g_stacked = pullback(jnp.full(per.shape, grad_obj / per.shape[0], per.dtype))
    return eqx.combine(g_rest, jax.tree_util.tree_map(lambda a: jnp.tensordot(per, a, axes=1),
                                                      g_stacked))


def _loss_fn(loss, options, model, x, cond, key):
    return loss(model, model.sde, x, key=key, cond=cond, **options)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "eight_gaussians.py"))
    p.add_argument("--seconds", type=float, default=10.0, help="timing per row, in rounds of 0.5 s")
    args = p.parse_args(argv)

    base = C.load_file(args.config)
    fixed = ["train.weighting=likelihood", "train.importance=true"]
    learned = ["sde.schedule=learned", "train.weighting=likelihood", "train.importance=false"]
    cases = {"fixed + IS": (fixed, dsm_loss), "learned, two passes": (learned, _two_pass_loss),
             "learned, per-sample copies": (learned, _copies_loss),
             "learned, fused": (learned, dsm_loss)}
    mesh = parallel.make_mesh()
    runs = {}
    for name, (sets, loss) in cases.items():
        cfg = build.check(C.override(base, sets))
        exp = build.experiment(cfg)
        step = train.make_step(functools.partial(_loss_fn, loss, build.loss_options(cfg)),
                               exp.optimizer, exp.preprocess, ema=cfg.train.ema,
                               conditioning=exp.conditioning)
        x = jnp.asarray(exp.ds.train[: cfg.train.batch_size])
        state = train._copy(parallel.put_replicated(exp.state, mesh))
        t0 = time.perf_counter()
        state, value = step(state, jnp.copy(x), None, jax.random.key(0))
        value.block_until_ready()
        runs[name] = dict(step=step, state=state, x=x, compile_s=time.perf_counter() - t0, times=[])
    rounds = max(1, int(args.seconds / 0.5))
    for _ in range(rounds):  # alternate, half a second each
        for r in runs.values():
            end = time.perf_counter() + 0.5
            while time.perf_counter() < end:
                x = jnp.copy(r["x"])
                x.block_until_ready()
                t0 = time.perf_counter()
                r["state"], value = r["step"](r["state"], x, None, jax.random.key(len(r["times"])))
                value.block_until_ready()
                r["times"].append(time.perf_counter() - t0)
    first = min(next(iter(runs.values()))["times"])
    rows = []
    print(f"{'objective':<28} {'best ms':>8} {'median ms':>9} {'x fixed':>8} {'compile s':>9}")
    for name, r in runs.items():
        best, median = min(r["times"]), float(np.median(r["times"]))
        rows.append(dict(objective=name, ms_per_step=1e3 * best, ratio=best / first,
                         median_ms=1e3 * median, compile_s=r["compile_s"],
                         steps_timed=len(r["times"])))
        print(f"{name:<28} {1e3 * best:>8.2f} {1e3 * median:>9.2f} {best / first:>8.2f} "
              f"{r['compile_s']:>9.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"config": args.config, "cpus": os.cpu_count(),
                                   "seconds_per_row": rounds * 0.5, "rows": rows}, indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
