"""Noise levels for few-step sampling searched on the model's own trajectories (GITS-style).

A few-step solver's error depends on where its N levels lie. Fixed rules (uniform in log-SNR,
Karras's rho = 7) are guesses about where a model's probability-flow trajectories bend; this module
measures it instead (Chen, Zhou, Yuan, Zhang, Zou & Ye, "On the Trajectory Regularity of ODE-based
Diffusion Sampling", ICML 2024):

1. warm-up trajectories: `num` prior draws solved accurately (iPNDM of order 4) through `fine`
   candidate levels uniform in log-SNR, from sigma(t1) to sigma(t_end), recording at every
   candidate level the state y and the derivative d = dy/dsigma (`sgm.sigma_solvers`' scale-free
   variables, so the same for VP, SubVP and VE);
2. the cost of jumping from candidate i straight to candidate j in one step, the error of that
   Euler step against the warm-up trajectory at j, RMS over coordinates and mean over draws:
       C[i, j] = mean_n rms(y_j - y_i - (sigma_j - sigma_i) d_i) / sqrt(1 + sigma_j^2),
   the division putting the error in units of the rescaled state x / sqrt(scale^2 + std^2) of
   unit-variance data, so that errors at large sigma, which the flow shrinks on the way down,
   are not overweighted;
3. dynamic programming over the candidates for the path from the first to the last with exactly
   N - 1 jumps and the least total cost: the N levels.

It costs `num * fine` score evaluations once per model, sampler step count and end time; the
result is a tuple of N noise levels that every few-step sampler takes as its `grid`
(`sgm.sample(..., method="ipndm", steps=N, grid=levels)`). The cost is the first-order step's, for
every sampler: higher-order steps inherit the levels (as in the paper, which reports it with iPNDM).

`tune_grid` then fits such levels to one sampler by gradient descent on its own error against
accurate solves. What either does for each sampler, SDE and problem is measured in
`docs/results/samplers.md`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import ConfigError, NumericalError, check_choice
from .sampler_settings import SamplerSettings
from .samplers import SAMPLERS, BatchedScore
from .sde import AbstractSDE
from .sigma_solvers import AB_WEIGHTS, _denoiser, ipndm, sigma_grid


def warmup_trajectories(score: Callable, sde: AbstractSDE, shape: tuple[int, ...], *, key,
                        num: int, fine: int, t_end: float, cond: dict | None = None,
                        clip: tuple[float, float] | None = None):
    """(levels (fine,), y (fine, num, *shape), d (fine, num, *shape)) of iPNDM-4 on `fine` log-SNR
    levels from sigma(t1) to sigma(t_end): the state and dy/dsigma at every level."""
    sig = sigma_grid(sde, t_end, fine, "logsnr")
    denoiser = _denoiser(BatchedScore(score, cond), sde, clip)
    orders = np.minimum(4, np.arange(fine) + 1)
    weights = jnp.asarray(AB_WEIGHTS[orders - 1])
    sig_next = jnp.concatenate([sig[1:], sig[-1:]])  # the last level takes no step

    def body(carry, inp):
        y, d1, d2, d3 = carry
        s, s_next, w = inp
        d = (y - denoiser(s, y)) / s
        out = (y, d)
        y = y + (s_next - s) * (w[0] * d + w[1] * d1 + w[2] * d2 + w[3] * d3)
        return (y, d, d1, d2), out

    y1 = sde.prior_sample(key, (num, *shape)) / sde.scale(sde.t1)
    zero = jnp.zeros_like(y1)
    _, (ys, ds) = jax.lax.scan(body, (y1, zero, zero, zero), (sig, sig_next, weights))
    return sig, ys, ds


@jax.jit
def jump_costs(sig, ys, ds):
    """C[i, j] (i < j; inf elsewhere): the one-step Euler error from level i to level j against
    the trajectory, RMS over coordinates, mean over draws, in units of sqrt(1 + sigma_j^2)."""
    m = sig.shape[0]
    flat_y, flat_d = ys.reshape(m, ys.shape[1], -1), ds.reshape(m, ds.shape[1], -1)

    def from_level(i):
        jump = flat_y[i][None] + (sig[:, None, None] - sig[i]) * flat_d[i][None]
        rms = jnp.sqrt(jnp.mean((flat_y - jump) ** 2, axis=-1))  # (m, num)
        cost = jnp.mean(rms, axis=1) / jnp.sqrt(1.0 + sig**2)
        return jnp.where(jnp.arange(m) > i, cost, jnp.inf)

    return jax.lax.map(from_level, jnp.arange(m))


def cheapest_path(costs: np.ndarray, jumps: int) -> list[int]:
    """Indices 0 = i_0 < i_1 < ... < i_jumps = m - 1 minimising sum_k costs[i_k, i_{k+1}]."""
    m = costs.shape[0]
    if not 1 <= jumps <= m - 1:
        raise ConfigError(f"cannot choose {jumps} steps from {m} candidate levels; "
                          f"use more candidates (fine) or fewer steps")
    best = np.full(m, np.inf)
    best[0] = 0.0
    back = np.zeros((jumps + 1, m), dtype=int)
    for k in range(1, jumps + 1):
        total = best[:, None] + costs  # total[i, j]: reach i in k - 1 jumps, then jump to j
        back[k] = np.argmin(total, axis=0)
        best = total[back[k], np.arange(m)]
    path = [m - 1]
    for k in range(jumps, 0, -1):
        path.append(int(back[k][path[-1]]))
    return path[::-1]


def search_grid(score: Callable, sde: AbstractSDE, shape: tuple[int, ...], *, key, steps: int,
                num: int = 256, fine: int = 100, t_end: float | None = None,
                cond: dict | None = None, clip: tuple[float, float] | None = None
                ) -> tuple[float, ...]:
    """The `steps` noise levels, sigma(t1) first and sigma(t_end) last, that a few-step sampler
    should use for this score, searched on `num` warm-up trajectories over `fine` candidates.

    Arguments:
        score: `score(t, x)` of ONE sample (network wrapper, guided score or closed form).
        sde: the forward SDE.
        shape: shape of one sample.
        key: PRNG key of the warm-up prior draws.
        steps: number of levels N (the sampler's `steps`: NFE for dpm2m, dpm3m, unipc, ipndm).
        num: warm-up trajectories (their NFE is `num * fine`).
        fine: candidate levels, uniform in log-SNR (the search's resolution).
        t_end: final time (default `sde.sampling_t0`, as `sgm.sample`).
        cond: per-draw conditioning arrays (leading axis `num`), as `sgm.sample`'s.
        clip: the data range, as `sgm.sample`'s.

    Returns:
        A tuple of `steps` decreasing floats, to pass as `grid=` to heun, dpm2m, dpm3m, unipc or
        ipndm with the same `steps` and `t_end`.
    """
    if not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"a searched grid needs at least 2 steps, got {steps!r}")
    if fine < steps:
        raise ConfigError(f"a grid search needs fine >= steps candidate levels, got fine={fine}, "
                          f"steps={steps}")
    levels, costs = search_costs(score, sde, shape, key=key, num=num, fine=fine, t_end=t_end,
                                 cond=cond, clip=clip)
    return levels_for(levels, costs, steps)


def search_costs(score: Callable, sde: AbstractSDE, shape: tuple[int, ...], *, key,
                 num: int = 256, fine: int = 100, t_end: float | None = None,
                 cond: dict | None = None, clip: tuple[float, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The expensive half of `search_grid` (its arguments but `steps`): the `fine` candidate
    levels and the jump costs between them, from which `levels_for` picks the levels of any step
    count at once. Keep these to search several step counts on one model."""
    if num < 1 or fine < 2:
        raise ConfigError(f"a grid search needs num >= 1 warm-up draws and fine >= 2 candidate "
                          f"levels, got num={num}, fine={fine}")
    t_end = sde.sampling_t0 if t_end is None else t_end
    sig, ys, ds = eqx.filter_jit(warmup_trajectories)(
        score, sde, tuple(shape), key=key, num=num, fine=fine, t_end=t_end, cond=cond, clip=clip)
    costs = np.asarray(jump_costs(sig, ys, ds), np.float64)
    if not np.all(np.isfinite(costs[np.triu_indices(len(costs), 1)])):
        raise NumericalError("the grid search's warm-up trajectories are not finite: the score "
                             "returns NaN or inf")
    return np.asarray(sig, np.float64), costs


def levels_for(levels: np.ndarray, costs: np.ndarray, steps: int) -> tuple[float, ...]:
    """The `steps` of the candidate `levels` with the least total jump cost (`search_costs`)."""
    return tuple(float(s) for s in np.asarray(levels)[cheapest_path(np.asarray(costs), steps - 1)])


# ----------------------------------------------------------------- levels tuned by gradient descent


LOSSES = ("rms", "squared")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class Tuning:
    """How `tune_grid` fits the levels: `num` draws solved accurately on `reference_steps` log-SNR
    levels (at least 2), the first `num - held_out` of them fitted by `iters` Adam steps (learning
    rate `lr`) on `batch` draws each (default min(32, fitted draws)), the last `held_out`
    (default num // 4, at least 1 unless num is 1) kept to judge the result. `loss` is what a
    step lowers: "rms" (the default), the mean over draws of each draw's RMS distance to its
    accurate endpoint, "squared", the mean squared distance, or a function `loss(x, ref)` of
    a batch of samples and their accurate endpoints (each (batch, *shape)) returning a scalar
    to lower, e.g. `sgm.analytic.mixture_tuning_loss(gm)`, which compares the two sets' mixture
    statistics where the data's law is known. `schedule` is Adam's learning rate over the steps:
    "constant" (the default) or "cosine", decaying from `lr` to 0 so that the last step, which
    is the result, does not oscillate about the optimum (for large, full batches, whose loss
    is deterministic). Checked when made: a ConfigError names what is out of range."""

    num: int = 256
    batch: int | None = None
    iters: int = 100
    lr: float = 0.05
    reference_steps: int = 200
    loss: str | Callable = "rms"
    held_out: int | None = None
    schedule: str = "constant"

    def __post_init__(self):
        held = (self.num // 4 if self.num > 1 else 0) if self.held_out is None else self.held_out
        fitted = self.num - held
        batch = min(32, max(fitted, 1)) if self.batch is None else self.batch
        if self.num < 1 or not 0 <= held < self.num or not 1 <= batch <= fitted \
                or self.iters < 0 or not self.lr > 0 or self.reference_steps < 2:
            raise ConfigError(f"tune_grid needs num >= 1, 0 <= held_out < num, "
                              f"1 <= batch <= num - held_out, iters >= 0, lr > 0 and "
                              f"reference_steps >= 2, got num={self.num}, held_out={held}, "
                              f"batch={batch}, iters={self.iters}, lr={self.lr}, "
                              f"reference_steps={self.reference_steps}")
        if not callable(self.loss):
            check_choice("tune_grid loss", self.loss, LOSSES)
        check_choice("tune_grid schedule", self.schedule, SCHEDULES)
        object.__setattr__(self, "batch", batch)
        object.__setattr__(self, "held_out", held)


def _distance(x, ref, loss):
    """The tuning loss between a batch of samples and their accurate endpoints."""
    if callable(loss):
        return jnp.asarray(loss(x, ref)).reshape(())
    sq = jnp.mean(jnp.square(x - ref).reshape(x.shape[0], -1), axis=1)
    if loss == "squared":
        return jnp.mean(sq)
    return jnp.mean(jnp.sqrt(sq + 1e-20))  # the offset keeps the gradient finite at 0


def unit_directions(key, dim: int, count: int):
    """`count` random unit vectors in `dim` dimensions, as the columns of a (dim, count) array."""
    dirs = jax.random.normal(key, (dim, count))
    return dirs / jnp.linalg.norm(dirs, axis=0)


def sliced_w2(x, y, dirs):
    """Sliced Wasserstein-2 distance between equal-size sample sets x, y (n, *shape) along the
    unit directions `dirs` (D, L) (`unit_directions`): the root of the mean over directions of
    the mean squared difference of the sorted projections."""
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    px, py = jnp.sort(x @ dirs, axis=0), jnp.sort(y @ dirs, axis=0)
    return jnp.sqrt(jnp.mean(jnp.square(px - py)))


def tune_grid(score: Callable, sde: AbstractSDE, shape: tuple[int, ...], levels, *, key,
              method: str = "ipndm", tuning: Tuning = Tuning(), t_end: float | None = None,
              cond: dict | None = None, clip: tuple[float, float] | None = None,
              options: dict | None = None,
              yardstick: Callable[[tuple[float, ...]], float] | None = None
              ) -> tuple[float, ...]:
    """`levels` moved to where `method` itself lands closest to the exact probability-flow map.

    The search above prices every step as an Euler step; the few-step solvers take larger,
    higher-order steps whose errors partly cancel, so the best levels for them differ. This
    fits the levels to the solver itself (after Tong, Lin, Zhao, Zhou & Tan, "Learning to
    Discretize Denoising Diffusion ODEs", ICLR 2025, with a plain squared error):

    1. `num` prior draws are solved accurately by iPNDM on `reference_steps` levels uniform in
       log-SNR (fixed steps: a trained network's rough field would make an adaptive solve at a
       tight tolerance take thousands of steps): the targets x*;
    2. the interior levels, parametrised by a softmax over the decrements of log sigma (so they
       stay ordered between the fixed first and last level), take `iters` Adam steps (`lr`) on
       the distance between `method`'s samples on those levels and x* (`Tuning.loss`: by
       default the mean of each draw's RMS distance, which a few draws that land in another
       mode than their x* cannot dominate as they do the mean squared distance), each on
       `batch` draws picked at random, with gradients through the sampler and the score;
    3. the result replaces `levels` only if, on the `held_out` draws that were not fitted, its
       samples are finite, closer to their x* and no farther from their distribution: the sliced
       Wasserstein-2 distance between its samples and the x* (64 directions) must not grow.
       A distance between pairs is lowered by samples pulled towards their mean, which narrows
       the distribution; the second test refuses that. (With a loss function of the user's,
       `Tuning.loss`, only the first test, on that loss, is made.)
    4. with a `yardstick` (levels -> error, lower is better), the result must also not be worse
       than `levels` by it. Neither test of step 3 sees a mixture component a few percent too
       wide (docs/results/samplers.md); where the data's law is known, a yardstick that
       samples on the levels and scores the samples against it (e.g. the spread error of
       `sgm.analytic.mixture_report` on samples of a fixed key) does.

    Cost, once per model, method and step count: `num * reference_steps` score evaluations for
    the targets plus `iters * batch * steps` with their gradients (about four times as many: the
    score is recomputed in the backward pass, so memory holds one step's activations per draw).

    Arguments:
        score, sde, shape, t_end, cond, clip: as `search_grid`'s (`cond`: per-draw arrays,
            leading axis `num`).
        key: PRNG key; the `num` draws are those `sgm.sample` starts from with this key.
        levels: the starting levels, sigma(t1) first and sigma(t_end) last (e.g. `search_grid`'s
            or `sigma_solvers.sigma_grid`'s); their number is the sampler's `steps`.
        method: a sampler with a `grid` option: "heun", "dpm2m", "dpm3m", "unipc" or "ipndm".
        tuning: `Tuning`: `num` draws with accurate endpoints, `held_out` of them kept to judge
            the result (step 3), `batch` draws per gradient step, `iters` gradient steps (0:
            `levels` unchanged), Adam's learning rate `lr` on the softmax logits, the `loss`,
            and the `reference_steps` levels of the accurate solves that give the targets
            (step 1).
        options: further options of `method` (e.g. unipc's order).
        yardstick: called with `levels` and with the tuned levels (each a tuple of floats) when
            the tests of step 3 pass; the tuned ones are kept only if their value is not larger.

    Returns:
        A tuple of decreasing floats, `len(levels)` of them with the same first and last, to
        pass as `grid=` to `method` with `steps=len(levels)`.
    """
    entry = SAMPLERS.get(method)
    if entry is None or "grid" not in entry.options:
        takes = ", ".join(m for m, e in SAMPLERS.items() if "grid" in e.options)
        raise ConfigError(f"tune_grid tunes the levels of a sampler with a grid ({takes}), "
                          f"not {method!r}")
    start = np.asarray(levels, np.float64)
    if start.ndim != 1 or start.size < 2 or not np.all(start > 0) \
            or not np.all(np.diff(start) < 0):
        raise ConfigError(f"tune_grid needs at least 2 decreasing positive levels, got "
                          f"{tuple(np.round(start, 6).tolist())}")
    num, batch, iters, lr, reference_steps, loss, held, schedule = dataclasses.astuple(tuning)
    if start.size == 2 or iters == 0:
        return tuple(float(s) for s in start)
    t_end = sde.sampling_t0 if t_end is None else t_end
    options = dict(options or {})
    k_prior, k_rest = jax.random.split(key)  # k_prior: `sgm.sample`'s prior draw for this key
    k_batch, k_run = jax.random.split(k_rest)
    x1 = sde.prior_sample(k_prior, (num, *shape))
    cond = {} if cond is None else dict(cond)

    @eqx.filter_jit
    def targets(score, x1, cond):
        run = SamplerSettings(reference_steps, t_end, True, clip, lambda *_: None, False)
        x, _ = ipndm(BatchedScore(score, cond or None), sde, x1, None, run, grid="logsnr")
        return x

    ref = targets(score, x1, cond)
    if not bool(jnp.all(jnp.isfinite(ref))):  # before the gradient steps, not after them
        raise NumericalError("tune_grid's accurate solves are not finite: the score returns NaN "
                             "or inf")
    lo, hi = math.log(start[0]), math.log(start[-1])

    def levels_of(logits):
        frac = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jax.nn.softmax(logits))])
        return jnp.exp(lo + (hi - lo) * frac).at[0].set(start[0]).at[-1].set(start[-1])

    def samples(logits, score, x1, cond):
        remat = jax.checkpoint(lambda t, x, c: score(t, x, **c))
        bscore = BatchedScore(lambda t, x, **c: remat(t, x, c), cond or None)
        run = SamplerSettings(start.size, t_end, True, clip, lambda *_: None, False)
        x, _ = entry.fn(bscore, sde, x1, k_run, run, **{**options, "grid": levels_of(logits)})
        return x

    def distance(logits, score, x1, ref, cond):
        return _distance(samples(logits, score, x1, cond), ref, loss)

    opt = optax.adam(optax.cosine_decay_schedule(lr, iters) if schedule == "cosine" else lr)

    fitted = num - held
    k_batch, k_dirs = jax.random.split(k_batch)
    dirs = unit_directions(k_dirs, math.prod(shape), 64)

    @eqx.filter_jit
    def fit(logits, score, x1, ref, cond, key):
        def step(carry, k):
            p, state = carry
            pick = jax.random.choice(k, fitted, (batch,), replace=False)
            sub = jax.tree_util.tree_map(lambda a: a[pick], (x1, ref, cond))
            g = jax.grad(distance)(p, score, *sub)
            update, state = opt.update(g, state)
            return (optax.apply_updates(p, update), state), None

        (p, _), _ = jax.lax.scan(step, (logits, opt.init(logits)), jax.random.split(key, iters))
        return p

    @eqx.filter_jit
    def judge(logits, score, x1, ref, cond):
        """(distance, sliced W2 to the x*) of the levels on the held-out draws."""
        x = samples(logits, score, x1, cond)
        return _distance(x, ref, loss), sliced_w2(x, ref, dirs)

    logits0 = jnp.log(jnp.asarray(np.diff(np.log(start)) / (hi - lo), jnp.result_type(float)))
    part = lambda a, lo, hi: jax.tree_util.tree_map(lambda v: v[lo:hi], a)  # noqa: E731
    logits = fit(logits0, score, *part((x1, ref, cond), 0, fitted), k_batch)
    judged = part((x1, ref, cond), fitted, num) if held else (x1, ref, cond)
    before = [float(v) for v in judge(logits0, score, *judged)]
    after = [float(v) for v in judge(logits, score, *judged)]
    if not np.all(np.isfinite(before)):
        raise NumericalError("tune_grid's samples are not finite: the score returns NaN or inf")
    kept = tuple(float(s) for s in start)
    farther = after[1] > before[1] and not callable(loss)  # a loss of the user's: its own test
    if not np.all(np.isfinite(after)) or after[0] >= before[0] or farther:
        return kept  # not better, or levels the sampler cannot take
    tuned = tuple(float(s) for s in np.asarray(levels_of(logits), np.float64))
    if yardstick is not None and not float(yardstick(tuned)) <= float(yardstick(kept)):
        return kept  # worse by the yardstick, or not a number
    return tuned
