"""Experiment tracking (`sgm.track`, `train.log_to`) and progress bars.

The files each logger leaves are read back with readers that do not share its code: TensorBoard's
own EventAccumulator (which applies TensorBoard's purge rules, as its UI does) and a reader of W&B's
record log (`run-<id>.wandb`, a LevelDB-style log of protobuf records). A resumed run must continue
the same TensorBoard folder and W&B run with every step exactly once.
"""

import json
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

import sgm
import sgm.plot
from sgm import build, run, track
from sgm import config as C
from sgm.errors import ConfigError

EIGHT = Path(__file__).resolve().parents[1] / "configs" / "eight_gaussians.py"  # main.py's default
TINY = ["train.batch_size=32", "train.log_every=4", "train.ckpt_every=4", "train.warmup=2",
        "model.width=16", "model.depth=1", "data.n_train=256", "data.n_test=32", "train.eval_num=16",
        "sample.num=16", "sample.steps=8", "likelihood.num=8", "likelihood.batch=8",
        "likelihood.rtol=1e-2", "likelihood.atol=1e-2"]


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B with no network, no key and its settings/caches in the test's folder."""
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")


# ------------------------------------------------------------------------------------- readers


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar tag, as TensorBoard shows them (purged steps removed)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    out.update({t: [(e.step, None) for e in acc.Images(t)] for t in acc.Tags()["images"]})
    return out


def wandb_records(path):
    """The records of a W&B run file: a 7-byte header (":W&B", magic, version), then 32 KiB
    blocks of chunks, each (crc32 u32, length u16, kind u8) + data; kinds 1 full, 2 first,
    3 middle, 4 last."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def wandb_history(workdir):
    """{run id: [(step, {key: value}), ...]} over every offline run folder, in start order."""
    out = {}
    for folder in sorted((Path(workdir) / "wandb").glob("offline-run-*")):
        (run_file,) = folder.glob("run-*.wandb")
        for rec in wandb_records(run_file):
            if rec.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in rec.history.item}
                out.setdefault(run_file.stem[4:], []).append((int(row["_step"]), row))
    return out


def wandb_scalars(workdir, key):
    (runs,) = [wandb_history(workdir)]  # one run id for the whole work directory
    assert len(runs) == 1, f"a work directory logs to one W&B run, found {sorted(runs)}"
    rows = next(iter(runs.values()))
    return [(s, r[key]) for s, r in rows if key in r]


# -------------------------------------------------------------------------------- the trackers


def log_run(workdir, names, *, start, stop, offset):
    """Scalars at every step start+1..stop (loss = offset + step), held-out ones every 5 steps
    and a figure at the last step."""
    png = sgm.plot.sample_grid(np.random.default_rng(0).uniform(size=(4, 1, 6, 6)),
                               Path(workdir) / f"fig_{start}.png")
    with track.open_trackers(names, workdir, start=start, name="test") as t:
        for step in range(start + 1, stop + 1):
            t.scalars(step, {"loss": offset + step, "lr": 0.1, "skipped": 0})
            if step % 5 == 0:
                t.scalars(step, {"eval_nll": offset - step, "eval_loss": float("nan")})
        t.figure(stop, "samples", png)


def test_jsonl_and_tensorboard_resume_without_repeating_steps(tmp_path):
    """A run logged steps 1..10 but checkpointed at 5: the resumed one relogs 6..14. Each step is
    shown once, with the resumed run's value after step 5."""
    pytest.importorskip("tensorboardX")
    log_run(tmp_path, ["jsonl", "tensorboard"], start=0, stop=10, offset=0)
    log_run(tmp_path, ["jsonl", "tensorboard"], start=5, stop=14, offset=100)
    want = [(s, float(s if s <= 5 else 100 + s)) for s in range(1, 15)]
    tb = tensorboard_scalars(tmp_path / "tensorboard")
    assert tb["train/loss"] == want
    assert tb["eval/nll"] == [(5, -5.0), (10, 90.0)]
    assert "eval/loss" not in tb  # non-finite: not sent
    assert tb["figures/samples"] == [(14, None)]  # the first run's figure at 10 was purged
    rows = track.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows if "loss" in r] == want
    assert [r["eval_loss"] for r in rows if "eval_loss" in r] == [None, None]  # strict JSON


def test_wandb_offline_resume_continues_the_run(tmp_path, offline_wandb):
    """Without an API key W&B runs offline; the resumed process reopens the run whose id the
    work directory keeps and sends only the steps after those already sent."""
    log_run(tmp_path, ["wandb"], start=0, stop=10, offset=0)
    run_id = json.loads((tmp_path / "wandb.json").read_text())["id"]
    log_run(tmp_path, ["wandb"], start=5, stop=14, offset=100)
    assert json.loads((tmp_path / "wandb.json").read_text()) == {"id": run_id, "step": 14}
    runs = wandb_history(tmp_path)
    assert list(runs) == [run_id] and len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    steps = [s for s, _ in runs[run_id]]
    assert steps == list(range(1, 15))  # increasing, none twice across the two processes
    assert wandb_scalars(tmp_path, "train/loss") == [
        (s, s if s <= 10 else 100 + s) for s in range(1, 15)]
    assert wandb_scalars(tmp_path, "eval/nll") == [(5, -5), (10, -10)]
    assert [s for s, r in runs[run_id] if "figures/samples/path" in r] == [10, 14]


def test_wandb_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not track._wandb_online()
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)
    assert track._wandb_online()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert track._wandb_online()


def test_tags():
    assert [track.tag(k) for k in ("loss", "steps_per_s", "eval_nll", "test_bpd", "eval")] == [
        "train/loss", "train/steps_per_s", "eval/nll", "test/bpd", "train/eval"]


# ----------------------------------------------------------------------------- config and CLI


def test_log_to_from_the_command_line_and_config_files():
    cfg = build.check(C.override(C.Config(), ["train.log_to=jsonl,tensorboard"]))
    assert cfg.train.log_to == ("jsonl", "tensorboard")
    assert C.from_dict(json.loads(C.to_json(cfg))) == cfg
    assert C.TrainConfig(log_to=["jsonl"]).log_to == ("jsonl",)
    assert C.TrainConfig(log_to="wandb").log_to == ("wandb",)
    assert build.check(C.override(C.Config(), ["train.log_to=[]"])).train.log_to == ()
    with pytest.raises(ConfigError, match="expected names among jsonl, tensorboard, wandb"):
        build.check(C.override(C.Config(), ["train.log_to=jsonl,mlflow"]))


@pytest.mark.parametrize("name, module, extra", [("tensorboard", "tensorboardX", "tensorboard"),
                                                 ("wandb", "wandb", "wandb")])
def test_a_logger_not_installed_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path,
                                                             name, module, extra):
    real = track.importlib.util.find_spec
    monkeypatch.setattr(track.importlib.util, "find_spec",
                        lambda m, *a: None if m == module else real(m, *a))
    code = run.main(EIGHT, workdir=tmp_path / "wd", progress=False,
                    sets=[f"train.log_to=jsonl,{name}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f'pip install -e ".[{extra}]"' in err
    assert not (tmp_path / "wd").exists()  # refused before anything is written


@pytest.mark.slow
def test_main_resumes_tensorboard_and_wandb(tmp_path, offline_wandb, capsys):
    """The command end to end: 8 steps checkpointed at 4 and 8, the step-8 checkpoint lost (a crash
    after its metrics were logged), rerun to 12. TensorBoard and W&B show steps 4, 8, 12 once;
    the learning rate is logged; the samples figure reaches both at the last step."""
    pytest.importorskip("tensorboardX")
    wd = tmp_path / "wd"
    args = dict(workdir=wd, progress=False, density_grid=8)
    sets = [*TINY, "train.decay=constant",
            "train.log_to=jsonl,tensorboard,wandb"]  # (a schedule that does not depend on steps)
    assert run.main(EIGHT, **args, sets=[*sets, "train.steps=8"], mode="train") == 0
    (wd / "checkpoints" / "ckpt_000000008.npz").unlink()
    assert run.main(EIGHT, **args, sets=[*sets, "train.steps=12", "sample.method=ddim"]) == 0
    assert capsys.readouterr().err.count("%|") == 0  # --no-progress: no bar anywhere
    tb = tensorboard_scalars(wd / "tensorboard")
    assert [s for s, _ in tb["train/loss"]] == [4, 8, 12]
    assert [s for s, _ in tb["eval/loss"]] == [12]  # the first command's at step 8 is purged
    assert [s for s, _ in tb["test/nll"]] == [12]
    assert [s for s, _ in tb["figures/samples"]] == [12]
    assert [s for s, _ in tb["figures/density"]] == [12]  # 2-D data: the model's density
    wb_loss = wandb_scalars(wd, "train/loss")
    assert [s for s, _ in wb_loss] == [4, 8, 12]
    # W&B keeps the first command's step 8, TensorBoard the resumed one's: the same numbers
    np.testing.assert_allclose([v for _, v in wb_loss], [v for _, v in tb["train/loss"]], rtol=1e-6)
    lr = build.learning_rate(C.override(C.Config(), [*TINY, "train.steps=12", "train.decay=constant"]))
    np.testing.assert_allclose([v for _, v in tb["train/lr"]], [float(lr(s - 1)) for s in (4, 8, 12)],
                               rtol=1e-6)
    assert [s for s, _ in wandb_scalars(wd, "figures/samples/path")] == [12]
    rows = track.read_jsonl(wd / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [4, 8, 12]


@pytest.mark.slow
def test_only_process_0_tracks(monkeypatch, tmp_path):
    """Another process of a multi-host run opens no tracker and writes nothing."""
    monkeypatch.setattr(sgm.parallel, "is_main_process", lambda: False)
    monkeypatch.setattr(sgm.parallel, "agree", lambda ok, what: None)
    monkeypatch.setattr(sgm.parallel, "barrier", lambda name: None)
    opened = []
    monkeypatch.setattr(track, "open_trackers", lambda *a, **k: opened.append(a))
    wd = tmp_path / "wd"
    assert run.main(EIGHT, workdir=wd, mode="train", progress=False,
                    sets=[*TINY, "train.steps=4"]) == 0
    assert opened == [] and not wd.exists()


# ---------------------------------------------------------------------------------- progress


@pytest.mark.slow
def test_sampling_and_likelihood_progress(capsys):
    """A bar follows the sampler's steps and the likelihood's batches; without a hook the library
    prints nothing."""
    sde = sgm.VPSDE()
    score = sgm.GaussianMixture([1.0], [[0.0, 0.0]], [1.0]).score(sde)
    key = jax.random.key(0)
    sgm.sample(score, sde, (2,), key=key, num=4, method="ddim", steps=6)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    seen = []
    settings = sgm.SamplerSettings(progress=lambda done, total: seen.append((done, total)))
    x, _ = sgm.sample(score, sde, (2,), key=key, num=4, method="ddim", steps=6, settings=settings)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert max(seen) == (6, 6)
    with track.Bar("sample", unit="step") as bar:
        x, _ = sgm.sample(score, sde, (2,), key=key, num=4, method="ddim", steps=6,
                          settings=sgm.SamplerSettings(progress=bar))
        jax.block_until_ready(x)
        jax.effects_barrier()
        assert (bar.bar.n, bar.bar.total) == (6, 6)
    assert "6/6" in capsys.readouterr().err

    pre = sgm.data.Preprocess.fit(np.zeros((4, 2)), levels=None, standardize=False)
    seen = []
    sgm.evaluate.heldout_likelihood(score_model(score, sde), pre, np.zeros((5, 2)), {},
                                    key=key, batch=2, rtol=1e-3, atol=1e-3,
                                    progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]


def score_model(score, sde):
    """A closed-form score with the `.sde` the evaluation reads."""
    import equinox as eqx

    class Model(eqx.Module):
        sde: object

        def __call__(self, t, x):
            return score(t, x)

    return Model(sde)


def test_bar_only_moves_forwards():
    with track.Bar("x", 10, tick=0.01) as bar:
        for done in (3, 1, 7.6, 5):
            bar(done)
        assert bar.bar.n == 7
        bar(2, 20)
        assert (bar.bar.n, bar.bar.total) == (7, 20)
    assert not bar.timer.is_alive()
