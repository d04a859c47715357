"""bench/device.py keeps working: its whole `--small` run on whatever devices JAX sees."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_bench_runs_and_writes_its_table(tmp_path):
    # bfloat16 only (it runs the float32 SDE/solver code too): half the compilations of both
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "device.py"), "--small", "--dtypes",
                          "bfloat16", "--out", str(tmp_path / "d.json")],
                         capture_output=True, text=True, timeout=900, check=True)
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert {(r["row"], r["dtype"]) for r in rows} == {
        ("train unet", "bfloat16"), ("train dit", "bfloat16"), ("sample dpm2m-20", "bfloat16"),
        ("sample em-100", "bfloat16"), ("likelihood hutchinson", "bfloat16")}
    assert all(r["per_s"] > 0 for r in rows)
    table = out.stdout.splitlines()
    for r in rows:  # the printed table holds the rows the JSON holds
        assert any(line.startswith(r["row"]) and f"{r['per_s']:.1f}" in line for line in table), r
    assert "images/s" in out.stdout
