"""The Fashion-MNIST CPU recipes (configs/fashion_mnist_cpu.py, the UNet, and
configs/fashion_mnist_dit_cpu.py, the transformer), end to end in a short version.

Their full runs train for about 39 and 42 minutes on a 2-core CPU (docs/results/fashion-mnist.md);
here each shipped config, at its own network size and sampler, trains a few steps on the real
files, samples, scores the samples offline and computes bits/dim, all through the command.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from sgm import data, quality, run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"unet": ROOT / "configs" / "fashion_mnist_cpu.py",
           "dit": ROOT / "configs" / "fashion_mnist_dit_cpu.py"}


@pytest.mark.slow
@pytest.mark.parametrize("net", list(CONFIGS))
@pytest.mark.skipif(not data.FASHION_MNIST_ROOT.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_the_cpu_recipe_runs_end_to_end_on_the_real_files(net, tmp_path, monkeypatch):
    monkeypatch.setenv("SGM_CACHE", str(tmp_path / "cache"))
    # a classifier of the same 512 training images, trained briefly, waits in the cache: the run
    # must find it there (the full one trains for minutes)
    ds = data.load("fashion_mnist", n_train=512, n_test=64)
    _, info = quality.classifier_for(ds, steps=20)
    sets = ["train.steps=3", "train.log_every=1", "data.n_train=512", "data.n_test=64",
            "sample.num=20", "sample.steps=4", "likelihood.num=2", "likelihood.batch=2",
            "likelihood.solver_check=0"]
    work = tmp_path / "run"
    assert run.main(CONFIGS[net], workdir=work, progress=False, sets=sets) == 0
    summary = json.loads((work / "summary.json").read_text())
    assert summary["steps"] == 3
    assert json.loads((work / "config.json").read_text())["model"]["net"] == net
    assert np.isfinite(summary["likelihood"]["bpd"]) and summary["likelihood"]["bpd"] > 0
    with np.load(work / "samples.npz") as f:
        x, cond = f["samples"], f["cond"]
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.uint8
    assert cond.tolist() == [i % 10 for i in range(20)]  # each class asked for in turn
    assert (work / "figs" / "samples.png").is_file() and (work / "figs" / "reverse.png").is_file()
    q = json.loads((work / "quality.json").read_text())
    assert summary["quality"] == q and q["num_samples"] == 20
    assert q["classifier_test_accuracy"] == info["test_accuracy"]  # the cached one was used
    assert 0 <= q["sample_accuracy"] <= 1 and q["frechet"] >= 0 and q["frechet_reference"] >= 0
