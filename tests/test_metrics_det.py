"""COCO mAP (through pycocotools) and semantic-segmentation scores: known answers, invariants."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pseudolabel.metrics_det import BACKGROUND, detection_map, segmentation_scores, semantic_mask
from pseudolabel.types import Box

CLASSES = ["cat", "dog"]
SIZES = {"a": (100, 100), "b": (200, 100), "c": (64, 64)}


def _square(x: float, y: float, s: float, label: str, score: float | None = None, *, poly: bool = False) -> Box:
    polygon = ((x, y), (x + s, y), (x + s, y + s), (x, y + s)) if poly else None
    return Box(x, y, x + s, y + s, label, score=score, polygon=polygon)


def _gt() -> dict[str, tuple[Box, ...]]:
    return {
        "a": (_square(10, 10, 20, "cat"), _square(50, 50, 30, "dog")),
        "b": (_square(100, 20, 40, "cat"),),
        "c": (),
    }


def _perfect(gt: dict[str, tuple[Box, ...]]) -> dict[str, tuple[Box, ...]]:
    return {k: tuple(Box(b.x1, b.y1, b.x2, b.y2, b.label, score=0.9, polygon=b.polygon) for b in v)
            for k, v in gt.items()}


def test_perfect_predictions_score_one() -> None:
    gt = _gt()
    m = detection_map(gt, _perfect(gt), classes=CLASSES, image_sizes=SIZES)
    assert m["map50_95"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["map75"] == pytest.approx(1.0)
    assert m["per_class_ap50_95"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert (m["n_images"], m["n_gt"], m["n_pred"]) == (3, 3, 3)


def test_two_classes_half_right() -> None:
    # One image, a cat and a dog; the cat is found, the dog is called a cat (lower score).
    gt = {"a": (_square(10, 10, 20, "cat"), _square(50, 50, 30, "dog"))}
    pred = {"a": (_square(10, 10, 20, "cat", 0.9), _square(50, 50, 30, "cat", 0.8))}
    m = detection_map(gt, pred, classes=CLASSES, image_sizes=SIZES)
    assert m["per_class_ap50_95"] == pytest.approx({"cat": 1.0, "dog": 0.0})
    assert m["map50_95"] == pytest.approx(0.5) and m["map50"] == pytest.approx(0.5)


def test_shifted_box_counts_at_50_not_75() -> None:
    # 10x10 box shifted by 2.4 px: IoU = 76 / 124 = 0.613 -> matches at .50/.55/.60 only.
    gt = {"a": (Box(0, 0, 10, 10, "cat"),)}
    pred = {"a": (Box(2.4, 0, 12.4, 10, "cat", score=0.7),)}
    m = detection_map(gt, pred, classes=CLASSES, image_sizes=SIZES)
    assert m["map50"] == pytest.approx(1.0)
    assert m["map75"] == pytest.approx(0.0)
    assert m["map50_95"] == pytest.approx(0.3)
    assert m["per_class_ap50"] == {"cat": pytest.approx(1.0), "dog": None}  # no dog truth: undefined


def test_no_predictions_and_no_truth() -> None:
    gt = _gt()
    m = detection_map(gt, {}, classes=CLASSES, image_sizes=SIZES)
    assert (m["map50_95"], m["map50"], m["map75"]) == (0.0, 0.0, 0.0)
    assert m["per_class_ap50_95"] == {"cat": 0.0, "dog": 0.0}
    empty = {"a": (), "c": ()}
    m = detection_map(empty, {"a": (_square(1, 1, 5, "cat", 0.5),)}, classes=CLASSES, image_sizes=SIZES)
    assert math.isnan(m["map50_95"]) and math.isnan(m["map50"])
    assert m["per_class_ap50_95"] == {"cat": None, "dog": None}


def _random_case(seed: int) -> tuple[dict[str, tuple[Box, ...]], dict[str, list[Box]], dict[str, tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    gt: dict[str, tuple[Box, ...]] = {}
    pred: dict[str, list[Box]] = {}
    sizes = {}
    scores = iter(rng.permutation(1000) / 1000 + 0.0005)  # distinct: no ties to break
    for i in range(6):
        key = f"img{i}"
        sizes[key] = (120, 90)
        objs = []
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 70), rng.uniform(0, 50)
            objs.append(Box(x, y, x + rng.uniform(10, 40), y + rng.uniform(10, 35), CLASSES[rng.integers(2)]))
        gt[key] = tuple(objs)
        pred[key] = []
        for b in objs:
            if rng.random() < 0.8:
                d = rng.normal(0, 1.5, 4)
                label = b.label if rng.random() < 0.8 else CLASSES[1 - CLASSES.index(b.label)]
                pred[key].append(Box(b.x1 + d[0], b.y1 + d[1], b.x2 + d[2], b.y2 + d[3], label, score=float(next(scores))))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 80), rng.uniform(0, 60)
            pred[key].append(Box(x, y, x + 20, y + 20, CLASSES[rng.integers(2)], score=float(next(scores))))
    return gt, pred, sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuting_predictions_does_not_change_map(seed: int) -> None:
    gt, pred, sizes = _random_case(seed)
    base = detection_map(gt, pred, classes=CLASSES, image_sizes=sizes)
    assert 0.0 < base["map50"] < 1.0  # a non-trivial case
    rnd = random.Random(seed)
    keys = list(pred)
    rnd.shuffle(keys)
    shuffled = {k: rnd.sample(pred[k], len(pred[k])) for k in keys}
    again = detection_map(gt, shuffled, classes=CLASSES, image_sizes=sizes)
    for key in ("map50_95", "map50", "map75"):
        assert again[key] == pytest.approx(base[key], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_low_score_false_positive_does_not_increase_map(seed: int) -> None:
    gt, pred, sizes = _random_case(seed)
    base = detection_map(gt, pred, classes=CLASSES, image_sizes=sizes)
    worse = {k: list(v) for k, v in pred.items()}
    worse["img0"].append(Box(100, 70, 119, 89, "cat", score=1e-4))  # far from everything
    m = detection_map(gt, worse, classes=CLASSES, image_sizes=sizes)
    assert m["map50_95"] <= base["map50_95"] + 1e-12
    # And a confident false positive (ranked first) strictly lowers a non-zero AP.
    best = max(CLASSES, key=lambda c: base["per_class_ap50"][c] or 0.0)
    assert base["per_class_ap50"][best] > 0
    worse["img0"].append(Box(100, 70, 119, 89, best, score=0.99999))
    m2 = detection_map(gt, worse, classes=CLASSES, image_sizes=sizes)
    assert m2["per_class_ap50"][best] < base["per_class_ap50"][best]


def test_missing_a_truth_object_lowers_map() -> None:
    gt = _gt()
    pred = _perfect(gt)
    pred["a"] = pred["a"][:1]
    m = detection_map(gt, pred, classes=CLASSES, image_sizes=SIZES)
    assert m["per_class_ap50_95"]["dog"] == 0.0 and m["map50_95"] == pytest.approx(0.5)


def test_segm_iou_type() -> None:
    gt = {"a": (_square(10, 10, 20, "cat", poly=True),), "b": (_square(100, 20, 40, "dog", poly=True),)}
    m = detection_map(gt, _perfect(gt), classes=CLASSES, image_sizes=SIZES, iou_type="segm")
    assert m["map50_95"] == pytest.approx(1.0)
    # Same boxes, but the predicted cat polygon is a triangle (half the square): IoU 0.5.
    tri = Box(10, 10, 30, 30, "cat", score=0.9, polygon=((10, 10), (30, 10), (10, 30)))
    pred = _perfect(gt) | {"a": (tri,)}
    assert detection_map(gt, pred, classes=CLASSES, image_sizes=SIZES)["map50_95"] == pytest.approx(1.0)
    seg = detection_map(gt, pred, classes=CLASSES, image_sizes=SIZES, iou_type="segm")
    assert seg["per_class_ap50_95"]["cat"] < 0.2 and seg["per_class_ap50_95"]["dog"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pred": {"a": (_square(1, 1, 5, "cat"),)}}, "score None must be a finite number"),
        ({"pred": {"a": (_square(1, 1, 5, "bird", 0.5),)}}, r"label 'bird' is not one of classes \['cat', 'dog'\]"),
        ({"pred": {"zzz": ()}}, "not in gt"),
        ({"iou_type": "keypoints"}, "iou_type 'keypoints'"),
        ({"iou_type": "segm"}, "needs a polygon"),
        ({"image_sizes": {"a": (100, 100)}}, "image_sizes has no"),
    ],
)
def test_detection_map_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"gt": _gt(), "pred": {}, "classes": CLASSES, "image_sizes": SIZES} | kwargs
    with pytest.raises(ValueError, match=match):
        detection_map(args.pop("gt"), args.pop("pred"), **args)


# --------------------------------------------------------------------------- semantic masks


def test_segmentation_scores_known_answer() -> None:
    gt = np.zeros((4, 4), np.int64)
    gt[:, :2] = 1  # 8 cat pixels, 8 background
    pred = np.zeros((4, 4), np.int64)
    pred[:, 0] = 1  # 4 of the cats found
    pred[0, 3] = 2  # one background pixel called dog
    s = segmentation_scores({"x": gt}, {"x": pred}, classes=CLASSES)
    assert s["per_class_iou"] == {"cat": 0.5, "dog": 0.0}
    assert s["miou"] == pytest.approx(0.25)
    assert s["pixel_accuracy"] == pytest.approx(11 / 16)
    s = segmentation_scores([gt], [pred], classes=CLASSES, include_background=True)
    assert s["per_class_iou"][BACKGROUND] == pytest.approx(7 / 12)
    assert s["miou"] == pytest.approx((7 / 12 + 0.5 + 0.0) / 3)


def test_segmentation_scores_perfect_and_absent_class() -> None:
    gt = [np.array([[0, 1], [1, 1]]), np.array([[1, 1], [0, 0]])]
    s = segmentation_scores(gt, [g.copy() for g in gt], classes=CLASSES)
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0
    assert s["per_class_iou"]["dog"] is None  # in neither truth nor prediction: undefined
    assert s["n_pixels"] == 8


def test_segmentation_scores_rejects_bad_masks() -> None:
    with pytest.raises(ValueError, match="shapes"):
        segmentation_scores([np.zeros((2, 2), int)], [np.zeros((2, 3), int)], classes=CLASSES)
    with pytest.raises(ValueError, match=r"values 3\.\.3; accepted 0 \(background\)\.\.2"):
        segmentation_scores([np.zeros((2, 2), int)], [np.full((2, 2), 3)], classes=CLASSES)
    with pytest.raises(ValueError, match="different keys"):
        segmentation_scores({"a": np.zeros((2, 2), int)}, {"b": np.zeros((2, 2), int)}, classes=CLASSES)


def test_semantic_mask_from_polygons_and_boxes() -> None:
    boxes = [
        Box(0, 0, 4, 4, "cat", score=0.9),  # no polygon: the rectangle
        Box(2, 2, 6, 6, "dog", score=0.5, polygon=((2, 2), (6, 2), (6, 6), (2, 6))),
    ]
    m = semantic_mask(boxes, height=8, width=8, classes=CLASSES)
    assert m.dtype == np.int32 and m.shape == (8, 8)
    assert m[3, 3] == 1  # overlap: the more confident cat is drawn on top
    assert m[5, 5] == 2 and m[7, 7] == 0 and m[0, 0] == 1
    assert (m == 1).sum() == 16 and (m == 2).sum() == 16 - 4
