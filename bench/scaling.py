"""Data-parallel scaling: training steps/s and sampling samples/s on 1, 2, 4 (fake) devices.

Each device count runs in its own process (XLA_FLAGS must be set before JAX starts). On a CPU the
fake devices share the same cores, so the real speed-up is bounded by the core count; the point is
that the sharding overhead stays small. On a GPU machine pass --devices with the real counts.

    python bench/scaling.py [--devices 1 2 4] [--steps 200] [--batch 512]

Prints a table and writes bench/results/scaling.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(devices: int, steps: int, batch: int, width: int) -> dict:
    import jax

    from sgm import build, parallel
    from sgm import config as C

    mesh = parallel.make_mesh(devices)
    cfg = C.override(C.Config(), [
        f"train.steps={steps}", f"train.batch_size={batch}", f"train.log_every={steps}",
        f"model.width={width}", "data.n_train=20000", "data.n_test=512", "train.ckpt_every=0",
        "sample.method=ddim", "sample.steps=50", "sample.num=4096"])
    exp = build.experiment(cfg)
    state = exp.state
    # warm-up run compiles the step; the timed run repeats the same number of steps
    build.experiment(C.override(cfg, ["train.steps=2", "train.log_every=1"])).train(state, mesh=mesh)
    t0 = time.perf_counter()
    exp.train(state, mesh=mesh)
    train_s = time.perf_counter() - t0
    exp.samples(state.ema, mesh=mesh)  # compile
    t0 = time.perf_counter()
    exp.samples(state.ema, mesh=mesh)
    sample_s = time.perf_counter() - t0
    return {"devices": devices, "steps_per_s": steps / train_s,
            "samples_per_s": cfg.sample.num / sample_s, "batch": batch, "platform": jax.default_backend()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker is not None:
        print(json.dumps(worker(a.worker, a.steps, a.batch, a.width)))
        return
    rows = []
    for n in a.devices:
        env = dict(os.environ)
        if env.get("JAX_PLATFORMS", "cpu") == "cpu" and "cuda" not in env.get("JAX_PLATFORMS", ""):
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        out = subprocess.run([sys.executable, __file__, "--worker", str(n), "--steps", str(a.steps),
                              "--batch", str(a.batch), "--width", str(a.width)], env=env,
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'devices':>7} {'steps/s':>9} {'rel':>6} {'samples/s':>10} {'rel':>6}  ({rows[0]['platform']}, "
          f"global batch {a.batch})")
    for r in rows:
        print(f"{r['devices']:>7} {r['steps_per_s']:>9.1f} {r['steps_per_s'] / base['steps_per_s']:>6.2f} "
              f"{r['samples_per_s']:>10.0f} {r['samples_per_s'] / base['samples_per_s']:>6.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
