"""Score networks: conditioning actually reaches the output, shapes, dropout, errors, and learning.

Networks are tiny and images small: the whole file takes about a minute of CPU time, nearly all
of it XLA compilation.
Output layers start at zero by design (adaLN-Zero, zero-initialised final convs), so tests that
ask "does the output depend on X" first perturb every weight.
"""

import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgm.errors import ConfigError
from sgm.conditioning import Conditioning, drop_labels
from sgm.nets import MLP, AbstractScoreNet, DiT, UNet, conv2d, param_count
from sgm.nets.embeddings import ConditionEmbedding, TimeEmbedding, time_features

NETS = ["mlp", "unet", "dit"]
CONDS = ["none", "label", "param", "image"]
NUM_CLASSES, PARAM_DIM = 3, 2

# Compiling, not running, dominates these tests on a small CPU; XLA's lowest backend optimisation
# level halves compile time (tiny networks run a little slower, which costs nothing here).
jit = functools.partial(eqx.filter_jit, compiler_options={"xla_backend_optimization_level": 0})


def init_key(seed):
    return jax.random.key(seed, impl="rbg")


def normal(seed, shape):
    """Standard normal test data, drawn with NumPy (no per-shape JAX kernel to compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@functools.cache
def make(name, cond="none", *, dropout=0.0, seed=0, **extra):
    """A tiny network of kind `name` with one conditioning type, and the shape of its input.

    Cached, and initialised from an "rbg" key: building a network compiles one random-number kernel
    per new weight shape, which on a small CPU costs far more than running the network, and the
    rbg kernels compile two to three times faster than threefry ones.
    """
    kw = dict(dropout=dropout, key=init_key(seed), **extra)
    if cond == "label":
        kw["num_classes"] = NUM_CLASSES
    if cond == "param":
        kw["param_dim"] = PARAM_DIM
    if name == "mlp":
        kw.update(width=32, depth=2, time_dim=16, cond_dim=3 if cond == "image" else None)
        return MLP(6, **kw), (6,)
    kw["cond_channels"] = 1 if cond == "image" else 0
    if name == "unet":
        kw.update(base=8, channel_mults=(1, 2), attn_resolutions=(4,), heads=2)
        return UNet(1, 8, **kw), (1, 8, 8)
    kw.update(patch=2, width=32, depth=2, heads=2)
    return DiT(1, 8, **kw), (1, 8, 8)


def perturb(model, seed, scale=0.1):
    """Add Gaussian noise to every floating-point weight, so zero-initialised layers come alive.

    The noise is drawn with NumPy: no JAX kernel is compiled per weight shape.
    """
    rng = np.random.default_rng(seed)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = jax.tree_util.tree_map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), x.dtype), params
    )
    return eqx.combine(params, static)


def cond_batch(cond, shape, seed):
    """Conditioning for a batch of three calls: calls 0 and 1 share it, call 2 differs."""
    if cond == "none":
        return {}
    if cond == "label":
        return {"label": jnp.array([0, 0, 2])}
    if cond == "param":
        p = normal(seed, (2, PARAM_DIM))
        return {"param": p[jnp.array([0, 0, 1])]}
    img_shape = (3,) if len(shape) == 1 else (1, *shape[1:])
    img = normal(seed, (2, *img_shape))
    return {"image": img[jnp.array([0, 0, 1])]}


@pytest.mark.parametrize("name", NETS)
def test_every_network_implements_the_one_call_contract(name):
    net, _ = make(name, "label")
    assert isinstance(net, AbstractScoreNet) and net.num_classes == NUM_CLASSES
    assert net.param_dim is None
    contract = inspect.signature(AbstractScoreNet.__call__).parameters
    own = inspect.signature(type(net).__call__).parameters
    assert [(p.name, p.kind, p.default) for p in own.values()] == [
        (p.name, p.kind, p.default) for p in contract.values()]
    assert inspect.getdoc(type(net).__call__) == inspect.getdoc(AbstractScoreNet.__call__)
    with pytest.raises(TypeError, match="abstract"):
        AbstractScoreNet()


@pytest.mark.parametrize("cond", CONDS)
@pytest.mark.parametrize("name", NETS)
def test_shape_and_dependence_on_time_and_conditioning(name, cond):
    fresh, shape = make(name, cond)
    net = perturb(fresh, 1)
    x = normal(2, shape)
    t = jnp.array([0.3, 0.7, 0.3])
    conds = cond_batch(cond, shape, seed=3)

    @jit
    def run(net, t, conds):
        return jax.vmap(lambda t, c: net(t, x, **c))(t, conds)

    assert bool(jnp.all(run(fresh, t, conds) == 0))  # zero-initialised output layer
    out = run(net, t, conds)
    assert out.shape == (3, *shape)
    assert bool(jnp.all(jnp.isfinite(out)))
    scale = float(jnp.abs(out[0]).mean())
    assert scale > 0
    assert float(jnp.abs(out[1] - out[0]).mean()) > 1e-2 * scale  # t changes the output
    if cond != "none":
        assert float(jnp.abs(out[2] - out[0]).mean()) > 1e-2 * scale  # conditioning does


def test_null_label_is_none_or_num_classes():
    """All three networks take their label through ConditionEmbedding; None is the last row."""
    embed = ConditionEmbedding(16, num_classes=NUM_CLASSES, key=init_key(0))
    null = embed(0.5, None)
    assert jnp.array_equal(null, embed(0.5, jnp.array(NUM_CLASSES)))
    assert not jnp.allclose(null, embed(0.5, jnp.array(0)))
    assert embed.label.weight.shape == (NUM_CLASSES + 1, 16)


def test_time_embedding_resolves_small_times():
    f_small, f_mid = time_features(1e-5, 64), time_features(1e-3, 64)
    assert float(jnp.linalg.norm(f_small - f_mid)) > 0.5 * float(jnp.linalg.norm(f_small))
    assert bool(jnp.all(jnp.isfinite(time_features(0.0, 64))))
    emb = TimeEmbedding(32, key=init_key(0))
    e_small, e_mid = emb(1e-5), emb(1e-3)
    assert float(jnp.linalg.norm(e_small - e_mid)) > 0.2 * float(jnp.linalg.norm(e_small))


@pytest.mark.parametrize("name", NETS)
def test_dropout_only_with_a_key(name):
    net, shape = make(name, "none", dropout=0.5)
    net = perturb(net, 4)
    x = normal(5, shape)
    keys = jax.random.split(jax.random.PRNGKey(6), 2)

    @jit
    def run(net, keys):
        return net(0.5, x), jax.vmap(lambda k: net(0.5, x, key=k))(keys[jnp.array([0, 1, 0])])

    plain, (d1, d2, d1_again) = run(net, keys)
    assert jnp.array_equal(plain, run(net, keys)[0])  # key=None: deterministic
    assert not jnp.allclose(d1, plain, atol=1e-5)  # a key switches dropout on
    assert not jnp.allclose(d1, d2, atol=1e-5)  # different keys, different masks
    assert jnp.array_equal(d1, d1_again)


@pytest.mark.parametrize(
    "channels, size, mults",
    [(1, 28, (1, 2, 2)), (1, 28, (1, 2, 2, 2)), (3, 32, (1, 2, 2))],
)
def test_unet_image_sizes(channels, size, mults):
    """28 -> 14 -> 7 needs no padding; with four levels 28 is padded to 32; 8x8 is in every test."""
    net = UNet(channels, size, base=8, channel_mults=mults, heads=2, key=init_key(0))
    net = perturb(net, 1)
    x = normal(2, (channels, size, size))
    # Second input differs in the last pixel only; the output's last pixel must notice, which
    # fails if padding were cropped back at the wrong offset.
    xs = jnp.stack([x, x.at[:, -1, -1].add(1.0)])
    out = jit(lambda net, xs: jax.vmap(lambda x: net(0.1, x))(xs))(net, xs)
    assert out.shape == (2, *x.shape)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out[1, :, -1, -1] - out[0, :, -1, -1]).max()) > 1e-4


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, padding_mode="CIRCULAR"),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=1, use_bias=False),
    dict(kernel_size=3, padding=((2, 1), (0, 2)), dilation=2),
    dict(kernel_size=3, padding=1, groups=4, padding_mode="REFLECT"),
])
def test_conv2d_is_the_layer_computed_channels_last(kw):
    """`conv2d(layer, x)` (channels-last, fast in XLA:CPU loops) equals Equinox's `layer(x)`,
    also in a vmapped batch and under a scan (the samplers' setting)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    layer = eqx.nn.Conv2d(8, 12, key=k1, **kw)
    x = jax.random.normal(k2, (3, 8, 9, 11))
    want = jax.vmap(layer)(x)
    got = jax.vmap(lambda x: conv2d(layer, x))(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    in_scan = jax.lax.scan(lambda c, x: (c, conv2d(layer, x)), 0, x)[1]
    np.testing.assert_allclose(in_scan, want, atol=1e-5)


def test_mlp_on_images_is_the_mlp_on_their_flattened_vector():
    net = perturb(MLP(16, width=32, depth=2, key=init_key(0)), 1)
    x = normal(2, (1, 4, 4))
    out = net(0.3, x)
    assert out.shape == x.shape
    assert np.allclose(out.reshape(-1), net(0.3, x.reshape(-1)), atol=1e-6)
    with pytest.raises(ValueError, match="16 numbers"):
        net(0.3, jnp.ones((1, 3, 4)))


def test_periodic_unet_commutes_with_circular_shifts():
    """With circular padding, shifting the input by a multiple of 2^(levels-1) shifts the output;
    with zero padding the border breaks that."""
    x = normal(3, (1, 8, 8))
    for periodic in (True, False):
        net = perturb(UNet(1, 8, base=8, channel_mults=(1, 2), heads=2, periodic=periodic,
                           key=init_key(0)), 1)
        f = jit(lambda net, x: net(0.3, x))
        shifted = f(net, jnp.roll(x, (2, -4), axis=(1, 2)))
        err = float(jnp.abs(shifted - jnp.roll(f(net, x), (2, -4), axis=(1, 2))).max())
        assert (err < 1e-5) if periodic else (err > 1e-3)
    with pytest.raises(ConfigError, match="multiples of 2"):
        UNet(1, 7, base=8, channel_mults=(1, 2), heads=2, periodic=True, key=init_key(0))


def test_clear_errors():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ConfigError, match="patch=3 must divide"):
        DiT(1, 8, patch=3, width=32, depth=1, heads=2, key=key)
    with pytest.raises(ConfigError, match="attn_resolutions"):
        UNet(1, 28, base=8, attn_resolutions=(16,), heads=2, key=key)
    with pytest.raises(ConfigError, match="heads"):
        UNet(1, 8, base=8, heads=3, key=key)
    net, shape = make("unet", "image")
    with pytest.raises(ValueError, match="needs `image`"):
        net(0.5, jnp.ones(shape))
    net, shape = make("mlp")
    with pytest.raises(ValueError, match="num_classes=None"):
        net(0.5, jnp.ones(shape), label=jnp.array(1))


def test_drop_labels():
    labels = jnp.arange(10_000) % NUM_CLASSES
    key = jax.random.PRNGKey(0)
    assert jnp.array_equal(drop_labels(key, labels, 0.0, NUM_CLASSES), labels)
    assert bool(jnp.all(drop_labels(key, labels, 1.0, NUM_CLASSES) == NUM_CLASSES))
    out = drop_labels(key, labels, 0.2, NUM_CLASSES)
    assert out.shape == labels.shape and out.dtype == labels.dtype
    dropped = out == NUM_CLASSES
    assert abs(float(dropped.mean()) - 0.2) < 0.02
    assert jnp.array_equal(out[~dropped], labels[~dropped])


def test_param_count():
    net = MLP(2, width=8, depth=1, time_dim=4, key=init_key(0))
    time_mlp = (4 * 4 + 4) + (4 * 4 + 4)
    block = 2 * 8 + (8 * 8 + 8) + (4 * 8 + 8) + (8 * 8 + 8)
    expected = time_mlp + (2 * 8 + 8) + block + 2 * 8 + (8 * 2 + 2)
    assert param_count(net) == expected


def test_conditioning_keywords_and_label_dropout():
    labels = jnp.arange(1000) % 3
    assert Conditioning()(labels) == {}
    assert Conditioning("param")(labels)["param"] is labels
    cond = Conditioning("label", 3, label_dropout=0.25)
    assert cond(labels)["label"] is labels  # no key: no dropout (evaluation, sampling)
    dropped = np.asarray(cond(labels, key=jax.random.key(0))["label"])
    assert set(np.unique(dropped)) <= {0, 1, 2, 3}
    frac = np.mean(dropped == 3)
    assert abs(frac - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 1000)  # the null label at the drop rate
    kept = dropped != 3
    np.testing.assert_array_equal(dropped[kept], np.asarray(labels)[kept])
    with pytest.raises(ConfigError, match="number of classes"):
        Conditioning("label")


@pytest.mark.parametrize("name", NETS)
@pytest.mark.slow
def test_learns_denoising_regression(name):
    """Fit eps from x_t = x0 + t eps at fixed (x0, t, eps): loss must fall below 0.3x its start."""
    net, shape = make(name, "none")
    n = 16
    x0, eps = normal(1, (n, *shape)), normal(2, (n, *shape))
    t = jnp.linspace(0.2, 1.0, n)
    xt = x0 + t.reshape(-1, *[1] * len(shape)) * eps

    def loss_fn(net):
        return jnp.mean((jax.vmap(net)(t, xt) - eps) ** 2)

    optim = optax.adam(3e-3)
    state = optim.init(eqx.filter(net, eqx.is_inexact_array))

    @jit
    def step(net, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(net)
        updates, state = optim.update(grads, state, eqx.filter(net, eqx.is_inexact_array))
        return eqx.apply_updates(net, updates), state, loss

    losses = []  # each step returns the loss before its update
    for _ in range(121):
        net, state, loss = step(net, state)
        losses.append(float(loss))
    start, final = losses[0], losses[-1]
    assert np.isfinite(final) and final < 0.3 * start, (start, final)


def test_the_time_scale_multiplies_t_in_the_first_half_of_the_features():
    """`time_features(t, dim, scale)`'s first half is the default features at t * scale / 1000;
    the log t half does not change; the scale reaches every network's embedding."""
    t, dim = 0.37, 64
    scaled, default = time_features(t, dim, 10.0), time_features(t * 10.0 / 1000.0, dim)
    half = [*range(dim // 4), *range(dim // 2, 3 * dim // 4)]  # sin and cos of the t half
    assert jnp.allclose(scaled[jnp.array(half)], default[jnp.array(half)], atol=1e-6)
    rest = jnp.array([i for i in range(dim) if i not in half])
    assert jnp.array_equal(scaled[rest], time_features(t, dim)[rest])
    assert jnp.array_equal(time_features(t, dim), time_features(t, dim, 1000.0))
    for name in NETS:
        net, _ = make(name, "none", time_scale=10.0)
        assert net.embed.time.scale == 10.0
    with pytest.raises(ConfigError, match="time embedding's scale"):
        TimeEmbedding(32, scale=0.0, key=init_key(0))
