"""Evaluation of a trained score model: held-out loss, held-out likelihood, samples in data units.

Likelihoods are reported in the data's own units: for continuous data the standardisation's
log-Jacobian is added back (nats per sample, comparable with the generator's entropy); for discrete
data the uniform-dequantisation bound is turned into bits per dimension, averaged over
`dequant_samples` dequantisations of each test point.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint as ckpt
from . import config as C
from . import parallel
from .config import Config
from .data import Dataset, load
from .errors import CheckpointError
from .likelihood import bits_per_dim, combine_dequantised, log_likelihood
from .loss import dsm_loss
from .sample import sample
from .score import GuidedScore
from .train import Preprocess, build_preprocess, conditioning, init_state


def load_run(workdir):
    """A finished `main.py` run from its work directory: `(cfg, ds, state, preprocess)`.

    Reads `config.json` and the latest checkpoint (`CheckpointError` if there is none) and
    rebuilds the dataset and preprocessing the run used; `state.ema` is the model to evaluate.
    """
    workdir = Path(workdir)
    try:
        cfg = C.validate(C.from_dict(json.loads((workdir / "config.json").read_text())))
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {workdir}: not a work directory of main.py.") from None
    d = cfg.data
    ds = load(d.name, root=d.root, n_train=d.n_train, n_test=d.n_test, image_size=d.image_size,
              seed=d.seed)
    state, _ = init_state(cfg, ds, key=jax.random.key(cfg.train.seed))
    last = ckpt.latest(workdir / "checkpoints")
    if last is None:
        raise CheckpointError(f"no checkpoint in {workdir / 'checkpoints'}: train the run first.")
    state, _ = ckpt.load(last, state)
    return cfg, ds, state, build_preprocess(cfg, ds)


def _cond(cfg: Config, ds: Dataset, cond):
    kind = conditioning(cfg, ds)
    return {} if kind is None or cond is None else {kind: jnp.asarray(cond)}


def heldout_loss(cfg: Config, ds: Dataset, model, preprocess: Preprocess, *, num: int, seed: int = 0):
    """DSM loss of `model` on the first `num` test points with a fixed key (comparable across steps)."""
    key = jax.random.key(seed)
    k_pre, k_loss = jax.random.split(key)
    x = preprocess(k_pre, jnp.asarray(ds.test[:num]))
    cond = _cond(cfg, ds, None if ds.test_cond is None else ds.test_cond[:num])
    t = cfg.train
    return float(_loss(model, x, cond, k_loss, t.weighting, t.reduce))


@eqx.filter_jit
def _loss(model, x, cond, key, weighting, reduce):
    return dsm_loss(model, model.sde, x, key=key, cond=cond, weighting=weighting, reduce=reduce)


def _pad(a, n: int):
    """Pads the leading axis to a multiple of n by repeating the last row (results are cut back)."""
    extra = -a.shape[0] % n
    return a if extra == 0 else jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)])


def heldout_likelihood(cfg: Config, ds: Dataset, model, preprocess: Preprocess, *, num: int | None = None,
                       seed: int | None = None, mesh=None, return_draws: bool = False) -> dict:
    """Test-set log-likelihood of the probability-flow ODE in data units.

    Returns a dict with `nll` (nats per sample, data units), `bpd` (bits/dim; for discrete data the
    dequantisation bound), `entropy` (the data's exact entropy when known), `nfe` and `num`.
    For discrete data each point gets `likelihood.dequant_samples` dequantisations, reduced by
    `likelihood.dequant_bound` (see `likelihood.combine_dequantised`). With `return_draws` the
    per-draw log-likelihoods (model space, `(K, num)` numpy array) come back as `draws`.
    With a `mesh` each batch is split over its devices.
    """
    lc = cfg.likelihood
    num = min(lc.num if num is None else num, ds.test.shape[0])
    key = jax.random.key(lc.seed if seed is None else seed)
    x_all = jnp.asarray(ds.test[:num])
    cond_all = None if ds.test_cond is None else ds.test_cond[:num]
    logps, nfes = [], []
    for k in range(lc.dequant_samples if ds.levels is not None else 1):
        for i in range(0, num, lc.batch):
            key, k_pre, k_hutch = jax.random.split(key, 3)
            x = preprocess(k_pre, x_all[i:i + lc.batch])
            cond = _cond(cfg, ds, None if cond_all is None else cond_all[i:i + lc.batch])
            n, sharding = x.shape[0], None
            if mesh is not None:
                sharding = parallel.batch_sharding(mesh)
                x, cond = _pad(x, mesh.devices.size), {k: _pad(v, mesh.devices.size) for k, v in cond.items()}
            logp, info = log_likelihood(model, model.sde, x, key=k_hutch, exact=lc.exact, rtol=lc.rtol,
                                        atol=lc.atol, probes=lc.probes, cond=cond, sharding=sharding)
            logps.append(parallel.gather(logp)[:n] + float(preprocess.log_det()))
            nfes.append(int(info["nfe"]))
    draws = np.concatenate(logps).reshape(-1, num)  # (K, num): K dequantisations per point
    logp = np.asarray(combine_dequantised(draws, lc.dequant_bound), dtype=np.float64)
    dim = ds.dim
    nll = -float(logp.mean())
    if ds.levels is not None:
        bpd = float(np.mean(bits_per_dim(logp, dim, levels=ds.levels)))
        nll = bpd * dim * math.log(2)  # discrete NLL (upper bound) in nats per sample
    else:
        bpd = float(np.mean(bits_per_dim(logp, dim, levels=None)))
    out = {"nll": nll, "nll_stderr": float(logp.std() / math.sqrt(num)), "bpd": bpd,
           "entropy": ds.entropy, "nfe": int(np.mean(nfes)), "num": num}
    if ds.levels is not None:
        out.update(dequant_samples=draws.shape[0], dequant_bound=lc.dequant_bound)
    if return_draws:
        out["draws"] = draws
    if ds.log_prob is not None:  # the exact density on the same points: the honest gap
        out["true_nll"] = -float(np.mean(ds.log_prob(np.asarray(ds.test[:num]), cond_all)))
    return out


def draw_samples(cfg: Config, ds: Dataset, model, preprocess: Preprocess, *, num: int | None = None,
                 key=None, mesh=None, **overrides):
    """Samples in data units (integer levels for discrete data) and the sampler's info.

    Conditional models get labels 0, 1, 2, ... cycling over the classes (with classifier-free
    guidance weight `sample.guidance`), or the parameters of the first test points.
    """
    s = cfg.sample
    num = s.num if num is None else num
    wanted = num
    if mesh is not None:  # draw a multiple of the device count, keep the first `wanted`
        num += -num % mesh.devices.size
        overrides.setdefault("sharding", parallel.batch_sharding(mesh))
    key = jax.random.key(s.seed) if key is None else key
    kind = conditioning(cfg, ds)
    score, cond = model, None
    if kind == "label":
        labels = jnp.arange(num) % ds.num_classes
        score = GuidedScore(model, None, ds.num_classes, s.guidance)
        cond = {"label": labels}
    elif kind == "param":
        idx = np.arange(num) % min(8, ds.test.shape[0])
        cond = {"param": jnp.asarray(ds.test_cond[idx])}
    options = {"ode": {}, "pc": {"snr": s.snr}, "ddim": {"eta": s.eta}}.get(s.method, {})
    steps = None if s.method == "ode" else s.steps
    clip = (-1.0, 1.0) if ds.levels is not None else None
    kw = dict(method=s.method, steps=steps, t_end=s.t_end, clip=clip, cond=cond, **options)
    kw.update(overrides)
    x, info = sample(score, model.sde, ds.shape, key=key, num=num, **kw)
    out = parallel.gather(preprocess.inverse(x))[:wanted]
    if ds.levels is not None:
        out = np.clip(np.floor(out), 0, ds.levels - 1).astype(np.uint8)
    return out, info, None if cond is None else np.asarray(next(iter(cond.values())))[:wanted]
