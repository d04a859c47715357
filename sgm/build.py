"""The one edge between a config and the library: `Config` -> objects.

Besides `main.py` this is the only module that reads a `Config`. It holds one registry per choice
(noise schedules, SDE kinds, networks, optimisers, learning-rate decays; datasets, samplers and
score parameterisations come from the modules that implement them), checks every name against its
registry before anything is built or written (`check`), and turns the config's sections into the
objects the library takes: SDE, network, score model, preprocessing, optimizer, dataset, batches,
and the keyword arguments of `sgm.sample`, `sgm.log_likelihood` and the loss, with the option
objects they take (`SamplerSettings`, `StepControl`, `evaluate.Dequantisation`). `load` reads a
config file with its overrides and checks it; `experiment` does the whole build, including the
resume sequence (init, then the latest checkpoint, refused if it was written for another model);
`resume` re-reads the latest checkpoint alone; `load_run` gives a finished run back from its work
directory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import checkpoint as ckpt
from . import npz
from . import config as C
from . import data, evaluate, likelihood, parallel, quality, samplers, track, train
from .config import Config
from .errors import CheckpointError, ConfigError, CorruptCheckpointError, NumericalError
from .likelihood import DEQUANT_BOUNDS, StepControl
from .loss import REDUCTIONS, TIME_SAMPLINGS, WEIGHTINGS, dsm_loss
from .conditioning import Conditioning
from .nets import DiT, MLP, UNet
from .score import DTYPES, PREDICTIONS, GuidedScore, ScoreModel
from .ode_solvers import ODE_SOLVERS, STEPPING
from .sampler_settings import SamplerSettings
from .sigma_solvers import GRIDS, VARIANTS
from .step_search import Tuning, levels_for, search_costs, tune_grid
from .sde import (
    CosineSchedule,
    LearnedSchedule,
    LinearSchedule,
    QuadraticSchedule,
    ScaledLinearSchedule,
    SigmoidSchedule,
    SubVPSDE,
    VESDE,
    VPSDE,
)

# ------------------------------------------------------------------------------------ registries

SCHEDULES = {  # the SDE config section -> schedule of the integrated rate B(t)
    "linear": lambda s: LinearSchedule(s.beta_min, s.beta_max),
    "cosine": lambda s: CosineSchedule(),
    "quadratic": lambda s: QuadraticSchedule(s.beta_min, s.beta_max),
    "sigmoid": lambda s: SigmoidSchedule(s.beta_min, s.beta_max),
    "scaled_linear": lambda s: ScaledLinearSchedule(s.beta_min, s.beta_max),
    # trained with the score network; a fixed initial key, so a config defines its start
    "learned": lambda s: LearnedSchedule(jax.random.key(0), logsnr_max=s.logsnr_max,
                                         logsnr_min=s.logsnr_min, t0=s.t0),
}
SDES = {  # the SDE config section -> SDE
    "vp": lambda s: VPSDE(schedule=SCHEDULES[s.schedule](s), t0=s.t0),
    "subvp": lambda s: SubVPSDE(schedule=SCHEDULES[s.schedule](s), t0=s.t0),
    "ve": lambda s: VESDE(s.sigma_min, s.sigma_max, t0=s.t0),
}
OPTIMIZERS = {  # (learning-rate schedule, weight decay) -> optax optimizer
    "adam": lambda lr, wd: optax.adam(lr),
    "adamw": lambda lr, wd: optax.adamw(lr, weight_decay=wd),
}
DECAYS = {  # (peak lr, warm-up steps, total steps) -> learning-rate schedule of the update count
    # a linear warm-up from 0 to lr, then a cosine or a linear decay to lr / 100, or constant
    "cosine": lambda lr, warm, steps: optax.warmup_cosine_decay_schedule(
        0.0, lr, warm, max(steps, warm + 1), end_value=lr * 0.01),
    "linear": lambda lr, warm, steps: optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm),
         optax.linear_schedule(lr, lr * 0.01, max(steps - warm, 1))], [warm]),
    "constant": lambda lr, warm, steps: optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm]),
    # OneCycle (Smith & Topin 2017): cosine rise from lr / 25 to lr over the warm-up, cosine fall to
    # lr / 25e4 at the last step; optax places the peak at int(pct_start * steps), hence the + 0.5
    "onecycle": lambda lr, warm, steps: optax.cosine_onecycle_schedule(
        max(steps, warm + 1), lr, pct_start=(warm + 0.5) / max(steps, warm + 1)),
}


def _mlp(m, ds, extra):
    return MLP(ds.dim, width=m.width, depth=m.depth, **extra)


def _image_net(kind):
    def make(m, ds, extra):
        if len(ds.shape) != 3:
            raise ConfigError(f"model.net={m.net!r} needs image data (C, H, W); {ds.name} has "
                              f"shape {ds.shape}.")
        c, h, w = ds.shape
        if kind == "unet":
            return UNet(c, (h, w), base=m.base, channel_mults=m.channel_mults,
                        num_res_blocks=m.num_res_blocks, attn_resolutions=m.attn_resolutions,
                        heads=m.heads, periodic=m.periodic, spectral_modes=m.spectral_modes,
                        **extra)
        return DiT(c, (h, w), patch=m.patch, width=m.width, depth=m.depth, heads=m.heads, **extra)

    return make


NETS = {"mlp": _mlp, "unet": _image_net("unet"), "dit": _image_net("dit")}  # (model cfg, ds, extra)

#: every named choice of the config and the registry it must be in
CHOICES = {
    "data.name": data.NAMES,
    "sde.kind": tuple(SDES),
    "sde.schedule": tuple(SCHEDULES),
    "model.net": tuple(NETS),
    "model.prediction": PREDICTIONS,
    "model.dtype": DTYPES,
    "train.optimizer": tuple(OPTIMIZERS),
    "train.decay": tuple(DECAYS),
    "train.weighting": WEIGHTINGS,
    "train.time_sampling": TIME_SAMPLINGS,
    "train.reduce": REDUCTIONS,
    "train.on_nan": ("stop", "skip"),
    "sample.method": tuple(samplers.SAMPLERS),
    "sample.grid": ("", *GRIDS, "searched", "tuned"),  # "": the method's own levels
    "likelihood.dequant_bound": DEQUANT_BOUNDS,
    "likelihood.dequant": data.transforms.DEQUANTS,
    "likelihood.solver": likelihood.SOLVERS,
    "likelihood.stepping": likelihood.STEPPING,
    "likelihood.error_norm": likelihood.ERROR_NORMS,
    "likelihood.clock": likelihood.CLOCKS,
}


def check(cfg: Config) -> Config:
    """Types, ranges and every name against its registry; returns `cfg` or raises ConfigError."""
    C.validate(cfg)
    for key, allowed in CHOICES.items():
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        if value not in allowed:
            names = ", ".join(a if a else '""' for a in allowed)
            raise ConfigError(f"{key}={value!r} is invalid: expected one of {names}.")
    track.check(cfg.train.log_to)  # known names, their packages installed
    if cfg.model.periodic and cfg.model.net != "unet":
        raise ConfigError(f"model.periodic=True needs model.net='unet', got {cfg.model.net!r}.")
    if cfg.model.spectral_modes and not (cfg.model.periodic and cfg.model.net == "unet"):
        raise ConfigError(f"model.spectral_modes={cfg.model.spectral_modes} needs a periodic UNet "
                          "(model.net='unet', model.periodic=true): the Fourier layers assume a torus.")
    if cfg.sde.schedule == "learned" and cfg.sde.kind == "ve":
        raise ConfigError("sde.schedule='learned' is a schedule of the VP and SubVP SDEs, not of "
                          "sde.kind='ve'.")
    if cfg.sde.schedule == "learned" and cfg.train.weighting != "likelihood":
        raise ConfigError("sde.schedule='learned' is trained on the variational bound: set "
                          "train.weighting=likelihood.")
    build_sde(cfg)  # the SDE checks its own parameters
    sample_options(cfg)  # the sampler takes the options set
    return cfg


def load(path, sets=()) -> Config:
    """The config of a command: the file `path`'s `config`, the `section.field=value` overrides
    `sets` applied in order (a later one wins), checked (`check`); raises ConfigError."""
    return check(C.override(C.load_file(path), list(sets)))


def to_dict(cfg: Config) -> dict:
    """`cfg` as plain data: config.json, the checkpoints' metadata (which `experiment` holds a
    resumed run to) and the trackers' hyperparameters."""
    return C.to_dict(cfg)


# --------------------------------------------------------------------------------------- objects


def build_sde(cfg: Config):
    try:
        return SDES[cfg.sde.kind](cfg.sde)
    except ConfigError as e:
        raise ConfigError(f"sde: {e}") from None


def build_dataset(cfg: Config) -> data.Dataset:
    d = cfg.data
    return data.load(d.name, root=d.root, n_train=d.n_train, n_test=d.n_test,
                     image_size=d.image_size, seed=d.seed, val_fraction=d.val_fraction)


def build_conditioning(cfg: Config, ds: data.Dataset) -> Conditioning:
    """Labels if the data has classes, parameters if it has parameter vectors (when conditional)."""
    if cfg.model.conditional and ds.num_classes:
        return Conditioning("label", ds.num_classes, cfg.model.label_dropout)
    if cfg.model.conditional and ds.param_dim:
        return Conditioning("param")
    if cfg.model.conditional and ds.cond_shape:  # images, standardised with the training set's
        c = np.asarray(ds.train_cond, np.float64)  # mean and std, a null for guidance
        return Conditioning("image", label_dropout=cfg.model.label_dropout,
                            image_shift=float(c.mean()), image_scale=float(c.std()) or 1.0)
    return Conditioning()


def build_model(cfg: Config, ds: data.Dataset, sde, cond: Conditioning, *, key) -> ScoreModel:
    extra = dict(num_classes=cond.num_classes, param_dim=ds.param_dim if cond.uses_param else None,
                 dropout=cfg.model.dropout, time_scale=cfg.model.time_scale, key=key)
    if cond.uses_image and cfg.model.net == "mlp":  # the MLP concatenates the image's numbers
        extra["cond_dim"] = math.prod(ds.cond_shape)
    elif cond.uses_image:  # the UNet and DiT its channels
        extra["cond_channels"] = ds.cond_shape[0]
    return ScoreModel(NETS[cfg.model.net](cfg.model, ds, extra), sde, prediction=cfg.model.prediction,
                      dtype=cfg.model.dtype)


def learning_rate(cfg: Config):
    """The learning-rate schedule `lr(count)` of the config: the rate of update `count + 1`."""
    t = cfg.train
    return DECAYS[t.decay](t.lr, max(t.warmup, 1), t.steps)


def build_optimizer(cfg: Config) -> optax.GradientTransformation:
    t = cfg.train
    opt = OPTIMIZERS[t.optimizer](learning_rate(cfg), t.weight_decay)
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), opt) if t.grad_clip > 0 else opt


def build_preprocess(cfg: Config, ds: data.Dataset) -> data.Preprocess:
    return data.Preprocess.fit(ds.train, levels=ds.levels, standardize=cfg.data.standardize)


def loss_options(cfg: Config, *, heldout: bool = False) -> dict:
    """Keywords of `dsm_loss`. The held-out loss is the training loss's estimator (the same
    weighting, time density and importance weights: the same expectation), without dropout."""
    t = cfg.train
    return dict(weighting=t.weighting, time_sampling=t.time_sampling, importance=t.importance,
                reduce=t.reduce, dropout=cfg.model.dropout > 0 and not heldout)


def objective(cfg: Config) -> str:
    """The training objective in words, for figures: e.g. "likelihood weighting, importance-sampled
    t" (the held-out loss estimates the same quantity)."""
    t = cfg.train
    times = "importance-sampled t" if t.importance else f"{t.time_sampling} t"
    return f"{'σ²' if t.weighting == 'sigma2' else t.weighting} weighting, {times}"


def sample_options(cfg: Config) -> dict:
    """Keywords of `sgm.sample`: method, steps, `settings` (a `SamplerSettings` with the config's
    t_end) and the method's own options that the config changed from their `SampleConfig`
    defaults (the library's own defaults, or "" / none where each method has its own: grid,
    order, s_tmax), so an unchanged option is the library's.

    An option changed for a method that does not take it (`SAMPLERS[method].options`) is a
    ConfigError naming the option, the method and the methods that take it: one config may carry
    every method's options at their defaults. The ode sampler's `solver`, `stepping`, unipc's
    `variant` and ddpm's `variance` are checked against their names here; their ranges, and the
    other options', by `sgm.config.validate`. `steps` is None for the adaptive ode (its solver
    chooses them) and `sample.steps` for every other method, the fixed-step ode solvers included.
    `grid="searched"`/`"tuned"` is left to `Experiment.samples`.
    """
    s = cfg.sample
    spec = samplers.SAMPLERS[s.method]
    takes = {}  # option -> the methods that take it
    for m, entry in samplers.SAMPLERS.items():
        for k in entry.options:
            takes.setdefault(k, []).append(m)
    names = {"solver": tuple(ODE_SOLVERS), "stepping": STEPPING, "variant": VARIANTS,
             "variance": ("posterior", "forward")}  # ddpm's (`sgm.samplers._ddpm`)
    opts = {}
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if f.name not in takes or value == f.default:
            continue
        if f.name not in spec.options:
            default = "none" if f.default is None else repr(f.default)
            raise ConfigError(f"sample.{f.name}={value!r} does not apply to sample.method="
                              f"{s.method!r}: {f.name} is an option of {', '.join(takes[f.name])} "
                              f"only; leave it at {default} for {s.method}.")
        if f.name in names and value not in names[f.name]:
            raise ConfigError(f"sample.{f.name}={value!r} is invalid: expected one of "
                              f"{', '.join(names[f.name])}.")
        opts[f.name] = value
    if opts.get("grid") in ("searched", "tuned"):  # Experiment.samples finds the levels
        del opts["grid"]
    solver = ODE_SOLVERS.get(opts.get("solver", spec.defaults.get("solver")))
    fixed = spec.default_steps is not None or (solver is not None and not solver.adaptive)
    return dict(method=s.method, steps=s.steps if fixed else None,
                settings=SamplerSettings(t_end=s.t_end), **opts)


def likelihood_control(cfg: Config) -> StepControl:
    """How the likelihood's ODE is solved (`sgm.StepControl`): likelihood.solver, clock,
    stepping and error_norm; the rest at the library's defaults."""
    lc = cfg.likelihood
    return StepControl(solver=lc.solver, clock=lc.clock, stepping=lc.stepping,
                       error_norm=lc.error_norm)


def dequantisation(cfg: Config) -> evaluate.Dequantisation:
    """How discrete test data is dequantised (`evaluate.Dequantisation`): likelihood.dequant (the
    density q), dequant_samples (K draws per point) and dequant_bound (their reduction)."""
    lc = cfg.likelihood
    return evaluate.Dequantisation(kind=lc.dequant, samples=lc.dequant_samples,
                                   bound=lc.dequant_bound)


def likelihood_options(cfg: Config) -> dict:
    """Keywords of `evaluate.heldout_likelihood` (and through it `sgm.log_likelihood`): exact,
    rtol, atol, probes and batch as the config gives them, `dequantisation` and `control` built
    from the other fields (`dequantisation`, `likelihood_control`)."""
    lc = cfg.likelihood
    return dict(exact=lc.exact, rtol=lc.rtol, atol=lc.atol, probes=lc.probes, batch=lc.batch,
                dequantisation=dequantisation(cfg), control=likelihood_control(cfg))


# ------------------------------------------------------------------------------------ experiment

#: the config sections that define the model a checkpoint holds (a resume must not change them),
#: less the fields that only say where the data lives, how much of it is evaluated, or how the
#: network is regularised in training
IDENTITY = ("data", "sde", "model")
NOT_IDENTITY = ("data.root", "data.n_test", "model.dropout", "model.label_dropout")


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything a config builds, and the evaluations of a model wired to the config's settings."""

    cfg: Config
    ds: data.Dataset
    sde: object
    conditioning: Conditioning
    preprocess: data.Preprocess
    optimizer: optax.GradientTransformation
    state: train.TrainState
    checkpoint: Path | None = None  # the checkpoint `state` was read from (None: a new run)

    def cond(self, raw) -> dict:
        """The networks' conditioning keywords for raw conditions (labels/parameters) or None."""
        return self.conditioning(None if raw is None else jnp.asarray(raw))

    def train(self, state, *, mesh, ckpt_dir=None, metadata: dict | None = None,
              **hooks) -> train.TrainState:
        """Trains `state` to `train.steps` with the batch split over `mesh` (`experiment(...,
        mesh=mesh)` checks that it splits), checkpoints into `ckpt_dir` with `metadata`, and
        `hooks` (on_log, on_eval, progress: `train.Hooks`)."""
        t = self.cfg.train
        loss = functools.partial(_loss, options=loss_options(self.cfg))
        step = train.make_step(loss, self.optimizer, self.preprocess, ema=t.ema,
                               ema_warmup=t.ema_warmup, conditioning=self.conditioning, grad_accum=t.grad_accum)
        conditional = self.conditioning.keyword is not None
        arrays = (self.ds.train, self.ds.train_cond) if conditional else self.ds.train
        batches = data.Batches(arrays, t.batch_size, t.seed, start_step=int(state.step),
                               process_index=jax.process_index(), process_count=jax.process_count())
        intervals = train.Intervals(t.log_every, t.ckpt_every, t.eval_every, t.keep_checkpoints)
        return train.train(step, state, batches, key=jax.random.key(t.seed), steps=t.steps,
                           mesh=mesh, intervals=intervals, nan=train.NanPolicy(t.on_nan),
                           hooks=train.Hooks(**hooks), ckpt_dir=ckpt_dir, metadata=metadata)

    def split(self, name: str):
        """The raw points and conditions of split `name`: "val" (what training-time metrics,
        early stopping and the best checkpoint read) or "test" (read once, for the reported
        number)."""
        if name not in ("val", "test"):
            raise ConfigError(f"split={name!r} is invalid: expected 'val' or 'test'.")
        return getattr(self.ds, name), getattr(self.ds, f"{name}_cond")

    def heldout_loss(self, model, *, num: int | None = None, split: str = "val") -> float:
        """The training objective (`loss_options(heldout=True)`) on the first `num` (default
        train.eval_num) points of `split`, with a fixed key (comparable from one step to the
        next); a split of fewer than `HELDOUT_POINTS` points is repeated up to about that many,
        each copy with its own noise and time."""
        num = self.cfg.train.eval_num if num is None else num
        x, raw = self.split(split)
        x, raw = x[:num], None if raw is None else raw[:num]
        reps = max(1, HELDOUT_POINTS // len(x))
        x = np.concatenate([x] * reps)
        raw = None if raw is None else np.concatenate([raw] * reps)
        return evaluate.heldout_loss(model, self.preprocess, x, self.cond(raw),
                                     key=jax.random.key(0), **loss_options(self.cfg, heldout=True))

    def heldout_likelihood(self, model, *, num: int | None = None, mesh=None,
                           solver_check: float | None = None, split: str = "test",
                           **overrides) -> dict:
        """Held-out NLL/bits per dim of the first `num` (default likelihood.num) points of
        `split` (`evaluate.heldout_likelihood`), with `nll_per_dim`; where the data's density is
        known also `true_nll` (the exact NLL of the same points), `gap` (NLL - true_nll) and
        `gap_stderr` (the standard error of the per-point differences; None for one point); with
        `solver_check` (default likelihood.solver_check; 0: none) the solver's error bar on that
        fraction of the points, but at least min(num, `SOLVER_CHECK_MIN`) of them
        (`evaluate.solver_error`). `overrides` are `evaluate.heldout_likelihood`'s keywords
        (exact, rtol, dequantisation, control, progress, return_draws, ...) in place of the
        config's (`likelihood_options`)."""
        lc = self.cfg.likelihood
        xs, raws = self.split(split)
        num = min(lc.num if num is None else num, xs.shape[0])
        x = xs[:num]
        raw = None if raws is None else raws[:num]
        opts = {**likelihood_options(self.cfg), **overrides}
        frac = lc.solver_check if solver_check is None else solver_check
        m = 0 if frac <= 0 else min(num, max(math.ceil(frac * num), SOLVER_CHECK_MIN))
        progress = opts.pop("progress", None)
        draws = opts["dequantisation"].samples if self.ds.levels else 1  # solves per point
        if progress is not None:  # one count over the test points and the error bar's solves
            opts["progress"] = lambda done, _: progress(done, draws * (num + 2 * m))
        exact = self.ds.log_prob is not None
        out = evaluate.heldout_likelihood(model, self.preprocess, x, self.cond(raw),
                                          key=jax.random.key(lc.seed), mesh=mesh,
                                          **{"return_draws": exact, **opts})
        out["entropy"] = self.ds.entropy
        if exact:  # the exact density on the same points: the honest gap, paired point by point
            true = np.asarray(self.ds.log_prob(np.asarray(x), raw), np.float64)
            gaps = true - np.mean(np.asarray(out["draws"], np.float64), axis=0)
            out["true_nll"] = -float(np.mean(true))
            out["gap"] = float(np.mean(gaps))
            out["gap_stderr"] = float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None
            if not opts.get("return_draws", False):
                del out["draws"]
        out["nll_per_dim"] = out["nll"] / self.ds.dim
        out["split"] = split
        if m > 0:  # a subsample again at a tenth of the tolerances: the solver's error bar
            check = {k: v for k, v in opts.items() if k != "progress"}  # (solver_error: no meter)
            if progress is not None:
                check["progress"] = lambda done, _: progress(draws * num + done,
                                                             draws * (num + 2 * m))
            out.update(evaluate.solver_error(model, self.preprocess, x[:m],
                                             self.cond(None if raw is None else raw[:m]),
                                             key=jax.random.key(lc.seed), mesh=mesh, **check))
        return out

    def log_density(self, model, x, *, mesh=None, batch: int = 512, **overrides) -> np.ndarray:
        """log p(x) in data units at raw points `x` (N, ...) under an unconditional model's
        probability-flow ODE: the config's likelihood settings but for `overrides`
        (`evaluate.heldout_likelihood`'s keywords: exact, rtol, control, progress, ...), in equal
        solves of at most `batch` points (one compilation)."""
        n = len(x)
        batch = -(-n // -(-n // batch))
        one = dataclasses.replace(dequantisation(self.cfg), samples=1)  # one draw per point
        opts = {**likelihood_options(self.cfg), "batch": batch, "dequantisation": one, **overrides}
        out = evaluate.heldout_likelihood(model, self.preprocess, np.asarray(x), {}, mesh=mesh,
                                          key=jax.random.key(self.cfg.likelihood.seed),
                                          return_draws=True, **opts)
        return out["draws"][0]

    def sample_conditions(self, num: int):
        """Raw conditions of `num` samples: labels 0, 1, 2, ... cycling, or the parameters or
        conditioning images of the first (up to 8) test points, cycling; None for an
        unconditional model."""
        if self.conditioning.keyword is None:
            return None
        if self.conditioning.uses_label:
            return np.arange(num) % self.ds.num_classes
        return self.ds.test_cond[np.arange(num) % min(8, self.ds.test.shape[0])]

    def sampling_score(self, model):
        """What the samplers integrate: `model`, or its guided score at `sample.guidance`."""
        if self.conditioning.guidable:
            return GuidedScore(model, None, self.ds.num_classes, self.cfg.sample.guidance)
        return model

    def _grid_cache(self, model, cache_dir: Path | None, prefix: str, t_end: float | None,
                    **content) -> tuple[Path | None, str]:
        """Where a grid of `model` is kept in `cache_dir` (None without one) and its key: the
        JSON text of everything the grid depends on, i.e. the weights, the sample conditions,
        t_end, guidance, seed, the search's warm-up draws, the data range and `content` (the
        candidates; for a tuned grid also its method, steps and the method's options). The
        key's digest ends the file name, and the file holds the key itself."""
        if cache_dir is None:
            return None, ""
        s = self.cfg.sample
        raw = self.sample_conditions(SEARCH_WARMUP)
        weights = ckpt.tree_digest(model)
        key = json.dumps({"weights": weights, "t_end": t_end, "guidance": s.guidance,
                          "seed": s.seed, "warmup": SEARCH_WARMUP, "clip": self.preprocess.clip,
                          "conditions": None if raw is None else ckpt.tree_digest(np.asarray(raw)),
                          **content}, sort_keys=True, default=repr)
        tag = hashlib.sha256(key.encode()).hexdigest()[:12]
        return Path(cache_dir) / f"{prefix}-{t_end}-g{s.guidance:g}-{weights[:16]}-{tag}.npz", key

    @staticmethod
    def _read_grid(path: Path | None, key: str, sde, t_end: float | None, count: int,
                   costs: bool = False) -> dict | None:
        """The `levels` (with `costs`, also the search's jump `costs`) kept at `path` when the
        file is whole, was written for `key` and holds what a search or a tuning gives, else
        None, and the caller computes them again and replaces the file: none there, a damaged
        one (`npz.load`: truncated, not an .npz, an array header claiming more than the file
        holds), another key, levels that are not `count` finite numbers decreasing strictly from
        `sde`'s sigma(t1) down to sigma(t_end) > 0, or costs that are not finite and
        non-negative from each level to the later ones and inf elsewhere."""
        if path is None or not path.exists():
            return None
        names = ("key", "levels", "costs") if costs else ("key", "levels")
        try:
            kept = npz.load(path, names, limit=8 * count * (count if costs else 1) + 4 * len(key))
        except (OSError, ValueError):
            return None
        stored, levels = kept["key"], kept["levels"]
        if stored.shape != () or stored.dtype.kind != "U" or str(stored) != key:
            return None
        if levels.shape != (count,) or levels.dtype.kind != "f":
            return None
        t_end = sde.sampling_t0 if t_end is None else t_end
        hi, lo = float(sde.noise_level(sde.t1)), float(sde.noise_level(t_end))
        levels = levels.astype(np.float64)
        if not (np.all(np.isfinite(levels)) and np.all(np.diff(levels) < 0) and levels[-1] > 0
                and math.isclose(levels[0], hi, rel_tol=1e-3)
                and math.isclose(levels[-1], lo, rel_tol=1e-3)):
            return None
        if costs:
            c = kept["costs"]
            if c.shape != (count, count) or c.dtype.kind != "f":
                return None
            c = c.astype(np.float64)
            later = c[np.triu_indices(count, 1)]
            if not (np.all(np.isfinite(later) & (later >= 0))
                    and np.all(c[np.tril_indices(count)] == np.inf)):
                return None
            return {"levels": levels, "costs": c}
        return {"levels": levels}

    @staticmethod
    def _write_grid(path: Path | None, key: str, **arrays) -> None:
        """Keeps `arrays` with their `key` at `path` (nothing for None), replacing what was there
        in one step (`ckpt.atomic_open`)."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with ckpt.atomic_open(path, "wb") as f:
            np.savez(f, key=np.asarray(key), **arrays)

    def likely_cause(self, *, sampled: bool = False, grid: bool = False,
                     step: int | None = None) -> str:
        """The likely cause of NaN or inf in what the model gave, and what to do, for a
        sentence: for sampled results (`sampled`) the guidance weight where it applies, then
        (with `grid`) the searched or tuned noise levels kept in the work directory, else the
        model's score (of the checkpoint at `step`)."""
        s = self.cfg.sample
        if sampled and self.conditioning.guidable and s.guidance != 0:
            return (f"classifier-free guidance at sample.guidance={s.guidance:g}, which weighs the "
                    f"conditional score by {1 + s.guidance:g}: lower sample.guidance (0 to about "
                    f"10 is usual)")
        if grid and s.grid in ("searched", "tuned"):
            return (f"the {s.grid} noise levels kept in the work directory (grid-*.npz): remove "
                    f"them to search again, or set another sample.grid")
        model = "the model" if step is None else f"the model of the checkpoint at step {step}"
        return (f"{model}, whose score returns NaN or inf: use a checkpoint from before training "
                f"diverged, or train again")

    def searched_grid(self, model, *, steps: int, t_end: float | None = None,
                      cache_dir: Path | None = None) -> tuple[float, ...]:
        """`steps` noise levels searched on the (guided) model's own trajectories
        (`sgm.search_grid`, `SEARCH_WARMUP` draws with the sample conditions, over
        max(`SEARCH_CANDIDATES`, steps) levels). With `cache_dir` the search's candidates and
        jump costs are kept in `cache_dir/grid-<t_end>-g<guidance>-<weights>-<key>.npz` (the key:
        all they depend on, `_grid_cache`) and read back by the next call with the same key,
        whatever its step count up to `SEARCH_CANDIDATES`: a run searches once. A cache that is
        damaged or holds no valid search (`_read_grid`) is searched again and replaced."""
        s = self.cfg.sample
        fine = max(SEARCH_CANDIDATES, steps)
        cache, key = self._grid_cache(model, cache_dir, "grid", t_end, candidates=fine)
        kept = self._read_grid(cache, key, model.sde, t_end, fine, costs=True)
        if kept is not None:
            return levels_for(kept["levels"], kept["costs"], steps)
        raw = self.sample_conditions(SEARCH_WARMUP)
        try:
            levels, costs = search_costs(
                self.sampling_score(model), model.sde, self.ds.shape,
                key=jax.random.fold_in(jax.random.key(s.seed), 7), num=SEARCH_WARMUP, fine=fine,
                t_end=t_end, cond=self.cond(raw), clip=self.preprocess.clip)
        except NumericalError:
            raise NumericalError(f"the grid search's warm-up trajectories are not finite; the "
                                 f"likely cause is {self.likely_cause(sampled=True)}.") from None
        self._write_grid(cache, key, levels=levels, costs=costs)
        return levels_for(levels, costs, steps)

    def tuned_grid(self, model, *, method: str, steps: int, t_end: float | None = None,
                   options: dict | None = None, cache_dir: Path | None = None
                   ) -> tuple[float, ...]:
        """`searched_grid`'s levels tuned for `method` by gradient on the model's own accurate
        solves (`sgm.tune_grid`, `SEARCH_WARMUP` draws with the sample conditions; `options`:
        the method's own options, e.g. unipc's order). With `cache_dir` the levels are kept in
        `cache_dir/grid-tuned-<method>-<steps>-<t_end>-g<guidance>-<weights>-<key>.npz`, the key
        covering the search's and the method's options and the tuning's settings (`Tuning`,
        its loss included; `_grid_cache`), and read back for the same key: a run tunes once per
        method, options and step count. A cache that is damaged
        or holds no valid levels (`_read_grid`) is tuned again and replaced."""
        s = self.cfg.sample
        own = {k: v for k, v in (options or {}).items() if k != "grid"}  # the levels are tuned
        tuning = Tuning(num=SEARCH_WARMUP)
        cache, key = self._grid_cache(model, cache_dir, f"grid-tuned-{method}-{steps}", t_end,
                                      candidates=max(SEARCH_CANDIDATES, steps), method=method,
                                      steps=steps, options=own,
                                      tuning=dataclasses.asdict(tuning))
        kept = self._read_grid(cache, key, model.sde, t_end, steps)
        if kept is not None:
            return tuple(float(v) for v in kept["levels"])
        start = self.searched_grid(model, steps=steps, t_end=t_end, cache_dir=cache_dir)
        raw = self.sample_conditions(SEARCH_WARMUP)
        try:
            levels = tune_grid(self.sampling_score(model), model.sde, self.ds.shape, start,
                               key=jax.random.fold_in(jax.random.key(s.seed), 8), method=method,
                               tuning=tuning, t_end=t_end, cond=self.cond(raw),
                               clip=self.preprocess.clip, options=own)
        except NumericalError:
            raise NumericalError(f"the trajectories that tune {method}'s levels are not finite; "
                                 f"the likely cause is {self.likely_cause(sampled=True)}.") from None
        self._write_grid(cache, key, levels=np.asarray(levels, np.float64))
        return levels

    def samples(self, model, *, num: int | None = None, mesh=None,
                between: Callable[[], None] | None = None, cache_dir: Path | None = None,
                **overrides):
        """`(samples in data units, info, raw conditions)` with the config's sampler.

        More than `SAMPLE_CHUNK` samples are drawn in chunks of that many (the k-th from the
        sample key folded with k), so memory is bounded by a chunk; `between()` is called between
        chunks (e.g. to stop on a signal). With `sample.grid="searched"` the levels come from
        `searched_grid`, with "tuned" from `tuned_grid` (kept in `cache_dir` when given), which
        is given the method's own options alone: `overrides` such as progress= or return_path=
        only steer the sampler. `overrides` are `sgm.sample`'s keywords (method, steps, settings,
        the method's options) or fields of its `SamplerSettings` (t_end, denoise, progress,
        return_path), each in place of the config's."""
        s = self.cfg.sample
        num = s.num if num is None else num
        ndev = 1 if mesh is None else mesh.devices.size
        total = num + -num % ndev
        raw = self.sample_conditions(total)
        score = self.sampling_score(model)
        shared = {k: overrides.pop(k) for k in SamplerSettings._fields
                  if k != "steps" and k in overrides}
        opts = {**sample_options(self.cfg), **overrides}
        opts["settings"] = opts["settings"]._replace(**shared)
        t_end = opts["settings"].t_end
        if s.grid in ("searched", "tuned") and "grid" not in overrides \
                and opts["steps"] is not None and "grid" in samplers.SAMPLERS[opts["method"]].options:
            if s.grid == "searched" or opts["steps"] < 3:  # two levels: nothing to tune
                opts["grid"] = self.searched_grid(model, steps=opts["steps"], t_end=t_end,
                                                  cache_dir=cache_dir)
            else:
                mine = samplers.SAMPLERS[opts["method"]].options  # not settings= etc.
                own = {k: v for k, v in opts.items() if k in mine}
                opts["grid"] = self.tuned_grid(model, method=opts["method"], steps=opts["steps"],
                                               t_end=t_end, options=own, cache_dir=cache_dir)
        key = jax.random.key(s.seed)
        chunk = max(ndev, SAMPLE_CHUNK - SAMPLE_CHUNK % ndev)
        if total <= chunk:
            x, info = evaluate.draw_samples(score, model.sde, self.preprocess, self.ds.shape,
                                            num=total, key=key, cond=self.cond(raw), mesh=mesh,
                                            **opts)
        else:
            parts, finite = [], True
            for k, i in enumerate(range(0, total, chunk)):
                if k and between is not None:
                    between()
                part_raw = None if raw is None else raw[i:i + chunk]
                xk, info = evaluate.draw_samples(
                    score, model.sde, self.preprocess, self.ds.shape,
                    num=min(chunk, total - i), key=jax.random.fold_in(key, k),
                    cond=self.cond(part_raw), mesh=mesh, **opts)
                parts.append(np.asarray(xk))
                finite = finite and info["finite"]
            x, info = np.concatenate(parts), {**info, "finite": finite}
        return x[:num], info, None if raw is None else np.asarray(raw)[:num]


#: the fewest points the likelihood's solver error bar rests on (all of them when fewer)
SOLVER_CHECK_MIN = 20
#: the fewest noisy points `Experiment.heldout_loss` averages (a small split is repeated)
HELDOUT_POINTS = 512
#: samples drawn at once by `Experiment.samples`; more are drawn in chunks of this many
SAMPLE_CHUNK = 16384
#: warm-up trajectories and candidate noise levels of `Experiment.searched_grid` (`sgm.search_grid`)
SEARCH_WARMUP, SEARCH_CANDIDATES = 256, 100


def _loss(model, x, cond, key, *, options):
    return dsm_loss(model, model.sde, x, key=key, cond=cond, **options)


def experiment(cfg: Config, *, ckpt_dir=None, need_checkpoint: bool = False, mesh=None,
               checked: bool = False) -> Experiment:
    """Builds every object of `cfg` and the train state, resumed from `ckpt_dir`'s latest checkpoint
    when there is one (`resume`; `need_checkpoint`: refuse to go on without one).

    First the checks, each once: `cfg` itself (`check`; not again with `checked=True`, for a config
    that passed it, as `load`'s does), that train.batch_size splits over the devices of `mesh` (when
    given: the mesh `Experiment.train` will get), and over the training set and the processes,
    and that sample.quality has labelled images to score. A train.batch_size larger than the
    training split is capped at it (`cap_batch`: small tables train on full batches), and the
    experiment's config says so.
    """
    if not checked:
        check(cfg)
    ds = build_dataset(cfg)
    cfg = cap_batch(cfg, ds.train.shape[0], 1 if mesh is None else mesh.devices.size)
    t = cfg.train
    if mesh is not None:
        parallel.check_batch(t.batch_size, mesh)
    if cfg.sample.quality:
        quality.check_data(ds)
    data.loader.check_batches(ds.train.shape[0], t.batch_size, jax.process_index(),
                              jax.process_count(), what="train.batch_size")
    sde = build_sde(cfg)
    cond = build_conditioning(cfg, ds)
    optimizer = build_optimizer(cfg)
    exp = Experiment(cfg, ds, sde, cond, build_preprocess(cfg, ds), optimizer,
                     _new_state(cfg, ds, sde, cond, optimizer))
    return resume(exp, ckpt_dir, need_checkpoint=need_checkpoint)


def cap_batch(cfg: Config, rows: int, devices: int = 1) -> Config:
    """`cfg` with train.batch_size at most `rows` (the training split's size), rounded down to a
    multiple of what it must split over (the devices, the processes and train.grad_accum); `cfg`
    itself where the batch fits, or where no such multiple fits (the checks then say why)."""
    t = cfg.train
    if t.batch_size <= rows:
        return cfg
    unit = math.lcm(devices, jax.process_count(), t.grad_accum)
    if rows < unit:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(t, batch_size=rows - rows % unit))


def _new_state(cfg: Config, ds, sde, cond: Conditioning, optimizer) -> train.TrainState:
    model = build_model(cfg, ds, sde, cond, key=jax.random.key(cfg.train.seed))
    return train.init_state(model, optimizer)


def resume(exp: Experiment, ckpt_dir, *, need_checkpoint: bool = False) -> Experiment:
    """`exp` with the train state of `ckpt_dir`'s latest checkpoint (refused if it holds another
    model's weights or config), or a new state when there is none; nothing else is built or checked
    again (for a checkpoint another command wrote after `exp` was built)."""
    found = [] if ckpt_dir is None else ckpt.list_checkpoints(ckpt_dir)
    last = found[-1] if found else None
    if last is None:
        if need_checkpoint:
            raise CheckpointError(f"no checkpoint in {ckpt_dir}: run with --mode train (or all) "
                                  f"first.")
        if exp.checkpoint is None:
            return exp
        state = _new_state(exp.cfg, exp.ds, exp.sde, exp.conditioning, exp.optimizer)
        return dataclasses.replace(exp, state=state, checkpoint=None)
    try:  # a checkpoint of another config is named by the field that differs, not a shape
        _same_model(exp.cfg, ckpt.read_manifest(last), last)
    except CorruptCheckpointError:
        pass  # `ckpt.load` says what is damaged
    try:
        state, manifest = ckpt.load(last, exp.state)  # `exp.state` gives the structure
    except CorruptCheckpointError as e:
        if len(found) == 1:
            raise
        raise CorruptCheckpointError(f"{e} Delete it to resume from the previous checkpoint, "
                                     f"{found[-2].name}.") from None
    _same_model(exp.cfg, manifest, last)
    _same_standardisation(exp.preprocess, manifest, last)
    return dataclasses.replace(exp, state=state, checkpoint=last)


def standardisation(preprocess) -> dict | None:
    """The statistics continuous data are standardised with (`{"mean": [...], "std": [...]}`),
    stored in every checkpoint so that a resumed run is refused if its data changed; None for
    discrete or unstandardised data."""
    if preprocess.mean is None:
        return None
    return {"mean": np.ravel(np.asarray(preprocess.mean, np.float64)).tolist(),
            "std": np.ravel(np.asarray(preprocess.std, np.float64)).tolist()}


def _same_standardisation(preprocess, manifest: dict, path) -> None:
    stored, now = manifest.get("metadata", {}).get("standardisation"), standardisation(preprocess)
    if stored is None or now is None:
        return
    try:
        same = all(np.allclose(np.asarray(stored[k], np.float64), now[k], rtol=1e-5, atol=1e-7)
                   for k in ("mean", "std"))
    except (KeyError, TypeError, ValueError):
        same = False
    if not same:
        def show(v):
            return "[" + ", ".join(f"{float(a):.4g}" for a in v[:3]) + (", ...]" if len(v) > 3 else "]")

        raise CheckpointError(
            f"the training data changed since checkpoint {path} was written: they standardise with "
            f"mean {show(now['mean'])}, std {show(now['std'])}, the checkpoint's model with mean "
            f"{show(stored.get('mean', []))}, std {show(stored.get('std', []))}: restore the data, "
            f"or use another --workdir.")


def _same_model(cfg: Config, manifest: dict, path) -> None:
    stored = manifest.get("metadata", {}).get("config")
    if stored is None:
        return
    try:
        old = C.to_dict(C.from_dict(stored))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot read.") from None
    new = C.to_dict(cfg)
    for section in IDENTITY:
        for key, value in new[section].items():
            if f"{section}.{key}" not in NOT_IDENTITY and old[section].get(key) != value:
                raise CheckpointError(
                    f"checkpoint {path} was trained with {section}.{key}={old[section].get(key)!r}, "
                    f"not {value!r}: use another --workdir, or set it back to resume.")


def default_workdir(cfg: Config) -> Path:
    """A run's work directory unless one is given: runs/<config name>; for a user's array file
    also the file's name (runs/<name>-<file stem>), so that two tables trained with one config
    never share a work directory."""
    if cfg.data.name == "array" and cfg.data.root:
        return Path("runs") / f"{cfg.name}-{Path(cfg.data.root).stem}"
    return Path("runs") / cfg.name


def load_run(workdir, *, checkpoint: str = "best") -> Experiment:
    """A finished `main.py` run from its work directory: config.json and a checkpoint, by default
    the one with the best validation NLL (checkpoints/best, where the run evaluated during
    training; else the latest), with "latest" the newest.

    `exp.state.ema` is the model to evaluate; `exp.cfg`, `exp.ds`, `exp.preprocess` are the run's.
    """
    if checkpoint not in ("best", "latest"):
        raise ConfigError(f"checkpoint={checkpoint!r} is invalid: expected 'best' or 'latest'.")
    ckpt_dir = Path(workdir) / "checkpoints"
    exp = experiment(run_config(workdir), ckpt_dir=ckpt_dir, need_checkpoint=True)
    return (checkpoint == "best" and resume_best(exp, ckpt_dir)) or exp


def resume_best(exp: Experiment, ckpt_dir) -> Experiment | None:
    """`exp` with the state of the best checkpoint on the validation split
    (`ckpt_dir`/best, `train.BestCheckpoint`; checked as any checkpoint is), or None where the
    run kept none."""
    best = Path(ckpt_dir) / train.BEST
    return None if ckpt.latest(best) is None else resume(exp, best, need_checkpoint=True)


def run_config(workdir) -> Config:
    """The config a `main.py` run wrote to `workdir`/config.json (not yet checked); raises
    CheckpointError if there is none or it cannot be read."""
    path = Path(workdir) / "config.json"
    try:
        return C.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {workdir}: not a work directory of "
                              f"main.py.") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable config ({e}).") from None
