"""Training: the train state, one jitted step (loss + grad + update + EMA), the loop.

Everything here takes explicit objects (a loss function, an optax optimizer, a preprocessing, a
batch iterator); `sgm.build` makes them from a config. The train state holds the raw weights (what
resume uses), their exponential moving average (what sampling and likelihoods use), the optimiser
state, the step and the first step whose update was not finite. The randomness of step k is
`fold_in(key, k)` and its batch is `batch_at(seed, k)`, so the step counter is the whole data-order
and RNG state: a resumed run repeats an uninterrupted one bit for bit on the same machine.

Buffers: the jitted step donates the state it is given (XLA writes the new state over the old one,
so a step holds one copy of the weights, EMA and moments, not two), and the loop puts batch k + 1
on the devices while step k runs; it waits for the devices only when it logs, evaluates or saves.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import checkpoint as ckpt
from . import parallel
from .data import Preprocess
from .errors import ConfigError, NumericalError
from .conditioning import Conditioning

# optax >= 0.2.5 names it optax.tree.norm; older releases only have global_norm
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


class TrainState(eqx.Module):
    model: eqx.Module
    ema: eqx.Module
    opt_state: optax.OptState
    step: jax.Array
    bad_step: jax.Array  # first step (counted from 1) whose loss or update was NaN/inf (-1: none)


def _copy(tree):
    """`tree` with every array leaf in a buffer of its own (same values, same sharding)."""
    return jax.tree_util.tree_map(lambda a: jnp.copy(a) if isinstance(a, jax.Array) else a, tree)


def init_state(model: eqx.Module, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0: the model, its EMA and the optimiser state of its float arrays.

    Model and EMA are copies of `model`: the step donates the state's buffers, so they must not be
    the caller's nor each other's.
    """
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return TrainState(_copy(model), _copy(model), opt_state, jnp.zeros((), jnp.int32),
                      jnp.full((), -1, jnp.int32))


def _finite_norm(tree) -> jax.Array:
    """Whether the global norm of a tree's float arrays is finite (every element finite, no overflow).

    One fused reduction: checking each updated array with `isfinite` and selecting the old state on
    the result compiles a UNet step far more slowly on XLA's CPU backend (see
    `docs/results/defaults.md` for the measurement).
    """
    return jnp.isfinite(_global_norm(eqx.filter(tree, eqx.is_inexact_array)))


def ema_decay(ema: float, step, warmup: bool = True):
    """The decay of the EMA update that follows `step` earlier updates: `ema`, or with `warmup`
    min(ema, (1 + step) / (10 + step)), so that an average of a few hundred steps is not still
    mostly its initial weights (0.1 at the first update, 0.5 at the ninth, 0.9 at the 81st; a
    decay of 0.999 is reached after 8991 updates)."""
    if not warmup:
        return jnp.asarray(ema, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(ema), (1.0 + step) / (10.0 + step))


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, preprocess: Preprocess,
              *, ema: float, ema_warmup: bool = True, conditioning: Conditioning | None = None,
              grad_accum: int = 1) -> Callable:
    """The jitted `step(state, x, cond, key) -> (state, loss)`, donating its arguments' buffers.

    The `state` passed in (and the batch) must not be used after the call: their buffers may hold
    the new state. Keep the returned state instead.

    Arguments:
        loss_fn: `loss_fn(model, x, cond, key) -> scalar` on a preprocessed batch, `cond` the
            network's conditioning keywords (a dict of batched arrays).
        optimizer: the optax transformation applied to the gradients.
        preprocess: raw batch -> model space.
        ema: decay of the exponential moving average of the weights.
        ema_warmup: start the average with smaller decays (`ema_decay`).
        conditioning: turns the batch's raw conditions into keywords (label dropout included).
        grad_accum: micro-batches per step; their mean gradient is the batch's.

    A step whose loss or updated state is not finite returns the state as it was (but for the step
    counter: selected inside the step, so a rejected update needs nothing the donation freed),
    records itself in `bad_step` and returns a NaN loss (so the loop counts it skipped).
    """
    conditioning = Conditioning() if conditioning is None else conditioning
    value_and_grad = eqx.filter_value_and_grad(loss_fn)

    @eqx.filter_jit(donate="all")
    def step(state: TrainState, x, cond, key):
        k_pre, k_drop, k_loss = jax.random.split(key, 3)
        x = preprocess(k_pre, x)
        c = conditioning(cond, key=k_drop)
        params = eqx.filter(state.model, eqx.is_inexact_array)
        if grad_accum == 1:
            loss, grads = value_and_grad(state.model, x, c, k_loss)
        else:
            # Micro-batch j takes rows j, j+k, j+2k, ...: each device's block of the global batch
            # stays on that device. The mean of equal-sized micro-batch means is the batch mean.
            k = grad_accum

            def split(a):
                return einops.rearrange(a, "(n k) ... -> k n ...", k=k)

            def micro(carry, inp):
                xm, cm, km = inp
                lm, gm = value_and_grad(state.model, xm, cm, km)
                return jax.tree_util.tree_map(lambda a, b: a + b / k, carry, (lm, gm)), None

            zeros = (jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, params))
            inputs = (split(x), jax.tree_util.tree_map(split, c), jax.random.split(k_loss, k))
            (loss, grads), _ = jax.lax.scan(micro, zeros, inputs)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        new_params = eqx.filter(model, eqx.is_inexact_array)
        decay = ema_decay(ema, state.step, ema_warmup)
        ema_params = optax.incremental_update(new_params, eqx.filter(state.ema, eqx.is_inexact_array),
                                              1.0 - decay)
        ema_model = eqx.combine(ema_params, eqx.filter(state.ema, eqx.is_inexact_array, inverse=True))
        new = TrainState(model, ema_model, opt_state, state.step + 1, state.bad_step)
        # Finite gradients and updates applied to finite weights keep the weights, their EMA (a
        # convex combination) and the moments (built from the gradients) finite.
        ok = jnp.isfinite(loss) & _finite_norm(grads) & _finite_norm(updates)
        old = TrainState(state.model, state.ema, state.opt_state, state.step + 1, state.bad_step)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b) if eqx.is_array(a) else a, new, old)
        bad = jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step + 1)
        return eqx.tree_at(lambda s: s.bad_step, out, bad), jnp.where(ok, loss, jnp.nan)

    return step


@contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set a flag the loop checks between steps (it then checkpoints and exits)."""
    flag = {"stop": None}
    handlers = {}

    def handle(signum, frame):
        flag["stop"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            handlers[sig] = signal.signal(sig, handle)
        except ValueError:  # not the main thread
            pass
    try:
        yield flag
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)


#: the folder of a run's best checkpoint, inside its checkpoints/
BEST = "best"


class BestCheckpoint:
    """The checkpoint with the best validation score so far, and early stopping on it.

    `directory` (e.g. `checkpoints/best`) holds one checkpoint, written like any other (atomic,
    the state checked finite first), its score in the manifest's metadata (`val_score`): a
    resumed run reads both back, so its choices are those of an uninterrupted one. With
    `patience` (a number of evaluations every `eval_every` steps), training is over once that
    many steps have passed since the best without a better score (lower is better).
    """

    def __init__(self, directory, *, patience: int | None = None, eval_every: int = 0):
        self.directory = Path(directory)
        self.patience, self.eval_every = patience, eval_every
        self.score, self.step = math.inf, None
        last = ckpt.latest(self.directory)
        if last is not None:
            manifest = ckpt.read_manifest(last)
            score = manifest.get("metadata", {}).get("val_score")
            if isinstance(score, int | float) and math.isfinite(score):
                self.score, self.step = float(score), manifest["step"]

    def update(self, state, step: int, score: float, metadata: dict | None = None) -> bool:
        """Keeps `state` (at `step`) if `score` is finite and better than the best so far (on
        process 0 the checkpoint is written); returns whether it was."""
        if not (math.isfinite(score) and score < self.score):
            return False
        if int(parallel.gather(state.bad_step)) >= 0:  # a skipped NaN step: not a model to keep
            return False
        if parallel.is_main_process():
            ckpt.save(self.directory, step, state, {**(metadata or {}), "val_score": float(score)},
                      keep=1)
        self.score, self.step = float(score), int(step)
        return True

    def stopped(self, step: int) -> bool:
        """Whether early stopping ends training at `step`."""
        return (self.patience is not None and self.step is not None
                and step - self.step >= self.patience * self.eval_every)


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""


@dataclasses.dataclass(frozen=True)
class Intervals:
    """How often the training loop logs, checkpoints and evaluates, in steps (0: only at the end
    for checkpoints; never for evaluations), and how many checkpoints it keeps."""

    log_every: int = 100
    ckpt_every: int = 0
    eval_every: int = 0
    keep_checkpoints: int = 2

    def __post_init__(self):
        for name in ("log_every", "keep_checkpoints"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("ckpt_every", "eval_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be a non-negative integer, got "
                                  f"{getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class NanPolicy:
    """What a step whose loss or update is NaN/inf does: "stop" raises NumericalError at the first
    one; "skip" skips such steps, until more than `max_skipped` of a run's steps (and more than
    4) were skipped."""

    on_nan: str = "stop"
    max_skipped: float = 0.1

    def __post_init__(self):
        if self.on_nan not in ("stop", "skip"):
            raise ConfigError(f"on_nan={self.on_nan!r} is invalid: expected 'stop' or 'skip'.")
        if not 0 <= self.max_skipped <= 1:
            raise ConfigError(f"max_skipped={self.max_skipped!r} is invalid: expected a fraction "
                              f"in [0, 1].")


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the training loop reports to: `on_log(record)` at each log step, `on_eval(state,
    step)` at each evaluation (a returned dict with `"stop": True` ends training there, early
    stopping, with a checkpoint of that step), and a tqdm bar with `progress`."""

    on_log: Callable[[dict], None] | None = None
    on_eval: Callable[[TrainState, int], dict | None] | None = None
    progress: bool = False


def train(step_fn: Callable, state: TrainState, batches: Iterator, *, key, steps: int, mesh,
          intervals: Intervals = Intervals(), nan: NanPolicy = NanPolicy(), hooks: Hooks = Hooks(),
          ckpt_dir=None, metadata: dict | None = None) -> TrainState:
    """Runs steps `state.step .. steps` of `step_fn`, checkpointing and evaluating on schedule.

    Arguments:
        step_fn: `step(state, x, cond, key) -> (state, loss)` (see `make_step`).
        state: the state to continue from (replicated over `mesh` here).
        batches: yields this process's slice of each global batch from step `state.step` on: an
            array `x`, or a pair `(x, cond)` for conditional data.
        key: the run's key; step k uses `fold_in(key, k)`.
        steps: the last step.
        mesh: device mesh whose data axis splits each batch.
        intervals: when to log, checkpoint (into `ckpt_dir`) and evaluate (`Intervals`).
        nan: what a non-finite step does (`NanPolicy`).
        hooks: the log and evaluation hooks and the progress bar (`Hooks`).
        ckpt_dir: where checkpoints go (None: nowhere).
        metadata: stored in every checkpoint's manifest.

    Only process 0 writes checkpoints; every process runs every step. Each step donates the state
    it is given; the loop starts from a copy, so the caller's `state` stays valid.
    """
    log_every, ckpt_every, eval_every, keep_checkpoints = dataclasses.astuple(intervals)
    on_nan, max_skipped = nan.on_nan, nan.max_skipped
    on_log, on_eval, progress = hooks.on_log, hooks.on_eval, hooks.progress
    state = _copy(parallel.put_replicated(state, mesh))
    start = int(parallel.gather(state.step))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)
    losses, t_last, last_log = [], time.perf_counter(), start
    saved = {"step": ckpt.latest_step(ckpt_dir) if ckpt_dir is not None else None}
    skipped = 0

    def kept():
        if saved["step"] is None:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {saved['step']}) is kept"

    def check_finite(s):
        bad = int(parallel.gather(s.bad_step))
        if bad >= 0 and on_nan == "stop":
            raise NumericalError(f"training loss or update became NaN/inf at step {bad}; stopped, "
                                 f"{kept()} (set train.on_nan=skip to skip such steps).")

    def save(s):
        check_finite(s)
        if ckpt_dir is not None and parallel.is_main_process():
            step = int(parallel.gather(s.step))
            ckpt.save(ckpt_dir, step, s, metadata, keep=keep_checkpoints)
            saved["step"] = step

    def put(batch):  # host -> devices; returns at once, the copy runs in the background
        return parallel.put_batch(batch if isinstance(batch, tuple) else (batch, None), mesh)

    with stop_on_signals() as flag:
        ahead = put(next(batches)) if start < steps else None
        for k in range(start, steps):
            (x, c), ahead = ahead, None
            state, loss = step_fn(state, x, c, jax.random.fold_in(key, k))  # dispatched, not awaited
            if k + 1 < steps:  # one-step prefetch: batch k + 1 travels while step k computes
                ahead = put(next(batches))
            losses.append(loss)
            done = k + 1
            if done % log_every == 0 or done == steps:
                check_finite(state)
                vals = parallel.gather(jnp.stack(losses))
                finite = vals[np.isfinite(vals)]
                now = time.perf_counter()
                rec = {"step": done, "loss": float(finite.mean()) if finite.size else None,
                       "steps_per_s": (done - last_log) / max(now - t_last, 1e-9),
                       "skipped": int(np.sum(~np.isfinite(vals)))}
                skipped += rec["skipped"]
                if skipped > max(4, max_skipped * (done - start)):
                    raise NumericalError(
                        f"{skipped} of the {done - start} steps run were skipped for a NaN/inf loss or "
                        f"update (more than {max_skipped:.0%}); stopped, {kept()}.")
                losses, t_last, last_log = [], now, done
                if bar is not None:
                    bar.update(rec["step"] - bar.n)
                    loss_text = "nan" if rec["loss"] is None else f"{rec['loss']:.4f}"
                    bar.set_postfix(loss=loss_text, it_s=f"{rec['steps_per_s']:.1f}")
                if on_log:
                    on_log(rec)
            if on_eval is not None and eval_every and done % eval_every == 0 and done != steps:
                if (on_eval(state, done) or {}).get("stop"):  # early stopping
                    save(state)
                    break
            if (ckpt_every and done % ckpt_every == 0) or done == steps:
                save(state)
            if flag["stop"] is not None:
                save(state)
                raise Interrupted(f"stopped by signal {flag['stop']} at step {done}; checkpoint saved.")
    if bar is not None:
        bar.close()
    return state
