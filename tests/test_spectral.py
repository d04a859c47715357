"""Spectral convolutions: the Fourier filter they compute, circular-shift equivariance, errors."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgm import build
from sgm.config import Config, DataConfig, ModelConfig
from sgm.data import grf, grf_superres as sr
from sgm.errors import ConfigError
from sgm.nets import UNet
from sgm.nets.spectral import SpectralConv, kept_rows

jit = functools.partial(eqx.filter_jit, compiler_options={"xla_backend_optimization_level": 0})


def with_gain(layer: SpectralConv, gain: np.ndarray) -> SpectralConv:
    """`layer` (1 channel in and out) with the real per-mode gain `gain[k]` of an `(h, w)` grid."""
    kept = np.asarray(gain)[np.ix_(layer.rows, np.arange(layer.cols))]
    layer = eqx.tree_at(lambda m: m.real, layer, jnp.asarray(kept[None, None], jnp.float32))
    return eqx.tree_at(lambda m: m.imag, layer, jnp.zeros_like(layer.imag))


def test_a_mode_gain_is_the_exact_fourier_filter():
    """Weights g_k on the kept modes give F^H diag(g) F y: here the GRF super-resolution posterior
    mean, whose gain jumps from ~0.99 to 0 between |k| = 3 and |k| = sqrt(10)."""
    n = 16
    g, _ = sr.posterior_modes(n)
    assert g[grf.wavenumbers(n) > sr.CUTOFF].max() == 0 and g.max() > 0.98
    layer = with_gain(SpectralConv(1, 1, (n, n), 3, key=jax.random.key(0)), g)
    _, y = sr.sample(4, n, np.random.default_rng(0))
    got = np.asarray(jax.vmap(layer)(jnp.asarray(y)))
    np.testing.assert_allclose(got, sr.posterior_mean(y), atol=2e-6)


def test_kept_modes_box():
    """|k_y| <= m in fftfreq order, and every row once the box covers the grid."""
    assert list(kept_rows(16, 3)) == [0, 1, 2, 3, 13, 14, 15]
    assert list(kept_rows(8, 4)) == list(range(8))
    layer = SpectralConv(2, 3, (8, 8), 10, key=jax.random.key(0))
    assert layer.real.shape == (3, 2, 8, 5)  # modes past Nyquist are not kept twice


@pytest.mark.slow
def test_layer_commutes_with_every_circular_shift_and_the_unet_with_its_own():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 16)), jnp.float32)
    layer = SpectralConv(2, 3, (16, 16), 5, key=jax.random.key(1))
    for shift in ((1, 0), (0, 3), (5, -7)):
        a = jnp.roll(layer(x), shift, axis=(1, 2))
        b = layer(jnp.roll(x, shift, axis=(1, 2)))
        assert float(jnp.abs(a - b).max()) < 1e-5
    net = UNet(1, 8, base=8, channel_mults=(1, 2), heads=2, periodic=True, spectral_modes=2,
               key=jax.random.key(2))
    net = eqx.tree_at(lambda m: m.conv_out.weight, net, jnp.ones_like(net.conv_out.weight) * 0.1)
    f = jit(lambda net, x: net(0.3, x))
    x1 = x[:1, :8, :8]
    err = f(net, jnp.roll(x1, (2, -4), axis=(1, 2))) - jnp.roll(f(net, x1), (2, -4), axis=(1, 2))
    assert float(jnp.abs(err).max()) < 1e-5 and float(jnp.abs(f(net, x1)).max()) > 1e-3


def test_spectral_modes_need_a_periodic_unet():
    with pytest.raises(ConfigError, match="periodic=True"):
        UNet(1, 8, base=8, channel_mults=(1, 2), heads=2, spectral_modes=2, key=jax.random.key(0))
    cfg = Config(data=DataConfig(name="grf_superres", image_size=8, n_train=8, n_test=4),
                 model=ModelConfig(net="dit", spectral_modes=2, conditional=True))
    with pytest.raises(ConfigError, match="needs a periodic UNet"):
        build.check(cfg)
    with pytest.raises(ConfigError, match="model.spectral_modes"):
        build.check(Config(model=ModelConfig(net="unet", periodic=True, spectral_modes=-1)))
