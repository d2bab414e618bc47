"""The memory benchmark: slope / progress arithmetic on known answers, the distinct-file pool,
and the CLI at a tiny size (real files, real untrained yolo11n, one fresh process per size)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pseudolabel.sim.bench_memory import make_pool, read_items, rss_at, rss_slope, summarise, with_comment
from pseudolabel.cli import app
from pseudolabel.data.images import load_rgb, sha256_file


def test_rss_slope_is_mib_per_10k_items() -> None:
    done = [0, 5_000, 10_000, 20_000]
    assert rss_slope(done, [100 + 0.002 * d for d in done]) == pytest.approx(20.0)
    assert rss_slope(done, [300.0] * 4) == 0.0
    assert rss_slope(done, [300 - 0.001 * d for d in done], per=1_000) == pytest.approx(-1.0)
    assert math.isnan(rss_slope([7, 7], [1.0, 2.0]))  # one item count: no slope
    with pytest.raises(ValueError, match="one length"):
        rss_slope([1, 2], [1.0])


def test_rss_at_takes_the_first_sample_past_the_count() -> None:
    done, rss = [0, 10, 50, 90], [1.0, 2.0, 3.0, 4.0]
    assert rss_at(done, rss, 10) == 2.0
    assert rss_at(done, rss, 11) == 3.0
    assert rss_at(done, rss, 1_000) == 4.0  # never reached: the last sample
    # between two shards the worker is gone: the window takes the stage's highest sample
    assert rss_at([48, 50, 52], [9.0, 5.0, 8.0], 50, window=2) == 9.0


def test_summarise_flat_main_and_growing_workers() -> None:
    n = 100
    samples = [(t * 0.2, d, 500.0, 100.0 + d, 550.0) for t, d in enumerate(range(0, n + 1, 10))]
    s = summarise(samples, n)
    assert s["peak_rss_mib"] == 700.0
    assert s["rss_at_50pct_mib"] == 650.0
    assert s["slope_mib_per_10k"] == pytest.approx(10_000.0)  # 1 MiB per item
    assert s["main_peak_rss_mib"] == 500.0 and s["main_slope_mib_per_10k"] == 0.0
    assert s["peak_pss_mib"] == 550.0 and s["pss_slope_mib_per_10k"] == 0.0
    # a last sample with the worker gone (the shard being written) is left out of the slopes
    s = summarise(samples + [(30.0, n, 520.0, 0.0, 500.0)], n)
    assert s["slope_mib_per_10k"] == pytest.approx(10_000.0)
    assert s["pss_slope_mib_per_10k"] == 0.0 and s["main_peak_rss_mib"] == 520.0


def test_pool_files_are_distinct_readable_and_reused(tmp_path: Path) -> None:
    manifest = make_pool(tmp_path / "pool", 12, scene_size=32, base=5)
    items = read_items(manifest, 12, size=32)
    assert len({i.id for i in items}) == 12
    assert all(sha256_file(i.path) == i.id for i in items)
    # file 5 is scene 0 again with another comment: same pixels, other bytes
    assert np.array_equal(np.asarray(load_rgb(items[5].path)), np.asarray(load_rgb(items[0].path)))
    mtime = items[0].path.stat().st_mtime_ns
    assert make_pool(tmp_path / "pool", 8, scene_size=32, base=5) == manifest
    assert items[0].path.stat().st_mtime_ns == mtime  # reused, not rewritten
    with pytest.raises(ValueError, match="holds 12 files, 13 asked"):
        read_items(manifest, 13, size=32)


def test_with_comment_keeps_app_segments_first() -> None:
    jpeg = b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xdbrest"
    out = with_comment(jpeg, b"hi")
    assert out == b"\xff\xd8\xff\xe0\x00\x04ab\xff\xfe\x00\x04hi\xff\xdbrest"
    assert hashlib.sha256(out).hexdigest() != hashlib.sha256(with_comment(jpeg, b"ho")).hexdigest()
    with pytest.raises(ValueError, match="not a JPEG"):
        with_comment(b"\x89PNG", b"x")


def test_cli_bench_memory_tiny(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench-memory", "--out", str(tmp_path), "--size", "50", "--size", "100",
                                 "--image-size", "32", "--scene-size", "32", "--shard-size", "40", "--threads", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "bench-memory.json").read_text())
    assert report["settings"]["sizes"] == [50, 100]
    assert [row["n"] for row in report["results"]] == [50, 100]
    for row in report["results"]:
        for key in ("peak_rss_mib", "rss_at_10pct_mib", "rss_at_50pct_mib", "rss_at_90pct_mib",
                    "slope_mib_per_10k", "main_peak_rss_mib", "peak_pss_mib", "items_mib", "images_per_s",
                    "seconds", "samples"):
            assert key in row, key
        assert row["rows"] == row["n"]
        assert row["shards"] == math.ceil(row["n"] / 40)
        assert row["peak_rss_mib"] > 0 and row["images_per_s"] > 0
    assert {"peak_growth_mib", "pss_growth_mib", "items_growth_mib"} <= set(report)
    assert "peak MiB" in r.output
    r = CliRunner().invoke(app, ["bench-memory", "--out", str(tmp_path), "--size", "0"])
    assert r.exit_code == 2 and "sizes must be integers >= 1" in r.output
