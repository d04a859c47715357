"""The phases of a command: prepare the work directory, train, sample, likelihood, figures, summary.

`main` is `python main.py` without its argument parsing: it runs `command` and turns what stops
it into an exit code. `command` loads and checks the config once (`build.load`), builds the
`build.Experiment` once and runs the phases its mode asks for. Each phase is a function of the
experiment, the device mesh and explicit arguments. Files go to the work directory, written by
process 0 only (`main_process`), each one whole or not at all:

    config.json       the resolved config                      `prepare_workdir`
    checkpoints/      the train state on train.ckpt_every       `train_phase`
    metrics.jsonl     training and held-out records (and tensorboard/, wandb/ with train.log_to)
    samples.npz       samples, and their conditions             `sample_phase`
    grid-*.npz        the search of sample.grid=searched/tuned   `build.Experiment.searched_grid`
    grid-tuned-*.npz  the levels of sample.grid=tuned            `build.Experiment.tuned_grid`
    likelihood.json   the held-out likelihood                   `likelihood_phase`
    summary.json      times, NFEs, losses, the likelihood       `read_summary`, `write_summary`
    figs/             training.png, samples.png, reverse.png (images and fields), density.png (2-D)

matplotlib is loaded (by `sgm.plot`) only when a figure is drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import diffrax
import numpy as np

from . import build, parallel, quality, track, train
from . import checkpoint as ckpt
from .errors import CheckpointError, ConfigError, DataError, NumericalError, SGMError
from .likelihood import combine_dequantised

MODES = ("train", "sample", "likelihood", "all")
#: the checkpoint the sample and likelihood phases evaluate: the best on the validation split
#: (`train.BestCheckpoint`, where the run evaluated during training) or the newest
CHECKPOINTS = ("best", "latest")
#: grid points per axis of the 2-D model-density figure, and the likelihood options of its solves
#: (the exact trace is cheap in 2-D; rtol 1e-3 takes fewer steps than the default 1e-5: see
#: docs/results/defaults.md for the measurement)
DENSITY_GRID = 64
#: the largest density grid `command` takes (1024^2 points already take hours on a CPU)
DENSITY_GRID_LIMIT = 1024
DENSITY_OPTIONS = {"exact": True, "rtol": 1e-3, "atol": 1e-3}


def main(config_file, *, sets=(), mode: str = "all", workdir=None, progress: bool = True,
         density_grid: int = DENSITY_GRID, coordinator: str | None = None,
         num_processes: int | None = None, process_id: int | None = None,
         checkpoint: str = "best") -> int:
    """`command` with the exit code of `python main.py`: 0 when done; 2 for bad input (SGMError)
    or a failed write (OSError), with one line on stderr; 130 when stopped by SIGINT/SIGTERM or
    Ctrl-C, every file written so far complete. Arguments as `command`'s."""
    try:
        return command(config_file, sets=sets, mode=mode, workdir=workdir, progress=progress,
                       density_grid=density_grid, coordinator=coordinator,
                       num_processes=num_processes, process_id=process_id, checkpoint=checkpoint)
    except SGMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. disk full while writing figures, metrics, samples, summary
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; every file already written is complete.",
              file=sys.stderr)
        return 2
    except train.Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C outside training (sampling, likelihood): nothing half-done
        print("interrupted; outputs written so far are complete.", file=sys.stderr)
        return 130


def command(config_file, *, sets=(), mode: str = "all", workdir=None, progress: bool = True,
            density_grid: int = DENSITY_GRID, coordinator: str | None = None,
            num_processes: int | None = None, process_id: int | None = None,
            checkpoint: str = "best") -> int:
    """Runs the phases of `mode` on a config file; returns 0 or raises.

    Arguments:
        config_file: a Python file defining `config = Config(...)` (configs/*.py).
        sets: `section.field=value` overrides, applied in order.
        mode: "train", "sample", "likelihood" or "all" (the three in turn).
        workdir: the work directory (default `build.default_workdir`); a rerun resumes from its
            latest checkpoint.
        progress: progress bars (training, sampling, likelihood) on process 0.
        density_grid: 2-D unconditional data: the model's density on an n x n grid in
            figs/density.png (0: no figure).
        coordinator, num_processes, process_id: a multi-host run (`parallel.initialize`).
        checkpoint: what the sample and likelihood phases evaluate: "best" (the checkpoint with
            the best validation NLL, where the run evaluated during training; else the newest)
            or "latest".

    Bad input raises SGMError before anything is written. SIGINT/SIGTERM outside training stop the
    command between phases (train.Interrupted) with nothing half-written; training has its own
    handler, which checkpoints first.
    """
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is invalid: expected one of {', '.join(MODES)}.")
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={checkpoint!r} is invalid: expected one of "
                          f"{', '.join(CHECKPOINTS)}.")
    if not (isinstance(density_grid, int) and 0 <= density_grid <= DENSITY_GRID_LIMIT):
        raise ConfigError(f"density_grid={density_grid!r} is invalid: expected 0 (no figure) or "
                          f"a number of grid points per axis of at most {DENSITY_GRID_LIMIT}.")
    with train.stop_on_signals() as flag, contextlib.ExitStack() as stack:
        cfg = build.load(config_file, sets)
        unsplit = parallel.split_cpu(cfg.train.cpu_devices)
        if unsplit:
            print(f"note: train.cpu_devices={cfg.train.cpu_devices}: {unsplit}", file=sys.stderr)
        parallel.initialize(coordinator, num_processes, process_id)
        mesh = parallel.make_mesh()
        main_process = parallel.is_main_process()  # only process 0 writes
        workdir = Path(workdir or build.default_workdir(cfg))
        earlier = check_workdir(workdir, log_to=cfg.train.log_to)  # the earlier commands' summary
        need = mode in ("sample", "likelihood")
        exp = build.experiment(cfg, ckpt_dir=workdir / "checkpoints", need_checkpoint=need,
                               mesh=mesh, checked=True)
        if mode in ("train", "all") and int(exp.state.step) > cfg.train.steps:
            raise ConfigError(f"the run in {workdir} is at step {int(exp.state.step)}, past "
                              f"train.steps={cfg.train.steps}: set train.steps to at least "
                              f"{int(exp.state.step)} to go on, use --mode sample or likelihood "
                              f"to use it as it is, or choose another work directory.")
        if mode in ("sample", "all"):
            check_sample_memory(exp)
        best = None  # the best checkpoint, read (and a damaged one refused) before any write
        if mode != "train" and checkpoint == "best":
            best = best_state(exp, workdir)
        summary = read_summary(exp, workdir, earlier)
        summary["devices"] = int(mesh.devices.size)  # this command's, over all processes
        # input is valid: from here on files are written, by process 0 only, under the lock
        exp = prepare_workdir(exp, workdir, stack=stack, need_checkpoint=need,
                              main_process=main_process)
        trackers = stack.enter_context(open_trackers(exp, workdir, main_process=main_process))
        show = main_process and progress
        state = exp.state
        if mode in ("train", "all"):
            stop_if_signalled(flag, "before training")
            earlier = summary.get("train_seconds", 0.0) if int(state.step) > 0 else 0.0
            state, done = train_phase(exp, mesh=mesh, workdir=workdir, trackers=trackers,
                                      earlier_seconds=earlier, progress=show,
                                      main_process=main_process)
            summary.update(done)
        if mode in ("sample", "likelihood", "all"):
            if mode == "all" and checkpoint == "best":  # training may have found a better one
                best = best_state(exp, workdir)
            state = state if best is None else best
            summary["evaluated_step"] = int(state.step)
        if mode in ("sample", "all"):
            summary.update(sample_phase(exp, state.ema, step=int(state.step), mesh=mesh,
                                        workdir=workdir, trackers=trackers, flag=flag,
                                        progress=show, main_process=main_process))
        if mode in ("likelihood", "all"):
            summary.update(likelihood_phase(exp, state.ema, step=int(state.step), mesh=mesh,
                                            workdir=workdir, trackers=trackers,
                                            density_grid=density_grid, flag=flag, progress=show,
                                            main_process=main_process))
        write_summary(workdir, summary, main_process=main_process)
        parallel.barrier("sgm_main_done")  # processes leave together
        return 0


def best_state(exp: build.Experiment, workdir: Path) -> train.TrainState | None:
    """The state of the run's best checkpoint on the validation split, or None where there is
    none (`build.resume_best`)."""
    best = build.resume_best(exp, Path(workdir) / "checkpoints")
    return None if best is None else best.state


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_sample_memory(exp: build.Experiment, memory: int | None = None) -> None:
    """Refuses (ConfigError) a sample.num whose samples alone, as float32, would take more than a
    quarter of the machine's memory (`memory` bytes; default `memory_bytes()`): they are held
    whole to be written (drawing goes in chunks, `Experiment.samples`)."""
    memory = memory_bytes() if memory is None else memory
    need = exp.cfg.sample.num * math.prod(exp.ds.shape) * 4
    if memory is not None and need > memory / 4:
        raise ConfigError(
            f"sample.num={exp.cfg.sample.num} samples of shape {tuple(exp.ds.shape)} need "
            f"{need / 2**30:.1f} GiB as float32, more than a quarter of this machine's "
            f"{memory / 2**30:.1f} GiB: draw fewer, in several commands with other sample.seed "
            f"values if more are needed.")


def stop_if_signalled(flag: dict | None, when: str) -> None:
    """Raises train.Interrupted if `flag` (`train.stop_on_signals`') caught a signal."""
    if flag is not None and flag["stop"] is not None:
        raise train.Interrupted(f"stopped by signal {flag['stop']} {when}; every file written so "
                                f"far is complete.")


def _bar(show: bool, desc: str, unit: str):
    """A progress bar, or none."""
    return track.Bar(desc, unit=unit) if show else contextlib.nullcontext()


def require_finite(values, what: str, file: str, exp: build.Experiment, *, step: int | None,
                   sampled: bool = False) -> None:
    """Raises NumericalError, before `file` is written (an earlier one is left as it is), if
    `values` (an array, or a list of numbers) hold NaN or inf: nothing non-finite is written as a
    result. The sentence names the likely source (`Experiment.likely_cause`: for samples,
    `sampled`, the guidance weight or the kept noise levels; else the checkpoint at `step`)."""
    if np.all(np.isfinite(np.asarray(values, np.float64))):
        return
    cause = exp.likely_cause(sampled=sampled, grid=sampled, step=step)
    raise NumericalError(f"the {what} hold NaN or inf, so {file} was not written; the likely "
                         f"cause is {cause}.")


# ------------------------------------------------------------------------------------ phases


def prepare_workdir(exp: build.Experiment, workdir: Path, *, stack: contextlib.ExitStack,
                    need_checkpoint: bool = False, main_process: bool = True) -> build.Experiment:
    """Makes `workdir`, checkpoints/ and figs/ in it, takes its lock (held until `stack` closes),
    removes the temporary files a killed command left, re-reads the latest checkpoint if another
    command wrote one since `exp` was built (`build.resume`) and writes config.json.

    Process 0 alone does this (`main_process`); every process learns whether it worked
    (`parallel.agree`). Returns `exp`, its state re-read where it had to be. Raises CheckpointError
    if the folder cannot be written or is locked.
    """
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    ready = not main_process
    try:
        if main_process:
            workdir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(ckpt.lock_workdir(workdir))
            ckpt.remove_leftovers(workdir)
            ckpt.remove_leftovers(ckpt_dir)
            ckpt.remove_leftovers(ckpt_dir / train.BEST)
            if ckpt.latest(ckpt_dir) != exp.checkpoint:  # another command wrote one meanwhile
                exp = build.resume(exp, ckpt_dir, need_checkpoint=need_checkpoint)
            ckpt_dir.mkdir(exist_ok=True)  # before any record: its absence then means damage
            (workdir / "figs").mkdir(exist_ok=True)
            ckpt.write_atomic(workdir / "config.json",
                              json.dumps(build.to_dict(exp.cfg), indent=2) + "\n")
            ready = True
    except OSError as e:
        raise CheckpointError(f"cannot write to work directory {workdir}: {e.strerror}.") from None
    finally:
        parallel.agree(ready, f"prepare the work directory {workdir}")
    return exp


def open_trackers(exp: build.Experiment, workdir: Path, *, main_process: bool = True
                  ) -> track.Trackers:
    """The trackers of train.log_to (metrics.jsonl, TensorBoard, W&B) in `workdir`, continuing
    from `exp.state`'s step; on any process but 0, none. Close them (a context manager)."""
    if not main_process:
        return track.Trackers()
    return track.open_trackers(exp.cfg.train.log_to, workdir, start=int(exp.state.step),
                               name=exp.cfg.name, hparams=build.to_dict(exp.cfg))


def train_phase(exp: build.Experiment, *, mesh, workdir: Path,
                trackers: track.Tracker | None = None, earlier_seconds: float = 0.0,
                progress: bool = False, main_process: bool = True
                ) -> tuple[train.TrainState, dict]:
    """Trains `exp.state` to train.steps (or until early stopping), then the validation loss
    and figs/training.png.

    Checkpoints go to `workdir`/checkpoints. Every train.eval_every steps the EMA model is
    evaluated on the validation split (never the test split): its held-out loss and likelihood
    (`eval_loss`, `eval_nll`, `eval_bpd`); the one with the lowest `eval_nll` is kept in
    `workdir`/checkpoints/best (`train.BestCheckpoint`), and with train.patience training stops
    once that many evaluations have brought no better one. Every record (training with its
    learning rate, evaluations) goes to `trackers`, those of train.log_to (`open_trackers`),
    which also get a samples figure at each evaluation when they take figures (TensorBoard, W&B). The training figure shows metrics.jsonl when train.log_to
    has it (the commands this one resumes included), else this phase's records.

    Returns the trained state and its summary entries: train_seconds (this command's plus
    `earlier_seconds`, those of the commands it resumes), steps, eval_loss (and with evaluations
    best_step, best_eval_nll, stopped_early).
    """
    from . import plot

    cfg, ds, workdir = exp.cfg, exp.ds, Path(workdir)
    trackers = track.Trackers() if trackers is None else trackers
    # every process takes part in drawing the samples a figure shows, so decide from the config
    figures_tracked = any(n in ("tensorboard", "wandb") for n in cfg.train.log_to)
    lr_at = build.learning_rate(cfg)
    history = []  # this command's records (the training figure's when there is no metrics.jsonl)

    def log(rec):
        if "loss" in rec:  # a training record: add the learning rate of its last update
            rec = {**rec, "lr": float(lr_at(max(rec["step"] - 1, 0)))}
        history.append(rec)
        trackers.scalars(rec["step"], {k: v for k, v in rec.items() if k != "step"})

    metadata = {"config": build.to_dict(cfg),
                "standardisation": build.standardisation(exp.preprocess)}
    best = train.BestCheckpoint(workdir / "checkpoints" / train.BEST,
                                patience=cfg.train.patience, eval_every=cfg.train.eval_every)
    evaluated = {}

    def on_eval(s, step):
        rec = {"step": step, "eval_loss": exp.heldout_loss(s.ema, split="val")}
        lik = exp.heldout_likelihood(s.ema, num=cfg.train.eval_num, mesh=mesh, solver_check=0,
                                     split="val")
        rec.update({"eval_nll": lik["nll"], "eval_bpd": lik["bpd"]})
        log(rec)
        best.update(s, step, lik["nll"], metadata)
        evaluated[step] = rec
        if figures_tracked:  # the samples so far, to TensorBoard / W&B (and figs/eval/)
            x, _, cond = exp.samples(s.ema, num=min(cfg.sample.num, cfg.train.eval_num), mesh=mesh)
            if main_process:
                path = workdir / "figs" / "eval" / f"samples_{step:07d}.png"
                trackers.figure(step, "samples", samples_figure(
                    ds, x, path, f"{cfg.name}: samples at step {step}", cond))
        return {**rec, "stop": best.stopped(step)}

    t0 = time.perf_counter()
    state = exp.state
    if not best.stopped(int(state.step)):  # an early-stopped run is finished
        state = exp.train(state, mesh=mesh, ckpt_dir=workdir / "checkpoints", on_log=log,
                          on_eval=on_eval, progress=progress, metadata=metadata)
    seconds = earlier_seconds + time.perf_counter() - t0
    step = int(state.step)
    if step in evaluated:
        rec = evaluated[step]
    elif cfg.train.eval_every:  # the last state is a candidate for the best one too
        rec = on_eval(state, step)
    else:
        rec = {"step": step, "eval_loss": exp.heldout_loss(state.ema, split="val")}
        log(rec)
    if main_process:
        metrics = workdir / "metrics.jsonl"
        rows = track.read_jsonl(metrics) if "jsonl" in cfg.train.log_to else history
        plot.training_curves(rows, workdir / "figs" / "training.png", title=cfg.name,
                             objective=build.objective(cfg))
    out = {"train_seconds": seconds, "steps": step, "eval_loss": rec["eval_loss"]}
    if best.step is not None:
        out.update(best_step=best.step, best_eval_nll=best.score,
                   stopped_early=step < cfg.train.steps)
        if main_process and step < cfg.train.steps:
            print(f"early stopping at step {step}: no better validation NLL in "
                  f"{cfg.train.patience} evaluations since step {best.step} "
                  f"({best.score:.4f} nats).")
    return state, out


def sample_phase(exp: build.Experiment, model, *, step: int, mesh, workdir: Path,
                 trackers: track.Tracker | None = None, flag: dict | None = None,
                 progress: bool = False, main_process: bool = True) -> dict:
    """Draws sample.num samples of `model` with the config's sampler into samples.npz (with their
    conditions) and figs/samples.png; for images and fields also figs/reverse.png.

    `step` labels the figures given to `trackers`; `flag` (`train.stop_on_signals`') stops the
    phase before anything is written. With sample.quality the samples are scored offline
    (`sgm.quality`) into quality.json. Returns the summary entries sample_seconds, sample_nfe,
    quality (with sample.quality) and (images and fields) reverse_figure_seconds.
    """
    cfg, ds, workdir = exp.cfg, exp.ds, Path(workdir)
    trackers = track.Trackers() if trackers is None else trackers
    t0 = time.perf_counter()
    with _bar(progress, f"sample ({cfg.sample.method})", "step") as b:
        x, info, cond = exp.samples(model, mesh=mesh, progress=b, cache_dir=workdir,
                                    between=lambda: stop_if_signalled(flag, "while sampling"))
    stop_if_signalled(flag, "while sampling")
    # discrete data are integer levels by now: whether the sampler's values were finite is in info
    require_finite(x if info.get("finite", True) else [math.nan], "samples", "samples.npz", exp,
                   step=step, sampled=True)
    out = {"sample_seconds": time.perf_counter() - t0, "sample_nfe": int(info["nfe"])}
    if main_process:
        arrays = {"samples": x} if cond is None else {"samples": x, "cond": cond}
        with ckpt.atomic_open(workdir / "samples.npz") as f:
            np.savez(f, **arrays)
        path = samples_figure(ds, x, workdir / "figs" / "samples.png", f"{cfg.name}: samples", cond)
        trackers.figure(step, "samples", path)
        print(f"samples: {x.shape[0]} with {cfg.sample.method}, nfe {int(info['nfe'])}, "
              f"{out['sample_seconds']:.1f}s -> {workdir / 'samples.npz'}")
    if cfg.sample.quality:  # every process trains or loads the classifier; process 0 writes
        clf, q_info = quality.classifier_for(ds, progress=progress and main_process)
        q = quality.score(clf, x, cond if exp.conditioning.uses_label else None, ds,
                          test_accuracy=q_info["test_accuracy"])
        out["quality"] = q
        if main_process:
            ckpt.write_atomic(workdir / "quality.json", json.dumps(q, indent=2) + "\n")
            print(quality.describe(q))
    if len(ds.shape) == 3:  # images and fields: 8 samples on their way from noise
        t0 = time.perf_counter()
        path = reverse_figure(exp, model, mesh=mesh, path=workdir / "figs" / "reverse.png",
                              main_process=main_process, cache_dir=workdir)
        out["reverse_figure_seconds"] = time.perf_counter() - t0
        trackers.figure(step, "reverse_process", path)
    return out


def likelihood_phase(exp: build.Experiment, model, *, step: int, mesh, workdir: Path,
                     trackers: track.Tracker | None = None, density_grid: int = DENSITY_GRID,
                     flag: dict | None = None, progress: bool = False,
                     main_process: bool = True) -> dict:
    """The test likelihood of `model` (`Experiment.heldout_likelihood` on the test split, read
    here and nowhere else) into likelihood.json (nats per sample and per dimension, bits/dim),
    each point's log-likelihood in data units into likelihood.npz (`index`: the point's row in
    the test split, `log_likelihood`: nats per sample, and each baseline's), with one line on
    stdout; for a user's continuous unconditional arrays (or any such data with
    likelihood.baselines) the classical baselines beside it (`sgm.baselines`: fitted on the
    training split, chosen on the validation split) with the paired difference to the model; for
    unconditional 2-D data also figs/density.png on a `density_grid` x `density_grid` grid (0:
    none).

    `step` labels what `trackers` get (test_nll, test_bpd, the density figure); `flag` stops the
    phase before anything is written. Returns the summary entries likelihood (likelihood.json's
    dict: nll, nll_per_dim, bpd, num, nfe, seconds, baselines, ...) and (with the figure)
    density_seconds.
    """
    ds, workdir = exp.ds, Path(workdir)
    trackers = track.Trackers() if trackers is None else trackers
    # the steps of each solve (one batch can take minutes; the 2-D density's many short solves
    # show only their count)
    meter = {}
    if progress:
        bar = diffrax.TqdmProgressMeter(refresh_steps=5)
        control = build.likelihood_control(exp.cfg)
        meter["control"] = dataclasses.replace(control, progress_meter=bar)
    t0 = time.perf_counter()
    with _bar(progress, "likelihood", "pt") as b:
        lik = exp.heldout_likelihood(model, mesh=mesh, progress=b, return_draws=True, **meter)
    stop_if_signalled(flag, "while computing the likelihood")
    require_finite([lik["nll"], lik["bpd"]], "test log-likelihoods", "likelihood.json", exp,
                   step=step)
    logp = np.asarray(combine_dequantised(lik.pop("draws"), lik.get("dequant_bound", "mean")),
                      np.float64)
    points = {"index": np.arange(lik["num"]), "log_likelihood": logp}
    if ds.levels:
        points["bits_per_dim"] = -logp / (ds.dim * math.log(2.0))
    if use_baselines(exp):
        lik["baselines"], per_point = baseline_report(exp, logp)
        points.update({f"baseline_{k}": v for k, v in per_point.items()})
    lik["seconds"] = time.perf_counter() - t0
    out = {"likelihood": lik}
    ent = "" if ds.entropy is None else f" (true entropy {ds.entropy:.4f}"
    ent += "" if "true_nll" not in lik else f", exact density on these points {lik['true_nll']:.4f}"
    if lik.get("gap_stderr") is not None:
        ent += f", paired gap {lik['gap']:.4f} ± {lik['gap_stderr']:.4f}"
    ent += "" if ds.entropy is None else ")"
    # error bars: the test points' standard error, and the solver's (mean |error| of one point,
    # a bound on its error of the mean) where it was checked; in bits/dim for discrete data
    scale = 1.0 / (math.prod(ds.shape) * math.log(2.0)) if ds.levels else 1.0
    bars = f" ± {lik['nll_stderr'] * scale:.4f} (test points)"
    if "solver_error" in lik:
        bars += f" ± {lik['solver_error'] * scale:.1e} (solver)"
    value = lik["bpd"] if ds.levels else lik["nll"]
    unit = f"{value:.4f}{bars} {'bits/dim' if ds.levels else 'nats'}" + ("" if ds.levels else ent)
    if not ds.levels:
        unit += f" = {lik['nll_per_dim']:.4f} nats/dim"
    if main_process:
        with ckpt.atomic_open(workdir / "likelihood.npz") as f:
            np.savez(f, **points)
        ckpt.write_atomic(workdir / "likelihood.json", json.dumps(lik, indent=2) + "\n")
        trackers.scalars(step, {"test_nll": lik["nll"], "test_bpd": lik["bpd"]})
        print(f"test NLL on {lik['num']} points: {unit}, nfe {lik['nfe']}, {lik['seconds']:.1f}s")
        for name, b in lik.get("baselines", {}).items():
            print(f"  {name}: {b['nll_per_dim']:.4f} nats/dim; model - {name} "
                  f"{b['diff']:+.4f} ± {b['diff_stderr']:.4f} nats/dim (paired)")
    if ds.shape == (2,) and exp.conditioning.keyword is None and density_grid > 0:
        t0 = time.perf_counter()
        with _bar(progress, "model density", "pt") as b:
            path = density_figure(exp, model, mesh=mesh, lik=lik, n=density_grid, workdir=workdir,
                                  main_process=main_process, progress=b, flag=flag, step=step)
        out["density_seconds"] = time.perf_counter() - t0
        trackers.figure(step, "density", path)
    return out


def use_baselines(exp: build.Experiment) -> bool:
    """Whether the likelihood phase fits the classical baselines: for continuous unconditional
    data, a user's arrays always and other data with likelihood.baselines."""
    plain = exp.ds.levels is None and exp.conditioning.keyword is None
    return plain and (exp.ds.name == "array" or exp.cfg.likelihood.baselines)


def baseline_report(exp: build.Experiment, logp: np.ndarray) -> tuple[dict, dict]:
    """The classical baselines (`sgm.baselines`) fitted on `exp`'s training split with their
    choices made on its validation split, on the first len(`logp`) test points, each with its
    test NLL per dimension and the paired difference to the model's per-point log-likelihoods
    `logp` (data units); and each baseline's per-point log-likelihoods."""
    from . import baselines

    flat = [np.asarray(a, np.float64).reshape(len(a), -1)
            for a in (exp.ds.train, exp.ds.val, exp.ds.test[: len(logp)])]
    fitted = baselines.fit_baselines(flat[0], flat[1], seed=exp.cfg.data.seed)
    logps = baselines.log_probs(fitted, flat[2])
    return baselines.report(fitted, flat[2], logp, logps=logps), logps


def read_summary(exp: build.Experiment, workdir: Path, earlier: dict | None = None) -> dict:
    """summary.json of the commands run before in `workdir` ({} if none; `earlier`: as already
    read by `check_workdir`), with this one's config name, dataset name and the data's entropy
    (None if unknown). Raises CheckpointError, leaving the file as it is, if it is not a JSON
    object."""
    summary = load_summary(workdir) if earlier is None else dict(earlier)
    summary.update({"config": exp.cfg.name, "dataset": exp.ds.name, "entropy": exp.ds.entropy})
    return summary


def check_workdir(workdir: Path, *, log_to=("jsonl",)) -> dict:
    """Reads what earlier commands left in `workdir` and refuses (SGMError), before anything is
    written, a record this command could not continue: summary.json that is not a JSON object,
    metrics.jsonl damaged before its last line (where train.log_to's jsonl appends to it), and
    checkpoints/ that is not a folder, or is missing while metrics.jsonl (records) or
    summary.json (steps) show an earlier run, which a new one would silently replace
    (`prepare_workdir` makes checkpoints/ before any record is written). Returns summary.json's
    entries ({} if none)."""
    workdir = Path(workdir)
    summary = load_summary(workdir)
    try:
        records = bool(track.read_jsonl(workdir / "metrics.jsonl"))
    except SGMError:
        if "jsonl" in log_to:
            raise
        records = True  # damaged, but not appended to by this command: still an earlier run's
    ckpt_dir = workdir / "checkpoints"
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir} is not a folder: restore the run's checkpoints folder "
                              f"there, or use another --workdir.")
    if not ckpt_dir.exists() and (records or "steps" in summary):
        raise CheckpointError(f"{ckpt_dir} is missing, but {workdir} holds the record of an "
                              f"earlier run (metrics.jsonl, summary.json): restore it, or use "
                              f"another --workdir.")
    return summary


def load_summary(workdir: Path) -> dict:
    """summary.json in `workdir` as it is ({} if none); raises CheckpointError, leaving the file
    as it is, if it is not a JSON object."""
    path = Path(workdir) / "summary.json"
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        summary = None
    if not isinstance(summary, dict):
        raise CheckpointError(f"{path} is damaged (expected a JSON object of the commands "
                              f"run before): restore it, or remove it to start a new summary.")
    return summary


def write_summary(workdir: Path, summary: dict, *, main_process: bool = True) -> None:
    """Writes `summary` to summary.json in `workdir` (on process 0)."""
    if main_process:
        ckpt.write_atomic(Path(workdir) / "summary.json", json.dumps(summary, indent=2) + "\n")


def score_run(workdir, *, samples=None, cache_dir=None, progress: bool = True) -> dict:
    """Scores a run's samples offline (`sgm.quality`): `samples`, default WORKDIR/samples.npz;
    writes WORKDIR/quality.json and adds the numbers to WORKDIR/summary.json under "quality";
    returns them. This is `python -m sgm.quality` without its argument parsing.

    Everything is read and checked before anything is written (config.json, the samples,
    summary.json); the work directory's lock is held throughout, as `command` holds it. Raises
    SGMError on bad input.
    """
    workdir = Path(workdir)
    cfg = build.check(build.run_config(workdir))
    ds = build.build_dataset(cfg)
    quality.check_data(ds)
    x, labels = quality.read_samples(Path(samples) if samples is not None
                                     else workdir / "samples.npz")
    quality.check_samples(x, labels, ds)  # before a classifier is trained for them
    try:
        lock = ckpt.lock_workdir(workdir)
    except OSError as e:
        raise DataError(f"cannot lock work directory {workdir}: {e.strerror or e}.") from None
    with lock:
        summary = load_summary(workdir)  # damaged: one sentence, the file kept as it is
        clf, info = quality.classifier_for(ds, cache_dir=cache_dir, progress=progress)
        q = quality.score(clf, x, labels, ds, test_accuracy=info["test_accuracy"])
        ckpt.write_atomic(workdir / "quality.json", json.dumps(q, indent=2) + "\n")
        summary["quality"] = q
        write_summary(workdir, summary)
    return q


# ----------------------------------------------------------------------------------- figures


def samples_figure(ds, x: np.ndarray, path: Path, title: str, cond=None) -> Path | None:
    """The samples figure of `ds`'s kind of data at `path`: a scatter over the test points and the
    exact density for 2-D points, a grid for images and fields; None for other data.

    Arguments:
        ds: the dataset (`data.Dataset`) the samples imitate.
        x: samples in data units, (N, *ds.shape).
        cond: their raw conditions (N,) labels, (N, P) parameters or (N, C, H, W) images, or None:
            one condition a column, conditioning images shown in the first row.
    """
    from . import plot

    if len(ds.shape) == 1 and ds.shape[0] == 2:
        return plot.scatter_2d(x, path, reference=ds.test[: len(x)], log_prob=ds.log_prob,
                               title=title)
    if len(ds.shape) == 3:
        imgs = x.astype("float32") / (ds.levels - 1) if ds.levels else x
        lo, hi = (0.0, 1.0) if ds.levels else (float(ds.test.min()), float(ds.test.max()))
        nrow = None  # conditions cycle (the first 8 test parameters): a column each
        if cond is not None and np.ndim(cond) == 1 and ds.num_classes:  # labels: a row each
            labels = np.asarray(cond)
            classes = np.unique(labels)
            per = min(min(int(np.sum(labels == k)) for k in classes), max(8, 64 // len(classes)))
            order = np.concatenate([np.flatnonzero(labels == k)[:per] for k in classes])
            imgs, nrow = imgs[order], per
            title += " (row i: label " + ("i" if np.array_equal(classes, np.arange(len(classes)))
                                         else ", ".join(str(k) for k in classes)) + ")"
            return plot.sample_grid(imgs, path, nrow=nrow, lo=lo, hi=hi, title=title)
        if cond is not None and np.ndim(cond) <= 2:
            nrow = 8
            title += " (column j: parameters of test field j)"
        if cond is not None and np.ndim(cond) == 4:  # the first 8 test points' conditioning images
            nrow = min(8, len(imgs))
            title += " (row 1: conditions; column j: samples given condition j)"
            if cond.shape[1:] == imgs.shape[1:]:  # shown first, stretched to the samples' range
                c = np.asarray(cond[:nrow], np.float64)
                c = lo + (hi - lo) * (c - c.min()) / max(float(c.max() - c.min()), 1e-12)
                imgs = np.concatenate([c, imgs[: nrow * (64 // nrow - 1)]])
        num = 64 if nrow is None else nrow * max(1, 64 // nrow)
        return plot.sample_grid(imgs[:num], path, nrow=nrow, lo=lo, hi=hi, title=title)
    return None


def density_figure(exp: build.Experiment, model, *, mesh, lik: dict, n: int, workdir: Path,
                   main_process: bool = True, progress=None, flag: dict | None = None,
                   step: int | None = None) -> Path | None:
    """figs/density.png: samples (samples.npz, else the test points), the model's density on an
    n x n grid (probability-flow ODE, `DENSITY_OPTIONS`) and the exact one, with the paired NLL gap
    of `lik` (`likelihood_phase`'s) on the test points. Every process solves its share of the
    grid; process 0 draws (the others return None). A signal caught in `flag`
    (`train.stop_on_signals`') stops it between batches of the grid, before anything is written;
    a grid with NaN or inf is refused (`require_finite`; `step`: the checkpoint it names)."""
    from . import plot

    ds, workdir = exp.ds, Path(workdir)
    lim = plot.limits(None, ds.test)  # the same window on every process

    def each_batch(done, total):
        stop_if_signalled(flag, "while drawing the model density")
        if progress is not None:
            progress(done, total)

    grid = plot.density_grid(lambda p: exp.log_density(model, p, mesh=mesh, progress=each_batch,
                                                       **DENSITY_OPTIONS), lim, n)
    stop_if_signalled(flag, "while drawing the model density")
    require_finite(grid, "model log-densities of the density figure", "figs/density.png", exp,
                   step=step)
    if not main_process:
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


def reverse_figure(exp: build.Experiment, model, *, mesh, path: Path,
                   main_process: bool = True, cache_dir: Path | None = None) -> Path | None:
    """figs/reverse.png: 8 samples at 8 times from t1 to t_end (equally spaced in log-SNR) and
    what each was conditioned on (`cache_dir`: where a searched grid is kept). Every process
    samples; process 0 draws (the others return None)."""
    from . import plot

    ds = exp.ds
    _, info, cond = exp.samples(model, num=8, mesh=mesh, return_path=True, cache_dir=cache_dir)
    traj = parallel.gather(info["path"])[:, :8]  # (T, 8, C, H, W) in model space
    times = np.asarray(info["path_t"])
    idx = plot.pick_frames(np.asarray(model.sde.log_snr(times)), 8)
    if not main_process:
        return None
    frames = np.asarray(exp.preprocess.inverse(traj[idx]), dtype=np.float64)
    lo, hi = (0.0, float(ds.levels)) if ds.levels else (float(ds.test.min()), float(ds.test.max()))
    return plot.reverse_process(frames, times[idx], path, lo=lo, hi=hi,
                                conditions=exp.conditioning.describe(cond),
                                title=f"{exp.cfg.name}: reverse process ({exp.cfg.sample.method})")
