"""Conditioning images end to end: the networks use them, guidance nulls them, and sampling,
likelihood and the command line take each sample's own image.

Closed forms first: with p(x | c) = N(c, s0^2 I) and c ~ N(0, I), every marginal p_t(x | c) and
p_t(x) is Gaussian, so a conditional sampler must reproduce each condition's mean and spread, and
the conditional likelihood must equal log N(x; c, s0^2 I). Then tiny UNet/DiT models trained on
images determined by their (smaller) conditioning image: their held-out loss must be far lower
given the right images than given another sample's, which no network that ignores the image can do.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm

import sgm
from sgm import train
from sgm.data import Batches, Preprocess
from sgm.data import grf_superres as superres
from sgm.loss import dsm_loss
from sgm.conditioning import Conditioning
from sgm.nets import MLP, DiT, UNet
from sgm.nets.embeddings import with_condition_image

ROOT = Path(__file__).resolve().parents[1]
S0 = 0.3  # spread of x around its condition


def gaussian_conditional_score(sde):
    """Score of p_t(x | c) for p(x | c) = N(c, S0^2), or of p_t(x) (c ~ N(0, 1)) for a NaN image."""

    def score(t, x, image):
        a, s = sde.scale(t), sde.std(t)
        null = jnp.any(jnp.isnan(image))
        mean = jnp.where(null, 0.0, image)
        var0 = jnp.where(null, S0**2 + 1.0, S0**2)
        return -(x - a * mean) / (a**2 * var0 + s**2)

    return score


# ------------------------------------------------------------------------------------- plumbing


def test_conditioning_standardises_and_drops_images_to_the_null():
    images = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, (1000, 1, 2, 2)), jnp.float32)
    cond = Conditioning("image", label_dropout=0.3, image_shift=3.0, image_scale=2.0)
    kept = cond(images)["image"]  # no key: no dropout
    np.testing.assert_allclose(kept, (images - 3.0) / 2.0, rtol=1e-6)
    dropped = np.asarray(cond(images, key=jax.random.key(0))["image"])
    null = np.isnan(dropped).all(axis=(1, 2, 3))
    assert np.isnan(dropped).any(axis=(1, 2, 3)).sum() == null.sum()  # whole images, not pixels
    assert abs(null.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 1000)
    np.testing.assert_allclose(dropped[~null], np.asarray(kept)[~null], rtol=1e-6)
    with pytest.raises(sgm.ConfigError, match="positive scale"):
        Conditioning("image", image_scale=0.0)


@pytest.mark.parametrize("kind", [None, "label", "param", "image"])
def test_conditioning_answers_what_callers_ask_of_its_kind(kind):
    raw = {None: None, "label": np.array([2, 0]), "param": np.array([[0.5, 2.0], [0.125, 30.0]]),
           "image": np.zeros((2, 1, 2, 2), np.float32)}[kind]
    cond = Conditioning(kind, 3 if kind == "label" else None, label_dropout=1.0)
    assert cond.keyword == kind
    assert (cond.uses_label, cond.uses_param, cond.uses_image) == tuple(
        kind == k for k in ("label", "param", "image"))
    assert list(cond(raw)) == ([] if kind is None else [cond.keyword])  # the network's keyword
    assert cond.guidable == (kind in ("label", "image"))
    if cond.guidable:  # dropped with probability 1: every condition is the null
        null = np.asarray(cond(raw, key=jax.random.key(0))[cond.keyword])
        assert np.all(null == 3) if kind == "label" else np.all(np.isnan(null))
    captions = cond.describe(raw)
    if kind == "image":
        assert captions is raw  # drawn, not written
    else:
        assert captions == {None: None, "label": ["label 2", "label 0"],
                            "param": ["(0.5, 2)", "(0.12, 30)"]}[kind]
    assert cond.describe(None) is None


def test_condition_image_is_resized_and_its_null_is_not_a_zero_image():
    x = jnp.zeros((2, 4, 6))
    small = jnp.arange(6.0).reshape(1, 2, 3)
    out = with_condition_image("UNet", x, small, 1)
    assert out.shape == (4, 4, 6)  # x's 2 channels, the image resized to 4x6, the presence flag
    np.testing.assert_allclose(out[2], jax.image.resize(small, (1, 4, 6), "linear")[0])
    assert bool(jnp.all(out[3] == 1.0))
    null = with_condition_image("UNet", x, jnp.full((1, 2, 3), jnp.nan), 1)
    zero = with_condition_image("UNet", x, jnp.zeros((1, 2, 3)), 1)
    assert bool(jnp.all(jnp.isfinite(null))) and not bool(jnp.array_equal(null, zero))
    for bad in (None, jnp.zeros((2, 2, 3)), jnp.zeros((1, 5, 6))):
        with pytest.raises(ValueError, match=r"needs `image` of shape \(1, h, w\)"):
            with_condition_image("UNet", x, bad, 1)


@pytest.mark.slow
def test_every_network_takes_a_smaller_image_and_the_null():
    key = jax.random.key(0, impl="rbg")  # compiles its random kernels faster than threefry
    nets = [UNet(1, 8, base=8, channel_mults=(1, 2), heads=2, cond_channels=2, key=key),
            DiT(1, 8, patch=2, width=16, depth=1, heads=2, cond_channels=2, key=key),
            MLP(64, width=16, depth=1, time_dim=16, cond_dim=2 * 4 * 4, key=key)]
    x, img = jnp.ones((1, 8, 8)), jnp.ones((2, 4, 4))
    for net in nets:
        out = jax.eval_shape(lambda n=net: (n(0.5, x, image=img), n(0.5, x, image=img * jnp.nan)))
        assert out[0].shape == out[1].shape == (1, 8, 8)


# ------------------------------------------------------------------------- closed-form Gaussian


def test_guided_score_nulls_the_image_per_sample():
    sde = sgm.VPSDE()
    score = gaussian_conditional_score(sde)
    x, img = jnp.array([[[0.3, -0.2]]]), jnp.array([[[1.0, 2.0]]])
    cond, uncond = score(0.4, x, img), score(0.4, x, jnp.full_like(img, jnp.nan))
    assert not bool(jnp.allclose(cond, uncond))
    np.testing.assert_allclose(sgm.GuidedScore(score, None, None, 0.0)(0.4, x, image=img), cond)
    guided = sgm.GuidedScore(score, None, None, 2.0)(0.4, x, image=img)
    np.testing.assert_allclose(guided, 3.0 * cond - 2.0 * uncond, rtol=1e-6)
    # through a sampler's per-sample conditions: each sample gets its own image
    imgs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, 1, 2)), jnp.float32)
    out, _ = sgm.sample(sgm.GuidedScore(score, None, None, 1.0), sde, (1, 1, 2),
                        key=jax.random.key(0), num=2, method="ddim", steps=10,
                        cond={"image": imgs})
    assert out.shape == (2, 1, 1, 2) and bool(jnp.all(jnp.isfinite(out)))


def test_conditional_sampling_reproduces_each_conditions_gaussian():
    sde = sgm.VPSDE()
    score = gaussian_conditional_score(sde)
    images = jnp.array([[[[-1.5, 0.5]]], [[[2.0, 1.0]]]])
    n = 1000
    cond = {"image": jnp.repeat(images, n, axis=0)}
    x, _ = sgm.sample(score, sde, (1, 1, 2), key=jax.random.key(1), num=2 * n, method="em",
                      steps=500, cond=cond)
    x = np.asarray(x).reshape(2, n, 2)
    se = S0 / np.sqrt(n)
    np.testing.assert_allclose(x.mean(1), np.asarray(images).reshape(2, 2), atol=5 * se)
    np.testing.assert_allclose(x.std(1), S0, rtol=0.08)


def test_conditional_likelihood_equals_the_exact_conditional_density():
    sde = sgm.VPSDE()
    score = gaussian_conditional_score(sde)
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.normal(size=(4, 1, 2, 2)), jnp.float32)
    x = images + S0 * jnp.asarray(rng.normal(size=(4, 1, 2, 2)), jnp.float32)
    logp, info = sgm.log_likelihood(score, sde, x, cond={"image": images})
    a0, s_0 = sde.scale(sde.t0), sde.std(sde.t0)
    c, z = np.asarray(images), np.asarray(info["z"])
    exact = norm.logpdf(np.asarray(x), a0 * c, np.sqrt(a0**2 * S0**2 + s_0**2))
    exact = exact.reshape(4, -1).sum(1)
    # the prior N(0, 1) stands in for p_t1(z | c), whose mean a(t1) c is not quite 0: that
    # difference is part of what the solver computes (as in test_likelihood.py)
    a1, s1 = sde.scale(sde.t1), sde.std(sde.t1)
    p_t1 = norm.logpdf(z, a1 * c, np.sqrt(a1**2 * S0**2 + s1**2)).reshape(4, -1).sum(1)
    prior = np.asarray(jax.vmap(sde.prior_logp)(info["z"]))
    np.testing.assert_allclose(np.asarray(logp), exact + prior - p_t1, atol=4e-3)
    swapped, _ = sgm.log_likelihood(score, sde, x, cond={"image": images[::-1]})
    assert np.all(np.asarray(swapped) < exact - 1.0)  # another point's image: far less likely


def superres_score(sde, n):
    """Closed-form score of p_t(x | y) for GRF super-resolution: x_t | y is Gaussian with mean
    a mu(y) and per-mode variance a^2 v_k + s^2 (see sgm.data.grf_superres)."""
    g, v = (jnp.asarray(a, jnp.float32) for a in superres.posterior_modes(n))

    def score(t, x, image):
        a, s = sde.scale(t), sde.std(t)
        r_hat = jnp.fft.fft2(x[0], norm="ortho") - a * g * jnp.fft.fft2(image[0], norm="ortho")
        return jnp.fft.ifft2(-r_hat / (a**2 * v + s**2), norm="ortho").real[None]

    return score


def _modes_logp(x, mean, var):
    """log N(x; mean, F^H diag(var) F) of fields (..., n, n)."""
    r_hat = np.fft.fft2(x - mean, norm="ortho")
    quad = np.sum(np.abs(r_hat) ** 2 / var, axis=(-2, -1))
    return -0.5 * quad - 0.5 * np.sum(np.log(2 * np.pi * var))


def test_superres_conditional_likelihood_equals_the_exact_posterior_density():
    n, sde = 8, sgm.VPSDE()
    ds = sgm.data.load("grf_superres", n_train=2, n_test=4, image_size=n)
    x, y = ds.test, ds.test_cond
    logp, info = sgm.log_likelihood(superres_score(sde, n), sde, jnp.asarray(x),
                                    cond={"image": jnp.asarray(y)})
    _, v = superres.posterior_modes(n)
    mu = superres.posterior_mean(y[:, 0])
    a0, s0, a1, s1 = (float(f(t)) for t in (sde.t0, sde.t1) for f in (sde.scale, sde.std))
    true_t0 = _modes_logp(x[:, 0], a0 * mu, a0**2 * v + s0**2)
    z = np.asarray(info["z"], np.float64)
    prior_term = np.asarray(jax.vmap(sde.prior_logp)(info["z"])) - _modes_logp(
        z[:, 0], a1 * mu, a1**2 * v + s1**2)
    err = np.abs(np.asarray(logp) - (true_t0 + prior_term)) / (n * n)
    assert err.max() < 1e-3, err
    # and at t0 -> 0 that is the dataset's own exact density
    np.testing.assert_allclose(true_t0, ds.log_prob(x, y), atol=0.05)


# ---------------------------------------------------------------------------- trained networks


def _images(rng, n):
    """Images x (1, 8, 8) determined by a random +-1 pattern c (1, 4, 4): x = 0.8 c upsampled."""
    c = rng.choice([-1.0, 1.0], size=(n, 1, 4, 4)).astype(np.float32)
    x = 0.8 * np.kron(c, np.ones((1, 1, 2, 2), np.float32))
    return x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), c


@pytest.mark.parametrize("name", ["unet", "dit"])
@pytest.mark.slow
def test_image_conditioned_network_trains_and_uses_its_image(name):
    rng = np.random.default_rng(0)
    (x, c), (x_test, c_test) = _images(rng, 1024), _images(rng, 256)
    key = jax.random.key(0, impl="rbg")
    if name == "unet":
        net = UNet(1, 8, base=16, channel_mults=(1, 2), heads=2, cond_channels=1, key=key)
    else:
        net = DiT(1, 8, patch=2, width=32, depth=2, heads=2, cond_channels=1, key=key)
    model = sgm.ScoreModel(net, sgm.VPSDE())
    optimizer = optax.adam(3e-3)
    step = train.make_step(lambda m, xb, cb, k: dsm_loss(m, m.sde, xb, key=k, cond=cb), optimizer,
                           Preprocess(None, None, None), ema=0.0,
                           conditioning=Conditioning("image", label_dropout=0.1))
    state, batches = train.init_state(model, optimizer), Batches((x, c), 64, 0)
    for i in range(120):
        state, _ = step(state, *next(batches), jax.random.fold_in(key, i))

    @eqx.filter_jit
    def heldout(m, images):
        return dsm_loss(m, m.sde, x_test, key=jax.random.key(1), cond={"image": images})

    right = float(heldout(state.model, c_test))
    other = float(heldout(state.model, np.roll(c_test, 1, axis=0)))  # another sample's image
    null = float(heldout(state.model, np.full_like(c_test, np.nan)))
    start = float(heldout(model, c_test))
    assert right < 0.1 * start, (right, start)
    assert right < 0.5 * null < 0.5 * other, (right, null, other)


# -------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_main_samples_and_scores_test_points_given_their_images(tmp_path):
    from sgm import run

    rng = np.random.default_rng(3)
    c, c_test = rng.normal(size=(64, 1, 2, 2)), rng.normal(size=(5, 1, 2, 2))
    x = np.kron(c, np.ones((1, 1, 2, 2))) + 0.1 * rng.normal(size=(64, 1, 4, 4))
    x_test = np.kron(c_test, np.ones((1, 1, 2, 2)))
    np.savez(tmp_path / "pairs.npz", x=x, cond=c, x_test=x_test, cond_test=c_test)
    work = tmp_path / "run"
    sets = ["data.name=array", f"data.root={tmp_path / 'pairs.npz'}", "model.width=16",
            "model.depth=1", "model.conditional=true", "model.label_dropout=0.2",
            "train.steps=2", "train.batch_size=8", "train.log_every=1", "train.eval_num=4",
            "sample.num=10", "sample.method=ddim", "sample.steps=4", "sample.guidance=1.0",
            "likelihood.num=3", "likelihood.exact=false", "likelihood.rtol=1e-2",
            "likelihood.atol=1e-2"]
    assert run.main(ROOT / "configs" / "eight_gaussians.py", workdir=work, progress=False,
                    sets=sets) == 0
    with np.load(work / "samples.npz") as f:
        assert f["samples"].shape == (10, 1, 4, 4)
        np.testing.assert_allclose(f["cond"], c_test[np.arange(10) % 5].astype(np.float32))
    assert (work / "likelihood.json").is_file()
