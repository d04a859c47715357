"""Crash safety, signals, NaN handling, unwritable outputs and checkpoints of another model."""

import dataclasses
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from sgm import checkpoint as ckpt
from sgm import build, data, parallel, run, train
from sgm import config as C
from sgm.errors import CheckpointError, NumericalError

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"  # main.py's default config

SMALL = ["train.batch_size=32", "train.log_every=5", "train.warmup=2", "model.width=16",
         "model.depth=1", "data.n_train=512", "data.n_test=64", "train.eval_num=16"]


def command(workdir, *sets, mode="train"):
    """The command (what main.py runs) on the default config with SMALL and `sets`."""
    return run.main(EIGHT, workdir=workdir, mode=mode, progress=False, sets=[*SMALL, *sets])


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


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    steps, every = 400, 2
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # the uninterrupted run in this process (the same command, without a second start-up)
    assert command(tmp_path / "straight", f"train.steps={steps}", f"train.ckpt_every={every}") == 0
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


@pytest.mark.slow
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
    cfg = C.override(C.Config(), SMALL + [f"train.steps={steps}", "train.ckpt_every=4",
                                          "train.log_every=2", f"train.on_nan={on_nan}"])
    return build.experiment(cfg)


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


@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_keeps_good_checkpoint(tmp_path, nan_batch):
    exp = _setup("stop")
    # steps count from 1, as in the logs and checkpoint names: batch 5 is step 6
    with pytest.raises(NumericalError, match=r"at step 6; .*checkpoint \(step 4\) is kept"):
        exp.train(exp.state, mesh=parallel.make_mesh(), ckpt_dir=tmp_path)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt_000000004.npz"]
    back, _ = ckpt.load(tmp_path / names[0], exp.state)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(
        back.model) if hasattr(a, "dtype") and np.issubdtype(a.dtype, np.floating))


@pytest.mark.slow
def test_nan_loss_can_be_skipped(tmp_path, nan_batch):
    exp = _setup("skip")
    logs = []
    out = exp.train(exp.state, mesh=parallel.make_mesh(), ckpt_dir=tmp_path, on_log=logs.append)
    assert int(out.step) == 12 and int(out.bad_step) == 6
    assert sum(r["skipped"] for r in logs) == 1
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(out.model) if hasattr(a, "dtype")]
    assert all(np.all(np.isfinite(a)) for a in leaves if np.issubdtype(a.dtype, np.floating))


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_by_main(tmp_path, capsys):
    wd = tmp_path / "wd"
    assert command(wd, "train.steps=4") == 0
    assert command(wd, "train.steps=4", "model.width=32") == 2
    err = capsys.readouterr().err
    assert "was trained with model.width=16, not 32" in err and err.count("\n") == 1


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
    code = command(blocker / "wd", "train.steps=2", mode="all")
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to work directory" in err


# ------------------------------------------------------------------ second pass: state, inputs, locks


@pytest.mark.slow
def test_nonfinite_update_with_finite_loss_is_not_kept(tmp_path):
    """An update that makes the weights inf (finite loss) is rejected like a NaN loss."""
    exp = _setup("stop")
    bad = optax.chain(exp.optimizer, optax.scale(float("inf")))
    exp = dataclasses.replace(exp, optimizer=bad, state=train.init_state(exp.state.model, bad))
    with pytest.raises(NumericalError, match="at step 1; stopped, no checkpoint was written"):
        exp.train(exp.state, mesh=parallel.make_mesh(), ckpt_dir=tmp_path)
    assert ckpt.list_checkpoints(tmp_path) == []
    skip = dataclasses.replace(exp, cfg=C.override(exp.cfg, ["train.on_nan=skip"]))
    with pytest.raises(NumericalError, match=r"6 of the 6 steps run were skipped .* stopped"):
        skip.train(skip.state, mesh=parallel.make_mesh(), ckpt_dir=tmp_path)  # not silent
    for p in ckpt.list_checkpoints(tmp_path):  # whatever was saved holds finite weights
        back, _ = ckpt.load(p, exp.state)
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(back.model)
                   if hasattr(a, "dtype") and np.issubdtype(a.dtype, np.floating))


def test_checkpoint_arrays_are_checked_against_manifest(tmp_path):
    tree = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    path = ckpt.save(tmp_path, 1, tree)
    with np.load(path, allow_pickle=False) as f:
        members = {k: f[k] for k in f.files}
    leaf = next(k for k in members if k != "__manifest__" and members[k].shape == (3, 2))
    np.savez(path, **dict(members, **{leaf: np.ones((4, 2), np.float32)}))
    with pytest.raises(CheckpointError, match="corrupt: array"):
        ckpt.load(path, tree)
    # a member that is not an .npy array (raw bytes, e.g. a pickle) is refused, never unpickled
    with zipfile.ZipFile(path, "w") as z:
        for k, v in members.items():
            if k == leaf:
                z.writestr(k, pickle.dumps(v))  # no .npy suffix: np.load hands back bytes
            else:
                buf = io.BytesIO()
                np.save(buf, v)
                z.writestr(f"{k}.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load(path, tree)


@pytest.mark.slow
def test_same_shaped_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    wd = tmp_path / "wd"
    assert command(wd, "train.steps=4") == 0
    before = {p.name: p.stat().st_mtime_ns for p in (wd / "checkpoints").iterdir()}
    config = (wd / "config.json").read_text()
    assert command(wd, "train.steps=4", "sde.kind=ve", "model.prediction=score",
                   "train.steps=8") == 2
    err = capsys.readouterr().err
    assert "was trained with sde.kind='vp', not 've'" in err and err.count("\n") == 1
    assert {p.name: p.stat().st_mtime_ns for p in (wd / "checkpoints").iterdir()} == before
    assert (wd / "config.json").read_text() == config
    # what only says how much is evaluated, or how training regularises, may change on resume
    assert command(wd, "train.steps=4", "data.n_test=32", "model.dropout=0.1", "train.steps=6") == 0


@pytest.mark.slow
def test_rejected_config_leaves_a_finished_run_alone(tmp_path, capsys):
    wd = tmp_path / "wd"
    assert command(wd, "train.steps=4") == 0
    files = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    for bad in (["train.steps=40", "data.n_train=10"], ["train.batch_size=30", "train.grad_accum=4"],
                ["train.lr=inf"], ["train.seed=-1"], ["data.val_fraction=1.5"]):
        assert command(wd, "train.steps=4", *bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()} == files


@pytest.mark.slow
def test_work_directory_is_locked_while_a_run_holds_it(tmp_path, capsys):
    wd = tmp_path / "wd"
    wd.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sgm import checkpoint as c; f = c.lock_workdir(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(60)"), str(wd)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert command(wd, "train.steps=2") == 2
        err = capsys.readouterr().err
        assert "is in use by process" in err and err.count("\n") == 1
        assert not (wd / "checkpoints").exists() and not (wd / "config.json").exists()
        holder.kill()  # a crashed holder does not leave the lock stuck
        holder.wait()
        assert command(wd, "train.steps=2") == 0
    finally:
        holder.kill()
        holder.wait()


def test_bad_config_files_are_one_sentence(tmp_path, capsys):
    cases = {"syntax.py": "config = (", "raises.py": "raise RuntimeError('boom')",
             "config.txt": "config = None"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert run.main(tmp_path / name, workdir=tmp_path / "wd") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: config file") and err.count("\n") == 1, err
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_leftover_temporary_files_are_removed_and_outputs_are_readable(tmp_path):
    wd = tmp_path / "wd"
    (wd / "checkpoints").mkdir(parents=True)
    stale = wd / "checkpoints" / ".tmp_ckpt_000000002_abc.npz"
    stale.write_bytes(b"half a checkpoint")
    assert command(wd, "train.steps=2") == 0
    assert not stale.exists()
    mode = (wd / "checkpoints" / "ckpt_000000002.npz").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()  # as open() would make it, not mkstemp's 0600


def test_truncated_newest_checkpoint_names_the_previous_one(tmp_path, capsys):
    wd = tmp_path / "wd"
    assert command(wd, "train.steps=8", "train.ckpt_every=4") == 0
    newest = ckpt.latest(wd / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:200])
    assert command(wd, "train.steps=8", "train.ckpt_every=4") == 2
    err = capsys.readouterr().err
    assert "Delete it to resume from the previous checkpoint, ckpt_000000004.npz" in err


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_disk_full_while_writing_outputs_is_one_sentence(tmp_path, capsys, monkeypatch):
    wd = tmp_path / "wd"
    import sgm.plot

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(wd / "figs" / "training.png"))

    monkeypatch.setattr(sgm.plot, "training_curves", full)
    assert command(wd, "train.steps=2") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device") and err.count("\n") == 1
    assert ckpt.latest(wd / "checkpoints").name == "ckpt_000000002.npz"  # the checkpoint is whole


def _strict_json(line):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def test_skipped_steps_keep_metrics_valid_json(tmp_path, nan_batch):
    wd = tmp_path / "wd"
    assert command(wd, "train.steps=8", "train.log_every=1", "train.on_nan=skip") == 0
    rows = [_strict_json(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    step6 = next(r for r in rows if r.get("step") == 6 and "loss" in r)
    assert step6["loss"] is None and step6["skipped"] == 1


@pytest.mark.slow
def test_ctrl_c_while_sampling_writes_no_samples(tmp_path):
    wd = tmp_path / "wd"
    base = [sys.executable, str(ROOT / "main.py"), "--workdir", str(wd), "--no-progress"]
    small = ["--set", *SMALL, "train.steps=2"]
    assert command(wd, "train.steps=2") == 0  # the model to sample, trained in this process
    proc = subprocess.Popen(base + ["--mode", "sample"] + small + ["sample.steps=150000", "sample.num=256"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(10)  # past start-up (a signal during `import jax` is not ours to handle)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "stopped by signal 2" in err and "Traceback" not in err
    assert not (wd / "samples.npz").exists()
    assert not [p for p in wd.iterdir() if p.name.startswith(".tmp_")]
