"""Cost of a training step with a learned noise schedule: two passes against one fused pass.

    python bench/learned_schedule.py [--config configs/eight_gaussians.py] [--seconds 5]

Times, in one run and in alternation (so a shared machine's load hits all alike), the jitted
value-and-gradient of the training objective of the config's network and batch for:

- "fixed + IS": the config's fixed schedule with importance-sampled times;
- "learned, two passes": a learned schedule by two passes (the bound with the schedule held fixed,
  then the second moment with everything else held fixed), how `dsm_loss` computed it before;
- "learned, fused": a learned schedule by one forward and one backward pass (`dsm_loss` now).

Prints the best time per step and the ratios to the first row; JSON in
bench/results/learned_schedule.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from sgm import build
from sgm import config as C
from sgm.loss import _two_pass_loss, dsm_loss

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "learned_schedule.json"


def step_fn(loss, options):
    @eqx.filter_jit
    def step(model, x, key):
        return eqx.filter_value_and_grad(lambda m: loss(m, m.sde, x, key=key, **options))(model)

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "eight_gaussians.py"))
    p.add_argument("--seconds", type=float, default=5.0, help="timing per row, in rounds of 0.5 s")
    args = p.parse_args(argv)

    base = C.load_file(args.config)
    cases = {
        "fixed + IS": (C.override(base, ["train.weighting=likelihood", "train.importance=true"]),
                       dsm_loss),
        "learned, two passes": (C.override(base, ["sde.schedule=learned",
                                                  "train.weighting=likelihood",
                                                  "train.importance=false"]), _two_pass_loss),
        "learned, fused": (C.override(base, ["sde.schedule=learned", "train.weighting=likelihood",
                                             "train.importance=false"]), dsm_loss),
    }
    runs = {}
    for name, (cfg, loss) in cases.items():
        exp = build.experiment(build.check(cfg))
        x = exp.preprocess(jax.random.key(1), exp.ds.train[: cfg.train.batch_size])
        opts = build.loss_options(cfg)
        step = step_fn(loss, opts)
        model, key = exp.state.model, jax.random.key(0)
        t0 = time.perf_counter()
        jax.block_until_ready(step(model, x, key))
        runs[name] = dict(fn=lambda s=step, m=model, x=x, k=key: s(m, x, k),
                          compile_s=time.perf_counter() - t0, times=[])
    rounds = max(1, int(args.seconds / 0.5))
    for _ in range(rounds):  # alternate, half a second each
        for r in runs.values():
            end = time.perf_counter() + 0.5
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                jax.block_until_ready(r["fn"]())
                r["times"].append(time.perf_counter() - t0)
    first = min(next(iter(runs.values()))["times"])
    rows = []
    print(f"{'objective':<22} {'ms/step':>8} {'x fixed':>8} {'compile s':>9}")
    for name, r in runs.items():
        best = min(r["times"])
        rows.append(dict(objective=name, ms_per_step=1e3 * best, ratio=best / first,
                         median_ms=1e3 * float(np.median(r["times"])), compile_s=r["compile_s"],
                         steps_timed=len(r["times"])))
        print(f"{name:<22} {1e3 * best:>8.2f} {best / first:>8.2f} {r['compile_s']:>9.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"config": args.config, "cpus": os.cpu_count(), "rows": rows},
                                  indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
