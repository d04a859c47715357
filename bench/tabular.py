"""Two real tables as sgm array files, and the classical density baselines on them.

    python bench/tabular.py                  # writes bench/results/tabular/{wine,breast_cancer}.npz
    python bench/tabular.py --baselines      # also fits the baselines: a table, and JSON in
                                             # bench/results/tabular.json (seconds)
    python main.py --set data.name=array data.root=bench/results/tabular/wine.npz ...
    python bench/tabular.py --train          # also trains configs/tabular.py on each table over
                                             # --seeds (default 0 1 2): a table, and JSON in
                                             # bench/results/tabular_train.json
    python bench/tabular.py --train --set train.lr=3e-4 --tag lr3e-4   # another recipe

The tables are scikit-learn's bundled wine (178 x 13) and breast-cancer (569 x 30) features
(labels dropped), shuffled with `--seed` and split 80/20 into `x` (training) and `x_test`, stored
as float32 in data units (not standardised: sgm standardises with the training split itself).

`--baselines` reads each file back through `sgm.data.load`, so the baselines see exactly the
training, validation and test rows a run with `data.val_fraction = --val-fraction` sees, and fits
`sgm.baselines` (a full-covariance Gaussian, a Gaussian mixture with its number of components
chosen on the validation split, a Gaussian KDE with its bandwidth chosen there). The table gives
each baseline's test NLL per dimension in data units, with its standard error, and the same in
the training split's standardised units (data units minus the mean log standard deviation of the
columns, the units sgm's network sees).

`--train` runs `bench/seeds.py`'s `run_seeds` on each table: configs/tabular.py with
`data.root=<table>`, the `--set` overrides, and train.seed in turn each of `--seeds`, into
`--out`/runs/<table>[-<tag>]/seed-<s> (an existing run of the same recipe is resumed, another
recipe refused: give it a `--tag`). Each run's likelihood phase fits the baselines on its own
split. One row per table: the model's test NLL per dimension (mean ± standard deviation over
seeds), each baseline's, the paired difference model - best baseline per dimension (the baseline
with the lowest test NLL, the strictest comparison; negative: the model is better) as mean over
seeds ± standard deviation over seeds with the mean of the per-seed paired standard errors, the
mean training seconds of one seed, and each seed's last step and best-validation step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine

from sgm import baselines, data

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONFIG = HERE.parent / "configs" / "tabular.py"
TABLES = {"wine": load_wine, "breast_cancer": load_breast_cancer}
TEST_FRACTION = 0.2


def write_tables(out: Path, seed: int) -> dict[str, Path]:
    """Writes every table of `TABLES` as `out/<name>.npz` (keys x, x_test); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, loader in TABLES.items():
        x = loader().data.astype(np.float32)
        perm = np.random.default_rng(seed).permutation(x.shape[0])
        n_test = round(TEST_FRACTION * x.shape[0])
        test, train = perm[:n_test], perm[n_test:]
        paths[name] = out / f"{name}.npz"
        np.savez(paths[name], x=x[train], x_test=x[test])
        print(f"{name}: {train.size} training and {test.size} test rows of {x.shape[1]} columns "
              f"-> {paths[name]}")
    return paths


def fit_table(path: Path, val_fraction: float, seed: int) -> dict:
    """The baselines' report on one array file, split as sgm splits it."""
    # the validation rows are the ones sgm sets aside for data.val_fraction (sgm.data.load), so a
    # model trained with the same data.val_fraction is held against baselines fitted on its rows
    ds = data.load("array", root=path, val_fraction=val_fraction)
    start = time.perf_counter()
    fits = baselines.fit_baselines(ds.train, ds.val, seed=seed)
    fit_s = time.perf_counter() - start
    rep = baselines.report(fits, ds.test)
    mean_log_std = float(np.log(fits["gaussian"].std).mean())
    for row in rep.values():
        row["nll_per_dim_standardised"] = row["nll_per_dim"] - mean_log_std
    return {"path": str(path), "n_train": int(ds.train.shape[0]), "n_val": int(ds.val.shape[0]),
            "n_test": int(ds.test.shape[0]), "dim": int(ds.train.shape[1]),
            "mean_log_std": mean_log_std, "fit_s": fit_s, "baselines": rep}


def print_table(results: dict) -> None:
    head = (f"{'table':<14} {'D':>3} {'train/val/test':>15}  {'baseline':<9} "
            f"{'NLL/dim (data)':>18} {'NLL/dim (std)':>14}  chosen")
    print(head)
    print("-" * len(head))
    for name, t in results.items():
        split, dim = f"{t['n_train']}/{t['n_val']}/{t['n_test']}", str(t["dim"])
        for b, row in t["baselines"].items():
            h = row["hyper"]
            chosen = (f"k={h['n_components']}" if b == "gmm" else
                      f"h={h['bandwidth']:.3f}" if b == "kde" else
                      f"ridge={h['ridge']:g}")
            print(f"{name:<14} {dim:>3} {split:>15}  {b:<9} "
                  f"{row['nll_per_dim']:>9.4f} ± {row['nll_stderr']:.4f} "
                  f"{row['nll_per_dim_standardised']:>14.4f}  {chosen}")
            name, split, dim = "", "", ""  # on the table's first row only


def seeds_module():
    """bench/seeds.py as a module (bench/ is no package, and this file may be imported from
    anywhere)."""
    if "bench_seeds" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_seeds", HERE / "seeds.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_seeds"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_seeds"]


def train_tables(paths: dict[str, Path], seeds, *, sets=(), runs: Path,
                 tag: str | None = None) -> dict:
    """configs/tabular.py on every table over `seeds` (`seeds.run_seeds`), work directories in
    `runs`/<table>[-<tag>]/seed-<s>; returns {table: the seeds report, with "dim" and
    "best_baseline"}."""
    bench_seeds = seeds_module()
    results = {}
    for name, path in paths.items():
        print(f"\n=== {name}", flush=True)
        rep = bench_seeds.run_seeds(str(CONFIG), seeds, sets=[f"data.root={path}", *sets],
                                    workdir_base=runs / (name + (f"-{tag}" if tag else "")))
        print()
        bench_seeds.print_table(rep)
        with np.load(path) as f:
            rep["dim"] = int(f["x"].shape[1])
        b = rep["summary"]["baselines"]
        rep["best_baseline"] = min(b, key=lambda k: b[k]["nll_per_dim"]["mean"]) if b else None
        results[name] = rep
    return results


def print_train_table(results: dict) -> None:
    pm, fmt = seeds_module().pm, seeds_module().fmt
    names = sorted({b for r in results.values() for b in r["summary"]["baselines"]},
                   key=baselines.NAMES.index)
    head = (f"{'table':<14} {'D':>3}  {'model NLL/dim':>17} " + "".join(f"{n:>9}" for n in names)
            + f"  {'best':<9}{'model - best':>18} {'s.e.':>7}  {'train s':>8}  steps (best)")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        agg = r["summary"]
        best = r["best_baseline"]
        cells = "".join(f"{fmt(agg['baselines'][n]['nll_per_dim']['mean']):>9}"
                        if n in agg["baselines"] else f"{'-':>9}" for n in names)
        diff = (f"{best or '-':<9}{pm(agg['baselines'][best]['diff'], sign=True):>18} "
                f"{fmt(agg['baselines'][best]['diff_stderr_mean']):>7}" if best else
                f"{'-':<9}{'-':>18} {'-':>7}")
        steps = " ".join(f"{x['steps']}({x['best_step']})" for x in r["runs"])
        print(f"{name:<14} {r['dim']:>3}  {pm(agg['nll_per_dim']):>17} {cells}  {diff}  "
              f"{fmt(agg['train_seconds']['mean'], 1):>8}  {steps}")
    print(f"(NLL per dimension in data units, nats; mean ± standard deviation over seeds "
          f"{' '.join(map(str, next(iter(results.values()))['seeds']))}; s.e.: the mean paired "
          f"standard error of one seed; train s: one seed's)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(RESULTS / "tabular"), help="folder of the npz files")
    p.add_argument("--seed", type=int, default=0, help="shuffle of the rows; the baselines' seed")
    p.add_argument("--baselines", action="store_true", help="fit the baselines on every table")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="the part of the training rows used for validation: pass the "
                        "data.val_fraction of the runs the baselines are compared with")
    p.add_argument("--json", default=str(RESULTS / "tabular.json"), help="where --baselines "
                   "writes its JSON")
    p.add_argument("--train", action="store_true",
                   help="train configs/tabular.py on every table over --seeds")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="--train: the train.seed values (default 0 1 2)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="--train: overrides of configs/tabular.py for every run")
    p.add_argument("--tag", default=None, help="--train: names the recipe's work directories "
                   "(--out/runs/<table>-<tag>) and JSON (tabular_train_<tag>.json)")
    args = p.parse_args(argv)
    paths = write_tables(Path(args.out), args.seed)
    if args.baselines:
        fit_and_report(paths, args)
    if args.train:
        results = train_tables(paths, args.seeds, sets=args.set, runs=Path(args.out) / "runs",
                               tag=args.tag)
        print()
        print_train_table(results)
        out = RESULTS / ("tabular_train" + (f"_{args.tag}" if args.tag else "") + ".json")
        seeds_module().write_json({"seeds": args.seeds, "set": args.set, "tag": args.tag,
                                   "shuffle_seed": args.seed, "tables": results}, out)


def fit_and_report(paths: dict[str, Path], args) -> None:
    """--baselines: the baselines of every table, a table and the JSON."""
    results = {name: fit_table(path, args.val_fraction, args.seed) for name, path in paths.items()}
    print()
    print_table(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seed": args.seed, "val_fraction": args.val_fraction,
                               "test_fraction": TEST_FRACTION, "tables": results}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
