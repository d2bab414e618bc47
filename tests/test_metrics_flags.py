"""Crowd and difficult truth in detection mAP (pycocotools), and the flags through the ledger."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pseudolabel.data.boxes import boxes_from_json, boxes_to_json
from pseudolabel.metrics_det import detection_map
from pseudolabel.types import Box

SIZES = {"img": (100, 100)}


def _map(gt: tuple[Box, ...], pred: tuple[Box, ...]) -> dict:
    return detection_map({"img": gt}, {"img": pred}, classes=["cat"], image_sizes=SIZES)


A = Box(0, 0, 50, 50, "cat")
D = Box(60, 60, 90, 90, "cat")


def _pred(b: Box, score: float) -> Box:
    return replace(b, score=score, crowd=False, difficult=False)


def test_missed_difficult_object_costs_no_recall() -> None:
    preds = (_pred(A, 0.8),)
    assert _map((A, D), preds)["map50"] < 0.6  # an ordinary object missed: half the recall
    res = _map((A, replace(D, difficult=True)), preds)
    assert res["map50"] == pytest.approx(1.0) and res["n_gt"] == 1


def test_detection_on_a_difficult_object_is_not_a_false_positive() -> None:
    preds = (_pred(D, 0.9), _pred(A, 0.8))
    assert _map((A,), preds)["map50"] < 0.9  # without the object, that detection is a false positive
    assert _map((A, replace(D, difficult=True)), preds)["map50"] == pytest.approx(1.0)


def test_crowd_region_absorbs_detections_inside_it() -> None:
    crowd = Box(50, 0, 100, 100, "cat", crowd=True)
    inside = (_pred(Box(55, 10, 65, 20, "cat"), 0.9), _pred(Box(70, 50, 90, 60, "cat"), 0.85))
    preds = (*inside, _pred(A, 0.8))
    res = _map((A, crowd), preds)
    assert res["map50"] == pytest.approx(1.0) and res["n_gt"] == 1
    # Marked difficult instead, the region is matched by IoU: small boxes inside it do not
    # match it and count as false positives -- crowd and difficult are not the same rule.
    assert _map((A, replace(crowd, crowd=False, difficult=True)), preds)["map50"] < 0.9


def test_only_ignored_truth_means_undefined_map() -> None:
    res = _map((replace(A, crowd=True),), (_pred(A, 0.9),))
    assert res["n_gt"] == 0 and res["map50"] != res["map50"]  # nan: nothing to find


def test_ledger_codec_keeps_flags_and_reads_old_rows() -> None:
    boxes = (Box(1, 2, 3, 4, "cat"), Box(1, 2, 3, 4, "cat", crowd=True), Box(1, 2, 5, 6, "dog", difficult=True))
    text = boxes_to_json(boxes)
    assert text is not None and boxes_from_json(text) == boxes
    rows = json.loads(text)
    assert "crowd" not in rows[0] and "difficult" not in rows[0]  # unflagged rows look as before
    # A row written before the flags existed reads as unflagged.
    old = '[{"xyxy": [1, 2, 3, 4], "label": "cat", "score": null, "polygon": null}]'
    assert boxes_from_json(old) == (Box(1, 2, 3, 4, "cat"),)
