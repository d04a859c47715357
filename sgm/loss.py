"""Denoising score matching with time weightings and time sampling.

For x_t = a x_0 + s eps the per-sample objective at time t is

    l(t) = lambda(t) || score(t, x_t) + eps / s ||^2 = lambda(t) / s^2 || s score + eps ||^2,

and the loss is its average over t ~ U[t0, t1] (Vincent 2011; Song et al. 2021, eq. 7).

- `weighting="sigma2"`:     lambda = s^2 (Song et al.'s default; the eps-prediction MSE).
- `weighting="likelihood"`: lambda = g^2, which makes the loss an upper bound on the negative
  log-likelihood (Song, Durkan, Murray & Ermon 2021, Theorem 1).

Time sampling: "uniform" or "stratified" (one uniform shift of an evenly spaced grid over the batch,
a low-discrepancy scheme as in Kingma et al. 2021). With `importance=True` t is drawn from the
proposal q(t) proportional to g^2 / s^2 (the likelihood weight per unit of ||s score + eps||^2) and
each term is reweighted by lambda(t) / ((t1 - t0) q(t)), so the estimator stays unbiased for the
uniform-time loss while its variance drops (Song, Durkan, Murray & Ermon 2021, Section 5).

A learned noise schedule (`sgm.LearnedSchedule`, inside the SDE and so inside the score model) is
trained by `dsm_loss` with the variance-reducing objective of Kingma et al. (2021, Section 5.3 and
Appendix I.2): with fixed end points and likelihood weighting the expected loss is the same for
every shape of the schedule, so the shape's parameters descend the mean square of the per-sample
terms (the estimator's second moment; in `dsm_loss`, the log of the batch's mean square, which has
the same minimiser and a gradient in relative units) while everything else descends their mean.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .errors import ConfigError, check_choice
from .sde import AbstractSDE, LearnedSchedule

WEIGHTINGS = ("sigma2", "likelihood")
TIME_SAMPLINGS = ("uniform", "stratified")
REDUCTIONS = ("mean", "sum")


class ImportanceTimeSampler(eqx.Module):
    """Inverse-CDF sampler of t with density proportional to g(t)^2 / s(t)^2 on [t0, t1].

    The density is tabulated on a grid uniform in log t (the weight behaves like 1/t near 0) and the
    CDF is inverted piecewise-linearly in log t; `density` is the exact density of the samples drawn
    (not an approximation of it), which keeps importance weights unbiased.
    """

    log_t: jax.Array
    cdf: jax.Array

    def __init__(self, sde: AbstractSDE, t0: float, t1: float, num: int = 2048):
        log_t = jnp.linspace(jnp.log(t0), jnp.log(t1), num + 1)
        t = jnp.exp(log_t)
        h = jax.vmap(lambda u: sde.diffusion(u) ** 2 / sde.std(u) ** 2)(t) * t  # weight in log t
        steps = 0.5 * (h[1:] + h[:-1]) * jnp.diff(log_t)
        cdf = jnp.concatenate([jnp.zeros(1), jnp.cumsum(steps)])
        self.log_t, self.cdf = log_t, cdf / cdf[-1]

    def sample(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Maps uniforms u in [0, 1) to (t, q(t))."""
        j = jnp.clip(jnp.searchsorted(self.cdf, u, side="right") - 1, 0, self.cdf.size - 2)
        dc = self.cdf[j + 1] - self.cdf[j]
        du = self.log_t[j + 1] - self.log_t[j]
        log_t = self.log_t[j] + (u - self.cdf[j]) / dc * du
        t = jnp.exp(log_t)
        return t, dc / (du * t)


def sample_times(key, n: int, *, stratified: bool = False) -> jax.Array:
    """n uniforms on [0, 1): i.i.d., or one random shift of the grid (i + u) / n."""
    if stratified:
        u = jax.random.uniform(key, ())
        return (jnp.arange(n) + u) / n
    return jax.random.uniform(key, (n,))


def dsm_loss_per_sample(model, sde: AbstractSDE, x0, *, key, cond=None, weighting="sigma2",
                        time_sampling="uniform", importance=False, reduce="mean", t0=None,
                        dropout=False):
    """Per-sample denoising score-matching estimates, shape (B,), on a batch x0 of shape (B, ...).

    Arguments:
        model: `model(t, x, **cond)` -> score of ONE sample (a `ScoreModel` or any callable).
        sde: the forward SDE.
        x0: data batch (B, ...).
        key: PRNG key (times, noise and, with `dropout=True`, per-sample dropout keys).
        cond: optional dict of batched conditioning arrays, passed to `model` per sample.
        weighting: "sigma2" or "likelihood".
        time_sampling: "uniform" or "stratified".
        importance: draw t from q(t) ~ g^2/s^2 and reweight (unbiased for the same loss).
        reduce: "mean" or "sum" of the squared error over the dimensions of one sample.
        t0: smallest time (default `sde.t0`).
    """
    options = dict(weighting=weighting, time_sampling=time_sampling, importance=importance,
                   reduce=reduce, t0=t0, dropout=dropout)
    draws, scale = _draws(sde, x0, key, cond, options)
    return jax.vmap(lambda *d: _term(model, sde, *d, **options))(*draws) * scale


def _draws(sde, x0, key, cond, options):
    """The random parts of `dsm_loss_per_sample`: per-sample (t, x0, eps, cond, dropout key), and
    the importance factor 1 / ((t1 - t0) q(t)) (B,) that turns each term into the estimate."""
    check_choice("loss weighting", options["weighting"], WEIGHTINGS)
    check_choice("time sampling", options["time_sampling"], TIME_SAMPLINGS)
    check_choice("loss reduction", options["reduce"], REDUCTIONS)
    t0 = sde.t0 if options["t0"] is None else options["t0"]
    t1 = sde.t1
    n = x0.shape[0]
    k_t, k_eps, k_drop = jax.random.split(key, 3)
    u = sample_times(k_t, n, stratified=options["time_sampling"] == "stratified")
    if options["importance"]:  # the proposal is only a proposal: no gradient flows into it
        fixed = jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, sde)
        t, q = ImportanceTimeSampler(fixed, t0, t1).sample(u)
    else:
        t, q = t0 + (t1 - t0) * u, jnp.full((n,), 1.0 / (t1 - t0))
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    cond = {} if cond is None else cond
    return (t, x0, eps, cond, jax.random.split(k_drop, n)), 1.0 / ((t1 - t0) * q)


def _term(model, sde, t_i, x0_i, eps_i, cond_i, k_i, *, weighting, reduce, dropout, **_):
    """lambda(t) / s^2 || s score(t, x_t) + eps ||^2 of one sample."""
    a, s = sde.scale(t_i), sde.std(t_i)
    x_t = a * x0_i + s * eps_i
    kw = dict(cond_i, key=k_i) if dropout else cond_i
    err = jnp.square(s * model(t_i, x_t, **kw) + eps_i)
    err = jnp.mean(err) if reduce == "mean" else jnp.sum(err)
    lam_over_s2 = 1.0 if weighting == "sigma2" else sde.diffusion(t_i) ** 2 / s**2
    return lam_over_s2 * err


def _schedule_mask(tree):
    """True on the array leaves of every `LearnedSchedule` in `tree`, False elsewhere."""
    def mark(node):
        if isinstance(node, LearnedSchedule):
            return jax.tree_util.tree_map(lambda _: True, node)
        return False

    return jax.tree_util.tree_map(mark, tree, is_leaf=lambda n: isinstance(n, LearnedSchedule))


def _stop_where(tree, mask, value: bool):
    """`tree` with a stopped gradient on the array leaves whose mask is `value`."""
    return jax.tree_util.tree_map(
        lambda a, m: jax.lax.stop_gradient(a) if m == value and eqx.is_inexact_array(a) else a, tree, mask)


def dsm_loss(model, sde: AbstractSDE, x0, *, key, **options):
    """Batch mean of `dsm_loss_per_sample` (same arguments): the training objective.

    If `sde` (or `model`) holds a learned schedule, the value is the same but all parameters other
    than the schedule's get the gradient of the mean of the per-sample terms l_i, and the
    schedule's parameters that of half the log of their mean square (the variance objective of
    Kingma et al. 2021, which needs `weighting="likelihood"`):

        d/d(net)   mean_i l_i,        d/d(schedule)   (1/2) log mean_i l_i^2.

    The log has the mean square's minimiser and makes the schedule's gradient relative, of order
    one: the mean square's own grows with l^2 and, under a global gradient-norm clip, can take
    most of the clip's budget from the network.

    Both come from one forward and one backward pass of the network. A sample at time t_i sees
    the schedule only through n(t_i) and n'(t_i) (its normalised -log SNR and rate,
    `LearnedSchedule.local`), computed for the batch in one small pass of the schedule; the
    network's backward pass gives g_i = dl_i/d(n(t_i), n'(t_i)) with the bound's gradient, and
    the schedule's gradient is the pull-back of l_i g_i / (B mean_j l_j^2) through that small
    pass. So `model`
    must evaluate the schedule at the sample's own time only (a `ScoreModel` does); at any other
    time the schedule it is given there (`sgm.sde.LocalSchedule`) returns NaN.
    """
    pair = (model, sde)
    mask = _schedule_mask(pair)
    if not any(jax.tree_util.tree_leaves(mask)):
        return jnp.mean(dsm_loss_per_sample(model, sde, x0, key=key, **options))
    if options.get("weighting", "sigma2") != "likelihood":
        raise ConfigError("a learned noise schedule is trained on the variational bound: it needs "
                          "weighting='likelihood'.")
    return _fused_mean(pair, x0, key, options)


def _two_pass_loss(model, sde: AbstractSDE, x0, *, key, **options):
    """`dsm_loss` of a learned schedule by two passes (the bound with the schedule held fixed, the
    log of the second moment with everything else held fixed): the fused pass's reference."""
    pair = (model, sde)
    mask = _schedule_mask(pair)
    bound = jnp.mean(dsm_loss_per_sample(*_stop_where(pair, mask, True), x0, key=key, **options))
    per = dsm_loss_per_sample(*_stop_where(pair, mask, False), x0, key=key, **options)
    second = 0.5 * jnp.log(jnp.mean(jnp.square(per)))  # only the schedule's gradient is used
    return bound + second - jax.lax.stop_gradient(second)


def _options(options: dict) -> dict:
    return dict(dict(weighting="sigma2", time_sampling="uniform", importance=False,
                     reduce="mean", t0=None, dropout=False), **options)


def _is_schedule(node) -> bool:
    return isinstance(node, LearnedSchedule)


def _split_schedules(pair):
    """`pair` as (its learned schedules, its other float arrays, and `rebuild(arrays, schedules)`:
    the pair again, with these arrays and these schedules in their places; with `grads=True`
    a gradient of the pair, None on its other leaves)."""
    leaves, treedef = jax.tree_util.tree_flatten(pair, is_leaf=_is_schedule)
    where = [i for i, leaf in enumerate(leaves) if _is_schedule(leaf)]
    params, static = eqx.partition([None if _is_schedule(leaf) else leaf for leaf in leaves],
                                   eqx.is_inexact_array)

    def rebuild(params, schedules, grads=False):
        leaves = list(params) if grads else eqx.combine(params, static)
        for i, schedule in zip(where, schedules, strict=True):
            leaves[i] = schedule
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return [leaves[i] for i in where], params, rebuild


@eqx.filter_custom_vjp
def _fused_mean(pair, x0, key, options):
    return jnp.mean(dsm_loss_per_sample(*pair, x0, key=key, **options))


@_fused_mean.def_fwd
def _fused_mean_fwd(perturbed, pair, x0, key, options):
    # A sample at time t_i depends on each learned schedule through two numbers, n(t_i) and
    # n'(t_i) (`LearnedSchedule.local`): the batch of those is one small, batched evaluation of the
    # schedule, and the network's pass sees only per-sample scalars.
    options = dict(options)
    cond = options.pop("cond", None)
    options = _options(options)
    draws, scale = _draws(pair[1], x0, key, cond, options)
    schedules, params, rebuild = _split_schedules(pair)
    locals_, schedules_vjp = jax.vjp(lambda s: [sch.local(draws[0]) for sch in s], schedules)

    def terms(params, locals_):
        def one(locals_i, *d):
            return _term(*rebuild(params, locals_i), *d, **options)

        return jax.vmap(one)(locals_, *draws) * scale

    per, terms_vjp = jax.vjp(terms, params, locals_)
    return jnp.mean(per), (per, terms_vjp, schedules_vjp)


@_fused_mean.def_bwd
def _fused_mean_bwd(residuals, grad_obj, perturbed, pair, x0, key, options):
    per, terms_vjp, schedules_vjp = residuals
    n = per.shape[0]
    g_params, g_locals = terms_vjp(jnp.full((n,), grad_obj / n, per.dtype))
    # sample i's cotangents are (g/n) d per_i / d(n(t_i), n'(t_i)): weighted by per_i / mean(per^2)
    # and pulled back through the schedules, they give g times the gradient of half the log of
    # the terms' mean square
    weight = per / jnp.mean(jnp.square(per))
    (g_schedules,) = schedules_vjp(jax.tree_util.tree_map(lambda a: weight * a, g_locals))
    _, _, rebuild = _split_schedules(pair)
    return rebuild(g_params, g_schedules, grads=True)
