"""Data parallelism on fake CPU devices: 1 device == 4 devices == 2 processes x 2 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_parallel_worker.py")


def run_worker(out, devices_per_process, *extra, env_extra=None, wait=True):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
               JAX_PLATFORMS="cpu", **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, str(WORKER), str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, text
    return proc


def load(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def shared_run(tmp_path_factory, name, devices_per_process):
    """The worker's results on `devices_per_process` devices, run once per test session: under
    xdist by the first worker that needs them (the others wait for them and load them)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()  # under xdist, each worker's; its parent the session's
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    out = root / f"parallel-{name}.npz"
    with FileLock(str(root / f"parallel-{name}.lock")):
        if not out.exists():
            run_worker(out, devices_per_process)
    return load(out)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return shared_run(tmp_path_factory, "one", 1)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return shared_run(tmp_path_factory, "four", 4)


def assert_same_weights(a, b, rtol=1e-4, atol=1e-6):
    keys = [k for k in a if k.startswith("arr_")]
    assert keys and keys == [k for k in b if k.startswith("arr_")]
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.slow
def test_batches_are_really_split(single, four):
    assert int(single["devices"]) == 1 and int(single["local_shard"]) == 32
    assert int(four["devices"]) == 4 and int(four["local_shard"]) == 8


@pytest.mark.slow
def test_four_devices_train_like_one(single, four):
    assert_same_weights(single, four)


@pytest.mark.slow
def test_sampling_and_likelihood_sharded_equal_unsharded(single, four):
    np.testing.assert_allclose(single["samples"], four["samples"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(single["nll"], four["nll"], rtol=1e-4)


@pytest.mark.slow
def test_gradient_accumulation_runs_sharded(tmp_path):
    out = tmp_path / "acc.npz"
    run_worker(out, 4, "--grad-accum", "2")
    res = load(out)
    assert int(res["devices"]) == 4 and np.isfinite(res["nll"])


@pytest.mark.slow
def test_two_processes_train_in_lock_step(tmp_path, four):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = [tmp_path / f"p{i}.npz" for i in range(2)]
    procs = [run_worker(outs[i], 2, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                        "--process-id", str(i), wait=False) for i in range(2)]
    for p in procs:
        text, _ = p.communicate(timeout=600)
        assert p.returncode == 0, text
    res = load(outs[0])
    assert not outs[1].exists()  # only process 0 writes
    assert int(res["processes"]) == 2 and int(res["devices"]) == 4 and int(res["local_shard"]) == 8
    assert_same_weights(res, four)
    np.testing.assert_allclose(res["samples"], four["samples"], rtol=1e-3, atol=1e-4)


def test_mesh_and_batch_errors():
    code = ("import sgm.parallel as p, sgm\n"
            "try:\n    p.make_mesh(8)\nexcept sgm.ConfigError as e:\n    print('E1', e)\n"
            "try:\n    p.check_batch(30, p.make_mesh())\nexcept sgm.ConfigError as e:\n    print('E2', e)\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "E1 a mesh of 8 devices was asked for but 4 are present" in out.stdout, out.stderr
    assert "E2 train.batch_size=30 does not divide over the 4 devices" in out.stdout


@pytest.mark.slow
def test_refusal_on_process_0_reaches_the_others(tmp_path):
    """Process 0 cannot write its work directory: every process stops with one sentence, exit 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    main = Path(__file__).resolve().parents[1] / "main.py"
    procs = [subprocess.Popen(
        [sys.executable, str(main), "--workdir", str(blocker / "wd"), "--no-progress",
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
         "--set", "train.steps=2", "train.batch_size=8", "model.width=16", "data.n_train=64"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        errs.append(err)
        assert p.returncode == 2, err
    assert "cannot write to work directory" in errs[0]
    assert "process 0 could not prepare the work directory" in errs[1]


@pytest.mark.slow
def test_eight_devices_solve_like_one(tmp_path):
    """The likelihood (shared-step solve), the adaptive ODE sampler and dpm2m with the batch split
    over 8 fake devices give the one-device answers (bench/sharded_solves.py, small sizes)."""
    import json

    out = tmp_path / "sharded.json"
    bench = Path(__file__).resolve().parents[1] / "bench" / "sharded_solves.py"
    subprocess.run([sys.executable, str(bench), "--devices", "1", "8", "--batch", "16", "--dim", "4",
                    "--out", str(out)], check=True, capture_output=True, timeout=600)
    rows = {(r["solve"], r["devices"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(s, d) for s in ("likelihood", "ode", "dpm2m-20") for d in (1, 8)}
    # float reductions run in another order on 8 devices: equal to rounding, not bit for bit
    assert rows["likelihood", 8]["max_diff"] < 1e-3
    assert rows["ode", 8]["max_diff"] < 5e-3
    assert rows["dpm2m-20", 8]["max_diff"] < 1e-4
