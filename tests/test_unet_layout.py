"""The UNet computes channels-last: the same network as Equinox's channels-first layers.

The UNet keeps its features `(h, w, c)` from its first convolution to its last
(`sgm.nets.conv_hwc`, `sgm.nets.group_norm_hwc`). `reference` below is the network as it was
computed before, every layer an Equinox module called on `(c, h, w)` features; the tests hold
the channels-last network to it (outputs and gradients, in a vmapped batch and in `lax.scan`, with
every kind of conditioning, circular padding, spectral blocks and dropout, after a checkpoint
round trip), and check that a checkpoint holds the leaves the channels-first implementation wrote.
"""

import functools
import hashlib
import json

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgm import checkpoint
from sgm.nets import UNet, conv2d, conv_hwc, group_norm_hwc
from sgm.nets.embeddings import split_key, with_condition_image

# compiling dominates here; XLA's lowest backend optimisation level halves it
jit = functools.partial(eqx.filter_jit, compiler_options={"xla_backend_optimization_level": 0})


def reference(net: UNet, t, x, *, label=None, param=None, image=None, key=None):
    """The UNet's forward pass in the channels-first layout, with Equinox's own layers."""

    def block(b, h, emb, key):
        a = jax.nn.silu(b.norm1(h))
        out = b.conv1(a)
        out = out if b.spectral is None else out + b.spectral(a)
        scale, shift = jnp.split(b.emb_proj(jax.nn.silu(emb))[:, None, None], 2)
        out = jax.nn.silu(b.norm2(out) * (1.0 + scale) + shift)
        out = b.dropout(out, key=key, inference=key is None)
        return b.conv2(out) + (h if b.skip is None else b.skip(h))

    def attention(a, h):
        tokens = einops.rearrange(a.norm(h), "c h w -> (h w) c")
        return h + einops.rearrange(a.attn(tokens, tokens, tokens), "(h w) c -> c h w",
                                    h=h.shape[1])

    def resize(level, h):
        if level.resample is None:
            return h
        if level.up:
            h = einops.repeat(h, "c h w -> c (h a) (w b)", a=2, b=2)
        return level.resample(h)

    hh, ww = net.image_size
    x = with_condition_image("UNet", x, image, net.cond_channels)
    emb = net.embed(t, label, param)
    keys = iter(split_key(key, sum(len(lv.blocks) for lv in net.down + net.up) + 2))
    h = net.conv_in(jnp.pad(x, ((0, 0), *net.padding)))
    skips = [h]
    for lv in net.down:
        for b, a in zip(lv.blocks, lv.attns, strict=True):
            h = block(b, h, emb, next(keys))
            h = h if a is None else attention(a, h)
            skips.append(h)
        if lv.resample is not None:
            h = resize(lv, h)
            skips.append(h)
    h = block(net.mid[0], h, emb, next(keys))
    h = block(net.mid[1], attention(net.mid_attn, h), emb, next(keys))
    for lv in net.up:
        for b, a in zip(lv.blocks, lv.attns, strict=True):
            h = block(b, jnp.concatenate([h, skips.pop()]), emb, next(keys))
            h = h if a is None else attention(a, h)
        h = resize(lv, h)
    out = net.conv_out(jax.nn.silu(net.norm_out(h)))
    (top, _), (left, _) = net.padding
    return out[:, top:top + hh, left:left + ww]


def perturbed(net, seed=1, scale=0.05):
    """`net` with every weight moved at random, so zero-initialised layers count."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


CASES = {
    "labels, odd size padded": pytest.param(dict(
        shape=(1, 11, 13), kw=dict(base=8, channel_mults=(1, 2), num_res_blocks=2,
                                   attn_resolutions=(12, 6), heads=2, num_classes=3)),
        marks=pytest.mark.slow),
    "image and parameter": pytest.param(dict(
        shape=(2, 8, 8), kw=dict(base=8, channel_mults=(1, 2, 2), cond_channels=1, param_dim=2,
                                 heads=2)), marks=pytest.mark.slow),
    "periodic, spectral": pytest.param(dict(
        shape=(1, 8, 8), kw=dict(base=8, channel_mults=(1, 2), periodic=True, spectral_modes=2,
                                 heads=2)), marks=pytest.mark.slow),
    "dropout": pytest.param(dict(
        shape=(3, 8, 8), kw=dict(base=8, channel_mults=(1, 2), dropout=0.3, heads=2)),
        marks=pytest.mark.slow),
}  # compiling each costs 20-40 s: the slow tier; the default tier checks the checkpoint


def inputs(case, n=3):
    c, h, w = case["shape"]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, c, h, w)), jnp.float32)
    t = jnp.asarray(rng.uniform(0.05, 0.95, n), jnp.float32)
    cond = {}
    kw = case["kw"]
    if kw.get("num_classes"):
        cond["label"] = jnp.arange(n) % kw["num_classes"]
    if kw.get("param_dim"):
        cond["param"] = jnp.asarray(rng.standard_normal((n, kw["param_dim"])), jnp.float32)
    if kw.get("cond_channels"):
        cond["image"] = jnp.asarray(rng.standard_normal((n, kw["cond_channels"], h // 2, w // 2)),
                                    jnp.float32)
    if kw.get("dropout"):
        cond["key"] = jax.random.split(jax.random.key(7), n)
    return t, x, cond


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_channels_last_unet_is_the_channels_first_network(case, tmp_path):
    """Outputs and parameter gradients equal the channels-first reference to float32 round-off,
    in a vmapped batch and inside `lax.scan` (the samplers' loops); the network computed
    channels-last is the reference's read back from a checkpoint."""
    c, h, w = case["shape"]
    template = UNet(c, (h, w), key=jax.random.key(0), **case["kw"])
    written = perturbed(template)
    net, _ = checkpoint.load(checkpoint.save(tmp_path, 1, written), template)
    t, x, cond = inputs(case)

    def run(fn, net):
        return jax.vmap(lambda t, x, cond: fn(net, t, x, **cond))(t, x, cond)

    def call(net, t, x, **cond):
        return net(t, x, **cond)

    want = jit(lambda net: run(reference, net))(written)
    got = jit(lambda net: run(call, net))(net)
    scale = float(jnp.abs(want).max())
    assert scale > 0.1  # the perturbed network's output is not trivially small
    np.testing.assert_allclose(got, want, atol=2e-6 * scale, rtol=0)

    def in_scan(net):
        def body(carry, inp):
            ti, xi, ci = inp
            return carry, call(net, ti, xi, **ci)
        return jax.lax.scan(body, 0, (t, x, cond))[1]

    np.testing.assert_allclose(jit(in_scan)(net), want, atol=2e-6 * scale, rtol=0)

    def loss(fn):
        return lambda net: jnp.mean(run(fn, net) ** 2)

    g_want = jit(eqx.filter_grad(loss(reference)))(net)
    g_got = jit(eqx.filter_grad(loss(call)))(net)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(float(jnp.abs(b).max()), 1e-3), rtol=0)


#: SHA-256 of the leaves (path, shape, dtype) in the checkpoint manifest of the UNet below, as the
#: channels-first implementation (commit 4a9f003, before the layout change) wrote them
CHANNELS_FIRST_LEAVES = "a754524170002795a9c1ca531476ca8b30ca04aabc8e4707f9151b33f7ceef55"


@pytest.mark.slow
def test_a_checkpoint_holds_the_leaves_the_channels_first_unet_wrote(tmp_path):
    """The layout change moved no parameter: the manifest lists the 154 leaves, paths, shapes and
    dtypes the channels-first UNet wrote, so its checkpoints load (`checkpoint.load` checks each
    leaf against the template), and a checkpoint reads back bit for bit."""
    template = UNet(1, 12, base=8, channel_mults=(1, 2), num_res_blocks=1, num_classes=3, heads=2,
                    attn_resolutions=(12, 6), key=jax.random.key(0))
    written = perturbed(template)
    path = checkpoint.save(tmp_path, 7, written)
    leaves = [[x["path"], x["shape"], x["dtype"]] for x in checkpoint.read_manifest(path)["leaves"]]
    assert len(leaves) == 154
    assert hashlib.sha256(json.dumps(leaves).encode()).hexdigest() == CHANNELS_FIRST_LEAVES
    net, manifest = checkpoint.load(path, template)
    assert manifest["step"] == 7
    for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(written), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("groups,channels,affine,dtype", [
    (4, 16, True, jnp.float32), (8, 8, False, jnp.float32), (4, 32, True, jnp.bfloat16),
])
def test_group_norm_hwc_is_equinox_group_norm(groups, channels, affine, dtype):
    """`group_norm_hwc` on `(h, w, c)` equals `eqx.nn.GroupNorm` on `(c, h, w)`: values in the
    input's dtype (statistics in float32), and gradients in the input and the affine weights."""
    norm = eqx.nn.GroupNorm(groups, channels, channelwise_affine=affine)
    if affine:
        norm = perturbed(norm, 3, 0.5)
    x = (3.0 * jax.random.normal(jax.random.key(1), (2, channels, 5, 7)) + 1.5).astype(dtype)
    want = jax.vmap(norm)(x)
    got = jax.vmap(lambda x: group_norm_hwc(norm, jnp.transpose(x, (1, 2, 0))))(x)
    got = jnp.transpose(got, (0, 3, 1, 2))
    assert got.dtype == want.dtype == dtype
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-6
    np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=tol * 4)
    if dtype == jnp.float32:
        weights = jax.random.normal(jax.random.key(2), x.shape)

        def loss(fn):
            return lambda norm, x: jnp.sum(weights * jnp.sin(fn(norm, x)))

        def hwc(norm, x):
            out = jax.vmap(lambda x: group_norm_hwc(norm, jnp.transpose(x, (1, 2, 0))))(x)
            return jnp.transpose(out, (0, 3, 1, 2))

        g_want = eqx.filter_grad(loss(lambda n, x: jax.vmap(n)(x)))(norm, x)
        g_got = eqx.filter_grad(loss(hwc))(norm, x)
        for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()))
        dx_want = jax.grad(loss(lambda n, x: jax.vmap(n)(x)), argnums=1)(norm, x)
        dx_got = jax.grad(loss(hwc), argnums=1)(norm, x)
        np.testing.assert_allclose(dx_got, dx_want, atol=1e-5 * float(jnp.abs(dx_want).max()))


def test_conv_hwc_is_conv2d_without_the_transposes():
    layer = eqx.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="CIRCULAR",
                          key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 8, 10))
    got = jnp.transpose(conv_hwc(layer, jnp.transpose(x, (1, 2, 0))), (2, 0, 1))
    np.testing.assert_allclose(got, conv2d(layer, x), atol=1e-6)
    np.testing.assert_allclose(got, layer(x), atol=1e-5)
    with pytest.raises(ValueError, match="numeric padding"):
        conv_hwc(eqx.nn.Conv2d(4, 6, 3, padding="SAME", key=jax.random.key(0)),
                 jnp.zeros((8, 10, 4)))
