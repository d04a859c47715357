"""What the devices JAX sees do: training, sampling and likelihood throughput, memory, loop overhead.

Rows (batch split over every visible device, `--batch` per device):
  - train: one jitted step (DSM loss, grad, Adam, EMA; the state donated) of the UNet of
    configs/cifar10.py at 32x32x3 and of a DiT of comparable size (DiT-S/2: width 384, depth 12),
    in float32 and bfloat16 compute: images/s, XLA's FLOP count of the compiled step
    (`cost_analysis`) and the achieved FLOP/s against the device's peak where this file knows it;
  - sample: images/s of dpm2m (20 steps) and em (1000 steps) with the UNet, warm (compiled);
  - likelihood: points/s of the probability-flow ODE with one Hutchinson probe (untrained network,
    so the adaptive solver takes few steps: the row measures the machinery, its NFE is printed);
  - loop (`--loop`): the training loop of configs/digits.py against its jitted step alone, both
    warm, to show the loop adds no host time (one-step prefetch, no per-step sync).
Peak memory per device comes from `device.memory_stats()` where the backend reports it (GPU/TPU).

    python bench/device.py [--small] [--loop] [--dtypes float32,bfloat16] [--out PATH]

`--small` runs tiny sizes (8x8 images, small networks, few steps) so it finishes on a CPU in
about a minute; tests/test_device.py runs it. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
import types
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sgm
from sgm import build, data, parallel, train
from sgm import config as C
from sgm.loss import dsm_loss

#: dense peak FLOP/s by device kind: (bfloat16 tensor cores, float32 as JAX runs it by default,
#: i.e. TF32 tensor cores on Ampere and later); vendor data sheets, SXM parts
PEAKS = {"H200": (989e12, 495e12), "H100": (989e12, 495e12), "A100": (312e12, 156e12),
         "L4": (121e12, 60e12), "V100": (125e12, 15.7e12)}

FULL = {"image": 32, "batch": 128, "train_steps": 10, "dpm2m": 20, "em": 1000, "lik_batch": 32,
        "unet": {}, "dit": {"net": "dit", "patch": 2, "width": 384, "depth": 12, "heads": 6}}
SMALL = {"image": 8, "batch": 8, "train_steps": 3, "dpm2m": 20, "em": 100, "lik_batch": 8,
         "unet": {"base": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,),
                  "heads": 2},
         "dit": {"net": "dit", "patch": 2, "width": 32, "depth": 2, "heads": 2}}


def peak(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for name, (bf16, f32) in PEAKS.items():
        if name in kind:
            return (bf16 if dtype == "bfloat16" else f32) * len(jax.devices())
    return None


def peak_memory() -> list[int | None]:
    out = []
    for d in jax.local_devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        out.append(None if not stats else int(stats.get("peak_bytes_in_use", 0)))
    return out


def make_model(size: dict, net: str, dtype: str, *, key) -> sgm.ScoreModel:
    """The cifar10 config's network (or a DiT), at `size`'s image size, computing in `dtype`."""
    m = C.load_file(ROOT / "configs" / "cifar10.py").model
    m = dataclasses.replace(m, **size[net], dtype=dtype)
    ds = types.SimpleNamespace(name="cifar10-size", shape=(3, size["image"], size["image"]))
    extra = {"num_classes": None, "param_dim": None, "dropout": m.dropout, "key": key}
    return sgm.ScoreModel(build.NETS[m.net](m, ds, extra), sgm.VPSDE(), dtype=dtype)


def _flops(step, args) -> float | None:
    arrays, static = eqx.partition(args, eqx.is_array)
    cost = jax.jit(lambda a: step(*eqx.combine(a, static))).lower(arrays).cost_analysis()  # no compile
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def bench_train(size: dict, net: str, dtype: str, mesh) -> dict:
    key = jax.random.key(0)
    model = make_model(size, net, dtype, key=key)
    optimizer = optax.adam(1e-4)
    dropout = model.net.dropout > 0

    def loss(m, x, c, k):
        return dsm_loss(m, m.sde, x, key=k, cond=c, dropout=dropout)

    step = train.make_step(loss, optimizer, data.Preprocess(None, None, None), ema=0.9999)
    state = parallel.put_replicated(train.init_state(model, optimizer), mesh)
    n = size["batch"] * mesh.devices.size
    shape = (n, 3, size["image"], size["image"])
    batches = [parallel.put_batch(np.random.default_rng(i).standard_normal(shape, np.float32), mesh)
               for i in range(size["train_steps"] + 1)]
    flops = _flops(step, (state, batches[0], None, key))
    t0 = time.perf_counter()
    state, loss_value = step(state, batches[0], None, key)
    jax.block_until_ready(loss_value)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, x in enumerate(batches[1:]):
        state, loss_value = step(state, x, None, jax.random.fold_in(key, i))
    jax.block_until_ready((state, loss_value))
    per_step = (time.perf_counter() - t0) / size["train_steps"]
    p = peak(dtype)
    return {"row": f"train {net}", "dtype": dtype, "params": sgm.nets.param_count(model.net),
            "compile_s": compile_s, "per_s": n / per_step, "unit": "images/s",
            "flop_per_s": None if flops is None else flops / per_step,
            "of_peak": None if flops is None or p is None else flops / per_step / p}


def _first_and_again(fn):
    """(seconds of the first call, seconds of a second call, its result): the difference of the
    two is the compile time. `fn(k)` takes the call's index, so the two calls see new keys."""
    times, out = [], None
    for k in range(2):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(k))
        times.append(time.perf_counter() - t0)
    return times[0], times[1], out


def bench_sample(size: dict, method: str, steps: int, dtype: str, mesh) -> dict:
    model = make_model(size, "unet", dtype, key=jax.random.key(0))
    n = size["batch"] * mesh.devices.size
    shape = (3, size["image"], size["image"])
    kw = {"num": n, "method": method, "steps": steps, "sharding": parallel.batch_sharding(mesh)}
    first, run, (_, info) = _first_and_again(
        lambda k: sgm.sample(model, model.sde, shape, key=jax.random.key(1 + k), **kw))
    return {"row": f"sample {method}-{steps}", "dtype": dtype, "compile_s": first - run,
            "per_s": n / run, "unit": "images/s", "nfe": int(info["nfe"])}


def bench_likelihood(size: dict, dtype: str, mesh) -> dict:
    model = make_model(size, "unet", dtype, key=jax.random.key(0))
    n = size["lik_batch"] * mesh.devices.size
    x = jax.random.normal(jax.random.key(3), (n, 3, size["image"], size["image"]))
    kw = {"exact": False, "rtol": 1e-5, "atol": 1e-5,
          "control": sgm.StepControl(sharding=parallel.batch_sharding(mesh))}
    first, run, (_, info) = _first_and_again(
        lambda k: sgm.log_likelihood(model, model.sde, x, key=jax.random.key(4 + k), **kw))
    return {"row": "likelihood hutchinson", "dtype": dtype, "compile_s": first - run,
            "per_s": n / run, "unit": "points/s", "nfe": int(info["nfe"])}


def bench_loop(steps: int, mesh, small: bool) -> dict:
    """The digits config's training loop against its jitted step alone, per step, both warm."""
    over = ["train.log_every=1000000", "train.ckpt_every=0"]
    if small:
        over += ["model.base=8", "model.heads=2", "train.batch_size=16"]
    cfg = C.override(C.load_file(ROOT / "configs" / "digits.py"), over)
    exp = build.experiment(cfg)
    t = cfg.train
    loss = lambda m, x, c, k: dsm_loss(m, m.sde, x, key=k, cond=c)
    step = train.make_step(loss, exp.optimizer, exp.preprocess, ema=t.ema,
                           conditioning=exp.conditioning)
    arrays = (exp.ds.train, exp.ds.train_cond)
    key = jax.random.key(t.seed)
    batches = data.Batches(arrays, t.batch_size, t.seed, start_step=0)
    state = train.train(step, exp.state, batches, key=key, steps=2, mesh=mesh,
                        intervals=train.Intervals(log_every=2))  # compile
    t0 = time.perf_counter()
    state = train.train(step, state, batches, key=key, steps=2 + steps, mesh=mesh,
                        intervals=train.Intervals(log_every=steps))
    loop = (time.perf_counter() - t0) / steps
    ahead = [parallel.put_batch(next(batches), mesh) for _ in range(steps)]
    jax.block_until_ready(ahead)
    t0 = time.perf_counter()
    for k, (x, c) in enumerate(ahead):
        state, value = step(state, x, c, jax.random.fold_in(key, k))
    jax.block_until_ready((state, value))
    alone = (time.perf_counter() - t0) / steps
    return {"row": "loop digits", "dtype": cfg.model.dtype, "loop_ms": 1e3 * loop,
            "step_ms": 1e3 * alone, "ratio": loop / alone, "per_s": t.batch_size / loop,
            "unit": "images/s"}


def fmt(row: dict) -> str:
    def num(v, f):
        return "-" if v is None else format(v, f)

    extra = ""
    if "ratio" in row:
        extra = f"loop {row['loop_ms']:.1f} ms/step, step alone {row['step_ms']:.1f} ms: {row['ratio']:.3f}x"
    elif "flop_per_s" in row:
        extra = f"{num(row['flop_per_s'] and row['flop_per_s'] / 1e12, '.2f')} TFLOP/s"
        extra += f", {num(row['of_peak'], '.1%')} of peak" if row["of_peak"] is not None else ""
        extra += f", {row['params']:,} params"
    elif "nfe" in row:
        extra = f"nfe {row['nfe']}"
    return (f"{row['row']:<24} {row['dtype']:<9} {row['per_s']:>10.1f} {row['unit']:<9} "
            f"{num(row.get('compile_s'), '>7.1f')} s  {extra}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes (CPU, CI)")
    ap.add_argument("--loop", action="store_true", help="also time the digits loop vs its step")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes, comma-separated")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/device[_small].json)")
    args = ap.parse_args(argv)
    size = SMALL if args.small else FULL
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    mesh = parallel.make_mesh()
    rows = []
    print(f"{'':<24} {'dtype':<9} {'throughput':>20} {'compile':>9}")
    for net in ("unet", "dit"):
        for dtype in dtypes:
            rows.append(bench_train(size, net, dtype, mesh))
            print(fmt(rows[-1]), flush=True)
    for method in ("dpm2m", "em"):
        for dtype in dtypes:
            rows.append(bench_sample(size, method, size[method], dtype, mesh))
            print(fmt(rows[-1]), flush=True)
    rows.append(bench_likelihood(size, dtypes[0], mesh))
    print(fmt(rows[-1]), flush=True)
    if args.loop:
        rows.append(bench_loop(10 if args.small else 100, mesh, args.small))
        print(fmt(rows[-1]), flush=True)
    memory = peak_memory()
    print(f"peak memory per device: {memory}")
    out = {"devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
           "backend": jax.default_backend(), "jax": jax.__version__, "host": platform.node(),
           "small": args.small, "batch_per_device": size["batch"], "image": size["image"],
           "rows": rows, "peak_memory_bytes": memory}
    path = Path(args.out) if args.out else ROOT / "bench" / "results" / (
        "device_small.json" if args.small else "device.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
