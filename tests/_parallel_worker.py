"""Worker for tests/test_parallel.py: a few training steps, sampling and likelihood on a mesh.

Run as a subprocess so that XLA_FLAGS (fake CPU devices) and jax.distributed are set before JAX
starts. Writes the final weights, samples and log-likelihoods to OUT (process 0 only).
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--devices", type=int, default=None, help="mesh size (default: all)")
parser.add_argument("--coordinator", default=None)
parser.add_argument("--num-processes", type=int, default=None)
parser.add_argument("--process-id", type=int, default=None)
parser.add_argument("--grad-accum", type=int, default=1)
args = parser.parse_args()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from sgm import build, parallel  # noqa: E402
from sgm import config as C  # noqa: E402

parallel.initialize(args.coordinator, args.num_processes, args.process_id)
mesh = parallel.make_mesh(args.devices)
cfg = C.override(C.Config(), [
    "train.steps=6", "train.batch_size=32", "train.log_every=3", "train.warmup=1", "model.width=32",
    "model.depth=2", "data.n_train=256", "data.n_test=64", "likelihood.batch=8", "likelihood.num=8",
    "likelihood.rtol=1e-4", "likelihood.atol=1e-4", f"train.grad_accum={args.grad_accum}",
    "sample.method=ddim", "sample.steps=20", "sample.num=16",
    # the NLL only: no second solve at a tenth of the tolerances for an error bar nothing reads
    "likelihood.solver_check=0",
])
exp = build.experiment(cfg)

seen = {}
orig = parallel.put_batch


def spy(x, m):
    out = orig(x, m)
    seen["devices"] = len(out[0].sharding.device_set)
    seen["local_shard"] = out[0].addressable_shards[0].data.shape[0]
    return out


parallel.put_batch = spy
state = exp.train(exp.state, mesh=mesh)
samples, _, _ = exp.samples(state.ema, mesh=mesh)
lik = exp.heldout_likelihood(state.ema, mesh=mesh)
weights = [parallel.gather(a) for a in jax.tree_util.tree_leaves(eqx.filter(state.model, eqx.is_array))]
if parallel.is_main_process():
    np.savez(args.out, *weights, samples=samples, nll=lik["nll"], devices=seen["devices"],
             local_shard=seen["local_shard"], processes=jax.process_count())
sys.stdout.flush()
parallel.barrier("worker_done")  # process 0 runs the coordination service: leave together
os._exit(0)  # skip distributed shutdown barriers in tests
