"""One config over several training seeds: how much of a result is the seed.

    python bench/seeds.py configs/tabular.py --seeds 0 1 2 --set data.root=wine.npz
    python bench/seeds.py configs/moons.py --seeds 0 1 2 3 4 --set train.steps=4000 --tag short
    python bench/seeds.py configs/tabular.py --seeds 0 1 2 --set data.root=wine.npz --mode train

Each seed s is the command `python main.py <config> --set <overrides> train.seed=s --workdir
<base>/seed-<s> --mode <mode>`, run in this process (`sgm.run.main`, no progress bars, no density
figure); the base folder defaults to the config's own work directory with `-seeds` (and the tag)
appended, runs/tabular-wine-seeds/ for the first line. Only train.seed changes between seeds: the
data split (data.seed), the sampling and the likelihood estimator's draws stay the same. A work
directory that already holds a run is resumed, so an interrupted command picks up where it
stopped (or a longer train.steps goes on); a base folder holding the runs of another config is
refused (its recipe.json records the config; pass another --tag or --workdir-base).

From each work directory's likelihood.json and summary.json it reports, per seed and as mean ±
standard deviation over seeds (ddof=1): the test NLL in nats per sample and per dimension
(bits/dim too for discrete data), the training seconds, the last step and the step of the best
validation NLL (the checkpoint that was evaluated). The seeds share one process, so the first
seed's training seconds include compilation that later seeds partly reuse. Where the likelihood
phase put classical baselines beside the model (a user's arrays, likelihood.baselines), each
baseline's test NLL per dimension and the paired difference model - baseline per dimension
(negative: the model is better): its mean over seeds ± standard deviation over seeds, and the
mean of the per-seed paired standard errors (the test points' share of the noise; the spread over
seeds is the training's, as the baselines do not depend on train.seed).

Table on stdout; JSON in bench/results/seeds_<name>[_<tag>].json, <name> being the default work
directory's name (the config's name, with the data file's for `data.name=array`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from sgm import build, run
from sgm import checkpoint as ckpt
from sgm.errors import SGMError

RESULTS = Path(__file__).resolve().parent / "results"
#: what each seed reports: from likelihood.json, then from summary.json
LIKELIHOOD_KEYS = ("nll", "nll_per_dim", "bpd", "nll_stderr")
SUMMARY_KEYS = ("train_seconds", "steps", "best_step", "best_eval_nll", "stopped_early",
                "evaluated_step")
#: the config fields a resumed base folder may differ in: a longer run goes on, the seed varies,
#: logging and checkpointing change no result
RESUMABLE = {("train", "steps"), ("train", "seed"), ("train", "log_every"),
             ("train", "ckpt_every")}


def default_base(cfg, tag: str | None = None) -> Path:
    """The default base folder: the config's work directory (`sgm.build.default_workdir`) with
    `-seeds` and `-<tag>` appended."""
    base = build.default_workdir(cfg)
    return base.with_name(base.name + "-seeds" + (f"-{tag}" if tag else ""))


def stop(message: str, code: int = 2):
    """Stops the command: `message` on stderr, exit code `code` (2: bad input, as main.py)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load(config: str, sets) -> object:
    """`build.load`, stopping with its sentence on bad input."""
    try:
        return build.load(config, sets)
    except SGMError as e:
        stop(str(e))


def check_recipe(base: Path, cfg) -> None:
    """Stops (`stop`) if `base` holds the runs of a config other than `cfg` (fields of
    `RESUMABLE` aside; its record `base`/recipe.json is written on first use): resuming them would
    mix two recipes in one result. (config.json in a work directory cannot tell: it holds the
    config as the run resolved it, a batch capped to the training rows, say.)"""
    new = {section: {k: v for k, v in fields.items() if (section, k) not in RESUMABLE}
           if isinstance(fields, dict) else fields
           for section, fields in json.loads(json.dumps(build.to_dict(cfg))).items()}
    path = base / "recipe.json"
    if not path.exists():
        base.mkdir(parents=True, exist_ok=True)
        ckpt.write_atomic(path, json.dumps(new, indent=1) + "\n")
        return
    old = json.loads(path.read_text())
    diff = [f"{section}.{key}: {value!r} here, {old.get(section, {}).get(key)!r} there"
            for section, fields in new.items() if isinstance(fields, dict)
            for key, value in fields.items() if old.get(section, {}).get(key) != value]
    if diff:
        stop(f"{base} holds runs of another config ({'; '.join(diff[:3])}"
             f"{'; ...' if len(diff) > 3 else ''}): pass another --tag or --workdir-base, or "
             f"remove it.")


def read_run(workdir: Path) -> dict:
    """One seed's numbers from `workdir`'s likelihood.json and summary.json (None where a file or
    entry is missing, as after --mode train)."""
    def read(name):
        path = workdir / name
        return json.loads(path.read_text()) if path.exists() else {}

    lik, summary = read("likelihood.json"), read("summary.json")
    rec = {k: lik.get(k) for k in LIKELIHOOD_KEYS}
    if "dequant" not in lik:  # continuous data: bits/dim of a density means little
        rec["bpd"] = None
    rec["num"] = lik.get("num")
    rec.update({k: summary.get(k) for k in SUMMARY_KEYS})
    rec["baselines"] = {name: {k: b.get(k) for k in ("nll_per_dim", "diff", "diff_stderr")}
                        for name, b in lik.get("baselines", {}).items()}
    return rec


def spread(values) -> dict:
    """{"mean", "std"} over the values that are not None (std with ddof=1; None where fewer than
    two values, mean None where none)."""
    v = np.asarray([float(x) for x in values if x is not None], np.float64)
    return {"mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None}


def aggregate(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every number of `read_run`'s records; for each
    baseline its NLL per dimension, the paired difference, and the mean paired standard error."""
    out = {k: spread(r[k] for r in runs)
           for k in (*LIKELIHOOD_KEYS, "train_seconds", "steps", "best_step", "best_eval_nll")}
    out["stopped_early"] = sum(bool(r["stopped_early"]) for r in runs)
    names = [n for n in runs[0]["baselines"]] if runs else []
    out["baselines"] = {}
    for name in names:
        rows = [r["baselines"].get(name, {}) for r in runs]
        stderr = spread(b.get("diff_stderr") for b in rows)["mean"]
        out["baselines"][name] = {"nll_per_dim": spread(b.get("nll_per_dim") for b in rows),
                                  "diff": spread(b.get("diff") for b in rows),
                                  "diff_stderr_mean": stderr}
    return out


def run_seeds(config: str, seeds, *, sets=(), workdir_base=None, mode: str = "all",
              tag: str | None = None) -> dict:
    """Runs `config` with `sets` once per seed in `seeds` (train.seed) into `workdir_base`/seed-s
    (default `default_base`) and gathers the report: {"config", "name" (the default work
    directory's), "set", "seeds", "mode", "workdir_base", "runs": [`read_run` with "seed" and
    "workdir"], "summary": `aggregate`}. Stops (SystemExit) on bad input (2), on another recipe in
    `workdir_base` (2), and at the first seed whose command fails (its exit code)."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        stop(f"--seeds {' '.join(map(str, seeds))} is invalid: expected one or more distinct "
             f"seeds.")
    sets = list(sets)
    cfg = load(config, sets)  # a bad override stops here, before any seed runs
    base = Path(workdir_base) if workdir_base else default_base(cfg, tag)
    check_recipe(base, cfg)
    runs = []
    for i, s in enumerate(seeds):
        workdir = base / f"seed-{s}"
        print(f"== seed {s} -> {workdir}", flush=True)
        rc = run.main(config, sets=[*sets, f"train.seed={s}"], workdir=workdir, mode=mode,
                      progress=False, density_grid=0)
        if rc != 0:
            rest = " ".join(map(str, seeds[i + 1:]))
            rest = f"; seeds {rest} were not run" if rest else ""
            stop(f"seed {s} stopped with exit code {rc} (the message above says why; its work "
                 f"directory is {workdir}){rest}.", rc)
        runs.append({"seed": s, "workdir": str(workdir), **read_run(workdir)})
    return {"config": str(config), "name": build.default_workdir(cfg).name, "set": sets,
            "seeds": seeds, "mode": mode, "workdir_base": str(base), "runs": runs,
            "summary": aggregate(runs)}


def fmt(x, prec: int = 4, sign: bool = False) -> str:
    """A number, or a dash for None."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{prec}f}" if sign else f"{x:.{prec}f}"


def pm(stat: dict, prec: int = 4, sign: bool = False) -> str:
    """`spread`'s dict as "mean ± std" (the mean alone for one seed)."""
    if stat["std"] is None:
        return fmt(stat["mean"], prec, sign)
    return f"{fmt(stat['mean'], prec, sign)} ± {stat['std']:.{prec}f}"


def print_table(report: dict) -> None:
    runs, agg = report["runs"], report["summary"]
    bits = agg["bpd"]["mean"] is not None
    cols = [("NLL (nats)", "nll", 4), ("NLL/dim", "nll_per_dim", 4)]
    cols += [("bits/dim", "bpd", 4)] if bits else []
    cols += [("train s", "train_seconds", 1), ("steps", "steps", 0), ("best step", "best_step", 0)]
    width = 20
    head = f"{'seed':<8}" + "".join(f"{c:>{width}}" for c, _, _ in cols)
    print(head)
    print("-" * len(head))
    for r in runs:
        print(f"{r['seed']:<8}" + "".join(f"{fmt(r[k], p):>{width}}" for _, k, p in cols))
    print(f"{'mean±std':<8}" + "".join(f"{pm(agg[k], p):>{width}}" for _, k, p in cols))
    if agg["stopped_early"]:
        print(f"({agg['stopped_early']} of {len(runs)} stopped early on the validation NLL)")
    if agg["baselines"]:
        print()
        head = (f"{'baseline':<10} {'NLL/dim':>9}  {'model - baseline, nats/dim':>28}  "
                f"{'mean paired s.e.':>16}")
        print(head)
        print("-" * len(head))
        for name, b in agg["baselines"].items():
            print(f"{name:<10} {fmt(b['nll_per_dim']['mean']):>9}  "
                  f"{pm(b['diff'], sign=True):>28}  {fmt(b['diff_stderr_mean']):>16}")
        print("(the difference: mean over seeds ± standard deviation over seeds; negative: the "
              "model is better)")


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"-> {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config file (configs/*.py)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="train.seed values")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides applied to every seed, as main.py's --set")
    p.add_argument("--mode", choices=run.MODES, default="all")
    p.add_argument("--workdir-base", default=None,
                   help="folder of the seeds' work directories seed-<s> (default the config's "
                        "work directory with -seeds[-<tag>] appended)")
    p.add_argument("--tag", default=None, help="names the JSON and the default work directories")
    p.add_argument("--json", default=None, help="where the JSON goes (default "
                   "bench/results/seeds_<name>[_<tag>].json)")
    args = p.parse_args(argv)
    report = run_seeds(args.config, args.seeds, sets=args.set, workdir_base=args.workdir_base,
                       mode=args.mode, tag=args.tag)
    print()
    print_table(report)
    out = Path(args.json) if args.json else RESULTS / (
        f"seeds_{report['name']}" + (f"_{args.tag}" if args.tag else "") + ".json")
    write_json(report, out)


if __name__ == "__main__":
    main()
