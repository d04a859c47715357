"""Training end to end through the command (`sgm.run.main`, what main.py runs): outputs, exact
resume, clear errors, checkpoints."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgm import checkpoint as ckpt
from sgm import config as C
from sgm import build, parallel, run
from sgm.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"  # main.py's default config

TINY = ["train.steps=12", "train.batch_size=32", "train.log_every=4", "train.ckpt_every=4",
        "train.warmup=2", "model.width=16", "model.depth=1", "data.n_train=512", "data.n_test=64",
        "sample.num=32", "sample.steps=10", "likelihood.num=8", "likelihood.batch=8",
        "likelihood.rtol=1e-3", "likelihood.atol=1e-3", "train.eval_num=16"]


def run_main(tmp_path, *extra, name="run", mode="all", config=EIGHT):
    return run.main(config, workdir=tmp_path / name, mode=mode, progress=False,
                    sets=[*TINY, *extra])


def leaves(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_repeated_set_flags_accumulate(tmp_path):
    """`python main.py --set ... --set ...`: every --set is kept, in order, a later value wins."""
    sets = ["train.steps=7", "model.width=16", "train.lr=0.5", "train.steps=9"]
    cfg = C.override(C.load_file(EIGHT), sets)
    assert (cfg.train.steps, cfg.model.width, cfg.train.lr) == (9, 16, 0.5)
    wd = tmp_path / "wd"
    tiny = [s for s in TINY if s.split("=")[0] not in ("train.steps", "model.width")]
    argv = [sys.executable, str(ROOT / "main.py"), "--workdir", str(wd), "--mode", "train",
            "--no-progress", "--set", *tiny, "train.steps=7", "model.width=16", "--set",
            "train.lr=0.5", "--set", "train.steps=9"]
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT, timeout=600)
    written = json.loads((wd / "config.json").read_text())
    train, model = written["train"], written["model"]
    assert (train["steps"], model["width"], train["lr"]) == (9, 16, 0.5)
    assert ckpt.latest(wd / "checkpoints").name == "ckpt_000000009.npz"


@pytest.mark.slow
def test_end_to_end_writes_outputs(tmp_path, capsys):
    assert run_main(tmp_path) == 0
    wd = tmp_path / "run"
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["train"]["steps"] == 12 and cfg["data"]["name"] == "eight_gaussians"
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4, 8, 12]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert [p.name for p in ckpt.list_checkpoints(wd / "checkpoints")] == ["ckpt_000000008.npz",
                                                                          "ckpt_000000012.npz"]
    with np.load(wd / "samples.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (32, 2) and np.all(np.isfinite(f["samples"]))
    lik = json.loads((wd / "likelihood.json").read_text())
    assert np.isfinite(lik["nll"]) and lik["num"] == 8
    assert (wd / "figs" / "samples.png").stat().st_size > 0
    assert "test NLL" in capsys.readouterr().out
    # The finished run loads back for evaluation: its config, data and the last checkpoint.
    exp = build.load_run(wd)
    state = exp.state
    assert json.loads(C.to_json(exp.cfg)) == cfg and exp.ds.name == "eight_gaussians"
    assert int(state.step) == 12
    saved, _ = ckpt.load(wd / "checkpoints" / "ckpt_000000012.npz", state)
    pairs = zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(saved), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    with pytest.raises(CheckpointError, match="no config.json"):
        build.load_run(tmp_path)


LEARNED = ["sde.schedule=learned", "train.weighting=likelihood"]


@pytest.mark.parametrize("extra", [[], LEARNED], ids=["linear", "learned-schedule"])
@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path, extra):
    """Bit for bit, also with a learned noise schedule (whose arrays the checkpoint holds)."""
    assert run_main(tmp_path, *extra, name="straight", mode="train") == 0
    # Interrupted run: stop after the step-4 checkpoint, then rerun the same command.
    exp = build.experiment(C.override(C.load_file(EIGHT), TINY + extra))

    class Stop(Exception):
        pass

    def stop(rec):
        if rec["step"] == 8:
            raise Stop

    with pytest.raises(Stop):
        exp.train(exp.state, mesh=parallel.make_mesh(), ckpt_dir=tmp_path / "resumed" / "checkpoints",
                  on_log=stop)
    assert ckpt.latest(tmp_path / "resumed" / "checkpoints").name == "ckpt_000000004.npz"
    assert run_main(tmp_path, *extra, name="resumed", mode="train") == 0
    a = leaves(tmp_path / "straight" / "checkpoints" / "ckpt_000000012.npz")
    b = leaves(tmp_path / "resumed" / "checkpoints" / "ckpt_000000012.npz")
    assert a.keys() == b.keys()
    for k in a:
        if k != "__manifest__":
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("args,match", [
    (dict(sets=["train.stepz=3"]), "unknown config key 'train.stepz'"),
    (dict(sets=["train.steps=abc"]), "train.steps='abc' is not an integer"),
    (dict(sets=["train.steps=-5"]), "train.steps=-5 is invalid"),
    (dict(sets=["sde.beta_min=30"]), "beta_min < beta_max"),
    (dict(sets=["sde.kind=ve", "sde.sigma_min=60"]), "sigma_min < sigma_max"),
    (dict(sets=["sde.t0=0"]), "t0"),
    (dict(sets=["train.lr=inf"]), "train.lr=inf is invalid: expected a finite number"),
    (dict(sets=["sample.guidance=nan"]), "sample.guidance=nan is invalid"),
    (dict(sets=["train.seed=-1"]), "train.seed=-1 is invalid"),
    (dict(sets=["data.seed=-1"]), "data.seed=-1 is invalid"),
    (dict(sets=["model.param=v"]), "renamed: use model.prediction=v"),
    (dict(num_processes=2), "needs the coordinator's host:port"),
    (dict(coordinator="notahost", num_processes=2, process_id=0), "expected host:port"),
    (dict(coordinator="h:1234", num_processes=2, process_id=5), "process id 5 is invalid"),
    (dict(sets=["data.name=imagenet"]), "data.name='imagenet' is invalid"),
    (dict(sets=["sample.method=magic"]), "sample.method='magic' is invalid"),
    (dict(sets=["model.net=resnet"]), "model.net='resnet' is invalid"),
    (dict(sets=["data.name=mnist", "data.root=/nonexistent/mnist", "model.net=unet"]),
     "/nonexistent/mnist"),
    (dict(config_file="configs/nope.py"), "config file 'configs/nope.py' not found"),
    (dict(mode="sample"), "no checkpoint"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, match):
    wd = tmp_path / "wd"
    args = {"config_file": EIGHT, **args}
    code = run.main(args.pop("config_file"), workdir=wd, progress=False, **args)
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and err.startswith("error: ") and err.count("\n") == 1
    assert not wd.exists()


def test_dit_patch_error_is_clear(tmp_path, capsys):
    code = run.main(ROOT / "configs" / "digits.py", workdir=tmp_path / "w",
                    sets=["model.net=dit", "model.patch=3"])
    assert code == 2 and "patch" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_checkpoint_mismatch_and_corruption_are_reported(tmp_path):
    tree = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2), "key": jax.random.key(3)}
    path = ckpt.save(tmp_path, 7, tree, {"note": "x"})
    back, manifest = ckpt.load(path, tree)
    assert manifest["step"] == 7 and manifest["metadata"] == {"note": "x"}
    np.testing.assert_array_equal(back["w"], tree["w"])
    assert jnp.all(jax.random.key_data(back["key"]) == jax.random.key_data(tree["key"]))
    with pytest.raises(CheckpointError, match=r"\['w'\]"):
        ckpt.load(path, {"w": jnp.ones((4, 2)), "b": jnp.zeros(2), "key": jax.random.key(0)})
    bad = tmp_path / "ckpt_000000008.npz"
    bad.write_bytes(path.read_bytes()[: 100])
    with pytest.raises(CheckpointError, match="unreadable|corrupt"):
        ckpt.load(bad, tree)


def test_pickle_payload_is_rejected_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "ckpt_000000001.npz"
    np.savez(evil, __manifest__=np.array([Payload()], dtype=object), a0=np.array([Payload()], dtype=object))
    with pytest.raises(CheckpointError):
        ckpt.load(evil, {"w": jnp.ones(1)})
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        ckpt.read_manifest(raw)
    assert not marker.exists()


def test_checkpoints_are_pruned_and_latest_is_newest(tmp_path):
    tree = {"w": jnp.arange(3.0)}
    for s in (1, 2, 3):
        ckpt.save(tmp_path, s, eqx.tree_at(lambda t: t["w"], tree, tree["w"] * s), keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt_000000002.npz", "ckpt_000000003.npz"]
    back, _ = ckpt.load(ckpt.latest(tmp_path), tree)
    np.testing.assert_array_equal(back["w"], [0.0, 3.0, 6.0])


@pytest.mark.slow
def test_image_pipeline_end_to_end_with_unet(tmp_path):
    """digits: conditional UNet with attention and dropout, guidance, Hutchinson bits/dim."""
    code = run.main(ROOT / "configs" / "digits.py", workdir=tmp_path / "d", progress=False, sets=[
        "train.steps=4", "train.log_every=2", "train.batch_size=16", "model.base=8",
        "model.dropout=0.1", "sample.num=4", "sample.steps=4", "likelihood.num=4",
        "likelihood.batch=4", "likelihood.rtol=1e-2", "likelihood.atol=1e-2", "train.eval_num=8"])
    assert code == 0
    with np.load(tmp_path / "d" / "samples.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (4, 1, 8, 8) and f["samples"].dtype == np.uint8
        assert f["samples"].max() <= 16
        np.testing.assert_array_equal(f["cond"], [0, 1, 2, 3])
    lik = json.loads((tmp_path / "d" / "likelihood.json").read_text())
    assert np.isfinite(lik["bpd"]) and lik["bpd"] > 0


def test_ema_warmup_decays():
    from sgm.train import ema_decay

    assert [float(ema_decay(0.999, n)) for n in (0, 8, 80)] == pytest.approx([0.1, 0.5, 0.9])
    assert float(ema_decay(0.999, 10**6)) == pytest.approx(0.999)
    assert float(ema_decay(0.3, 5)) == pytest.approx(0.3)  # never above the configured decay
    assert float(ema_decay(0.999, 0, warmup=False)) == pytest.approx(0.999)


@pytest.mark.parametrize("warmup", [True, False])
def test_first_update_of_the_average_follows_the_warmup(warmup):
    """After one step the average is d * initial + (1 - d) * new weights, d = ema_decay(ema, 0)."""
    import optax

    from sgm import data, train

    model = eqx.nn.Linear(2, 1, key=jax.random.key(0))
    opt = optax.sgd(0.1)
    state = train.init_state(model, opt)
    init = jax.tree_util.tree_map(np.asarray, eqx.filter(model, eqx.is_inexact_array))
    step = train.make_step(lambda m, x, c, k: jnp.mean(jax.vmap(m)(x) ** 2), opt,
                           data.Preprocess(None, None, None), ema=0.999, ema_warmup=warmup)
    state, loss = step(state, jnp.ones((4, 2)), None, jax.random.key(1))
    d = 0.1 if warmup else 0.999
    new = eqx.filter(state.model, eqx.is_inexact_array)
    ema = eqx.filter(state.ema, eqx.is_inexact_array)
    for a, n, e in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(new),
                       jax.tree_util.tree_leaves(ema)):
        np.testing.assert_allclose(e, d * a + (1 - d) * np.asarray(n), rtol=1e-5, atol=1e-7)
