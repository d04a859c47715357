"""Training: objects from a config, one jitted step (loss + grad + update + EMA), the loop.

The train state holds the raw weights (what resume uses), their exponential moving average (what
sampling and likelihoods use), the optimiser state, the step and the first step whose loss was not
finite. The randomness of step k is `fold_in(key, k)` and its batch is `batch_at(seed, k)`, so
the step counter is the whole data-order and RNG state: a resumed run repeats an uninterrupted one
bit for bit on the same machine.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import contextmanager

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import checkpoint as ckpt
from . import parallel
from .config import Config
from .data import Batches, Dataset
from .errors import ConfigError, NumericalError
from .loss import dsm_loss
from .nets import DiT, MLP, UNet, drop_labels
from .score import ScoreModel
from .sde import (
    CosineSchedule,
    LinearSchedule,
    QuadraticSchedule,
    ScaledLinearSchedule,
    SigmoidSchedule,
    SubVPSDE,
    VESDE,
    VPSDE,
)

_SCHEDULES = {"linear": LinearSchedule, "quadratic": QuadraticSchedule, "sigmoid": SigmoidSchedule,
              "scaled_linear": ScaledLinearSchedule}


def build_sde(cfg: Config):
    s = cfg.sde
    if s.kind == "ve":
        return VESDE(s.sigma_min, s.sigma_max, t0=s.t0)
    schedule = CosineSchedule() if s.schedule == "cosine" else _SCHEDULES[s.schedule](s.beta_min, s.beta_max)
    return (VPSDE if s.kind == "vp" else SubVPSDE)(schedule=schedule, t0=s.t0)


def conditioning(cfg: Config, ds: Dataset) -> str | None:
    """"label", "param" or None: what the model is conditioned on."""
    if not cfg.model.conditional:
        return None
    if ds.num_classes:
        return "label"
    if ds.param_dim:
        return "param"
    return None


def build_net(cfg: Config, ds: Dataset, *, key):
    m = cfg.model
    kind = conditioning(cfg, ds)
    extra = dict(num_classes=ds.num_classes if kind == "label" else None,
                 param_dim=ds.param_dim if kind == "param" else None, dropout=m.dropout, key=key)
    if m.periodic and m.net != "unet":
        raise ConfigError(f"model.periodic=True needs model.net='unet', got {m.net!r}.")
    if m.net == "mlp":
        return MLP(ds.dim, width=m.width, depth=m.depth, **extra)
    c, h, w = ds.shape if len(ds.shape) == 3 else (None, None, None)
    if c is None:
        raise ConfigError(f"model.net={m.net!r} needs image data (C, H, W); {ds.name} has shape {ds.shape}.")
    if m.net == "unet":
        return UNet(c, (h, w), base=m.base, channel_mults=m.channel_mults,
                    num_res_blocks=m.num_res_blocks, attn_resolutions=m.attn_resolutions,
                    heads=m.heads, periodic=m.periodic, **extra)
    return DiT(c, (h, w), patch=m.patch, width=m.width, depth=m.depth, heads=m.heads, **extra)


class Preprocess(eqx.Module):
    """Raw batch -> model space: dequantise + scale to [-1, 1] (discrete) or standardise."""

    mean: jax.Array | None
    std: jax.Array | None
    levels: int | None = eqx.field(static=True)

    def __call__(self, key, x):
        if self.levels is not None:
            u = jax.random.uniform(key, x.shape)
            return 2.0 * (x.astype(jnp.float32) + u) / self.levels - 1.0
        x = x.astype(jnp.float32)
        return x if self.mean is None else (x - self.mean) / self.std

    def inverse(self, x):
        """Model space -> data units (continuous value in [0, levels) for discrete data)."""
        if self.levels is not None:
            return (x + 1.0) / 2.0 * self.levels
        return x if self.mean is None else x * self.std + self.mean

    def log_det(self) -> jax.Array:
        """log |d model / d data| for one sample (added to model log-densities -> data units)."""
        if self.levels is not None or self.std is None:
            return jnp.zeros(())
        return -jnp.sum(jnp.log(jnp.broadcast_to(self.std, self.mean.shape)))


def build_preprocess(cfg: Config, ds: Dataset) -> Preprocess:
    if ds.levels is not None:
        return Preprocess(None, None, ds.levels)
    if not cfg.data.standardize:
        return Preprocess(None, None, None)
    x = ds.train.astype(np.float64)
    if len(ds.shape) == 1:
        mean, std = x.mean(0), x.std(0)
    else:  # fields/images: one scalar mean/std (keeps translation structure)
        mean, std = np.full(ds.shape, x.mean()), np.full(ds.shape, x.std())
    return Preprocess(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), None)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    t = cfg.train
    if t.decay == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, t.lr, max(t.warmup, 1), max(t.steps, t.warmup + 1),
                                                end_value=t.lr * 0.01)
    else:
        lr = optax.join_schedules([optax.linear_schedule(0.0, t.lr, max(t.warmup, 1)),
                                   optax.constant_schedule(t.lr)], [max(t.warmup, 1)])
    opt = (optax.adamw(lr, weight_decay=t.weight_decay) if t.optimizer == "adamw" else optax.adam(lr))
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), opt) if t.grad_clip > 0 else opt


class TrainState(eqx.Module):
    model: ScoreModel
    ema: ScoreModel
    opt_state: optax.OptState
    step: jax.Array
    bad_step: jax.Array  # first step whose loss was NaN/inf (-1: none)


def init_state(cfg: Config, ds: Dataset, *, key) -> tuple[TrainState, optax.GradientTransformation]:
    sde = build_sde(cfg)
    model = ScoreModel(build_net(cfg, ds, key=key), sde, param=cfg.model.param)
    optimizer = make_optimizer(cfg)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    state = TrainState(model, model, opt_state, jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))
    return state, optimizer


def make_step(cfg: Config, ds: Dataset, optimizer, preprocess: Preprocess) -> Callable:
    """The jitted `step(state, x, cond, key) -> (state, loss)`; non-finite losses leave state as is."""
    t, kind = cfg.train, conditioning(cfg, ds)
    null = ds.num_classes if kind == "label" else None

    def loss_fn(model, x, cond, key):
        return dsm_loss(model, model.sde, x, key=key, cond=cond, weighting=t.weighting,
                        time_sampling=t.time_sampling, importance=t.importance, reduce=t.reduce,
                        dropout=cfg.model.dropout > 0)

    @eqx.filter_jit
    def step(state: TrainState, x, cond, key):
        k_pre, k_drop, k_loss = jax.random.split(key, 3)
        x = preprocess(k_pre, x)
        c = {}
        if kind == "label":
            labels = cond
            if cfg.model.label_dropout > 0:
                labels = drop_labels(k_drop, labels, cfg.model.label_dropout, null)
            c = {"label": labels}
        elif kind == "param":
            c = {"param": cond}
        params = eqx.filter(state.model, eqx.is_inexact_array)
        if t.grad_accum == 1:
            loss, grads = eqx.filter_value_and_grad(loss_fn)(state.model, x, c, k_loss)
        else:
            # Micro-batch j takes rows j, j+k, j+2k, ...: each device's block of the global batch
            # stays on that device. The mean of equal-sized micro-batch means is the batch mean.
            k = t.grad_accum

            def split(a):
                return jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1)

            def micro(carry, inp):
                xm, cm, km = inp
                lm, gm = eqx.filter_value_and_grad(loss_fn)(state.model, xm, cm, km)
                return jax.tree_util.tree_map(lambda a, b: a + b / k, carry, (lm, gm)), None

            zeros = (jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, params))
            inputs = (split(x), jax.tree_util.tree_map(split, c), jax.random.split(k_loss, k))
            (loss, grads), _ = jax.lax.scan(micro, zeros, inputs)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        ema = jax.tree_util.tree_map(
            lambda e, p: t.ema * e + (1 - t.ema) * p if eqx.is_inexact_array(e) else e,
            state.ema, model)
        ok = jnp.isfinite(loss)
        new = TrainState(model, ema, opt_state, state.step + 1, state.bad_step)
        old = TrainState(state.model, state.ema, state.opt_state, state.step + 1, state.bad_step)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b) if eqx.is_array(a) else a, new, old)
        bad = jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step)
        return eqx.tree_at(lambda s: s.bad_step, out, bad), loss

    return step


@contextmanager
def _stop_on_signals():
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


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""


def train(cfg: Config, ds: Dataset, state: TrainState, optimizer, preprocess: Preprocess, *,
          ckpt_dir=None, on_log: Callable[[dict], None] | None = None,
          on_eval: Callable[[TrainState, int], dict] | None = None, progress: bool = False,
          metadata: dict | None = None, mesh=None) -> TrainState:
    """Runs steps `state.step .. cfg.train.steps`, checkpointing and evaluating on schedule.

    The global batch is split over `mesh` (default: every device of every process); the state is
    replicated. Only process 0 writes checkpoints; every process runs every step.
    """
    t = cfg.train
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch(t.batch_size, mesh)
    step_fn = make_step(cfg, ds, optimizer, preprocess)
    base_key = jax.random.key(t.seed)
    state = parallel.put_replicated(state, mesh)
    start = int(parallel.gather(state.step))
    kind = conditioning(cfg, ds)
    arrays = (ds.train, ds.train_cond) if kind else ds.train
    batches = Batches(arrays, t.batch_size, t.seed, start_step=start,
                      process_index=jax.process_index(), process_count=jax.process_count())
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=t.steps, initial=start, desc="train", dynamic_ncols=True)
    losses, t_last, last_log = [], time.perf_counter(), start

    def check_finite(s):
        bad = int(parallel.gather(s.bad_step))
        if bad >= 0 and t.on_nan == "stop":
            raise NumericalError(f"training loss became NaN/inf at step {bad}; stopped, keeping the "
                                 f"last good checkpoint (set train.on_nan=skip to skip such steps).")

    def save(s):
        check_finite(s)
        if ckpt_dir is not None and parallel.is_main_process():
            ckpt.save(ckpt_dir, int(parallel.gather(s.step)), s, metadata, keep=t.keep_checkpoints)

    with _stop_on_signals() as flag:
        for k in range(start, t.steps):
            batch = next(batches)
            x, c = parallel.put_batch(batch if kind else (batch, None), mesh)
            state, loss = step_fn(state, x, c, jax.random.fold_in(base_key, k))
            losses.append(loss)
            done = k + 1
            if done % t.log_every == 0 or done == t.steps:
                check_finite(state)
                vals = parallel.gather(jnp.stack(losses))
                finite = vals[np.isfinite(vals)]
                now = time.perf_counter()
                rec = {"step": done, "loss": float(finite.mean()) if finite.size else float("nan"),
                       "steps_per_s": (done - last_log) / max(now - t_last, 1e-9),
                       "skipped": int(np.sum(~np.isfinite(vals)))}
                losses, t_last, last_log = [], now, done
                if bar is not None:
                    bar.update(rec["step"] - bar.n)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", it_s=f"{rec['steps_per_s']:.1f}")
                if on_log:
                    on_log(rec)
            if on_eval is not None and t.eval_every and done % t.eval_every == 0 and done != t.steps:
                on_eval(state, done)
            if (t.ckpt_every and done % t.ckpt_every == 0) or done == t.steps:
                save(state)
            if flag["stop"] is not None:
                save(state)
                raise Interrupted(f"stopped by signal {flag['stop']} at step {done}; checkpoint saved.")
    if bar is not None:
        bar.close()
    return state
