"""Bad answers become reasons, not exceptions; rotated boxes become enclosing boxes; one
writer per workdir (a real second process)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pseudolabel.lock import WorkdirLocked, workdir_lock
from pseudolabel.review.convert import box_from_rectangle, hotkeys, label_config
from pseudolabel.review.decode import Decoder
from pseudolabel.types import Item

CLASSES = ("cat", "dog")


def _task(result: object, **ann: object) -> dict[str, object]:
    a = {"id": 7, "result": result, "updated_at": "2026-12-01T10:00:00Z", "was_cancelled": False} | ann
    return {"id": 3, "data": {"round": 1, "pseudolabel_id": "x"}, "annotations": [a], "predictions": []}


def _decode(task_type: str, task: dict[str, object]):  # noqa: ANN202
    dec = Decoder(CLASSES, task_type, Path("/img"), None)  # type: ignore[arg-type]
    item = Item("x", Path("/img/a.png"), 100, 50)
    return dec.annotation(task, task["annotations"][0], item, reviewer="r@x")  # type: ignore[index]


def choice(*labels: str) -> list[dict[str, object]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": list(labels)}}]


@pytest.mark.parametrize(("result", "extra", "reason"), [
    (choice("cat", "dog"), {}, "several classes"),
    (choice("wolf"), {}, "not one of the project's classes"),
    ("cat", {}, "not a list of regions"),
    (["cat"], {}, "not an object"),
    (choice("cat"), {"id": "abc"}, "annotation id 'abc' is not an integer"),
    (choice("cat"), {"updated_at": "yesterday"}, "not an ISO date-time"),
])
def test_bad_classification_answers_raise_a_reason(result: object, extra: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        _decode("classify", _task(result, **extra))


def test_a_good_answer_decodes() -> None:
    a, warnings = _decode("classify", _task(choice("dog")))
    assert a.label == "dog" and a.ls_annotation_id == 7 and a.round == 1 and warnings == []
    assert a.review_outcome == "corrected"     # no prediction to accept


def rect(x: float, y: float, w: float, h: float, rotation: float = 0.0, label: str = "cat") -> dict[str, object]:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 100,
            "original_height": 50, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                                             "rectanglelabels": [label]}}


def test_rotated_rectangle_becomes_its_enclosing_box_with_a_warning() -> None:
    warnings: list[str] = []
    # 20 x 10 px box at (10, 10) px rotated 90 degrees clockwise around its top-left corner:
    # it then spans x 0..10, y 10..30 (x clipped at 0).
    b = box_from_rectangle(rect(10, 20, 20, 20, rotation=90), rotated="enclose", warnings=warnings)
    assert (round(b.x1, 6), round(b.y1, 6), round(b.x2, 6), round(b.y2, 6)) == (0.0, 10.0, 10.0, 30.0)
    assert warnings and "rotated by 90 degrees" in warnings[0]
    with pytest.raises(ValueError, match="rotated"):
        box_from_rectangle(rect(10, 20, 20, 20, rotation=30))
    a, w = _decode("detect", _task([rect(10, 20, 20, 20, rotation=45)]))
    assert len(a.boxes) == 1 and len(w) == 1
    c, s = math.cos(math.radians(45)), math.sin(math.radians(45))
    assert a.boxes[0].x2 == pytest.approx(min(100, 10 + 20 * c))
    assert a.boxes[0].y2 == pytest.approx(min(50, 10 + 20 * s + 10 * c))


def test_boxes_of_unknown_classes_or_no_area_are_rejected() -> None:
    with pytest.raises(ValueError, match="not among the project's classes"):
        _decode("detect", _task([rect(10, 20, 20, 20, label="wolf")]))
    with pytest.raises(ValueError, match="no area"):
        _decode("detect", _task([rect(10, 20, 0, 20)]))


def test_hotkeys_match_single_character_names_and_config_forbids_rotation() -> None:
    digits = [str(d) for d in range(10)]
    assert hotkeys(digits) == {d: d for d in digits}
    assert hotkeys(["cat", "dog"]) == {"cat": "1", "dog": "2"}
    cfg = label_config(digits)
    assert 'value="7" hotkey="7"' in cfg
    assert 'canRotate="false"' in label_config(["cat"], task_type="detect")


def test_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    holder = textwrap.dedent(f"""
        import sys, time
        from pseudolabel.lock import workdir_lock
        with workdir_lock({str(tmp_path)!r}, command="pseudolabel round -c a.yaml"):
            print("locked", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLocked) as e:
            with workdir_lock(tmp_path):
                pass
        assert f"pid {p.pid}" in str(e.value) and "pseudolabel round -c a.yaml" in str(e.value)
    finally:
        p.kill()                                   # kill -9: the kernel releases the lock
        p.wait()
    with workdir_lock(tmp_path, wait=5):          # no stale lock left behind
        pass
