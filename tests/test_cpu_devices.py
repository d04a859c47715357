"""`train.cpu_devices`: the CPU split into devices from a config, as the command reaches it.

The count must be set before JAX's first computation, so the command is run in a fresh process
(`python main.py`), as a user runs it; in this process JAX has long started, and the library call
says so instead of failing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sgm import parallel, run
from sgm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"
SETS = ["train.steps=3", "train.batch_size=32", "train.log_every=1", "train.warmup=1",
        "model.width=16", "model.depth=1", "data.n_train=256", "data.n_test=32",
        "train.eval_num=32"]


def _summary(work):
    return json.loads((Path(work) / "summary.json").read_text())


def _main(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, str(ROOT / "main.py"), str(EIGHT), "--no-progress",
                           *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_command_splits_the_cpu_and_trains_as_on_one_device(tmp_path):
    work = tmp_path / "two"
    # 25 samples do not split over two devices: drawn padded to 26, the extra one dropped
    out = _main("--workdir", str(work), "--density-grid", "0", "--set", *SETS,
                "train.cpu_devices=2", "sample.num=25", "sample.steps=20", "likelihood.num=8",
                "likelihood.batch=8", "likelihood.rtol=1e-2", "likelihood.atol=1e-2")
    assert out.returncode == 0, out.stderr
    assert "note:" not in out.stderr
    two = _summary(work)
    assert two["devices"] == 2 and np.isfinite(two["likelihood"]["nll"])
    assert json.loads((work / "config.json").read_text())["train"]["cpu_devices"] == 2
    with np.load(work / "samples.npz") as f:
        assert f["samples"].shape == (25, 2) and np.all(np.isfinite(f["samples"]))
    # the same training on this process's one device: the same batches, the same mean gradient
    assert run.main(EIGHT, sets=SETS, mode="train", workdir=tmp_path / "one", progress=False) == 0
    one = _summary(tmp_path / "one")
    assert one["devices"] == len(jax.devices())
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)


def test_a_count_jax_cannot_take_any_more_is_said_not_failed(tmp_path, capsys):
    jax.devices()  # this process's JAX has started
    have = len(jax.devices("cpu"))
    assert parallel.split_cpu(have) is None and parallel.split_cpu(0) is None
    said = parallel.split_cpu(have + 1)
    assert said.startswith(f"JAX already started in this process with {have} CPU device(s)")
    assert run.main(EIGHT, sets=[*SETS, f"train.cpu_devices={have + 1}"], mode="train",
                    workdir=tmp_path / "w", progress=False) == 0
    err = capsys.readouterr().err
    assert f"note: train.cpu_devices={have + 1}: JAX already started" in err
    assert _summary(tmp_path / "w")["devices"] == len(jax.devices())


def test_a_count_in_xla_flags_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert parallel.split_cpu(3) is None
    assert parallel.split_cpu(2) == "XLA_FLAGS sets 3 CPU devices, so the 2 asked for are not used."


@pytest.mark.parametrize("value", ["-1", "2.5", "1025"])
def test_a_bad_count_is_one_sentence_before_anything_is_written(tmp_path, capsys, value):
    work = tmp_path / "w"
    assert run.main(EIGHT, sets=[*SETS, f"train.cpu_devices={value}"], workdir=work,
                    progress=False) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.cpu_devices=") and "\n" not in err
    assert not work.exists()
    with pytest.raises(ConfigError, match="expected 0"):
        parallel.split_cpu(-1)
