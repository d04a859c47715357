"""Sample quality of a trained class-conditional image run, per sampler and number of evaluations.

    python bench/quality.py runs/fashion_mnist_cpu                   # ipndm, unipc, ddim at 10/20/50
    python bench/quality.py RUN --methods ipndm --nfe 10 20 --num 500
    python bench/quality.py RUN --em 100                             # also em-1000 on 100 samples
    python bench/quality.py RUN --searched ipndm --nfe 5 10          # also on searched levels
    python bench/quality.py RUN --tuned ipndm --nfe 10               # and on levels tuned for it
    python bench/quality.py RUN --guidance 0 0.5 1 --methods ipndm   # per guidance weight

For each sampler and step count it draws `--num` conditional samples of the run's EMA model (labels
0, 1, 2, ... cycling; the run's guidance, or each weight of `--guidance` in turn), and scores them
with the offline classifier of `sgm.quality` (trained once on the run's training images and cached): the fraction recognised as
the class they were drawn for, and the Fréchet distance between their classifier features and the
test set's. Each row carries its reference: the same numbers for real training images in the
samples' place (as many, with as many of each class; the mean and standard deviation over
`sgm.quality`'s reference draws), which is where a perfect sampler would land. The "real" row is
one more such draw, scored as if it were samples. Wall time per row is on this machine.
Table on stdout; JSON in bench/results/quality_<run name>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from sgm import build, quality

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="work directory of a finished main.py run")
    p.add_argument("--methods", nargs="+", default=["ipndm", "unipc", "ddim"])
    p.add_argument("--nfe", nargs="+", type=int, default=[10, 20, 50])
    p.add_argument("--num", type=int, default=500, help="samples per few-step row")
    p.add_argument("--em", type=int, default=0,
                   help="also Euler-Maruyama with 1000 steps on this many samples (0: not run)")
    p.add_argument("--searched", nargs="*", default=[], metavar="METHOD",
                   help="also these methods on levels searched for the run's model "
                        "(sgm.search_grid, cached in the run), at the same --nfe")
    p.add_argument("--tuned", nargs="*", default=[], metavar="METHOD",
                   help="also these methods on the searched levels tuned for them "
                        "(sgm.tune_grid, cached in the run), at the same --nfe")
    p.add_argument("--guidance", nargs="+", type=float, default=None, metavar="W",
                   help="classifier-free guidance weights to sample at, each a block of rows "
                        "(default: the run's sample.guidance)")
    p.add_argument("--seed", type=int, default=None,
                   help="the samples' seed (default: the run's sample.seed); another seed, "
                        "another draw of every row, to see the rows' own spread")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    out = args.out or RESULTS / f"quality_{args.run.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_exp = build.load_run(args.run)
    model = run_exp.state.ema
    clf, info = quality.classifier_for(run_exp.ds)
    print(f"classifier: test accuracy {info['test_accuracy']:.4f}")
    rows = []

    def row(exp, label, method, steps, num, x, labels, seconds, nfe, guidance=None):
        """Score one row's samples; `exp` is the run with the row's guidance and seed."""
        s = quality.score(clf, x, labels, exp.ds, test_accuracy=info["test_accuracy"])
        r = dict(label=label, method=method, steps=steps, nfe=nfe, num=num, seconds=seconds,
                 guidance=guidance, seed=exp.cfg.sample.seed,
                 accuracy=s["sample_accuracy"], frechet=s["frechet"],
                 frechet_reference=s["frechet_reference"],
                 frechet_reference_std=s["frechet_reference_std"],
                 reference_accuracy=s["reference_accuracy"])
        rows.append(r)
        out.write_text(json.dumps({  # after every row: a long table stopped early keeps its rows
            "run": str(args.run), "classifier_test_accuracy": info["test_accuracy"],
            "guidance": run_exp.cfg.sample.guidance, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
        print(f"{label:>10} {'' if guidance is None else f'{guidance:g}':>5} {str(steps):>5} "
              f"{nfe:>5} {num:>5} {seconds:8.1f}s  "
              f"acc {r['accuracy']:.3f}  FD {r['frechet']:8.3f}  (real {r['frechet_reference']:.3f} "
              f"± {r['frechet_reference_std']:.3f}, acc {r['reference_accuracy']:.3f})",
              flush=True)

    print(f"{'sampler':>10} {'w':>5} {'steps':>5} {'nfe':>5} {'num':>5} {'time':>9}")
    # real training images in the samples' place, with the samples' labels (0, 1, 2, ... cycling)
    # and another draw than the references `score` averages over
    ds = run_exp.ds
    cycling = np.arange(args.num) % ds.num_classes
    (pick,) = quality.reference_picks(ds, cycling, args.num, seed=1000)
    row(run_exp, "real", None, None, args.num, ds.train[pick], ds.train_cond[pick], 0.0, 0)
    plan = [(m, m, n) for m in args.methods for n in args.nfe]
    plan += [(f"{m}+gits", m, n) for m in args.searched for n in args.nfe]
    plan += [(f"{m}+tuned", m, n) for m in args.tuned for n in args.nfe]
    if args.em:
        plan.append(("em", "em", 1000))
    asked = run_exp.cfg.sample
    weights = [asked.guidance] if args.guidance is None else args.guidance
    seed = asked.seed if args.seed is None else args.seed
    runs = {w: dataclasses.replace(run_exp, cfg=dataclasses.replace(
        run_exp.cfg, sample=dataclasses.replace(asked, guidance=w, seed=seed))) for w in weights}
    for w, (label, method, steps) in ((w, p) for w in weights for p in plan):
        exp = runs[w]
        num = args.em if method == "em" else args.num
        grid = {}
        if label.endswith("+gits"):  # the search's own time is printed apart from the row's
            t0 = time.perf_counter()
            grid["grid"] = exp.searched_grid(model, steps=steps, cache_dir=args.run)
            print(f"  searched {steps} levels in {time.perf_counter() - t0:.1f}s "
                  f"({build.SEARCH_WARMUP * build.SEARCH_CANDIDATES} evaluations, cached in the "
                  f"run): {', '.join(f'{v:.3g}' for v in grid['grid'])}", flush=True)
        if label.endswith("+tuned"):  # the search (if not cached) and the tuning, timed apart
            t0 = time.perf_counter()
            grid["grid"] = exp.tuned_grid(model, method=method, steps=steps, cache_dir=args.run)
            print(f"  tuned {steps} levels in {time.perf_counter() - t0:.1f}s (cached in the "
                  f"run): {', '.join(f'{v:.3g}' for v in grid['grid'])}", flush=True)
        t0 = time.perf_counter()
        x, sinfo, labels = exp.samples(model, num=num, method=method, steps=steps, t_end=None,
                                       **grid)
        x = jax.block_until_ready(x)
        row(exp, label, method, steps, num, np.asarray(x), labels, time.perf_counter() - t0,
            int(sinfo["nfe"]), guidance=w)

    print(f"-> {out}")


if __name__ == "__main__":
    main()
