"""Evaluation of a score model: held-out loss, held-out likelihood, samples in data units.

Every function takes the model (or a score), the preprocessing, the raw data and the networks'
conditioning keywords explicitly. Likelihoods are reported in the data's own units: the
preprocessing's log-Jacobian is added to the model-space log-density (for continuous data the
standardisation's; for discrete data the dequantisation bound's constant D log((hi - lo) / L)), so
nats per sample compare with the data's entropy and bits/dim is that divided by D log 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import parallel
from .data import Preprocess
from .data.transforms import DEQUANTS
from .errors import ConfigError, check_choice
from .likelihood import (DEQUANT_BOUNDS, StepControl, bits_per_dim, combine_dequantised,
                         log_likelihood)
from .ode_solvers import check_count, check_number
from .loss import dsm_loss
from .sampler_settings import SamplerSettings
from .samplers import sample


def heldout_loss(model, preprocess: Preprocess, x, cond: dict, *, key, **loss_options) -> float:
    """DSM loss of `model` on the raw batch `x` with a fixed `key` (comparable across steps).

    `loss_options` are `dsm_loss`'s keywords (weighting, reduce, ...).
    """
    k_pre, k_loss = jax.random.split(key)
    return float(_loss(model, preprocess(k_pre, jnp.asarray(x)), cond, k_loss, loss_options))


@eqx.filter_jit
def _loss(model, x, cond, key, options):
    return dsm_loss(model, model.sde, x, key=key, cond=cond, **options)


def _pad(a, n: int):
    """Pads the leading axis to a multiple of n by repeating the last row (results are cut back)."""
    extra = -a.shape[0] % n
    return a if extra == 0 else jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)])


def tn_std(sde, preprocess: Preprocess, t0: float | None = None) -> float:
    """The diffusion's noise at t0 in levels (data units): noise_level(t0) L / (hi - lo).

    The std of the truncated-normal dequantisation that matches q(x_t0 | x_0) (Zheng et al. 2023).
    """
    t0 = sde.t0 if t0 is None else t0
    return float(sde.noise_level(t0)) * preprocess.levels / (preprocess.hi - preprocess.lo)


@dataclasses.dataclass(frozen=True)
class Dequantisation:
    """How `heldout_likelihood` dequantises discrete data: `samples` draws x + u of each point
    from the density q `kind`, reduced to one bound per point by `bound`. Continuous data is not
    dequantised (one solve per point, whatever these say).

    Arguments:
        kind: q, "uniform" (u ~ U[0, 1)^D, log q = 0) or "tn" (a truncated normal on [0, 1) per
            level, each draw's bound log p - log q; see `sgm.data.transforms`).
        samples: K, the dequantisations of each point (a positive integer).
        bound: how the K draws of a point are reduced (`sgm.likelihood.combine_dequantised`):
            "mean" (the mean of the K bounds) or "iw" (the importance-weighted bound, the log of
            their mean likelihood).
        std: the truncated normal's std in levels; None (the default): `tn_std`, the diffusion's
            noise at the likelihood's t0 in data units. Ignored by "uniform".

    Raises:
        ConfigError: an unknown kind or bound, `samples` not a positive integer, or `std` given
        and not a positive finite number.
    """

    kind: str = "uniform"
    samples: int = 1
    bound: str = "mean"
    std: float | None = None

    def __post_init__(self):
        check_choice("dequantisation", self.kind, DEQUANTS)
        check_choice("dequantisation bound", self.bound, DEQUANT_BOUNDS)
        samples = check_count("the dequantisation's samples", self.samples)
        object.__setattr__(self, "samples", samples)
        if self.std is not None:
            check_number("the truncated-normal dequantisation's std", self.std, positive=True)


def heldout_likelihood(model, preprocess: Preprocess, x, cond: dict, *, key, batch: int = 250,
                       dequantisation: Dequantisation | None = None, mesh=None,
                       return_draws: bool = False, progress: Callable[[int, int], None] | None = None,
                       **likelihood_options) -> dict:
    """Log-likelihood of the raw points `x` (N, ...) under the probability-flow ODE, in data units.

    Arguments:
        model: score model `model(t, x, **cond_i)` with its `sde`.
        preprocess: data -> model space (its log-Jacobian is added).
        x: raw test points; `cond` the networks' conditioning keywords of each (or {}).
        key: PRNG key (dequantisation noise and Hutchinson probes; split per batch).
        batch: points per solve.
        dequantisation: how discrete data is dequantised (`Dequantisation`: q, K draws per point
            and the bound they are reduced by); None: `Dequantisation()`, one uniform draw.
        mesh: split each batch over its devices (the solve's `StepControl.sharding` is set from
            it; without a mesh, None).
        return_draws: also return the per-draw log-likelihoods (`(K, N)`, data units) as `draws`.
        progress: hook `progress(points_done, total)` called after each batch (K N points in all).
        likelihood_options: `sgm.log_likelihood`'s keywords (exact, rtol, atol, probes,
            divergence, control, ...); a `control=StepControl(progress_meter=...)` (e.g.
            `diffrax.TqdmProgressMeter()`) shows the steps of each batch's solve, where
            `progress` only counts finished batches; its `t0` is also where the truncated
            normal's default std is taken.

    Returns a dict with `nll` (nats per sample; for discrete data the dequantisation bound),
    `nll_stderr`, `bpd` (bits per dimension), `nfe` and `num`; for discrete data also
    `dequant_samples`, `dequant_bound`, `dequant` (the dequantisation's K, bound and kind) and,
    for "tn", `dequant_std`.
    """
    deq = Dequantisation() if dequantisation is None else dequantisation
    if not isinstance(deq, Dequantisation):
        raise ConfigError(f"dequantisation must be an sgm.evaluate.Dequantisation(...), got "
                          f"{deq!r}")
    control = likelihood_options.pop("control", None)
    control = StepControl() if control is None else control
    num = x.shape[0]
    x_all = jnp.asarray(x)
    shape = tuple(x_all.shape[1:])
    log_det = preprocess.log_det(shape)
    logps, nfes = [], []
    dequant_std = deq.std
    if deq.kind == "tn" and dequant_std is None and preprocess.levels is not None:
        dequant_std = tn_std(model.sde, preprocess, getattr(control, "t0", None))
    draws_k = deq.samples if preprocess.levels is not None else 1
    if progress is not None:
        progress(0, draws_k * num)
    for _ in range(draws_k):
        for i in range(0, num, batch):
            key, k_pre, k_hutch = jax.random.split(key, 3)
            xb, log_q = preprocess.dequantise(k_pre, x_all[i:i + batch], dequant=deq.kind,
                                              std=dequant_std)
            cb = {k: v[i:i + batch] for k, v in cond.items()}
            n, sharding = xb.shape[0], None
            if mesh is not None:
                sharding = parallel.batch_sharding(mesh)
                xb, cb = _pad(xb, mesh.devices.size), {k: _pad(v, mesh.devices.size) for k, v in cb.items()}
            logp, info = log_likelihood(model, model.sde, xb, key=k_hutch, cond=cb,
                                        control=_with_sharding(control, sharding),
                                        **likelihood_options)
            logps.append(parallel.gather(logp)[:n] + log_det - log_q)
            nfes.append(int(info["nfe"]))
            if progress is not None:
                progress(sum(a.shape[0] for a in logps), draws_k * num)
    draws = np.concatenate(logps).reshape(-1, num)  # (K, num): K dequantisations per point
    logp = np.asarray(combine_dequantised(draws, deq.bound), dtype=np.float64)
    out = {"nll": -float(logp.mean()), "nll_stderr": float(logp.std() / math.sqrt(num)),
           "bpd": float(np.mean(bits_per_dim(logp, math.prod(shape), levels=None))),
           "nfe": int(np.mean(nfes)), "num": num}
    if preprocess.levels is not None:
        out.update(dequant_samples=draws.shape[0], dequant_bound=deq.bound, dequant=deq.kind)
        if deq.kind == "tn":
            out["dequant_std"] = float(dequant_std)
    if return_draws:
        out["draws"] = draws
    return out


def _with_sharding(control, sharding):
    """`control` with the batch's `sharding` (a StepControl; anything else is left for
    `log_likelihood` to refuse)."""
    if not isinstance(control, StepControl) or control.sharding is sharding:
        return control
    return dataclasses.replace(control, sharding=sharding)


def solver_error(model, preprocess: Preprocess, x, cond: dict, *, key, rtol: float = 1e-5,
                 atol: float = 1e-5, progress: Callable[[int, int], None] | None = None,
                 **options) -> dict:
    """An estimate of the ODE solver's error in `heldout_likelihood` at `rtol`, `atol`: the raw
    points `x` (a subsample of the test set) solved again at a tenth of both tolerances, with the
    same dequantisation noise and Hutchinson probes, so the two differ by solver error alone.

    Returns `solver_error`, twice the mean over the points of |log p - log p_tight| (nats per
    point), and `solver_check_num`, the number of points. On closed-form scores the true mean
    error of a point lay within 0.75-1.26 times the mean difference for VP, SubVP and VE
    (docs/results/likelihood-engine.md), so twice it bounds both the error of a typical point and
    the solver's error of the mean NLL (|mean e| <= mean |e|). `options` are
    `heldout_likelihood`'s (batch, dequantisation, mesh, exact, probes, control, ...), but for
    return_draws and the control's progress meter; `progress` (points_done, total) counts the
    points of both solves.
    """
    options = {k: v for k, v in options.items() if k != "return_draws"}
    if isinstance(options.get("control"), StepControl):  # no bars for the error bar's solves
        options["control"] = dataclasses.replace(options["control"], progress_meter=None)

    def part(first: bool):
        if progress is None:
            return None
        return lambda done, total: progress(done + (0 if first else total), 2 * total)

    base = heldout_likelihood(model, preprocess, x, cond, key=key, rtol=rtol, atol=atol,
                              return_draws=True, progress=part(True), **options)
    floor = 2.0**-23  # float32 resolves no finer relative tolerance
    tight = heldout_likelihood(model, preprocess, x, cond, key=key, rtol=max(rtol / 10, floor),
                               atol=atol / 10, return_draws=True, progress=part(False), **options)
    diff = np.asarray(base["draws"], np.float64) - np.asarray(tight["draws"], np.float64)
    diff = diff.mean(axis=0)  # per point, over its dequantisations
    return {"solver_error": 2.0 * float(np.mean(np.abs(diff))), "solver_check_num": int(x.shape[0])}


def draw_samples(score, sde, preprocess: Preprocess, shape: tuple[int, ...], *, num: int, key,
                 cond: dict | None = None, mesh=None, **sample_options):
    """`num` samples in data units (integer levels for discrete data) and the sampler's info,
    with `finite`: whether every sampled value was finite before the conversion to data units
    (integer levels cannot hold NaN).

    `score` is any score function of one sample (a model, a guided score); `cond` the
    conditioning keywords of each sample; `sample_options` go to `sgm.sample` (method, steps,
    settings, ...). Samples are clipped to the model-space range of discrete data (the settings'
    `clip` is `preprocess.clip`). With a `mesh` the batch is split over its devices (`num` must
    divide over them).
    """
    if mesh is not None:
        parallel.check_batch(num, mesh, what="number of samples")
        sample_options.setdefault("sharding", parallel.batch_sharding(mesh))
    settings = sample_options.pop("settings", None)
    settings = SamplerSettings() if settings is None else settings
    if isinstance(settings, SamplerSettings):  # anything else is left for `sample` to refuse
        settings = settings._replace(clip=preprocess.clip)
    x, info = sample(score, sde, shape, key=key, num=num, settings=settings, cond=cond or None,
                     **sample_options)
    x = parallel.gather(x)
    return preprocess.to_data(x), {**info, "finite": bool(np.all(np.isfinite(x)))}
