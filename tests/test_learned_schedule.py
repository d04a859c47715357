"""The learned noise schedule: monotone, a real SDE of the codebase, trained on its variance objective.

Its marginals against a simulated forward SDE, beta = dB/dt and the inverse maps run in
test_sde.py (the conftest schedules include a randomly initialised learned one).
"""

import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MIXTURE, assert_reproduces_mixture

import sgm
from sgm import build, parallel, run
from sgm import checkpoint as ckpt
from sgm import config as C
from sgm.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"  # main.py's default config


def random_schedule(seed, curvature=1.0, **kw):
    return sgm.LearnedSchedule(jax.random.key(seed), curvature=curvature, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_schedule_is_monotone_and_holds_its_end_points(seed):
    sch = random_schedule(seed, logsnr_max=12.0, logsnr_min=-8.0, t0=1e-4)
    sde = sgm.VPSDE(schedule=sch, t0=1e-4)
    t = jnp.linspace(0.0, 1.0, 4001)
    b = sch.integral(t)
    assert float(b[0]) == 0.0
    assert bool(jnp.all(jnp.diff(b) > 0)), "B(t) must increase"
    assert bool(jnp.all(jax.vmap(sch.beta)(t[1:]) > 0))
    lam = sde.log_snr(t[t >= 1e-4])
    assert bool(jnp.all(jnp.diff(lam) < 0)), "log SNR must decrease"
    np.testing.assert_allclose(sde.log_snr(1e-4), 12.0, atol=1e-4)
    np.testing.assert_allclose(sde.log_snr(1.0), -8.0, atol=1e-4)
    # VP on this schedule: log SNR = -gamma exactly, and the network sees gamma normalised
    np.testing.assert_allclose(sde.log_snr(0.3), -sch.gamma(0.3), rtol=1e-5)
    u = sde.network_time(jnp.array([1e-4, 0.3, 1.0]))
    np.testing.assert_allclose(u, [0.0, (sch.gamma(0.3) + 12.0) / 20.0, 1.0], atol=1e-6)


def test_random_schedules_differ_and_bad_end_points_are_refused():
    a, b = random_schedule(0), random_schedule(1)
    assert abs(float(a.gamma(0.5) - b.gamma(0.5))) > 0.1  # the shape is really random
    with pytest.raises(sgm.ConfigError, match="logsnr_max > logsnr_min"):
        sgm.LearnedSchedule(jax.random.key(0), logsnr_max=-1.0, logsnr_min=2.0)


def flow_prior_term(sde, gm, z):
    return jax.vmap(sde.prior_logp)(z) - jax.vmap(lambda zi: gm.log_prob(zi, sde, sde.t1))(z)


@pytest.mark.parametrize("kind", ["vp", "subvp"])
@pytest.mark.parametrize("dim", [2, 64])
def test_closed_form_likelihood_on_a_random_learned_schedule(kind, dim):
    """The likelihood ODE of the exact score reproduces the closed-form log-density to the same
    1e-5 nats per dimension as the fixed schedules, on an arbitrary (random) learned schedule."""
    make = sgm.VPSDE if kind == "vp" else sgm.SubVPSDE
    sde = make(schedule=random_schedule(5), t0=1e-5)
    gm = sgm.GaussianMixture.gaussian(jnp.full(dim, 0.5), 0.7)
    x = gm.sample(jax.random.key(3), 6)
    logp, info = sgm.log_likelihood(gm.score(sde), sde, x)
    true = jax.vmap(lambda xi: gm.log_prob(xi, sde, sde.t0))(x)
    err = jnp.abs(logp - (true + flow_prior_term(sde, gm, info["z"]))) / dim
    assert float(err.mean()) < 1e-5, err


SAMPLE_STEPS = {"em": 500, "pc": 300, "ddpm": 300, "ddim": 200}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "ode" else m
                                    for m in SAMPLERS])
def test_every_sampler_runs_on_a_learned_schedule(method):
    """Every method reproduces the mixture on a random learned schedule. The few-step solvers get
    50 steps: the schedule ends at noise level 1e-3 at sampling_t0 (the linear one at 1e-2), so 20
    steps span a wider range of noise levels than on the linear schedule."""
    sde = sgm.VPSDE(schedule=random_schedule(5))
    default = SAMPLERS[method].default_steps
    kw = {} if default is None else {"steps": SAMPLE_STEPS.get(method, max(default, 50))}
    x, info = sgm.sample(MIXTURE.score(sde), sde, (2,), key=jax.random.key(7), num=4000,
                         method=method, **kw)
    assert int(info["nfe"]) > 0
    assert_reproduces_mixture(x, std_tol=0.06)


def _toy_model(sde, key):
    net = sgm.nets.MLP(3, width=32, depth=1, key=key)
    net = eqx.tree_at(lambda n: n.linear_out.weight, net,
                      0.1 * jax.random.normal(key, net.linear_out.weight.shape))
    return sgm.ScoreModel(net, sde, prediction="eps")


def test_score_model_gives_the_network_the_noise_level():
    sde = sgm.VPSDE(schedule=random_schedule(0))
    seen = []

    class Probe(eqx.Module):
        def __call__(self, t, x):
            seen.append(t)
            return x

    sgm.ScoreModel(Probe(), sde)(0.4, jnp.ones(3))
    np.testing.assert_allclose(seen[0], sde.network_time(0.4))
    assert abs(float(seen[0]) - 0.4) > 1e-3


@pytest.mark.parametrize("kind", ["vp", "subvp"])
def test_the_local_schedule_is_the_learned_one_at_its_time(kind):
    """At its own time a `LocalSchedule` (two numbers) gives the SDE's scale, std, diffusion and
    network time, and their derivatives in the schedule's parameters, to float64 rounding (the
    network time's derivatives near t0 come from a difference h(u) - h(0)); elsewhere NaN."""
    make = sgm.VPSDE if kind == "vp" else sgm.SubVPSDE

    def quantities(s, t, local):
        sde = make(schedule=s.local(t) if local else s)
        return jnp.stack([sde.scale(t), sde.std(t), sde.diffusion(t), sde.network_time(t)])

    value_and_jac = jax.jit(lambda s, t, local: (quantities(s, t, local),
                                                  jax.jacrev(quantities)(s, t, local)),
                            static_argnums=2)
    with jax.enable_x64(True):
        sch = random_schedule(4)
        for t in jnp.array([3e-5, 0.2, 0.97]):
            (v, g), (v2, g2) = (value_and_jac(sch, t, local) for local in (False, True))
            np.testing.assert_allclose(v2, v, rtol=1e-14)
            leaves, leaves2 = jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g2)
            assert leaves[0].dtype == jnp.float64 and len(leaves) == 4
            for a, b in zip(leaves2, leaves, strict=True):  # row by row: each quantity's scale
                row_max = jnp.abs(b).max(axis=tuple(range(1, b.ndim)), keepdims=True)
                assert bool(jnp.all(jnp.abs(a - b) <= 1e-10 * row_max)), float(t)
    local = random_schedule(4).local(jnp.asarray(0.2))
    assert bool(jnp.isnan(make(schedule=local).std(0.3)))
    assert bool(jnp.isnan(local.network_time(0.2001)))


@pytest.mark.parametrize("kind,opts", [
    pytest.param("vp", {"time_sampling": "stratified", "dropout": True}, marks=pytest.mark.slow),
    ("subvp", {"time_sampling": "uniform", "reduce": "sum", "t0": 1e-6}),
])
def test_the_fused_pass_has_the_two_passes_gradients(kind, opts):
    """One forward and one backward pass (each sample sees the schedule as two numbers) give
    the gradients of the two-pass objective: the bound's for the network, that of half the log of
    the second moment for the schedule; with labels, dropout keys and the schedule in both
    arguments."""
    from sgm.loss import _two_pass_loss

    sde = (sgm.VPSDE if kind == "vp" else sgm.SubVPSDE)(schedule=random_schedule(3))
    net = sgm.nets.MLP(3, width=32, depth=2, num_classes=4, dropout=0.1, key=jax.random.key(5))
    net = eqx.tree_at(lambda n: n.linear_out.weight, net,
                      0.1 * jax.random.normal(jax.random.key(6), net.linear_out.weight.shape))
    model = sgm.ScoreModel(net, sde, prediction="v")
    x = jax.random.normal(jax.random.key(7), (48, 3))
    opts = dict(opts, weighting="likelihood", cond={"label": jnp.arange(48) % 4})
    key = jax.random.key(8)
    fused, g = eqx.filter_value_and_grad(
        lambda m: sgm.dsm_loss(m, m.sde, x, key=key, **opts))(model)
    two, g2 = eqx.filter_value_and_grad(
        lambda m: _two_pass_loss(m, m.sde, x, key=key, **opts))(model)
    plain = jnp.mean(sgm.dsm_loss_per_sample(model, sde, x, key=key, **opts))
    np.testing.assert_allclose(fused, plain, rtol=1e-6)
    np.testing.assert_allclose(fused, two, rtol=1e-5)  # bound + second - second rounds
    leaves, leaves2 = jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g2)
    assert len(leaves) == len(leaves2) and any(float(jnp.abs(a).max()) > 0 for a in leaves)
    for a, b in zip(leaves, leaves2, strict=True):  # float32 rounding of two computations
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * float(jnp.abs(b).max()) + 1e-10)
    assert max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g.sde)) > 0


@pytest.mark.slow
def test_gradients_are_the_bound_for_the_net_and_the_second_moment_for_the_schedule():
    sde = sgm.VPSDE(schedule=random_schedule(2))
    model = _toy_model(sde, jax.random.key(1))
    x = MIXTURE.sample(jax.random.key(2), 64)
    x = jnp.concatenate([x, x[:, :1]], axis=1)
    opts = {"weighting": "likelihood", "time_sampling": "stratified"}
    key = jax.random.key(4)

    def per(m):
        return sgm.dsm_loss_per_sample(m, m.sde, x, key=key, **opts)

    loss, g = eqx.filter_value_and_grad(lambda m: sgm.dsm_loss(m, m.sde, x, key=key, **opts))(model)
    g_mean = eqx.filter_grad(lambda m: jnp.mean(per(m)))(model)
    g_sq = eqx.filter_grad(lambda m: 0.5 * jnp.log(jnp.mean(per(m) ** 2)))(model)
    np.testing.assert_allclose(loss, jnp.mean(per(model)), rtol=1e-6)
    # float32: the two computations round differently, by ~1e-4 of each array's largest entry
    for a, b in zip(jax.tree_util.tree_leaves(g.net), jax.tree_util.tree_leaves(g_mean.net), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3 * float(jnp.abs(b).max()) + 1e-9)
    for a, b in zip(jax.tree_util.tree_leaves(g.sde), jax.tree_util.tree_leaves(g_sq.sde), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3 * float(jnp.abs(b).max()) + 1e-9)
    # and they are not the same gradients: the mean's schedule gradient is another direction
    g_mean_sde = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(g_mean.sde)])
    g_sde = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(g.sde)])
    assert not np.allclose(g_sde, g_mean_sde, rtol=0.1)
    assert max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g.sde)) > 0
    with pytest.raises(sgm.ConfigError, match="weighting='likelihood'"):
        sgm.dsm_loss(model, sde, x, key=key)


@pytest.mark.slow
def test_the_bound_of_the_exact_score_does_not_depend_on_the_shape():
    """With fixed end points the likelihood-weighted loss of the exact score, integral of
    gamma'(t) E||eps - eps*||^2 dt, is an integral over gamma alone: two random shapes give the
    same value (within the Monte-Carlo error), and the closed form for Gaussian data."""
    dim, s_d = 3, 0.6
    gm = sgm.GaussianMixture.gaussian(jnp.zeros(dim), s_d)
    x = gm.sample(jax.random.key(0), 40000)
    g0, g1 = -13.8, 10.05
    # per dimension E||eps - eps*||^2 = SNR s^2 / (SNR s^2 + 1); integrated over gamma = -log SNR
    exact = (math.log1p(s_d**2 * math.exp(-g0)) - math.log1p(s_d**2 * math.exp(-g1)))
    values = []
    for seed in (0, 1, 2):
        sde = sgm.VPSDE(schedule=random_schedule(seed))
        per = sgm.dsm_loss_per_sample(lambda t, y, sde=sde: gm.score(sde)(t, y), sde, x,
                                      key=jax.random.key(9), weighting="likelihood",
                                      time_sampling="stratified")
        values.append((float(per.mean()), float(per.std()) / math.sqrt(per.size)))
    for mean, se in values:
        assert abs(mean - exact) < 4 * se + 1e-3 * exact, (mean, se, exact)


@pytest.mark.slow
def test_training_moves_the_schedule_and_its_checkpoint_holds_it(tmp_path):
    """A few steps change the schedule's arrays; the checkpoint gives them back (the bit-identical
    resume with a learned schedule is tests/test_train.py::test_resume_equals_uninterrupted)."""
    sets = ["train.steps=8", "train.batch_size=32", "train.warmup=2", "model.width=16",
            "model.depth=1", "data.n_train=256", "data.n_test=32", "sde.schedule=learned",
            "train.weighting=likelihood"]
    exp = build.experiment(C.override(C.load_file(EIGHT), sets))
    state = exp.train(exp.state, mesh=parallel.make_mesh(), ckpt_dir=tmp_path)
    start, trained = exp.state.model.sde.schedule, state.model.sde.schedule
    assert float(jnp.max(jnp.abs(trained.a - start.a))) > 0
    loaded, _ = ckpt.load(ckpt.latest(tmp_path), exp.state)
    assert isinstance(loaded.model.sde.schedule, sgm.LearnedSchedule)
    for a, b in zip(jax.tree_util.tree_leaves(loaded.ema.sde), jax.tree_util.tree_leaves(state.ema.sde),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("extra,match", [
    (["sde.schedule=learned", "train.weighting=sigma2"], "train.weighting=likelihood"),
    (["sde.schedule=learned", "sde.kind=ve", "train.weighting=likelihood"], "VP and SubVP"),
    (["sde.schedule=learned", "train.weighting=likelihood", "sde.logsnr_min=20"],
     "logsnr_max > logsnr_min"),
])
def test_bad_learned_schedule_configs_exit_2(tmp_path, capsys, extra, match):
    code = run.main(EIGHT, workdir=tmp_path / "wd", progress=False, sets=extra)
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "wd").exists()
