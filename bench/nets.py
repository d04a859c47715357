"""Training throughput of the score networks: forward + backward, samples per second.

For each network (MLP on the flattened image, UNet, DiT at modest default sizes) and each data
shape (8x8x1, 28x28x1, 32x32x3) this times one jitted `value_and_grad` of a mean-square loss over a
batch, reads XLA's FLOP count of that compiled step (`cost_analysis`), and compares the achieved
FLOP/s with the rate this machine reaches on a large float32 matmul.

    python bench/nets.py [--batch 32] [--seconds 2]
    python bench/nets.py --unet-sizes --batch 64    # UNet sizes for 28x28 on a CPU (the choice
                                                    # behind configs/fashion_mnist_cpu.py)
    python bench/nets.py --dit-sizes --batch 64     # the same for the DiT
                                                    # (configs/fashion_mnist_dit_cpu.py)

The main table ends with the two Fashion-MNIST recipes' networks as they train (class-conditional,
28x28x1): "UNet-r" (configs/fashion_mnist_cpu.py) and "DiT-r" (configs/fashion_mnist_dit_cpu.py).
`--cpu-devices N` splits the CPU into N devices (as `train.cpu_devices` does) and times the step
with each batch split over them, the parameters replicated, as training runs it.

Prints a table and writes bench/results/nets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sgm import parallel
from sgm.nets import MLP, DiT, UNet, param_count

SHAPES = {"8x8x1": (1, 8, 8), "28x28x1": (1, 28, 28), "32x32x3": (3, 32, 32)}


#: the class-conditional UNets of `--unet-sizes` (28x28x1, ten classes, attention only in the middle)
UNET_SIZES = (
    dict(base=32, channel_mults=(1, 2, 2), num_res_blocks=1),
    dict(base=24, channel_mults=(1, 2, 2), num_res_blocks=1),
    dict(base=16, channel_mults=(1, 2, 2), num_res_blocks=1),
    dict(base=16, channel_mults=(1, 2, 2), num_res_blocks=2),
    dict(base=16, channel_mults=(1, 2, 4), num_res_blocks=1),
)

#: the class-conditional DiTs of `--dit-sizes` (28x28x1, ten classes)
DIT_SIZES = (
    dict(patch=2, width=128, depth=4, heads=4),
    dict(patch=2, width=192, depth=6, heads=4),
    dict(patch=4, width=192, depth=6, heads=4),
    dict(patch=4, width=256, depth=6, heads=4),
    dict(patch=4, width=256, depth=8, heads=4),
    dict(patch=4, width=384, depth=6, heads=6),
)

#: the Fashion-MNIST recipes' networks (configs/fashion_mnist_cpu.py, fashion_mnist_dit_cpu.py)
RECIPES = {
    "UNet-r": ("UNet", dict(base=16, channel_mults=(1, 2, 4), num_res_blocks=1, num_classes=10)),
    "DiT-r": ("DiT", dict(patch=2, width=128, depth=4, heads=4, num_classes=10)),
}


def build(name: str, shape: tuple[int, int, int], key, **kw) -> eqx.Module:
    c, h, _ = shape
    if name == "MLP":
        return MLP(int(np.prod(shape)), width=256, depth=3, key=key)
    if name == "UNet":
        kw = kw or dict(base=32, channel_mults=(1, 2, 2), num_res_blocks=1)
        return UNet(c, h, key=key, **kw)
    kw = kw or dict(patch=2, width=128, depth=4, heads=4)
    return DiT(c, h, key=key, **kw)


def best_time(fn, seconds: float) -> float:
    """Smallest wall time of `fn()` over repeats filling about `seconds` (after one warm-up)."""
    jax.block_until_ready(fn())
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def xla_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def matmul_rate(n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a jitted float32 `n x n` matmul: the machine's practical peak for this table."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / best_time(lambda: dot(a, a), seconds)


def bench_one(name: str, shape, batch: int, seconds: float, **kw) -> dict:
    net = build(name, shape, jax.random.key(0), **kw)
    flat = name == "MLP"
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    x = x.reshape(batch, -1) if flat else x
    t = jnp.asarray(rng.uniform(1e-3, 1.0, batch), jnp.float32)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    labelled = kw.get("num_classes") is not None

    def loss(params, t, x):
        model = eqx.combine(params, static)
        if labelled:  # a class-conditional network, given class 0
            out = jax.vmap(lambda s, y: model(s, y, label=jnp.int32(0)))(t, x)
        else:
            out = jax.vmap(model)(t, x)
        return jnp.mean((out - x) ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = step.lower(params, t, x).compile()
    compile_s = time.perf_counter() - t0
    flops = xla_flops(compiled)  # the whole batch's, on one device
    mesh = parallel.make_mesh()
    if mesh.devices.size > 1:  # the batch split over the devices, as training splits it
        t, x = parallel.put_batch((t, x), mesh)
        params = parallel.put_replicated(params, mesh)
        t0 = time.perf_counter()
        compiled = step.lower(params, t, x).compile()
        compile_s = time.perf_counter() - t0
    seconds_per_step = best_time(lambda: compiled(params, t, x), seconds)
    return {
        "net": name,
        "data": "x".join(map(str, (shape[1], shape[2], shape[0]))),
        "params": param_count(net),
        "batch": batch,
        "compile_s": compile_s,
        "step_s": seconds_per_step,
        "samples_per_s": batch / seconds_per_step,
        "flops_per_sample": None if flops is None else flops / batch,
        "flop_per_s": None if flops is None else flops / seconds_per_step,
    }


def format_row(row: dict) -> str:
    flops = row["flops_per_sample"]
    cells = [
        f"{row['net']:<6} {row['data']:<8} {row['params']:>9,} {row['compile_s']:>9.1f}",
        f"{row['samples_per_s']:>10.1f}",
    ]
    if flops is None:
        cells.append(f"{'n/a':>12} {'n/a':>8} {'n/a':>9}")
    else:
        cells.append(f"{flops / 1e9:>12.4f} {row['flop_per_s'] / 1e9:>8.2f}")
        cells.append(f"{row['fraction_of_matmul']:>9.1%}")
    return " ".join(cells)


def sizes(args, name: str) -> None:
    """Training throughput of the class-conditional UNets ("UNet": UNET_SIZES) or DiTs ("DiT":
    DIT_SIZES) a 28x28 model on a CPU can afford; writes nets_<name>_sizes.json."""
    print(f"{name:<34} {'params':>9} {'compile s':>9} {'samples/s':>10} {'steps/s':>8} "
          f"{'GFLOP/s':>8}")
    rows = []
    for kw in UNET_SIZES if name == "UNet" else DIT_SIZES:
        row = bench_one(name, SHAPES["28x28x1"], args.batch, args.seconds, num_classes=10, **kw)
        row[name.lower()] = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
        rows.append(row)
        if name == "UNet":
            label = (f"base {kw['base']}, mults {kw['channel_mults']}, "
                     f"{kw['num_res_blocks']} block(s)")
        else:
            label = (f"patch {kw['patch']}, width {kw['width']}, depth {kw['depth']}, "
                     f"{kw['heads']} heads")
        rate = "" if row["flop_per_s"] is None else f"{row['flop_per_s'] / 1e9:>8.1f}"
        print(f"{label:<34} {row['params']:>9,} {row['compile_s']:>9.1f} "
              f"{row['samples_per_s']:>10.1f} {1 / row['step_s']:>8.2f} {rate}", flush=True)
    out = Path(args.out).with_name(f"nets_{name.lower()}_sizes.json")
    out.write_text(json.dumps({"what": "forward+backward, 28x28x1, ten classes, jitted, float32",
                               "batch": args.batch, "cpus": os.cpu_count(),
                               "devices": len(jax.devices()), "rows": rows},
                              indent=2) + "\n")
    print(f"-> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="samples per step")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "nets.json"))
    parser.add_argument("--unet-sizes", action="store_true",
                        help="only the class-conditional UNet sizes of UNET_SIZES on 28x28x1")
    parser.add_argument("--nets", default="MLP,UNet,DiT,UNet-r,DiT-r",
                        help="comma-separated rows to time (MLP, UNet, DiT at every shape; "
                             "UNet-r, DiT-r: the recipes' networks)")
    parser.add_argument("--dit-sizes", action="store_true",
                        help="only the class-conditional DiT sizes of DIT_SIZES on 28x28x1")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="split the CPU into N devices and each batch over them (as "
                             "train.cpu_devices; 0: JAX's one CPU device)")
    args = parser.parse_args()
    unsplit = parallel.split_cpu(args.cpu_devices)
    if unsplit:
        parser.error(unsplit)
    if args.unet_sizes:
        return sizes(args, "UNet")
    if args.dit_sizes:
        return sizes(args, "DiT")

    peak = matmul_rate(seconds=args.seconds)
    rows = []
    header = (
        f"{'net':<6} {'data':<8} {'params':>9} {'compile s':>9} {'samples/s':>10} "
        f"{'GFLOP/sample':>12} {'GFLOP/s':>8} {'of matmul':>9}"
    )
    print(f"float32 2048^3 matmul: {peak / 1e9:.1f} GFLOP/s on {os.cpu_count()} CPU cores; "
          f"steps on {len(jax.devices())} device(s)")
    print(header)
    print("-" * len(header))
    cases = [(name, name, shape, {}) for name in ("MLP", "UNet", "DiT")
             for shape in SHAPES.values()]
    cases += [(label, name, SHAPES["28x28x1"], kw) for label, (name, kw) in RECIPES.items()]
    wanted = set(args.nets.split(","))
    for label, name, shape, kw in cases:
        if label not in wanted:
            continue
        row = bench_one(name, shape, args.batch, args.seconds, **kw)
        row["net"] = label
        rate = row["flop_per_s"]
        row["fraction_of_matmul"] = None if rate is None else rate / peak
        rows.append(row)
        print(format_row(row), flush=True)

    result = {
        "what": "forward+backward of mean((net(t, x) - x)^2) over a batch, jitted, float32",
        "flops_source": "XLA cost_analysis of the compiled step",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_after": os.getloadavg(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": len(jax.devices()),
            "matmul_gflop_per_s": peak / 1e9,
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
