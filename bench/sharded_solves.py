"""Compile and run time of the solves with the batch sharded over 1, 2, 4, 8 (fake) devices.

    python bench/sharded_solves.py [--devices 1 2 4 8] [--batch 256] [--dim 64]

Each device count runs in its own process (XLA_FLAGS must be set before JAX starts; on a CPU the
fake devices share the same cores, so only the sharding's own overhead shows). The score is a
randomly initialised MLP (bench/likelihood.py's `MLPScore`) under the VP SDE; rows:

- `likelihood`: `sgm.log_likelihood` with one Rademacher probe (the default shared-step solve);
- `ode`: `sgm.sample(method="ode")`, adaptive Tsit5, each sample its own solve (vmapped);
- `dpm2m-20`: `sgm.sample(method="dpm2m", steps=20)`, a fixed-step sampler.

"compile" is the first call minus the best of two later ones, "run" the best later call. Every
sharded result is checked against the one-device result of the same process family (`max diff`).
Prints a table and writes bench/results/sharded_solves.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(devices: int, batch: int, dim: int) -> dict:
    import jax
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from likelihood import MLPScore

    import sgm
    from sgm import parallel

    sharding = parallel.batch_sharding(parallel.make_mesh(devices)) if devices > 1 else None
    sde = sgm.VPSDE()
    net = MLPScore(dim, key=jax.random.key(1000 + dim))
    x = 0.5 + 0.7 * jax.random.normal(jax.random.key(200 + dim), (batch, dim))
    calls = {
        "likelihood": lambda: sgm.log_likelihood(net, sde, x, key=jax.random.key(7), exact=False,
                                                 control=sgm.StepControl(sharding=sharding)),
        "ode": lambda: sgm.sample(net, sde, (dim,), key=jax.random.key(3), num=batch, method="ode",
                                  sharding=sharding),
        "dpm2m-20": lambda: sgm.sample(net, sde, (dim,), key=jax.random.key(3), num=batch,
                                       method="dpm2m", steps=20, sharding=sharding),
    }
    rows = {}
    for name, fn in calls.items():
        t = time.perf_counter()
        out, info = jax.block_until_ready(fn())
        first = time.perf_counter() - t
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            runs.append(time.perf_counter() - t)
        rows[name] = {"compile_s": max(first - min(runs), 0.0), "run_s": min(runs),
                      "nfe": int(info["nfe"]), "result": np.asarray(out, np.float64).tolist()}
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS / "sharded_solves.json")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.batch, args.dim)))
        return

    import numpy as np

    start, load = time.perf_counter(), os.getloadavg()
    results = {}
    for d in args.devices:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}",
               "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, __file__, "--worker", str(d), "--batch",
                              str(args.batch), "--dim", str(args.dim)], env=env, check=True,
                             capture_output=True, text=True).stdout
        results[d] = json.loads(out.strip().splitlines()[-1])
        print(f"  [{time.perf_counter() - start:6.1f}s] {d} device(s)", flush=True)
    base = results[args.devices[0]]
    print(f"\nVP, random MLP score, D = {args.dim}, batch {args.batch}, float32, "
          f"{os.cpu_count()} CPU cores (fake devices share them); times in s")
    head = (f"{'solve':<12}{'devices':>8}{'nfe':>6}{'compile':>9}{'x 1-dev':>9}{'run':>9}"
            f"{'x 1-dev':>9}{'max diff':>10}")
    print(head)
    print("-" * len(head))
    table = []
    for name in base:
        for d in args.devices:
            r, b = results[d][name], base[name]
            diff = float(np.max(np.abs(np.asarray(r["result"]) - np.asarray(b["result"]))))
            row = {"solve": name, "devices": d, "nfe": r["nfe"], "compile_s": r["compile_s"],
                   "run_s": r["run_s"], "compile_ratio": r["compile_s"] / b["compile_s"],
                   "run_ratio": r["run_s"] / b["run_s"], "max_diff": diff}
            table.append(row)
            print(f"{name:<12}{d:>8}{r['nfe']:>6}{r['compile_s']:>9.2f}{row['compile_ratio']:>9.2f}"
                  f"{r['run_s']:>9.3f}{row['run_ratio']:>9.2f}{diff:>10.1e}")
    meta = {"batch": args.batch, "dim": args.dim, "cpus": os.cpu_count(), "load_avg_start": load,
            "load_avg_end": os.getloadavg(), "total_s": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": table}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
