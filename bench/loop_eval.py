"""What a sampler's step costs: one batched network evaluation alone, and the same inside lax.scan.

Every sampler runs its steps in a `lax.scan` (or diffrax's while loop). On XLA:CPU a convolution
inside a loop body can run far slower than the same convolution outside one (jax-ml/jax#12868:
channels-first convolutions in while-loop bodies), so the network's time outside a loop says little
about a sampler's. For each network this times (a) one jitted evaluation of a batch, (b) `--steps`
evaluations in a `lax.scan` (`x <- x - 0.01 f(t, x)`), per evaluation, and prints their ratio.
Each row also times plain `eqx.nn.Conv2d` stacks (channels-first, as Equinox computes them) beside
`sgm.nets.conv2d` (the same layers computed channels-last), the UNet's layer.

    python bench/loop_eval.py [--batch 200] [--steps 3] [--seconds 3]

Prints a table and writes bench/results/loop_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from nets import best_time  # bench/nets.py, beside this script
from sgm.nets import DiT, UNet, conv2d, param_count


def plain_and_loop(f, x, steps: int, seconds: float) -> tuple[float, float]:
    """Seconds per evaluation of the batched `f(t, x)`: alone, and inside a `steps`-long scan."""
    once = jax.jit(lambda x: f(jnp.full(x.shape[0], 0.5), x))

    @jax.jit
    def loop(x):
        def body(x, t):
            return x - 0.01 * f(jnp.full(x.shape[0], t), x), None
        return jax.lax.scan(body, x, jnp.linspace(1.0, 0.1, steps))[0]

    return best_time(lambda: once(x), seconds), best_time(lambda: loop(x), seconds) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    x28 = jax.random.normal(key, (args.batch, 1, 28, 28))

    class Stack(eqx.Module):
        """Three 3x3 convolutions, 32 channels, at 14x14: Equinox's layout or the channels-last one."""
        layers: list
        channels_last: bool = eqx.field(static=True)

        def __call__(self, t, x):
            for layer in self.layers:
                x = jnp.tanh(conv2d(layer, x) if self.channels_last else layer(x))
            return x

    convs = [eqx.nn.Conv2d(32, 32, 3, padding=1, key=k) for k in jax.random.split(key, 3)]
    x14 = jax.random.normal(key, (args.batch, 32, 14, 14))
    nets = {
        # configs/fashion_mnist_cpu.py's network (class labels left out: the conv path is the same)
        "UNet 28x28 (fashion_mnist_cpu)": (
            UNet(1, 28, base=16, channel_mults=(1, 2, 4), num_res_blocks=1, key=key), x28),
        "DiT 28x28": (DiT(1, 28, patch=2, width=128, depth=4, heads=4, key=key), x28),
        "3 convs, channels-first (eqx)": (Stack(convs, False), x14),
        "3 convs, channels-last (conv2d)": (Stack(convs, True), x14),
    }
    rows = []
    print(f"batch {args.batch}, {args.steps} evaluations per scan, {jax.devices()[0].platform}")
    print(f"{'network':34s} {'params':>8s} {'alone s':>9s} {'in scan s':>10s} {'ratio':>6s}")
    for name, (net, x) in nets.items():
        f = jax.vmap(lambda t, x, net=net: net(t, x))
        alone, looped = plain_and_loop(f, x, args.steps, args.seconds)
        rows.append(dict(network=name, params=param_count(net), alone_s=alone, in_scan_s=looped,
                         ratio=looped / alone))
        print(f"{name:34s} {param_count(net):8d} {alone:9.4f} {looped:10.4f} {looped / alone:6.2f}")
    out = Path(__file__).parent / "results" / "loop_eval.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(
        batch=args.batch, steps=args.steps, machine=platform.machine(), cpus=os.cpu_count(),
        jax=jax.__version__, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
