"""Quality metrics on a human-verified holdout. Higher is better for every metric here.

- classification: accuracy, macro-F1, per-class F1 (:func:`classification_metrics`);
- detection (COCO-style mAP) and segmentation (mIoU, pixel accuracy) join this module with
  the detection adapter, under the same shape: ``<task>_metrics(truth, pred, *, classes)``
  returning a plain JSON-ready ``dict`` that the round writes to ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], *, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy and F1 of predicted class names against true ones.

    Returns ``{"accuracy", "macro_f1", "per_class_f1", "n"}``:

    - ``accuracy``: fraction of exact matches, in [0, 1];
    - ``per_class_f1``: ``{class: F1}`` for every name in ``classes`` (scikit-learn,
      ``zero_division=0``); a class that appears in neither ``y_true`` nor ``y_pred`` has no
      defined F1 and maps to ``None``;
    - ``macro_f1``: unweighted mean of the defined per-class F1 values (the classes present
      in ``y_true`` or ``y_pred``, scikit-learn's default), so a holdout that happens to miss
      a class is not penalised for it;
    - ``n``: number of samples.

    Raises ``ValueError`` for unequal lengths, no samples, or a name not in ``classes``
    (naming the value, the position and the accepted names).
    """
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicate names: {classes!r}")
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("no samples: metrics are undefined for an empty holdout")
    known = set(classes)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        for i, v in enumerate(values):
            if v not in known:
                raise ValueError(f"{name}[{i}] = {v!r} is not one of classes {classes!r}")
    t = np.asarray(y_true, dtype=object)
    p = np.asarray(y_pred, dtype=object)
    f1 = f1_score(t, p, labels=classes, average=None, zero_division=0)
    present = set(y_true) | set(y_pred)
    per_class: dict[str, float | None] = {
        c: (float(v) if c in present else None) for c, v in zip(classes, f1, strict=True)
    }
    defined = [v for v in per_class.values() if v is not None]
    return {
        "accuracy": float(np.mean(t == p)),
        "macro_f1": float(np.mean(defined)),
        "per_class_f1": per_class,
        "n": len(y_true),
    }
