"""``pseudolabel bench-infer`` at a toy size: every method runs on the same images and the
report carries what the README quotes (speed-ups are measured, never asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pseudolabel.cli import app
from pseudolabel.sim.fashion import fashion_dir


def test_bench_infer_cli_reports_every_method(tmp_path: Path) -> None:
    if not (fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        msg = f"Fashion-MNIST not installed at {fashion_dir()} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the dataset: {msg}")
        pytest.skip(msg)
    res = CliRunner().invoke(app, ["bench-infer", "--out", str(tmp_path), "--n-images", "6", "--image-size", "64",
                                   "--batch-size", "3", "--device", "cpu", "--workers", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "bench-infer.json").read_text())
    assert report["settings"]["runtime"] == "onnx"  # the CPU default
    results = report["results"]
    assert set(results) == {"engine", "engine_torch", "ultralytics", "ultralytics_b1", "naive", "model_alone",
                            "model_alone_torch"}
    fastest_ultralytics = max(results["ultralytics"]["images_per_s"], results["ultralytics_b1"]["images_per_s"])
    for name, r in results.items():
        assert r["images"] == 6 and r["seconds"] > 0 and r["peak_rss_mib"] > 0, name
        assert r["vs_ultralytics"] == pytest.approx(r["images_per_s"] / fastest_ultralytics, rel=1e-2)
    assert report["versions"]["onnxruntime"]
    assert "engine_torch" in res.output and "x ultra" in res.output
