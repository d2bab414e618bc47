"""The task seam: everything that differs between classification, detection and segmentation,
behind one interface the round, retrain, the benchmark and the ML backend call.

A :class:`Task` is built from the config (:func:`pseudolabel.tasks.task_for`) and answers:
how its labelled sets are read, how a label is stored as holdout truth, how a model is
evaluated, how a round's pool predictions read back, how uncertain each image is (the review
order), which predictions become pseudo-labels, how a batch is selected for review, and what a
reviewer is shown. The round contains no task branching: it calls these in order.

Label values: a class name (``str``) for classification, a tuple of pixel :class:`Box` for
detection and segmentation (``()`` = "no objects"). Scores point one way everywhere: higher =
more uncertain = reviewed first.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

import numpy as np
import pandas as pd

from pseudolabel.types import Annotation, Box, Item, Prediction, TaskType

if TYPE_CHECKING:
    from pseudolabel.config import Config
    from pseudolabel.data.ingest import OnMissing, Quarantined
    from pseudolabel.data.ledger import Ledger
    from pseudolabel.strategies.selection import Selection

Label = Union[str, tuple[Box, ...]]
"""A label: a class name (classification) or the boxes of an image (detection / segmentation)."""


@dataclass
class LabelledSet:
    """A labelled set as read from disk, whatever its format.

    ``items``: usable images, one per distinct content; ``labels``: item id → :data:`Label`;
    ``quarantined``: files that could not be used, with the reason; ``duplicates``:
    ``(path, item id)`` of files whose bytes equal an earlier item's.
    """

    items: list[Item]
    labels: dict[str, Label]
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class PoolPredictions:
    """One round's pool predictions, read back from its shards, row-aligned.

    ``frame``: one row per image with ``item_id``, ``label`` (top class, or the most
    confident box's class; ``None`` for no box) and ``confidence``; ``predictions``: the
    :class:`Prediction` of each row (``probs`` for classification, ``boxes`` / ``box_probs`` for
    detection, ``embedding`` always); ``embeddings``: ``(N, D)`` float32; ``probs``: ``(N, C)``
    class probabilities (classification) or ``None``.
    """

    frame: pd.DataFrame
    predictions: list[Prediction]
    embeddings: np.ndarray
    probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def of(cls, predictions: Sequence[Prediction], *, classes: Sequence[str] | None = None) -> PoolPredictions:
        """Predictions made in memory (not read from shards), row-aligned the same way
        (``classes`` name the top class of a classification; without them, its index)."""
        rows: list[tuple[str, str | None, float, str]] = []
        for p in predictions:
            if p.probs is not None:
                j = int(np.argmax(p.probs))
                rows.append((p.item_id, classes[j] if classes else str(j), float(p.probs[j]), p.model_version))
            else:
                top = max(p.boxes, key=lambda b: b.score or 0.0) if p.boxes else None
                rows.append((p.item_id, None if top is None else top.label,
                             0.0 if top is None else float(top.score or 0.0), p.model_version))
        frame = pd.DataFrame(rows, columns=["item_id", "label", "confidence", "model_version"])
        embs = [p.embedding for p in predictions]
        emb = np.stack([np.asarray(e, dtype=np.float32) for e in embs]) if embs and all(e is not None for e in embs) \
            else np.zeros((len(predictions), 0), dtype=np.float32)
        probs = np.stack([np.asarray(p.probs) for p in predictions]) if predictions and all(
            p.probs is not None for p in predictions) else None
        return cls(frame, list(predictions), emb, probs)

    @property
    def item_ids(self) -> list[str]:
        """Item id of each row."""
        return [str(i) for i in self.frame["item_id"]]

    def subset(self, ids: Collection[str]) -> PoolPredictions:
        """The rows whose item id is in ``ids``, in the same order."""
        keep = np.flatnonzero(self.frame["item_id"].isin(set(ids)).to_numpy())
        return PoolPredictions(
            frame=self.frame.iloc[keep].reset_index(drop=True),
            predictions=[self.predictions[i] for i in keep],
            embeddings=self.embeddings[keep] if len(self.embeddings) else self.embeddings,
            probs=None if self.probs is None else self.probs[keep],
        )


@dataclass(frozen=True)
class PseudoContext:
    """What choosing pseudo-labels needs beyond the predictions.

    ``items``: pool item id → :class:`Item`; ``labelled``: ids with a seed or human label
    (never pseudo-labelled); ``round_id`` / ``model_version``: provenance of the labels;
    ``skip_classes``: classes the model is not good enough at (no pseudo-labels for them);
    ``cap``: pseudo-labels allowed per class (``None``: no cap); ``ledger``: where adaptive
    threshold state lives across rounds (``None``: no state kept).
    """

    items: Mapping[str, Item]
    labelled: Collection[str]
    round_id: int | None
    model_version: str
    skip_classes: Collection[str] = ()
    cap: int | None = None
    ledger: Ledger | None = None


class Task(abc.ABC):
    """One task's side of every stage (see the module docstring). Subclasses set the class
    attributes and implement the abstract methods; ``cfg`` is the campaign's config."""

    name: ClassVar[TaskType]
    result_type: ClassVar[str]                  # the Label Studio control tag reviewers answer with
    metric_names: ClassVar[tuple[str, ...]]     # holdout metrics, in the order they are printed
    per_class_key: ClassVar[str]                # key of the per-class scores in the metrics
    per_class_name: ClassVar[str]               # what the per-class score is ("F1", "AP50")

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # -- labelled sets ---------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, which: Literal["seed", "holdout"], *, progress: bool = False,
             on_missing: OnMissing = "error") -> LabelledSet:
        """Read ``data.seed`` or ``data.holdout`` in its configured format."""

    @abc.abstractmethod
    def seed_annotation(self, item: Item, label: Label) -> Annotation:
        """The seed label of ``item`` as a stored :class:`Annotation` (source ``seed``, round 0)."""

    @abc.abstractmethod
    def truth_to_ledger(self, label: Label) -> Any:
        """A holdout label as the JSON-able value the ledger keeps."""

    @abc.abstractmethod
    def truth_from_ledger(self, value: Any) -> Label:
        """Inverse of :meth:`truth_to_ledger`."""

    def trains_on(self, label: str | None, boxes: tuple[Box, ...]) -> bool:
        """Whether a stored label is something a model trains on (classification: a class;
        detection: boxes or an explicit "no objects")."""
        return label is not None

    # -- evaluation --------------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self, model: Any, holdout: Sequence[Item], truth: Mapping[str, Label], out_dir: Path) -> dict[str, Any]:
        """Holdout metrics of ``model`` (JSON-ready; ``metric_names`` and ``per_class_key``
        among them); may write what the report needs under ``out_dir``."""

    def per_class(self, metrics: Mapping[str, Any]) -> dict[str, float | None]:
        """Class → per-class score (:attr:`per_class_name`) from :meth:`evaluate`'s metrics."""
        return dict(metrics.get(self.per_class_key) or {})

    def metrics_line(self, metrics: Mapping[str, Any]) -> str:
        """The holdout metrics as the round prints them."""
        def f(v: Any) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        return ", ".join(f"{_PRETTY.get(k, k)} {f(metrics.get(k))}" for k in self.metric_names)

    # -- pool predictions --------------------------------------------------------------------
    @abc.abstractmethod
    def read_predictions(self, pred_dir: Path) -> PoolPredictions:
        """A round's pool predictions from its shard folder."""

    @abc.abstractmethod
    def uncertainty(self, preds: PoolPredictions, items: Mapping[str, Item]) -> np.ndarray:
        """``(N,)`` review-order uncertainty of each row, higher = more uncertain. Every
        queued task's Label Studio score comes from it, so tasks of every round and strategy
        share one order."""

    @abc.abstractmethod
    def confident(self, preds: PoolPredictions, ctx: PseudoContext) -> list[Annotation]:
        """The pseudo-labels of this round: confident predictions under the config's
        thresholds, never on a labelled item, at most ``ctx.cap`` per class."""

    @abc.abstractmethod
    def select(self, model: Any, preds: PoolPredictions, *, k: int, items: Mapping[str, Item],
               labelled: Sequence[Item], round_id: int) -> Selection:
        """``k`` rows of ``preds`` to review, with ``selection.strategy``; ``labelled``: the
        items already labelled (diversity strategies keep away from them)."""

    @abc.abstractmethod
    def review_prediction(self, pred: Prediction) -> tuple[Prediction, str]:
        """What a reviewer sees pre-drawn of ``pred``, and a note shown above the image."""

    def stop_labels(self, preds: PoolPredictions) -> np.ndarray:
        """``(N,)`` one label per row for the stable-predictions stop rule ("none": no box)."""
        return preds.frame["label"].fillna("none").astype(str).to_numpy()

    @abc.abstractmethod
    def pool_uncertainty(self, preds: PoolPredictions, items: Mapping[str, Item]) -> np.ndarray:
        """``(N,)`` uncertainty in [0, 1] per row, for the low-pool-uncertainty stop rule."""


_PRETTY = {"accuracy": "accuracy", "macro_f1": "macro-F1", "map50": "mAP50", "map50_95": "mAP50-95",
           "mask_map50": "mask mAP50", "miou": "mIoU"}
