"""Benchmark of probability-flow log-likelihoods: accuracy, evaluations, compile and run time.

    python bench/likelihood.py            # full run (about 4 minutes on 2 CPU cores)
    python bench/likelihood.py --quick    # VP only, small batches (~1 minute, mostly compiling)
    python bench/likelihood.py --hutchinson-variants   # one probe at D = 2: what limits its speed

Four parts, two tables, JSON in bench/results/likelihood.json:

1. Closed-form scores. Data x = Q y with y ~ N(0.5, diag(s^2)), s linearly spaced 0.3..1.0, and Q a
   Householder reflection, so the score's Jacobian is dense and anisotropic (a diagonal Jacobian
   would make one Rademacher probe exact, since eps_i^2 = 1). Every marginal p_t is Gaussian, so

       truth = log p_t0(x) + [prior_logp(z) - log p_t1(z)],   z = info["z"],

   where the bracket accounts for the prior at t1 not being exactly the true marginal p_t1.
   Rows: VP/VE/SubVP x D in {2, 64, 784} x {exact trace, Hutchinson with 1 Rademacher probe},
   each with sgm's defaults ("sgm": shared steps for the batch, Dopri5 for VP/SubVP, Tsit5 for VE,
   rescaled state) and with per-point Tsit5 solves, the previous default ("point").
2. A randomly initialised MLP score (width 128, depth 3, input concat(x, sin/cos features of t)) on
   D in {2, 64} under the VP SDE: no closed form, so the reference is scipy's DOP853 at rtol = atol
   = 1e-10 in float64 (JAX field evaluated in float64), cross-checked against sgm itself in float64
   at 1e-9. (A raw random MLP is no VE score: g(t)^2 reaches ~4e4, nothing scales the output down
   with the noise level, and the flow blows up, |z| ~ 1e17 at D = 64.)
3. The usual host-side reference implementation: scipy `solve_ivp(method="RK45")` on the WHOLE batch
   as one ODE (state = flattened batch + one log-density accumulator per sample), its vector field a
   jitted JAX function returning the drift and the exact divergence (trace of `jax.jacfwd`) in
   float32, converted to numpy at every call. Same rtol/atol, same score, same points.
4. A batch-size sweep of part 3 on the MLP score (B = 1 ... 1024): where each implementation wins.

Errors are |logp - truth| / D in nats per dimension (mean and max over the batch; for Hutchinson
also the signed mean, whose spread is the estimator's, not the solver's). "compile" is the first
call minus the best later, identical call (for scipy: of its jitted field); "wall s" is the best of
the later calls, sgm and scipy run in alternation so that a shared machine's load hits both alike;
"s/1k" scales it to 1000 points (scipy's batch ODE does not scale linearly in the batch size; it is
measured on the same batch). "x" is scipy time / sgm time after compilation (> 1: sgm faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import sgm

RESULTS = Path(__file__).resolve().parent / "results" / "likelihood.json"
VARIANTS_RESULTS = RESULTS.with_name("likelihood_hutchinson.json")
SDES = {"vp": sgm.VPSDE, "ve": sgm.VESDE, "subvp": sgm.SubVPSDE}


# ------------------------------------------------------------------------------------------------
# Problems
# ------------------------------------------------------------------------------------------------


class ReflectedGaussian(eqx.Module):
    """x = Q y, y ~ N(mean, diag(std^2)), Q = I - 2 u u^T: a Gaussian with dense covariance.

    The forward SDEs add isotropic noise, which commutes with Q, so p_t(x) = p_t^y(Q x) and
    score_t(x) = Q score_t^y(Q x) for every t.
    """

    gm: sgm.GaussianMixture
    u: jax.Array

    def __init__(self, dim: int, *, key, mean: float = 0.5, lo: float = 0.3, hi: float = 1.0):
        self.gm = sgm.GaussianMixture.gaussian(jnp.full(dim, mean), jnp.linspace(lo, hi, dim))
        u = jax.random.normal(key, (dim,))
        self.u = u / jnp.linalg.norm(u)

    def reflect(self, x):
        return x - 2.0 * self.u * jnp.dot(self.u, x)

    def score(self, sde):
        inner = self.gm.score(sde)

        def fn(t, x):
            return self.reflect(inner(t, self.reflect(x)))

        return fn

    def sample(self, key, n: int):
        return jax.vmap(self.reflect)(self.gm.sample(key, n))

    def log_prob64(self, x, sde, t: float) -> np.ndarray:
        """log p_t of a batch (B, D), in float64 numpy."""
        with jax.enable_x64(True):
            a = float(sde.scale(jnp.float64(t)))
            s = float(sde.std(jnp.float64(t)))
        x = np.asarray(x, np.float64)
        u = np.asarray(self.u, np.float64)
        u /= np.linalg.norm(u)
        y = x - 2.0 * np.outer(x @ u, u)
        mean = np.asarray(self.gm.means[0], np.float64)
        var = a**2 * np.asarray(self.gm.stds[0], np.float64) ** 2 + s**2
        return -0.5 * np.sum((y - a * mean) ** 2 / var + np.log(2 * math.pi * var), axis=1)


def prior_logp64(sde, z) -> np.ndarray:
    s = float(sde.prior_std())
    z = np.asarray(z, np.float64)
    norm = z.shape[1] * (math.log(s) + 0.5 * math.log(2 * math.pi))
    return -0.5 * np.sum(z**2, axis=1) / s**2 - norm


class MLPScore(eqx.Module):
    """score(t, x) = MLP(concat(x, sin(f t), cos(f t))), randomly initialised: a cost model only."""

    mlp: eqx.nn.MLP
    freqs: jax.Array

    def __init__(self, dim: int, *, key, width: int = 128, depth: int = 3, n_freq: int = 8):
        self.freqs = math.pi * jnp.arange(1, n_freq + 1, dtype=jnp.float32)
        self.mlp = eqx.nn.MLP(dim + 2 * n_freq, dim, width, depth, activation=jax.nn.silu, key=key)

    def __call__(self, t, x):
        ft = self.freqs * t
        return self.mlp(jnp.concatenate([x, jnp.sin(ft), jnp.cos(ft)]).astype(x.dtype))


def to_dtype(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


# ------------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------------


def block(tree):
    return jax.tree.map(lambda a: a.block_until_ready() if isinstance(a, jax.Array) else a, tree)


def race(fns: dict, *, budget: float = 1.0, max_rounds: int = 5) -> dict:
    """Time callables in alternation (fair under a shared, fluctuating CPU load).

    Each is called once (that call includes compilation), then in rounds until `budget` seconds or
    `max_rounds` rounds have passed (at least two). Returns {name: (first seconds, best seconds of
    the later calls, last result)}; the best time estimates the cost on an unloaded machine.
    """
    first, times, out = {}, {k: [] for k in fns}, {}
    for k, fn in fns.items():
        t = time.perf_counter()
        out[k] = block(fn())
        first[k] = time.perf_counter() - t
    start = time.perf_counter()
    rounds = 0
    while rounds < 2 or (rounds < max_rounds and time.perf_counter() - start < budget):
        for k, fn in fns.items():
            t = time.perf_counter()
            out[k] = block(fn())
            times[k].append(time.perf_counter() - t)
        rounds += 1
    return {k: (first[k], min(times[k]), out[k]) for k in fns}


# ------------------------------------------------------------------------------------------------
# The host-side scipy reference implementation (one ODE for the whole batch)
# ------------------------------------------------------------------------------------------------


def make_batch_field(score, sde, dim: int, dtype):
    """Jitted (t, y (B, D)) -> (drift (B, D), exact divergence (B,)), as reference code has it."""

    def one(t, y):
        v = lambda q: sde.ode_drift(score, t, q)  # noqa: E731
        return v(y), jnp.trace(jax.jacfwd(v)(y))

    return jax.jit(lambda t, y: jax.vmap(one, in_axes=(None, 0))(jnp.asarray(t, dtype), y))


def scipy_loglik(field, sde, x, *, rtol, atol, method="RK45", dtype=np.float32):
    """log p_t0(x) by solve_ivp over the whole batch; returns logp, z, number of field calls."""
    b, d = x.shape
    calls = 0

    def fun(t, state):
        nonlocal calls
        calls += 1
        dy, div = field(dtype(t), state[: b * d].reshape(b, d).astype(dtype))
        return np.concatenate([np.asarray(dy, np.float64).ravel(), np.asarray(div, np.float64)])

    y0 = np.concatenate([np.asarray(x, np.float64).ravel(), np.zeros(b)])
    sol = solve_ivp(fun, (sde.t0, sde.t1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"scipy {method} failed: {sol.message}")
    z = sol.y[: b * d, -1].reshape(b, d)
    return prior_logp64(sde, z) + sol.y[b * d:, -1], z, calls


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------


def errors(logp, truth, dim: int) -> dict:
    e = (np.asarray(logp, np.float64) - truth) / dim
    return {"err_mean": float(np.mean(np.abs(e))), "err_max": float(np.max(np.abs(e))),
            "err_signed": float(np.mean(e)), "err_sem": float(np.std(e) / math.sqrt(e.size))}


def sgm_call(score, sde, x, *, exact, rtol, atol, key=None, **control):
    """One likelihood solve to time; `control` are fields of `sgm.StepControl` (solver, ...)."""
    return lambda: sgm.log_likelihood(score, sde, x, key=key, exact=exact, rtol=rtol, atol=atol,
                                      control=sgm.StepControl(**control))


#: the engine before the shared-step default: each point its own Tsit5 solve, no rescaling
PER_POINT = {"solver": "tsit5", "stepping": "point", "rescale": False}


def sgm_row(timing, truth_fn, x, *, exact, impl="sgm") -> dict:
    first, wall, (logp, info) = timing
    b, d = x.shape
    steps = np.asarray(info["num_steps"])
    return {"impl": impl, "div": "exact" if exact else "hutch-1", "D": d, "B": b,
            "nfe": int(info["nfe"]), "steps_mean": float(steps.mean()),
            "steps_max": int(steps.max()),
            "compile_s": max(first - wall, 0.0), "wall_s": wall, "s_per_1k": wall * 1000 / b,
            **errors(logp, truth_fn(info["z"]), d)}


def scipy_call(score, sde, x, *, rtol, atol):
    """The scipy solve as a closure over a compiled batch field; also that field's compile time."""
    field = make_batch_field(score, sde, x.shape[1], jnp.float32)
    xn = np.asarray(x, np.float32)  # warm up with the argument types solve_ivp's loop will pass
    t = time.perf_counter()
    block(field(np.float32(sde.t0), xn))
    first = time.perf_counter() - t
    again = race({"f": lambda: field(np.float32(sde.t0), xn)}, budget=0.05)["f"][1]
    compiled = field._cache_size()

    def run():
        out = scipy_loglik(field, sde, np.asarray(x), rtol=rtol, atol=atol)
        if field._cache_size() != compiled:  # a retrace inside the timed loop would count as work
            raise RuntimeError("the scipy field was recompiled inside the timed solve")
        return out

    return run, max(first - again, 0.0), again


def scipy_row(timing, compile_s, field_call_s, truth_fn, x) -> dict:
    _, wall, (logp, z, calls) = timing
    b, d = x.shape
    return {"impl": "scipy", "div": "exact", "D": d, "B": b, "nfe": calls, "compile_s": compile_s,
            "wall_s": wall, "s_per_1k": wall * 1000 / b, "field_call_s": field_call_s,
            **errors(logp, truth_fn(z), d)}


def compare(score, sde, x, truth_fn, args) -> list[dict]:
    """sgm's defaults (exact trace and one Rademacher probe), sgm per-point Tsit5 (the previous
    default) and scipy RK45, all timed in alternation; x = scipy time / that row's time."""
    tol = dict(rtol=args.rtol, atol=args.atol)
    run_scipy, sp_compile, sp_call = scipy_call(score, sde, x, **tol)
    hkey = jax.random.key(7)
    t = race({"sgm": sgm_call(score, sde, x, exact=True, **tol),
              "point": sgm_call(score, sde, x, exact=True, **tol, **PER_POINT),
              "hutch": sgm_call(score, sde, x, exact=False, key=hkey, **tol),
              "hutch-point": sgm_call(score, sde, x, exact=False, key=hkey, **tol, **PER_POINT),
              "scipy": run_scipy}, budget=args.budget)
    rows = [sgm_row(t["sgm"], truth_fn, x, exact=True),
            sgm_row(t["point"], truth_fn, x, exact=True, impl="point"),
            scipy_row(t["scipy"], sp_compile, sp_call, truth_fn, x),
            sgm_row(t["hutch"], truth_fn, x, exact=False),
            sgm_row(t["hutch-point"], truth_fn, x, exact=False, impl="point")]
    for r in rows:
        if r["impl"] != "scipy":
            r["speedup_vs_scipy"] = rows[2]["wall_s"] / r["wall_s"]
    return rows


def gaussian_rows(sde_name, dim, batch, args):
    sde = SDES[sde_name]()
    prob = ReflectedGaussian(dim, key=jax.random.key(dim))
    score = prob.score(sde)  # one object for all calls, so repeated calls hit the jit cache
    x = prob.sample(jax.random.key(100 + dim), batch)

    def truth_fn(z):
        return (prob.log_prob64(x, sde, sde.t0) + prior_logp64(sde, z)
                - prob.log_prob64(z, sde, sde.t1))

    rows = compare(score, sde, x, truth_fn, args)
    for r in rows:
        r.update(sde=sde_name, score="gauss")
    return rows


def mlp_reference(net, sde, x, rtol: float):
    """float64 reference log p_t0(x) of the MLP score: scipy DOP853 and sgm (for a cross-check)."""
    with jax.enable_x64(True):
        net64 = to_dtype(net, jnp.float64)
        field = make_batch_field(net64, sde, x.shape[1], jnp.float64)
        ref, _, ref_calls = scipy_loglik(field, sde, np.asarray(x), rtol=rtol, atol=rtol,
                                         method="DOP853", dtype=np.float64)
        check, _ = sgm.log_likelihood(net64, sde, jnp.asarray(x, jnp.float64), rtol=10 * rtol,
                                      atol=10 * rtol)
    return ref, ref_calls, np.asarray(check, np.float64)


def mlp_rows(sde_name, dim, batch, args):
    sde = SDES[sde_name]()
    net = MLPScore(dim, key=jax.random.key(1000 + dim))
    x = 0.5 + 0.7 * jax.random.normal(jax.random.key(200 + dim), (batch, dim))
    ref, ref_calls, check = mlp_reference(net, sde, x, args.ref_tol)
    truth_fn = lambda z: ref  # noqa: E731 (z is not needed: there is no closed form)
    rows = compare(net, sde, x, truth_fn, args)
    for r in rows:
        r.update(sde=sde_name, score="mlp", ref_nfe=ref_calls,
                 ref_crosscheck=float(np.max(np.abs(check - ref)) / dim))
    return rows


def sweep_rows(dim, batches, args):
    """sgm vs scipy on the VP MLP score for several batch sizes: where does each win?"""
    sde, net = sgm.VPSDE(), MLPScore(dim, key=jax.random.key(1000 + dim))
    tol = dict(rtol=args.rtol, atol=args.atol)
    rows = []
    for b in batches:
        x = 0.5 + 0.7 * jax.random.normal(jax.random.key(300 + b), (b, dim))
        run_scipy, sp_compile, sp_call = scipy_call(net, sde, x, **tol)
        t = race({"sgm": sgm_call(net, sde, x, exact=True, **tol), "scipy": run_scipy},
                 budget=args.budget)
        (f, w, (_, info)), (_, ws, (_, _, calls)) = t["sgm"], t["scipy"]  # noqa: RUF059
        rows.append({"D": dim, "B": b, "sgm_nfe": int(info["nfe"]), "scipy_nfe": calls,
                     "sgm_compile_s": max(f - w, 0.0), "scipy_compile_s": sp_compile,
                     "sgm_s": w, "scipy_s": ws, "scipy_field_call_s": sp_call,
                     "speedup_vs_scipy": ws / w})
    return rows


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


#: the Hutchinson solve's options tried against scipy by `--hutchinson-variants`
HUTCH_VARIANTS = {"exact trace": {"exact": True}, "hutch-1": {},
                  "hutch-1 error_norm=batch": {"error_norm": "batch"},
                  "hutch-1 solver=tsit5": {"solver": "tsit5"},
                  "hutch-1 solver=dopri8": {"solver": "dopri8"},
                  "hutch-1 clock=logt": {"clock": "logt"},
                  "hutch-1 clock=logsnr": {"clock": "logsnr"}}


def hutchinson_variant_rows(dim, batch, args):
    """The VP MLP score: sgm's one-probe solve with one option changed at a time, scipy's RK45 and
    the network's field alone (forward, one-probe JVP, exact trace), all timed in alternation."""
    sde, net = sgm.VPSDE(), MLPScore(dim, key=jax.random.key(1000 + dim))
    x = 0.5 + 0.7 * jax.random.normal(jax.random.key(200 + dim), (batch, dim))
    ref, _, _ = mlp_reference(net, sde, x, args.ref_tol)
    tol = dict(rtol=args.rtol, atol=args.atol)
    run_scipy, _, _ = scipy_call(net, sde, x, **tol)
    hkey = jax.random.key(7)
    fns = {name: sgm_call(net, sde, x, **{"exact": False, "key": hkey, **tol, **opts})
           for name, opts in HUTCH_VARIANTS.items()}
    fns["scipy"] = run_scipy
    eps = jax.random.rademacher(jax.random.key(1), x.shape).astype(x.dtype)
    one = lambda q: sde.ode_drift(net, jnp.float32(0.5), q)  # noqa: E731
    fwd = jax.jit(jax.vmap(one))
    jvp = jax.jit(jax.vmap(lambda q, e: jnp.vdot(jax.jvp(one, (q,), (e,))[1], e)))
    exact = jax.jit(jax.vmap(lambda q: jnp.trace(jax.jacfwd(one)(q))))
    fns.update({"field: forward": lambda: fwd(x), "field: one-probe JVP": lambda: jvp(x, eps),
                "field: exact trace": lambda: exact(x)})
    t = race(fns, budget=args.budget)
    scipy_s = t["scipy"][1]
    rows = []
    for name, (_, wall, out) in t.items():
        row = {"variant": name, "D": dim, "B": batch, "wall_s": wall}
        if not name.startswith("field"):
            logp, nfe = (out[0], out[2]) if name == "scipy" else (out[0], int(out[1]["nfe"]))
            err = np.abs(np.asarray(logp, np.float64) - ref) / dim
            row.update(nfe=nfe, ms_per_nfe=1e3 * wall / nfe, speedup_vs_scipy=scipy_s / wall,
                       err_mean=float(err.mean()))
        rows.append(row)
    return rows


def print_head(head: str) -> None:
    """A table's column titles and a rule under them."""
    print(head)
    print("-" * len(head))


def print_variants(rows):
    head = (f"{'variant':<28}{'D':>4}{'B':>5}{'nfe':>6}{'wall ms':>9}{'ms/nfe':>8}{'x':>6}"
            f"{'err mean':>10}")
    print_head(head)
    for r in rows:
        rest = (f"{r['nfe']:>6}{1e3 * r['wall_s']:>9.1f}{r['ms_per_nfe']:>8.2f}"
                f"{r['speedup_vs_scipy']:>6.2f}{r['err_mean']:>10.1e}" if "nfe" in r
                else f"{'':>6}{1e3 * r['wall_s']:>9.2f}")
        print(f"{r['variant']:<28}{r['D']:>4}{r['B']:>5}{rest}")


def print_table(rows):
    head = (f"{'sde':<6}{'score':<6}{'D':>5}{'B':>5} {'impl':<6}{'div':<8}{'nfe':>6}"
            f"{'err mean':>10}{'err max':>10}{'signed':>10}{'compile':>9}{'wall s':>9}{'s/1k':>9}"
            f"{'x':>7}")
    print_head(head)
    for r in rows:
        ratio = f"{r['speedup_vs_scipy']:.2f}" if "speedup_vs_scipy" in r else ""
        print(f"{r['sde']:<6}{r['score']:<6}{r['D']:>5}{r['B']:>5} {r['impl']:<6}{r['div']:<8}"
              f"{r['nfe']:>6}{r['err_mean']:>10.1e}{r['err_max']:>10.1e}{r['err_signed']:>10.1e}"
              f"{r['compile_s']:>9.2f}{r['wall_s']:>9.3f}{r['s_per_1k']:>9.2f}{ratio:>7}")


def print_sweep(rows):
    head = (f"{'D':>5}{'B':>6}{'sgm nfe':>9}{'scipy nfe':>11}{'sgm s':>9}{'scipy s':>9}"
            f"{'field ms':>10}{'sgm ms/nfe':>12}{'sgm compile':>13}{'x':>7}")
    print_head(head)
    for r in rows:
        print(f"{r['D']:>5}{r['B']:>6}{r['sgm_nfe']:>9}{r['scipy_nfe']:>11}{r['sgm_s']:>9.3f}"
              f"{r['scipy_s']:>9.3f}{1e3 * r['scipy_field_call_s']:>10.3f}"
              f"{1e3 * r['sgm_s'] / r['sgm_nfe']:>12.3f}{r['sgm_compile_s']:>13.2f}"
              f"{r['speedup_vs_scipy']:>7.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="VP only, small batches, no batch sweep")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--ref-tol", type=float, default=1e-10, help="tolerance of the MLP reference")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of repeated timing per comparison (default 1.5, quick 0.2)")
    p.add_argument("--out", type=Path, default=None, help=f"JSON (default {RESULTS}, or "
                   f"{VARIANTS_RESULTS.name} with --hutchinson-variants)")
    p.add_argument("--hutchinson-variants", action="store_true",
                   help="only: the one-probe solve on the D = 2 MLP score with one option changed "
                        "at a time against scipy, and the field's cost alone (what limits it)")
    args = p.parse_args()
    if args.hutchinson_variants:
        args.budget = 2.0 if args.budget is None else args.budget
        rows = hutchinson_variant_rows(2, 256, args)
        print(f"one Rademacher probe, VP, random MLP score, rtol={args.rtol:g} atol={args.atol:g}, "
              f"{os.cpu_count()} CPU cores; x = scipy RK45 (exact trace) / row, after compilation; "
              f"field rows: one jitted call of the batch's vector field")
        print_variants(rows)
        out = args.out or VARIANTS_RESULTS
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": {"rtol": args.rtol, "atol": args.atol,
                                            "load_avg": os.getloadavg(),
                                            "cpus": os.cpu_count()}, "rows": rows}, indent=1))
        print(f"wrote {out}")
        return
    args.out = args.out or RESULTS

    if args.quick:
        sdes, gauss, mlp, sweep = ["vp"], {2: 64, 64: 16, 784: 4}, {2: 64}, {}
    else:
        sdes, gauss, mlp = ["vp", "ve", "subvp"], {2: 256, 64: 64, 784: 8}, {2: 256, 64: 64}
        sweep = {2: (1, 8, 64, 1024), 64: (1, 8, 16)}
    if args.budget is None:
        args.budget = 0.2 if args.quick else 1.5

    start, load = time.perf_counter(), os.getloadavg()

    def progress(what):
        print(f"  [{time.perf_counter() - start:6.1f}s] {what}", flush=True)

    rows, sweeps = [], []
    for name in sdes:
        for dim, batch in gauss.items():
            rows += gaussian_rows(name, dim, batch, args)
            progress(f"gauss {name} D={dim}")
    for dim, batch in mlp.items():  # VP only: see the module docstring
        rows += mlp_rows("vp", dim, batch, args)
        progress(f"mlp vp D={dim}")
    for dim, batches in sweep.items():
        sweeps += sweep_rows(dim, batches, args)
        progress(f"batch sweep D={dim}")
    total = time.perf_counter() - start

    print(f"\nprobability-flow log-likelihood, rtol={args.rtol:g} atol={args.atol:g}, float32, "
          f"{os.cpu_count()} CPU cores; errors in nats/dim; times in s (best of alternated runs); "
          f"x = scipy/sgm wall time after compilation")
    print_table(rows)
    for r in rows:
        if r["score"] == "mlp" and r["impl"] == "sgm" and r["div"] == "exact":
            print(f"  mlp {r['sde']} D={r['D']}: reference scipy DOP853 float64 "
                  f"tol={args.ref_tol:g} ({r['ref_nfe']} calls); sgm float64 "
                  f"tol={10 * args.ref_tol:g} differs by {r['ref_crosscheck']:.1e} nats/dim")
    if sweeps:
        print("\nbatch-size sweep, VP, MLP score, exact trace "
              "(field ms = one call of scipy's jitted batch field)")
        print_sweep(sweeps)
    print(f"total {total:.0f} s")

    meta = {"quick": args.quick, "rtol": args.rtol, "atol": args.atol, "ref_tol": args.ref_tol,
            "budget_s": args.budget, "jax": jax.__version__, "backend": jax.default_backend(),
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "load_avg_start": load, "load_avg_end": os.getloadavg(), "total_s": total}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "batch_sweep": sweeps}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
