"""Crash safety, signals, NaN handling, unwritable outputs and checkpoints of another model."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import main  # noqa: E402
from sgm import checkpoint as ckpt  # noqa: E402
from sgm import config as C  # noqa: E402
from sgm import data, train  # noqa: E402
from sgm.errors import CheckpointError, NumericalError  # noqa: E402

SMALL = ["train.batch_size=32", "train.log_every=5", "train.warmup=2", "model.width=16",
         "model.depth=1", "data.n_train=512", "data.n_test=64", "train.eval_num=16"]


def cmd(workdir, steps, every):
    return [sys.executable, str(ROOT / "main.py"), "--mode", "train", "--no-progress", "--workdir",
            str(workdir), "--set", *SMALL, f"train.steps={steps}", f"train.ckpt_every={every}"]


def weights(workdir):
    path = ckpt.latest(Path(workdir) / "checkpoints")
    with np.load(path, allow_pickle=False) as f:
        return path.name, {k: f[k] for k in f.files if k != "__manifest__"}


def all_checkpoints_readable(workdir):
    for p in ckpt.list_checkpoints(Path(workdir) / "checkpoints"):
        ckpt.read_manifest(p)  # raises CheckpointError if a file is unreadable


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    steps, every = 400, 2
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(cmd(tmp_path / "straight", steps, every), check=True, env=env, capture_output=True)
    wd = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    deadline = time.time() + 150
    while kills < 3 and time.time() < deadline:
        proc = subprocess.Popen(cmd(wd, steps, every), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # wait for progress past the last checkpoint, then kill at a random moment (checkpoints
        # are written every 2 steps, so many kills land in or next to a write)
        start = len(ckpt.list_checkpoints(wd / "checkpoints"))
        while proc.poll() is None and not ckpt.list_checkpoints(wd / "checkpoints")[start:]:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        all_checkpoints_readable(wd)
    assert kills >= 1
    subprocess.run(cmd(wd, steps, every), check=True, env=env, capture_output=True)
    all_checkpoints_readable(wd)
    name_a, a = weights(tmp_path / "straight")
    name_b, b = weights(wd)
    assert name_a == name_b == f"ckpt_{steps:09d}.npz"
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_exits_cleanly(tmp_path, sig):
    wd = tmp_path / "wd"
    proc = subprocess.Popen(cmd(wd, 100000, 1000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline = time.time() + 120
    while not (wd / "metrics.jsonl").exists() or not (wd / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    name, _ = weights(wd)
    step = int(name[5:14])
    assert 0 < step < 100000


def _setup(on_nan, steps=12):
    cfg = C.validate(C.override(C.Config(), SMALL + [f"train.steps={steps}", "train.ckpt_every=4",
                                                     "train.log_every=2", f"train.on_nan={on_nan}"]))
    ds = data.load(cfg.data.name, n_train=cfg.data.n_train, n_test=cfg.data.n_test)
    state, opt = train.init_state(cfg, ds, key=jax.random.key(0))
    return cfg, ds, state, opt, train.build_preprocess(cfg, ds)


@pytest.fixture
def nan_batch(monkeypatch):
    """Batch number 5 (0-based, i.e. step 6) holds a NaN, as corrupt data would."""
    orig = data.Batches.__next__

    def poisoned(self):
        step = self.step
        x = orig(self)
        if step == 5:
            x = x.copy()
            x[0, 0] = np.nan
        return x

    monkeypatch.setattr(data.Batches, "__next__", poisoned)


def test_nan_loss_stops_naming_step_and_keeps_good_checkpoint(tmp_path, nan_batch):
    cfg, ds, state, opt, pre = _setup("stop")
    with pytest.raises(NumericalError, match="step 5"):
        train.train(cfg, ds, state, opt, pre, ckpt_dir=tmp_path)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt_000000004.npz"]
    back, _ = ckpt.load(tmp_path / names[0], state)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(
        back.model) if hasattr(a, "dtype") and np.issubdtype(a.dtype, np.floating))


def test_nan_loss_can_be_skipped(tmp_path, nan_batch):
    cfg, ds, state, opt, pre = _setup("skip")
    logs = []
    out = train.train(cfg, ds, state, opt, pre, ckpt_dir=tmp_path, on_log=logs.append)
    assert int(out.step) == 12 and int(out.bad_step) == 5
    assert sum(r["skipped"] for r in logs) == 1
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(out.model) if hasattr(a, "dtype")]
    assert all(np.all(np.isfinite(a)) for a in leaves if np.issubdtype(a.dtype, np.floating))


def test_checkpoint_of_another_model_is_refused_by_main(tmp_path, capsys):
    wd = str(tmp_path / "wd")
    base = ["--workdir", wd, "--mode", "train", "--no-progress", "--set", *SMALL, "train.steps=4"]
    assert main.main(base) == 0
    assert main.main(base + ["model.width=32"]) == 2
    err = capsys.readouterr().err
    assert "does not match the configured model" in err and err.count("\n") == 1


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    tree = {"w": np.arange(4.0)}
    ckpt.save(tmp_path, 1, tree)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        ckpt.save(tmp_path, 2, tree)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_000000001.npz"]  # no temporary left
    back, _ = ckpt.load(tmp_path / "ckpt_000000001.npz", tree)
    np.testing.assert_array_equal(back["w"], tree["w"])


def test_unwritable_workdir_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main.main(["--workdir", str(blocker / "wd"), "--no-progress", "--set", *SMALL,
                      "train.steps=2"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to work directory" in err
