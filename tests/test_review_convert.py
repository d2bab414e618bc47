"""Unit tests for the pure Label Studio converters (no server, no SDK)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pseudolabel.review import convert as C
from pseudolabel.types import Box

CLASSES = ["cat", "dog", 'a "quoted" <tag> & more']


def test_importing_review_does_not_import_the_sdk() -> None:
    import pseudolabel.review  # noqa: F401

    # The SDK may already be loaded by another test in the same process; check the
    # converters' own module namespace instead of sys.modules in that case.
    assert "label_studio_sdk" not in vars(C)
    if "label_studio_sdk" not in sys.modules:
        import pseudolabel.review.client  # noqa: F401

        assert "label_studio_sdk" not in sys.modules


@pytest.mark.parametrize("label", CLASSES)
def test_choices_round_trip(label: str) -> None:
    result = C.choices_result(label)
    assert result[0]["type"] == "choices"
    assert result[0]["from_name"] == "label" and result[0]["to_name"] == "image"
    assert C.label_from_choices(result) == label


def test_label_from_choices_empty_and_foreign_regions() -> None:
    assert C.label_from_choices([]) is None
    other = C.choices_result("cat", from_name="other")
    assert C.label_from_choices(other) is None
    assert C.label_from_choices(other + C.choices_result("dog")) == "dog"


def test_label_from_choices_rejects_several_choices() -> None:
    result = [{"from_name": "label", "to_name": "image", "type": "choices",
               "value": {"choices": ["cat", "dog"]}}]
    with pytest.raises(ValueError, match="several"):
        C.label_from_choices(result)


def test_choices_result_rejects_empty_label() -> None:
    with pytest.raises(ValueError, match="label"):
        C.choices_result("")


@pytest.mark.parametrize("task_type", ["classify", "detect", "segment"])
def test_label_config_round_trips_classes_with_xml_escaping(task_type: str) -> None:
    config = C.label_config(CLASSES, task_type=task_type)  # type: ignore[arg-type]
    assert "&quot;" in config and "&lt;tag&gt;" in config and "&amp;" in config
    assert C.classes_from_label_config(config) == tuple(CLASSES)
    tag = {"classify": "<Choices", "detect": "<RectangleLabels", "segment": "<PolygonLabels"}
    assert tag[task_type] in config


def test_label_config_classify_shape() -> None:
    config = C.label_config_classify(["a", "b"])
    assert '<Image name="image" value="$image"/>' in config
    assert 'choice="single"' in config and 'showInline="true"' in config
    assert config.count("<Choice ") == 2


@pytest.mark.parametrize(
    "classes, match",
    [([], "empty"), (["a", "a"], "duplicate"), (["a", ""], "non-empty"), ("abc", "string")],
)
def test_bad_class_lists_are_rejected(classes: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        C.label_config_classify(classes)  # type: ignore[arg-type]


def test_label_config_rejects_unknown_task_type() -> None:
    with pytest.raises(ValueError, match="task_type"):
        C.label_config(["a"], task_type="caption")  # type: ignore[arg-type]


def test_classes_from_label_config_errors() -> None:
    with pytest.raises(ValueError, match="XML"):
        C.classes_from_label_config("<View>")
    with pytest.raises(ValueError, match="no control tag"):
        C.classes_from_label_config(C.label_config_classify(["a"]), from_name="nope")


def test_ls_prediction_score_is_strictly_decreasing_and_bounded() -> None:
    us = [-50.0, -1.0, 0.0, 0.1, 0.5, 1.0, 2.3, 10.0, 700.0]
    scores = [C.ls_prediction_score(u) for u in us]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(a > b for a, b in zip(scores[:-2], scores[1:-1]))  # strict where representable
    assert scores[-1] <= scores[-2]
    assert C.ls_prediction_score(0.0) == pytest.approx(0.5)
    # Lowest score = served first under uncertainty sampling = most uncertain.
    assert min(range(len(us)), key=lambda i: scores[i]) == len(us) - 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_ls_prediction_score_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        C.ls_prediction_score(bad)


def test_local_files_url_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "images"
    path = root / "sub dir" / "ä b.png"
    url = C.local_files_url(path, root)
    assert url == "/data/local-files/?d=images/sub%20dir/%C3%A4%20b.png"
    assert C.path_from_local_files_url(url, root) == path.resolve()


def test_local_files_url_rejects_outside_images_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    with pytest.raises(ValueError, match="outside"):
        C.local_files_url(tmp_path / "elsewhere.png", root)
    with pytest.raises(ValueError, match="outside"):
        C.local_files_url(root / ".." / "images2" / "x.png", root)


EDGE_BOXES = [
    Box(0, 0, 640, 480, "cat"),  # the whole image
    Box(0, 0, 1, 1, "dog", score=0.25),  # one pixel at the corner
    Box(639, 479, 640, 480, "cat"),  # one pixel at the far corner
    Box(10.5, 20.25, 30.75, 400.125, "dog", score=0.9),  # sub-pixel
]


@pytest.mark.parametrize("box", EDGE_BOXES)
def test_rectangle_round_trip(box: Box) -> None:
    region = C.rectangle_result(box, width=640, height=480)
    v = region["value"]
    assert 0 <= v["x"] <= 100 and 0 <= v["y"] <= 100
    assert v["x"] + v["width"] <= 100 + 1e-9 and v["y"] + v["height"] <= 100 + 1e-9
    assert region["original_width"] == 640 and region["original_height"] == 480
    back = C.box_from_rectangle(region)
    assert back.label == box.label and back.score == box.score
    for a, b in [(back.x1, box.x1), (back.y1, box.y1), (back.x2, box.x2), (back.y2, box.y2)]:
        assert a == pytest.approx(b, abs=1e-9)


def test_rectangle_uses_given_size_when_region_has_none() -> None:
    region = C.rectangle_result(Box(10, 20, 30, 40, "cat"), width=100, height=200)
    del region["original_width"], region["original_height"]
    with pytest.raises(ValueError, match="original_width"):
        C.box_from_rectangle(region)
    back = C.box_from_rectangle(region, width=100, height=200)
    assert (back.x1, back.y1, back.x2, back.y2) == pytest.approx((10, 20, 30, 40))


def test_rectangle_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="x1 < x2"):
        C.rectangle_result(Box(5, 5, 5, 10, "cat"), width=10, height=10)
    with pytest.raises(ValueError, match="positive"):
        C.rectangle_result(Box(0, 0, 1, 1, "cat"), width=0, height=10)
    region = C.rectangle_result(Box(0, 0, 1, 1, "cat"), width=10, height=10)
    region["value"]["rotation"] = 30
    with pytest.raises(ValueError, match="rotated"):
        C.box_from_rectangle(region)


@given(
    w=st.integers(1, 4000), h=st.integers(1, 4000),
    fx=st.tuples(st.floats(0, 1), st.floats(0, 1)), fy=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_rectangle_round_trip_property(w: int, h: int, fx: tuple[float, float], fy: tuple[float, float]) -> None:
    x1, x2 = sorted(v * w for v in fx)
    y1, y2 = sorted(v * h for v in fy)
    if not (x1 < x2 and y1 < y2):
        return
    back = C.box_from_rectangle(C.rectangle_result(Box(x1, y1, x2, y2, "c"), width=w, height=h))
    assert (back.x1, back.y1, back.x2, back.y2) == pytest.approx((x1, y1, x2, y2), abs=1e-6 * max(w, h))


def test_polygon_round_trip_with_edge_points() -> None:
    poly = ((0.0, 0.0), (640.0, 0.0), (640.0, 480.0), (0.5, 479.5))
    box = Box(0, 0, 640, 480, "dog", score=0.5, polygon=poly)
    region = C.polygon_result(box, width=640, height=480)
    assert region["type"] == "polygonlabels"
    assert region["value"]["points"][2] == [100.0, 100.0]
    back = C.box_from_polygon(region)
    assert back.label == "dog" and back.score == 0.5
    assert back.polygon is not None
    for (a, b), (c, d) in zip(back.polygon, poly):
        assert a == pytest.approx(c) and b == pytest.approx(d)
    assert (back.x1, back.y1, back.x2, back.y2) == pytest.approx((0, 0, 640, 480))


def test_polygon_needs_three_points() -> None:
    with pytest.raises(ValueError, match="3 points"):
        C.polygon_result(Box(0, 0, 1, 1, "c", polygon=((0, 0), (1, 1))), width=2, height=2)


def test_boxes_result_and_back_by_task_type() -> None:
    boxes = [Box(1, 2, 3, 4, "a"), Box(5, 6, 7, 8, "b")]
    rect = C.boxes_result(boxes, width=10, height=10, task_type="detect")
    assert {r["type"] for r in rect} == {"rectanglelabels"}
    assert C.same_boxes(C.boxes_from_result(rect), boxes)
    with pytest.raises(ValueError, match="task_type"):
        C.boxes_result(boxes, width=10, height=10, task_type="classify")


def test_same_boxes_detects_changes() -> None:
    a = [Box(1, 2, 3, 4, "a"), Box(5, 6, 7, 8, "b")]
    assert C.same_boxes(a, list(reversed(a)))
    assert not C.same_boxes(a, a[:1])
    assert not C.same_boxes(a, [Box(1, 2, 3, 4, "b"), a[1]])
    assert not C.same_boxes(a, [Box(1, 2, 13, 4, "a"), a[1]])
    # Segmentation: same bounding box, redrawn outline -> an edit; same outline within tol -> not.
    tri = ((1.0, 2.0), (3.0, 2.0), (2.0, 4.0), (1.0, 4.0))
    moved = ((1.0, 2.0), (3.0, 2.0), (3.0, 4.0), (1.0, 4.0))
    p = [Box(1, 2, 3, 4, "a", polygon=tri)]
    assert C.same_boxes(p, [Box(1, 2, 3, 4, "a", polygon=tuple((x + 0.2, y) for x, y in tri))])
    assert not C.same_boxes(p, [Box(1, 2, 3, 4, "a", polygon=moved)])
    assert not C.same_boxes(p, [Box(1, 2, 3, 4, "a")])


# --------------------------------------------------------------------------- whole predictions


def test_prediction_to_ls_classification_and_score_direction() -> None:
    import numpy as np

    from pseudolabel.types import Prediction

    p = Prediction("a" * 64, "v7", probs=np.array([0.1, 0.7, 0.2]))
    sure = C.prediction_to_ls(p, classes=CLASSES, task_type="classify", width=0, height=0, uncertainty=0.1)
    unsure = C.prediction_to_ls(p, classes=CLASSES, task_type="classify", width=0, height=0, uncertainty=2.0,
                                model_version="override")
    assert sure["result"] == C.choices_result("dog") and sure["model_version"] == "v7"
    assert unsure["model_version"] == "override"
    assert unsure["score"] < sure["score"]  # more uncertain -> served first under uncertainty sampling
    with pytest.raises(ValueError, match=r"item 'aaaa.*probs has 2 entries"):
        C.prediction_to_ls(Prediction("a" * 64, "v", probs=np.array([0.5, 0.5])), classes=CLASSES,
                           task_type="classify", width=0, height=0, uncertainty=0.0)
    with pytest.raises(ValueError, match="without probs"):
        C.prediction_to_ls(Prediction("b", "v"), classes=CLASSES, task_type="classify", width=0, height=0,
                           uncertainty=0.0)


def test_prediction_to_ls_boxes_round_trip() -> None:
    from pseudolabel.types import Prediction

    boxes = (Box(10, 20, 50, 60, "cat", score=0.9),
             Box(0, 0, 100, 40, "dog", score=0.4, polygon=((0, 0), (100, 0), (50, 40))))
    det = C.prediction_to_ls(Prediction("c", "v", boxes=boxes[:1]), classes=CLASSES, task_type="detect",
                             width=200, height=100, uncertainty=0.3)
    assert [r["type"] for r in det["result"]] == ["rectanglelabels"]
    assert C.boxes_from_result(det["result"]) == (Box(10, 20, 50, 60, "cat", score=0.9),)
    seg = C.prediction_to_ls(Prediction("c", "v", boxes=boxes[1:]), classes=CLASSES, task_type="segment",
                             width=200, height=100, uncertainty=0.3)
    (back,) = C.boxes_from_result(seg["result"])
    assert back.polygon == ((0, 0), (100, 0), (50, 40)) and back.label == "dog"
    empty = C.prediction_to_ls(Prediction("c", "v"), classes=CLASSES, task_type="detect", width=5, height=5,
                               uncertainty=1.0)
    assert empty["result"] == [] and empty["score"] == C.ls_prediction_score(1.0)
    with pytest.raises(ValueError, match=r"box labels \['cow'\]"):
        C.prediction_to_ls(Prediction("c", "v", boxes=(Box(1, 1, 2, 2, "cow"),)), classes=CLASSES,
                           task_type="detect", width=5, height=5, uncertainty=0.0)
    with pytest.raises(ValueError, match="task_type"):
        C.prediction_to_ls(Prediction("c", "v"), classes=CLASSES, task_type="track", width=5,  # type: ignore[arg-type]
                           height=5, uncertainty=0.0)


def test_decoder_image_path_accepts_only_local_files_under_the_document_root(tmp_path: Path) -> None:
    from pseudolabel.review.decode import Decoder

    root = tmp_path / "doc" / "images"
    (root / "a b").mkdir(parents=True)
    img = root / "a b" / "x#1.png"
    img.write_bytes(b"")
    dec = Decoder(("cat",), "classify", root, None)
    url = C.local_files_url(img, root)
    assert dec.image_path({"image": url}) == img.resolve()
    assert dec.image_path({"image": "http://ls.example:8080" + url}) == img.resolve()
    for bad, why in (({"image": "/data/upload/3/x.png"}, "not a local file"),
                     ({"image": "s3://bucket/x.png"}, "not a local file"),
                     ({"image": "junk/data/local-files/?d=images/x.png"}, "not a local file"),
                     ({"image": "/data/local-files/?d=../../../etc/passwd"}, "outside the document root"),
                     ({"image": "/data/local-files/?d=images/..%2F..%2Fsecret"}, "outside the document root"),
                     ({"text": "hello"}, "no image URL")):
        with pytest.raises(ValueError, match=why):
            dec.image_path(bad)
