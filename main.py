"""Train a score model, sample from it and compute test log-likelihoods.

    python main.py                                  # embedded default experiment (eight Gaussians)
    python main.py configs/digits.py --set train.steps=2000 model.base=32
    python main.py configs/moons.py --mode sample --workdir runs/moons

Everything happens in the work directory (default runs/<config name>): config.json (the resolved
config), metrics.jsonl, checkpoints/, samples.npz, likelihood.json, summary.json and figs/ (and
tensorboard/ or wandb/ with train.log_to=jsonl,tensorboard,wandb).
Rerunning the same command resumes from the latest checkpoint. Bad input (an unknown key, a
value out of range, a missing data file, a checkpoint of another model) gives one sentence on
stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "configs" / "eight_gaussians.py"
#: grid points per axis of the 2-D model-density figure, and the likelihood options of its solves
#: (the exact trace is cheap in 2-D; rtol 1e-3 needs ~40% fewer steps than the default 1e-5)
DENSITY_GRID = 64
DENSITY_OPTIONS = {"exact": True, "rtol": 1e-3, "atol": 1e-3}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="config file (configs/*.py)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. train.steps=2000 model.width=128 (the flag "
                        "may be repeated; later values win)")
    p.add_argument("--mode", choices=("train", "sample", "likelihood", "all"), default="all")
    p.add_argument("--workdir", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (training, sampling, likelihood)")
    p.add_argument("--density-grid", type=int, default=DENSITY_GRID, metavar="N",
                   help="2-D data: the model's density on an N x N grid in figs/density.png, from "
                        f"the probability-flow ODE (default {DENSITY_GRID}; 0: no figure)")
    p.add_argument("--coordinator", default=None,
                   help="host:port of process 0 for a multi-host run (or SGM_COORDINATOR)")
    p.add_argument("--num-processes", type=int, default=None, help="processes in a multi-host run")
    p.add_argument("--process-id", type=int, default=None, help="this process's index")
    return p.parse_args(argv)


def run(args) -> int:
    """The command; SIGINT/SIGTERM outside training stop it between steps, with nothing half-written
    (training has its own handler, which checkpoints first)."""
    from sgm.train import stop_on_signals

    with stop_on_signals() as flag, contextlib.ExitStack() as stack:
        return _run(args, flag, stack)


def _run(args, flag, stack) -> int:
    import diffrax

    from sgm import build, parallel, track
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
            stack.enter_context(ckpt.lock_workdir(workdir))  # held until the command ends
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

    # metrics.jsonl / TensorBoard / W&B (train.log_to), on process 0; a resumed run continues them
    trackers = track.Trackers()
    if main_proc:
        trackers = stack.enter_context(track.open_trackers(
            cfg.train.log_to, workdir, start=int(state.step), name=cfg.name, hparams=C.to_dict(cfg)))
    # every process takes part in drawing the samples a figure shows, so decide from the config
    figures_tracked = any(n in ("tensorboard", "wandb") for n in cfg.train.log_to)
    lr_at = build.learning_rate(cfg)
    history = []  # this command's records (the training figure's when there is no metrics.jsonl)
    show = main_proc and not args.no_progress

    def bar(desc, unit):  # a progress bar, or none with --no-progress
        return track.Bar(desc, unit=unit) if show else contextlib.nullcontext()

    # and the steps of each likelihood solve (one batch can take minutes; the 2-D density's
    # many short solves show only their count)
    meter = {"progress_meter": diffrax.TqdmProgressMeter(refresh_steps=5)} if show else {}

    def log(rec):
        if "loss" in rec:  # a training record: add the learning rate of its last update
            rec = {**rec, "lr": float(lr_at(max(rec["step"] - 1, 0)))}
        history.append(rec)
        trackers.scalars(rec["step"], {k: v for k, v in rec.items() if k != "step"})

    if args.mode in ("train", "all"):
        start = int(state.step)

        def on_eval(s, step):
            rec = {"step": step, "eval_loss": exp.heldout_loss(s.ema)}
            lik = exp.heldout_likelihood(s.ema, num=cfg.train.eval_num, mesh=mesh)
            rec.update({"eval_nll": lik["nll"], "eval_bpd": lik["bpd"]})
            log(rec)
            if figures_tracked:  # the samples so far, to TensorBoard / W&B (and figs/eval/)
                x, _, cond = exp.samples(s.ema, num=min(cfg.sample.num, cfg.train.eval_num), mesh=mesh)
                if main_proc:
                    path = workdir / "figs" / "eval" / f"samples_{step:07d}.png"
                    trackers.figure(step, "samples", _sample_figure(
                        plot, ds, x, path, f"{cfg.name}: samples at step {step}", cond))
            return rec

        stop_if_signalled("before training")
        t0 = time.perf_counter()
        state = exp.train(state, mesh=mesh, ckpt_dir=ckpt_dir, on_log=log,
                          on_eval=on_eval, progress=show, metadata={"config": C.to_dict(cfg)})
        earlier = summary.get("train_seconds", 0.0) if start > 0 else 0.0  # resumed: add earlier runs
        summary["train_seconds"] = earlier + time.perf_counter() - t0
        summary["steps"] = int(state.step)
        rec = {"step": int(state.step), "eval_loss": exp.heldout_loss(state.ema)}
        log(rec)
        summary["eval_loss"] = rec["eval_loss"]
        if main_proc:
            rows = track.read_jsonl(metrics_path) if "jsonl" in cfg.train.log_to else history
            plot.training_curves(rows, workdir / "figs" / "training.png", title=cfg.name)

    if args.mode in ("sample", "all"):
        t0 = time.perf_counter()
        with bar(f"sample ({cfg.sample.method})", "step") as b:
            x, info, cond = exp.samples(state.ema, mesh=mesh, progress=b)
        stop_if_signalled("while sampling")
        summary["sample_seconds"] = time.perf_counter() - t0
        summary["sample_nfe"] = int(info["nfe"])
        if main_proc:
            arrays = {"samples": x} if cond is None else {"samples": x, "cond": cond}
            with atomic_open(workdir / "samples.npz") as f:
                np.savez(f, **arrays)
            path = _sample_figure(plot, ds, x, workdir / "figs" / "samples.png",
                                  f"{cfg.name}: samples", cond)
            trackers.figure(int(state.step), "samples", path)
            print(f"samples: {x.shape[0]} with {cfg.sample.method}, nfe {int(info['nfe'])}, "
                  f"{summary['sample_seconds']:.1f}s -> {workdir / 'samples.npz'}")
        if len(ds.shape) == 3:  # images and fields: 8 samples on their way from noise
            t0 = time.perf_counter()
            path = _reverse_figure(plot, exp, state.ema, mesh, workdir / "figs" / "reverse.png",
                                   main_proc)
            summary["reverse_figure_seconds"] = time.perf_counter() - t0
            trackers.figure(int(state.step), "reverse_process", path)

    if args.mode in ("likelihood", "all"):
        t0 = time.perf_counter()
        with bar("likelihood", "pt") as b:
            lik = exp.heldout_likelihood(state.ema, mesh=mesh, progress=b, **meter)
        stop_if_signalled("while computing the likelihood")
        lik["seconds"] = time.perf_counter() - t0
        summary["likelihood"] = lik
        ent = "" if ds.entropy is None else f" (true entropy {ds.entropy:.4f}"
        ent += "" if "true_nll" not in lik else f", exact density on these points {lik['true_nll']:.4f}"
        ent += "" if ds.entropy is None else ")"
        unit = f"{lik['bpd']:.4f} bits/dim" if ds.levels else f"{lik['nll']:.4f} nats{ent}"
        if main_proc:
            write_atomic(workdir / "likelihood.json", json.dumps(lik, indent=2) + "\n")
            trackers.scalars(int(state.step), {"test_nll": lik["nll"], "test_bpd": lik["bpd"]})
            print(f"test NLL on {lik['num']} points: {unit}, nfe {lik['nfe']}, {lik['seconds']:.1f}s")
        if ds.shape == (2,) and exp.conditioning.kind is None and args.density_grid > 0:
            t0 = time.perf_counter()
            with bar("model density", "pt") as b:
                path = _density_figure(plot, exp, state.ema, mesh, lik, args.density_grid,
                                       workdir, main_proc, progress=b)
            summary["density_seconds"] = time.perf_counter() - t0
            stop_if_signalled("while drawing the model density")
            trackers.figure(int(state.step), "density", path)

    if main_proc:
        write_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    parallel.barrier("sgm_main_done")  # processes leave together
    return 0


def _sample_figure(plot, ds, x, path, title, cond=None):
    """The samples figure of `ds`'s kind of data at `path` (None if it has none)."""
    if len(ds.shape) == 1 and ds.shape[0] == 2:
        return plot.scatter_2d(x, path, reference=ds.test[: len(x)], log_prob=ds.log_prob,
                               title=title)
    if len(ds.shape) == 3:
        imgs = x.astype("float32") / (ds.levels - 1) if ds.levels else x
        lo, hi = (0.0, 1.0) if ds.levels else (float(ds.test.min()), float(ds.test.max()))
        nrow = None  # conditions cycle (labels 0, 1, ...; the first 8 test parameters): one a column
        if cond is not None and np.ndim(cond) <= 2:
            nrow = ds.num_classes or 8
            title += f" (column j: {'label j' if ds.num_classes else 'parameters of test field j'})"
        if cond is not None and np.ndim(cond) == 4:  # conditioning images of the first 8 test points
            nrow = min(8, len(imgs))
            title += " (row 1: conditions; column j: samples given condition j)"
            if cond.shape[1:] == imgs.shape[1:]:  # shown first, stretched to the samples' range
                c = np.asarray(cond[:nrow], np.float64)
                c = lo + (hi - lo) * (c - c.min()) / max(float(c.max() - c.min()), 1e-12)
                imgs = np.concatenate([c, imgs[: nrow * (64 // nrow - 1)]])
        num = 64 if nrow is None else nrow * max(1, 64 // nrow)
        return plot.sample_grid(imgs[:num], path, nrow=nrow, lo=lo, hi=hi, title=title)
    return None


def _density_figure(plot, exp, model, mesh, lik, n, workdir, main_proc, progress=None):
    """figs/density.png: samples, the model's density on an n x n grid (probability-flow ODE,
    `DENSITY_OPTIONS`) and the exact one, with the paired NLL gap on the test points."""
    ds = exp.ds
    lim = plot.limits(None, ds.test)  # the same window on every process
    grid = plot.density_grid(lambda p: exp.log_density(model, p, mesh=mesh, progress=progress,
                                                       **DENSITY_OPTIONS), lim, n)
    if not main_proc:
        return None
    try:
        with np.load(workdir / "samples.npz", allow_pickle=False) as f:
            shown = f["samples"]
    except (OSError, KeyError, ValueError):  # no samples drawn yet: the test points
        shown = ds.test[:2000]
    title = f"{exp.cfg.name}: model density (probability-flow ODE, exact trace, rtol 1e-3)"
    if "true_nll" in lik:
        title += (f"\npaired gap on {lik['num']} test points: NLL {lik['nll']:.3f} - exact "
                  f"{lik['true_nll']:.3f} = {lik['nll'] - lik['true_nll']:.3f} nats")
    return plot.model_density_2d(shown, workdir / "figs" / "density.png", model_log_prob=grid,
                                 log_prob=ds.log_prob, lim=lim, n=n, title=title)


def _reverse_figure(plot, exp, model, mesh, path, main_proc):
    """figs/reverse.png: 8 samples at 8 times from t1 to t_end (equally spaced in log-SNR), and
    what each was conditioned on."""
    from sgm import parallel

    ds, s = exp.ds, exp.cfg.sample
    _, info, cond = exp.samples(model, num=8, mesh=mesh, return_path=True)
    traj = parallel.gather(info["path"])[:, :8]  # (T, 8, C, H, W) in model space
    times = np.asarray(info["path_t"])
    idx = plot.pick_frames(np.asarray(model.sde.log_snr(times)), 8)
    if not main_proc:
        return None
    frames = np.asarray(exp.preprocess.inverse(traj[idx]), dtype=np.float64)
    lo, hi = (0.0, float(ds.levels)) if ds.levels else (float(ds.test.min()), float(ds.test.max()))
    labels = None
    if exp.conditioning.kind == "label":
        labels = [f"label {int(c)}" for c in cond]
    elif exp.conditioning.kind == "param":
        labels = ["(" + ", ".join(f"{v:.2g}" for v in np.ravel(c)) + ")" for c in cond]
    elif exp.conditioning.kind == "image":
        labels = cond
    return plot.reverse_process(frames, times[idx], path, lo=lo, hi=hi, conditions=labels,
                                title=f"{exp.cfg.name}: reverse process ({s.method})")


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
