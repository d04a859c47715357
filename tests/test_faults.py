"""Damaged files and out-of-range inputs: each is refused with one sentence before anything is
written, or handled so that nothing is lost (metrics that survive a cut-short append)."""

import contextlib
import errno
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgm
from sgm import checkpoint as ckpt
from sgm import config as C
from sgm import build, data, parallel, quality, quality_cli, run, track
from sgm.conditioning import Conditioning
from sgm.errors import (CheckpointError, ConfigError, CorruptCheckpointError, DataError,
                        NumericalError, SGMError)
from sgm.sde import VPSDE
from sgm.npz import oversized

# ------------------------------------------------------------------ one validation pass, every bound


@pytest.mark.parametrize("sets, match", [
    (["likelihood.atol=-1"], "likelihood.atol=-1.0 is invalid"),
    (["likelihood.atol=0"], "likelihood.atol=0.0 is invalid: expected a positive absolute"),
    (["likelihood.rtol=1e-14", "likelihood.atol=1e-14"],
     "likelihood.rtol=1e-14 is invalid: expected a relative tolerance of at least"),
    (["sample.steps=3000000000"], "sample.steps=3000000000 is invalid: expected a positive integer"),
    (["sample.steps=1000000000000"], "sample.steps=1000000000000 is invalid"),
    (["train.seed=18446744073709551616"], "train.seed=18446744073709551616 is invalid"),
    (["sample.seed=18446744073709551616"], "sample.seed=18446744073709551616 is invalid"),
    (["train.steps=4294967296"], "train.steps=4294967296 is invalid"),
    (["sample.num=1000000000000"], "sample.num=1000000000000 is invalid"),
    (["model.time_scale=0"], "model.time_scale=0.0 is invalid: expected a positive number"),
    (["model.time_scale=nan"], "model.time_scale=nan is invalid"),
])
def test_every_numeric_bound_is_checked_with_the_field_named(sets, match):
    cfg = C.load_file(EIGHT)
    with pytest.raises(ConfigError, match=match):
        C.validate(C.override(cfg, sets))


def test_bounds_leave_ordinary_values_alone():
    """Values inside every bound, the largest ones near it, are accepted and kept as given."""
    cfg = C.load_file(EIGHT)
    sets = ["likelihood.rtol=1e-6", "likelihood.atol=1e-7", "sample.steps=100000",
            "train.seed=4294967296"]
    cfg = C.override(cfg, sets)
    assert C.validate(cfg) is cfg
    assert (cfg.likelihood.rtol, cfg.likelihood.atol, cfg.sample.steps, cfg.train.seed) == (
        1e-6, 1e-7, 100000, 4294967296)


# ------------------------------------------------------------------ appends that survive faults


def _write(path, text):
    path.write_text(text)
    return path


def test_half_written_last_metrics_line_is_dropped_on_resume(tmp_path):
    path = _write(tmp_path / "metrics.jsonl", '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
                                              '{"step": 3, "lo')
    assert [r["step"] for r in track.read_jsonl(path)] == [1, 2]
    log = track.Jsonl(path, start=3)
    log.scalars(3, {"loss": 1.0})
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
                                                    {"step": 3, "loss": 1.0}]


def test_last_record_without_its_newline_is_kept_and_completed(tmp_path):
    path = _write(tmp_path / "metrics.jsonl", '{"step": 1, "loss": 2.0}')
    track.Jsonl(path, start=5).scalars(2, {"loss": 1.0})
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n'


def test_damage_before_the_last_line_is_one_sentence(tmp_path):
    path = _write(tmp_path / "metrics.jsonl", '{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(SGMError, match="line 2 is not a metrics record"):
        track.Jsonl(path, start=5)
    assert path.read_text() == '{"step": 1}\nnot json\n{"step": 2}\n'


def test_no_value_is_logged_twice_at_one_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = track.Jsonl(path, start=0)
    log.scalars(4, {"loss": 1.0})
    log.scalars(4, {"eval_loss": 2.0})
    for _ in range(3):  # a finished run's command rerun: its final records again
        again = track.Jsonl(path, start=4)
        again.scalars(4, {"eval_loss": 2.0, "test_nll": 3.0})
    rows = track.read_jsonl(path)
    assert rows == [{"step": 4, "loss": 1.0}, {"step": 4, "eval_loss": 2.0},
                    {"step": 4, "test_nll": 3.0}]


# ------------------------------------------------------------------ damaged checkpoints


def _tree():
    return {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}


def test_nonfinite_parameters_are_damage(tmp_path):
    path = ckpt.save(tmp_path, 60, {"w": jnp.full((3, 2), jnp.nan), "b": jnp.zeros(2)})
    with pytest.raises(CorruptCheckpointError, match=r"array .*w.* holds NaN or inf"):
        ckpt.load(path, _tree())


def _rewrite_manifest(path, manifest):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["__manifest__"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("change", [
    lambda m: [1, 2],
    lambda m: {k: v for k, v in m.items() if k != "leaves"},
    lambda m: {**m, "metadata": [1]},
    lambda m: {**m, "leaves": [1, 2]},
    lambda m: {**m, "step": -5},
    lambda m: {**m, "step": "60"},
])
def test_manifest_of_the_wrong_structure_is_damage(tmp_path, change):
    path = ckpt.save(tmp_path, 60, _tree())
    _rewrite_manifest(path, change(ckpt.read_manifest(path)))
    with pytest.raises(CorruptCheckpointError, match="damaged manifest"):
        ckpt.load(path, _tree())


def _npz_claiming(path, shape, key="x"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    buf.write(b"\0" * 64)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{key}.npy", buf.getvalue())
    return path


def test_array_headers_are_checked_against_the_file_size(tmp_path):
    np.savez(tmp_path / "fine.npz", x=np.zeros((4, 2)), y=np.arange(3))
    np.save(tmp_path / "fine.npy", np.zeros(5))
    assert oversized(tmp_path / "fine.npz") is None and oversized(tmp_path / "fine.npy") is None
    assert oversized(_npz_claiming(tmp_path / "big.npz", (10**11, 2))) == "x"
    with pytest.raises(DataError, match="claims more data than the file holds"):
        data.load("array", root=tmp_path / "big.npz")
    with pytest.raises(CorruptCheckpointError, match="claims more data than the file holds"):
        ckpt.read_manifest(_npz_claiming(tmp_path / "ckpt_000000005.npz", (10**11, 2), "a0"))


# ------------------------------------------------------------------ a user's arrays


@pytest.mark.parametrize("arrays, match", [
    (dict(labels=np.array([10**8] + [0] * 19)), r"holds label 100000000 among 20 samples"),
    (dict(labels=np.array([2**32 + 1] + [0] * 19, dtype=np.int64)), "holds label 4294967297"),
    (dict(labels=np.array([2**31] + [0] * 19, dtype=np.int64)), "holds label 2147483648"),
    (dict(x=np.full((20, 2), 1e300)), r"\(x\) holds values beyond float32's range"),
    (dict(params=np.full((20, 1), -1e300)), r"\(params\) holds values beyond float32's range"),
    (dict(params=np.zeros((20, 0))), r"params.* has shape \(20, 0\): expected .* P >= 1"),
])
def test_labels_and_values_that_do_not_fit_are_refused(tmp_path, arrays, match):
    path = tmp_path / "mine.npz"
    np.savez(path, **{"x": np.zeros((20, 2)), **arrays})
    with pytest.raises(DataError, match=match):
        data.load("array", root=path)


# ------------------------------------------------------------------ config files and the environment


@pytest.mark.parametrize("body, match", [
    ('Config(data={"name": "moons"})', r"sets data=\{'name': 'moons'\}: expected DataConfig"),
    ("Config(sample=None)", "sets sample=None: expected SampleConfig"),
])
def test_config_sections_of_the_wrong_type_are_one_sentence(tmp_path, body, match):
    path = tmp_path / "c.py"
    path.write_text(f"from sgm.config import *\nconfig = {body}\n")
    with pytest.raises(ConfigError, match=match):
        C.load_file(path)


def test_a_name_that_cannot_name_a_folder_is_refused():
    with pytest.raises(ConfigError, match="name='a\\\\x00b' is invalid"):
        C.validate(C.override(C.Config(), ["name=a\x00b"]))


@pytest.mark.parametrize("env, kw, match", [
    ({"SGM_NUM_PROCESSES": "abc"}, {}, "SGM_NUM_PROCESSES='abc' is invalid: expected an integer"),
    ({"SGM_PROCESS_ID": "x"}, {}, "SGM_PROCESS_ID='x' is invalid"),
    ({"SLURM_NTASKS": "abc"}, {}, "SLURM_NTASKS='abc' is invalid"),
    ({}, {"process_id": 5}, "process id 5 is invalid without a multi-host run"),
    ({}, {"num_processes": 1, "process_id": 5}, "process id 5 is invalid"),
])
def test_multi_host_settings_are_checked(monkeypatch, env, kw, match):
    from sgm import parallel

    for k in ("SGM_COORDINATOR", "SGM_NUM_PROCESSES", "SGM_PROCESS_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        parallel.initialize(**kw)


def test_a_solve_out_of_steps_is_one_sentence():
    x = jnp.ones((3, 2))
    with pytest.raises(NumericalError, match=r"^the likelihood ODE took more than max_steps=2 "
                                             r"steps; .*rtol=1e-05, atol=1e-05.*likelihood.rtol"):
        sgm.log_likelihood(lambda t, x: -x, VPSDE(), x, control=sgm.StepControl(max_steps=2))
    with pytest.raises(NumericalError, match=r"^the ode sampler took more than max_steps=2 steps"):
        sgm.sample(lambda t, x: -x, VPSDE(), (2,), key=jax.random.key(0), num=3, method="ode",
                   max_steps=2)


@pytest.mark.parametrize("stepping", ["batch", "point"])
def test_adaptive_solves_compile_without_host_callbacks(monkeypatch, stepping):
    """The likelihood's and the ode sampler's compiled programs hold no host callback (JAX keeps
    no program with one in its persistent compilation cache, so every run would compile them
    again): the solves run with diffrax's throw=False and their outcome is checked afterwards,
    which still gives the one-sentence error above (for shared and per-point steps alike)."""
    from sgm import likelihood, samplers

    calls = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] = fn.lower(*args, **kwargs).as_text()
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(likelihood, "_solve", spy("likelihood", likelihood._solve))
    monkeypatch.setattr(samplers, "_run", spy("sampler", samplers._run))
    x = jnp.ones((3, 2))
    sgm.log_likelihood(lambda t, x: -x, VPSDE(), x, control=sgm.StepControl(stepping=stepping))
    sgm.sample(lambda t, x: -x, VPSDE(), (2,), key=jax.random.key(0), num=3, method="ode",
               stepping=stepping)
    assert set(calls) == {"likelihood", "sampler"}
    for name, text in calls.items():
        assert "callback" not in text, name
    with pytest.raises(NumericalError, match=r"^the likelihood ODE took more than max_steps=2 "):
        sgm.log_likelihood(lambda t, x: -x, VPSDE(), x,
                           control=sgm.StepControl(max_steps=2, stepping=stepping))
    with pytest.raises(NumericalError, match=r"^the ode sampler took more than max_steps=2 steps"):
        sgm.sample(lambda t, x: -x, VPSDE(), (2,), key=jax.random.key(0), num=3, method="ode",
                   max_steps=2, stepping=stepping)


# ------------------------------------------------------------------ a finished run and the command

ROOT = Path(__file__).resolve().parents[1]
EIGHT = ROOT / "configs" / "eight_gaussians.py"
#: a tiny run: checkpoints at steps 4 and 8, metrics every 2 steps
RUN = ["train.steps=8", "train.batch_size=32", "train.log_every=2", "train.ckpt_every=4",
       "train.warmup=2", "model.width=16", "model.depth=1", "data.n_train=256", "data.n_test=32",
       "sample.num=16", "sample.steps=8", "likelihood.num=8", "likelihood.batch=8",
       "likelihood.rtol=1e-2", "likelihood.atol=1e-2", "train.eval_num=8"]


def _main(wd, *sets, mode="train", density_grid=0):
    return run.main(EIGHT, sets=[*RUN, *sets], mode=mode, workdir=wd, progress=False,
                    density_grid=density_grid)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run, trained to step 8."""
    wd = tmp_path_factory.mktemp("finished") / "wd"
    assert _main(wd) == 0
    return wd


def _copy(finished_run, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(finished_run, wd)
    return wd


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def _refused(capsys, wd, *sets, mode="train", match, config_written=False):
    """The command with `sets` exits 2 with one line matching `match` and leaves `wd` as it was
    (but for config.json, the resolved config, where the refusal comes after it is written)."""
    def files():
        return {k: v for k, v in _files(wd).items()
                if not config_written or k.name != "config.json"}

    before = files()
    assert _main(wd, *sets, mode=mode) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err
    assert files() == before
    return err


@pytest.mark.parametrize("mode", ["train", "sample"])
@pytest.mark.parametrize("damage", ["missing", "a file"])
def test_a_run_without_its_checkpoints_folder_is_refused_before_anything_is_written(
        finished_run, tmp_path, capsys, damage, mode):
    wd = _copy(finished_run, tmp_path)
    shutil.rmtree(wd / "checkpoints")
    if damage == "a file":
        (wd / "checkpoints").write_text("x\n")
    what = "is not a folder" if damage == "a file" else "is missing, but .* earlier run"
    err = _refused(capsys, wd, "train.steps=16", mode=mode, match=what)
    assert str(wd / "checkpoints") in err and "restore" in err and "another --workdir" in err


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path):
    """The command makes checkpoints/ before it writes a record, so records beside an empty
    checkpoints/ are a run stopped before its first checkpoint, which starts again; a new work
    directory gets the folder from `prepare_workdir`."""
    wd = tmp_path / "wd"
    (wd / "checkpoints").mkdir(parents=True)
    (wd / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    assert run.check_workdir(wd) == {}
    exp = build.experiment(build.load(EIGHT, RUN))
    with contextlib.ExitStack() as stack:
        run.prepare_workdir(exp, tmp_path / "new", stack=stack)
    assert (tmp_path / "new" / "checkpoints").is_dir()


def test_a_checkpoint_renamed_to_another_step_is_damage(finished_run, tmp_path, capsys):
    wd = _copy(finished_run, tmp_path)
    ckpts = wd / "checkpoints"
    (ckpts / "ckpt_000000004.npz").rename(ckpts / "ckpt_000000099.npz")
    with pytest.raises(CorruptCheckpointError, match=r"holds step 4 by its manifest, not step 99"):
        ckpt.read_manifest(ckpts / "ckpt_000000099.npz")
    err = _refused(capsys, wd, "train.steps=100", match=r"ckpt_000000099.npz holds step 4 by its "
                                                         r"manifest, not step 99 as its name says")
    assert "previous checkpoint, ckpt_000000008.npz" in err


def test_damaged_metrics_are_refused_before_the_config_is_written(finished_run, tmp_path, capsys):
    wd = _copy(finished_run, tmp_path)
    lines = (wd / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) > 3
    (wd / "metrics.jsonl").write_text("".join([lines[0], "not json\n", *lines[2:]]))
    _refused(capsys, wd, "train.steps=16", match="line 2 is not a metrics record")
    assert json.loads((wd / "config.json").read_text())["train"]["steps"] == 8


def test_disk_full_while_appending_metrics_leaves_whole_records(finished_run, tmp_path, capsys,
                                                                 monkeypatch):
    wd = _copy(finished_run, tmp_path)
    before = (wd / "metrics.jsonl").read_text()
    real, appends = os.write, []

    def full(fd, data):  # the second record gets half its bytes onto the disk, then ENOSPC
        if bytes(data[:7]) == b'{"step"':
            appends.append(bytes(data))
            if len(appends) == 2:
                real(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    assert _main(wd, "train.steps=12") == 2
    err = capsys.readouterr().err
    assert err == (f"error: {os.strerror(errno.ENOSPC)} ({wd / 'metrics.jsonl'}); every file "
                   f"already written is complete.\n")
    assert (wd / "metrics.jsonl").read_text() == before + appends[0].decode()  # whole records


def test_an_append_cut_short_is_taken_back(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    log = track.Jsonl(path, start=0)
    log.scalars(1, {"loss": 1.0})
    real = os.write

    def cut(fd, data):
        real(fd, bytes(data[:5]))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", cut)
    with pytest.raises(KeyboardInterrupt):
        log.scalars(2, {"loss": 0.5})
    monkeypatch.undo()
    log.scalars(2, {"loss": 0.5})
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'


def test_guidance_weights_far_beyond_use_are_refused(finished_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"sample.guidance=1e\+308 is invalid: expected a "
                                          r"guidance weight in \[-1, 100\]"):
        C.validate(C.override(C.Config(), ["sample.guidance=1e308"]))
    C.validate(C.override(C.Config(), ["sample.guidance=20"]))
    wd = _copy(finished_run, tmp_path)
    _refused(capsys, wd, "sample.guidance=1e308", mode="sample", match="sample.guidance=1e")


def _nan_samples(self, model, **kw):
    x = np.full((self.cfg.sample.num, *self.ds.shape), np.nan, np.float32)
    return x, {"nfe": 1}, self.sample_conditions(self.cfg.sample.num)


@pytest.mark.parametrize("sets, guidable, cause", [
    ([], False, r"the model of the checkpoint at step 8, whose score returns NaN or inf"),
    (["sample.guidance=5"], True, r"classifier-free guidance at sample.guidance=5, which weighs"),
    (["sample.method=dpm2m", "sample.steps=4", "sample.grid=tuned"], False,
     r"the tuned noise levels kept in the work directory \(grid-\*.npz\)"),
])
def test_non_finite_samples_are_never_written(finished_run, tmp_path, capsys, monkeypatch, sets,
                                              guidable, cause):
    wd = _copy(finished_run, tmp_path)
    (wd / "samples.npz").write_bytes(b"earlier samples")
    (wd / "figs" / "samples.png").write_bytes(b"an earlier figure")
    monkeypatch.setattr(build.Experiment, "samples", _nan_samples)
    monkeypatch.setattr(Conditioning, "guidable", property(lambda self: guidable))
    _refused(capsys, wd, *sets, mode="sample", config_written=True,
             match=r"^error: the samples hold NaN or inf, so samples.npz was not written; the "
                   r"likely cause is " + cause)


def test_non_finite_likelihoods_are_never_written(finished_run, tmp_path, capsys, monkeypatch):
    wd = _copy(finished_run, tmp_path)
    nan = float("nan")
    monkeypatch.setattr(build.Experiment, "heldout_likelihood", lambda self, model, **kw: {
        "nll": nan, "bpd": nan, "nll_stderr": nan, "num": 8, "nfe": 1})
    _refused(capsys, wd, mode="likelihood",
             match=r"^error: the test log-likelihoods hold NaN or inf, so likelihood.json was "
                   r"not written; the likely cause is the model of the checkpoint at step 8")


def test_a_non_finite_density_grid_is_never_drawn(finished_run, tmp_path, capsys, monkeypatch):
    wd = _copy(finished_run, tmp_path)
    (wd / "figs" / "density.png").write_bytes(b"an earlier figure")
    summary = (wd / "summary.json").read_bytes()
    monkeypatch.setattr(build.Experiment, "log_density",
                        lambda self, model, x, **kw: np.full(len(x), np.nan))
    assert _main(wd, mode="likelihood", density_grid=4) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the model log-densities of the density figure hold NaN or inf, "
                          "so figs/density.png was not written") and err.count("\n") == 1, err
    assert (wd / "figs" / "density.png").read_bytes() == b"an earlier figure"
    assert (wd / "summary.json").read_bytes() == summary


@pytest.mark.parametrize("name", ["../../../tmp/x", "/tmp/x", "a/b", "a\\b", "..", "."])
def test_a_name_that_leaves_runs_is_refused(tmp_path, monkeypatch, capsys, name):
    with pytest.raises(ConfigError, match="name=.* is invalid: expected .* without / or"):
        C.validate(C.override(C.Config(), [f"name={name}"]))
    here = tmp_path / "a" / "b" / "c"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert run.main(EIGHT, sets=[*RUN, f"name={name}"], progress=False) == 2
    assert "is invalid" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a", "a/b", "a/b/c"]


@pytest.mark.parametrize("env, match", [
    ({"SLURM_NTASKS": "-1"}, "SLURM_NTASKS='-1' is invalid: expected an integer of at least 1"),
    ({"SLURM_NTASKS": "0"}, "SLURM_NTASKS='0' is invalid"),
    ({"SLURM_NTASKS": "٣"}, "SLURM_NTASKS='٣' is invalid"),
    ({"SLURM_NTASKS": "--2"}, "SLURM_NTASKS='--2' is invalid"),
    ({"SGM_NUM_PROCESSES": "-2"}, "SGM_NUM_PROCESSES='-2' is invalid"),
    ({"SGM_PROCESS_ID": "-1"}, "SGM_PROCESS_ID='-1' is invalid: expected an integer of at least 0"),
])
def test_negative_process_counts_are_refused(tmp_path, monkeypatch, capsys, env, match):
    for k in ("SGM_COORDINATOR", "SGM_NUM_PROCESSES", "SGM_PROCESS_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert run.main(EIGHT, sets=RUN, workdir=tmp_path / "wd", progress=False) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "wd").exists()


def test_a_negative_number_of_processes_is_refused():
    with pytest.raises(ConfigError, match="number of processes -1 is invalid"):
        parallel.initialize(num_processes=-1)


@pytest.mark.parametrize("call, shown", [("sys.exit(0)", "sys.exit(0)"),
                                         ("sys.exit()", "sys.exit()"),
                                         ("sys.exit('bye')", "sys.exit('bye')")])
def test_a_config_file_that_exits_is_one_sentence(tmp_path, capsys, call, shown):
    path = tmp_path / "exits.py"
    path.write_text(f"import sys\n{call}\n")
    assert run.main(path, workdir=tmp_path / "wd", progress=False) == 2
    err = capsys.readouterr().err
    assert err == (f"error: config file {str(path)!r} called {shown} while loading: a config "
                   f"file must only define `config = Config(...)`.\n")
    assert not (tmp_path / "wd").exists()


def test_disk_full_at_the_first_checkpoint_says_there_is_none(tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    assert _main(tmp_path / "wd", "train.steps=4") == 2
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "intact" not in err, err
    assert f"no earlier checkpoint is in {tmp_path / 'wd' / 'checkpoints'}." in err
    tree = {"w": np.arange(2.0)}
    monkeypatch.undo()
    ckpt.save(tmp_path / "c", 3, tree)
    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CheckpointError, match="the previous checkpoint, ckpt_000000003.npz, is "
                                              "intact"):
        ckpt.save(tmp_path / "c", 4, tree)


def _digits_run(wd):
    """A work directory of a digits run as `sgm.quality` reads it: config.json and samples."""
    wd.mkdir()
    cfg = build.load(ROOT / "configs" / "digits.py")
    (wd / "config.json").write_text(json.dumps(build.to_dict(cfg)))
    np.savez(wd / "samples.npz", samples=np.zeros((4, 1, 8, 8), np.uint8),
             cond=np.arange(4))
    return wd


def test_quality_names_the_reason_a_samples_file_is_refused(tmp_path, capsys):
    wd = _digits_run(tmp_path / "wd")
    big = _npz_claiming(tmp_path / "big.npz", (10**11, 1, 8, 8), key="samples")
    assert quality_cli.main([str(wd), "--samples", str(big)]) == 2
    err = capsys.readouterr().err
    assert "its array 'samples' claims more bytes than the file holds" in err, err
    assert "(DataError)" not in err and err.count("\n") == 1
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert quality_cli.main([str(wd), "--samples", str(tmp_path / "other.npz")]) == 2
    assert "(samples is not a file in the archive)" in capsys.readouterr().err


def test_quality_on_a_locked_run_speaks_to_its_own_caller(tmp_path, capsys):
    wd = _digits_run(tmp_path / "wd")
    with ckpt.lock_workdir(wd):
        assert quality_cli.main([str(wd)]) == 2
    err = capsys.readouterr().err
    assert "is in use by process" in err and "--workdir" not in err, err


def test_samples_file_that_is_a_folder_is_named(finished_run, tmp_path, capsys):
    wd = _copy(finished_run, tmp_path)
    (wd / "samples.npz").mkdir()
    assert _main(wd, mode="sample") == 2
    err = capsys.readouterr().err
    assert f"({wd / 'samples.npz'}); every file already written is complete." in err, err
    assert ".tmp_" not in err and not [p for p in wd.iterdir() if p.name.startswith(".tmp_")]


@pytest.mark.parametrize("item", ["train.steps=٣٠", "train.steps=３０", "train.lr=١.٥"])
def test_digits_of_other_scripts_are_not_numbers(tmp_path, capsys, item):
    with pytest.raises(ConfigError, match=r"is not (an integer|a number): expected digits 0-9"):
        C.override(C.Config(), [item])
    assert run.main(EIGHT, sets=[*RUN, item], workdir=tmp_path / "wd", progress=False) == 2
    assert "expected digits 0-9" in capsys.readouterr().err
    assert C.override(C.Config(), ["train.steps=30", "train.lr=1.5e-3"]).train.steps == 30
