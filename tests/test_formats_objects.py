"""Detection/segmentation label formats: YOLO, COCO, VOC readers/writers, export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.formats import (
    OBJECT_FORMATS,
    DetSet,
    export_labels,
    read_coco,
    read_objects,
    read_voc,
    read_yolo,
    write_coco,
    write_voc,
    write_yolo,
)
from pseudolabel.data.formats.objects import DegenerateBox, training_boxes
from pseudolabel.data.formats.voc import voc_splits
from pseudolabel.data.formats.yolo import read_yolo_labels, read_yolo_names
from pseudolabel.data.ingest import scan_files
from pseudolabel.review import convert as C
from pseudolabel.types import Box

CLASSES = ("cat", "dog")
TOL = 1e-6


def _png(path: Path, w: int, h: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _same(a: Mapping[str, Sequence[Box]], b: Mapping[str, Sequence[Box]], tol: float = TOL) -> None:
    assert set(a) == set(b)
    for k in a:
        assert len(a[k]) == len(b[k]), k
        for p, q in zip(a[k], b[k]):
            assert p.label == q.label
            assert max(abs(p.x1 - q.x1), abs(p.y1 - q.y1), abs(p.x2 - q.x2), abs(p.y2 - q.y2)) <= tol, (p, q)
            assert (p.polygon is None) == (q.polygon is None), (p, q)
            if p.polygon is not None and q.polygon is not None:
                assert len(p.polygon) == len(q.polygon)
                assert np.abs(np.asarray(p.polygon) - np.asarray(q.polygon)).max() <= tol


@pytest.fixture
def yolo_detect(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    _png(images / "a.png", 100, 80, 0)
    _png(images / "sub" / "b.png", 64, 48, 1)  # no label file: no objects
    _png(images / "c.png", 50, 50, 2)
    labels.mkdir()
    (labels / "a.txt").write_text(
        "0 0.5 0.5 1 1\n"            # the whole image: touches all four edges
        "1 0.25 0.3 0.1 0.2\n"
        "\n"                          # blank lines are skipped
        "1 0.9 0.1 0.2 0.2\n"        # touches the top-right corner
    )
    (labels / "c.txt").write_text("0 0.95 0.5 0.1 0.3333333333\n")
    return images, labels


@pytest.fixture
def yolo_segment(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    _png(images / "a.png", 100, 80, 3)
    _png(images / "b.png", 40, 30, 4)
    labels.mkdir()
    (labels / "a.txt").write_text(
        "0 0 0 1 0 1 1 0 1\n"                    # polygon = the image border
        "1 0.1 0.2 0.3 0.25 0.2 0.6 0.05 0.5\n"
    )
    (labels / "b.txt").write_text("1 0.5 0.1 0.9 0.9 0.1 0.9\n")
    return images, labels


def test_read_yolo_detect_pixels(yolo_detect: tuple[Path, Path]) -> None:
    images, labels = yolo_detect
    ds = read_yolo(images, labels, classes=CLASSES)
    by_name = {it.path.name: it for it in ds.items}
    assert ds.classes == CLASSES and not ds.quarantined
    a = ds.boxes[by_name["a.png"].id]
    assert a[0] == Box(0.0, 0.0, 100.0, 80.0, "cat")
    assert a[1].label == "dog"
    assert (a[1].x1, a[1].y1, a[1].x2, a[1].y2) == pytest.approx((20, 16, 30, 32))
    assert (a[2].x2, a[2].y1) == (100.0, 0.0)
    assert ds.boxes[by_name["b.png"].id] == ()  # no label file = no objects


def _chain(ds: DetSet, tmp: Path, images: Path, task: str) -> DetSet:
    """ours -> COCO -> ours -> VOC -> ours -> YOLO -> ours, checking each step."""
    write_coco(tmp / "coco.json", ds.items, ds.boxes, classes=ds.classes, image_root=images)
    coco = read_coco(tmp / "coco.json", image_root=images)
    assert coco.classes == ds.classes
    _same(ds.boxes, coco.boxes)
    write_voc(tmp / "voc", coco.items, coco.boxes, image_root=images)
    voc = read_voc(tmp / "voc", image_root=images, classes=ds.classes)
    _same(ds.boxes, voc.boxes)
    write_yolo(tmp / "yolo2", voc.items, voc.boxes, classes=ds.classes, task=task, image_root=images)
    return read_yolo(images, tmp / "yolo2", classes=ds.classes, task=task)


def test_round_trip_detect(yolo_detect: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = yolo_detect
    ds = read_yolo(images, labels, classes=CLASSES)
    back = _chain(ds, tmp_path, images, "detect")
    _same(ds.boxes, back.boxes)
    # The written YOLO text equals the input numerically.
    orig = [list(map(float, line.split())) for line in (labels / "a.txt").read_text().split("\n") if line]
    new = [list(map(float, line.split())) for line in (tmp_path / "yolo2" / "a.txt").read_text().split("\n") if line]
    assert np.allclose(orig, new, atol=1e-9)
    assert (tmp_path / "yolo2" / "sub" / "b.txt").read_text() == ""  # empty file = no objects


def test_round_trip_segment(yolo_segment: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = yolo_segment
    ds = read_yolo(images, labels, classes=CLASSES, task="segment")
    a = ds.boxes[next(it.id for it in ds.items if it.path.name == "a.png")]
    assert a[0].polygon == ((0, 0), (100, 0), (100, 80), (0, 80))
    assert (a[1].x1, a[1].y1, a[1].x2, a[1].y2) == pytest.approx((5, 16, 30, 48))
    back = _chain(ds, tmp_path, images, "segment")
    _same(ds.boxes, back.boxes)


@pytest.mark.parametrize("fixture,task", [("yolo_detect", "detect"), ("yolo_segment", "segment")])
def test_round_trip_through_label_studio(fixture: str, task: str, request: pytest.FixtureRequest) -> None:
    images, labels = request.getfixturevalue(fixture)
    ds = read_yolo(images, labels, classes=CLASSES, task=task)  # type: ignore[arg-type]
    back = {}
    for it in ds.items:
        result = C.boxes_result(ds.boxes[it.id], width=it.width, height=it.height, task_type=task)  # type: ignore[arg-type]
        for region in result:  # Label Studio works in percent of the original size
            assert region["original_width"] == it.width and region["original_height"] == it.height
        back[it.id] = C.boxes_from_result(result)
    _same(ds.boxes, back)


def test_yolo_detect_accepts_polygon_lines(tmp_path: Path) -> None:
    _png(tmp_path / "i" / "a.png", 10, 10, 0)
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "a.txt").write_text("1 0.1 0.1 0.5 0.2 0.3 0.6\n")
    ds = read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES)
    (b,) = next(iter(ds.boxes.values()))
    assert (b.x1, b.y1, b.x2, b.y2) == pytest.approx((1, 1, 5, 6)) and b.polygon is not None


def test_tiny_overshoot_is_clipped(tmp_path: Path) -> None:
    _png(tmp_path / "i" / "a.png", 10, 10, 0)
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "a.txt").write_text("0 0.5 0.5 1.0000005 1.0000001\n")
    ds = read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES)
    (b,) = next(iter(ds.boxes.values()))
    assert (b.x1, b.y1, b.x2, b.y2) == (0.0, 0.0, 10.0, 10.0)
    assert ds.clipped == 0 and not any("clipped" in n for n in ds.notes)  # float noise, not worth a warning


def test_yolo_within_ultralytics_range_is_clipped_and_counted(tmp_path: Path) -> None:
    """The user's case: hand-drawn boxes with an edge at 1.001 (Ultralytics accepts every value
    in -0.01..1.01 and clips the box to the image)."""
    _png(tmp_path / "i" / "a.png", 200, 100, 0)
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "a.txt").write_text(
        "0 0.9005 0.5 0.201 0.2\n"    # x2 = 1.001
        "1 0.95 0.5 0.2 0.2\n"        # x2 = 1.05: every value in range, so Ultralytics keeps it
        "0 0.5 0.5 1.01 1.01\n"       # w = h = 1.01: the range's edge
        "1 0.4 0.4 0.2 0.2\n")        # inside
    ds = read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES)
    boxes = next(iter(ds.boxes.values()))
    assert len(boxes) == 4 and ds.clipped == 3 and not ds.quarantined
    assert boxes[0].x2 == 200.0 and boxes[0].x1 == pytest.approx(0.8 * 200)
    assert (boxes[1].x1, boxes[1].x2) == pytest.approx((170.0, 200.0))
    assert (boxes[2].x1, boxes[2].y1, boxes[2].x2, boxes[2].y2) == (0.0, 0.0, 200.0, 100.0)
    (note,) = [n for n in ds.notes if "clipped" in n]
    assert "3 box(es)" in note and "-0.01..1.01" in note


# --------------------------------------------------------------------------- invalid YOLO


@pytest.mark.parametrize(
    "task,line,match",
    [
        # The exact value as written, and the range that would be accepted.
        ("detect", "0 0.5 0.5 1.0125 0.4", r"w = 1\.0125 lies outside -0\.01\.\.1\.01, the range Ultralytics accepts"),
        ("detect", "0 0.5 -0.02 0.4 0.4", r"cy = -0\.02 lies outside -0\.01\.\.1\.01"),
        ("detect", "0 0.5 0.5 -0.005 0.2", r"negative size w = -0\.005"),
        ("detect", "-1 0.5 0.5 0.2 0.2", "class id '-1' is not a non-negative integer"),
        ("detect", "x 0.5 0.5 0.2 0.2", "not a non-negative integer"),
        ("detect", "0 0.5 0.5 0.2", "4 fields; expected 5"),
        ("detect", "0 0.5 0.5 0.2 0.2 0.1", "6 fields; expected 5"),
        ("detect", "0 0.5 abc 0.2 0.2", "'abc' is not a number"),
        ("detect", "0 0.5 nan 0.2 0.2", "cy = nan lies outside"),
        ("segment", "0 0.1 0.1 0.2 0.2", "at least 3 points"),
        ("segment", "0 0.1 0.1 0.2 0.2 0.3 0.3 0.4", "odd number of coordinates"),
        ("segment", "1 0.1 0.1 0.5 0.1 1.5 0.5", r"x\[2\] = 1\.5 lies outside"),
    ],
)
def test_malformed_yolo_line_quarantines_its_image_only(tmp_path: Path, task: str, line: str, match: str) -> None:
    _png(tmp_path / "i" / "a.png", 20, 10, 0)
    _png(tmp_path / "i" / "b.png", 20, 10, 1)
    (tmp_path / "l").mkdir()
    good = "0 0.5 0.5 0.2 0.2" if task == "detect" else "0 0.1 0.1 0.5 0.1 0.5 0.5"
    bad_file = tmp_path / "l" / "a.txt"
    bad_file.write_text(f"{good}\n{line}\n")
    (tmp_path / "l" / "b.txt").write_text(f"{good}\n")
    ds = read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES, task=task)  # type: ignore[arg-type]
    assert [it.path.name for it in ds.items] == ["b.png"]  # the other image is read
    (q,) = ds.quarantined
    assert q.path == bad_file and q.reason.startswith("line 2: ") and "a.png left out" in q.reason
    assert re.search(match, q.reason), q.reason
    # Read on its own, the file raises with file and line.
    with pytest.raises(LabelProblem, match=match) as err:
        read_yolo_labels(bad_file, classes=CLASSES, width=20, height=10, task=task)  # type: ignore[arg-type]
    assert f"{bad_file}:2:" in str(err.value)


def test_yolo_zero_area_box_is_skipped_with_a_row(tmp_path: Path) -> None:
    _png(tmp_path / "i" / "a.png", 20, 10, 0)
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0 0.2\n1 1.005 0.5 0.01 0.2\n")
    ds = read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES)
    (b,) = next(iter(ds.boxes.values()))  # the image keeps its good box
    assert b.label == "cat"
    assert [q.reason.split(":")[0] for q in ds.quarantined] == ["line 2", "line 3"]
    assert all("zero-area box" in q.reason and "object skipped" in q.reason for q in ds.quarantined)
    with pytest.raises(DegenerateBox):
        read_yolo_labels(tmp_path / "l" / "a.txt", classes=CLASSES, width=20, height=10)


def test_yolo_class_id_out_of_range_is_an_error(tmp_path: Path) -> None:
    _png(tmp_path / "i" / "a.png", 20, 10, 0)
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "a.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"a\.txt:1: class id 2 is out of range; accepted 0\.\.1 \(0=cat, 1=dog\)"):
        read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES)


def test_yolo_label_without_image_raises(yolo_detect: tuple[Path, Path]) -> None:
    images, labels = yolo_detect
    (labels / "typo.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"typo\.txt: label file has no image"):
        read_yolo(images, labels, classes=CLASSES)


def test_two_images_one_label_file_raise(yolo_detect: tuple[Path, Path]) -> None:
    images, labels = yolo_detect
    _png(images / "a.jpg", 10, 10, 9)
    with pytest.raises(ValueError, match=r"a\.jpg and .*a\.png would share the label file"):
        read_yolo(images, labels, classes=CLASSES)


def test_unreadable_image_is_quarantined(yolo_detect: tuple[Path, Path]) -> None:
    images, labels = yolo_detect
    (images / "broken.png").write_bytes(b"not a png")
    ds = read_yolo(images, labels, classes=CLASSES)
    assert [q.path.name for q in ds.quarantined] == ["broken.png"]
    assert len(ds.boxes) == len(ds.items) == 3


def test_duplicate_bytes_with_different_labels_raise(tmp_path: Path) -> None:
    _png(tmp_path / "i" / "a.png", 10, 10, 0)
    (tmp_path / "i" / "b.png").write_bytes((tmp_path / "i" / "a.png").read_bytes())
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match="conflicting labels.*a.txt.*b.txt"):
        read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES)
    (tmp_path / "l" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = read_yolo(tmp_path / "i", tmp_path / "l", classes=CLASSES)
    assert len(ds.items) == 1 and [p.name for p, _ in ds.duplicates] == ["b.png"]


def test_read_yolo_names(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    assert read_yolo_names(tmp_path / "d.yaml") == CLASSES
    (tmp_path / "e.yaml").write_text("names: [cat, dog]\n")
    assert read_yolo_names(tmp_path / "e.yaml") == CLASSES
    (tmp_path / "f.yaml").write_text("names:\n  0: cat\n  2: dog\n")
    with pytest.raises(ValueError, match="not 0..1"):
        read_yolo_names(tmp_path / "f.yaml")


# --------------------------------------------------------------------------- invalid COCO


def _coco(tmp_path: Path, ann: dict, *, seg: bool = False) -> Path:
    _png(tmp_path / "img" / "a.png", 100, 50, 0)
    _png(tmp_path / "img" / "b.png", 100, 50, 1)
    good = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0}
    if seg:
        good["segmentation"] = [[10, 10, 30, 10, 30, 30]]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
                   {"id": 2, "file_name": "b.png", "width": 100, "height": 50}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [good, {"id": 7, "image_id": 1, "category_id": 2, "iscrowd": 0} | ann,
                        {"id": 8, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "ann,match",
    [
        ({"bbox": [90, 10, 20, 10]}, r"x2 = 110\.0 lies outside the image \(accepted: -1\.\.101"),
        ({"bbox": [10, -5, 20, 10]}, r"y1 = -5\.0 lies outside"),
        ({"bbox": [10, 10, -1, 10]}, "negative width or height"),
        ({"bbox": [10, 10, 5]}, r"is not \[x, y, w, h\]"),
        ({"bbox": [10, "a", 5, 5]}, "'a' is not a number"),
        ({"bbox": [10, 10, 5, 5], "category_id": 9}, r"category_id 9 is not one of the categories \[1, 2\]"),
        ({"bbox": [10, 10, 5, 5], "segmentation": [[10, 10, 12, 12]]}, "at least 3"),
        ({"bbox": [10, 10, 5, 5], "segmentation": [[10, 10, 12, 12, 13]]}, "odd number"),
        ({"bbox": [10, 10, 5, 5], "segmentation": {"counts": "x", "size": [50, 100]}}, "RLE"),
        ({"bbox": [10, 10, 5, 5], "segmentation": [[10, 10, 12, 10, 12, 12], [1, 1, 2, 1, 2, 2]]},
         "2 polygon parts.*multipart: largest"),
    ],
)
def test_malformed_coco_annotation_quarantines_its_image(tmp_path: Path, ann: dict, match: str) -> None:
    path = _coco(tmp_path, ann)
    ds = read_coco(path, image_root=tmp_path / "img")
    assert [it.path.name for it in ds.items] == ["b.png"]  # the other image is read
    (q,) = ds.quarantined
    assert q.path == path and q.reason.startswith("annotation id 7: ") and "a.png left out" in q.reason
    assert re.search(match, q.reason), q.reason


def test_coco_zero_size_bbox_and_unknown_image_id_are_rows(tmp_path: Path) -> None:
    path = _coco(tmp_path, {"bbox": [10, 10, 0, 10]})
    ds = read_coco(path, image_root=tmp_path / "img")
    assert len(ds.items) == 2 and not ds.clipped
    (q,) = ds.quarantined
    assert q.reason.startswith("annotation id 7: zero-area box") and "object skipped" in q.reason
    path = _coco(tmp_path, {"bbox": [10, 10, 5, 5], "image_id": 4})
    (q,) = read_coco(path, image_root=tmp_path / "img").quarantined
    assert q.reason == "annotation id 7: image_id 4 is not in 'images'; annotation skipped"


def test_coco_crowd_object_is_a_flagged_box(tmp_path: Path) -> None:
    """One iscrowd=1 object (as in the official COCO files: RLE segmentation) no longer
    refuses the file: it is a crowd box, left out of training."""
    rle = {"counts": [0, 10, 40], "size": [50, 100]}
    path = _coco(tmp_path, {"bbox": [10, 10, 5, 5], "iscrowd": 1, "segmentation": rle})
    ds = read_coco(path, image_root=tmp_path / "img")
    a = next(it for it in ds.items if it.path.name == "a.png")
    cat, crowd = ds.boxes[a.id]
    assert not cat.crowd and crowd.crowd and crowd.polygon is None and crowd.label == "dog"
    assert (crowd.x1, crowd.y1, crowd.x2, crowd.y2) == (10, 10, 15, 15)
    assert training_boxes(ds.boxes[a.id]) == (cat,)


def test_coco_unknown_class_name_and_size_mismatch(tmp_path: Path) -> None:
    path = _coco(tmp_path, {"bbox": [1, 1, 2, 2]})
    with pytest.raises(DataError, match=r"class name\(s\) not in the config's classes: 'dog' \(first at .*annotation "
                                        r"id 7\)\. Config classes \(in order\): \['cat'\]; names in the files: "
                                        r"\['cat', 'dog'\]"):
        read_coco(path, image_root=tmp_path / "img", classes=["cat"])
    data = json.loads(path.read_text())
    data["images"][0]["width"] = 99
    path.write_text(json.dumps(data))
    ds = read_coco(path, image_root=tmp_path / "img")
    (q,) = ds.quarantined
    assert "declares 99x50 but the image a.png is 100x50" in q.reason and [it.path.name for it in ds.items] == ["b.png"]


def test_coco_multipart_largest_and_tolerance(tmp_path: Path) -> None:
    ann = {"bbox": [0, 0, 100.5, 20], "segmentation": [[1, 1, 2, 1, 2, 2], [0, 0, 50, 0, 50, 20, 0, 20]]}
    path = _coco(tmp_path, ann)
    ds = read_coco(path, image_root=tmp_path / "img", multipart="largest")
    b = next(iter(ds.boxes.values()))[1]
    assert b.x2 == 100.0  # 0.5 px over the edge: within tolerance, clipped
    assert b.polygon == ((0, 0), (50, 0), (50, 20), (0, 20))


# --------------------------------------------------------------------------- invalid VOC


def _voc(tmp_path: Path, obj: str) -> Path:
    _png(tmp_path / "img" / "a.png", 100, 50, 0)
    _png(tmp_path / "img" / "b.png", 100, 50, 1)
    (tmp_path / "ann").mkdir(exist_ok=True)
    head = "<annotation><filename>{}</filename><size><width>100</width><height>50</height></size>"
    first = ("<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
             "</object>")
    (tmp_path / "ann" / "b.xml").write_text(head.format("b.png") + first + "</annotation>")
    path = tmp_path / "ann" / "a.xml"
    path.write_text(head.format("a.png") + first + f"<object>{obj}</object></annotation>")
    return path


def _bnd(x1: object, y1: object, x2: object, y2: object) -> str:
    return f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"


@pytest.mark.parametrize(
    "obj,match",
    [
        ("<name>cat</name>" + _bnd(10, 10, 150, 20), r"x2 = 150\.0 lies outside"),
        ("<name>cat</name>" + _bnd(20, 10, 10, 20), "not ordered"),
        ("<name>cat</name>", "missing <bndbox>"),
        ("<name></name>" + _bnd(10, 10, 20, 20), "missing or empty <name>"),
        ("<name>cat</name>" + _bnd(10, "ten", 20, 20), "<ymin> = 'ten' is not a number"),
        ("<name>cat</name><difficult>maybe</difficult>" + _bnd(10, 10, 20, 20), "<difficult> = 'maybe'"),
        ("<name>cat</name>" + _bnd(10, 10, 20, 20) + "<polygon><x1>1</x1><y1>1</y1><x2>2</x2><y2>2</y2></polygon>",
         "at least 3"),
        ("<name>cat</name>" + _bnd(10, 10, 20, 20)
         + "<polygon><x1>1</x1><y1>1</y1><x2>2</x2><y2>2</y2><x3>3</x3></polygon>", "y3"),
    ],
)
def test_malformed_voc_object_quarantines_its_image(tmp_path: Path, obj: str, match: str) -> None:
    path = _voc(tmp_path, obj)
    ds = read_voc(tmp_path / "ann", image_root=tmp_path / "img", classes=CLASSES)
    assert [it.path.name for it in ds.items] == ["b.png"]
    (q,) = ds.quarantined
    assert q.path == path and q.reason.startswith("object 2: ") and "a.png left out" in q.reason
    assert re.search(match, q.reason), q.reason


def test_voc_zero_area_box_is_skipped_and_unknown_names_listed(tmp_path: Path) -> None:
    # Label Studio's VOC export truncates with int(): a 0.64 px box becomes xmin = xmax = 64.
    _voc(tmp_path, "<name>cat</name>" + _bnd(64, 10, 64, 20))
    ds = read_voc(tmp_path / "ann", image_root=tmp_path / "img", classes=CLASSES)
    assert len(ds.items) == 2 and all(len(b) == 1 for b in ds.boxes.values())
    (q,) = ds.quarantined
    assert q.reason.startswith("object 2: zero-area box x1=64.0") and "object skipped" in q.reason
    _voc(tmp_path, "<name>bird</name>" + _bnd(10, 10, 20, 20))
    with pytest.raises(DataError, match=r"'bird' \(first at .*a\.xml: object 2\)\. Config classes \(in order\): "
                                        r"\['cat', 'dog'\]; names in the files: \['bird', 'cat'\]"):
        read_voc(tmp_path / "ann", image_root=tmp_path / "img", classes=CLASSES)


def test_voc_missing_image_and_bad_xml(tmp_path: Path) -> None:
    (tmp_path / "ann").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "ann" / "a.xml").write_text("<annotation><filename>zz.png</filename></annotation>")
    with pytest.raises(DataError, match=r"a\.xml: image not found \(<filename> 'zz.png'"):
        read_voc(tmp_path / "ann", image_root=tmp_path / "img")
    (tmp_path / "ann" / "a.xml").write_text("<annotation>\n<filename>zz.png</filename>\n<oops></annotation>")
    _voc(tmp_path, "<name>cat</name>" + _bnd(10, 10, 20, 20))
    (tmp_path / "ann" / "a.xml").write_text("<annotation>\n<filename>a.png</filename>\n<oops></annotation>")
    ds = read_voc(tmp_path / "ann", image_root=tmp_path / "img")
    (q,) = ds.quarantined
    assert q.path.name == "a.xml" and q.reason.startswith("line 3: not valid XML")
    assert [it.path.name for it in ds.items] == ["b.png"]


# --------------------------------------------------------------------------- writers / export


def test_writers_reject_unknown_class_and_missing_item(yolo_detect: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = yolo_detect
    ds = read_yolo(images, labels, classes=CLASSES)
    with pytest.raises(ValueError, match=r"class 'dog' is not one of the accepted classes \['cat'\]"):
        write_yolo(tmp_path / "o", ds.items, ds.boxes, classes=["cat"])
    with pytest.raises(ValueError, match="no entry in boxes"):
        write_coco(tmp_path / "o.json", ds.items, {}, classes=CLASSES)
    with pytest.raises(ValueError, match=r"a\.png: box 0 \('cat'\): task 'segment' needs a polygon"):
        write_yolo(tmp_path / "o", ds.items, ds.boxes, classes=CLASSES, task="segment")
    a = next(it for it in ds.items if it.path.name == "a.png")
    for bad, match in [(Box(90, 0, 101.5, 10, "cat"), "x2 = 101.5 lies outside the image"),
                       (Box(5, 5, 5, 10, "cat"), "zero-area box"),
                       (Box(1, 1, 5, 5, "cat", polygon=((1, 1), (5, 5))), "at least 3")]:
        for write in (write_yolo, write_coco, write_voc):
            with pytest.raises(ValueError, match=match) as err:
                write(tmp_path / "o2", ds.items, ds.boxes | {a.id: (bad,)}, classes=CLASSES)
            assert "a.png: box 0" in str(err.value)
    # Within the 1 px tolerance: written clipped, so every reader accepts the file.
    poly = ((90.5, -0.5), (100.5, 0), (95, 10))
    edge = {a.id: (Box(90.5, -0.5, 100.5, 10, "cat", polygon=poly),)}
    write_yolo(tmp_path / "y", [a], edge, classes=CLASSES, task="segment", image_root=images)
    write_coco(tmp_path / "c.json", [a], edge, classes=CLASSES, image_root=images)
    write_voc(tmp_path / "v", [a], edge, image_root=images)
    clipped = (Box(90.5, 0, 100, 10, "cat", polygon=((90.5, 0), (100, 0), (95, 10))),)
    for back in (read_yolo(images, tmp_path / "y", classes=CLASSES, task="segment"),
                 read_coco(tmp_path / "c.json", image_root=images),
                 read_voc(tmp_path / "v", image_root=images)):
        _same({a.id: back.boxes[a.id]}, {a.id: clipped})


@pytest.mark.parametrize("fmt", OBJECT_FORMATS)
def test_export_labels_reads_back(yolo_segment: tuple[Path, Path], tmp_path: Path, fmt: str) -> None:
    images, labels = yolo_segment
    ds = read_yolo(images, labels, classes=CLASSES, task="segment")
    out = tmp_path / "export"
    path = export_labels(fmt, out, ds.items, ds.boxes, classes=CLASSES, task="segment")
    export_labels(fmt, out, ds.items[:1], ds.boxes, classes=CLASSES, task="segment", split="val")
    if fmt == "yolo":
        data = yaml.safe_load(path.read_text())
        assert data["names"] == {0: "cat", 1: "dog"} and data["val"] == "images/val"
        assert (Path(data["path"]) / data["train"]).is_dir()
        assert (out / "classes.txt").read_text() == "cat\ndog\n"  # what Label Studio's YOLO importer reads
        back = read_yolo(out / "images" / "train", out / "labels" / "train",
                           classes=read_yolo_names(path), task="segment")
    elif fmt == "voc":
        assert sorted(path.read_text().split()) == ["a", "b"]
        assert voc_splits(out) == ["train", "val"]
        back = read_objects("voc", out / "Annotations", classes=CLASSES, split="train")
    else:
        back = read_objects(fmt, path, classes=CLASSES, task="segment",
                              image_root=out if fmt == "labelstudio" else None)
    _same(ds.boxes, back.boxes)


def test_export_unknown_format_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown export format 'tfrecord'; choose one of 'yolo', 'coco', 'voc', "
                                        "'labelme', 'cvat', 'labelstudio'"):
        export_labels("tfrecord", tmp_path, [], {}, classes=CLASSES)


def test_export_name_clash_gets_id_prefix(tmp_path: Path) -> None:
    _png(tmp_path / "x" / "a.png", 10, 10, 0)
    _png(tmp_path / "y" / "a.png", 10, 10, 1)
    ds_items = scan_files([tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"]).items
    boxes = {ds_items[0].id: (Box(1, 1, 5, 5, "cat"),), ds_items[1].id: ()}
    export_labels("yolo", tmp_path / "out", ds_items, boxes, classes=CLASSES)
    back = read_yolo(tmp_path / "out" / "images" / "train", tmp_path / "out" / "labels" / "train", classes=CLASSES)
    _same(boxes, back.boxes)


def test_import_is_light() -> None:
    code = ("import sys, pseudolabel.data.formats, pseudolabel.data.geometry, pseudolabel.metrics_det; "
            "print(sorted(m for m in ('cv2', 'pycocotools', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
