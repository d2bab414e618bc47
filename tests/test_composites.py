"""Detection/segmentation scenes composited from real Fashion-MNIST items."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pseudolabel.sim import composites as C
from pseudolabel.data.formats import read_yolo
from pseudolabel.data.formats.yolo import read_yolo_names
from pseudolabel.data.geometry import polygon_to_mask
from pseudolabel.sim.fashion import DatasetMissing, fashion_dir, load_fashion
from pseudolabel.data.images import sha256_file

CLASSES = C.DEFAULT_CLASSES


def _need_dataset() -> None:
    if (fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        return
    msg = f"Fashion-MNIST not installed at {fashion_dir()} (apt-get install dataset-fashion-mnist)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs the dataset: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def items() -> tuple[np.ndarray, np.ndarray]:
    """The test split's items of the four default classes, labels as indices into CLASSES."""
    _need_dataset()
    x, y = load_fashion("test")
    _, fidx = C.resolve_classes(CLASSES)
    keep = np.isin(y, fidx)
    return x[keep], np.array([fidx.index(int(v)) for v in y[keep]])


def _scenes(items: tuple[np.ndarray, np.ndarray], n: int, **kw: object):  # type: ignore[no-untyped-def]
    x, y = items
    defaults: dict[str, object] = dict(classes=CLASSES, size=96, min_objects=1, max_objects=4,
                                       scale=(1.0, 2.5), max_overlap=0.3, background="noise",
                                       min_visible=0.5, min_area=16, tries=25)
    defaults.update(kw)
    for i in range(n):
        rng = np.random.default_rng([7, i])
        yield C._compose(rng, x[4 * i: 4 * i + 4], y[4 * i: 4 * i + 4], **defaults)  # type: ignore[arg-type]


def test_boxes_are_tight_around_visible_masks(items: tuple[np.ndarray, np.ndarray]) -> None:
    n_objects = 0
    for image, boxes, masks in _scenes(items, 40):
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert len(boxes) == len(masks) >= 1
        union = np.zeros((96, 96), dtype=int)
        for b, m in zip(boxes, masks):
            n_objects += 1
            assert 0 <= b.x1 < b.x2 <= 96 and 0 <= b.y1 < b.y2 <= 96
            assert b.label in CLASSES
            x1, y1, x2, y2 = int(b.x1), int(b.y1), int(b.x2), int(b.y2)
            assert (x1, y1, x2, y2) == (b.x1, b.y1, b.x2, b.y2)   # whole pixels
            assert m.sum() >= 16
            # Tight: all mask pixels inside; every border row/column of the box touches the mask.
            assert m[y1:y2, x1:x2].sum() == m.sum()
            assert m[y1, x1:x2].any() and m[y2 - 1, x1:x2].any()
            assert m[y1:y2, x1].any() and m[y1:y2, x2 - 1].any()
            union += m
        assert union.max() <= 1       # visible masks never overlap: occlusion was applied
    assert n_objects >= 60            # 1..4 per scene: most items found a place


def test_polygons_match_masks(items: tuple[np.ndarray, np.ndarray]) -> None:
    ious = []
    for _, boxes, masks in _scenes(items, 30):
        for b, m in zip(boxes, masks):
            assert b.polygon is not None and len(b.polygon) >= 3
            poly = polygon_to_mask(b.polygon, 96, 96)
            ious.append((poly & m).sum() / (poly | m).sum())
            xs, ys = [p[0] for p in b.polygon], [p[1] for p in b.polygon]
            assert (min(xs), min(ys), max(xs), max(ys)) == (b.x1, b.y1, b.x2, b.y2)
    assert min(ious) > 0.8
    assert np.median(ious) > 0.99     # solid regions: the outline gives the mask back


def test_occlusion_and_overlap_limits(items: tuple[np.ndarray, np.ndarray]) -> None:
    from pseudolabel.data.geometry import box_iou

    occluded = 0
    for _, boxes, masks in _scenes(items, 40, max_overlap=0.2):
        arr = np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes])
        iou = box_iou(arr, arr)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= 0.2 + 1e-9
        occluded += sum(int(iou[i].max() > 0) for i in range(len(boxes)))
    assert occluded > 0               # objects do touch and overlap, within the limit


def test_background_is_textured(items: tuple[np.ndarray, np.ndarray]) -> None:
    for image, boxes, masks in _scenes(items, 5, min_objects=0, max_objects=0):
        assert boxes == [] and masks == []
        assert (image.max(axis=2) < 10).mean() < 0.01   # not a black canvas
        assert image.reshape(-1, 3).std(0).max() > 5     # textured, not flat
        # Smooth texture: neighbouring pixels agree far more than random pixels do.
        f = image.astype(float)
        assert np.abs(np.diff(f, axis=1)).mean() < 0.5 * np.abs(f - f[::-1, ::-1]).mean()
    with pytest.raises(ValueError, match="background"):
        next(_scenes(items, 1, background="plain"))


def test_make_scene_is_deterministic(items: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = items
    a = C.make_scene(np.random.default_rng(3), x[:4], y[:4], classes=CLASSES, size=64)
    b = C.make_scene(np.random.default_rng(3), x[:4], y[:4], classes=CLASSES, size=64)
    c = C.make_scene(np.random.default_rng(4), x[:4], y[:4], classes=CLASSES, size=64)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_make_scene_rejects_bad_input(items: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = items
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\(K, 28, 28\) uint8"):
        C.make_scene(rng, x[:4].astype(float), y[:4], classes=CLASSES)
    with pytest.raises(ValueError, match="must index classes"):
        C.make_scene(rng, x[:4], np.array([0, 1, 2, 9]), classes=CLASSES)
    with pytest.raises(ValueError, match="min_objects"):
        C.make_scene(rng, x[:4], y[:4], classes=CLASSES, min_objects=3, max_objects=2)


def test_resolve_classes() -> None:
    assert C.resolve_classes(["Bag", 1]) == (("Bag", "Trouser"), (8, 1))
    with pytest.raises(ValueError, match="T-shirt_top"):   # the error lists the accepted names
        C.resolve_classes(["T-shirt/top"])
    with pytest.raises(ValueError, match="twice"):
        C.resolve_classes(["Bag", 8])


@pytest.fixture(scope="module", params=["detect", "segment"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> C.CompositeDataset:
    _need_dataset()
    root = tmp_path_factory.mktemp(f"scenes-{request.param}")
    return C.export_scenes(root, n_seed=6, n_pool=10, n_holdout=5, size=64, seed=1, task=request.param)


def test_export_layout_and_truth(exported: C.CompositeDataset) -> None:
    ds = exported
    assert ds.classes == CLASSES
    assert len(list(ds.seed_images.glob("*.png"))) == 6
    assert len(list(ds.holdout_images.glob("*.png"))) == 5
    assert sorted(p.suffix for p in ds.pool_dir.iterdir()) == [".png"] * 10   # images only
    assert sorted(ds.splits.values()).count("pool") == 10 and len(ds.truth) == 21
    for iid, rel in ds.paths.items():
        assert sha256_file(ds.root / rel) == iid       # item id = sha256 of the bytes
    assert C.load_truth(ds.truth_json) == ds.truth     # the JSON is the same truth
    again = C.load_scenes(ds.root)
    assert again.truth == ds.truth and again.paths == ds.paths and again.task == ds.task
    assert read_yolo_names(ds.data_yaml) == CLASSES
    doc = json.loads(ds.truth_json.read_text())
    assert doc["size"] == 64 and doc["classes"] == list(CLASSES)


@pytest.mark.parametrize("split", ["seed", "holdout"])
def test_yolo_round_trip(exported: C.CompositeDataset, split: str) -> None:
    ds = exported
    images = ds.seed_images if split == "seed" else ds.holdout_images
    labels = ds.seed_labels if split == "seed" else ds.holdout_labels
    got = read_yolo(images, labels, classes=ds.classes, task=ds.task)
    assert not got.quarantined and len(got.items) == len(got.boxes)
    assert {it.id for it in got.items} == {i for i, s in ds.splits.items() if s == split}
    for iid, boxes in got.boxes.items():
        truth = ds.truth[iid]
        assert len(boxes) == len(truth)
        for b, t in zip(boxes, truth):
            assert b.label == t.label
            assert np.allclose([b.x1, b.y1, b.x2, b.y2], [t.x1, t.y1, t.x2, t.y2], atol=1e-6)
            if ds.task == "segment":
                assert b.polygon is not None and t.polygon is not None
                assert np.allclose(b.polygon, t.polygon, atol=1e-6)
            else:
                assert b.polygon is None


def test_export_is_deterministic(tmp_path: Path) -> None:
    _need_dataset()
    a = C.export_scenes(tmp_path / "a", n_seed=2, n_pool=3, n_holdout=2, size=48, seed=5)
    b = C.export_scenes(tmp_path / "b", n_seed=2, n_pool=3, n_holdout=2, size=48, seed=5)
    c = C.export_scenes(tmp_path / "c", n_seed=2, n_pool=3, n_holdout=2, size=48, seed=6)
    assert a.truth == b.truth and a.paths == b.paths
    assert set(a.truth).isdisjoint(c.truth)
    # Seed and holdout scenes do not depend on the pool size.
    d = C.export_scenes(tmp_path / "d", n_seed=2, n_pool=1, n_holdout=2, size=48, seed=5)
    assert {i for i, s in d.splits.items() if s != "pool"} == {i for i, s in a.splits.items() if s != "pool"}


def test_missing_dataset_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOLABEL_FASHION_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetMissing, match="sudo apt-get install dataset-fashion-mnist") as e:
        C.export_scenes(tmp_path / "out", n_seed=1, n_pool=1, n_holdout=1)
    assert "scripts/setup.sh" in str(e.value) and "nowhere" in str(e.value)
    assert not (tmp_path / "out").exists()     # nothing written


def test_export_refuses_more_scenes_than_items(tmp_path: Path) -> None:
    _need_dataset()
    with pytest.raises(ValueError, match="ask for fewer scenes"):
        C.export_scenes(tmp_path, classes=["Bag"], n_seed=0, n_pool=0, n_holdout=300)


