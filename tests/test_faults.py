"""Damaged files and out-of-range inputs: each is refused with one sentence before anything is
written, or handled so that nothing is lost (metrics that survive a cut-short append)."""

import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgm
from sgm import checkpoint as ckpt
from sgm import config as C
from sgm import data, track
from sgm.errors import ConfigError, CorruptCheckpointError, DataError, NumericalError, SGMError
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
])
def test_every_numeric_bound_is_checked_with_the_field_named(sets, match):
    cfg = C.load_file("configs/eight_gaussians.py")
    with pytest.raises(ConfigError, match=match):
        C.validate(C.override(cfg, sets))


def test_bounds_leave_ordinary_values_alone():
    cfg = C.load_file("configs/eight_gaussians.py")
    C.validate(C.override(cfg, ["likelihood.rtol=1e-6", "likelihood.atol=1e-7", "sample.steps=100000",
                                "train.seed=4294967296"]))


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
        sgm.log_likelihood(lambda t, x: -x, VPSDE(), x, max_steps=2)
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
    sgm.log_likelihood(lambda t, x: -x, VPSDE(), x, stepping=stepping)
    sgm.sample(lambda t, x: -x, VPSDE(), (2,), key=jax.random.key(0), num=3, method="ode",
               stepping=stepping)
    assert set(calls) == {"likelihood", "sampler"}
    for name, text in calls.items():
        assert "callback" not in text, name
    with pytest.raises(NumericalError, match=r"^the likelihood ODE took more than max_steps=2 "):
        sgm.log_likelihood(lambda t, x: -x, VPSDE(), x, max_steps=2, stepping=stepping)
    with pytest.raises(NumericalError, match=r"^the ode sampler took more than max_steps=2 steps"):
        sgm.sample(lambda t, x: -x, VPSDE(), (2,), key=jax.random.key(0), num=3, method="ode",
                   max_steps=2, stepping=stepping)
