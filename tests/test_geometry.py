"""pseudolabel.data.geometry: IoU, polygon <-> mask, polygon area and bounds, clipping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pseudolabel.data.geometry import (
    as_xyxy,
    box_iou,
    box_polygon,
    boxes_xyxy,
    clip_box,
    clip_xyxy,
    mask_iou,
    mask_to_polygon,
    polygon_area,
    polygon_bounds,
    polygon_rle,
    polygon_to_mask,
)
from pseudolabel.types import Box

# --------------------------------------------------------------------------- IoU


def test_box_iou_known_answers() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], dtype=float)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    with pytest.raises(ValueError, match="x1 <= x2"):
        box_iou(np.array([[10, 0, 0, 10]]), b)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        box_iou(np.zeros((2, 3)), b)


# --------------------------------------------------------------------------- masks


def test_polygon_to_mask_known_pixels() -> None:
    m = polygon_to_mask([(2, 2), (6, 2), (6, 6), (2, 6)], 10, 12)
    assert m.shape == (10, 12) and m.dtype == bool
    expected = np.zeros((10, 12), bool)
    expected[2:6, 2:6] = True
    assert (m == expected).all()


def test_mask_to_polygon_round_trip() -> None:
    m = np.zeros((8, 9), bool)
    m[1:6, 2:7] = True
    m[1:3, 5:7] = False  # an L shape
    m[7, 0] = True  # a smaller second region: not represented
    poly = mask_to_polygon(m)
    assert len(poly) == 6
    back = polygon_to_mask(poly, 8, 9)
    expected = m.copy()
    expected[7, 0] = False
    assert (back == expected).all()
    assert mask_to_polygon(np.zeros((4, 4), bool)) == []
    # A diagonal shape comes back close (COCO rasterisation), not necessarily exact.
    tri = polygon_to_mask([(0, 0), (20, 0), (0, 20)], 24, 24)
    again = polygon_to_mask(mask_to_polygon(tri), 24, 24)
    assert (tri & again).sum() / (tri | again).sum() > 0.9


def test_polygon_area() -> None:
    assert polygon_area([(0, 0), (4, 0), (4, 3)]) == 6.0
    assert polygon_area([(0, 0), (4, 0)]) == 0.0


def _numpy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The formula the strategies, consensus and simulated reviewer each computed before."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


_corner = st.floats(0, 500, allow_nan=False, width=32)
_box = st.tuples(_corner, _corner, st.floats(0, 200, width=32), st.floats(0, 200, width=32)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@settings(max_examples=60, deadline=None)
@given(st.lists(_box, max_size=6), st.lists(_box, max_size=6))
def test_box_iou_equals_the_numpy_formula_it_replaces(a: list, b: list) -> None:
    pa, pb = np.array(a, dtype=np.float64).reshape(-1, 4), np.array(b, dtype=np.float64).reshape(-1, 4)
    iou = box_iou(pa, pb)
    assert iou.shape == (len(a), len(b)) and iou.dtype == np.float64
    np.testing.assert_array_equal(iou, _numpy_iou(pa, pb))
    assert ((iou >= 0) & (iou <= 1)).all()
    np.testing.assert_array_equal(box_iou(pb, pa), iou.T)  # symmetric


def test_box_iou_of_box_sequences_and_class_names() -> None:
    a = [Box(0, 0, 10, 10, "cat"), Box(20, 20, 30, 30, "dog")]
    b = [Box(0, 0, 10, 10, "dog"), Box(5, 0, 15, 10, "cat")]
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150], [0.0, 0.0]])
    np.testing.assert_allclose(box_iou(a, b, same_label=True), [[0.0, 50 / 150], [0.0, 0.0]])
    assert box_iou([], b, same_label=True).shape == (0, 2)
    # Two zero-area boxes at one place: IoU 0, not nan.
    assert box_iou([Box(3, 3, 3, 3, "cat")], [Box(3, 3, 3, 3, "cat")])[0, 0] == 0.0
    with pytest.raises(ValueError, match="class names"):
        box_iou(np.zeros((1, 4)), b, same_label=True)
    with pytest.raises(ValueError, match="x1 <= x2"):
        box_iou([Box(10, 0, 0, 10, "cat")], b)


def test_as_xyxy_and_boxes_xyxy() -> None:
    boxes = (Box(1, 2, 3, 4, "a"), Box(5.5, 6, 7, 8, "b"))
    np.testing.assert_array_equal(boxes_xyxy(boxes), [[1, 2, 3, 4], [5.5, 6, 7, 8]])
    assert boxes_xyxy(()).shape == (0, 4)
    np.testing.assert_array_equal(as_xyxy(boxes), boxes_xyxy(boxes))
    with pytest.raises(ValueError, match="non-finite"):
        as_xyxy(np.array([[0, 0, np.inf, 1]]))
    with pytest.raises(ValueError, match="mixes"):
        as_xyxy([Box(1, 2, 3, 4, "a"), (1, 2, 3, 4)])  # type: ignore[list-item]


def test_mask_iou_counts_pixels() -> None:
    a = np.zeros((2, 4, 4), bool)
    a[0, :2, :2] = True                # 4 px
    b = np.zeros((2, 4, 4), bool)
    b[0, :2, :] = True                 # 8 px, holds a[0]
    np.testing.assert_allclose(mask_iou(a, b), [[0.5, 0.0], [0.0, 0.0]])  # empty vs empty: 0
    assert mask_iou(a[:0], b).shape == (0, 2)  # no predicted object
    with pytest.raises(ValueError, match="one image size"):
        mask_iou(a, np.zeros((1, 3, 4), bool))


# --------------------------------------------------------------------------- polygons, clipping


def test_polygon_bounds_box_polygon_and_clipping() -> None:
    assert polygon_bounds([(3, 1), (0, 4), (2, 2)]) == (0, 1, 3, 4)
    with pytest.raises(ValueError, match="no point"):
        polygon_bounds([])
    assert box_polygon(Box(1, 2, 3, 4, "a")) == [(1, 2), (3, 2), (3, 4), (1, 4)]
    tri = ((0.0, 0.0), (4.0, 0.0), (0.0, 3.0))
    assert box_polygon(Box(0, 0, 4, 3, "a", polygon=tri)) == list(tri)
    assert clip_xyxy(-2, 5, 12, 30, width=10, height=20) == (0.0, 5, 10.0, 20.0)


def test_polygon_rle_area_is_the_mask_pixel_count() -> None:
    from pycocotools import mask as mask_utils

    poly = [(1.0, 1.0), (7.0, 1.0), (7.0, 5.0), (1.0, 5.0)]
    rle = polygon_rle(poly, 8, 9)
    assert rle["size"] == [8, 9]
    assert int(mask_utils.area(rle)) == int(polygon_to_mask(poly, 8, 9).sum()) == 24
    with pytest.raises(ValueError, match="fewer than 3"):
        polygon_rle(poly[:2], 8, 9)


def test_clip_box_keeps_label_score_and_flags() -> None:
    b = Box(-3, 2, 12, 30, "cat", 0.7, polygon=((-3.0, 2.0), (12.0, 2.0), (5.0, 30.0)), difficult=True)
    c = clip_box(b, width=10, height=20)
    assert (c.x1, c.y1, c.x2, c.y2) == (0.0, 2, 10.0, 20.0)
    assert c.polygon == ((0.0, 2.0), (10.0, 2.0), (5.0, 20.0))
    assert (c.label, c.score, c.difficult) == ("cat", 0.7, True)
    assert clip_box(Box(20, 0, 30, 5, "cat"), width=10, height=20).x1 == 10.0  # outside: zero width, caller decides
