"""Known-answer checks for classification metrics."""

from __future__ import annotations

import pytest

from pseudolabel.metrics import classification_metrics

CLASSES = ["a", "b", "c"]


def test_perfect_predictions() -> None:
    m = classification_metrics(["a", "b", "c", "a"], ["a", "b", "c", "a"], classes=CLASSES)
    assert m == {"accuracy": 1.0, "macro_f1": 1.0, "per_class_f1": {"a": 1.0, "b": 1.0, "c": 1.0}, "n": 4}


def test_known_answer() -> None:
    # a: tp=2 fp=0 fn=1 -> P=1, R=2/3, F1=0.8
    # b: tp=1 fp=1 fn=0 -> P=1/2, R=1, F1=2/3
    # c: tp=0 fp=1 fn=1 -> F1=0
    y_true = ["a", "a", "a", "b", "c"]
    y_pred = ["a", "a", "c", "b", "b"]
    m = classification_metrics(y_true, y_pred, classes=CLASSES)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class_f1"] == pytest.approx({"a": 0.8, "b": 2 / 3, "c": 0.0})
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)


def test_class_absent_from_both_is_undefined_not_zero() -> None:
    m = classification_metrics(["a", "b"], ["a", "b"], classes=CLASSES)
    assert m["per_class_f1"]["c"] is None
    assert m["macro_f1"] == 1.0


def test_macro_f1_punishes_minority_errors_more_than_accuracy() -> None:
    y_true = ["a"] * 9 + ["b"]
    y_pred = ["a"] * 10
    m = classification_metrics(y_true, y_pred, classes=CLASSES)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["macro_f1"] < m["accuracy"]


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        (["a"], ["a", "b"], "1 labels but y_pred has 2"),
        ([], [], "no samples"),
        (["a", "z"], ["a", "a"], r"y_true\[1\] = 'z'"),
        (["a"], ["q"], r"y_pred\[0\] = 'q'"),
    ],
)
def test_bad_input_raises(y_true: list[str], y_pred: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, classes=CLASSES)
