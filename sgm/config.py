"""Typed, frozen experiment configs; validation; `section.field=value` overrides; JSON round trip.

A config file in `configs/` is a Python module defining `config = Config(...)`. The command line
turns `--set train.steps=2000 model.width=128` into a new frozen config with the values converted
to each field's declared type, and `validate` refuses out-of-range values with one sentence naming
the field, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

#: keys that were renamed: old -> new (an old key gives an error naming the new one)
RENAMED = {"model.param": "model.prediction"}


@dataclass(frozen=True)
class DataConfig:
    name: str = "eight_gaussians"
    root: str | None = None  # folder of on-disk datasets (default data/<name>)
    n_train: int | None = None
    n_test: int | None = None
    image_size: int | None = None
    seed: int = 0
    standardize: bool = True  # continuous data: fit mean/std on train (reported NLL is in data units)
    val_fraction: float = 0.1  # training examples set aside for validation (unless the data has x_val)


@dataclass(frozen=True)
class SDEConfig:
    kind: str = "vp"
    schedule: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t0: float = 1e-5
    logsnr_max: float = 13.8  # schedule=learned: its fixed log SNR at t0 (the linear schedule's)
    logsnr_min: float = -10.05  # ... and at t1 = 1


@dataclass(frozen=True)
class ModelConfig:
    net: str = "mlp"
    prediction: str = "eps"  # what the network outputs: eps, score, x0, v or edm
    width: int = 128  # MLP hidden width / DiT token width
    depth: int = 3  # MLP residual blocks / DiT blocks
    base: int = 32  # UNet base channels
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    heads: int = 4
    patch: int = 2
    dropout: float = 0.0
    conditional: bool = False  # condition on the dataset's labels or parameters
    label_dropout: float = 0.0  # classifier-free guidance: probability of the null label
    periodic: bool = False  # UNet: circular padding (fields on a periodic box)
    spectral_modes: int = 0  # periodic UNet: Fourier modes per axis of each block's spectral conv
    dtype: str = "float32"  # the network's compute dtype: float32 or bfloat16 (weights stay float32)
    time_scale: float = 1000.0  # time features: sinusoids of time_scale * t (and of log t)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 256  # global batch, split over all devices
    grad_accum: int = 1  # micro-batches per step (for global batches that do not fit)
    cpu_devices: int = 0  # split the CPU into this many devices, one per core (0: JAX's one)
    optimizer: str = "adamw"
    lr: float = 2e-3
    warmup: int = 200
    decay: str = "cosine"  # after the warm-up: "cosine", "linear", "constant"; or "onecycle"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    ema_warmup: bool = True  # decay min(ema, (1 + n) / (10 + n)) at update n
    seed: int = 0
    weighting: str = "sigma2"
    importance: bool = False
    time_sampling: str = "stratified"
    reduce: str = "mean"
    log_every: int = 100
    eval_every: int = 0  # 0: only at the end
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    on_nan: str = "stop"  # or "skip"
    eval_num: int = 512  # validation points for loss / likelihood during training
    patience: int | None = None  # stop after this many evaluations without a better validation NLL
    log_to: tuple[str, ...] = ("jsonl",)  # metrics.jsonl; "tensorboard", "wandb" (optional extras)

    def __post_init__(self):  # a config file may name the loggers in a list, or name one
        if isinstance(self.log_to, str | list):
            names = (self.log_to,) if isinstance(self.log_to, str) else tuple(self.log_to)
            object.__setattr__(self, "log_to", names)


@dataclass(frozen=True)
class SampleConfig:
    """The sampler and its options. Every option of every method (the names in
    `sgm.samplers.SAMPLERS[m].options`) is a field here, defaulting to the library's default, or
    to "" / none where the methods that share the name differ (grid, order: each method's own);
    s_tmax's none is the library's inf (no bound). `sgm.build.sample_options` passes a method the
    options it takes that differ from these defaults, and refuses one changed for a method that
    does not take it."""

    method: str = "em"
    steps: int = 500  # also the fixed-step ode solvers' (euler, heun, midpoint) steps
    num: int = 2000
    t_end: float | None = None
    snr: float = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
    eta: float = 0.0  # ddim: 0 deterministic, 1 the ddpm posterior noise
    guidance: float = 0.0
    seed: int = 1
    quality: bool = False  # labelled images: score the samples offline (sgm.quality)
    grid: str = ""  # few-step samplers' noise levels: "" (the method's own), karras, logsnr, time,
    #                 "searched" on the model's trajectories (sgm.search_grid, kept in the run), or
    #                 "tuned": searched, then fitted to the method by gradient (sgm.tune_grid)
    corrector_steps: int | None = None  # pc: Langevin steps per step; none: 1 on VE, 0 on VP/SubVP
    variance: str = "posterior"  # ddpm: "posterior" (Ho et al.'s beta-tilde) or "forward" (beta)
    solver: str = "tsit5"  # ode: adaptive tsit5, dopri5, dopri8, bosh3; fixed euler, heun, midpoint
    rtol: float = 1e-5  # ode, adaptive solvers: the PID step control's relative tolerance,
    atol: float = 1e-5  # ... its absolute tolerance,
    max_steps: int = 16384  # ... the most steps one solve may take,
    stepping: str = "batch"  # ... and shared steps for the batch, or "point": each sample its own
    rho: float = 7.0  # heun, dpm2m, dpm3m, unipc, ipndm: the karras grid's exponent (EDM's 7)
    order: int | None = None  # unipc 1-3, ipndm 1-4; none: the method's own (unipc 3, ipndm 4)
    variant: str = "bh2"  # unipc's B(h): "bh1" (h) or "bh2" (1 - e^-h)
    s_churn: float = 0.0  # heun: EDM's stochastic churn (0: deterministic); with s_churn > 0,
    s_tmin: float = 0.0  # ... noise is added where s_tmin <= sigma <= s_tmax (sigma = std/scale),
    s_tmax: float | None = None  # ... none: no upper bound,
    s_noise: float = 1.0  # ... scaled by s_noise (EDM's S_noise)


@dataclass(frozen=True)
class LikelihoodConfig:
    num: int = 1000
    exact: bool = True
    rtol: float = 1e-5
    atol: float = 1e-5
    probes: int = 1
    dequant_samples: int = 1  # K uniform dequantisations per test point (discrete data)
    dequant_bound: str = "mean"  # "mean": average of the K bounds; "iw": log of the mean likelihood
    dequant: str = "uniform"  # dequantisation density q: "uniform" or "tn" (truncated normal)
    batch: int = 250
    seed: int = 2
    solver: str = "auto"  # dopri5 for VP/SubVP, tsit5 for VE; or tsit5, dopri5, dopri8, bosh3
    stepping: str = "batch"  # shared steps for each batch, or "point": each point its own
    error_norm: str = "point"  # shared steps: every point within tolerance, or "batch": their RMS
    solver_check: float = 0.1  # this fraction of the points again at rtol/10, atol/10: the error bar
    clock: str = "auto"  # the ODE's variable: t, logt, logsnr; auto: logsnr if learned, else t
    baselines: bool = False  # classical density estimators beside the model (always for arrays)


@dataclass(frozen=True)
class Config:
    name: str = "eight_gaussians"
    data: DataConfig = field(default_factory=DataConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)


# ------------------------------------------------------------------------------------------------


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _convert(text: str, tp, where: str):
    """Parses `text` as type `tp` (int, float, str, bool, None-able, tuple[int, ...])."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _convert(text, args[0], where)
    if origin is tuple:
        (item, *_) = typing.get_args(tp)
        body = text.strip().strip("()[]")
        return tuple(_convert(p.strip(), item, where) for p in body.split(",") if p.strip())
    if tp is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{where}={text!r} is not a boolean: expected true or false.")
    if tp in (int, float):  # ASCII only: int() and float() also read other scripts' digits ("٣٠")
        try:
            if text.isascii():
                return tp(text)
        except ValueError:
            pass
        what = "an integer: expected digits 0-9" if tp is int else "a number: expected digits 0-9"
        raise ConfigError(f"{where}={text!r} is not {what}.")
    return text


def override(config: Config, assignments: list[str]) -> Config:
    """Applies `section.field=value` strings, type-checked against the dataclass fields."""
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value.")
        path, text = item.split("=", 1)
        if path.strip() in RENAMED:
            raise ConfigError(f"config key {path.strip()!r} was renamed: use "
                              f"{RENAMED[path.strip()]}={text}.")
        parts = path.strip().split(".")
        if len(parts) == 1 and parts[0] == "name":
            config = dataclasses.replace(config, name=text)
            continue
        sections = {f.name for f in dataclasses.fields(config)} - {"name"}
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(f"unknown config key {path!r}: expected section.field with section one "
                              f"of {', '.join(sorted(sections))}.")
        sec_name, fld = parts
        section = getattr(config, sec_name)
        hints = _hints(type(section))
        if fld not in hints:
            raise ConfigError(f"unknown config key {path!r}: {sec_name} has fields "
                              f"{', '.join(hints)}.")
        value = _convert(text.strip(), hints[fld], path)
        config = dataclasses.replace(config, **{sec_name: dataclasses.replace(section, **{fld: value})})
    return config


def load_file(path: str | Path) -> Config:
    """Imports a config module and returns its `config` (a `Config`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found: expected a Python file defining "
                          f"`config = Config(...)` (see configs/).")
    if path.suffix != ".py":
        raise ConfigError(f"config file {str(path)!r} is not a Python file: expected a .py file "
                          f"defining `config = Config(...)` (see configs/).")
    spec = importlib.util.spec_from_file_location(f"sgm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    flag, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave no __pycache__ behind
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax error or an exception in the user's file: one sentence
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise ConfigError(f"config file {str(path)!r} failed to load{where}: "
                          f"{type(e).__name__}: {e}.") from None
    except SystemExit as e:  # sys.exit() in the file must not end the command as if it were done
        code = "" if e.code is None else repr(e.code)
        raise ConfigError(f"config file {str(path)!r} called sys.exit({code}) while loading: a "
                          f"config file must only define `config = Config(...)`.") from None
    finally:
        sys.dont_write_bytecode = flag
    config = getattr(module, "config", None)
    if not isinstance(config, Config):
        raise ConfigError(f"config file {str(path)!r} must define `config = Config(...)`.")
    for f in dataclasses.fields(Config):
        cls = _hints(Config)[f.name]
        if f.name != "name" and not isinstance(getattr(config, f.name), cls):
            raise ConfigError(f"config file {str(path)!r} sets {f.name}="
                              f"{getattr(config, f.name)!r}: expected {cls.__name__}(...).")
    return config


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def from_dict(d: dict) -> Config:
    """Inverse of `to_dict` (lists become tuples where the field is a tuple)."""
    kwargs = {}
    for f in dataclasses.fields(Config):
        if f.name == "name":
            kwargs["name"] = d["name"]
            continue
        cls = _hints(Config)[f.name]
        hints = _hints(cls)
        section = dict(d[f.name])
        for old, new in RENAMED.items():  # a run written before a key was renamed
            (o_sec, o_key), (_, n_key) = old.split("."), new.split(".")
            if o_sec == f.name and o_key in section and n_key not in section:
                section[n_key] = section.pop(o_key)
        vals = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in hints}
        kwargs[f.name] = cls(**vals)
    return Config(**kwargs)


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2)


#: bounds that every numeric field is held to before anything runs: seeds fit a signed 64-bit
#: integer (JAX's and numpy's seeds), counts a signed 32-bit one (step counters, array sizes), the
#: sampler's steps a grid that fits in memory, the likelihood's relative tolerance float32's resolution
SEED_LIMIT = 2**63
COUNT_LIMIT = 2**31 - 1
STEP_LIMIT = 10**6
TOLERANCE_FLOOR = 2.0**-23
#: the largest classifier-free guidance weight (practical weights are at most about 20)
GUIDANCE_LIMIT = 100.0
#: the highest order of each sampler that takes sample.order (`sgm.sigma_solvers.multistep` and
#: `ipndm` refuse a higher one; tests/test_sample_options.py holds the two together)
MAX_ORDER = {"unipc": 3, "ipndm": 4}
#: pc's most Langevin corrector steps per step: each is one more score evaluation per step, and
#: its bias in the variance (see `sgm.samplers`) adds up rather than averaging out
CORRECTOR_LIMIT = 100


def _expect(cond: bool, where: str, value, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{where}={value!r} is invalid: expected {expected}.")


def validate(config: Config) -> Config:
    """Checks the type and range of every field; returns the config unchanged or raises ConfigError.

    Names (datasets, networks, samplers, ...) are checked against their registries by
    `sgm.build.check`, and the SDE's parameters by the SDE's own constructor.
    """
    for sec in dataclasses.fields(config):
        section = getattr(config, sec.name)
        if sec.name == "name":
            _expect(isinstance(section, str) and section and section.isprintable()
                    and not any(c in section for c in "/\\") and section not in (".", ".."),
                    "name", section, "a non-empty string of printable characters without / or \\, "
                    "and not . or .. (it names the work directory, runs/<name>)")
            continue
        for fld, tp in _hints(type(section)).items():
            v = getattr(section, fld)
            where = f"{sec.name}.{fld}"
            optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
            base = [a for a in typing.get_args(tp) if a is not type(None)][0] if optional else tp
            if v is None:
                _expect(optional, where, v, f"a value of type {getattr(base, '__name__', base)}")
                continue
            if typing.get_origin(base) is tuple:
                item = typing.get_args(base)[0]
                _expect(isinstance(v, tuple) and all(isinstance(i, item) and not isinstance(i, bool)
                                                     for i in v), where, v,
                        f"a tuple of {'integers' if item is int else 'strings'}")
            elif base is float:
                _expect(isinstance(v, (int, float)) and not isinstance(v, bool), where, v, "a number")
                _expect(math.isfinite(v), where, v, "a finite number")
            elif base is int:
                _expect(isinstance(v, int) and not isinstance(v, bool), where, v, "an integer")
            elif base is bool:
                _expect(isinstance(v, bool), where, v, "true or false")
            elif base is str:
                _expect(isinstance(v, str), where, v, "a string")
    d, m, t, smp, lik = config.data, config.model, config.train, config.sample, config.likelihood
    for f in ("n_train", "n_test", "image_size"):
        v = getattr(d, f)
        _expect(v is None or v > 0, f"data.{f}", v, "a positive integer or none")
    for where, seed in (("data.seed", d.seed), ("train.seed", t.seed), ("sample.seed", smp.seed),
                        ("likelihood.seed", lik.seed)):
        _expect(0 <= seed < SEED_LIMIT, where, seed, "a non-negative integer below 2**63")
    for f in ("width", "depth", "base", "num_res_blocks", "heads", "patch"):
        _expect(getattr(m, f) > 0, f"model.{f}", getattr(m, f), "a positive integer")
    _expect(len(m.channel_mults) > 0 and min(m.channel_mults) > 0, "model.channel_mults",
            m.channel_mults, "a non-empty tuple of positive integers")
    _expect(m.spectral_modes >= 0, "model.spectral_modes", m.spectral_modes,
            "a non-negative integer (0: no spectral convolutions)")
    _expect(0 <= m.dropout < 1, "model.dropout", m.dropout, "a probability in [0, 1)")
    _expect(m.time_scale > 0, "model.time_scale", m.time_scale, "a positive number")
    _expect(0 <= m.label_dropout < 1, "model.label_dropout", m.label_dropout, "a probability in [0, 1)")
    for f in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "eval_num"):
        _expect(0 < getattr(t, f) <= COUNT_LIMIT, f"train.{f}", getattr(t, f),
                f"a positive integer of at most {COUNT_LIMIT}")
    _expect(0 <= t.cpu_devices <= 1024, "train.cpu_devices", t.cpu_devices,
            "0 (JAX's one CPU device) or a number of CPU devices of at most 1024")
    for f in ("warmup", "eval_every", "ckpt_every"):
        _expect(0 <= getattr(t, f) <= COUNT_LIMIT, f"train.{f}", getattr(t, f),
                f"a non-negative integer of at most {COUNT_LIMIT}")
    _expect(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction,
            "a fraction in (0, 1) of the training examples to validate on")
    _expect(t.patience is None or 0 < t.patience <= COUNT_LIMIT, "train.patience", t.patience,
            "a positive number of evaluations without improvement, or none (no early stopping)")
    _expect(t.patience is None or t.eval_every > 0, "train.patience", t.patience,
            "none without train.eval_every (early stopping compares the periodic evaluations)")
    _expect(t.batch_size % t.grad_accum == 0, "train.grad_accum", t.grad_accum,
            f"a divisor of train.batch_size={t.batch_size}")
    _expect(t.lr > 0, "train.lr", t.lr, "a positive learning rate")
    _expect(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a non-negative number")
    _expect(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "a non-negative number (0: off)")
    _expect(0 <= t.ema < 1, "train.ema", t.ema, "a decay in [0, 1)")
    _expect(0 < smp.steps <= STEP_LIMIT, "sample.steps", smp.steps,
            f"a positive integer of at most {STEP_LIMIT}")
    _expect(0 < smp.num <= COUNT_LIMIT, "sample.num", smp.num,
            f"a positive integer of at most {COUNT_LIMIT}")
    _expect(smp.t_end is None or 0 < smp.t_end < 1, "sample.t_end", smp.t_end, "a time in (0, 1)")
    _expect(smp.eta >= 0, "sample.eta", smp.eta, "a non-negative number")
    _expect(-1 <= smp.guidance <= GUIDANCE_LIMIT, "sample.guidance", smp.guidance,
            f"a guidance weight in [-1, {GUIDANCE_LIMIT:g}] (-1: the unconditional score; "
            f"weights used in practice are at most about 20, far larger ones overflow the "
            f"guided score)")
    _expect(smp.snr > 0, "sample.snr", smp.snr, "a positive number")
    _expect(smp.corrector_steps is None or 0 <= smp.corrector_steps <= CORRECTOR_LIMIT,
            "sample.corrector_steps", smp.corrector_steps,
            f"an integer in [0, {CORRECTOR_LIMIT}], or none (1 on VE, 0 on VP and SubVP)")
    _expect(smp.rtol >= TOLERANCE_FLOOR, "sample.rtol", smp.rtol,
            f"a relative tolerance of at least {TOLERANCE_FLOOR:.3g} (float32 resolves nothing "
            f"finer)")
    _expect(smp.atol > 0, "sample.atol", smp.atol, "a positive absolute tolerance")
    _expect(0 < smp.max_steps <= COUNT_LIMIT, "sample.max_steps", smp.max_steps,
            f"a positive integer of at most {COUNT_LIMIT}")
    _expect(smp.rho > 0, "sample.rho", smp.rho,
            "a positive exponent of the karras grid (EDM's is 7)")
    top = MAX_ORDER.get(smp.method, max(MAX_ORDER.values()))
    mine = f" for sample.method={smp.method!r}" if smp.method in MAX_ORDER else ""
    orders = ", ".join(f"{m} 1 to {k}" for m, k in MAX_ORDER.items())
    _expect(smp.order is None or 1 <= smp.order <= top, "sample.order", smp.order,
            f"an integer from 1 to {top}{mine} ({orders}), or none: the method's own")
    _expect(smp.s_churn >= 0, "sample.s_churn", smp.s_churn, "a non-negative number (0: no churn)")
    _expect(smp.s_noise >= 0, "sample.s_noise", smp.s_noise, "a non-negative number")
    _expect(smp.s_tmin >= 0, "sample.s_tmin", smp.s_tmin, "a non-negative noise level")
    _expect(smp.s_tmax is None or smp.s_tmax >= smp.s_tmin, "sample.s_tmax", smp.s_tmax,
            f"a noise level of at least sample.s_tmin={smp.s_tmin:g}, or none (no upper bound)")
    for f in ("num", "probes", "dequant_samples", "batch"):
        _expect(0 < getattr(lik, f) <= COUNT_LIMIT, f"likelihood.{f}", getattr(lik, f),
                f"a positive integer of at most {COUNT_LIMIT}")
    _expect(lik.rtol >= TOLERANCE_FLOOR, "likelihood.rtol", lik.rtol,
            f"a relative tolerance of at least {TOLERANCE_FLOOR:.3g} (float32 resolves nothing finer)")
    _expect(lik.atol > 0, "likelihood.atol", lik.atol, "a positive absolute tolerance")
    _expect(0 <= lik.solver_check <= 1, "likelihood.solver_check", lik.solver_check,
            "a fraction of the test points in [0, 1]")
    return config
