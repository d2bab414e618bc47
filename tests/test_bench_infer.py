"""``pseudolabel bench-infer`` at a toy size: the model it measures is trained on composited
scenes and emits boxes, every method runs on the same images with the same weights, and the
report carries what the README quotes (speed-ups are measured, never asserted).

One CLI run (module fixture) trains the benchmark's detector with its default recipe (64
scenes of 128 px, 30 epochs: about 1.5 minutes on one core) and measures 6 scenes of 128 px.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pseudolabel.cli import app
from pseudolabel.sim.fashion import fashion_dir

pytestmark = pytest.mark.slow

N_IMAGES = 6


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """(report, console output, out folder) of one toy-size ``bench-infer`` run."""
    if not (fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        msg = f"Fashion-MNIST not installed at {fashion_dir()} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the dataset: {msg}")
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("bench-infer")
    res = CliRunner().invoke(app, ["bench-infer", "--out", str(out), "--n-images", str(N_IMAGES), "--image-size",
                                   "128", "--batch-size", "3", "--device", "cpu", "--workers", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    return json.loads((out / "bench-infer.json").read_text()), res.output, out


def test_bench_infer_cli_reports_every_method(bench: tuple[dict[str, Any], str, Path]) -> None:
    report, output, _ = bench
    assert report["settings"]["runtime"] == "onnx"  # the CPU default
    results = report["results"]
    assert set(results) == {"engine", "engine_torch", "ultralytics", "ultralytics_b1", "naive", "model_alone",
                            "model_alone_torch"}
    fastest_ultralytics = max(results["ultralytics"]["images_per_s"], results["ultralytics_b1"]["images_per_s"])
    for name, r in results.items():
        assert r["images"] == N_IMAGES and r["seconds"] > 0 and r["peak_rss_mib"] > 0, name
        assert r["vs_ultralytics"] == pytest.approx(r["images_per_s"] / fastest_ultralytics, rel=1e-2)
        if not name.startswith("model_alone"):  # the network alone runs no NMS: no boxes to count
            assert r["boxes_per_image"] == pytest.approx(r["boxes"] / N_IMAGES, abs=1e-3), name
    assert report["versions"]["onnxruntime"]
    assert "engine_torch" in output and "x ultra" in output and "boxes/img" in output


def test_bench_infer_measures_a_model_that_detects(bench: tuple[dict[str, Any], str, Path]) -> None:
    """The untrained yolo11n it measured before kept 0 boxes; the briefly trained one keeps
    boxes on the composited scenes at the fixed conf, in our engine and in Ultralytics alike."""
    report, _, out = bench
    model = report["model"]
    assert model["epochs"] == 30 and model["train_images"] == 64 and model["train_size"] == 128
    assert Path(model["checkpoint"]).is_file() and Path(model["checkpoint"]).is_relative_to(out)
    assert report["settings"]["conf"] == 0.05
    assert report["truth_boxes_per_image"] >= 1  # every composited scene holds objects
    results = report["results"]
    for name in ("engine", "engine_torch", "ultralytics", "ultralytics_b1", "naive"):
        assert results[name]["boxes_per_image"] > 0, (name, results[name])
    # The same weights at the same conf / iou: our engine keeps what Ultralytics keeps, up to
    # letterbox rounding at the threshold (compared box by box in test_engine).
    assert abs(results["engine"]["boxes"] - results["ultralytics"]["boxes"]) <= max(2, results["ultralytics"]["boxes"] // 5)
