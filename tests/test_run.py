"""The phases of a command (`sgm.run`), each on its own, and the command: every check once."""

import contextlib
import json
import shutil
import signal
import types
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgm import build, parallel, run, track, train
from sgm import checkpoint as ckpt
from sgm.conditioning import Conditioning
from sgm.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"
TINY = ["train.steps=8", "train.batch_size=32", "train.log_every=4", "train.ckpt_every=4",
        "train.eval_every=4", "train.warmup=2", "model.width=16", "model.depth=1",
        "data.n_train=256", "data.n_test=32", "sample.num=16", "sample.steps=8",
        "likelihood.num=8", "likelihood.batch=8", "likelihood.rtol=1e-2", "likelihood.atol=1e-2",
        "train.eval_num=8"]


def tiny(*extra, ckpt_dir=None):
    return build.experiment(build.load(EIGHT, [*TINY, *extra]), ckpt_dir=ckpt_dir)


class Recorder(track.Tracker):
    """A tracker that keeps what it is given."""

    takes_figures = True

    def __init__(self):
        self.scalar_rows, self.figures = [], []

    def scalars(self, step, values):
        self.scalar_rows.append({"step": step, **values})

    def figure(self, step, name, path):
        self.figures.append((step, name, path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny experiment, trained by `train_phase` (8 steps), and what the phase returned (no
    metrics.jsonl: the training figure is drawn from the phase's own records)."""
    wd = tmp_path_factory.mktemp("trained")
    exp = tiny("train.log_to=[]")
    rec = Recorder()
    state, done = run.train_phase(exp, mesh=parallel.make_mesh(), workdir=wd, trackers=rec,
                                  earlier_seconds=100.0)
    return exp, state, done, rec, wd


# ------------------------------------------------------------------------------ the command


def test_command_loads_checks_and_builds_once(tmp_path, monkeypatch, capsys):
    """From the arguments to the phases the builder is entered once: one load, one config check,
    one batch check, one build; then config.json, a checkpoint, the figure and the summary."""
    calls = []

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*a, **k):
            calls.append(name)
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("load", "check", "experiment", "resume"):
        counted(build, name)
    counted(parallel, "check_batch")
    wd = tmp_path / "wd"
    sets = [*TINY, "train.steps=4", "train.eval_every=0"]
    assert run.command(EIGHT, sets=sets, mode="train", workdir=wd, progress=False) == 0
    assert sorted(calls) == ["check", "check_batch", "experiment", "load", "resume"]
    cfg = build.load(EIGHT, sets)
    assert (wd / "config.json").read_text() == json.dumps(build.to_dict(cfg), indent=2) + "\n"
    assert [p.name for p in ckpt.list_checkpoints(wd / "checkpoints")] == ["ckpt_000000004.npz"]
    assert (wd / "figs" / "training.png").is_file()
    summary = json.loads((wd / "summary.json").read_text())
    assert list(summary) == ["config", "dataset", "entropy", "devices", "train_seconds", "steps",
                             "eval_loss"]
    assert summary["steps"] == 4 and summary["devices"] == len(jax.devices())


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _nan_parameters(path):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for k, v in arrays.items():
        if k != "__manifest__" and v.dtype.kind == "f":
            arrays[k] = np.full_like(v, np.nan)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _step(path, step):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    manifest = json.loads(arrays["__manifest__"].tobytes())
    arrays["__manifest__"] = np.frombuffer(json.dumps({**manifest, "step": step}).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


FINISHED = [*TINY, "train.steps=4", "train.eval_every=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (train, sample, likelihood; no density figure)."""
    wd = tmp_path_factory.mktemp("finished") / "wd"
    assert run.command(EIGHT, sets=FINISHED, workdir=wd, progress=False, density_grid=0) == 0
    return wd


@pytest.mark.parametrize("mode, sets, damage, error, match", [
    ("all", ["train.steps=2"], None, ConfigError, r"is at step 4, past train.steps=2: set "),
    ("sample", [], _nan_parameters, CheckpointError, r"holds NaN or inf"),
    ("likelihood", [], _nan_parameters, CheckpointError, r"holds NaN or inf"),
    ("train", ["train.steps=8"], _nan_parameters, CheckpointError, r"holds NaN or inf"),
    ("all", [], lambda p: _step(p, -5), CheckpointError, r"damaged manifest"),
])
def test_a_refused_command_leaves_a_finished_run_byte_identical(finished, tmp_path, mode, sets,
                                                               damage, error, match):
    wd = tmp_path / "wd"
    shutil.copytree(finished, wd)
    if damage is not None:
        damage(ckpt.latest(wd / "checkpoints"))
    before = _files(wd)
    with pytest.raises(error, match=match):
        run.command(EIGHT, sets=[*FINISHED, *sets], mode=mode, workdir=wd, progress=False,
                    density_grid=0)
    assert _files(wd) == before


def test_rerunning_a_finished_run_logs_no_step_twice(finished, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(finished, wd)
    assert run.command(EIGHT, sets=FINISHED, workdir=wd, progress=False, density_grid=0) == 0
    rows = track.read_jsonl(wd / "metrics.jsonl")
    keys = [(r["step"], k) for r in rows for k in r if k != "step"]
    assert len(keys) == len(set(keys)) and ("eval_loss" in {k for _, k in keys})


def test_main_maps_errors_to_exit_codes(tmp_path, monkeypatch, capsys):
    assert run.main(EIGHT, sets=["train.stepz=3"], workdir=tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'train.stepz'") and err.count("\n") == 1
    assert run.main(EIGHT, mode="evaluate", workdir=tmp_path / "a") == 2
    assert "mode='evaluate' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    stops = {train.Interrupted("stopped by signal 15 while sampling; ..."): 130,
             KeyboardInterrupt(): 130, OSError(28, "No space left on device", "x.png"): 2}
    for exc, code in stops.items():
        def raise_(*a, **k):
            raise exc

        monkeypatch.setattr(run, "command", raise_)
        assert run.main(EIGHT) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1
    assert err == ("error: No space left on device (x.png); every file already written is "
                   "complete.\n")


def test_stop_if_signalled():
    run.stop_if_signalled(None, "now")
    run.stop_if_signalled({"stop": None}, "now")
    with pytest.raises(train.Interrupted, match="stopped by signal 2 while sampling; every file"):
        run.stop_if_signalled({"stop": signal.SIGINT}, "while sampling")


# ----------------------------------------------------------------------- the work directory


def test_prepare_workdir_writes_the_config_and_holds_the_lock(tmp_path):
    exp, wd = tiny(), tmp_path / "wd"
    (wd / "checkpoints").mkdir(parents=True)
    stale = wd / "checkpoints" / ".tmp_ckpt_000000002_abc.npz"
    stale.write_bytes(b"half a checkpoint")
    with contextlib.ExitStack() as stack:
        assert run.prepare_workdir(exp, wd, stack=stack) is exp  # no checkpoint: nothing re-read
        written = (wd / "config.json").read_text()
        assert written == json.dumps(build.to_dict(exp.cfg), indent=2) + "\n"
        assert (wd / "figs").is_dir() and not stale.exists()
        with pytest.raises(CheckpointError, match="is in use by process"):
            ckpt.lock_workdir(wd)
    ckpt.lock_workdir(wd).close()  # released with the stack


def test_prepare_workdir_rereads_a_checkpoint_written_meanwhile(tmp_path, monkeypatch):
    """Another command's checkpoint, written after the build: its state is read, nothing is
    built or checked again; a checkpoint of another model is refused."""
    wd = tmp_path / "wd"
    exp = tiny(ckpt_dir=wd / "checkpoints")
    other = tiny("model.width=8")
    assert exp.checkpoint is None
    later = eqx.tree_at(lambda s: s.step, exp.state, jnp.asarray(6, jnp.int32))
    path = ckpt.save(wd / "checkpoints", 6, later, {"config": build.to_dict(exp.cfg)})
    for name in ("load", "check", "experiment"):
        monkeypatch.setattr(build, name, lambda *a, **k: pytest.fail("built again"))
    with contextlib.ExitStack() as stack:
        again = run.prepare_workdir(exp, wd, stack=stack)
    assert again.checkpoint == path and int(again.state.step) == 6 and again.ds is exp.ds
    with pytest.raises(CheckpointError, match="was trained with model.width=16, not 8"):
        build.resume(other, wd / "checkpoints")  # the field that differs, before any shape
    path.unlink()  # gone meanwhile: a new state
    fresh = build.resume(again, wd / "checkpoints")
    assert fresh.checkpoint is None and int(fresh.state.step) == 0
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        build.resume(again, wd / "checkpoints", need_checkpoint=True)


def test_prepare_workdir_on_another_process_writes_nothing(tmp_path, monkeypatch):
    agreed = []
    monkeypatch.setattr(parallel, "agree", lambda ok, what: agreed.append(ok))
    exp, wd = tiny(), tmp_path / "wd"
    with contextlib.ExitStack() as stack:
        assert run.prepare_workdir(exp, wd, stack=stack, main_process=False) is exp
    assert agreed == [True] and not wd.exists()
    assert isinstance(run.open_trackers(exp, wd, main_process=False), track.Trackers)
    assert not wd.exists()


def test_prepare_workdir_that_cannot_be_written_is_one_sentence(tmp_path, monkeypatch):
    agreed = []
    monkeypatch.setattr(parallel, "agree", lambda ok, what: agreed.append(ok))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write to work directory"):
        with contextlib.ExitStack() as stack:
            run.prepare_workdir(tiny(), blocker / "wd", stack=stack)
    assert agreed == [False]  # the other processes are told


def test_experiment_checks_the_batch_against_the_mesh():
    three = types.SimpleNamespace(devices=np.empty(3))  # what check_batch reads of a mesh
    with pytest.raises(ConfigError, match="train.batch_size=32 does not divide over the 3 devices"):
        build.experiment(build.load(EIGHT, TINY), mesh=three, checked=True)


# ----------------------------------------------------------------------------------- phases


def test_train_phase_trains_logs_and_draws(trained):
    exp, state, done, rec, wd = trained
    assert int(state.step) == 8 and int(exp.state.step) == 0  # the experiment's state is kept
    assert list(done) == ["train_seconds", "steps", "eval_loss", "best_step", "best_eval_nll",
                          "stopped_early"] and done["steps"] == 8 and not done["stopped_early"]
    assert done["train_seconds"] > 100.0  # the earlier commands' seconds added
    assert np.isfinite(done["eval_loss"])
    loss_rows = [r for r in rec.scalar_rows if "loss" in r]
    assert [r["step"] for r in loss_rows] == [4, 8]
    lr = build.learning_rate(exp.cfg)
    assert [r["lr"] for r in loss_rows] == [float(lr(3)), float(lr(7))]
    evals = [r for r in rec.scalar_rows if "eval_nll" in r]  # on the validation split
    assert [r["step"] for r in evals] == [4, 8] and all(np.isfinite(r["eval_nll"]) for r in evals)
    assert rec.scalar_rows[-1] == evals[-1] and evals[-1]["eval_loss"] == done["eval_loss"]
    assert [p.name for p in ckpt.list_checkpoints(wd / "checkpoints")] == ["ckpt_000000004.npz",
                                                                          "ckpt_000000008.npz"]
    best = min(evals, key=lambda r: r["eval_nll"])  # the best validation NLL is kept
    assert (done["best_step"], done["best_eval_nll"]) == (best["step"], best["eval_nll"])
    assert [p.name for p in ckpt.list_checkpoints(wd / "checkpoints" / "best")] == [
        f"ckpt_{best['step']:09d}.npz"]
    assert (wd / "figs" / "training.png").is_file()


def test_sample_phase_writes_samples_and_their_figure(trained, tmp_path, capsys):
    exp, state, *_ = trained
    rec = Recorder()
    out = run.sample_phase(exp, state.ema, step=8, mesh=parallel.make_mesh(), workdir=tmp_path,
                           trackers=rec)
    assert list(out) == ["sample_seconds", "sample_nfe"] and out["sample_nfe"] == 9
    with np.load(tmp_path / "samples.npz", allow_pickle=False) as f:
        assert f.files == ["samples"] and f["samples"].shape == (16, 2)
    assert rec.figures == [(8, "samples", tmp_path / "figs" / "samples.png")]
    assert (tmp_path / "figs" / "samples.png").is_file()
    assert capsys.readouterr().out.startswith("samples: 16 with em, nfe 9, ")


def test_sample_phase_writes_nothing_when_signalled_or_not_process_0(trained, tmp_path, capsys):
    exp, state, *_ = trained
    mesh = parallel.make_mesh()
    with pytest.raises(train.Interrupted, match="stopped by signal 15 while sampling"):
        run.sample_phase(exp, state.ema, step=8, mesh=mesh, workdir=tmp_path,
                         flag={"stop": signal.SIGTERM})
    out = run.sample_phase(exp, state.ema, step=8, mesh=mesh, workdir=tmp_path, main_process=False)
    assert out["sample_nfe"] == 9 and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""


def test_likelihood_phase_writes_the_likelihood_and_the_density(trained, tmp_path, capsys):
    exp, state, *_ = trained
    rec = Recorder()
    out = run.likelihood_phase(exp, state.ema, step=8, mesh=parallel.make_mesh(), workdir=tmp_path,
                               trackers=rec, density_grid=4)
    assert list(out) == ["likelihood", "density_seconds"]
    lik = json.loads((tmp_path / "likelihood.json").read_text())
    assert lik == out["likelihood"] and lik["num"] == 8 and np.isfinite(lik["nll"])
    assert {"true_nll", "gap", "gap_stderr", "entropy", "seconds", "nfe"} <= set(lik)
    assert lik["gap"] == pytest.approx(lik["nll"] - lik["true_nll"], abs=1e-9)
    assert 0 < lik["gap_stderr"] and "draws" not in lik
    line = capsys.readouterr().out
    assert lik["solver_check_num"] == 8 and lik["solver_error"] >= 0  # min(num, 20) points
    assert line.startswith(f"test NLL on 8 points: {lik['nll']:.4f} ± {lik['nll_stderr']:.4f} "
                           f"(test points) ± {lik['solver_error']:.1e} (solver) nats "
                           f"(true entropy 2.8316, "
                           f"exact density on these points {lik['true_nll']:.4f}, paired gap "
                           f"{lik['gap']:.4f} ± {lik['gap_stderr']:.4f}) = "
                           f"{lik['nll_per_dim']:.4f} nats/dim, nfe ")
    with np.load(tmp_path / "likelihood.npz") as f:  # each point's log-likelihood, data units
        assert f["log_likelihood"].shape == (8,)
        assert -f["log_likelihood"].mean() == pytest.approx(lik["nll"], abs=1e-5)
    assert rec.scalar_rows == [{"step": 8, "test_nll": lik["nll"], "test_bpd": lik["bpd"]}]
    assert rec.figures == [(8, "density", tmp_path / "figs" / "density.png")]
    none = run.likelihood_phase(exp, state.ema, step=8, mesh=parallel.make_mesh(),
                                workdir=tmp_path / "b", density_grid=0, main_process=False)
    assert list(none) == ["likelihood"] and not (tmp_path / "b").exists()


def test_signal_during_the_density_grid_stops_it_before_the_figure(trained, tmp_path):
    exp, state, *_ = trained
    calls = []

    class Flag(dict):  # the signal arrives while the grid is being solved
        def __getitem__(self, k):
            calls.append(k)
            return signal.SIGTERM if len(calls) > 1 else None

    with pytest.raises(train.Interrupted, match="signal 15 while drawing the model density"):
        run.density_figure(exp, state.ema, mesh=parallel.make_mesh(), lik={"num": 8}, n=4,
                           workdir=tmp_path, flag=Flag(stop=None))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("grid", [-1, run.DENSITY_GRID_LIMIT + 1, 2.5])
def test_density_grid_out_of_range_is_refused_before_anything_is_written(tmp_path, grid):
    with pytest.raises(ConfigError, match=f"density_grid={grid!r} is invalid: expected 0"):
        run.command(EIGHT, sets=TINY, workdir=tmp_path / "w", density_grid=grid)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("text", ["[1, 2]", '{"train_seconds": 3', "\xff\xfe"])
def test_damaged_summary_is_one_sentence_and_kept(tmp_path, text):
    path = tmp_path / "summary.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match="summary.json is damaged .* remove it to start"):
        run.read_summary(tiny(), tmp_path)
    assert path.read_bytes() == text.encode("latin-1")


def test_summary_keeps_the_earlier_commands_entries(tmp_path):
    exp = tiny()
    assert run.read_summary(exp, tmp_path) == {"config": "eight_gaussians",
                                               "dataset": "eight_gaussians",
                                               "entropy": exp.ds.entropy}
    run.write_summary(tmp_path, {"config": "old", "train_seconds": 5.0}, main_process=False)
    assert not (tmp_path / "summary.json").exists()
    run.write_summary(tmp_path, {"config": "old", "train_seconds": 5.0})
    assert run.read_summary(exp, tmp_path) == {"config": "eight_gaussians", "train_seconds": 5.0,
                                               "dataset": "eight_gaussians",
                                               "entropy": exp.ds.entropy}


# ---------------------------------------------------------------------------------- figures


def test_samples_figure_of_each_kind_of_data(tmp_path):
    rng = np.random.default_rng(0)
    points = types.SimpleNamespace(shape=(2,), test=rng.normal(size=(50, 2)), log_prob=None)
    path = run.samples_figure(points, rng.normal(size=(20, 2)), tmp_path / "p.png", "points")
    assert path == tmp_path / "p.png" and path.is_file()
    digits = types.SimpleNamespace(shape=(1, 8, 8), levels=17, num_classes=10,
                                   test=np.zeros((4, 1, 8, 8), np.uint8))
    x = rng.integers(0, 17, size=(20, 1, 8, 8)).astype(np.uint8)
    assert run.samples_figure(digits, x, tmp_path / "d.png", "digits", np.arange(20) % 10).is_file()
    fields = types.SimpleNamespace(shape=(1, 8, 8), levels=None, num_classes=None,
                                   test=rng.normal(size=(4, 1, 8, 8)))
    x = rng.normal(size=(16, 1, 8, 8))
    assert run.samples_figure(fields, x, tmp_path / "f.png", "fields", x[:, :, :4, :4]).is_file()
    assert run.samples_figure(fields, x, tmp_path / "g.png", "fields", rng.normal(size=(16, 3)))
    other = types.SimpleNamespace(shape=(5,))
    assert run.samples_figure(other, rng.normal(size=(4, 5)), tmp_path / "o.png", "o") is None
    assert not (tmp_path / "o.png").exists()


def test_label_conditioned_samples_are_drawn_a_class_a_row(tmp_path, monkeypatch):
    """Samples drawn for labels 0, 1, 2, ... cycling: row i of the grid holds label i's."""
    from sgm import plot

    seen = {}
    monkeypatch.setattr(plot, "sample_grid", lambda imgs, path, *, nrow, title, **kw:
                        seen.update(imgs=np.asarray(imgs), nrow=nrow, title=title) or path)
    ds = types.SimpleNamespace(shape=(1, 4, 4), levels=None, num_classes=3,
                               test=np.zeros((2, 1, 4, 4)))
    labels = np.arange(14) % 3  # 5, 5 and 4 of each: four a row
    x = np.broadcast_to(labels[:, None, None, None], (14, 1, 4, 4)).astype(np.float64)
    run.samples_figure(ds, x, tmp_path / "s.png", "s", labels)
    assert seen["nrow"] == 4 and "row i: label i" in seen["title"]
    np.testing.assert_array_equal(seen["imgs"][:, 0, 0, 0], np.repeat([0, 1, 2], 4))


@pytest.mark.parametrize("kind", ["label", "param", "image", None])
def test_reverse_figure_shows_eight_frames_and_each_condition(tmp_path, monkeypatch, kind):
    """Frames equally spaced in log-SNR, in data units; each sample's condition as its label."""
    import sgm
    import sgm.plot

    rng = np.random.default_rng(1)
    times = np.linspace(1.0, 1e-3, 40)
    path = rng.normal(size=(40, 8, 1, 4, 4))
    cond = {"label": np.arange(8), "param": np.round(rng.normal(size=(8, 2)), 2),
            "image": rng.normal(size=(8, 1, 4, 4)), None: None}[kind]
    exp = types.SimpleNamespace(
        ds=types.SimpleNamespace(levels=None, test=rng.normal(size=(5, 1, 4, 4))),
        conditioning=Conditioning(kind, num_classes=8 if kind == "label" else None), preprocess=types.SimpleNamespace(
            inverse=lambda x: 2 * x), cfg=types.SimpleNamespace(
            name="stub", sample=types.SimpleNamespace(method="em")),
        samples=lambda model, num, mesh, return_path, cache_dir: (
            None, {"path": path, "path_t": times}, cond))
    model = types.SimpleNamespace(sde=sgm.VPSDE())
    drawn = {}

    def reverse_process(frames, t, out, **kw):
        drawn.update(frames=frames, times=t, **kw)
        return out

    if kind is not None:  # one real drawing; the others only record what would be drawn
        monkeypatch.setattr(sgm.plot, "reverse_process", reverse_process)
    out = run.reverse_figure(exp, model, mesh=None, path=tmp_path / "r.png")
    assert out == tmp_path / "r.png"
    if kind is None:
        assert out.is_file()
        return
    idx = sgm.plot.pick_frames(np.asarray(model.sde.log_snr(times)), 8)
    np.testing.assert_array_equal(drawn["frames"], 2 * path[idx])
    np.testing.assert_array_equal(drawn["times"], times[idx])
    assert drawn["title"] == "stub: reverse process (em)"
    if kind == "label":
        assert drawn["conditions"] == [f"label {i}" for i in range(8)]
    elif kind == "param":
        assert drawn["conditions"] == ["(" + ", ".join(f"{v:.2g}" for v in c) + ")" for c in cond]
    else:
        assert drawn["conditions"] is cond
    assert run.reverse_figure(exp, model, mesh=None, path=tmp_path / "s.png",
                              main_process=False) is None


def test_many_samples_are_drawn_in_chunks_with_a_stop_between(trained, monkeypatch):
    exp, state, *_ = trained
    monkeypatch.setattr(build, "SAMPLE_CHUNK", 8)
    calls = []
    x, info, cond = exp.samples(state.ema, num=20, between=lambda: calls.append(1))
    assert x.shape == (20, 2) and np.isfinite(x).all() and cond is None and len(calls) == 2
    assert not np.allclose(x[:4], x[8:12])  # each chunk its own key
    with pytest.raises(train.Interrupted, match="while sampling"):
        exp.samples(state.ema, num=20, between=lambda: run.stop_if_signalled(
            {"stop": signal.SIGTERM}, "while sampling"))


def test_samples_beyond_memory_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "memory_bytes", lambda: 2**30)
    run.check_sample_memory(tiny("sample.num=30000000"), memory=2**32)  # 229 MiB of 4 GiB: fine
    with pytest.raises(ConfigError, match=r"sample.num=40000000 samples of shape \(2,\) need 0.3 "
                                          r"GiB as float32, more than a quarter of this machine's "
                                          r"1.0 GiB: draw fewer"):
        run.command(EIGHT, sets=[*TINY, "sample.num=40000000"], workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_resuming_on_changed_data_is_refused_before_anything_is_written(tmp_path):
    """The standardisation a model was trained with is kept in its checkpoints: a data file whose
    contents were replaced gives another one and is refused."""
    path, wd = tmp_path / "mine.npz", tmp_path / "wd"
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    np.savez(path, x=x)
    sets = [*TINY, "train.steps=4", "train.eval_every=0", "data.name=array", f"data.root={path}"]
    assert run.command(EIGHT, sets=sets, mode="train", workdir=wd, progress=False) == 0
    before = _files(wd)
    np.savez(path, x=3 * x + 1)
    with pytest.raises(CheckpointError, match=r"the training data changed since checkpoint .*"
                                              r"ckpt_000000004.npz was written: .* restore"):
        run.command(EIGHT, sets=sets, mode="sample", workdir=wd, progress=False)
    assert _files(wd) == before
    np.savez(path, x=x)  # the same data again: resumed
    assert run.command(EIGHT, sets=[*sets, "train.steps=6"], mode="train", workdir=wd,
                       progress=False) == 0
