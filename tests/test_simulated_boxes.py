"""The simulated box/polygon reviewer: the pure edit plan, and answers through a real
Label Studio server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pseudolabel.data.images import sha256_file
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.server import LabelStudioServer
from pseudolabel.sim.simulated_boxes import EditPlan, SimulatedBoxReviewer, plan_edits
from pseudolabel.types import Annotation, Box, Candidate, Item, Prediction

CLASSES = ["cat", "dog", "bird"]


def B(x1: float, y1: float, x2: float, y2: float, label: str = "cat", **kw: object) -> Box:
    return Box(float(x1), float(y1), float(x2), float(y2), label, **kw)  # type: ignore[arg-type]


def square(x1: float, y1: float, x2: float, y2: float, label: str = "cat") -> Box:
    """A box with the rectangle as its polygon."""
    return B(x1, y1, x2, y2, label, polygon=((x1, y1), (x2, y1), (x2, y2), (x1, y2)))


def counts(p: EditPlan) -> tuple[int, int, int, int, int, int]:
    return p.kept, p.relabelled, p.reshaped, p.deleted, p.added, p.edits


# --------------------------------------------------------------------------- plan_edits


def test_perfect_prediction_needs_no_edit() -> None:
    pred = (B(10, 10, 30, 30, "cat"), B(40, 5, 60, 50, "dog"))
    plan = plan_edits(pred, tuple(reversed(pred)))
    assert counts(plan) == (2, 0, 0, 0, 0, 0)
    assert plan.final == pred


def test_good_box_keeps_its_geometry_and_loses_its_score() -> None:
    # IoU = 19*20 / (21*20) = 0.905 >= keep_iou: the reviewer does not redraw it.
    pred = (B(10, 10, 31, 30, "cat", score=0.7),)
    plan = plan_edits(pred, (B(10, 10, 29, 30, "cat"),))
    assert counts(plan) == (1, 0, 0, 0, 0, 0)
    assert plan.final == (B(10, 10, 31, 30, "cat"),)


def test_shifted_box_is_reshaped() -> None:
    # IoU = 15*20 / (25*20) = 0.6: matched (>= 0.5) but below keep_iou 0.8.
    truth = (B(10, 10, 30, 30, "cat"),)
    plan = plan_edits((B(15, 10, 35, 30, "cat"),), truth)
    assert counts(plan) == (0, 0, 1, 0, 0, 1)
    assert plan.final == truth
    # A stricter keep_iou turns a kept box into a reshaped one.
    near = (B(10, 10, 31, 30, "cat"),)
    assert plan_edits(near, truth).reshaped == 0
    assert plan_edits(near, truth, keep_iou=0.99).reshaped == 1


def test_wrong_class_is_relabelled() -> None:
    plan = plan_edits((B(10, 10, 30, 30, "dog"),), (B(10, 10, 30, 30, "cat"),))
    assert counts(plan) == (1, 1, 0, 0, 0, 1)
    assert plan.final == (B(10, 10, 30, 30, "cat"),)
    # Wrong class and poor geometry: two edits on one box.
    both = plan_edits((B(16, 10, 36, 30, "dog"),), (B(10, 10, 30, 30, "cat"),))
    assert counts(both) == (0, 1, 1, 0, 0, 2)


def test_extra_prediction_is_deleted_and_missed_object_added() -> None:
    truth = (B(10, 10, 30, 30, "cat"), B(60, 60, 90, 90, "bird"))
    pred = (B(10, 10, 30, 30, "cat"), B(100, 0, 120, 20, "dog"))
    plan = plan_edits(pred, truth)
    assert counts(plan) == (1, 0, 0, 1, 1, 2)
    assert plan.final == truth
    # A box overlapping a true one below match_iou is a deletion plus an addition.
    weak = plan_edits((B(20, 10, 40, 30, "cat"),), (B(10, 10, 30, 30, "cat"),))  # IoU 1/3
    assert counts(weak) == (0, 0, 0, 1, 1, 2)
    assert plan_edits((B(20, 10, 40, 30, "cat"),), (B(10, 10, 30, 30, "cat"),), match_iou=0.3).reshaped == 1


def test_matching_is_one_to_one_and_maximises_iou() -> None:
    # IoU: a-t0 0.887, a-t1 0.923, b-t0 0.667, b-t1 0.818. Greedy matching takes a-t1 first
    # and leaves b with t0 (reshaped); the assignment maximises the sum: a-t0 and b-t1, both kept.
    truth = (B(0, 0, 10, 10), B(1, 0, 11, 10))
    pred = (B(0.6, 0, 10.6, 10), B(2, 0, 12, 10))
    plan = plan_edits(pred, truth)
    assert counts(plan) == (2, 0, 0, 0, 0, 0)
    assert plan.final == pred


def test_empty_cases() -> None:
    assert counts(plan_edits((), ())) == (0, 0, 0, 0, 0, 0)
    assert plan_edits((), ()).final == ()
    gone = plan_edits((B(0, 0, 5, 5),), ())
    assert counts(gone) == (0, 0, 0, 1, 0, 1) and gone.final == ()
    new = plan_edits((), (B(0, 0, 5, 5),))
    assert counts(new) == (0, 0, 0, 0, 1, 1) and new.final == (B(0, 0, 5, 5),)


def test_detect_drops_polygons_segment_keeps_them() -> None:
    t = square(10, 10, 30, 30)
    assert plan_edits((), (t,)).final[0].polygon is None
    seg = plan_edits((), (t,), task="segment", image_size=(64, 64))
    assert seg.final == (t,)


def test_segment_uses_mask_iou() -> None:
    # Same bounding box, different shape: a box-IoU reviewer would keep it, the polygon
    # reviewer redraws it (a corner is cut off: mask IoU ~ 302/400 = 0.755 < keep_iou).
    truth = (square(10, 10, 30, 30, "cat"),)
    tri = B(10, 10, 30, 30, "cat", polygon=((10, 10), (30, 10), (30, 16), (16, 30), (10, 30)))
    assert plan_edits((tri,), truth).reshaped == 0                      # detect: box IoU 1
    seg = plan_edits((tri,), truth, task="segment", image_size=(40, 40))
    assert counts(seg) == (0, 0, 1, 0, 0, 1) and seg.final == truth
    good = plan_edits((square(10, 10, 30, 30, "dog"),), truth, task="segment", image_size=(40, 40))
    assert counts(good) == (1, 1, 0, 0, 0, 1)
    assert good.final[0].polygon == truth[0].polygon and good.final[0].label == "cat"


def test_plan_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="image_size"):
        plan_edits((), (square(0, 0, 5, 5),), task="segment")
    with pytest.raises(ValueError, match="no polygon"):
        plan_edits((B(0, 0, 5, 5),), (square(0, 0, 5, 5),), task="segment", image_size=(8, 8))
    with pytest.raises(ValueError, match="match_iou"):
        plan_edits((), (), match_iou=0.9, keep_iou=0.5)
    with pytest.raises(ValueError, match="classify"):
        plan_edits((), (), task="classify")


# --------------------------------------------------------------------------- real server


def _write_images(folder: Path, n: int, *, width: int, height: int) -> list[Item]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = folder / f"scene_{i}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        out.append(Item(sha256_file(path), path, width, height))
    return out


def _same(a: tuple[Box, ...], b: tuple[Box, ...], *, tol: float = 0.5) -> bool:
    if len(a) != len(b):
        return False
    key = lambda x: (x.label, x.x1, x.y1)  # noqa: E731
    for p, q in zip(sorted(a, key=key), sorted(b, key=key)):
        if p.label != q.label or max(abs(p.x1 - q.x1), abs(p.y1 - q.y1), abs(p.x2 - q.x2), abs(p.y2 - q.y2)) > tol:
            return False
        if (p.polygon is None) != (q.polygon is None):
            return False
        if p.polygon is not None and q.polygon is not None and not np.allclose(p.polygon, q.polygon, atol=tol):
            return False
    return True


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_reviewer_answers_through_label_studio(
    label_studio: LabelStudioServer, ls_images_root: Path, task: str
) -> None:
    w, h = 80, 60
    items = _write_images(ls_images_root / f"boxes_{task}", 4, width=w, height=h)
    shape = square if task == "segment" else B
    truth = {
        items[0].id: (shape(10, 10, 30, 30, "cat"), shape(40, 20, 70, 50, "dog")),   # perfect
        items[1].id: (shape(10, 10, 30, 40, "bird"),),                               # shifted, wrong class
        items[2].id: (shape(5, 5, 25, 25, "dog"), shape(50, 30, 75, 55, "cat")),     # one missed
        items[3].id: (),                                                             # nothing there
    }
    predicted = {
        items[0].id: truth[items[0].id],
        items[1].id: (shape(16, 10, 36, 40, "dog"),),
        items[2].id: (shape(5, 5, 25, 25, "dog"), shape(60, 0, 79, 9, "bird")),
        items[3].id: (shape(1, 1, 9, 9, "cat"),),
    }
    cands = [
        Candidate(item=it, score=1.0 - 0.1 * k, strategy="entropy",
                  prediction=Prediction(item_id=it.id, model_version="m1", boxes=predicted[it.id]))
        for k, it in enumerate(items)
    ]
    client = LabelStudioClient(label_studio.url, label_studio.token, f"box reviewer {task}", CLASSES,
                               task_type=task, images_root=ls_images_root)  # type: ignore[arg-type]
    client.submit(cands, round_id=1)
    reviewer = SimulatedBoxReviewer(client, truth, CLASSES, sizes=(w, h))
    stats = reviewer.answer_pending()

    plans = {it.id: plan_edits(predicted[it.id], truth[it.id], task=task, image_size=(w, h)) for it in items}
    assert stats.answered == 4 and stats.accepted == 1 and stats.corrected == 3
    assert dict(stats.per_item) == {i: p.edits for i, p in plans.items()}
    assert stats.edits == sum(p.edits for p in plans.values()) == 0 + 2 + 2 + 1
    assert (stats.relabelled, stats.reshaped, stats.deleted, stats.added) == (1, 1, 2, 1)
    assert client.pending() == []

    got: dict[str, Annotation] = {a.item.id: a for a in client.collect()}
    assert set(got) == set(truth)
    for iid, plan in plans.items():
        ann = got[iid]
        assert _same(ann.boxes, plan.final), (iid, ann.boxes, plan.final)
        assert ann.review_outcome == ("accepted" if plan.edits == 0 else "corrected")
    empty = got[items[3].id]
    assert empty.boxes == () and empty.empty_ok is True
    # Answered tasks are not answered twice.
    assert reviewer.answer_pending().answered == 0


def test_reviewer_refuses_unknown_items_and_classify_projects(
    label_studio: LabelStudioServer, ls_images_root: Path
) -> None:
    items = _write_images(ls_images_root / "boxes_unknown", 1, width=32, height=32)
    client = LabelStudioClient(label_studio.url, label_studio.token, "box reviewer unknown", CLASSES,
                               task_type="detect", images_root=ls_images_root)
    client.submit([Candidate(item=items[0], score=0.5, strategy="entropy",
                             prediction=Prediction(item_id=items[0].id, model_version="m1"))], round_id=1)
    with pytest.raises(ValueError, match=items[0].id):
        SimulatedBoxReviewer(client, {}, CLASSES, sizes=(32, 32)).answer_pending()
    with pytest.raises(ValueError, match="not among"):
        SimulatedBoxReviewer(client, {items[0].id: (B(0, 0, 5, 5, "fish"),)}, CLASSES,
                             sizes=(32, 32)).answer_pending()
    assert client.pending()[0].item_id == items[0].id    # nothing was answered
    classify = LabelStudioClient(label_studio.url, label_studio.token, "box reviewer classify", CLASSES,
                                 images_root=ls_images_root)
    with pytest.raises(ValueError, match="'detect' or 'segment'"):
        SimulatedBoxReviewer(classify, {}, CLASSES, sizes=(32, 32)).answer_pending()
