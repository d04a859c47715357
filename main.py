"""Train a score model, sample from it and compute test log-likelihoods.

    python main.py                                  # embedded default experiment (eight Gaussians)
    python main.py configs/digits.py --set train.steps=2000 model.base=32
    python main.py configs/moons.py --mode sample --workdir runs/moons

Everything happens in the work directory (default runs/<config name>): config.json (the resolved
config), metrics.jsonl, checkpoints/, samples.npz, likelihood.json, summary.json and figs/.
Rerunning the same command resumes from the latest checkpoint. Bad input (an unknown key, a
value out of range, a missing data file, a checkpoint of another model) gives one sentence on
stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "configs" / "eight_gaussians.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="config file (configs/*.py)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. train.steps=2000 model.width=128 (the flag "
                        "may be repeated; later values win)")
    p.add_argument("--mode", choices=("train", "sample", "likelihood", "all"), default="all")
    p.add_argument("--workdir", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--coordinator", default=None,
                   help="host:port of process 0 for a multi-host run (or SGM_COORDINATOR)")
    p.add_argument("--num-processes", type=int, default=None, help="processes in a multi-host run")
    p.add_argument("--process-id", type=int, default=None, help="this process's index")
    return p.parse_args(argv)


def read_metrics(path: Path, upto: int | None = None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if upto is None or r.get("step", 0) <= upto]


def run(args) -> int:
    """The command; SIGINT/SIGTERM outside training stop it between steps, with nothing half-written
    (training has its own handler, which checkpoints first)."""
    from sgm.train import stop_on_signals

    with stop_on_signals() as flag:
        return _run(args, flag)


def _run(args, flag) -> int:
    from sgm import build, parallel
    from sgm import checkpoint as ckpt
    from sgm import config as C
    from sgm.checkpoint import atomic_open, write_atomic
    from sgm.errors import CheckpointError
    from sgm.train import Interrupted

    def stop_if_signalled(when):
        if flag["stop"] is not None:
            raise Interrupted(f"stopped by signal {flag['stop']} {when}; every file written so far "
                              f"is complete.")

    cfg = build.check(C.override(C.load_file(args.config), args.set))
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = parallel.make_mesh()
    parallel.check_batch(cfg.train.batch_size, mesh)
    main_proc = parallel.is_main_process()  # only process 0 writes
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    ckpt_dir = workdir / "checkpoints"
    need = args.mode in ("sample", "likelihood")
    exp = build.experiment(cfg, ckpt_dir=ckpt_dir, need_checkpoint=need)

    # Input is valid: from here on files are written, by process 0 only, under the lock.
    ready = not main_proc
    try:
        if main_proc:
            workdir.mkdir(parents=True, exist_ok=True)
            lock = ckpt.lock_workdir(workdir)  # noqa: F841 (held until the process ends)
            ckpt.remove_leftovers(workdir)
            ckpt.remove_leftovers(ckpt_dir)
            if ckpt.latest(ckpt_dir) != exp.checkpoint:  # another run wrote one meanwhile
                exp = build.experiment(cfg, ckpt_dir=ckpt_dir, need_checkpoint=need)
            (workdir / "figs").mkdir(exist_ok=True)
            write_atomic(workdir / "config.json", C.to_json(cfg) + "\n")
            ready = True
    except OSError as e:
        raise CheckpointError(f"cannot write to work directory {workdir}: {e.strerror}.") from None
    finally:
        parallel.agree(ready, f"prepare the work directory {workdir}")
    state, ds = exp.state, exp.ds
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"config": cfg.name, "dataset": ds.name, "entropy": ds.entropy})
    metrics_path = workdir / "metrics.jsonl"
    from sgm import plot

    def log(rec):
        if main_proc:  # strict JSON: a non-finite value is logged as null
            rec = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec, allow_nan=False) + "\n")

    if args.mode in ("train", "all"):
        start = int(state.step)
        if main_proc:  # drop what an interrupted run logged past its last checkpoint
            rows = read_metrics(metrics_path, upto=start)
            write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

        def on_eval(s, step):
            rec = {"step": step, "eval_loss": exp.heldout_loss(s.ema)}
            lik = exp.heldout_likelihood(s.ema, num=cfg.train.eval_num, mesh=mesh)
            rec.update({"eval_nll": lik["nll"], "eval_bpd": lik["bpd"]})
            log(rec)
            return rec

        stop_if_signalled("before training")
        t0 = time.perf_counter()
        state = exp.train(state, mesh=mesh, ckpt_dir=ckpt_dir, on_log=log,
                          on_eval=on_eval, progress=main_proc and not args.no_progress,
                          metadata={"config": C.to_dict(cfg)})
        earlier = summary.get("train_seconds", 0.0) if start > 0 else 0.0  # resumed: add earlier runs
        summary["train_seconds"] = earlier + time.perf_counter() - t0
        summary["steps"] = int(state.step)
        rec = {"step": int(state.step), "eval_loss": exp.heldout_loss(state.ema)}
        log(rec)
        summary["eval_loss"] = rec["eval_loss"]
        if main_proc:
            plot.training_curves(read_metrics(metrics_path), workdir / "figs" / "training.png")

    if args.mode in ("sample", "all"):
        t0 = time.perf_counter()
        x, info, cond = exp.samples(state.ema, mesh=mesh)
        stop_if_signalled("while sampling")
        summary["sample_seconds"] = time.perf_counter() - t0
        summary["sample_nfe"] = int(info["nfe"])
        if main_proc:
            arrays = {"samples": x} if cond is None else {"samples": x, "cond": cond}
            with atomic_open(workdir / "samples.npz") as f:
                np.savez(f, **arrays)
            _sample_figure(plot, ds, x, workdir / "figs" / "samples.png", cfg.name)
            print(f"samples: {x.shape[0]} with {cfg.sample.method}, nfe {int(info['nfe'])}, "
                  f"{summary['sample_seconds']:.1f}s -> {workdir / 'samples.npz'}")

    if args.mode in ("likelihood", "all"):
        t0 = time.perf_counter()
        lik = exp.heldout_likelihood(state.ema, mesh=mesh)
        stop_if_signalled("while computing the likelihood")
        lik["seconds"] = time.perf_counter() - t0
        summary["likelihood"] = lik
        ent = "" if ds.entropy is None else f" (true entropy {ds.entropy:.4f}"
        ent += "" if "true_nll" not in lik else f", exact density on these points {lik['true_nll']:.4f}"
        ent += "" if ds.entropy is None else ")"
        unit = f"{lik['bpd']:.4f} bits/dim" if ds.levels else f"{lik['nll']:.4f} nats{ent}"
        if main_proc:
            write_atomic(workdir / "likelihood.json", json.dumps(lik, indent=2) + "\n")
            print(f"test NLL on {lik['num']} points: {unit}, nfe {lik['nfe']}, {lik['seconds']:.1f}s")

    if main_proc:
        write_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    parallel.barrier("sgm_main_done")  # processes leave together
    return 0


def _sample_figure(plot, ds, x, path, name):
    if len(ds.shape) == 1 and ds.shape[0] == 2:
        plot.scatter_2d(x, path, reference=ds.test[: len(x)], log_prob=ds.log_prob,
                        title=f"{name}: samples")
    elif len(ds.shape) == 3:
        imgs = x.astype("float32") / (ds.levels - 1) if ds.levels else x
        lo, hi = (0.0, 1.0) if ds.levels else (float(ds.test.min()), float(ds.test.max()))
        plot.sample_grid(imgs[:64], path, lo=lo, hi=hi, title=f"{name}: samples")


def main(argv=None) -> int:
    args = parse_args(argv)
    from sgm.errors import SGMError
    from sgm.train import Interrupted

    try:
        return run(args)
    except SGMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. disk full while writing figures, metrics, samples, summary
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; every file already written is complete.",
              file=sys.stderr)
        return 2
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C outside training (sampling, likelihood): nothing half-written
        print("interrupted; outputs written so far are complete.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
