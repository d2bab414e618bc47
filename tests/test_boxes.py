"""pseudolabel.data.boxes: the one box <-> JSON codec, and what releases wrote to disk with it.

The on-disk fixtures were written by earlier code: ``ledger_v1_detect.sqlite`` by the first
release's ledger (tests/fixtures/make_ledger_v1.py), ``shards_v1_detect/`` by the engine's
shard writer before the codec was unified (tests/fixtures/make_shards_v1.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pseudolabel.data.boxes import (
    box_from_dict,
    box_to_dict,
    boxes_and_probs_from_json,
    boxes_from_json,
    boxes_to_json,
)
from pseudolabel.inference import load_box_predictions, write_shard
from pseudolabel.types import Box, Prediction

FIXTURES = Path(__file__).parent / "fixtures"


def _shards_fixture() -> object:
    spec = importlib.util.spec_from_file_location("make_shards_v1", FIXTURES / "make_shards_v1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- what is on disk


def test_ledger_rows_of_the_first_release_read_and_rewrite_byte_identical() -> None:
    """Every boxes text the first release stored (labels and holdout truth) reads back, and
    writing the boxes again gives the same bytes (the round's training signature hashes them)."""
    db = sqlite3.connect(FIXTURES / "ledger_v1_detect.sqlite")
    texts = [r[0] for r in db.execute("SELECT boxes FROM labels WHERE boxes IS NOT NULL")]
    truth = json.loads(db.execute("SELECT value FROM meta WHERE key = 'holdout_truth'").fetchone()[0])
    db.close()
    texts += list(truth.values())
    assert len(texts) >= 4 and "[]" in texts and any('"polygon": [[' in t for t in texts)
    for text in texts:
        boxes = boxes_from_json(text)
        assert boxes_to_json(boxes, empty=True) == text
    first = boxes_from_json(texts[0])
    assert first[1] == Box(50.0, 10.0, 90.0, 60.0, "bag", polygon=((50.0, 10.0), (90.0, 10.0), (70.0, 60.0)))


def test_detection_shard_written_before_the_codec_reads_back(tmp_path: Path) -> None:
    fixture = _shards_fixture()
    shutil.copytree(FIXTURES / "shards_v1_detect", tmp_path / "shards")
    frame, got = load_box_predictions(tmp_path / "shards")
    want = fixture.predictions()  # type: ignore[attr-defined]
    assert frame["item_id"].tolist() == [p.item_id for p in want]
    for g, w in zip(got, want, strict=True):
        assert g.boxes == w.boxes and g.model_version == w.model_version
    np.testing.assert_array_equal(got[0].box_probs, want[0].box_probs)
    assert got[1].box_probs.shape == (0, 3)                        # no box
    assert np.isnan(got[2].box_probs).all() and got[2].box_probs.shape == (1, 3)  # "probs": null
    np.testing.assert_array_equal(got[3].box_probs, want[3].box_probs)


def test_a_shard_written_now_reads_back_as_the_old_one(tmp_path: Path) -> None:
    want = _shards_fixture().predictions()  # type: ignore[attr-defined]
    write_shard(tmp_path, 0, want, ("cat", "dog", "bird"))
    _, new = load_box_predictions(tmp_path)
    shutil.copytree(FIXTURES / "shards_v1_detect", tmp_path / "old")
    _, old = load_box_predictions(tmp_path / "old")
    for a, b in zip(new, old, strict=True):
        assert a.boxes == b.boxes
        np.testing.assert_array_equal(a.box_probs, b.box_probs)


# --------------------------------------------------------------------------- the codec


def test_box_json_round_trip() -> None:
    b = Box(1.0, 2.0, 5.0, 7.0, "Bag", polygon=((1.0, 2.0), (5.0, 2.0), (5.0, 7.0)))
    assert box_from_dict(json.loads(json.dumps(box_to_dict(b))), where="x") == b
    with pytest.raises(ValueError, match="xyxy"):
        box_from_dict({"label": "Bag"}, where="truth.json: item 'a'")


def test_empty_none_and_explicit_no_objects() -> None:
    assert boxes_to_json(()) is None
    assert boxes_to_json((), empty=True) == "[]"
    assert boxes_from_json(None) == boxes_from_json("") == boxes_from_json("[]") == ()
    assert boxes_and_probs_from_json("[]") == ((), None)
    boxes, probs = boxes_and_probs_from_json("[]", n_classes=4)
    assert boxes == () and probs is not None and probs.shape == (0, 4)


def test_class_vectors_travel_with_their_boxes() -> None:
    boxes = (Box(1.0, 2.0, 30.5, 40.0, "dog", 0.9),
             Box(5.0, 6.0, 7.0, 8.0, "cat", 0.4, polygon=((5.0, 6.0), (7.0, 6.0), (7.0, 8.0))))
    bp = np.array([[0.1, 0.9, 0.0], [0.4, 0.2, 0.1]], dtype=np.float32)
    text = boxes_to_json(boxes, probs=bp, empty=True, compact=True)
    assert ", " not in text and '"probs":[' in text
    back, back_bp = boxes_and_probs_from_json(text)
    assert back == boxes and back_bp is not None and back_bp.dtype == np.float32
    np.testing.assert_array_equal(back_bp, bp)           # float32 values come back exactly
    assert boxes_from_json(text) == boxes                # vectors ignored where not asked for
    with pytest.raises(ValueError, match=r"one class vector per box"):
        boxes_to_json(boxes, probs=bp[:1])
    with pytest.raises(ValueError, match="not a list of 2 numbers"):
        boxes_and_probs_from_json(text, n_classes=2)


def test_numpy_numbers_are_written_as_json_numbers() -> None:
    b = Box(np.float32(1.5), np.float64(2.0), np.int64(3), 4, "a", np.float32(0.25))  # type: ignore[arg-type]
    d = json.loads(boxes_to_json((b,)) or "")[0]
    assert d["xyxy"] == [1.5, 2.0, 3.0, 4] and d["score"] == 0.25
    # Python numbers are kept as they are: a stored int stays an int (byte-identical rows).
    assert boxes_to_json((Box(1, 2, 3, 4, "cat"),)) == \
        '[{"xyxy": [1, 2, 3, 4], "label": "cat", "score": null, "polygon": null}]'


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "not valid JSON"),
    ('{"xyxy": [1, 2, 3, 4]}', "expected a JSON list"),
    ('[{"xyxy": [1, 2, 3], "label": "a"}]', r"box 0: .*not \[x1, y1, x2, y2\]"),
    ('[{"xyxy": [1, 2, 3, "4"], "label": "a"}]', "coordinate '4' is not a number"),
    ('[{"xyxy": [1, 2, 3, 4], "label": 7}]', "label 7 is not a string"),
    ('[{"xyxy": [1, 2, 3, 4], "label": "a", "score": "high"}]', "score 'high' is not a number"),
])
def test_bad_text_is_refused_with_where_and_what(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        boxes_from_json(text, where="ledger label 12")
    assert str(e.value).startswith("ledger label 12")


def test_a_prediction_with_no_box_and_a_shard_cell() -> None:
    pred = Prediction("a" * 64, "v1", boxes=(Box(0.0, 0.0, 1.0, 1.0, "a", 0.5),), box_probs=None)
    text = boxes_to_json(pred.boxes, probs=pred.box_probs, empty=True, compact=True)
    assert boxes_and_probs_from_json(text) == (pred.boxes, None)
    boxes, probs = boxes_and_probs_from_json(text, n_classes=2)
    assert boxes == pred.boxes and probs is not None and np.isnan(probs).all()
