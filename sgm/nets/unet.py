"""U-Net score network for images (Ho et al., "Denoising Diffusion Probabilistic Models", 2020;
Song et al., "Score-Based Generative Modeling through SDEs", 2021).

Residual blocks (GroupNorm, SiLU, 3x3 conv; the conditioning embedding scales and shifts the
features in every block), self-attention at chosen resolutions, one level per channel multiplier
with a stride-2 conv between levels, and skip connections from every down-path block to the
matching up-path block.

Any image size works: the input is zero-padded (evenly on both sides) to a multiple of
`2^(levels - 1)`, so that every down-sampling halves exactly, and the output is cropped back to the
original size. For 28x28 with three levels nothing is padded (28 -> 14 -> 7); with four levels the
input is padded to 32x32.

`periodic=True` pads every convolution circularly instead of with zeros, for data on a torus
(fields on periodic boxes, e.g. `sgm.data.grf`): the network then commutes with circular shifts of
its input by multiples of `2^(levels - 1)` pixels. It needs sizes that are such multiples already.

Every layer is an Equinox module (`eqx.nn.Conv2d`, `eqx.nn.GroupNorm`, ...), but the features stay
channels-last `(h, w, c)` from the first convolution to the last (`sgm.nets.conv_hwc`,
`sgm.nets.group_norm_hwc`): the layout XLA:CPU runs fast, with no transposes around each
convolution. Input and output are channels-first `(c, h, w)`, and the results equal Equinox's
channels-first layers up to float rounding (docs/results/fashion-mnist.md has the timings).
"""

from __future__ import annotations

from collections.abc import Sequence

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sgm.errors import ConfigError
from sgm.nets.base import AbstractScoreNet
from sgm.nets.embeddings import (
    ConditionEmbedding,
    Key,
    Label,
    Param,
    Time,
    image_hw,
    image_input_channels,
    split_key,
    with_condition_image,
    zero_init,
)
from sgm.nets.conv import conv_hwc, group_norm_hwc
from sgm.nets.spectral import SpectralConv


#: a channels-last feature map `(h, w, c)` inside the network
Features = Float[Array, "h w c"]


def _norm(channels: int) -> eqx.nn.GroupNorm:
    """GroupNorm with at most 32 groups of at least 4 channels where the channel count allows."""
    limit = max(1, min(32, channels // 4))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return eqx.nn.GroupNorm(groups, channels)


class _ResBlock(eqx.Module):
    """Residual block `skip(x) + conv2(Dropout(SiLU(GN(h) (1 + s) + b)))`, `h = conv1(SiLU(GN(x)))`.

    `(s, b) = A SiLU(emb)` is a per-channel scale and shift of the normalised features (Nichol &
    Dhariwal 2021): a conditioning signal added before a GroupNorm could be normalised away.
    With `spectral` (periodic grids), `h` also gets a spectral convolution of the same input,
    `h = conv1(a) + K(a)` with `a = SiLU(GN(x))`, a Fourier layer beside the local one (Li et al.
    2021).
    """

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    spectral: SpectralConv | None
    emb_proj: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    dropout: eqx.nn.Dropout
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, *, mode: str = "ZEROS",
                 spectral: tuple[tuple[int, int], int] | None = None, key: Key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = _norm(c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode=mode, key=k1)
        self.spectral = None if spectral is None else SpectralConv(
            c_in, c_out, *spectral, key=jax.random.fold_in(key, 5))
        self.emb_proj = eqx.nn.Linear(emb_dim, 2 * c_out, key=k2)
        self.norm2 = _norm(c_out)
        self.dropout = eqx.nn.Dropout(dropout)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, padding_mode=mode, key=k3)
        self.skip = None if c_in == c_out else eqx.nn.Conv2d(c_in, c_out, 1, key=k4)

    def __call__(self, x: Features, emb: Float[Array, " e"], *, key: Key | None) -> Features:
        a = jax.nn.silu(group_norm_hwc(self.norm1, x))
        h = conv_hwc(self.conv1, a)
        if self.spectral is not None:
            h = h + jnp.transpose(self.spectral(jnp.transpose(a, (2, 0, 1))), (1, 2, 0))
        scale, shift = jnp.split(self.emb_proj(jax.nn.silu(emb)), 2)
        h = jax.nn.silu(group_norm_hwc(self.norm2, h) * (1.0 + scale) + shift)
        if key is not None and self.dropout.p > 0:  # the channels-first mask: same draws as ever
            h = jnp.transpose(self.dropout(jnp.transpose(h, (2, 0, 1)), key=key), (1, 2, 0))
        h = conv_hwc(self.conv2, h)
        return h + (x if self.skip is None else conv_hwc(self.skip, x))


class _Attention(eqx.Module):
    """Residual multi-head self-attention over the `h * w` pixels of a channels-last feature map."""

    norm: eqx.nn.GroupNorm
    attn: eqx.nn.MultiheadAttention

    def __init__(self, channels: int, heads: int, *, key: Key):
        self.norm = _norm(channels)
        self.attn = eqx.nn.MultiheadAttention(heads, channels, use_output_bias=True, key=key)

    def __call__(self, x: Features) -> Features:
        tokens = einops.rearrange(group_norm_hwc(self.norm, x), "h w c -> (h w) c")
        out = self.attn(tokens, tokens, tokens)
        return x + einops.rearrange(out, "(h w) c -> h w c", h=x.shape[0])


class _Level(eqx.Module):
    """Residual blocks at one resolution, each optionally followed by attention; then resampling."""

    blocks: list[_ResBlock]
    attns: list[_Attention | None]
    resample: eqx.nn.Conv2d | None
    up: bool = eqx.field(static=True)

    def resize(self, h: Features) -> Features:
        if self.resample is None:
            return h
        if self.up:  # nearest-neighbour x2, then a 3x3 conv
            h = einops.repeat(h, "h w c -> (h a) (w b) c", a=2, b=2)
        return conv_hwc(self.resample, h)


class UNet(AbstractScoreNet):
    """U-Net `f(t, x) -> (c, h, w)` for channels-first images `x` of shape `(c, h, w)`.

    Called as every `AbstractScoreNet`, with `x` of shape `(channels, h, w)` and `image` of shape
    `(cond_channels, h', w')`, `h' <= h` and `w' <= w` (resized up).

    Arguments (constructor):
        channels: image channels `c` (1 or 3 typically).
        image_size: `h` (square) or `(h, w)`.
        base: channels at the first level.
        channel_mults: channel multiplier of each level; `len(channel_mults)` levels.
        num_res_blocks: residual blocks per level on the down path (one more on the up path).
        attn_resolutions: (padded) heights at which to add self-attention; None means only the
            lowest resolution. The bottleneck always has attention.
        heads: attention heads; must divide the channels wherever attention is used.
        dropout: dropout rate in the residual blocks (active only when a key is passed).
        num_classes: number of classes for label conditioning, or None.
        param_dim: length of the parameter vector, or None.
        cond_channels: channels of a conditioning image concatenated to `x` (with a presence
            flag; a smaller image is resized to `x`'s size).
        periodic: circular instead of zero padding in every convolution (data on a torus).
        spectral_modes: with `periodic`, every residual block also mixes its channels in Fourier
            space over the modes |k_x|, |k_y| <= spectral_modes (`sgm.nets.spectral`): global
            filters with sharp bands, which 3x3 convolutions approximate poorly. 0: none.
        time_scale: the multiplier of t in the time features (`sgm.nets.time_features`).
        key: initialisation key.
    """

    embed: ConditionEmbedding
    conv_in: eqx.nn.Conv2d
    down: list[_Level]
    mid: list[_ResBlock]
    mid_attn: _Attention
    up: list[_Level]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    channels: int = eqx.field(static=True)
    image_size: tuple[int, int] = eqx.field(static=True)
    base: int = eqx.field(static=True)
    channel_mults: tuple[int, ...] = eqx.field(static=True)
    num_res_blocks: int = eqx.field(static=True)
    attn_resolutions: tuple[int, ...] = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    param_dim: int | None = eqx.field(static=True)
    cond_channels: int = eqx.field(static=True)
    padding: tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)
    periodic: bool = eqx.field(static=True)
    spectral_modes: int = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        image_size: int | Sequence[int],
        *,
        base: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] | None = None,
        heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        param_dim: int | None = None,
        cond_channels: int = 0,
        periodic: bool = False,
        spectral_modes: int = 0,
        time_scale: float = 1000.0,
        key: Key,
    ):
        h, w = image_hw(image_size)
        mults = tuple(int(m) for m in channel_mults)
        if channels < 1 or h < 1 or w < 1 or base < 1 or num_res_blocks < 1 or cond_channels < 0:
            raise ConfigError(
                "UNet channels, image_size, base and num_res_blocks must be positive."
            )
        if not mults or min(mults) < 1:
            raise ConfigError(f"UNet channel_mults must be positive integers, got {channel_mults}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"UNet dropout must lie in [0, 1), got {dropout}.")
        if spectral_modes < 0 or (spectral_modes and not periodic):
            raise ConfigError(f"UNet spectral_modes={spectral_modes} is invalid: expected 0, or a "
                              "positive number of Fourier modes with periodic=True (a torus).")
        multiple = 2 ** (len(mults) - 1)
        ph, pw = -h % multiple, -w % multiple
        if periodic and (ph or pw):
            raise ConfigError(f"A periodic UNet with {len(mults)} levels needs image sizes that are "
                              f"multiples of {multiple}, got {h}x{w}.")
        heights = [(h + ph) // 2**i for i in range(len(mults))]
        attn = (heights[-1],) if attn_resolutions is None else tuple(attn_resolutions)
        if not set(attn) <= set(heights):
            raise ConfigError(
                f"UNet attn_resolutions {attn} must be among the level heights {heights}."
            )
        attn_channels = [base * m for m, r in zip(mults, heights, strict=True) if r in attn] + [
            base * mults[-1]
        ]
        if any(c % heads for c in attn_channels):
            raise ConfigError(f"UNet heads={heads} must divide the channels {attn_channels}.")

        self.channels, self.image_size, self.base = channels, (h, w), base
        self.channel_mults, self.num_res_blocks, self.attn_resolutions = mults, num_res_blocks, attn
        self.heads, self.dropout, self.cond_channels = heads, dropout, cond_channels
        self.num_classes, self.param_dim = num_classes, param_dim
        self.padding = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        self.periodic, self.spectral_modes = bool(periodic), int(spectral_modes)
        mode = "CIRCULAR" if periodic else "ZEROS"

        def conv(c_in, c_out, size=3, stride=1, key=None):
            return eqx.nn.Conv2d(c_in, c_out, size, stride, size // 2, padding_mode=mode, key=key)

        keys = iter(jax.random.split(key, 8 + 4 * len(mults) * (num_res_blocks + 2)))
        emb_dim = 4 * base
        self.embed = ConditionEmbedding(
            emb_dim, num_classes=num_classes, param_dim=param_dim, time_scale=time_scale,
            key=next(keys)
        )
        self.conv_in = conv(channels + image_input_channels(cond_channels), base, key=next(keys))

        def block(c_in, c_out, res):
            size = (res, (w + pw) * res // (h + ph))  # this level's grid
            spectral = (size, spectral_modes) if spectral_modes else None
            return _ResBlock(c_in, c_out, emb_dim, dropout, mode=mode, spectral=spectral,
                             key=next(keys))

        def level(c_ins, c_out, res, resample, up):
            blocks = [block(c, c_out, res) for c in c_ins]
            attns = [
                _Attention(c_out, heads, key=next(keys)) if res in attn else None for _ in c_ins
            ]
            return _Level(blocks, attns, resample, up)

        ch, skips, self.down = base, [base], []
        for i, (m, res) in enumerate(zip(mults, heights, strict=True)):
            last = i == len(mults) - 1
            down = None if last else conv(base * m, base * m, 3, 2, key=next(keys))
            c_ins = [ch] + [base * m] * (num_res_blocks - 1)
            self.down.append(level(c_ins, base * m, res, down, up=False))
            ch = base * m
            skips += [ch] * (num_res_blocks + (0 if last else 1))
        self.mid = [block(ch, ch, heights[-1]) for _ in range(2)]
        self.mid_attn = _Attention(ch, heads, key=next(keys))
        self.up = []
        for i, (m, res) in reversed(list(enumerate(zip(mults, heights, strict=True)))):
            c_ins = []
            for _ in range(num_res_blocks + 1):
                c_ins.append(ch + skips.pop())
                ch = base * m
            up = None if i == 0 else conv(ch, ch, key=next(keys))
            self.up.append(level(c_ins, ch, res, up, up=True))
        self.norm_out = _norm(ch)
        self.conv_out = zero_init(conv(ch, channels, key=next(keys)))

    def __call__(
        self,
        t: Time,
        x: Float[Array, "c h w"],
        *,
        label: Label | None = None,
        param: Param | None = None,
        image: Float[Array, "c_cond h w"] | None = None,
        key: Key | None = None,
    ) -> Float[Array, "c h w"]:
        h, w = self.image_size
        if x.shape != (self.channels, h, w):
            raise ValueError(f"UNet expects x of shape {(self.channels, h, w)}, got {x.shape}.")
        x = with_condition_image("UNet", x, image, self.cond_channels)
        emb = self.embed(t, label, param)
        num_blocks = sum(len(lv.blocks) for lv in self.down + self.up) + len(self.mid)
        keys = iter(split_key(key, num_blocks))

        x = jnp.transpose(x, (1, 2, 0))  # channels-last from here to the output
        hid = conv_hwc(self.conv_in, jnp.pad(x, (*self.padding, (0, 0))))
        skips = [hid]
        for lv in self.down:
            for block, attn in zip(lv.blocks, lv.attns, strict=True):
                hid = block(hid, emb, key=next(keys))
                hid = hid if attn is None else attn(hid)
                skips.append(hid)
            if lv.resample is not None:
                hid = lv.resize(hid)
                skips.append(hid)
        hid = self.mid[0](hid, emb, key=next(keys))
        hid = self.mid[1](self.mid_attn(hid), emb, key=next(keys))
        for lv in self.up:
            for block, attn in zip(lv.blocks, lv.attns, strict=True):
                hid = block(jnp.concatenate([hid, skips.pop()], axis=-1), emb, key=next(keys))
                hid = hid if attn is None else attn(hid)
            hid = lv.resize(hid)
        out = conv_hwc(self.conv_out, jax.nn.silu(group_norm_hwc(self.norm_out, hid)))
        (top, _), (left, _) = self.padding
        return jnp.transpose(out[top : top + h, left : left + w], (2, 0, 1))
