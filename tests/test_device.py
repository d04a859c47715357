"""bench/device.py keeps working: its whole run at tiny sizes on whatever devices JAX sees."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import device

TINY = {"image": 4, "batch": 2, "train_steps": 1, "dpm2m": 3, "em": 3, "lik_batch": 2,
        "unet": {"base": 4, "channel_mults": (1,), "num_res_blocks": 1, "attn_resolutions": (), "heads": 1},
        "dit": {"net": "dit", "patch": 2, "width": 8, "depth": 1, "heads": 1}}


def test_device_bench_runs_and_writes_its_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(device, "SMALL", TINY)
    # bfloat16 only (it runs the float32 SDE/solver code too): half the compilations of both
    out = device.main(["--small", "--dtypes", "bfloat16", "--out", str(tmp_path / "d.json")])
    rows = {(r["row"], r["dtype"]) for r in out["rows"]}
    assert rows == {("train unet", "bfloat16"), ("train dit", "bfloat16"), ("sample dpm2m-3", "bfloat16"),
                    ("sample em-3", "bfloat16"), ("likelihood hutchinson", "bfloat16")}
    assert all(r["per_s"] > 0 for r in out["rows"])
    assert json.loads((tmp_path / "d.json").read_text())["rows"] == json.loads(json.dumps(out["rows"]))
    assert "images/s" in capsys.readouterr().out
