"""Every config in configs/ builds at its own model size and trains two steps through the command
(`sgm.run.main`, what main.py runs).

Configs that read data from disk get a few synthetic files in that format (MNIST idx, CIFAR-10
binary, a folder of PNGs) in a temporary folder. Compiling the large image networks' training
step costs 1-2 minutes each on a 2-core CPU, so by default those configs are built (data, network,
optimizer, every check) but trained only with SGM_TEST_ALL_CONFIGS=1 (the digits UNet trains in
tests/test_train.py either way).
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgm import build, run
from sgm import config as C
from sgm.data import files

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))
FROM_DISK = ("mnist", "fashion_mnist", "cifar10", "flowers", "array")  # data names
COMPILE_HEAVY = ("mnist", "fashion_mnist", "fashion_mnist_cpu", "cifar10", "flowers", "digits")
TRAIN_ALL = os.environ.get("SGM_TEST_ALL_CONFIGS") == "1"


def _idx(a: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape)
    return head + a.astype(np.uint8).tobytes()


def _fake_data(name: str, root: Path, rng) -> None:
    root.mkdir(parents=True)
    if name in ("mnist", "fashion_mnist"):
        arrays = [rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6),
                  rng.integers(0, 256, (4, 28, 28)), rng.integers(0, 10, 4)]
        for stem, a in zip(files.MNIST_FILES, arrays, strict=True):
            (root / stem).write_bytes(_idx(a))
    elif name == "cifar10":
        for part in (*files.CIFAR10_TRAIN, files.CIFAR10_TEST):
            x = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
            y = rng.integers(0, 10, (2, 1), dtype=np.uint8)
            (root / part).write_bytes(np.concatenate([y, x], 1).tobytes())
    elif name == "array":  # a small table of points
        np.savez(root / "table.npz", x=rng.normal(size=(40, 4)).astype(np.float32))
    elif name == "flowers":
        from PIL import Image

        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)).save(root / f"{i}.png")


def test_every_config_is_listed():
    assert {"eight_gaussians", "digits", "grf", "mnist", "cifar10", "flowers"} <= set(CONFIGS)


def _data_name(config_name: str) -> str:
    return C.load_file(ROOT / "configs" / f"{config_name}.py").data.name


def _overrides(name, tmp_path):
    extra = ["train.steps=2", "train.batch_size=2", "train.log_every=1", "train.eval_num=2",
             "data.n_test=2"]
    data_name = _data_name(name)
    if data_name in FROM_DISK:
        _fake_data(data_name, tmp_path / "data", np.random.default_rng(0))
        root = tmp_path / "data" / ("table.npz" if data_name == "array" else "")
        extra.append(f"data.root={root}")
    else:
        extra.append("data.n_train=64")
    return extra


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.slow
def test_config_builds_at_full_size(name, tmp_path):
    cfg = C.override(C.load_file(ROOT / "configs" / f"{name}.py"), _overrides(name, tmp_path))
    exp = build.experiment(cfg)
    # the network takes one sample (with its condition) and returns a score of the same shape:
    # traced, not compiled, so the large networks cost seconds
    raw = None if exp.ds.train_cond is None else exp.ds.train_cond[0]
    out = jax.eval_shape(lambda x, c: exp.state.model(jnp.float32(0.5), x, **exp.cond(c)),
                         jnp.zeros(exp.ds.shape, jnp.float32), raw)
    assert out.shape == exp.ds.shape and out.dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_two_steps(name, tmp_path):
    if name in COMPILE_HEAVY and not TRAIN_ALL:
        pytest.skip("large image network: set SGM_TEST_ALL_CONFIGS=1 to train it")
    assert run.main(ROOT / "configs" / f"{name}.py", workdir=tmp_path / "run", mode="train",
                    progress=False, sets=_overrides(name, tmp_path)) == 0
    assert (tmp_path / "run" / "checkpoints" / "ckpt_000000002.npz").is_file()


@pytest.mark.slow
def test_the_fashion_cpu_recipe_takes_mnist_from_data_root(tmp_path):
    """configs/fashion_mnist_cpu.py with `data.name=mnist data.root=DIR` (MNIST's four idx files):
    the same class-conditional network, ten classes, 28x28, built with every check."""
    _fake_data("mnist", tmp_path / "data", np.random.default_rng(0))
    sets = ["data.name=mnist", f"data.root={tmp_path / 'data'}", "data.n_test=2",
            "train.batch_size=2"]
    cfg = C.override(C.load_file(ROOT / "configs" / "fashion_mnist_cpu.py"), sets)
    exp = build.experiment(cfg)
    assert exp.ds.name == "mnist" and exp.ds.shape == (1, 28, 28) and exp.ds.num_classes == 10
    out = jax.eval_shape(lambda x, c: exp.state.model(jnp.float32(0.5), x, **exp.cond(c)),
                         jnp.zeros(exp.ds.shape, jnp.float32), exp.ds.train_cond[0])
    assert out.shape == (1, 28, 28)
