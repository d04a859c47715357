import atexit
import gc
import os
import shutil
import tempfile

# One persistent JAX compilation cache for the whole test session: every xdist worker and every
# `python main.py` a test launches inherit this environment, so a program compiled once is loaded
# from disk by the others (a tiny main.py training run starts in about half the time). Set
# JAX_COMPILATION_CACHE_DIR to keep the cache between sessions (.ci/run shares one between tiers).
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _cache = tempfile.mkdtemp(prefix="sgm-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# a size limit turns on JAX's file lock, so concurrent writers cannot interleave (needs filelock)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import sgm  # noqa: E402

SCHEDULES = {
    "linear": sgm.LinearSchedule(),
    "cosine": sgm.CosineSchedule(),
    "quadratic": sgm.QuadraticSchedule(),
    "sigmoid": sgm.SigmoidSchedule(),
    "scaled_linear": sgm.ScaledLinearSchedule(),
    # a randomly initialised learned schedule, far from linear (curvature 1 is 20x the default's)
    "learned": sgm.LearnedSchedule(jax.random.key(3), curvature=1.0),
}


def all_sdes():
    """Every SDE with every schedule, as (id, sde) pairs."""
    out = [(f"vp-{n}", sgm.VPSDE(schedule=s)) for n, s in SCHEDULES.items()]
    out += [(f"subvp-{n}", sgm.SubVPSDE(schedule=s)) for n, s in SCHEDULES.items()]
    out.append(("ve", sgm.VESDE()))
    return out


SDES3 = {"vp": sgm.VPSDE(), "subvp": sgm.SubVPSDE(), "ve": sgm.VESDE()}


@pytest.fixture
def key():
    return jax.random.key(0)


# A 2-D mixture whose closed-form score drives the samplers in test_sample.py and test_sigma_solvers.py.
MIXTURE = sgm.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [[0.5, 0.4], [0.3, 0.6]])


def mixture_stats(x, gm=MIXTURE):
    """Weights, means and stds of the components, assigning points by posterior responsibility."""
    comp = np.asarray(jnp.argmax(jax.vmap(gm.responsibilities)(x), axis=1))
    x = np.asarray(x)
    k = range(gm.weights.shape[0])
    w = np.array([np.mean(comp == i) for i in k])
    means = np.stack([x[comp == i].mean(0) for i in k])
    stds = np.stack([x[comp == i].std(0) for i in k])
    return w, means, stds


def assert_reproduces_mixture(x, std_tol=0.05, gm=MIXTURE):
    """Weights within 4 standard errors (+0.01), component means within 0.06, stds within std_tol.

    Standard errors of component means are std / sqrt(n_k) <~ 0.02 for 4000 points; of stds about
    std / sqrt(2 n_k).
    """
    n = x.shape[0]
    assert bool(jnp.all(jnp.isfinite(x)))
    w, means, stds = mixture_stats(x, gm)
    w_se = np.sqrt(np.asarray(gm.weights) * (1 - np.asarray(gm.weights)) / n)
    np.testing.assert_allclose(w, gm.weights, atol=float(4 * w_se.max()) + 0.01)
    np.testing.assert_allclose(means, gm.means, atol=0.06)
    np.testing.assert_allclose(stds, gm.stds, atol=std_tol)


def count_score_calls(sde, method, score=None, **kw):
    """(reported info["nfe"], score evaluations actually made) for one sample drawn by `method`.

    Every call of the score makes a host callback; with one sample (num=1) each batched call is one
    evaluation. The default score is the closed form of MIXTURE under `sde`.
    """
    calls = []
    base = MIXTURE.score(sde) if score is None else score

    def score_fn(t, x):
        jax.debug.callback(lambda _: calls.append(1), t)
        return base(t, x)

    x, info = sgm.sample(score_fn, sde, (MIXTURE.dim,), key=jax.random.key(0), num=1, method=method,
                         **kw)
    jax.block_until_ready(x)
    jax.effects_barrier()
    return int(info["nfe"]), len(calls)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's compiled programs after each test module, so a worker's memory stays bounded by
    one module's programs (measurements: docs/results/defaults.md)."""
    yield
    jax.clear_caches()
    gc.collect()
